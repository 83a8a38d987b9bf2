"""No silent staleness: a LISTEN connection whose packets vanish is noticed and replaced, /health and the metrics
tell how far the hub is behind and answer 503 with the reason, and a database outage reaches the clients."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import httpx
import pytest
import websockets

from tests.support import testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.proxy import proxy_to
from tests.support.server import run_server
from tests.support.ws import SyncClient


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_listen_connection_whose_packets_vanish_is_replaced(fresh_dsn: str) -> None:
    """The hub's direct connections (LISTEN and snapshot) go through a proxy that then stops forwarding without
    closing anything. The periodic log check is 60 s, so only the probe (and the read timeout) can bring the
    plain-SQL write to the subscriber in time."""
    async with (
        proxy_to(fresh_dsn) as proxy,
        run_server(
            fresh_dsn,
            listen_database_url=proxy.dsn,
            log_check_interval_s=60.0,
            listen_probe_interval_s=0.5,
            listen_probe_timeout_s=0.5,
            hub_read_timeout_s=1.5,
        ) as ripple,
    ):
        client = await SyncClient.connect(ripple.ws_url)
        qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        proxy.stall()
        await _sql(fresh_dsn, "INSERT INTO videos (twitch_id, title, status) VALUES ('x', 'dropped', 'Queued')")
        await client.expect(lambda m: m["type"] == "Transition" and len(client.results[qid]) == 1, timeout_s=10)
        assert ripple.services.hub.feed.failed_probes >= 1
        assert ripple.services.hub.listen_mode == "listen"
        await client.close()


async def test_health_reports_lag_and_503_when_the_hub_is_stale(fresh_dsn: str) -> None:
    """With its LISTEN silently dead (no probe within the test) and no periodic look, the hub falls behind a
    plain-SQL write: /health says so with 503 and the lag, and so do the metrics; once it catches up, 200."""
    async with (
        proxy_to(fresh_dsn) as proxy,
        run_server(
            fresh_dsn,
            listen_database_url=proxy.dsn,
            log_check_interval_s=60.0,
            listen_probe_interval_s=60.0,
            hub_read_timeout_s=60.0,
            hub_stale_after_s=1.0,
        ) as ripple,
        httpx.AsyncClient(base_url=ripple.url) as http,
    ):
        healthy = await http.get("/health")
        assert healthy.status_code == 200, healthy.text
        body = healthy.json()
        assert body["status"] == "ok" and body["lagSeconds"] == 0 and body["lagCommits"] == 0
        assert body["listen"] == "listen" and body["processedTs"] == body["ts"]
        proxy.stall()
        await _sql(fresh_dsn, "INSERT INTO videos (twitch_id, title, status) VALUES ('y', 'unseen', 'Queued')")
        await asyncio.sleep(1.3)
        stale = await http.get("/health")
        assert stale.status_code == 503, stale.text
        body = stale.json()
        assert body["status"] == "unavailable" and body["lagCommits"] == 1 and body["lagSeconds"] > 1.0
        assert any("behind the newest commit" in p for p in body["problems"]), body
        metrics = (await http.get("/metrics")).text
        lag = float(re.search(r"^ripple_hub_lag_seconds (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
        assert lag > 1.0
        assert re.search(r"^ripple_hub_lag_commits 1\.0$", metrics, re.M)
        proxy.cut()  # the hub's connections close: it reconnects and catches up
        for _ in range(100):
            if (await http.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/health")).json()["lagCommits"] == 0


async def test_clients_see_an_outage_and_converge_after_it(fresh_dsn: str) -> None:
    """Everything goes through a proxy that then cuts every connection and refuses new ones: a subscriber's socket
    closes with 1013 and the reason, a mutation fails fast with a clear error, /health answers 503; once the
    database is back, a reconnecting client gets fresh results and writes reach subscribers again."""
    async with (
        proxy_to(fresh_dsn) as proxy,
        run_server(proxy.dsn, outage_close_after_s=0.5, database_check_interval_s=0.2) as ripple,
        httpx.AsyncClient(base_url=ripple.url, timeout=30) as http,
    ):
        client = await SyncClient.connect(ripple.ws_url)
        qid = await client.subscribe("testing:count", {"twitchId": "o"})
        await client.mutation("testing:setProgress", {"twitchId": "o", "progress": 1})
        assert client.results[qid] == 1
        proxy.refuse()
        proxy.cut()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.expect(lambda m: False, timeout_s=10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "database unavailable; reconnecting")
        started = asyncio.get_running_loop().time()
        failed = (
            await http.post(
                "/api/mutation", json={"path": "testing:setProgress", "args": {"twitchId": "o", "progress": 2}}
            )
        ).json()
        assert asyncio.get_running_loop().time() - started < 3
        assert failed["status"] == "error" and "database is unavailable" in failed["errorMessage"], failed
        down = await http.get("/health")
        assert down.status_code == 503 and "unreachable" in down.json()["problems"][0], down.text
        proxy.refuse(False)
        await _sql(fresh_dsn, "UPDATE videos SET progress_percentage = 5 WHERE twitch_id = 'o'")  # while it was away
        again = await SyncClient.connect(ripple.ws_url)
        qid = await again.subscribe("testing:count", {"twitchId": "o"})
        assert again.results[qid] == 5
        await again.mutation("testing:setProgress", {"twitchId": "o", "progress": 6})
        assert again.results[qid] == 6
        assert (await http.get("/health")).status_code == 200
        await again.close()
