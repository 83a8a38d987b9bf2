"""HTTP actions (Convex's http.ts): routing, site prefix, auth, errors with request ids, body limit, CORS, metrics.

A real server on a real socket, its routes from the seed app (functions/http.py) and tests/support/http_app.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from server.http_actions import HttpRouter, http_action
from tests.support.server import ADMIN_KEY, RippleServer, run_server
from tests.support.ws import SyncClient

BODY_LIMIT = 4096


@pytest.fixture
async def site(fresh_dsn: str) -> AsyncIterator[RippleServer]:
    async with run_server(
        fresh_dsn, modules=["tests.support.http_app"], max_http_action_body_bytes=BODY_LIMIT
    ) as server:
        yield server


@pytest.fixture
async def client(site: RippleServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=site.url + "/http", timeout=30) as http:
        yield http


async def test_exact_routes_and_methods(client: httpx.AsyncClient) -> None:
    got = await client.get("/echo")
    # The handler sees the route's path, as on a Convex site origin (the prefix is in request.scope["root_path"]).
    assert got.status_code == 200 and got.json() == {"route": "echo", "path": "/echo", "method": "GET", "bytes": 0}
    posted = await client.post("/echo", content=b"x" * 10)
    assert posted.json()["method"] == "POST" and posted.json()["bytes"] == 10
    head = await client.head("/echo")
    assert head.status_code == 200 and head.content == b""


async def test_exact_route_beats_prefixes_and_the_longest_prefix_wins(client: httpx.AsyncClient) -> None:
    assert (await client.get("/files/special")).json() == {"route": "special"}
    assert (await client.get("/files/a/b.txt")).json() == {"route": "files", "path": "/files/a/b.txt"}
    assert (await client.get("/files/deep/x")).json()["route"] == "deep"
    assert (await client.get("/files/")).json()["route"] == "files"


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nothing-here")
    assert missing.status_code == 404 and "/nothing-here" in missing.json()["message"]
    assert (await client.get("/files")).status_code == 404  # the prefix is "/files/"
    wrong = await client.delete("/echo")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD, POST"
    assert "DELETE" in wrong.json()["message"]
    prefixed = await client.post("/files/a")
    assert prefixed.status_code == 405 and prefixed.headers["allow"] == "GET, HEAD"


async def test_the_function_api_is_untouched(site: RippleServer) -> None:
    """The prefix is the only path HTTP actions take: /api/... and /health keep their meaning."""
    body = (await site.http("query", "testing:secret")).json()
    assert body["status"] == "error"  # internal: never reachable from the function API
    async with httpx.AsyncClient(base_url=site.url) as http:
        assert (await http.get("/health")).status_code == 200


async def test_a_handler_mutation_reaches_a_subscribed_client(site: RippleServer, client: httpx.AsyncClient) -> None:
    """The seed app's worker webhook: the admin key as the shared secret, then videos:updateJobProgress."""
    await site.call("videos:create", {"twitchId": "tw1", "title": "A stream"}, admin=True)
    sync = await SyncClient.connect(site.ws_url)
    try:
        qid = await sync.subscribe("videos:getByTwitchId", {"twitchId": "tw1"})
        assert sync.results[qid]["status"] == "Queued"
        report = {"twitchId": "tw1", "jobId": "job-1", "progressPercentage": 40, "status": "Downloading"}
        refused = await client.post("/videos/progress", json=report)
        assert refused.status_code == 401 and "Authorization: Convex" in refused.json()["message"]
        done = await client.post("/videos/progress", json=report, headers={"Authorization": f"Convex {ADMIN_KEY}"})
        assert done.status_code == 200, done.text
        await sync.expect(
            lambda m: (
                m["type"] == "Transition"
                and any(mod.get("value", {}).get("status") == "Downloading" for mod in m["modifications"])
            )
        )
        assert sync.results[qid]["progressPercentage"] == 40
        unknown = await client.post(
            "/videos/progress",
            json={**report, "twitchId": "nope"},
            headers={"Authorization": f"Convex {ADMIN_KEY}"},
        )
        assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
    finally:
        await sync.close()
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_internal_functions_are_callable(site: RippleServer, client: httpx.AsyncClient) -> None:
    made = await client.post("/videos", json={"twitchId": "from-http"})
    assert made.status_code == 200 and made.json()["secret"] == "internal"
    assert (await site.call("testing:get", {"id": made.json()["id"]}))["twitchId"] == "from-http"


async def test_bearer_identity_is_visible_in_the_handler(site: RippleServer, client: httpx.AsyncClient) -> None:
    assert (await client.get("/whoami")).json() == {"identity": None}
    seen = await client.get("/whoami", headers={"Authorization": f"Bearer {site.token('alice', name='Alice')}"})
    identity = seen.json()["identity"]
    assert identity["subject"] == "alice" and identity["name"] == "Alice", identity
    bad = await client.get("/whoami", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401


async def test_a_raising_handler_is_500_with_the_request_id_in_the_log(
    site: RippleServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ripple.functions")
    failed = await client.get("/boom")
    assert failed.status_code == 500
    request_id = failed.headers["x-ripple-request-id"]
    assert re.fullmatch(r"[0-9a-f]{12}", request_id)
    message = failed.json()["message"]
    assert f"request {request_id}" in message and "Traceback" not in failed.text and "http_app.py" not in failed.text
    records = [r for r in caplog.records if getattr(r, "request_id", None) == request_id and hasattr(r, "outcome")]
    assert len(records) == 1 and records[0].exc_info is not None
    assert (records[0].kind, records[0].transport, records[0].function) == ("httpAction", "http", "GET /boom")
    assert "KeyError" in caplog.text and "http_app.py" in caplog.text  # the traceback is in the server log
    odd = await client.get("/not-a-response")
    assert odd.status_code == 500 and "not a starlette Response" in odd.json()["message"]
    odd_id = odd.headers["x-ripple-request-id"]
    outcomes = [r.outcome for r in caplog.records if getattr(r, "request_id", None) == odd_id and hasattr(r, "outcome")]
    assert outcomes == ["uncaught"]


async def test_body_size_is_limited(client: httpx.AsyncClient) -> None:
    assert (await client.post("/echo", content=b"x" * BODY_LIMIT)).json()["bytes"] == BODY_LIMIT
    declared = await client.post("/echo", content=b"x" * (BODY_LIMIT + 1))
    assert declared.status_code == 413 and "RIPPLE_MAX_HTTP_ACTION_BODY_BYTES" in declared.json()["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(BODY_LIMIT // 1000 + 2):
            yield b"y" * 1000

    streamed = await client.post("/echo", content=chunks())
    assert streamed.status_code == 413


async def test_cors_is_what_the_handlers_say(client: httpx.AsyncClient) -> None:
    """As Convex documents: no automatic CORS headers; an OPTIONS route answers the preflight."""
    preflight = await client.options(
        "/cors",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "POST"
    posted = await client.post("/cors", json={}, headers={"Origin": "https://app.example"})
    assert posted.headers["access-control-allow-origin"] == "https://app.example"
    # A route without an OPTIONS route: no preflight answer, and the server's own CORS policy adds nothing.
    no_preflight = await client.options(
        "/no-cors", headers={"Origin": "https://else.example", "Access-Control-Request-Method": "POST"}
    )
    assert no_preflight.status_code == 405 and "access-control-allow-origin" not in no_preflight.headers
    plain = await client.post("/no-cors", headers={"Origin": "https://else.example"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


async def test_calls_are_counted_as_http_actions(site: RippleServer, client: httpx.AsyncClient) -> None:
    await client.get("/echo")
    async with httpx.AsyncClient(base_url=site.url) as http:
        text = (await http.get("/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("ripple_function_calls_total{") and "GET /echo" in x)
    assert 'kind="httpAction"' in line and 'transport="http"' in line and float(line.rsplit(" ", 1)[1]) >= 1


def test_router_refuses_malformed_routes() -> None:
    @http_action
    async def handler(ctx: object, request: object) -> object:
        raise AssertionError

    router = HttpRouter()
    router.route(path="/a", method="get", handler=handler)
    with pytest.raises(ValueError, match="declared twice"):
        router.route(path="/a", method="GET", handler=handler)
    with pytest.raises(ValueError, match="must start and end with '/'"):
        router.route(path_prefix="/files", method="GET", handler=handler)
    with pytest.raises(ValueError, match="not routable"):
        router.route(path="/b", method="TRACE", handler=handler)
    with pytest.raises(ValueError, match="@http_action"):
        router.route(path="/c", method="GET", handler=handler.handler)  # type: ignore[arg-type]
    other = HttpRouter()
    other.route(path="/a", method="GET", handler=handler)
    with pytest.raises(ValueError, match="declared twice"):
        router.include(other)


async def test_the_site_url_is_logged_at_start(fresh_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ripple")
    async with run_server(fresh_dsn, site_prefix="/site/", port=8123):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("HTTP actions:")]
    assert lines == ["HTTP actions: 3 routes at http://127.0.0.1:8123/site/... (RIPPLE_SITE_PREFIX; Convex's site URL)"]


def test_the_site_prefix_cannot_hide_the_function_api() -> None:
    from server.config import Settings

    for bad in ("/api", "/", "http"):
        with pytest.raises(ValueError, match="RIPPLE_SITE_PREFIX"):
            Settings(site_prefix=bad)
