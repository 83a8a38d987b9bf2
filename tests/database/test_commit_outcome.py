"""A mutation's reported outcome matches what is in the database: a COMMIT that is slow, cut off from its client,
or whose caller was cancelled is waited for or settled by its dedupe row; a resent request replays only for the
same caller, function and arguments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.database.catalog import apply_schema, load_catalog
from server.database.database import Database
from server.database.pool import create_pool
from server.database.transaction import DatabaseWriter, Transaction
from server.database.writers import APPLICATION_NAME, Writers
from server.errors import RippleError
from server.functions.context import Caller
from server.functions.runner import Runner
from tests.conftest import SCHEMA_SQL
from tests.support import testing_app  # noqa: F401  (registers the testing: functions)

# At COMMIT, a video whose twitch_id starts with "slow" takes half a second (a deferred constraint trigger).
SLOW_COMMIT_SQL = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.twitch_id LIKE 'slow%' THEN
        PERFORM pg_sleep(0.5);
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON videos DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""
_SLEEPING_WRITER = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1"
    " AND wait_event = 'PgSleep'"
)


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    pool = await create_pool(fresh_dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await apply_schema(conn, SCHEMA_SQL)
        await conn.execute(SLOW_COMMIT_SQL)
        catalog = await load_catalog(conn)
    writers = Writers(fresh_dsn, 4)
    try:
        yield Database(pool, writers, catalog)
    finally:
        await writers.close()
        await pool.close()


class Slow:
    """A mutation inserting a video whose COMMIT sleeps; remembers its writer connection. With `after_draw`, it
    first inserts another video, so the sleep comes after the ts was drawn and announced (deferred events fire in
    the order they were queued); otherwise before, and a client lost while it sleeps aborts the COMMIT (sending the
    announcement's NOTICE then fails)."""

    def __init__(self, twitch_id: str, *, after_draw: bool = False) -> None:
        self.twitch_id = twitch_id
        self.after_draw = after_draw
        self.conn: asyncpg.Connection | None = None

    async def __call__(self, tx: Transaction) -> str:
        self.conn = tx.conn
        db = DatabaseWriter(tx)
        if self.after_draw:
            await db.insert("videos", {"twitchId": f"before-{self.twitch_id}", "title": "t", "status": "Queued"})
        return await db.insert("videos", {"twitchId": self.twitch_id, "title": "t", "status": "Queued"})


async def sleeping_writer(db: Database) -> int:
    """The pid of the writer backend sleeping in its COMMIT, once it does."""
    for _ in range(500):
        pid = await db.pool.fetchval(_SLEEPING_WRITER, APPLICATION_NAME)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("no writer reached its COMMIT")


async def stored(db: Database, twitch_id: str) -> int:
    return int(await db.pool.fetchval("SELECT count(*) FROM videos WHERE twitch_id = $1", twitch_id))


async def listen(db: Database) -> tuple[asyncpg.Connection, asyncio.Queue[str]]:
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(db.writers.dsn)
    await conn.add_listener("ripple_commits", lambda *a: heard.put_nowait(a[-1].partition(" ")[0]))
    return conn, heard


async def test_a_connection_lost_mid_commit_reports_the_commit_that_happened(db: Database) -> None:
    """The client side of the writer's socket closes while its COMMIT runs, after the draw: the backend still
    commits. The outcome
    is settled from the (internal) dedupe row once the backend has ended, and the commit is announced again, as its
    NOTIFY was lost with the connection."""
    listener, heard = await listen(db)
    told: list[Any] = []
    db.on_commit.append(told.append)
    try:
        fn = Slow("slow-closed", after_draw=True)
        task = asyncio.create_task(db.mutate(fn))
        await sleeping_writer(db)
        assert fn.conn is not None
        fn.conn.terminate()
        outcome = await task
        assert await stored(db, "slow-closed") == 1
        assert outcome.value == await db.pool.fetchval("SELECT _id FROM videos WHERE twitch_id = 'slow-closed'")
        assert outcome.ts == await db.latest_ts() > 0
        assert [a.ts for a in told] == [outcome.ts]
        assert await asyncio.wait_for(heard.get(), 5) == str(outcome.ts)
        assert (await db.mutate(Slow("after"))).ts == outcome.ts + 1  # the pool replaced the writer
    finally:
        await listener.close()


async def test_a_commit_aborted_by_a_lost_or_killed_writer_reports_that_nothing_was_applied(db: Database) -> None:
    """pg_terminate_backend while the COMMIT runs aborts it, and so does a client lost before the announcement's
    NOTICE could be sent: the caller hears it was not applied, and it was not."""
    for how in ("killed", "closed"):
        fn = Slow(f"slow-{how}")
        task = asyncio.create_task(db.mutate(fn))
        pid = await sleeping_writer(db)
        if how == "killed":
            assert await db.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        else:
            assert fn.conn is not None
            fn.conn.terminate()
        with pytest.raises(RippleError, match="did not commit"):
            await task
        assert await stored(db, f"slow-{how}") == 0
    assert await db.pool.fetchval("SELECT count(*) FROM _ripple_mutations") == 0
    assert await db.latest_ts() == 0


async def test_a_caller_cancelled_mid_commit_waits_for_it_and_the_commit_is_announced(db: Database) -> None:
    listener, heard = await listen(db)
    told: list[Any] = []
    db.on_commit.append(told.append)
    try:
        task = asyncio.create_task(db.mutate(Slow("slow-cancelled")))
        await sleeping_writer(db)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancellation waited for the COMMIT: it is visible, announced, and the writer is free again.
        assert await stored(db, "slow-cancelled") == 1
        ts = await db.latest_ts()
        assert [a.ts for a in told] == [ts]
        assert await asyncio.wait_for(heard.get(), 5) == str(ts)
        assert await db.pool.fetchval(_SLEEPING_WRITER, APPLICATION_NAME) is None
        assert (await db.mutate(Slow("after"))).ts == ts + 1
        assert db.writers.opened == 1  # the same writer, healthy after its shielded COMMIT
    finally:
        await listener.close()


class User:
    def __init__(self, name: str) -> None:
        self.token_identifier = f"issuer|{name}"

    def to_user_identity(self) -> dict[str, Any]:
        return {"tokenIdentifier": self.token_identifier}


async def test_a_resent_request_replays_only_for_the_same_caller_function_and_arguments(db: Database) -> None:
    runner = Runner(db)
    alice, bob = Caller(User("alice")), Caller(User("bob"))
    args = {"twitchId": "d", "progress": 1}

    first = await runner.call("testing:setProgress", args, alice, dedupe=("s", 1))
    assert first.ok, first.error_message
    again = await runner.call("testing:setProgress", {"progress": 1, "twitchId": "d"}, alice, dedupe=("s", 1))
    assert again.ok and again.ts == first.ts
    commits = await db.latest_ts()

    refused = [
        (await runner.call("testing:setProgress", args, bob, dedupe=("s", 1)), "by another caller"),
        (await runner.call("testing:setProgress", args, Caller(), dedupe=("s", 1)), "by another caller"),
        (
            await runner.call("testing:setProgress", args, Caller(User("alice"), is_admin=True), dedupe=("s", 1)),
            "by another caller",
        ),
        (
            await runner.call("testing:setProgress", {"twitchId": "d", "progress": 2}, alice, dedupe=("s", 1)),
            "with other arguments",
        ),
        (
            await runner.call("testing:increment", {"twitchId": "d"}, alice, dedupe=("s", 1)),
            "for another function (testing:setProgress, not testing:increment)",
        ),
    ]
    for outcome, differs in refused:
        assert not outcome.ok
        assert differs in outcome.error_message and "request 1 of session s" in outcome.error_message
    # Nothing of the refused requests ran.
    assert await db.latest_ts() == commits
    assert await db.pool.fetchval("SELECT progress_percentage FROM videos WHERE twitch_id = 'd'") == 1
    # Another request id is another mutation.
    assert (await runner.call("testing:setProgress", {"twitchId": "d", "progress": 2}, bob, dedupe=("s", 2))).ok
    assert await db.pool.fetchval("SELECT progress_percentage FROM videos WHERE twitch_id = 'd'") == 2
