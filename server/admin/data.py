"""The admin console's system functions: tables, documents, edits, files and the function list.

They are internal functions named `_system/...` (as Convex's dashboard calls `_system/frontend/...`), so only an
admin (`Authorization: Convex <key>`, or a sync `Authenticate` with tokenType Admin) and other functions reach
them, and generated client types leave them out. They read through `ctx.db`, so a console subscription is
re-run by the hub like any query: a page of documents changes when a commit touches its index range.
"""

from __future__ import annotations

from typing import Any, Literal

from server.admin import transaction_of
from server.database.catalog import Table
from server.database.reads import IndexRange
from server.database.sql import quote_ident
from server.errors import ArgumentError
from server.functions.registry import internal_mutation, internal_query
from server.values import to_camel, to_snake

__all__ = ["COUNT_CAP"]
# Counting stops here: a table's count costs at most this many index entries, and the console shows "100000+".
COUNT_CAP = 100_000
_MAX_PAGE = 200


def _table_info(table: Table) -> dict[str, Any]:
    return {
        "name": table.convex_name,
        "number": float(table.number),  # ids encode it, so the console links an id to its table without a query
        "system": table.name.startswith("_"),
        "fields": [to_camel(c) if not c.startswith("_") else _system_field(c) for c in table.columns],
        "indexes": [
            {"name": index.name, "fields": [_field_name(f) for f in index.key_fields]}
            for index in table.indexes.values()
        ],
    }


def _system_field(column: str) -> str:
    return "_creationTime" if column == "_creation_time" else column


def _field_name(column: str) -> str:
    return _system_field(column) if column.startswith("_") else to_camel(column)


def _visible(table: Table) -> bool:
    """App tables, and the system tables a function may read (`_storage`, `_scheduled_functions`); Ripple's own
    bookkeeping (`_ripple_*`) is not a Convex table and never listed."""
    return not table.name.startswith("_ripple")


@internal_query(name="_system/data:tables")
async def tables(ctx: Any) -> list[dict[str, Any]]:
    """Every table with its row count, fields and indexes.

    Read set: each listed table's whole `by_creation_time` range, so any insert, patch or delete anywhere
    re-runs it (a console has one such subscription; counting per table by statistics would not be live).
    Each count is one `count(*)` over at most `COUNT_CAP + 1` index entries, so a huge table costs a bounded
    scan and reports `countCapped`.
    """
    tx = transaction_of(ctx)
    found = []
    for table in sorted(tx.catalog.tables.values(), key=lambda t: (t.name.startswith("_"), t.convex_name)):
        if not _visible(table):
            continue
        index = table.index("by_creation_time")
        sql = f"SELECT count(*) AS n FROM (SELECT 1 FROM {quote_ident(table.name)} LIMIT {COUNT_CAP + 1}) AS capped"
        rows = await tx.fetch(sql, [])
        tx.record_read(IndexRange(table.name, index.name, index.key_fields))
        count = int(rows[0]["n"])
        found.append({**_table_info(table), "count": float(min(count, COUNT_CAP)), "countCapped": count > COUNT_CAP})
    return found


def _reader(ctx: Any, table: Table) -> Any:
    """`ctx.db` for app tables, `ctx.db.system` for system tables (which Convex keeps apart)."""
    return ctx.db.system if table.name.startswith("_") else ctx.db


@internal_query(name="_system/data:documents")
async def documents(
    ctx: Any,
    table: str,
    pagination_opts: dict[str, Any],
    index: str = "by_creation_time",
    order: Literal["asc", "desc"] = "desc",
    filter_field: str | None = None,
    filter_value: Any = None,
) -> dict[str, Any]:
    """One page of a table's documents in the order of `index`, optionally only those whose `filterField`
    equals `filterValue` (null matches absent). When the filter field is the index's first field, the filter
    is the index range itself, so the read set is that range only; otherwise it is a filter over the index."""
    found = transaction_of(ctx).catalog.table(table)
    if not _visible(found):
        raise ArgumentError(f'"{table}" is Ripple\'s own bookkeeping, not a table the console shows')
    wanted = found.index(index)
    num_items = pagination_opts.get("numItems") if isinstance(pagination_opts, dict) else None
    if isinstance(num_items, (int, float)) and num_items > _MAX_PAGE:
        raise ArgumentError(f"paginationOpts.numItems is at most {_MAX_PAGE} in the console, got {num_items}")
    column = to_snake(filter_field) if filter_field and not filter_field.startswith("_") else filter_field
    if column == "_creationTime":
        column = "_creation_time"
    if filter_field is not None and column not in found.columns:
        fields = ", ".join(_field_name(c) for c in found.columns)
        raise ArgumentError(f'table "{found.convex_name}" has no field "{filter_field}"; its fields are: {fields}')
    query = _reader(ctx, found).query(found.convex_name)
    if filter_field is not None and wanted.key_fields[0] == column:
        query = query.with_index(wanted.name, lambda q: q.eq(filter_field, filter_value))
    else:
        query = query.with_index(wanted.name)
        if filter_field is not None:
            query = query.filter(lambda q: q.eq(q.field(filter_field), filter_value))
    page: dict[str, Any] = await query.order(order).paginate(pagination_opts)
    return page


def _app_table_of(ctx: Any, doc_id: str) -> Table:
    table: Table = transaction_of(ctx).table_of(doc_id)
    return table


@internal_query(name="_system/data:document")
async def document(ctx: Any, id: str) -> dict[str, Any] | None:
    """One document by id, of any listed table (an id link in the console opens it); null when deleted."""
    table = _app_table_of(ctx, id)
    found: dict[str, Any] | None = await _reader(ctx, table).get(id)
    return found


@internal_mutation(name="_system/data:patch")
async def patch(ctx: Any, id: str, fields: dict[str, Any]) -> None:
    """Set the given fields (null makes a field absent), through the normal commit path."""
    await ctx.db.patch(id, fields)


@internal_mutation(name="_system/data:insert")
async def insert(ctx: Any, table: str, document: dict[str, Any]) -> str:
    doc_id: str = await ctx.db.insert(table, document)
    return doc_id


@internal_mutation(name="_system/data:delete")
async def delete(ctx: Any, id: str) -> None:
    await ctx.db.delete(id)


@internal_query(name="_system/data:file")
async def file(ctx: Any, storage_id: str) -> dict[str, Any] | None:
    """A `_storage` document with a URL that serves it, for previews; null when there is no such file."""
    row: dict[str, Any] | None = await ctx.db.system.get(storage_id)
    if row is None:
        return None
    return {**row, "url": await ctx.storage.get_url(storage_id)}
