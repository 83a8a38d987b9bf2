"""Writer connections (server/database/writers.py): kept inside an open transaction, reused after failures,
replaced when the server ends them, announcing each commit's ts, and resting so PostgreSQL reports their
statistics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.database.catalog import apply_schema, load_catalog
from server.database.database import Database
from server.database.pool import create_pool
from server.database.transaction import DatabaseWriter
from server.database.writers import APPLICATION_NAME, Writers
from server.errors import ConvexError
from tests.conftest import SCHEMA_SQL


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    pool = await create_pool(fresh_dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_schema(conn, SCHEMA_SQL)
        catalog = await load_catalog(conn)
    writers = Writers(fresh_dsn, 4)
    try:
        yield Database(pool, writers, catalog)
    finally:
        await writers.close()
        await pool.close()


async def insert(db: Database, twitch_id: str) -> Any:
    async def fn(tx: Any) -> str:
        return await DatabaseWriter(tx).insert("videos", {"twitchId": twitch_id, "title": "t", "status": "Queued"})

    return await db.mutate(fn)


async def writer_pids(db: Database) -> list[int]:
    return [
        r[0]
        for r in await db.pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
            APPLICATION_NAME,
        )
    ]


async def test_each_commit_returns_and_announces_its_ts(db: Database) -> None:
    listener = await asyncpg.connect(db.writers.dsn)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("ripple_commits", lambda *a: heard.put_nowait(a[-1].partition(" ")[0]))
    try:
        first, second = await insert(db, "a"), await insert(db, "b")
        assert second.ts == first.ts + 1
        assert [await asyncio.wait_for(heard.get(), 5) for _ in range(2)] == [str(first.ts), str(second.ts)]
        assert db.writers.opened == 1  # one connection, reused
        # nothing written: no ts drawn, no NOTIFY; the newest visible ts is reported
        nothing = await db.mutate(lambda tx: asyncio.sleep(0))
        assert nothing.ts == second.ts
        await asyncio.sleep(0.2)
        assert heard.empty()
    finally:
        await listener.close()


async def test_a_commit_hands_its_changes_to_the_hub(db: Database) -> None:
    """What the COMMIT announced reaches `on_commit` (the local hub) with the keys the log holds."""
    heard: list[Any] = []
    db.on_commit.append(heard.append)
    outcome = await insert(db, "told")
    (said,) = heard
    assert said.ts == outcome.ts
    (change,) = said.changes
    assert (change.table, change.old_keys) == ("videos", None)
    assert change.new_keys["twitch_id"] == "told"
    assert await db.pool.fetchval("SELECT doc_id FROM _ripple_changes") == change.doc_id


async def test_a_failing_mutation_leaves_nothing_and_keeps_the_connection(db: Database) -> None:
    async def fails(tx: Any) -> None:
        await DatabaseWriter(tx).insert("videos", {"twitchId": "gone", "title": "t", "status": "Queued"})
        raise ConvexError("no")

    for _ in range(3):
        with pytest.raises(ConvexError):
            await db.mutate(fails)

    async def statement_fails(tx: Any) -> None:
        await DatabaseWriter(tx).insert("videos", {"twitchId": "gone", "title": "t", "status": "Queued"})
        await tx.conn.execute("SELECT 1/0")

    with pytest.raises(asyncpg.DivisionByZeroError):  # the transaction is aborted, not just abandoned
        await db.mutate(statement_fails)
    assert (await insert(db, "kept")).ts > 0
    assert await db.pool.fetchval("SELECT array_agg(twitch_id) FROM videos") == ["kept"]
    assert db.writers.opened == 1


async def test_a_writer_ended_by_the_server_is_replaced(db: Database) -> None:
    await insert(db, "a")
    [pid] = await writer_pids(db)
    assert await db.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    await asyncio.sleep(0.2)
    assert (await insert(db, "b")).ts > 0
    assert db.writers.opened == 1 and await writer_pids(db) != [pid]


async def test_writers_rest_so_postgres_reports_their_statistics(db: Database) -> None:
    """A backend reports table statistics only when idle outside a transaction; autovacuum goes by them. Each
    writer rests within about a second of its last use, so within a few seconds every writer is outside a
    transaction and the inserts are counted (a writer used last may still be inside one for that second)."""
    for i in range(5):
        await insert(db, f"v{i}")
    busy = """SELECT coalesce(array_agg(state ORDER BY state), '{}') FROM pg_stat_activity
              WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()"""
    deadline = time.monotonic() + 5
    inserted, states = 0, None
    while time.monotonic() < deadline:
        await db.pool.execute("SELECT pg_stat_clear_snapshot()")
        inserted = await db.pool.fetchval("SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'videos'")
        states = await db.pool.fetchval(busy)
        if inserted == 5 and states == []:
            break
        await asyncio.sleep(0.2)
    assert inserted == 5
    assert states == [], states  # no writer left inside a transaction: each rested


async def test_a_writer_rests_a_quiet_second_after_its_last_use_not_its_first(db: Database) -> None:
    """Its rest timer is set once and looks again when the writer was used meanwhile, so a busy writer is not
    made to rest mid-stream and no timer is left behind per mutation."""
    state = "SELECT state FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1"
    await insert(db, "a")
    await asyncio.sleep(0.6)
    await insert(db, "b")
    await asyncio.sleep(0.7)  # 1.3 s after the first use, 0.7 s after the last
    assert await db.pool.fetchval(state, APPLICATION_NAME) == "idle in transaction"
    await asyncio.sleep(0.6)
    assert await db.pool.fetchval(state, APPLICATION_NAME) == "idle"
