"""What a changed schema.sql would do to a live database, before anything is done.

The app's SQL is run into a scratch schema inside a savepoint that is always rolled back, so the wanted shape is
PostgreSQL's own reading of the file (no SQL parser here), and is compared with `public`: tables, columns (type,
collation, NOT NULL, default) and indexes. Only additive changes are applied without approval: dropping or
retyping data, or a NOT NULL that existing rows may break, needs the operator's word
(`RIPPLE_SCHEMA_ALLOW_DESTRUCTIVE=1`) or a migration file, so no start silently loses data. A rename looks like a
drop and an add, and so is refused too (a migration file says what it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

__all__ = ["ColumnShape", "Plan", "Shape", "plan_changes", "wanted_and_live"]

SCRATCH = "_ripple_scratch"


@dataclass(frozen=True, slots=True)
class ColumnShape:
    type: str  # as in a column definition: `text COLLATE "C"`, `double precision`
    not_null: bool
    default: str | None


@dataclass(frozen=True, slots=True)
class TableShape:
    columns: dict[str, ColumnShape]
    indexes: dict[str, str]  # name -> definition without its name and table (`UNIQUE btree (a, b)`)


Shape = dict[str, TableShape]


@dataclass(slots=True)
class Plan:
    """Statements to run before the app's SQL (which then creates the new tables and indexes itself), and what
    each change is, for the log and for the refusal."""

    statements: list[str] = field(default_factory=list)
    additive: list[str] = field(default_factory=list)
    destructive: list[str] = field(default_factory=list)


_TABLES_SQL = r"""
SELECT c.oid, c.relname::text AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND left(c.relname, 1) <> '_'  -- system tables start with _
"""

_COLUMNS_SQL = """
SELECT a.attrelid AS rel, a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                 THEN ' COLLATE ' || quote_ident(co.collname) ELSE '' END AS type,
       a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS "default"
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"""

_INDEXES_SQL = """
SELECT x.indrelid AS rel, i.relname::text AS name,
       CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END
         || substr(pg_get_indexdef(x.indexrelid), strpos(pg_get_indexdef(x.indexrelid), ' USING ') + 7) AS definition
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = ANY($1::oid[])
"""


async def _read_shape(conn: asyncpg.Connection, schema: str) -> Shape:
    tables = {r["oid"]: r["name"] for r in await conn.fetch(_TABLES_SQL, schema)}
    oids = list(tables)
    columns: dict[int, dict[str, ColumnShape]] = {oid: {} for oid in oids}
    for r in await conn.fetch(_COLUMNS_SQL, oids):
        columns[r["rel"]][r["name"]] = ColumnShape(r["type"], r["not_null"], r["default"])
    indexes: dict[int, dict[str, str]] = {oid: {} for oid in oids}
    for r in await conn.fetch(_INDEXES_SQL, oids):
        indexes[r["rel"]][r["name"]] = r["definition"]
    return {name: TableShape(columns[oid], indexes[oid]) for oid, name in tables.items()}


async def wanted_and_live(conn: asyncpg.Connection, app_sql: str) -> tuple[Shape, Shape]:
    """The shape `app_sql` makes on an empty schema, and the live shape of `public`. Runs inside a savepoint that
    is rolled back whatever happens, so nothing of the scratch run stays. Both are read under the same search
    path, so defaults print alike (`_ripple_new_id('t'::text)`, not schema-qualified in one of them)."""
    scratch = conn.transaction()
    await scratch.start()
    try:
        await conn.execute(f"CREATE SCHEMA {SCRATCH}")
        await conn.execute(f"SET LOCAL search_path = {SCRATCH}, public")
        await conn.execute(app_sql)
        wanted = await _read_shape(conn, SCRATCH)
        live = await _read_shape(conn, "public")
    finally:
        await scratch.rollback()
    return wanted, live


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan_changes(live: Shape, wanted: Shape, declared: set[str] | None) -> Plan:
    """The statements that take `live` to `wanted`, except the CREATE TABLE / CREATE INDEX the app's own SQL runs
    next. Each change is classed additive (applied at once) or destructive (needs approval). A live table missing
    from `wanted` is dropped only if the last applied schema.sql `declared` it (None: every table was): a table
    made by hand is not schema.sql's to drop, and approving one change must not drop it."""
    plan = Plan()
    for name in sorted(set(wanted) - set(live)):
        plan.additive.append(f"CREATE TABLE {_q(name)} (from schema.sql)")
    for name in sorted(set(live) - set(wanted)):
        if declared is not None and name not in declared:
            continue
        plan.statements.append(f"DROP TABLE public.{_q(name)}")
        plan.destructive.append(f"DROP TABLE public.{_q(name)}  -- table {name} is not in schema.sql")
    for name in sorted(set(live) & set(wanted)):
        before, after = live[name], wanted[name]
        table = f"public.{_q(name)}"
        for index in sorted(before.indexes):
            if index not in after.indexes:
                stmt = f"DROP INDEX public.{_q(index)}"
                plan.statements.append(stmt)
                plan.destructive.append(f"{stmt}  -- index {index} is not in schema.sql")
            elif after.indexes[index] != before.indexes[index]:
                stmt = f"DROP INDEX public.{_q(index)}"
                plan.statements.append(stmt)
                plan.destructive.append(
                    f"{stmt}  -- then CREATE INDEX {index} {after.indexes[index]} (it is {before.indexes[index]})"
                )
        for index in sorted(set(after.indexes) - set(before.indexes)):
            plan.additive.append(f"CREATE INDEX {_q(index)} ON {table} {after.indexes[index]} (from schema.sql)")
        for col in before.columns:
            if col not in after.columns:
                stmt = f"ALTER TABLE {table} DROP COLUMN {_q(col)}"
                plan.statements.append(stmt)
                plan.destructive.append(
                    f"{stmt}  -- column {name}.{col} is not in schema.sql (renamed? write a migration)"
                )
        for col, want in after.columns.items():
            have = before.columns.get(col)
            if have is None:
                stmt = f"ALTER TABLE {table} ADD COLUMN {_q(col)} {want.type}"
                stmt += f" DEFAULT {want.default}" if want.default is not None else ""
                stmt += " NOT NULL" if want.not_null else ""
                plan.statements.append(stmt)
                if want.not_null and want.default is None:
                    plan.destructive.append(f"{stmt}  -- NOT NULL without a default fails on existing rows")
                else:
                    plan.additive.append(stmt)
                continue
            if have.type != want.type:
                cast = want.type.split(" COLLATE ")[0]
                stmt = f"ALTER TABLE {table} ALTER COLUMN {_q(col)} TYPE {want.type} USING {_q(col)}::{cast}"
                plan.statements.append(stmt)
                plan.destructive.append(f"{stmt}  -- it is {have.type}")
            if have.default != want.default:
                stmt = f"ALTER TABLE {table} ALTER COLUMN {_q(col)} " + (
                    f"SET DEFAULT {want.default}" if want.default is not None else "DROP DEFAULT"
                )
                plan.statements.append(stmt)
                plan.additive.append(stmt)
            if have.not_null != want.not_null:
                stmt = f"ALTER TABLE {table} ALTER COLUMN {_q(col)} {'SET' if want.not_null else 'DROP'} NOT NULL"
                plan.statements.append(stmt)
                if want.not_null:
                    plan.destructive.append(f"{stmt}  -- fails if a row has no {col}")
                else:
                    plan.additive.append(stmt)
    return plan
