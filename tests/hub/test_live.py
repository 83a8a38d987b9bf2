"""Live queries end to end: writes from anywhere (Ripple, plain SQL, another process) reach every subscriber,
also across a lost LISTEN connection, a huge transaction and a pruned log."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from server.database.writers import ANNOUNCE_SQL
from tests.support import testing_app  # registers the testing: functions
from tests.support.server import RippleServer, second_process
from tests.support.ws import SyncClient


async def sql(ripple: RippleServer, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def as_ripple_writer(ripple: RippleServer, statement: str, *args: object) -> None:
    """`statement` committed as Ripple's writers commit, so its announcement names its changes (plain SQL announces
    its ts alone)."""
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        await conn.execute("BEGIN; SET LOCAL ripple.notify = 'after_commit'")
        await conn.execute(statement, *args)
        await conn.execute(f"COMMIT; {ANNOUNCE_SQL}")
    finally:
        await conn.close()


async def early_and_late(ripple: RippleServer) -> tuple[SyncClient, SyncClient, int, int]:
    """A subscriber of the rows "early" and "late" (both at 1) and a writer: for the commit-order tests."""
    client = await SyncClient.connect(ripple.ws_url)
    writer = await SyncClient.connect(ripple.ws_url)
    for row in ("early", "late"):
        await writer.mutation("testing:setProgress", {"twitchId": row, "progress": 1})
    early = await client.subscribe("testing:count", {"twitchId": "early"})
    late = await client.subscribe("testing:count", {"twitchId": "late"})
    return client, writer, early, late


@pytest.mark.parametrize("ripple", [{"log_check_interval_s": 60.0}], indirect=True)
async def test_plain_sql_writes_reach_subscribers(ripple: RippleServer) -> None:
    """Plain SQL announces its ts alone; that NOTIFY starts a round that reads the log at once (the periodic look,
    60 s here, is not what delivers it)."""
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
    await sql(ripple, "INSERT INTO videos (twitch_id, title, status) VALUES ('psql', 'from psql', 'Queued')")
    await client.expect(lambda m: m["type"] == "Transition" and len(client.results[qid]) == 1, timeout_s=2)
    assert client.results[qid][0]["title"] == "from psql"
    await sql(ripple, "UPDATE videos SET status = 'Failed' WHERE twitch_id = 'psql'")
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == [], timeout_s=2)
    await client.close()


async def test_small_and_bulk_writes_reach_subscribers(ripple: RippleServer) -> None:
    """A small write and a bulk one (announced by its ts alone) both end on the fresh result, and so does a query
    whose re-run reads nothing."""
    client = await SyncClient.connect(ripple.ws_url)
    writer = await SyncClient.connect(ripple.ws_url)
    await sql(
        ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('h', 't', 'Queued', 1)"
    )
    qid = await client.subscribe("testing:count", {"twitchId": "h"})
    await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'h'")
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 2)
    await sql(
        ripple,
        "WITH b AS (INSERT INTO videos (twitch_id, title, status) SELECT 'b' || g, 't', 'Queued' "
        "FROM generate_series(1, 300) g) UPDATE videos SET progress_percentage = 3 WHERE twitch_id = 'h'",
    )
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 3)
    other = await client.subscribe("testing:sometimes", {"twitchId": "h"})
    await client.unsubscribe(qid)
    assert client.results[other] == 3
    testing_app.READ_NOTHING[0] = True
    try:
        await writer.mutation("testing:setProgress", {"twitchId": "h", "progress": 4})
        await client.expect(lambda m: m["type"] == "Transition" and client.results[other] == -2)
    finally:
        testing_app.READ_NOTHING[0] = False
    await client.close()
    await writer.close()


@pytest.mark.parametrize("ripple", [{"log_check_interval_s": 60.0}], indirect=True)
async def test_writes_no_query_read_cost_the_hub_no_query(ripple: RippleServer) -> None:
    """Commits whose announced changes touch no subscribed query advance the hub without a snapshot: the covering
    Transitions still come, the hub's backend runs no statement, and a write that does touch a query is re-run."""
    client = await SyncClient.connect(ripple.ws_url)
    writer = await SyncClient.connect(ripple.ws_url)
    await writer.mutation("testing:setProgress", {"twitchId": "watched", "progress": 1})
    qid = await client.subscribe("testing:count", {"twitchId": "watched"})
    await writer.mutation("testing:setProgress", {"twitchId": "unwatched", "progress": 0})
    hub = ripple.services.hub
    hub_pid = hub._conn.backend_pid
    started = "SELECT query_start FROM pg_stat_activity WHERE pid = $1"
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        before, quiet = await conn.fetchval(started, hub_pid), hub.quiet_rounds
        for n in range(1, 6):
            await writer.mutation("testing:setProgress", {"twitchId": "unwatched", "progress": n})
        assert hub.quiet_rounds >= quiet + 1
        assert await conn.fetchval(started, hub_pid) == before
        await writer.mutation("testing:setProgress", {"twitchId": "watched", "progress": 2})
        await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 2)
        assert await conn.fetchval(started, hub_pid) != before
    finally:
        await conn.close()
    await client.close()
    await writer.close()


async def test_a_transition_never_shows_a_commit_without_the_earlier_ones(ripple: RippleServer) -> None:
    """Writers draw commit timestamps without waiting for each other, so a later ts can become visible first.
    Here a writer draws its ts and then sleeps inside COMMIT (a deferred trigger after Ripple's), while a second
    writer commits a later ts at once. The hub's snapshot then holds the later commit only: it must notice, wait
    for the earlier one (settle), and never send the later write without the earlier."""
    client, writer, early, late = await early_and_late(ripple)
    assert (client.results[early], client.results[late]) == (1, 1)
    await sql(
        ripple,
        """
        CREATE TABLE slow_commit (n int);
        CREATE FUNCTION slow_commit_sleep() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(0.8); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow_commit_sleep AFTER INSERT ON slow_commit
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit_sleep();
        """,
    )
    settles = ripple.services.metrics.hub_settles._value.get()
    slow = asyncio.create_task(
        sql(
            ripple,
            "BEGIN; UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'early';"
            " INSERT INTO slow_commit VALUES (1); COMMIT",
        )
    )
    await asyncio.sleep(0.2)  # the early writer has its ts and sleeps inside COMMIT
    await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'late'")
    seen: list[tuple[float, float]] = []

    def both_new(message: dict[str, object]) -> bool:
        if message["type"] != "Transition":
            return False
        seen.append((client.results[early], client.results[late]))
        return client.results[late] == 2

    await client.expect(both_new, timeout_s=10)
    await slow
    assert seen[-1] == (2, 2), seen  # the late write arrived together with the early one, never alone
    assert ripple.services.metrics.hub_settles._value.get() > settles
    await client.close()
    await writer.close()


async def test_a_transaction_holding_its_ts_open_holds_up_the_hub_not_every_writer(ripple: RippleServer) -> None:
    """A transaction that drew its commit ts early (`SELECT _ripple_commit_ts()`) and stays open: the hub cannot
    send the later commits without it, but writers queued behind the hub's wait are let go after a while."""
    client = await SyncClient.connect(ripple.ws_url)
    writer = await SyncClient.connect(ripple.ws_url)
    for row in ("early", "late", "other"):
        await writer.mutation("testing:setProgress", {"twitchId": row, "progress": 1})
    early = await client.subscribe("testing:count", {"twitchId": "early"})
    late = await client.subscribe("testing:count", {"twitchId": "late"})
    holder = await asyncpg.connect(ripple.settings.database_url)
    try:
        await holder.execute("BEGIN; UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'early'")
        await holder.fetchval("SELECT _ripple_commit_ts()")
        await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'late'")
        await asyncio.sleep(0.3)  # the hub saw the gap and waits for the holder
        t0 = asyncio.get_running_loop().time()
        await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'other'")
        assert asyncio.get_running_loop().time() - t0 < 4  # queued behind the hub's wait at most once
        assert (client.results[early], client.results[late]) == (1, 1)  # nothing sent without the early commit
        await holder.execute("COMMIT")
    finally:
        await holder.close()
    await client.expect(lambda m: m["type"] == "Transition" and client.results[late] == 2, timeout_s=15)
    assert client.results[early] == 2
    await client.close()
    await writer.close()


async def test_lost_listen_connection_is_caught_up(ripple: RippleServer) -> None:
    hub = ripple.services.hub
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:count", {"twitchId": "k"})
    writer = await SyncClient.connect(ripple.ws_url)
    await writer.mutation("testing:setProgress", {"twitchId": "k", "progress": 1})

    async def keep_writing() -> None:
        for n in range(2, 30):
            await sql(ripple, "UPDATE videos SET progress_percentage = $1 WHERE twitch_id = 'k'", float(n))
            await asyncio.sleep(0.01)

    writes = asyncio.create_task(keep_writing())
    for _ in range(3):
        await asyncio.sleep(0.05)
        pid = hub.feed.backend_pid
        await sql(ripple, "SELECT pg_terminate_backend($1)", pid)
    await writes
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 29, timeout_s=15)
    assert hub.feed.reconnects >= 1
    await client.close()
    await writer.close()


async def test_one_transaction_of_100k_rows_invalidates_correctly(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    last = await client.subscribe("testing:count", {"twitchId": "bulk-99999"})
    untouched = await client.subscribe("testing:videosByStatus", {"status": "Completed"})
    assert client.results[last] == -1
    await sql(
        ripple,
        """
        INSERT INTO videos (twitch_id, title, status, progress_percentage)
        SELECT 'bulk-' || i, 'bulk', 'Bulk', 5 FROM generate_series(0, 99999) AS i
    """,
    )
    await client.expect(lambda m: m["type"] == "Transition" and client.results[last] == 5, timeout_s=30)
    assert client.results[untouched] == []
    await client.close()


async def test_hub_behind_the_pruned_horizon_reruns_everything(ripple: RippleServer) -> None:
    hub = ripple.services.hub
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:count", {"twitchId": "h"})
    await hub.feed.close()  # the hub hears nothing from now on
    await sql(ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('h', 'h', 'Q', 7)")
    await sql(ripple, "SELECT _ripple_prune(0)")  # ...and the log of that write is gone
    hub._wake()  # as a reconnect would
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 7)
    await client.close()


async def test_two_processes_on_one_database(ripple: RippleServer) -> None:
    async with second_process(ripple) as other, httpx.AsyncClient(base_url=other) as http:
        here = await SyncClient.connect(ripple.ws_url)
        there = await SyncClient.connect(other.replace("http", "ws") + "/api/sync")
        q_here = await here.subscribe("testing:count", {"twitchId": "mp"})
        q_there = await there.subscribe("testing:count", {"twitchId": "mp"})
        # A mutation through the other process updates subscribers of this one, and the reverse.
        await there.mutation("testing:setProgress", {"twitchId": "mp", "progress": 1})
        await here.expect(lambda m: m["type"] == "Transition" and here.results[q_here] == 1)
        await here.mutation("testing:setProgress", {"twitchId": "mp", "progress": 2})
        await there.expect(lambda m: m["type"] == "Transition" and there.results[q_there] == 2)
        body = (
            await http.post(
                "/api/mutation", json={"path": "testing:setProgress", "args": {"twitchId": "mp", "progress": 3}}
            )
        ).json()
        assert body["status"] == "success", body
        await here.expect(lambda m: m["type"] == "Transition" and here.results[q_here] == 3)
        await here.close()
        await there.close()


async def test_old_log_rows_are_pruned_on_a_schedule(fresh_dsn: str) -> None:
    from tests.support.server import run_server

    async with run_server(fresh_dsn, prune_interval_s=0.2, log_retention_s=0.0) as server:
        writer = await SyncClient.connect(server.ws_url)
        for n in range(3):
            await writer.mutation("testing:setProgress", {"twitchId": "pr", "progress": n})
        conn = await asyncpg.connect(fresh_dsn)
        try:
            for _ in range(50):
                if await conn.fetchval("SELECT count(*) FROM _ripple_commits") == 0:
                    break
                await asyncio.sleep(0.1)
            assert await conn.fetchval("SELECT count(*) FROM _ripple_commits") == 0
            assert await conn.fetchval("SELECT count(*) FROM _ripple_changes") == 0
            assert await conn.fetchval("SELECT ts FROM _ripple_horizon") > 0
        finally:
            await conn.close()
        # The hub goes on from the pruned log.
        watcher = await SyncClient.connect(server.ws_url)
        qid = await watcher.subscribe("testing:count", {"twitchId": "pr"})
        await writer.mutation("testing:setProgress", {"twitchId": "pr", "progress": 9})
        await watcher.expect(lambda m: m["type"] == "Transition" and watcher.results[qid] == 9)
        await writer.close()
        await watcher.close()


async def test_a_query_failing_inside_postgresql_fails_alone(ripple: RippleServer) -> None:
    """PostgreSQL refuses a NUL character in text, which aborts the statement's transaction; the hub runs every
    re-run of a round in one transaction, so that error must not reach the other queries of the round (some of
    them run after it, whichever way the round orders them)."""
    client = await SyncClient.connect(ripple.ws_url)
    await sql(
        ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('nul', 't', 'Queued', 1)"
    )
    # Each reads the row first, so it is re-run with the others whenever the row changes.
    bad = [await client.subscribe("testing:counts", {"twitchIds": ["nul", "a<nul>b"]})]
    good = [await client.subscribe("testing:counts", {"twitchIds": ["nul"] * k}) for k in (1, 2, 3)]
    bad += [await client.subscribe("testing:counts", {"twitchIds": ["nul", "nul", "a<nul>b"]})]
    good += [await client.subscribe("testing:counts", {"twitchIds": ["nul"] * k}) for k in (4, 5, 6)]
    for value in (2, 3, 4):
        await as_ripple_writer(ripple, "UPDATE videos SET progress_percentage = $1 WHERE twitch_id = 'nul'", value)
        await client.expect(lambda m, v=value: m["type"] == "Transition" and client.results.get(good[0]) == [v])
        assert [client.results.get(q) for q in good] == [[value] * k for k in range(1, 7)]
        assert all("the database refused" in client.errors[q]["errorMessage"] for q in bad)
    await client.close()


@pytest.mark.parametrize("ripple", [{"query_timeout_s": 1.0}], indirect=True)
async def test_a_query_cut_off_by_its_time_limit_fails_alone(ripple: RippleServer) -> None:
    """The time limit cancels a re-run's statement (here one waiting for a table another session holds locked),
    which aborts the round's transaction; the round's other re-runs still read at its ts, and the cut-off
    query recovers once its statement can run."""
    client = await SyncClient.connect(ripple.ws_url)
    await sql(
        ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('lim', 't', 'Queued', 1)"
    )
    good = [await client.subscribe("testing:counts", {"twitchIds": ["lim"] * k}) for k in (1, 2)]
    slow = await client.subscribe("testing:countThenFirst", {"twitchId": "lim", "table": "agentSessions"})
    good += [await client.subscribe("testing:counts", {"twitchIds": ["lim"] * k}) for k in (3, 4)]
    assert client.results[slow] == [1, None]
    locker = await asyncpg.connect(ripple.settings.database_url)
    try:
        await locker.execute("BEGIN; LOCK TABLE agent_sessions IN ACCESS EXCLUSIVE MODE")
        await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'lim'")
        await client.expect(lambda m: m["type"] == "Transition" and slow in client.errors)
        assert "longer than 1.0 s" in client.errors[slow]["errorMessage"]
        assert [client.results.get(q) for q in good] == [[2] * k for k in range(1, 5)]
    finally:
        await locker.close()
    await sql(ripple, "UPDATE videos SET progress_percentage = 3 WHERE twitch_id = 'lim'")
    await client.expect(lambda m: m["type"] == "Transition" and client.results.get(slow) == [3, None])
    assert [client.results.get(q) for q in good] == [[3] * k for k in range(1, 5)]
    await client.close()
