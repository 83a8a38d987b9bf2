"""The official Convex clients, unchanged, against a real Ripple: npm `convex` (ConvexClient) and PyPI `convex`."""

from __future__ import annotations

import asyncio

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.clients.driver import ClientDriver


def _ids(value: list[dict]) -> list[str]:
    return [doc["twitchId"] for doc in value]


async def test_node_subscribe_mutate_read_your_writes(ripple):
    async with await ClientDriver.start("node", ripple.url) as client:
        await client.subscribe("s1", "testing:videosByStatus", {"status": "Queued"})
        first = await client.next_update("s1")
        assert first["value"] == []
        for n in range(3):
            result = await client.call(
                "mutation",
                "testing:insert",
                {"table": "videos", "doc": {"twitchId": f"v{n}", "title": "t", "status": "Queued"}},
            )
            assert result["event"] == "result", result
            # The promise resolved only after the subscription already showed the write.
            assert _ids(result["subs"]["s1"]) == [f"v{i}" for i in range(n + 1)]


async def test_python_subscribe_and_mutation(ripple):
    async with await ClientDriver.start("python", ripple.url) as client:
        await client.subscribe("s1", "testing:videosByStatus", {"status": "Queued"})
        assert (await client.next_update("s1"))["value"] == []
        result = await client.call(
            "mutation",
            "testing:insert",
            {"table": "videos", "doc": {"twitchId": "p1", "title": "t", "status": "Queued"}},
        )
        assert result["event"] == "result", result
        update = await client.expect(lambda e: e.get("event") == "update" and e.get("value"), timeout_s=10)
        assert _ids(update["value"]) == ["p1"]


async def _insert(ripple, twitch_id: str, status: str = "Queued") -> None:
    await ripple.call(
        "testing:insert", {"table": "videos", "doc": {"twitchId": twitch_id, "title": "t", "status": status}}
    )


async def test_node_auth_with_a_jwt(ripple):
    async with await ClientDriver.start("node", ripple.url) as client:
        await client.subscribe("who", "testing:whoami")
        assert (await client.next_update("who"))["value"] is None
        await client.send({"op": "setAuth", "token": ripple.token("alice", name="Alice")})
        auth = await client.expect({"event": "auth"})
        assert auth["isAuthenticated"] is True
        update = await client.expect(lambda e: e.get("event") == "update" and e.get("id") == "who" and e["value"])
        assert update["value"]["subject"] == "alice" and update["value"]["name"] == "Alice"


async def test_node_reconnect_resumes_every_subscription(ripple):
    async with await ClientDriver.start("node", ripple.url) as client:
        await client.subscribe("q", "testing:videosByStatus", {"status": "Queued"})
        await client.subscribe("f", "testing:videosByStatus", {"status": "Failed"})
        await client.next_update("q")
        await client.next_update("f")
        for session in list(ripple.services.sessions):
            session.shut(1012, "test restart")
        await asyncio.sleep(0.3)  # the client is reconnecting (its backoff is about a second)
        await _insert(ripple, "after-q")
        await _insert(ripple, "after-f", "Failed")
        q = await client.expect(
            lambda e: e.get("id") == "q" and e.get("event") == "update" and e["value"], timeout_s=20
        )
        f = await client.expect(
            lambda e: e.get("id") == "f" and e.get("event") == "update" and e["value"], timeout_s=20
        )
        assert _ids(q["value"]) == ["after-q"] and _ids(f["value"]) == ["after-f"]
        result = await client.call(
            "mutation",
            "testing:insert",
            {"table": "videos", "doc": {"twitchId": "again", "title": "t", "status": "Queued"}},
        )
        assert _ids(result["subs"]["q"]) == ["after-q", "again"]
        assert ripple.services.hub.subscription_count == 2  # the old socket's subscriptions are gone


async def test_node_paginated_query_stays_gapless_under_inserts(ripple):
    for i in range(5):
        await _insert(ripple, f"p{i}")
    async with await ClientDriver.start("node", ripple.url) as client:
        await client.send(
            {"op": "paginate", "id": "pg", "fn": "testing:videosPage", "args": {"status": "Queued"}, "numItems": 2}
        )
        await client.expect(lambda e: e.get("event") == "pages" and e.get("status") == "CanLoadMore")
        await client.send({"op": "loadMore", "id": "pg", "numItems": 2})
        await client.expect(lambda e: e.get("event") == "pages" and len(e["items"]) == 4)
        # Rows inserted inside the loaded pages and after them: nothing is skipped or shown twice.
        await _insert(ripple, "p5")
        await ripple.call(
            "testing:insert", {"table": "videos", "doc": {"twitchId": "x", "title": "t", "status": "Failed"}}
        )
        await client.send({"op": "loadMore", "id": "pg", "numItems": 10})
        final = await client.expect(
            lambda e: e.get("event") == "pages" and e.get("status") == "Exhausted" and len(e["items"]) == 6,
            timeout_s=15,
        )
        assert [d["twitchId"] for d in final["items"]] == [f"p{i}" for i in range(6)]
        await _insert(ripple, "p6")
        final = await client.expect(lambda e: e.get("event") == "pages" and len(e["items"]) == 7, timeout_s=15)
        assert [d["twitchId"] for d in final["items"]] == [f"p{i}" for i in range(7)]


async def test_python_subscription_sees_each_change(ripple):
    async with await ClientDriver.start("python", ripple.url) as client:
        await client.subscribe("c", "testing:count", {"twitchId": "n"})
        assert (await client.next_update("c"))["value"] == -1
        for n in range(1, 4):
            result = await client.call("mutation", "testing:setProgress", {"twitchId": "n", "progress": n})
            assert result["event"] == "result", result
            await client.expect(lambda e, n=n: e.get("id") == "c" and e.get("event") == "update" and e["value"] == n)


async def test_node_token_refresh_during_a_mutation_keeps_read_your_writes(ripple):
    """A token refresh (setAuth with a new token) sent while a mutation's round is still running: the promise
    resolves only once the subscription shows the write (finding 3 of the trust review, with the real client)."""
    await _insert(ripple, "rw")
    async with await ClientDriver.start("node", ripple.url) as client:
        await client.send({"op": "setAuth", "token": ripple.token("alice")})
        await client.expect({"event": "auth"})
        # A re-run of this query keeps the hub's round open for 0.3 s, so the refresh lands inside it.
        await client.subscribe("c", "testing:slowCount", {"twitchId": "rw", "delayS": 0.3})
        assert (await client.next_update("c"))["value"] == 0
        for n in range(1, 4):
            await client.send({"op": "mutation", "id": f"m{n}", "fn": "testing:increment", "args": {"twitchId": "rw"}})
            await asyncio.sleep(0.05)
            await client.send({"op": "setAuth", "token": ripple.token("alice", ttl_s=3600 + n)})
            result = await client.expect(lambda e, n=n: e.get("event") == "result" and e.get("id") == f"m{n}")
            assert result["value"] == n
            assert result["subs"]["c"] == n, result  # read-your-writes held across the refresh
