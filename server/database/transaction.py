"""`ctx.db`: every read and write a function makes, through one recorder.

Reads land in the transaction's `ReadSet` (a point for `get`, an index range for a query) so the hub knows
what a query depended on; limits on documents read and written are enforced here, in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from server import values
from server.database.catalog import Catalog, ColumnType, Table
from server.database.ids import new_id, table_number_of
from server.database.query import Query
from server.database.reads import IndexRange, ReadSet
from server.database.sql import quote_ident
from server.errors import ArgumentError, IdError, LimitExceeded
from server.values import to_camel, to_snake

if TYPE_CHECKING:
    from server.database.database import Snapshot

__all__ = ["DatabaseReader", "DatabaseWriter", "Limits", "Transaction"]


class Limits:
    def __init__(self, max_documents_read: int = 16_384, max_documents_written: int = 8_192) -> None:
        self.max_documents_read = max_documents_read
        self.max_documents_written = max_documents_written


_TYPE_CHECKS: dict[ColumnType, tuple[type, ...]] = {
    ColumnType.TEXT: (str,),
    ColumnType.NUMBER: (int, float),
    ColumnType.BOOLEAN: (bool,),
    ColumnType.JSON: (dict, list, str, int, float, bool),
}


class Transaction:
    """One function execution's view of the database: a connection inside a transaction, plus its records.

    Lifecycle: created by `database.Database` around an open transaction; the runner reads `read_set`,
    and `journal` after the handler returns; it is never reused.
    """

    def __init__(
        self,
        conn: asyncpg.Connection,
        catalog: Catalog,
        *,
        writable: bool,
        limits: Limits | None = None,
        journal: str | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.conn = conn
        self._snapshot = snapshot
        self.catalog = catalog
        self.writable = writable
        self.limits = limits or Limits()
        self.read_set = ReadSet()
        self.journal = journal
        self.documents_read = 0
        self.documents_written = 0
        # The documents this transaction read or wrote: they exist, so a write to one needs no existence check.
        # `changed`: some write reached PostgreSQL.
        self.known: set[str] = set()
        self.changed = False

    # The recorder: every read passes through these.

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[asyncpg.Record]:
        snap = self._snapshot
        try:
            return list(await self.conn.fetch(sql, *params))
        except BaseException:
            if snap is not None:
                snap.failed = True
            raise

    def record_read(self, read: IndexRange) -> None:
        self.read_set.add(read)

    def count_read(self, table: Table, n: int) -> None:
        self.documents_read += n
        if self.documents_read > self.limits.max_documents_read:
            raise LimitExceeded(
                f"this function read more than {self.limits.max_documents_read} documents (last from "
                f'"{table.convex_name}"); use an index range, take(n) or paginate() to read less'
            )

    def to_document(self, table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
        if self.writable:
            self.known.add(row["_id"])
        return values.row_to_document(row)

    def table_of(self, doc_id: Any, what: str = "id") -> Table:
        if not isinstance(doc_id, str):
            raise IdError(f"{what} must be a document id string, got {type(doc_id).__name__}")
        number = table_number_of(doc_id)
        table = self.catalog.by_number.get(number) if number is not None else None
        if table is None:
            raise IdError(f'{what} "{doc_id}" is not a valid document id')
        return table

    def to_columns(self, table: Table, fields: Mapping[str, Any], *, partial: bool, verb: str) -> dict[str, Any]:
        """Check a document's fields against the table's columns and convert names; None means absent."""
        if not isinstance(fields, Mapping):
            raise ArgumentError(f'{verb} "{table.convex_name}": the document must be an object')
        try:
            values.check_size(fields, values.MAX_DOCUMENT_SIZE_BYTES, f'{verb} "{table.convex_name}": the document')
        except values.ValueTooLargeError as exc:
            raise LimitExceeded(str(exc)) from None
        columns: dict[str, Any] = {}
        for name, value in fields.items():
            if name.startswith("_"):
                raise ArgumentError(f'{verb} "{table.convex_name}": system field "{name}" cannot be written')
            column = to_snake(name)
            spec = table.columns.get(column)
            if spec is None:
                raise ArgumentError(
                    f'{verb} "{table.convex_name}": unknown field "{name}"; the table\'s fields are: '
                    + ", ".join(sorted(to_camel(c) for c in table.columns if not c.startswith("_")))
                )
            if value is not None:
                ok = isinstance(value, _TYPE_CHECKS[spec.type]) and not (
                    spec.type is ColumnType.NUMBER and isinstance(value, bool)
                )
                if not ok:
                    raise ArgumentError(
                        f'{verb} "{table.convex_name}": field "{name}" must be a {spec.type.value}, '
                        f"got {type(value).__name__}"
                    )
                if spec.type is ColumnType.NUMBER:
                    value = float(value)
                elif spec.type is not ColumnType.BOOLEAN:
                    try:
                        values.check_storable(value, f'{verb} "{table.convex_name}": field "{name}"')
                    except values.ConvexValueError as exc:
                        raise ArgumentError(str(exc)) from None
            elif not spec.nullable:
                if not partial and not spec.required:
                    continue  # left out, so the column's default applies
                raise ArgumentError(f'{verb} "{table.convex_name}": field "{name}" is required')
            columns[column] = value
        if not partial:
            missing = [
                to_camel(c.name)
                for c in table.columns.values()
                if c.required and not c.name.startswith("_") and columns.get(c.name) is None
            ]
            if missing:
                raise ArgumentError(f'{verb} "{table.convex_name}": missing required field(s) {", ".join(missing)}')
        return columns

    def count_write(self, table: Table) -> None:
        if not self.writable:
            raise ArgumentError("this function runs read-only (a query); write from a mutation instead")
        self.documents_written += 1
        if self.documents_written > self.limits.max_documents_written:
            raise LimitExceeded(
                f"this mutation wrote more than {self.limits.max_documents_written} documents; "
                "split the work across several mutations"
            )


class DatabaseReader:
    """`ctx.db` in a query: `get` and `query`."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        tx = self._tx
        table = tx.table_of(doc_id)
        tx.record_read(IndexRange(table.name, "by_id", ("_id",), (doc_id,)))
        rows = await tx.fetch(f"SELECT {table.select_list} FROM {quote_ident(table.name)} WHERE _id = $1", [doc_id])
        tx.count_read(table, len(rows))
        return tx.to_document(table, rows[0]) if rows else None

    def query(self, table: str) -> Query:
        return Query(self._tx, self._tx.catalog.table(table))


class DatabaseWriter(DatabaseReader):
    """`ctx.db` in a mutation: reads plus `insert`, `patch`, `replace`, `delete`.

    Every write is sent when it is made, with parameters, so whatever PostgreSQL refuses raises at the call that
    made it. A write to a document this transaction has not read or written (so may not exist) adds `RETURNING 1`,
    which proves the document existed without a separate read.
    """

    async def _write(self, doc_id: str, table: Table, verb: str, build: _Build, args: Sequence[Any]) -> None:
        tx = self._tx
        sql = build([f"${i}" for i in range(1, len(args) + 1)])
        if verb == "insert" or doc_id in tx.known:
            tx.changed = True  # before the call: a statement that fails half-way may still have written
            await tx.conn.execute(sql, *args)
        else:
            found = await tx.conn.fetchval(sql + " RETURNING 1", *args)
            if found is None:
                raise ArgumentError(f'{verb}: document "{doc_id}" does not exist in "{table.convex_name}"')
            tx.changed = True
        if verb == "delete":
            tx.known.discard(doc_id)
        else:
            tx.known.add(doc_id)

    async def insert(self, table_name: str, document: Mapping[str, Any]) -> str:
        tx = self._tx
        table = tx.catalog.table(table_name)
        columns = tx.to_columns(table, document, partial=False, verb="insert into")
        tx.count_write(table)
        doc_id = new_id(table.number)
        columns = {"_id": doc_id, "_creation_time": time.time() * 1000.0, **columns}
        names = ", ".join(quote_ident(c) for c in columns)
        await self._write(
            doc_id,
            table,
            "insert",
            lambda v: f"INSERT INTO {quote_ident(table.name)} ({names}) VALUES ({', '.join(v)})",
            _args(table, columns),
        )
        return doc_id

    async def patch(self, doc_id: str, fields: Mapping[str, Any]) -> None:
        """Set the given fields; a field set to None becomes absent. Others keep their values."""
        tx = self._tx
        table = tx.table_of(doc_id)
        columns = tx.to_columns(table, fields, partial=True, verb="patch")
        tx.count_write(table)
        await self._update(doc_id, table, "patch", columns)

    async def replace(self, doc_id: str, document: Mapping[str, Any]) -> None:
        """Replace every field; fields not given become absent. `_id` and `_creationTime` are kept."""
        tx = self._tx
        table = tx.table_of(doc_id)
        columns = tx.to_columns(table, document, partial=False, verb="replace")
        tx.count_write(table)
        full = {c: columns.get(c) for c, spec in table.columns.items() if not c.startswith("_") and spec.nullable}
        full.update(columns)
        await self._update(doc_id, table, "replace", full)

    async def _update(self, doc_id: str, table: Table, verb: str, columns: dict[str, Any]) -> None:
        # An empty patch still checks that the document exists (and still counts as a write, as in Convex).
        names = [quote_ident(c) for c in columns]

        def build(v: list[str]) -> str:
            sets = ", ".join(f"{n} = {x}" for n, x in zip(names, v[1:], strict=True)) or "_id = _id"
            return f"UPDATE {quote_ident(table.name)} SET {sets} WHERE _id = {v[0]}"

        await self._write(doc_id, table, verb, build, _args(table, {"_id": doc_id, **columns}))

    async def delete(self, doc_id: str) -> None:
        table = self._tx.table_of(doc_id)
        self._tx.count_write(table)
        await self._write(
            doc_id,
            table,
            "delete",
            lambda v: f"DELETE FROM {quote_ident(table.name)} WHERE _id = {v[0]}",
            _args(table, {"_id": doc_id}),
        )


# A write statement from its value SQL (parameter marks, in argument order).
_Build = Callable[[list[str]], str]


def _args(table: Table, columns: Mapping[str, Any]) -> list[Any]:
    """The values in column order (the pool's codecs write a jsonb column's value as JSON, a string included)."""
    return list(columns.values())
