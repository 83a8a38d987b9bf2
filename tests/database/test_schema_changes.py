"""A changed schema.sql against a live database: additive changes apply at the next start (also while another
server runs on it), destructive ones stop the start with what would run and how to approve it, and change nothing
until approved; migration files run once. Each start either applies all of it or nothing: never a schema that a
second start "fixes".
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from server.database.catalog import SchemaChangeRefused, apply_schema, load_catalog, schema_digest
from server.database.schema_diff import ColumnShape, TableShape, plan_changes
from tests.support import testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import run_server
from tests.support.sql import connect
from tests.support.ws import SyncClient

APP_SCHEMA = (Path(__file__).resolve().parents[2] / "schema.sql").read_text()

NOTES = """
CREATE TABLE IF NOT EXISTS notes (
    _id            text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('notes'),
    _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(),
    author         text COLLATE "C" NOT NULL,
    body           text COLLATE "C"
);
CREATE INDEX IF NOT EXISTS "notes__by_author" ON notes (author NULLS FIRST, _creation_time, _id);
"""


def _write(folder: Path, sql: str) -> Path:
    path = folder / "schema.sql"
    path.write_text(sql)
    return path


def _without_line(sql: str, starts: str) -> str:
    lines = sql.splitlines(keepends=True)
    kept = [line for line in lines if not line.strip().startswith(starts)]
    assert len(kept) == len(lines) - 1, starts
    return "".join(kept)


async def _digest(conn: asyncpg.Connection) -> str | None:
    value = await conn.fetchval("SELECT digest FROM _ripple_schema WHERE id = 1")
    return None if value is None else str(value)


async def test_a_table_appended_to_schema_sql_is_usable_and_captured_at_the_first_start(
    fresh_dsn: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, APP_SCHEMA)
    async with run_server(fresh_dsn, schema_path=path):
        pass
    path.write_text(APP_SCHEMA + NOTES)
    async with run_server(fresh_dsn, schema_path=path) as ripple:
        assert "notes" in ripple.services.database.catalog.tables
        assert "by_author" in ripple.services.database.catalog.tables["notes"].indexes
        async with connect(fresh_dsn) as conn:
            async with conn.transaction():
                note = await conn.fetchval("INSERT INTO notes (author) VALUES ('ann') RETURNING _id")
                xid = await conn.fetchval("SELECT txid_current()")
            row = await conn.fetchrow("SELECT table_name, new_keys FROM _ripple_changes WHERE xid = $1", xid)
            assert row["table_name"] == "notes" and '"author": "ann"' in row["new_keys"]
            assert await conn.fetchval("SELECT count(*) FROM _ripple_commits WHERE xid = $1", xid) == 1
            assert int(note[28:32], 16) == await conn.fetchval(
                "SELECT table_number FROM _ripple_tables WHERE table_name = 'notes'"
            )


async def test_an_additive_change_applies_while_another_server_runs(fresh_dsn: str, tmp_path: Path) -> None:
    path = _write(tmp_path, APP_SCHEMA)
    async with run_server(fresh_dsn, schema_path=path) as running:
        client = await SyncClient.connect(running.ws_url)
        qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        # A nullable column, a column with a default, an index on them, a new table.
        changed = APP_SCHEMA.replace(
            "    stage_progress               jsonb\n",
            "    stage_progress               jsonb,\n"
            "    rating                       double precision,\n"
            "    starred                      boolean NOT NULL DEFAULT false\n",
        )
        assert changed != APP_SCHEMA
        changed += (
            'CREATE INDEX IF NOT EXISTS "videos__by_rating" ON videos (rating NULLS FIRST, _creation_time, _id);\n'
        )
        path.write_text(changed + NOTES)
        async with run_server(fresh_dsn, schema_path=path) as restarted:
            videos = restarted.services.database.catalog.tables["videos"]
            assert videos.columns["rating"].nullable and not videos.columns["starred"].required
            assert videos.indexes["by_rating"].fields == ("rating",)
            assert "notes" in restarted.services.database.catalog.tables
            # The server started before the change still serves, and plain SQL through the new column reaches it.
            async with connect(fresh_dsn) as conn:
                await conn.execute(
                    "INSERT INTO videos (twitch_id, title, status, rating) VALUES ('r', 'rated', 'Queued', 4)"
                )
            await client.expect(lambda m: m["type"] == "Transition" and len(client.results[qid]) == 1)
            writer = await SyncClient.connect(restarted.ws_url)
            await writer.mutation("testing:setProgress", {"twitchId": "new", "progress": 1})
            await client.expect(lambda m: m["type"] == "Transition" and len(client.results[qid]) == 2)
            await writer.close()
        await client.close()


async def test_a_dropped_column_is_refused_with_the_statement_and_nothing_changes(
    fresh_dsn: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, APP_SCHEMA)
    async with connect(fresh_dsn) as conn:
        await apply_schema(conn, path)
        before = await _digest(conn)
        # The column dropped, and an additive change with it: neither may happen alone.
        path.write_text(_without_line(APP_SCHEMA, "callback_url ") + NOTES)
        with pytest.raises(SchemaChangeRefused) as refused:
            await apply_schema(conn, path)
        message = str(refused.value)
        assert 'ALTER TABLE public."videos" DROP COLUMN "callback_url"' in message
        assert "RIPPLE_SCHEMA_ALLOW_DESTRUCTIVE=1" in message and "--allow-destructive-schema" in message
        assert "migrations" in message
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'videos'::regclass AND attname = 'callback_url'"
            )
            == 1
        )
        assert await conn.fetchval("SELECT to_regclass('notes')") is None
        assert await conn.fetchval("SELECT to_regnamespace('_ripple_scratch')") is None
        assert await _digest(conn) == before
        # Not "fixed" by trying again: every start refuses until the change is approved.
        with pytest.raises(SchemaChangeRefused):
            await apply_schema(conn, path)

    # Approved by the setting: dropped, and the additive part applied with it.
    async with run_server(fresh_dsn, schema_path=path, schema_allow_destructive=True) as ripple:
        assert "callback_url" not in ripple.services.database.catalog.tables["videos"].columns
        assert "notes" in ripple.services.database.catalog.tables
    async with connect(fresh_dsn) as conn:
        assert await _digest(conn) == schema_digest(path)


_MODEL = '    model                text COLLATE "C"\n'
_BY_PARENT = (
    'CREATE INDEX IF NOT EXISTS "generations__by_parent"\n'
    "    ON generations (parent_generation_id NULLS FIRST, _creation_time, _id);\n"
)
# (what schema.sql has, what it gets instead, a statement the refusal must name)
DESTRUCTIVE = {
    "type": (
        "    fps                  double precision,",
        "    fps                  text,",
        'ALTER TABLE public."generations" ALTER COLUMN "fps" TYPE text USING "fps"::text',
    ),
    "not-null-column-without-default": (
        _MODEL,
        _MODEL.replace("\n", ",\n") + "    seed double precision NOT NULL\n",
        'ALTER TABLE public."generations" ADD COLUMN "seed" double precision NOT NULL',
    ),
    "not-null-added": (
        _MODEL,
        _MODEL.replace("\n", " NOT NULL\n"),
        'ALTER TABLE public."generations" ALTER COLUMN "model" SET NOT NULL',
    ),
    "index-dropped": (_BY_PARENT, "", 'DROP INDEX public."generations__by_parent"'),
}


@pytest.mark.parametrize("case", list(DESTRUCTIVE))
async def test_destructive_or_ambiguous_changes_are_refused(fresh_dsn: str, tmp_path: Path, case: str) -> None:
    old, new, expected = DESTRUCTIVE[case]
    path = _write(tmp_path, APP_SCHEMA)
    async with connect(fresh_dsn) as conn:
        await apply_schema(conn, path)
        changed = APP_SCHEMA.replace(old, new)
        assert changed != APP_SCHEMA
        path.write_text(changed)
        with pytest.raises(SchemaChangeRefused, match="RIPPLE_SCHEMA_ALLOW_DESTRUCTIVE") as refused:
            await apply_schema(conn, path)
        assert expected in str(refused.value)
        await apply_schema(conn, path, allow_destructive=True)
        assert await _digest(conn) == schema_digest(path)
        await load_catalog(conn)


async def test_a_table_dropped_from_schema_sql_is_refused_but_one_made_by_hand_is_left_alone(
    fresh_dsn: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, APP_SCHEMA + NOTES)
    async with connect(fresh_dsn) as conn:
        await apply_schema(conn, path)
        await conn.execute("CREATE TABLE by_hand (_id text PRIMARY KEY, n int)")
        path.write_text(APP_SCHEMA)
        with pytest.raises(SchemaChangeRefused) as refused:
            await apply_schema(conn, path)
        assert 'DROP TABLE public."notes"' in str(refused.value) and "by_hand" not in str(refused.value)
        path.write_text(APP_SCHEMA + NOTES + "-- changed\n")
        await apply_schema(conn, path)  # by_hand was never schema.sql's: not a change
        assert await conn.fetchval("SELECT to_regclass('by_hand')") is not None


async def test_a_migration_file_runs_once_in_order_before_the_comparison(fresh_dsn: str, tmp_path: Path) -> None:
    path = _write(tmp_path, APP_SCHEMA + NOTES)
    async with connect(fresh_dsn) as conn:
        await apply_schema(conn, path)
        await conn.execute("INSERT INTO notes (author, body) VALUES ('ann', 'kept')")
        # A rename: without the migration it looks like a dropped column (refused) and an added one.
        path.write_text(APP_SCHEMA + NOTES.replace("    body ", "    text "))
        with pytest.raises(SchemaChangeRefused, match='DROP COLUMN "body"'):
            await apply_schema(conn, path)
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        (migrations / "001_rename_body.sql").write_text("ALTER TABLE notes RENAME COLUMN body TO text;")
        (migrations / "002_fill.sql").write_text("UPDATE notes SET text = text || ' (2)';")
        await apply_schema(conn, path)
        assert await conn.fetchval("SELECT text FROM notes") == "kept (2)"
        rows = await conn.fetch("SELECT name, ran FROM _ripple_migrations ORDER BY name")
        assert [(r["name"], r["ran"]) for r in rows] == [("001_rename_body.sql", True), ("002_fill.sql", True)]
        # Applied once: a later change does not run them again (the rename would fail, the update repeat).
        path.write_text(path.read_text() + "-- changed\n")
        await apply_schema(conn, path)
        assert await conn.fetchval("SELECT text FROM notes") == "kept (2)"
        catalog = await load_catalog(conn)
        assert "text" in catalog.tables["notes"].columns

        # A failing migration changes nothing and says which one.
        (migrations / "003_bad.sql").write_text("ALTER TABLE notes DROP COLUMN nope;")
        with pytest.raises(Exception, match="migration 003_bad.sql failed"):
            await apply_schema(conn, path)
        assert await conn.fetchval("SELECT count(*) FROM _ripple_migrations") == 2

    # A database made from scratch records them without running them: schema.sql is already where they lead.
    (migrations / "003_bad.sql").unlink()
    async with connect(fresh_dsn) as conn:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await apply_schema(conn, path)
        rows = await conn.fetch("SELECT name, ran FROM _ripple_migrations ORDER BY name")
        assert [(r["name"], r["ran"]) for r in rows] == [("001_rename_body.sql", False), ("002_fill.sql", False)]


def test_the_plan_classes_each_change() -> None:
    text = ColumnShape('text COLLATE "C"', False, None)
    live = {"t": TableShape({"_id": text, "a": text, "b": text}, {"t__by_a": "btree (a)"})}
    wanted = {
        "t": TableShape(
            {
                "_id": text,
                "a": ColumnShape('text COLLATE "C"', False, "'x'::text"),
                "b": text,
                "c": ColumnShape("boolean", True, "false"),
                "d": text,
            },
            {"t__by_a": "btree (a)", "t__by_d": "btree (d)"},
        ),
        "u": TableShape({"_id": text}, {}),
    }
    plan = plan_changes(live, wanted, {"t"})
    assert not plan.destructive
    assert plan.statements == [
        'ALTER TABLE public."t" ALTER COLUMN "a" SET DEFAULT \'x\'::text',
        'ALTER TABLE public."t" ADD COLUMN "c" boolean DEFAULT false NOT NULL',
        'ALTER TABLE public."t" ADD COLUMN "d" text COLLATE "C"',
    ]
    back = plan_changes(wanted, live, {"t", "u"})
    assert 'DROP TABLE public."u"' in back.statements
    assert any("DROP INDEX" in s for s in back.destructive) and any("DROP COLUMN" in s for s in back.destructive)
    assert not plan_changes(wanted, live, {"t"}).statements[0].startswith("DROP TABLE")
