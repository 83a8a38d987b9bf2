"""schema.sql against a real PostgreSQL: the commit clock under concurrent writers, pruning the log, and the
ts across restarts of the embedded server."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import psutil
from pgserver.postgres_server import PostgresServer

from server.database.embedded import EmbeddedPostgres, create_database
from tests.support.sql import (
    INSERT_GENERATION,
    INSERT_WORKFLOW,
    SCHEMA,
    commits,
    connect,
    listening,
)

# --------------------------------------------------------------------------------------------------------------
# the clock under concurrency


async def test_concurrent_writers_commit_order_is_visibility_order(schema_dsn: str) -> None:
    writers, per_writer = 6, 15
    done = asyncio.Event()
    returned: list[list[int]] = [[] for _ in range(writers)]
    snapshots: list[tuple[set[int], int]] = []

    async def writer(n: int) -> None:
        async with connect(schema_dsn) as conn:
            for i in range(per_writer):
                if n % 2:  # a Ripple-style mutation: learns its ts before COMMIT
                    async with conn.transaction(isolation="serializable"):
                        await conn.fetchrow(INSERT_GENERATION, f"w{n}", "pending", float(i))
                        returned[n].append(await conn.fetchval("SELECT _ripple_commit_ts()"))
                    # read your writes: a snapshot taken after the COMMIT returned includes it
                    assert await conn.fetchval("SELECT _ripple_latest_ts()") >= returned[n][-1]
                else:  # a plain writer: the deferred trigger draws the ts at COMMIT
                    await conn.fetchval(INSERT_WORKFLOW, f"w{n}-{i}")

    async def reader(plain_first: bool) -> None:
        after = 0
        async with connect(schema_dsn) as conn:
            while not done.is_set():
                visible, after = await settled_snapshot(conn, after, plain_first=plain_first)
                snapshots.append((visible, after))
                await asyncio.sleep(0)

    async with listening(schema_dsn) as listener:
        readers = [asyncio.create_task(reader(plain_first)) for plain_first in (True, True, False)]
        await asyncio.gather(*(writer(n) for n in range(writers)))
        done.set()
        await asyncio.gather(*readers)
        notified = [await listener.next() for _ in range(writers * per_writer)]
        notified += await listener.drain()

    async with connect(schema_dsn) as conn:
        log = await commits(conn)
        all_ts = [ts for ts, _ in log]
        assert len(all_ts) == writers * per_writer == len(set(all_ts))
        assert await conn.fetchval("SELECT count(*) FROM _ripple_changes") == writers * per_writer
        assert await conn.fetchval("SELECT count(DISTINCT xid) FROM _ripple_changes") == writers * per_writer

    for mine in returned:
        assert mine == sorted(mine) and len(set(mine)) == len(mine)
        assert set(mine) <= set(all_ts)
    # one NOTIFY per commit (in the order commits became visible, which need not be ts order)
    assert sorted(notified) == all_ts
    # every settled snapshot holds exactly a prefix of the commits in ts order, and its latest ts names it
    assert len(snapshots) > 10
    for visible, latest in snapshots:
        prefix = set(all_ts[: len(visible)])
        assert visible == prefix
        assert latest == (max(visible) if visible else 0)


async def settled_snapshot(
    conn: asyncpg.Connection, after: int = 0, *, plain_first: bool = True
) -> tuple[set[int], int]:
    """The hub's way to a snapshot that holds exactly the commits up to its latest ts (schema.sql): a plain one
    when _ripple_settled() says every ts after `after` (the last one handled) is there, else one taken with the
    clock key held."""
    sql = (
        "SELECT (SELECT coalesce(array_agg(ts), '{{}}') FROM _ripple_commits) AS visible,"
        " _ripple_latest_ts() AS latest, {check} AS ok"
    )
    if plain_first:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(sql.format(check="_ripple_settled($1, _ripple_latest_ts())"), after)
        if row["ok"]:
            return set(row["visible"]), row["latest"]
    await conn.execute("SELECT _ripple_settle()")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(sql.format(check="_ripple_unsettle()"))
    assert row["ok"]
    return set(row["visible"]), row["latest"]


async def test_writers_do_not_wait_for_each_other_and_settled_snapshots_wait_for_them(schema_dsn: str) -> None:
    """A writer that drew its ts but is slow to become visible (a later deferred trigger sleeps) does not hold up
    a writer that draws a later ts; a plain snapshot taken meanwhile sees the later commit without the earlier
    one, which is why the hub settles first: a settled snapshot waits for the slow writer and sees both."""
    async with connect(schema_dsn) as slow, connect(schema_dsn) as fast, connect(schema_dsn) as reader:
        await slow.execute(
            """
            CREATE TABLE slow_commit (n int);
            CREATE FUNCTION slow_commit_sleep() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN PERFORM pg_sleep(0.8); RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER slow_commit_sleep AFTER INSERT ON slow_commit
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit_sleep();
            """
        )
        slow_commit = asyncio.create_task(
            slow.execute(
                "BEGIN; INSERT INTO workflows (task, status, current_step) VALUES ('slow', 'pending', 'planner');"
                " INSERT INTO slow_commit VALUES (1); COMMIT"
            )
        )
        await asyncio.sleep(0.2)  # the slow writer has drawn its ts and sleeps inside COMMIT
        t0 = time.perf_counter()
        await fast.fetchval(INSERT_WORKFLOW, "fast")
        assert time.perf_counter() - t0 < 0.3 and not slow_commit.done()
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            plain = {r[0] for r in await reader.fetch("SELECT ts FROM _ripple_commits")}
            assert await reader.fetchval("SELECT _ripple_settled(0, _ripple_latest_ts())") is False  # ...and knows
        t1 = time.perf_counter()
        settled = await settled_snapshot(reader)
        waited = time.perf_counter() - t1
        await slow_commit
        (ts_slow, _), (ts_fast, _) = await commits(reader)
        assert ts_slow < ts_fast
        assert plain == {ts_fast}  # the later ts is visible, the earlier one not yet: not a prefix
        assert settled == ({ts_slow, ts_fast}, ts_fast)
        assert waited > 0.2
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            assert await reader.fetchval("SELECT _ripple_settled(0, _ripple_latest_ts())") is True  # all in


async def test_serializable_writers_never_conflict_on_the_clock(schema_dsn: str) -> None:
    async with connect(schema_dsn) as a, connect(schema_dsn) as b, connect(schema_dsn) as setup:
        # 1. two SERIALIZABLE transactions writing different rows, interleaved
        ta, tb = a.transaction(isolation="serializable"), b.transaction(isolation="serializable")
        await ta.start()
        await tb.start()
        await a.fetchrow(INSERT_GENERATION, "a", "pending", 1.0)
        await b.fetchrow(INSERT_GENERATION, "b", "pending", 1.0)
        await b.fetchval(INSERT_WORKFLOW, "b")
        await a.fetchval(INSERT_WORKFLOW, "a")
        ts_a = await a.fetchval("SELECT _ripple_commit_ts()")
        await ta.commit()
        ts_b = await b.fetchval("SELECT _ripple_commit_ts()")
        await tb.commit()
        assert ts_a < ts_b

        # 2. B reads X, A writes X and commits, then B writes elsewhere: serializable as B-before-A. The clock
        #    must not add an A->B edge (e.g. by A's COMMIT-time work reading the page B's write goes to).
        x = await setup.fetchval(INSERT_WORKFLOW, "x")
        for explicit in (False, True):
            ta, tb = a.transaction(isolation="serializable"), b.transaction(isolation="serializable")
            await ta.start()
            await tb.start()
            await b.fetchrow("SELECT * FROM workflows WHERE _id = $1", x)
            await a.execute("UPDATE workflows SET status = 'running' WHERE _id = $1", x)
            if explicit:
                await a.fetchval("SELECT _ripple_commit_ts()")
            await ta.commit()
            await b.execute("INSERT INTO videos (twitch_id, title, status) VALUES ('v', 't', 'Queued')")
            if explicit:
                await b.fetchval("SELECT _ripple_commit_ts()")
            await tb.commit()

    # 3. many concurrent SERIALIZABLE inserters: not a single serialization failure
    async def inserter(n: int) -> None:
        async with connect(schema_dsn) as conn:
            for i in range(10):
                async with conn.transaction(isolation="serializable"):
                    await conn.fetchrow(INSERT_GENERATION, f"s{n}", "pending", float(i))
                    await conn.fetchval(INSERT_WORKFLOW, f"s{n}-{i}")
                    if i % 2:
                        await conn.fetchval("SELECT _ripple_commit_ts()")

    await asyncio.gather(*(inserter(n) for n in range(6)))
    async with connect(schema_dsn) as conn:
        assert len(await commits(conn)) == 2 + 1 + 2 * 2 + 60  # part 1, the setup insert, part 2, part 3


# --------------------------------------------------------------------------------------------------------------
# pruning


async def test_prune_removes_old_rows_and_sets_the_horizon(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        for i in range(2):
            await conn.fetchval(INSERT_WORKFLOW, f"old{i}")
        await asyncio.sleep(0.3)
        await conn.fetchval(INSERT_WORKFLOW, "new")
        (ts_a, xid_a), (ts_b, xid_b), (ts_c, xid_c) = await commits(conn)
        await conn.execute(
            "INSERT INTO _ripple_mutations (session_id, request_id, ts, created_at)"
            " VALUES ('s', 1, 1, now() - interval '1 hour'), ('s', 2, 2, now())"
        )
        drawn = "SELECT extract(epoch FROM at) * 1000 FROM _ripple_commits WHERE ts = $1"
        at_b, at_c = [float(await conn.fetchval(drawn, ts)) for ts in (ts_b, ts_c)]
        middle_ms = (at_b + at_c) / 2  # keep_ms such that the cutoff falls half-way between B and C
        keep_ms = "extract(epoch FROM clock_timestamp()) * 1000 - $1::float8"
        assert await conn.fetchval(f"SELECT _ripple_prune(({keep_ms})::float8)", middle_ms) == 2
        assert await commits(conn) == [(ts_c, xid_c)]
        assert await conn.fetchval("SELECT count(*) FROM _ripple_changes WHERE xid IN ($1, $2)", xid_a, xid_b) == 0
        assert await conn.fetchval("SELECT count(*) FROM _ripple_changes WHERE xid = $1", xid_c) == 1
        assert await conn.fetchval("SELECT ts FROM _ripple_horizon") == ts_b
        assert [r[0] for r in await conn.fetch("SELECT request_id FROM _ripple_mutations")] == [2]
        assert await conn.fetchval("SELECT _ripple_latest_ts()") == ts_c

        assert await conn.fetchval("SELECT _ripple_prune(0)") == 1
        assert await commits(conn) == []
        assert await conn.fetchval("SELECT ts FROM _ripple_horizon") == ts_c
        assert await conn.fetchval("SELECT _ripple_latest_ts()") == ts_c  # from the horizon
        assert await conn.fetchval("SELECT _ripple_prune(0)") == 0
        assert await conn.fetchval("SELECT ts FROM _ripple_horizon") == ts_c  # never moves back
        await conn.fetchval(INSERT_WORKFLOW, "after")
        assert await conn.fetchval("SELECT _ripple_latest_ts()") > ts_c


# --------------------------------------------------------------------------------------------------------------
# restarts and the embedded server


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


async def _write_and_get_ts(dsn: str) -> int:
    async with connect(dsn) as conn:
        async with conn.transaction():
            await conn.fetchval(INSERT_WORKFLOW, "t")
            ts: int = await conn.fetchval("SELECT _ripple_commit_ts()")
        assert await conn.fetchval("SELECT _ripple_latest_ts()") == ts
        return ts


async def test_ts_survives_restarts_and_a_killed_holder() -> None:
    """Across a leaked server being taken over and a real restart on the same data, ts only goes up.

    The leak (environment.md, pgserver): a SIGKILLed process stays in `<pgdata>/.handle_pids.json` and its
    postmaster keeps running; a later holder used to leave it running at exit. The state is reproduced here
    in-process (a dead pid in the list, the handle forgotten) instead of killing a child, which costs seconds.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ripple-restart-"))
    pgdata = (tmp / "pgdata").resolve()
    first, second = EmbeddedPostgres(), EmbeddedPostgres()
    try:
        dsn = await create_database(first.start(pgdata), "ripple")
        async with connect(dsn) as conn:
            await conn.execute(SCHEMA)
        ts0 = await _write_and_get_ts(dsn)

        # the holder dies by SIGKILL: its pid stays listed, nobody stops its postmaster
        dead = subprocess.Popen(["true"])
        dead.wait()
        (pgdata / ".handle_pids.json").write_text(json.dumps([dead.pid]))
        PostgresServer._instances.pop(pgdata)
        leaked = _postmaster_pid(pgdata)

        assert second.start(pgdata) == dsn.replace("/ripple?", "/postgres?")
        assert _postmaster_pid(pgdata) == leaked  # taken over, not restarted
        ts1 = await _write_and_get_ts(dsn)
        assert ts1 > ts0
        second.stop()
        assert _gone(leaked)  # we were its last live holder, so we stopped it

        second.start(pgdata)  # a real restart on the same data
        assert _postmaster_pid(pgdata) != leaked
        ts2 = await _write_and_get_ts(dsn)
        assert ts2 > ts1
        async with connect(dsn) as conn:  # a sequence set back is moved past every ts when the schema is applied
            await conn.execute("SELECT setval('_ripple_ts', 1)")
            await conn.execute(SCHEMA)
        assert await _write_and_get_ts(dsn) == ts2 + 1
    finally:
        second.stop()
        if (pgdata / "postmaster.pid").exists():  # failed half-way: make sure nothing keeps running
            third = EmbeddedPostgres()
            (pgdata / ".handle_pids.json").write_text("[]")
            PostgresServer._instances.pop(pgdata, None)
            third.start(pgdata)
            third.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_create_database_gives_an_empty_database(pg_server: str) -> None:
    dsn = await create_database(pg_server)
    async with connect(dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    name = dsn.split("?")[0].rsplit("/", 1)[1]
    async with connect(pg_server) as admin:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
