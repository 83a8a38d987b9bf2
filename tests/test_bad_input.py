"""Bad input, each case through a real socket: the request gets a clear error of its own, nothing is stored, and
the server and its other clients go on (a subscriber on another socket still receives a later write)."""

from __future__ import annotations

import time

import httpx
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from server.config import Settings
from tests.support.server import RippleServer
from tests.support.ws import SyncClient

VIDEO = {"twitchId": "bad", "title": "T", "status": "Queued"}


async def _watch(ripple: RippleServer) -> tuple[SyncClient, int]:
    """Another client, subscribed to a document of its own."""
    doc = {"twitchId": "watched", "title": "W", "status": "Watched"}
    assert (await ripple.http("mutation", "testing:insert", {"table": "videos", "doc": doc})).json()[
        "status"
    ] == "success"
    watcher = await SyncClient.connect(ripple.ws_url)
    return watcher, await watcher.subscribe("testing:count", {"twitchId": "watched"})


async def _still_serving(ripple: RippleServer, watcher: SyncClient, qid: int, n: int) -> None:
    """Another client's subscription still follows writes, and /health answers."""
    r = await ripple.http("mutation", "testing:increment", {"twitchId": "watched"})
    assert r.json()["status"] == "success", r.json()
    await watcher.expect(lambda m: m["type"] == "Transition" and watcher.results.get(qid) == n)
    async with httpx.AsyncClient(base_url=ripple.url) as client:
        assert (await client.get("/health")).status_code == 200


async def _raw(ripple: RippleServer, kind: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as client:
        return await client.post(
            f"/api/{kind}", content=body, headers={"content-type": "application/json", **(headers or {})}
        )


async def test_each_bad_input_fails_alone(ripple: RippleServer) -> None:
    watcher, qid = await _watch(ripple)
    n = 0

    async def refused(kind: str, path: str, args: object, fmt: str = "convex_encoded_json") -> str:
        r = await ripple.http(kind, path, args, fmt=fmt)
        body = r.json()
        message = body.get("message") or body.get("errorMessage")
        assert r.status_code == 400 or body.get("status") == "error", body
        assert "Uncaught" not in message and "RecursionError" not in message, message
        return str(message)

    # A field name starting with "$", in arguments (both formats) and built by the function itself.
    for fmt in ("convex_encoded_json", "json"):
        doc = {**VIDEO, "stageProgress": {"$weird": 1}}
        message = await refused("mutation", "testing:insert", {"table": "videos", "doc": doc}, fmt)
        assert 'field name "$weird" may not start with "$"' in message and "doc.stageProgress" in message
    message = await refused("mutation", "testing:insertKeyed", {"key": "<dollar>bytes"})
    assert 'field "stageProgress"' in message and '"$bytes" may not start with "$"' in message

    # NUL in a string: PostgreSQL's text cannot hold it, so it is refused where it enters.
    message = await refused("query", "testing:count", {"twitchId": "a\x00b"})
    assert "NUL" in message and "twitchId" in message
    message = await refused("mutation", "testing:insertKeyed", {"key": "k", "value": "a<nul>b"})
    assert "NUL" in message and 'field "title"' in message

    # Nesting 1,000 deep: Convex's limit is 64.
    deep: object = 1
    for _ in range(1000):
        deep = {"a": deep}
    body = b'{"path":"testing:insert","format":"json","args":{"table":"videos","doc":{"stageProgress":'
    body += b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}}}"
    r = await _raw(ripple, "mutation", body)
    assert r.status_code == 400 and "nested more than 64 levels" in r.json()["message"]

    # A 100 KB function path and cursor are not echoed back whole.
    message = await refused("query", "x" * 100_000, {})
    assert "Could not find public function" in message and len(message) < 300 and "100000 characters" in message
    message = await refused("query", "testing:videosPage", {"paginationOpts": {"numItems": 5, "cursor": "c" * 100_000}})
    assert "InvalidCursor" in message and len(message) < 300

    # 8 MiB of tiny objects is refused by a count, before it is parsed into millions of Python objects.
    body = b'{"path":"testing:count","args":{"twitchId":"x","z":[' + b",".join([b"{}"] * 2_000_000) + b"]}}"
    started = time.perf_counter()
    r = await _raw(ripple, "query", body)
    assert r.status_code == 413 and "more than 262144 values" in r.json()["message"], r.text
    assert time.perf_counter() - started < 2

    # None of it was stored; the other client never noticed.
    r = await ripple.http("query", "testing:videosByStatus", {"status": "Queued"})
    assert r.json()["value"] == []
    for _ in range(2):
        n += 1
        await _still_serving(ripple, watcher, qid, n)
    await watcher.close()


async def test_bad_input_over_the_sync_socket_fails_that_request_alone(ripple: RippleServer) -> None:
    watcher, qid = await _watch(ripple)
    client = await SyncClient.connect(ripple.ws_url)
    response = await client.mutation("testing:insert", {"table": "videos", "doc": {**VIDEO, "title": "a\x00"}})
    assert response["success"] is False and "NUL" in response["result"]
    bad = await client.subscribe("testing:count", {"twitchId": {"$x": 1}})
    assert '"$x" may not start with "$"' in client.errors[bad]["errorMessage"]
    good = await client.subscribe("testing:count", {"twitchId": "watched"})
    assert client.results[good] == 0  # the watched document, which has no progress yet
    await client.send({"type": "Mutation", "requestId": 99, "udfPath": "testing:insert", "args": [[1] * 300_000]})
    refused = await client.expect(lambda m: m["type"] in ("FatalError", "MutationResponse"))
    assert "more than 262144 values" in str(refused), refused
    await _still_serving(ripple, watcher, qid, 1)
    await watcher.close()


async def test_cors_allows_any_origin_without_credentials(ripple: RippleServer) -> None:
    async with httpx.AsyncClient(base_url=ripple.url) as client:
        preflight = await client.options(
            "/api/query", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in preflight.headers


@pytest.mark.parametrize(
    "ripple", [{"cors_origins": ["https://app.example"], "cors_allow_credentials": True}], indirect=True
)
async def test_cors_origins_are_a_setting(ripple: RippleServer) -> None:
    async with httpx.AsyncClient(base_url=ripple.url) as client:
        headers = {"Access-Control-Request-Method": "POST"}
        ok = await client.options("/api/query", headers={"Origin": "https://app.example", **headers})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert ok.headers["access-control-allow-credentials"] == "true"
        other = await client.options("/api/query", headers={"Origin": "https://evil.example", **headers})
        assert "access-control-allow-origin" not in other.headers


def test_credentials_with_any_origin_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="RIPPLE_CORS_ORIGINS"):
        Settings(cors_allow_credentials=True)
