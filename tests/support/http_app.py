"""HTTP action routes used only by tests/test_http_actions.py (loaded through RIPPLE_MODULES)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

import tests.support.testing_app  # noqa: F401  (the testing: functions these call)
from server import HttpRouter, http_action

http = HttpRouter()

CORS = {"Access-Control-Allow-Origin": "https://app.example"}


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


@http_action
async def echo(ctx: Any, request: Request) -> Response:
    body = await request.body()
    return _json({"route": "echo", "path": request.url.path, "method": request.method, "bytes": len(body)})


@http_action
async def files(ctx: Any, request: Request) -> Response:
    return _json({"route": "files", "path": request.url.path})


@http_action
async def deep_files(ctx: Any, request: Request) -> Response:
    return _json({"route": "deep", "path": request.url.path})


@http_action
async def special_file(ctx: Any, request: Request) -> Response:
    return _json({"route": "special"})


@http_action
async def whoami(ctx: Any, request: Request) -> Response:
    return _json({"identity": await ctx.auth.get_user_identity()})


@http_action
async def insert_video(ctx: Any, request: Request) -> Response:
    """Calls an internal mutation (allowed from HTTP actions, as in Convex) and an internal query."""
    twitch_id = (await request.json())["twitchId"]
    doc_id = await ctx.run_mutation("testing:internalInsert", {"twitchId": twitch_id})
    return _json({"id": doc_id, "secret": await ctx.run_query("testing:secret")})


@http_action
async def boom(ctx: Any, request: Request) -> Response:
    print("about to fail")
    return {}["missing"]  # type: ignore[no-any-return]


@http_action
async def not_a_response(ctx: Any, request: Request) -> Response:
    return {"oops": True}  # type: ignore[return-value]


@http_action
async def cors_preflight(ctx: Any, request: Request) -> Response:
    """Convex's documented pattern: an OPTIONS route answers the preflight with the headers the handler chooses."""
    return Response(
        status_code=204,
        headers={
            **CORS,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        },
    )


@http_action
async def cors_post(ctx: Any, request: Request) -> Response:
    return _json({"ok": True}, headers={**CORS, "Vary": "Origin"})


http.route(path="/echo", method="GET", handler=echo)
http.route(path="/echo", method="POST", handler=echo)
http.route(path_prefix="/files/", method="GET", handler=files)
http.route(path_prefix="/files/deep/", method="GET", handler=deep_files)
http.route(path="/files/special", method="GET", handler=special_file)
http.route(path="/whoami", method="GET", handler=whoami)
http.route(path="/videos", method="POST", handler=insert_video)
http.route(path="/boom", method="GET", handler=boom)
http.route(path="/not-a-response", method="GET", handler=not_a_response)
http.route(path="/cors", method="OPTIONS", handler=cors_preflight)
http.route(path="/cors", method="POST", handler=cors_post)
http.route(path="/no-cors", method="POST", handler=echo)
