"""Ripple's SQL (server/system.sql) and the seed apps' schema.sql against a real PostgreSQL: applying them, the
tables and indexes they make, and ids."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path

import asyncpg
import pytest

from tests.support.sql import (
    INSERT_GENERATION,
    INSERT_WORKFLOW,
    SCHEMA,
    changes_of,
    connect,
)

APP_SCHEMA = (Path(__file__).resolve().parents[2] / "schema.sql").read_text()

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
# Numbered after the app tables (server/scheduler.py's table; its ids come from the server, not a default).
SYSTEM_TABLES = ["_scheduled_functions", "_storage"]

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
    "shot_images__by_status": ["status", "updated_at"],
    "storyboard_selections__by_project": ["project_id"],
    "storyboard_selections__by_scene": ["scene_id"],
    "storyboard_selections__by_shot": ["shot_id"],
}


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
    assert numbers == {name: i + 1 for i, name in enumerate(SEED_TABLES + SYSTEM_TABLES)}
    for table in SEED_TABLES:
        assert (table, "_ripple_capture") in triggers and (table, "_ripple_capture_truncate") in triggers
    assert ("_ripple_pending", "_ripple_pending_commit") in triggers


async def test_an_unchanged_schema_is_not_applied_again_so_writers_are_not_held_up(
    fresh_dsn: str, tmp_path: Path
) -> None:
    """Re-running the file locks every table (CREATE INDEX IF NOT EXISTS takes its lock before looking), which
    would hold up the writers of another running process at each start; only the per-start part runs then."""
    from server.database.catalog import apply_schema, schema_digest

    path = tmp_path / "schema.sql"
    path.write_text(APP_SCHEMA)
    async with connect(fresh_dsn) as conn, connect(fresh_dsn) as writer:
        await apply_schema(conn, path)
        await writer.execute("BEGIN; LOCK TABLE videos IN ROW EXCLUSIVE MODE")  # what any writer holds
        await conn.execute("SET lock_timeout = '1s'")
        await apply_schema(conn, path)  # unchanged: does not wait for the writer
        await conn.execute("CREATE TABLE by_hand (_id text PRIMARY KEY, n int)")  # the per-start part still runs
        await apply_schema(conn, path)
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'by_hand'::regclass") == 2
        path.write_text(APP_SCHEMA + "\n-- changed\n")  # changed: applied, and so it waits for the writer
        with pytest.raises(asyncpg.LockNotAvailableError):
            await apply_schema(conn, path)
        await writer.execute("COMMIT")
        await apply_schema(conn, path)
        assert await conn.fetchval("SELECT digest FROM _ripple_schema") == schema_digest(path)


async def test_schema_applies_concurrently(fresh_dsn: str) -> None:
    async def apply() -> None:
        async with connect(fresh_dsn) as conn:
            await conn.execute(SCHEMA)

    await asyncio.gather(*(apply() for _ in range(3)))
    async with connect(fresh_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM _ripple_tables") == len(SEED_TABLES + SYSTEM_TABLES)


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
                WHERE c.table_schema = 'public' AND c.table_name NOT LIKE '\\_%'"""
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
        after = len(SEED_TABLES + SYSTEM_TABLES) + 1  # a table made later comes after every numbered one
        assert await conn.fetchval("SELECT table_number FROM _ripple_tables WHERE table_name = 'notes'") == after
        async with conn.transaction():
            wid = await conn.fetchval(INSERT_WORKFLOW, "the task")
            nid = await conn.fetchval("INSERT INTO notes (body) VALUES ('b') RETURNING _id")
            xid = await conn.fetchval("SELECT txid_current()")
        got = {c["doc"]: c for c in await changes_of(conn, xid)}
        assert set(got[wid]["new"]) == {"status", "task", "_creation_time"}
        assert got[wid]["new"]["task"] == "the task"
        assert set(got[nid]["new"]) == {"_creation_time"} and got[nid]["table"] == "notes"
        assert int(nid[28:32], 16) == after


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
