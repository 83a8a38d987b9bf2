"""The official Convex clients, unchanged, against a real Ripple: npm `convex` (ConvexClient) and PyPI `convex`."""

from __future__ import annotations

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
            result = await client.call("mutation", "testing:insert",
                                       {"table": "videos", "doc": {"twitchId": f"v{n}", "title": "t", "status": "Queued"}})
            assert result["event"] == "result", result
            # The promise resolved only after the subscription already showed the write.
            assert _ids(result["subs"]["s1"]) == [f"v{i}" for i in range(n + 1)]


async def test_python_subscribe_and_mutation(ripple):
    async with await ClientDriver.start("python", ripple.url) as client:
        await client.subscribe("s1", "testing:videosByStatus", {"status": "Queued"})
        assert (await client.next_update("s1"))["value"] == []
        result = await client.call("mutation", "testing:insert",
                                   {"table": "videos", "doc": {"twitchId": "p1", "title": "t", "status": "Queued"}})
        assert result["event"] == "result", result
        update = await client.expect(lambda e: e.get("event") == "update" and e.get("value"), timeout_s=10)
        assert _ids(update["value"]) == ["p1"]
