"""`ctx.db.query(table)`: Convex's query builder, compiled to one SQL statement plus the index range it reads.

    await ctx.db.query("generations").with_index("by_parent", lambda q: q.eq("parentGenerationId", pid)).collect()

An index range is equalities on a prefix of the index's fields, then at most one lower and one upper bound on
the next field. `filter` is evaluated in SQL and does not narrow the recorded range (as in Convex). Ordering
follows the index, ties broken by `_creation_time, _id`, absent values first.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import orjson

from server.database.catalog import ColumnType, Index, Table
from server.database.reads import Bound, IndexRange
from server.database.sql import quote_ident
from server.errors import ArgumentError, SchemaError, excerpt
from server.values import to_snake

if TYPE_CHECKING:
    from server.database.transaction import Transaction

__all__ = ["FilterBuilder", "IndexRangeBuilder", "Query"]

# The journal of a page that reached the end of its range.
END_CURSOR = "_end"


def _column(table: Table, field: str) -> str:
    name = to_snake(field)
    if name not in table.columns:
        raise SchemaError(f'table "{table.convex_name}" has no field "{field}"')
    return name


class IndexRangeBuilder:
    """The `q` of `with_index(name, lambda q: ...)`: `eq` on a prefix of the index's fields, then bounds."""

    def __init__(self, table: Table, index: Index) -> None:
        self._table = table
        self._index = index
        self._fields = index.key_fields
        self.eq_values: list[Any] = []
        self.lower: Bound | None = None
        self.upper: Bound | None = None

    def _next_field(self, field: str, op: str) -> None:
        column = _column(self._table, field)
        position = len(self.eq_values)
        expected = self._fields[position] if position < len(self._fields) else None
        if column != expected or (op == "eq" and (self.lower or self.upper)):
            raise ArgumentError(
                f'index "{self._index.name}" on "{self._table.convex_name}" has fields {list(self._fields)}: '
                f'"{op}({field})" must name them in order, equalities first, then at most one lower and one '
                "upper bound on the next field"
            )

    def eq(self, field: str, value: Any) -> IndexRangeBuilder:
        self._next_field(field, "eq")
        self.eq_values.append(value)
        return self

    def _bound(self, field: str, value: Any, inclusive: bool, upper: bool) -> IndexRangeBuilder:
        self._next_field(field, "lt" if upper else "gt")
        if (self.upper if upper else self.lower) is not None:
            raise ArgumentError(f'index range on "{field}" already has {"an upper" if upper else "a lower"} bound')
        bound = ((value,), inclusive)
        if upper:
            self.upper = bound
        else:
            self.lower = bound
        return self

    def gt(self, field: str, value: Any) -> IndexRangeBuilder:
        return self._bound(field, value, False, False)

    def gte(self, field: str, value: Any) -> IndexRangeBuilder:
        return self._bound(field, value, True, False)

    def lt(self, field: str, value: Any) -> IndexRangeBuilder:
        return self._bound(field, value, False, True)

    def lte(self, field: str, value: Any) -> IndexRangeBuilder:
        return self._bound(field, value, True, True)


class _Expr:
    def __init__(self, sql: str) -> None:
        self.sql = sql


class FilterBuilder:
    """The `q` of `filter(lambda q: q.eq(q.field("status"), "done"))`, compiled to parameterised SQL."""

    def __init__(self, table: Table, params: list[Any]) -> None:
        self._table = table
        self._params = params

    def field(self, name: str) -> _Expr:
        column = _column(self._table, name)
        if self._table.columns[column].type is ColumnType.JSON:
            raise ArgumentError(f'filter cannot compare the object field "{name}"; compare a scalar field')
        return _Expr(quote_ident(column))

    def _operand(self, value: Any) -> str:
        if isinstance(value, _Expr):
            return value.sql
        if value is None:
            return "NULL"
        self._params.append(value)
        return f"${len(self._params)}"

    def _compare(self, op: str, a: Any, b: Any) -> _Expr:
        if op in ("=", "<>") and (a is None or b is None):
            other = b if a is None else a
            return _Expr(f"({self._operand(other)} IS {'' if op == '=' else 'NOT '}NULL)")
        distinct = {"=": "IS NOT DISTINCT FROM", "<>": "IS DISTINCT FROM"}.get(op, op)
        return _Expr(f"({self._operand(a)} {distinct} {self._operand(b)})")

    def eq(self, a: Any, b: Any) -> _Expr:
        return self._compare("=", a, b)

    def neq(self, a: Any, b: Any) -> _Expr:
        return self._compare("<>", a, b)

    def lt(self, a: Any, b: Any) -> _Expr:
        return self._compare("<", a, b)

    def lte(self, a: Any, b: Any) -> _Expr:
        return self._compare("<=", a, b)

    def gt(self, a: Any, b: Any) -> _Expr:
        return self._compare(">", a, b)

    def gte(self, a: Any, b: Any) -> _Expr:
        return self._compare(">=", a, b)

    def and_(self, *exprs: _Expr) -> _Expr:
        return _Expr("(" + " AND ".join(e.sql for e in exprs) + ")") if exprs else _Expr("TRUE")

    def or_(self, *exprs: _Expr) -> _Expr:
        return _Expr("(" + " OR ".join(e.sql for e in exprs) + ")") if exprs else _Expr("FALSE")

    def not_(self, expr: _Expr) -> _Expr:
        return _Expr(f"(NOT COALESCE({expr.sql}, FALSE))")


def encode_cursor(key: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode()


def decode_cursor(cursor: str, length: int) -> tuple[Any, ...]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except Exception:
        key = None
    if not isinstance(key, list) or len(key) != length:
        raise ArgumentError(f"InvalidCursor: {excerpt(cursor)} is not a cursor of this query; start again from null")
    return tuple(key)


def _after(columns: list[str], key: tuple[Any, ...], params: list[Any], *, descending: bool, inclusive: bool) -> str:
    """SQL for "index key comes after `key`" in scan order, with absent values ordered first."""

    def param(v: Any) -> str:
        params.append(v)
        return f"${len(params)}"

    def beyond(col: str, v: Any) -> str:
        if not descending:
            return f"{col} IS NOT NULL" if v is None else f"{col} > {param(v)}"
        return "FALSE" if v is None else f"({col} IS NULL OR {col} < {param(v)})"

    def same(col: str, v: Any) -> str:
        return f"{col} IS NULL" if v is None else f"{col} = {param(v)}"

    terms = []
    for i, (col, v) in enumerate(zip(columns, key, strict=True)):
        prefix = [same(c, x) for c, x in zip(columns[:i], key[:i], strict=True)]
        terms.append("(" + " AND ".join([*prefix, beyond(col, v)]) + ")")
    if inclusive:
        terms.append("(" + " AND ".join(same(c, x) for c, x in zip(columns, key, strict=True)) + ")")
    return "(" + " OR ".join(terms) + ")"


class Query:
    """Built by `ctx.db.query(table)`; terminal methods (`collect`, `take`, `first`, `unique`, `paginate`) run it."""

    def __init__(self, tx: Transaction, table: Table) -> None:
        self._tx = tx
        self._table = table
        self._index = table.index("by_creation_time")
        self._range = IndexRangeBuilder(table, self._index)
        self._order: Literal["asc", "desc"] = "asc"
        self._filters: list[Callable[[FilterBuilder], _Expr]] = []
        self._indexed = False

    def with_index(self, name: str, range: Callable[[IndexRangeBuilder], Any] | None = None) -> Query:
        if self._indexed:
            raise ArgumentError("with_index may be called once per query")
        self._indexed = True
        self._index = self._table.index(name)
        self._range = IndexRangeBuilder(self._table, self._index)
        if range is not None:
            range(self._range)
        return self

    def order(self, order: Literal["asc", "desc"]) -> Query:
        if order not in ("asc", "desc"):
            raise ArgumentError(f'order must be "asc" or "desc", got {order!r}')
        self._order = order
        return self

    def filter(self, predicate: Callable[[FilterBuilder], _Expr]) -> Query:
        self._filters.append(predicate)
        return self

    # Terminal operations.

    async def collect(self) -> list[dict[str, Any]]:
        docs, _ = await self._run(limit=None)
        return docs

    async def take(self, n: int) -> list[dict[str, Any]]:
        if n < 0:
            raise ArgumentError(f"take(n) needs n >= 0, got {n}")
        docs, _ = await self._run(limit=n)
        return docs

    async def first(self) -> dict[str, Any] | None:
        docs, _ = await self._run(limit=1)
        return docs[0] if docs else None

    async def unique(self) -> dict[str, Any] | None:
        docs, _ = await self._run(limit=2)
        if len(docs) > 1:
            raise ArgumentError(
                f'unique() found more than one document in "{self._table.convex_name}" '
                f"({docs[0]['_id']}, {docs[1]['_id']}); use first() or a narrower index range"
            )
        return docs[0] if docs else None

    async def paginate(self, opts: dict[str, Any]) -> dict[str, Any]:
        """One page, gapless under concurrent writes: a re-run reads up to where the first run ended.

        `opts` is Convex's `paginationOpts`: numItems, cursor, and optionally endCursor (the `id` and
        maximumRowsRead/Bytes fields are accepted and ignored). Where the first run ended is kept in the
        subscription's journal, which the hub hands back to every re-run.
        """
        if not isinstance(opts, dict):
            raise ArgumentError("paginate(opts) needs paginationOpts: {numItems, cursor}")
        num_items = opts.get("numItems")
        if isinstance(num_items, bool) or not isinstance(num_items, (int, float)) or num_items < 0:
            raise ArgumentError(f"paginationOpts.numItems must be a whole number >= 0, got {num_items!r}")
        if int(num_items) != num_items:
            raise ArgumentError(f"paginationOpts.numItems must be a whole number >= 0, got {num_items!r}")
        n = int(num_items)
        key_len = len(self._index.key_fields)
        cursor = opts.get("cursor")
        start = decode_cursor(cursor, key_len) if cursor and cursor != END_CURSOR else None
        if cursor == END_CURSOR:
            self._tx.journal = END_CURSOR
            return {"page": [], "isDone": True, "continueCursor": END_CURSOR, "splitCursor": None}
        end_cursor = opts.get("endCursor") or self._tx.journal
        if end_cursor and end_cursor != END_CURSOR:
            docs, _ = await self._run(limit=None, start=start, end=decode_cursor(end_cursor, key_len))
            self._tx.journal = end_cursor
            return {"page": docs, "isDone": False, "continueCursor": end_cursor, "splitCursor": None}
        if end_cursor == END_CURSOR:
            docs, _ = await self._run(limit=None, start=start)
        else:
            docs, keys = await self._run(limit=n + 1, start=start, keep=n)
            if len(docs) > n:
                continue_cursor = encode_cursor(keys[n - 1]) if n else (cursor or END_CURSOR)
                self._tx.journal = continue_cursor
                return {"page": docs[:n], "isDone": False, "continueCursor": continue_cursor, "splitCursor": None}
        self._tx.journal = END_CURSOR
        return {"page": docs, "isDone": True, "continueCursor": END_CURSOR, "splitCursor": None}

    # Compilation.

    def _bound_sql(self, column: str, value: Any, op: str, params: list[Any]) -> str:
        """One bound on the field after the equalities, with absent values ordered before everything."""
        if value is None:
            return {">": f"{column} IS NOT NULL", ">=": "TRUE", "<": "FALSE", "<=": f"{column} IS NULL"}[op]
        params.append(value)
        cond = f"{column} {op} ${len(params)}"
        return f"({column} IS NULL OR {cond})" if op in ("<", "<=") else cond

    async def _run(
        self,
        *,
        limit: int | None,
        start: tuple[Any, ...] | None = None,
        end: tuple[Any, ...] | None = None,
        keep: int | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        """Run the query; record the index range it depended on: up to the last kept row when `limit` cut it."""
        table, index, rng = self._table, self._index, self._range
        key_fields = index.key_fields
        columns = [quote_ident(f) for f in key_fields]
        params: list[Any] = []
        where: list[str] = []
        for col, value in zip(columns, rng.eq_values, strict=False):
            if value is None:
                where.append(f"{col} IS NULL")
            else:
                params.append(value)
                where.append(f"{col} = ${len(params)}")
        n_eq = len(rng.eq_values)
        if n_eq < len(columns):
            for bound, is_upper in ((rng.lower, False), (rng.upper, True)):
                if bound is not None:
                    (value,), inclusive = bound
                    op = ("<=" if inclusive else "<") if is_upper else (">=" if inclusive else ">")
                    where.append(self._bound_sql(columns[n_eq], value, op, params))
        descending = self._order == "desc"
        if start is not None:
            where.append(_after(columns, start, params, descending=descending, inclusive=False))
        if end is not None:
            where.append("NOT " + _after(columns, end, params, descending=descending, inclusive=False))
        builder = FilterBuilder(table, params)
        for predicate in self._filters:
            expr = predicate(builder)
            if not isinstance(expr, _Expr):
                raise ArgumentError("filter must return an expression built from q (q.eq, q.and_, ...)")
            where.append(f"COALESCE({expr.sql}, FALSE)")
        direction = "DESC NULLS LAST" if descending else "ASC NULLS FIRST"
        sql = f"SELECT {table.select_list} FROM {quote_ident(table.name)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + ", ".join(f"{c} {direction}" for c in columns)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = await self._tx.fetch(sql, params)
        keys = [tuple(row[f] for f in key_fields) for row in rows]
        # The range this result depends on: the declared range, cut by the cursors and by the limit.
        first: tuple[Any, ...] | None = start
        last: tuple[Any, ...] | None = end
        keep = limit if keep is None else keep
        if limit is not None and len(rows) >= limit and keep:
            last = keys[keep - 1]
        lower, upper = rng.lower, rng.upper
        low_key, high_key = (last, first) if descending else (first, last)
        if low_key is not None:
            lower = (low_key[n_eq:], low_key is last)
        if high_key is not None:
            upper = (high_key[n_eq:], high_key is last)
        self._tx.record_read(IndexRange(table.name, index.name, key_fields, tuple(rng.eq_values), lower, upper))
        self._tx.count_read(table, len(rows))
        return [self._tx.to_document(table, row) for row in rows], keys
