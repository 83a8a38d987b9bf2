"""/metrics exposes what an operator watches, and the numbers move with real traffic."""

from __future__ import annotations

import httpx

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import RippleServer
from tests.support.ws import SyncClient


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_follow_connections_subscriptions_and_reruns(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    await client.subscribe("testing:count", {"twitchId": "m"})
    await client.subscribe("testing:count", {"twitchId": "m"})
    await client.mutation("testing:setProgress", {"twitchId": "m", "progress": 3})
    async with httpx.AsyncClient(base_url=ripple.url) as http:
        text = (await http.get("/metrics")).text
    assert value(text, "ripple_connections") == 1
    assert value(text, "ripple_subscriptions") == 2 and value(text, "ripple_query_instances") == 1
    assert value(text, "ripple_query_reruns_total") >= 2
    assert value(text, "ripple_invalidation_matches_total") >= 1
    assert value(text, "ripple_transition_latency_seconds_count") >= 1
    assert value(text, "ripple_hub_lag_seconds") < 5
    for name in (
        "ripple_mutation_retries_total",
        "ripple_hub_processed_ts",
        "ripple_function_calls_total",
        "ripple_hub_quiet_rounds_total",
        "ripple_hub_settles_total",
    ):
        assert name in text
    await client.close()
