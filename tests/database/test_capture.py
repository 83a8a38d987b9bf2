"""schema.sql against a real PostgreSQL: tables, ids, change capture and the commit clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from pgserver.postgres_server import PostgresServer

from server.database.announce import parse_announcement
from server.database.embedded import EmbeddedPostgres, create_database

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = (ROOT / "schema.sql").read_text()

SEED_TABLES = [
    "agent_sessions",
    "generations",
    "project_scenes",
    "scene_shots",
    "shot_images",
    "storyboard_selections",
    "video_projects",
    "videos",
    "workflows",
]

# Convex index -> its fields (the implicit `_creation_time, _id` suffix is checked separately).
SEED_INDEXES = {
    "generations__by_user": ["user_id"],
    "generations__by_user_created": ["user_id", "created_at"],
    "generations__by_batchId": ["batch_id"],
    "generations__by_status_created": ["status", "created_at"],
    "generations__by_parent": ["parent_generation_id"],
    "agent_sessions__by_workflow": ["workflow_id"],
    "agent_sessions__by_status": ["status"],
    "agent_sessions__by_workflow_and_status": ["workflow_id", "status"],
    "workflows__by_status": ["status"],
    "videos__by_twitch_id": ["twitch_id"],
    "videos__by_job_id": ["job_id"],
    "videos__by_status": ["status"],
    "videos__by_created_at": ["created_at"],
    "video_projects__by_user": ["user_id"],
    "project_scenes__by_project": ["project_id", "scene_number"],
    "scene_shots__by_scene": ["scene_id", "shot_number"],
    "scene_shots__by_project": ["project_id"],
    "shot_images__by_shot": ["shot_id", "iteration_number", "variant_number"],
    "shot_images__by_scene": ["scene_id"],
    "shot_images__by_project": ["project_id"],
    "storyboard_selections__by_project": ["project_id"],
    "storyboard_selections__by_scene": ["scene_id"],
    "storyboard_selections__by_shot": ["shot_id"],
}

GEN_KEYS = ["batch_id", "parent_generation_id", "status", "created_at", "user_id", "_creation_time"]

INSERT_GENERATION = (
    "INSERT INTO generations (user_id, prompt, status, created_at) VALUES ($1, 'p', $2, $3) "
    "RETURNING _id, _creation_time"
)
INSERT_WORKFLOW = "INSERT INTO workflows (task, status, current_step) VALUES ($1, 'pending', 'planner') RETURNING _id"


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


class Listener:
    """LISTEN ripple_commits on its own connection; the ts of each announcement, in delivery order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue()

    def _on(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.queue.put_nowait(int(payload.partition(" ")[0]))

    async def next(self, timeout: float = 5.0) -> int:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def drain(self, quiet: float = 0.15) -> list[int]:
        """Everything that arrives until nothing has arrived for `quiet` seconds."""
        out: list[int] = []
        while True:
            try:
                out.append(await asyncio.wait_for(self.queue.get(), quiet))
            except TimeoutError:
                return out


@asynccontextmanager
async def listening(dsn: str) -> AsyncIterator[Listener]:
    listener = Listener()
    async with connect(dsn) as conn:
        await conn.add_listener("ripple_commits", listener._on)
        yield listener


async def commits(conn: asyncpg.Connection) -> list[tuple[int, int]]:
    return [(r["ts"], r["xid"]) for r in await conn.fetch("SELECT ts, xid FROM _ripple_commits ORDER BY ts")]


async def changes_of(conn: asyncpg.Connection, xid: int) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT table_name, doc_id, old_keys, new_keys FROM _ripple_changes WHERE xid = $1", xid)
    return [
        {
            "table": r["table_name"],
            "doc": r["doc_id"],
            "old": None if r["old_keys"] is None else json.loads(r["old_keys"]),
            "new": None if r["new_keys"] is None else json.loads(r["new_keys"]),
        }
        for r in rows
    ]


# --------------------------------------------------------------------------------------------------------------
# schema


async def test_schema_applies_twice_and_is_stable(fresh_dsn: str) -> None:
    async with connect(fresh_dsn) as conn:
        await conn.execute(SCHEMA)
        numbers = {r["table_name"]: r["table_number"] for r in await conn.fetch("SELECT * FROM _ripple_tables")}
        triggers_sql = "SELECT tgrelid::regclass::text AS t, tgname, oid FROM pg_trigger WHERE NOT tgisinternal"
        triggers = {(r["t"], r["tgname"]): r["oid"] for r in await conn.fetch(triggers_sql)}
        await conn.execute(SCHEMA)
        await conn.execute(SCHEMA)
        assert {r["table_name"]: r["table_number"] for r in await conn.fetch("SELECT * FROM _ripple_tables")} == numbers
        # unchanged triggers are left alone (same oid), so a re-run takes no lock on the app tables
        assert {(r["t"], r["tgname"]): r["oid"] for r in await conn.fetch(triggers_sql)} == triggers

    # numbered in name order, identically in every fresh database
    assert numbers == {name: i + 1 for i, name in enumerate(SEED_TABLES)}
    for table in SEED_TABLES:
        assert (table, "_ripple_capture") in triggers and (table, "_ripple_capture_truncate") in triggers
    assert ("_ripple_pending", "_ripple_pending_commit") in triggers


async def test_an_unchanged_schema_is_not_applied_again_so_writers_are_not_held_up(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """Re-running the file locks every table (CREATE INDEX IF NOT EXISTS takes its lock before looking), which
    would hold up the writers of another running process at each start; only the per-start part runs then."""
    from server.database.catalog import apply_schema

    path = tmp_path / "schema.sql"
    path.write_text(SCHEMA)
    async with connect(fresh_dsn) as conn, connect(fresh_dsn) as writer:
        await apply_schema(conn, path)
        await writer.execute("BEGIN; LOCK TABLE videos IN ROW EXCLUSIVE MODE")  # what any writer holds
        await conn.execute("SET lock_timeout = '1s'")
        await apply_schema(conn, path)  # unchanged: does not wait for the writer
        await conn.execute("CREATE TABLE by_hand (_id text PRIMARY KEY, n int)")  # the per-start part still runs
        await apply_schema(conn, path)
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'by_hand'::regclass") == 2
        path.write_text(SCHEMA + "\n-- changed\n")  # changed: applied, and so it waits for the writer
        with pytest.raises(asyncpg.LockNotAvailableError):
            await apply_schema(conn, path)
        await writer.execute("COMMIT")
        await apply_schema(conn, path)
        assert await conn.fetchval("SELECT digest FROM _ripple_schema") == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_schema_applies_concurrently(fresh_dsn: str) -> None:
    async def apply() -> None:
        async with connect(fresh_dsn) as conn:
            await conn.execute(SCHEMA)

    await asyncio.gather(*(apply() for _ in range(3)))
    async with connect(fresh_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM _ripple_tables") == len(SEED_TABLES)


async def test_tables_follow_the_conventions(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        indexes = await conn.fetch(
            """SELECT i.relname AS name, t.relname AS tbl,
                      array_agg(a.attname ORDER BY k.ord) AS cols,
                      array_agg((ix.indoption[k.ord - 1] & 2) <> 0 ORDER BY k.ord) AS nulls_first
                 FROM pg_index ix
                 JOIN pg_class i ON i.oid = ix.indexrelid
                 JOIN pg_class t ON t.oid = ix.indrelid
                 JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
                 CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                WHERE i.relname LIKE '%\\_\\_by\\_%'
                GROUP BY i.relname, t.relname"""
        )
        found = {r["name"]: r for r in indexes}
        assert set(found) == set(SEED_INDEXES)
        for name, fields in SEED_INDEXES.items():
            row = found[name]
            assert row["tbl"] == name.split("__")[0]
            assert list(row["cols"]) == [*fields, "_creation_time", "_id"]
            assert list(row["nulls_first"])[: len(fields)] == [True] * len(fields)

        columns = await conn.fetch(
            """SELECT c.table_name, c.column_name, c.data_type, c.collation_name, c.is_nullable, c.column_default
                 FROM information_schema.columns c
                WHERE c.table_schema = 'public' AND c.table_name NOT LIKE '\\_ripple\\_%'"""
        )
        by_table: dict[str, dict[str, asyncpg.Record]] = {}
        for col in columns:
            by_table.setdefault(col["table_name"], {})[col["column_name"]] = col
        assert set(by_table) == set(SEED_TABLES)
        for table, cols in by_table.items():
            assert cols["_id"]["data_type"] == "text" and cols["_id"]["collation_name"] == "C"
            assert cols["_id"]["column_default"] == f"_ripple_new_id('{table}'::text)"
            assert cols["_creation_time"]["data_type"] == "double precision"
            assert cols["_creation_time"]["is_nullable"] == "NO"
            for col in cols.values():
                assert col["data_type"] in ("text", "double precision", "boolean", "jsonb"), (table, col)
                assert col["column_name"] == col["column_name"].lower()
                if col["data_type"] == "text":
                    assert col["collation_name"] == "C", (table, col["column_name"])

        required = {t: {c for c, col in cols.items() if col["is_nullable"] == "NO"} for t, cols in by_table.items()}
        base = {"_id", "_creation_time"}
        assert required["generations"] == base | {"user_id", "prompt", "status", "created_at"}
        assert required["workflows"] == base | {"task", "status", "current_step", "artifacts"}
        assert required["videos"] == base | {"twitch_id", "title", "status"}
        assert required["storyboard_selections"] == base | {
            "project_id", "scene_id", "shot_id", "selected_image_id", "created_at", "updated_at"
        }  # fmt: skip
        wid = await conn.fetchval(INSERT_WORKFLOW, "t")
        assert await conn.fetchval("SELECT artifacts FROM workflows WHERE _id = $1", wid) == "[]"


async def test_install_capture_follows_new_indexes_and_tables(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        await conn.execute('CREATE INDEX "workflows__by_task" ON workflows (task NULLS FIRST, _creation_time, _id)')
        await conn.execute(
            "CREATE TABLE notes (_id text COLLATE \"C\" PRIMARY KEY DEFAULT _ripple_new_id('notes'),"
            ' _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(), body text COLLATE "C")'
        )
        await conn.execute(SCHEMA)
        assert await conn.fetchval("SELECT table_number FROM _ripple_tables WHERE table_name = 'notes'") == 10
        async with conn.transaction():
            wid = await conn.fetchval(INSERT_WORKFLOW, "the task")
            nid = await conn.fetchval("INSERT INTO notes (body) VALUES ('b') RETURNING _id")
            xid = await conn.fetchval("SELECT txid_current()")
        got = {c["doc"]: c for c in await changes_of(conn, xid)}
        assert set(got[wid]["new"]) == {"status", "task", "_creation_time"}
        assert got[wid]["new"]["task"] == "the task"
        assert set(got[nid]["new"]) == {"_creation_time"} and got[nid]["table"] == "notes"
        assert int(nid[28:32], 16) == 10


# --------------------------------------------------------------------------------------------------------------
# ids


async def test_ids_have_the_documented_shape(schema_dsn: str) -> None:
    async with connect(schema_dsn) as conn:
        numbers = {r["table_name"]: r["table_number"] for r in await conn.fetch("SELECT * FROM _ripple_tables")}
        for table, number in numbers.items():
            ids = [r[0] for r in await conn.fetch("SELECT _ripple_new_id($1) FROM generate_series(1, 200)", table)]
            assert len(set(ids)) == len(ids)
            for doc_id in ids:
                assert re.fullmatch(r"[0-9a-f]{36}", doc_id)
                assert int(doc_id[28:32], 16) == number
                assert doc_id[32:] == hashlib.md5(doc_id[:32].encode()).hexdigest()[:4]
        # all 28 random characters vary (none is a fixed uuid version/variant nibble)
        sample = [r[0] for r in await conn.fetch("SELECT _ripple_new_id('videos') FROM generate_series(1, 400)")]
        assert all(len({s[i] for s in sample}) > 8 for i in range(28))

        gid, created = await conn.fetchrow(INSERT_GENERATION, "u", "pending", 1.0)
        assert int(gid[28:32], 16) == numbers["generations"]
        assert abs(created - time.time() * 1000) < 60_000

        with pytest.raises(asyncpg.UndefinedTableError, match='table "nope" is not registered'):
            await conn.fetchval("SELECT _ripple_new_id('nope')")


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


async def test_a_commit_announces_its_changes_while_they_fit(schema_dsn: str) -> None:
    """The NOTIFY payload is the ts and the transaction's changes (the same as the log's) while they fit in about
    7,000 bytes; a bulk write and a TRUNCATE announce their ts alone, and a reader then goes by the log."""
    payloads: asyncio.Queue[str] = asyncio.Queue()
    async with connect(schema_dsn) as listener, connect(schema_dsn) as conn:
        await listener.add_listener("ripple_commits", lambda *a: payloads.put_nowait(a[-1]))
        async with conn.transaction():
            g1, _ = await conn.fetchrow(INSERT_GENERATION, "u", "pending", 1.0)
            await conn.execute("UPDATE generations SET status = 'failed' WHERE _id = $1", g1)
            await conn.execute("UPDATE generations SET _id = _ripple_new_id('generations') WHERE _id = $1", g1)
        said = parse_announcement(await asyncio.wait_for(payloads.get(), 5))
        assert said is not None and said.changes is not None
        ts, xid = (await commits(conn))[-1]
        assert said.ts == ts
        logged = await changes_of(conn, xid)
        assert [(c.table, c.doc_id, c.old_keys, c.new_keys) for c in said.changes] == [
            (c["table"], c["doc"], c["old"], c["new"]) for c in logged
        ]
        await conn.execute(
            "INSERT INTO videos (twitch_id, title, status) "
            "SELECT 'bulk' || g, 't', 'Queued' FROM generate_series(1, 200) g"
        )
        bulk = await asyncio.wait_for(payloads.get(), 5)
        assert bulk.isdigit() and len(bulk) < 20
        await conn.execute("TRUNCATE videos")
        assert (await asyncio.wait_for(payloads.get(), 5)).isdigit()
        # The limit counts bytes: 4,000 characters of "€" are 12,000 bytes, past what a NOTIFY can carry.
        await conn.execute(INSERT_GENERATION, "€" * 4000, "pending", 3.0)
        assert (await asyncio.wait_for(payloads.get(), 5)).isdigit()


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


async def test_the_hub_reads_a_commit_through_the_xid_index_after_a_bulk_write(schema_dsn: str) -> None:
    """After one transaction wrote thousands of log rows, sampled statistics used to say an xid matches much of
    the log, and every round scanned all of it for a one-row commit."""
    from server.hub.changes import _PLAIN_ROUND_SQL

    async with connect(schema_dsn) as conn:
        await conn.execute(
            "INSERT INTO videos (twitch_id, title, status)"
            " SELECT 'r' || g, 't', 'Queued' FROM generate_series(1, 5000) g"
        )
        await conn.execute("ANALYZE _ripple_changes")  # as autovacuum does after a bulk load
        await conn.execute("UPDATE videos SET status = 'Done' WHERE twitch_id = 'r1'")
        latest = await conn.fetchval("SELECT _ripple_latest_ts()")
        await conn.execute(f"PREPARE round(bigint, int) AS {_PLAIN_ROUND_SQL}")
        for _ in range(6):  # past the custom plans PostgreSQL tries first: this is the plan a pooled statement keeps
            await conn.execute(f"EXECUTE round({latest - 1}, 1001)")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE round({latest - 1}, 1001)"))
        assert "Index Scan using _ripple_changes__xid" in plan, plan
        assert "Seq Scan on _ripple_changes" not in plan, plan
