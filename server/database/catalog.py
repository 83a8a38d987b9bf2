"""Applying Ripple's SQL and the app's schema.sql, and the shape of the data read back from PostgreSQL after:
tables, columns, indexes.

Nothing here repeats the schema: a table is any public table with an `_id` column, a Convex index `by_x` on
table `t` is the PostgreSQL index `t__by_x`, and every table also has Convex's implicit `by_id` and
`by_creation_time` indexes.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from server.database.migrations import Migration, apply_migrations, find_migrations
from server.database.schema_diff import Plan, plan_changes, wanted_and_live
from server.database.sql import quote_ident
from server.errors import SchemaError
from server.values import to_camel, to_snake

__all__ = [
    "SYSTEM_SQL",
    "Catalog",
    "Column",
    "ColumnType",
    "Index",
    "SchemaChangeRefused",
    "Table",
    "apply_schema",
    "load_catalog",
    "schema_digest",
    "schema_script",
]

log = logging.getLogger("ripple")

# Serialises schema application across processes that start together on one database.
_SCHEMA_LOCK_KEY = 0x5249_5050  # "RIPP"

INDEX_SUFFIX = ("_creation_time", "_id")


class ColumnType(enum.Enum):
    TEXT = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    JSON = "object or array"


_PG_TYPES = {
    "text": ColumnType.TEXT,
    "character varying": ColumnType.TEXT,
    "double precision": ColumnType.NUMBER,
    "real": ColumnType.NUMBER,
    "integer": ColumnType.NUMBER,
    "bigint": ColumnType.NUMBER,
    "numeric": ColumnType.NUMBER,
    "boolean": ColumnType.BOOLEAN,
    "jsonb": ColumnType.JSON,
    "json": ColumnType.JSON,
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    # `required`: an insert must give it; `nullable`: it may be absent (a NOT NULL column with a default is neither).
    required: bool
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class Index:
    """`fields` are the user-declared columns; every index ends implicitly with `_creation_time, _id`."""

    name: str
    fields: tuple[str, ...]

    @property
    def key_fields(self) -> tuple[str, ...]:
        if self.name == "by_id":
            return ("_id",)
        return (*self.fields, "_creation_time", "_id")


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    number: int
    columns: dict[str, Column]
    indexes: dict[str, Index]
    # What reads select: the columns this catalog knows, by name, never `*`. A column added online by another
    # process's start would otherwise change the result type of this process's prepared statements, which
    # PostgreSQL refuses inside a transaction (InvalidCachedStatementError), failing every read of the table.
    select_list: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "select_list", ", ".join(quote_ident(c) for c in self.columns))

    @property
    def convex_name(self) -> str:
        """camelCase, except system tables, which keep Convex's own names (`_scheduled_functions`, `_storage`)."""
        return self.name if self.name.startswith("_") else to_camel(self.name)

    def index(self, name: str) -> Index:
        try:
            return self.indexes[name]
        except KeyError:
            known = ", ".join(sorted(self.indexes))
            raise SchemaError(f'table "{self.convex_name}" has no index "{name}"; its indexes are: {known}') from None


@dataclass(slots=True)
class Catalog:
    tables: dict[str, Table] = field(default_factory=dict)
    by_number: dict[int, Table] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        """Look a table up by its Convex name (`agentSessions`) or its PostgreSQL name (`agent_sessions`)."""
        table = self.tables.get(to_snake(name))
        if table is None:
            known = ", ".join(sorted(t.convex_name for t in self.tables.values()))
            raise SchemaError(f'no table named "{name}"; the tables are: {known}')
        return table


SYSTEM_SQL = Path(__file__).resolve().parent.parent / "system.sql"

_APP_TABLE_NAMES_SQL = r"""
SELECT c.relname::text AS relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND left(c.relname, 1) <> '_'  -- system tables start with _
 ORDER BY 1
"""
_APP_TABLES_SQL = f"SELECT EXISTS ({_APP_TABLE_NAMES_SQL})"


def schema_script(app_sql: str) -> str:
    """Ripple's SQL, the app's and the per-start part as one script, for one `execute` on a new database (tests,
    tools). A server applies them through `apply_schema`, which also checks changes and runs migrations."""
    return f"{SYSTEM_SQL.read_text()}\n{app_sql}\n;\nSELECT _ripple_on_start();\n"


def _digest(system: str, app: str, migrations: list[Migration]) -> str:
    hashed = hashlib.sha256()
    for part in (system, app, *(f"{m.name}\0{m.sql}" for m in migrations)):
        hashed.update(part.encode())
        hashed.update(b"\0")
    return hashed.hexdigest()


def schema_digest(path: Path) -> str:
    """What `_ripple_schema.digest` holds once Ripple's SQL, the app's schema.sql at `path` and its migrations
    are applied."""
    return _digest(SYSTEM_SQL.read_text(), path.read_text(), find_migrations(path))


class SchemaChangeRefused(SchemaError):
    """schema.sql asks for a change that could lose data or fail on existing rows; nothing was changed."""


def _refusal(path: Path, plan: Plan) -> SchemaChangeRefused:
    lines = "\n".join("    " + line.replace("  -- ", ";  -- ", 1) for line in plan.destructive)
    return SchemaChangeRefused(
        f"{path} differs from the database in ways that could lose data or fail on existing rows, so the start "
        f"stopped and nothing was changed. Applying it would run:\n{lines}\n"
        "To approve, start once with RIPPLE_SCHEMA_ALLOW_DESTRUCTIVE=1 (or `ripple serve --allow-destructive-schema`);"
        f" or say what you mean in a migration file, {path.parent / 'migrations'}/NNN_name.sql (e.g. ALTER TABLE ... "
        "RENAME COLUMN ...), which runs once, before the comparison; or change schema.sql back."
    )


async def apply_schema(conn: asyncpg.Connection, path: Path, *, allow_destructive: bool = False) -> None:
    """Apply Ripple's SQL, the app's schema.sql at `path` and its migrations, in one transaction (a failure
    leaves the database as it was, never half changed) under an advisory lock that keeps concurrent starters from
    interleaving.

    The per-start part (`_ripple_on_start()`: number new tables, attach capture) runs after the app's SQL, so a
    table added to schema.sql is usable at the first start. Files already applied (same SHA-256, recorded in
    `_ripple_schema`) are not run again, only the per-start part: re-running them would lock every table, which
    holds up the writers of other running processes. On a database that has app tables, a changed schema.sql is
    first compared with them (server/database/schema_diff.py): additive changes apply, destructive ones raise
    `SchemaChangeRefused` unless `allow_destructive`.
    """
    system = SYSTEM_SQL.read_text()
    app = path.read_text()
    migrations = find_migrations(path)
    digest = _digest(system, app, migrations)
    await conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK_KEY)
    try:
        applied = None
        if await conn.fetchval("SELECT to_regclass('_ripple_schema')") is not None:
            applied = await conn.fetchval("SELECT digest FROM _ripple_schema WHERE id = 1")
        if applied == digest:
            await conn.execute("SELECT _ripple_on_start()")
            return
        async with conn.transaction():
            fresh = not await conn.fetchval(_APP_TABLES_SQL)
            await conn.execute(system)
            ran = await apply_migrations(conn, migrations, fresh=fresh)
            if ran:
                log.warning("applied migrations %s", ", ".join(ran))
            if fresh:
                tables = None
            else:
                wanted, live = await wanted_and_live(conn, app)
                tables = sorted(wanted)
                declared = await conn.fetchval("SELECT tables FROM _ripple_schema WHERE id = 1")
                plan = plan_changes(live, wanted, None if declared is None else set(declared))
                if plan.destructive and not allow_destructive:
                    raise _refusal(path, plan)
                for statement in plan.statements:
                    await conn.execute(statement)
                for change in plan.destructive:
                    log.warning("schema change approved by RIPPLE_SCHEMA_ALLOW_DESTRUCTIVE: %s", change)
                for change in plan.additive:
                    log.info("schema change: %s", change)
            await conn.execute(app)
            await conn.execute("SELECT _ripple_on_start()")
            if tables is None:  # fresh: every app table there now came from schema.sql
                tables = [r["relname"] for r in await conn.fetch(_APP_TABLE_NAMES_SQL)]
            await conn.execute(
                "INSERT INTO _ripple_schema (id, digest, tables) VALUES (1, $1, $2)"
                " ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, tables = excluded.tables,"
                " applied_at = now()",
                digest,
                tables,
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK_KEY)


_COLUMNS_SQL = """
SELECT c.relname AS table_name, a.attname AS column_name,
       format_type(a.atttypid, NULL) AS data_type, a.attnotnull AS not_null, a.atthasdef AS has_default
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname NOT LIKE '\\_ripple\\_%'
ORDER BY c.relname, a.attnum
"""

_INDEXES_SQL = """
SELECT t.relname AS table_name, i.relname AS index_name,
       array_agg(a.attname ORDER BY k.ord) AS columns
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE n.nspname = 'public' AND i.relname LIKE '%\\_\\_%'
GROUP BY t.relname, i.relname
"""


async def load_catalog(conn: asyncpg.Connection) -> Catalog:
    columns: dict[str, dict[str, Column]] = {}
    for row in await conn.fetch(_COLUMNS_SQL):
        col_type = _PG_TYPES.get(row["data_type"])
        if col_type is None:
            raise SchemaError(
                f"column {row['table_name']}.{row['column_name']} has type {row['data_type']}; Ripple tables use "
                "text, double precision, boolean or jsonb"
            )
        # A NOT NULL column with a default (like `artifacts jsonb NOT NULL DEFAULT '[]'`) may be left out.
        required = row["not_null"] and not row["has_default"]
        columns.setdefault(row["table_name"], {})[row["column_name"]] = Column(
            row["column_name"], col_type, required, nullable=not row["not_null"]
        )
    numbers = {r["table_name"]: r["table_number"] for r in await conn.fetch("SELECT * FROM _ripple_tables")}
    indexes: dict[str, dict[str, Index]] = {}
    for row in await conn.fetch(_INDEXES_SQL):
        table_name, _, index_name = row["index_name"].partition("__")
        if table_name != row["table_name"] or table_name not in columns:
            continue
        key = tuple(row["columns"])
        if key[-2:] != INDEX_SUFFIX:
            raise SchemaError(
                f"index {row['index_name']} must end with (_creation_time, _id), as every Convex index does"
            )
        indexes.setdefault(table_name, {})[index_name] = Index(index_name, key[:-2])
    catalog = Catalog()
    for name, cols in columns.items():
        if "_id" not in cols or "_creation_time" not in cols:
            continue
        if name not in numbers:
            raise SchemaError(f'table "{name}" is not registered; run _ripple_register_tables() (every start does)')
        table_indexes = {"by_id": Index("by_id", ()), "by_creation_time": Index("by_creation_time", ())}
        table_indexes.update(indexes.get(name, {}))
        table = Table(name, numbers[name], cols, table_indexes)
        catalog.tables[name] = table
        catalog.by_number[table.number] = table
    return catalog
