"""The seed project's HTTP actions (Convex's `convex/http.ts`), served under the site prefix (`/http` by default).

- `GET /health`: a liveness answer for uptime checks that should not need credentials.
- `POST /videos/progress`: the video worker's progress webhook. Workers that cannot speak the Convex protocol
  POST the same JSON `videos:updateJobProgress` takes (`{"twitchId", "jobId", "progressPercentage", ...}`) with the
  shared secret, the admin key, in `Authorization: Convex <admin key>`; subscribers see the change at once.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from server import ConvexError, HttpRouter, http_action
from server.errors import RippleError, describe

http = HttpRouter()


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@http_action
async def health(ctx: Any, request: Request) -> Response:
    return _json(200, {"status": "ok"})


@http_action
async def video_progress(ctx: Any, request: Request) -> Response:
    """Refusals the worker can act on (bad secret, bad JSON, an unknown or finished video) are 4xx with a message;
    anything else raises, and the caller gets a 500 with the request id that finds the traceback."""
    if not ctx.auth.is_admin:
        return _json(
            401,
            {
                "code": "Unauthorized",
                "message": "POST /videos/progress needs the shared secret: send 'Authorization: Convex <admin key>'",
            },
        )
    try:
        report = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        return _json(
            400,
            {"code": "BadJsonBody", "message": 'the body must be a JSON object: {"twitchId", "jobId", ...}'},
        )
    try:
        await ctx.run_mutation("videos:updateJobProgress", report)
    except ConvexError as exc:
        status = 404 if isinstance(exc.data, dict) and exc.data.get("code") == "NOT_FOUND" else 409
        return _json(status, exc.data)
    except RippleError as exc:  # bad arguments: the message names the field
        return _json(400, {"code": exc.code, "message": describe(exc)})
    return _json(200, {"status": "ok"})


http.route(path="/health", method="GET", handler=health)
http.route(path="/videos/progress", method="POST", handler=video_progress)
