"""schema.sql against a real PostgreSQL: change capture, commit announcements and the log's indexes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from server.database.announce import parse_announcement
from server.database.writers import ANNOUNCE_SQL, OPEN_SQL
from tests.support.sql import (
    GEN_KEYS,
    INSERT_GENERATION,
    INSERT_WORKFLOW,
    changes_of,
    commits,
    connect,
    listening,
)

# --------------------------------------------------------------------------------------------------------------
# change capture


async def test_insert_update_delete_record_keys(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        gid, created = await conn.fetchrow(INSERT_GENERATION, "u1", "pending", 1.5)
        await conn.execute("UPDATE generations SET code = 'x' WHERE _id = $1", gid)  # no key changes
        await conn.execute("UPDATE generations SET status = 'success', parent_generation_id = $1 WHERE _id = $1", gid)
        await conn.execute("DELETE FROM generations WHERE _id = $1", gid)
        log = await commits(conn)
        assert len(log) == 4
        per_commit = [await changes_of(conn, xid) for _, xid in log]

    first = {"batch_id": None, "parent_generation_id": None, "status": "pending", "created_at": 1.5, "user_id": "u1"}
    first["_creation_time"] = created
    last = {**first, "status": "success", "parent_generation_id": gid}
    assert list(first) == GEN_KEYS
    expected = [
        {"table": "generations", "doc": gid, "old": None, "new": first},
        {"table": "generations", "doc": gid, "old": first, "new": first},
        {"table": "generations", "doc": gid, "old": first, "new": last},
        {"table": "generations", "doc": gid, "old": last, "new": None},
    ]
    assert per_commit == [[e] for e in expected]


async def test_an_id_changed_by_plain_sql_is_a_delete_and_an_insert(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        old_id = await conn.fetchval(INSERT_WORKFLOW, "t")
        new_id = await conn.fetchval("SELECT _ripple_new_id('workflows')")
        await conn.execute("UPDATE workflows SET _id = $1 WHERE _id = $2", new_id, old_id)
        got = await changes_of(conn, (await commits(conn))[-1][1])
        by_doc = {c["doc"]: (c["old"] is not None, c["new"] is not None) for c in got}
        assert by_doc == {old_id: (True, False), new_id: (False, True)}


async def test_truncate_records_a_delete_per_row(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        ids = {await conn.fetchval(INSERT_WORKFLOW, f"t{i}") for i in range(3)}
        await conn.execute("TRUNCATE workflows")
        ts, xid = (await commits(conn))[-1]
        got = await changes_of(conn, xid)
        assert {c["doc"] for c in got} == ids
        assert all(c["new"] is None and c["old"]["status"] == "pending" for c in got)


async def test_one_transaction_is_one_commit_and_one_notify(schema_dsn: str) -> None:
    async with listening(schema_dsn) as listener, connect(schema_dsn) as conn:
        async with conn.transaction():
            g1, _ = await conn.fetchrow(INSERT_GENERATION, "u", "pending", 1.0)
            g2, _ = await conn.fetchrow(INSERT_GENERATION, "u", "pending", 2.0)
            await conn.execute("UPDATE generations SET status = 'failed' WHERE _id = $1", g1)
            w = await conn.fetchval(INSERT_WORKFLOW, "t")
            xid = await conn.fetchval("SELECT txid_current()")
            assert await conn.fetchval("SELECT count(*) FROM _ripple_pending") == 1
        assert await listener.next() == (await commits(conn))[0][0]
        assert await listener.drain() == []
        log = await commits(conn)
        assert [x for _, x in log] == [xid]
        got = await changes_of(conn, xid)
        assert sorted(c["doc"] for c in got) == sorted([g1, g2, g1, w])
        # The pending row stays until pruning (removing it at COMMIT would cost serialization failures).
        await conn.execute("SELECT _ripple_prune(3600000)")
        assert await conn.fetchval("SELECT count(*) FROM _ripple_pending") == 0
        assert await conn.fetchval("SELECT _ripple_latest_ts()") == log[0][0]


class RippleStyle:
    """A connection that commits as Ripple's writers do (writers.py): `ripple.notify = 'after_commit'`, the
    announcement back as NOTICEs (every one kept, in order), then the NOTIFY after COMMIT from ripple.last_commit."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.notices: list[str] = []
        conn.add_log_listener(self._on)

    def _on(self, _conn: Any, message: Any) -> None:
        if getattr(message, "message", None) == "ripple commit ts":
            self.notices.append(message.detail)

    async def commit(self, *statements: str) -> list[str]:
        """Run `statements` in one Ripple-style transaction; the NOTICEs its COMMIT raised."""
        self.notices = []
        await self.conn.execute(OPEN_SQL)
        for statement in statements:
            await self.conn.execute(statement)
        await self.conn.execute(f"COMMIT; {ANNOUNCE_SQL}")
        return self.notices


async def next_payload(payloads: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(payloads.get(), 5)


async def test_ripple_writers_announce_their_changes_while_they_fit(schema_dsn: str) -> None:
    """A Ripple writer's announcement is the ts and the transaction's changes (the same as the log's) while they fit
    in about 7,000 bytes; a bulk write and a TRUNCATE announce their ts alone, and a reader then goes by the log."""
    payloads: asyncio.Queue[str] = asyncio.Queue()
    async with connect(schema_dsn) as listener, connect(schema_dsn) as conn:
        await listener.add_listener("ripple_commits", lambda *a: payloads.put_nowait(a[-1]))
        writer = RippleStyle(conn)
        g1 = await conn.fetchval(INSERT_WORKFLOW, "made by plain SQL")
        assert (await next_payload(payloads)).isdigit()
        (notice,) = await writer.commit(
            "INSERT INTO generations (_id, user_id, prompt, status, created_at)"
            " VALUES (_ripple_new_id('generations'), 'u', 'p', 'pending', 1)",
            f"UPDATE workflows SET status = 'failed' WHERE _id = '{g1}'",
            f"UPDATE workflows SET _id = _ripple_new_id('workflows') WHERE _id = '{g1}'",
        )
        payload = await next_payload(payloads)
        assert payload == notice
        said = parse_announcement(payload)
        assert said is not None and said.changes is not None
        ts, xid = (await commits(conn))[-1]
        assert said.ts == ts
        logged = await changes_of(conn, xid)
        assert len(logged) == 4
        assert [(c.table, c.doc_id, c.old_keys, c.new_keys) for c in said.changes] == [
            (c["table"], c["doc"], c["old"], c["new"]) for c in logged
        ]
        bulk = (
            "INSERT INTO videos (twitch_id, title, status)"
            " SELECT 'bulk' || g, 't', 'Queued' FROM generate_series(1, 200) g"
        )
        assert [n.isdigit() for n in await writer.commit(bulk)] == [True]
        assert (await next_payload(payloads)).isdigit()
        assert [n.isdigit() for n in await writer.commit("TRUNCATE videos")] == [True]
        assert (await next_payload(payloads)).isdigit()
        # The limit counts bytes: 4,000 characters of "€" are 12,000 bytes, past what a NOTIFY can carry.
        big = (
            "INSERT INTO generations (_id, user_id, prompt, status, created_at)"
            " VALUES (_ripple_new_id('generations'), repeat('€', 4000), 'p', 'pending', 1)"
        )
        assert [n.isdigit() for n in await writer.commit(big)] == [True]
        assert (await next_payload(payloads)).isdigit()


async def test_plain_sql_announces_the_ts_alone_even_when_it_writes_after_the_draw(schema_dsn: str) -> None:
    """A plain-SQL writer NOTIFYs inside its transaction, when its ts is drawn, which may be before its last write
    (SET CONSTRAINTS ALL IMMEDIATE, or an explicit _ripple_commit_ts()): a list of the changes so far would be
    taken by hubs for all of them, and the later write never delivered. So it announces the ts alone, always."""
    payloads: asyncio.Queue[str] = asyncio.Queue()
    async with connect(schema_dsn) as listener, connect(schema_dsn) as conn:
        await listener.add_listener("ripple_commits", lambda *a: payloads.put_nowait(a[-1]))
        await conn.execute(
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE;"
            " INSERT INTO videos (twitch_id, title, status) VALUES ('v1', 'T', 'Queued');"
            " UPDATE videos SET status = 'Downloading' WHERE twitch_id = 'v1'; COMMIT"
        )
        async with conn.transaction():
            await conn.fetchval(INSERT_WORKFLOW, "before the draw")
            drawn = await conn.fetchval("SELECT _ripple_commit_ts()")
            await conn.fetchval(INSERT_WORKFLOW, "after the draw")
        await conn.execute("INSERT INTO videos (twitch_id, title, status) VALUES ('v2', 'T', 'Queued')")
        log = await commits(conn)
        assert [await next_payload(payloads) for _ in log] == [str(ts) for ts, _ in log]
        assert log[1][0] == drawn
        assert [len(await changes_of(conn, xid)) for _, xid in log] == [2, 2, 1]


# A table whose deferred trigger writes to a captured table at COMMIT, after the writer's ts was drawn (its event
# is queued after the first captured write's, and deferred events fire in order).
_AFTER_DRAW = """
CREATE TABLE after_draw (what text);
CREATE FUNCTION after_draw() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.what = 'insert' THEN
        INSERT INTO workflows (task, status, current_step) VALUES ('written at COMMIT', 'pending', 'planner');
    ELSIF NEW.what = 'truncate' THEN
        TRUNCATE videos;
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER after_draw AFTER INSERT ON after_draw DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION after_draw();
"""
_VIDEO = "INSERT INTO videos (twitch_id, title, status) VALUES ('v', 'T', 'Queued')"


async def test_a_write_after_a_ripple_writers_draw_degrades_its_announcement(schema_dsn: str) -> None:
    """A captured write after the draw (an app's deferred trigger, here a row or a TRUNCATE) is not in the
    announcement already made, so the announcement becomes the ts alone: the NOTICE is raised again (the writer
    keeps the last) and the NOTIFY after COMMIT carries the ts alone. Without such a write the changes stay."""
    payloads: asyncio.Queue[str] = asyncio.Queue()
    async with connect(schema_dsn) as listener, connect(schema_dsn) as conn:
        await listener.add_listener("ripple_commits", lambda *a: payloads.put_nowait(a[-1]))
        await conn.execute(_AFTER_DRAW)
        writer = RippleStyle(conn)

        notices = await writer.commit(_VIDEO, "INSERT INTO after_draw VALUES ('nothing')")
        assert len(notices) == 1 and parse_announcement(notices[0]).changes is not None  # type: ignore[union-attr]
        assert await next_payload(payloads) == notices[0]

        for what, expected in (("insert", 2), ("truncate", 2)):
            notices = await writer.commit(_VIDEO, f"INSERT INTO after_draw VALUES ('{what}')")
            ts, xid = (await commits(conn))[-1]
            first = parse_announcement(notices[0])
            assert first is not None and first.ts == ts and first.changes is not None and len(first.changes) == 1
            assert notices[-1] == str(ts), what  # the last NOTICE wins: the ts alone
            assert await next_payload(payloads) == str(ts), what
            assert len(await changes_of(conn, xid)) >= expected  # the log has the late write too
        assert await conn.fetchval("SELECT count(*) FROM workflows WHERE task = 'written at COMMIT'") == 1


async def test_plain_sql_write_gets_a_ts(schema_dsn: str) -> None:
    """Writers that know nothing of Ripple (autocommit, or an explicit BEGIN/COMMIT script)."""
    async with listening(schema_dsn) as listener, connect(schema_dsn) as conn:
        await conn.execute("INSERT INTO videos (twitch_id, title, status) VALUES ('v1', 'T', 'Queued')")
        await conn.execute(
            "BEGIN; UPDATE videos SET status = 'Downloading' WHERE twitch_id = 'v1';"
            " UPDATE videos SET progress_percentage = 10 WHERE twitch_id = 'v1'; COMMIT;"
        )
        log = await commits(conn)
        assert [await listener.next(), await listener.next()] == [ts for ts, _ in log]
        assert len(log) == 2 and log[0][0] < log[1][0]
        assert [len(await changes_of(conn, xid)) for _, xid in log] == [1, 2]
        # ts counts commits; `at` is when it was drawn
        assert log[1][0] == log[0][0] + 1
        drawn = await conn.fetchval("SELECT extract(epoch FROM at) FROM _ripple_commits WHERE ts = $1", log[1][0])
        assert abs(float(drawn) - time.time()) < 60


async def test_explicit_commit_ts_is_the_commits_ts(schema_dsn: str) -> None:
    async with listening(schema_dsn) as listener, connect(schema_dsn) as conn:
        assert await conn.fetchval("SELECT _ripple_commit_ts()") == 0  # clock never drawn yet
        async with conn.transaction(isolation="serializable"):
            await conn.fetchrow(INSERT_GENERATION, "u", "pending", 1.0)
            ts = await conn.fetchval("SELECT _ripple_commit_ts()")
            assert await conn.fetchval("SELECT _ripple_commit_ts()") == ts
            await conn.fetchval(INSERT_WORKFLOW, "written after the ts was drawn")
            xid = await conn.fetchval("SELECT txid_current()")
        assert await commits(conn) == [(ts, xid)]
        assert len(await changes_of(conn, xid)) == 2
        assert await listener.next() == ts
        assert await listener.drain() == []

        # no write: the clock's last value, nothing recorded, no xid assigned
        async with conn.transaction(isolation="serializable"):
            assert await conn.fetchval("SELECT count(*) FROM generations") == 1
            assert await conn.fetchval("SELECT _ripple_commit_ts()") == ts
            assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
        # a write to a table that is not captured is not a commit either
        async with conn.transaction():
            await conn.execute("INSERT INTO _ripple_mutations (session_id, request_id, ts) VALUES ('s', 1, 0)")
            assert await conn.fetchval("SELECT _ripple_commit_ts()") == ts
        # a write rolled back to a savepoint leaves nothing
        async with conn.transaction():
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with conn.transaction():  # savepoint
                    await conn.fetchval(INSERT_WORKFLOW, "gone")
                    await conn.fetchval("SELECT 1/0")
        assert await commits(conn) == [(ts, xid)]
        assert await listener.drain() == []

        # ...but a later write in the same transaction still counts, once
        async with conn.transaction():
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with conn.transaction():
                    await conn.fetchval(INSERT_WORKFLOW, "gone")
                    await conn.fetchval("SELECT 1/0")
            kept = await conn.fetchval(INSERT_WORKFLOW, "kept")
            xid2 = await conn.fetchval("SELECT txid_current()")
        log = await commits(conn)
        assert len(log) == 2 and log[1][1] == xid2 and log[1][0] > ts
        assert [c["doc"] for c in await changes_of(conn, xid2)] == [kept]


async def test_bulk_insert_of_100k_rows(schema_dsn: str) -> None:
    async with listening(schema_dsn) as listener, connect(schema_dsn) as conn:
        # Ids made in SQL the way Ripple makes them in Python (the column default works too, see the ids test,
        # but costs a gen_random_uuid() per row, slow in pgserver's build without OpenSSL).
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO workflows (_id, _creation_time, task, status, current_step)"
                " SELECT b || left(md5(b), 4), _ripple_now_ms(), 'task ' || g, 'pending', 'planner'"
                "   FROM (SELECT g, left(md5(random()::text || g), 28) || lpad(to_hex(t.table_number), 4, '0') AS b"
                "           FROM generate_series(1, 100000) g, _ripple_tables t WHERE t.table_name = 'workflows') s"
            )
            xid = await conn.fetchval("SELECT txid_current()")
        log = await commits(conn)
        assert [x for _, x in log] == [xid]
        assert await listener.next() == log[0][0]
        assert await listener.drain() == []
        assert await conn.fetchval("SELECT count(*) FROM _ripple_changes WHERE xid = $1", xid) == 100_000
        assert await conn.fetchval("SELECT count(DISTINCT doc_id) FROM _ripple_changes") == 100_000


async def test_the_hub_reads_a_commit_through_the_xid_index_after_a_bulk_write(schema_dsn: str) -> None:
    """After one transaction wrote thousands of log rows, sampled statistics used to say an xid matches much of
    the log, and every round scanned all of it for a one-row commit."""
    from server.hub.changes import _ROUND_SQL

    async with connect(schema_dsn) as conn:
        await conn.execute(
            "INSERT INTO videos (twitch_id, title, status)"
            " SELECT 'r' || g, 't', 'Queued' FROM generate_series(1, 5000) g"
        )
        await conn.execute("ANALYZE _ripple_changes")  # as autovacuum does after a bulk load
        await conn.execute("UPDATE videos SET status = 'Done' WHERE twitch_id = 'r1'")
        latest = await conn.fetchval("SELECT _ripple_latest_ts()")
        await conn.execute(f"PREPARE round(bigint, int, boolean) AS {_ROUND_SQL}")
        for _ in range(6):  # past the custom plans PostgreSQL tries first: this is the plan a pooled statement keeps
            await conn.execute(f"EXECUTE round({latest - 1}, 1001, false)")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE round({latest - 1}, 1001, false)"))
        assert "Index Scan using _ripple_changes__xid" in plan, plan
        assert "Seq Scan on _ripple_changes" not in plan, plan
