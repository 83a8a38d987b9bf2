"""`ctx.scheduler`: `run_after`, `run_at` and `cancel`, as Convex's, writing rows of `_scheduled_functions`.

A schedule is a row insert, nothing more: from a mutation it is made in the mutation's own SERIALIZABLE
transaction, so it commits, rolls back and is retried with it (a retry re-inserts from a fresh transaction, never
twice). From an action each call is its own small mutation. The executor (server/scheduler.py) runs the rows;
`on_scheduled` tells it, once the row is committed, when the earliest new job is due, so it wakes for it.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from server import values
from server.database.ids import new_id, table_number_of
from server.database.transaction import Transaction
from server.errors import ArgumentError, IdError, LimitExceeded
from server.functions.registry import FunctionKind, FunctionSpec

__all__ = ["MAX_ARGS_BYTES", "MAX_SCHEDULED_PER_CALL", "SCHEDULED_TABLE", "Scheduler", "pending_state"]

SCHEDULED_TABLE = "_scheduled_functions"
# Convex's limits (docs.convex.dev/production/state/limits): per function execution, and per scheduled call.
MAX_SCHEDULED_PER_CALL = 1000
MAX_ARGS_BYTES = 8 * 1024 * 1024

_INSERT = (
    "INSERT INTO _scheduled_functions (_id, _creation_time, name, args, scheduled_time, state) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
_CANCEL = (
    'UPDATE _scheduled_functions SET state = \'{"kind": "canceled"}\', completed_time = $2 '
    "WHERE _id = $1 AND state ->> 'kind' = 'pending' RETURNING 1"
)


def pending_state() -> dict[str, Any]:
    return {"kind": "pending"}


# Runs one operation on a writable transaction and returns its value: the mutation's own transaction, or (from an
# action) a new mutation per call.
WriteFn = Callable[[Callable[[Transaction], Awaitable[Any]]], Awaitable[Any]]


class Scheduler:
    """One function execution's `ctx.scheduler`. `earliest` is the soonest due time it scheduled (epoch ms)."""

    def __init__(
        self,
        write: WriteFn,
        resolve: Callable[[str], FunctionSpec],
        *,
        on_committed: Callable[[float], None] | None = None,
    ) -> None:
        self._write = write
        self._resolve = resolve
        # Called after each write when writes commit on their own (an action); a mutation's runner calls it
        # after the mutation commits, with `earliest`.
        self._on_committed = on_committed
        self.scheduled = 0
        self.earliest: float | None = None

    async def run_after(self, delay_ms: float, fn: Any, args: Mapping[str, Any] | None = None) -> str:
        """Schedule `fn(args)` to run `delay_ms` milliseconds from now (0 or less: as soon as possible)."""
        if not isinstance(delay_ms, (int, float)) or isinstance(delay_ms, bool):
            raise ArgumentError(f"run_after: delay_ms must be a number of milliseconds, got {type(delay_ms).__name__}")
        return await self._schedule(time.time() * 1000.0 + max(float(delay_ms), 0.0), fn, args)

    async def run_at(self, when: float | datetime.datetime, fn: Any, args: Mapping[str, Any] | None = None) -> str:
        """Schedule `fn(args)` at `when`: epoch milliseconds or an aware datetime (a past time runs at once)."""
        if isinstance(when, datetime.datetime):
            if when.tzinfo is None:
                raise ArgumentError("run_at: the datetime has no time zone; give an aware one (or epoch ms)")
            when_ms = when.timestamp() * 1000.0
        elif isinstance(when, (int, float)) and not isinstance(when, bool):
            when_ms = float(when)
        else:
            raise ArgumentError(f"run_at: when must be epoch milliseconds or a datetime, got {type(when).__name__}")
        return await self._schedule(when_ms, fn, args)

    async def cancel(self, job_id: str) -> None:
        """Cancel a job that has not started; one already running, finished or canceled is left as it is."""
        if not isinstance(job_id, str) or table_number_of(job_id) is None:
            raise IdError(f'cancel: "{job_id}" is not an id of {SCHEDULED_TABLE}')

        async def op(tx: Transaction) -> None:
            table = tx.catalog.table(SCHEDULED_TABLE)
            if table_number_of(job_id) != table.number:
                raise IdError(f'cancel: "{job_id}" is an id of another table, not of {SCHEDULED_TABLE}')
            tx.count_write(table)
            # Only a row that changed is a write (the commit then has a ts; one that changed nothing has none).
            if await tx.conn.fetchval(_CANCEL, job_id, time.time() * 1000.0) is not None:
                tx.changed = True
            else:
                exists = await tx.conn.fetchval("SELECT 1 FROM _scheduled_functions WHERE _id = $1", job_id)
                if exists is None:
                    raise ArgumentError(f'cancel: no scheduled function has id "{job_id}"')

        await self._write(op)

    async def _schedule(self, when_ms: float, fn: Any, args: Mapping[str, Any] | None) -> str:
        path = fn.path if isinstance(fn, FunctionSpec) else fn
        if not isinstance(path, str):
            raise ArgumentError(f"the scheduler takes a function (as registered) or its name, got {type(fn).__name__}")
        spec = self._resolve(path)
        if spec.kind is FunctionKind.QUERY:
            raise ArgumentError(f"{spec.path} is a query; only mutations and actions can be scheduled")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ArgumentError(f"the arguments of scheduled {spec.path} must be an object, got {type(args).__name__}")
        if self.scheduled >= MAX_SCHEDULED_PER_CALL:
            raise LimitExceeded(
                f"this function scheduled more than {MAX_SCHEDULED_PER_CALL} functions; schedule one function that "
                "schedules the rest in batches"
            )
        try:
            encoded = values.encode(dict(args))
        except values.ConvexValueError as exc:
            raise ArgumentError(f"the arguments of scheduled {spec.path}: {exc}") from None
        size = len(values.dumps(encoded))
        if size > MAX_ARGS_BYTES:
            raise LimitExceeded(
                f"the arguments of scheduled {spec.path} are {size} bytes, over the {MAX_ARGS_BYTES}-byte limit; "
                "store large data in a table and pass its id"
            )
        self.scheduled += 1

        async def op(tx: Transaction) -> str:
            table = tx.catalog.table(SCHEDULED_TABLE)
            tx.count_write(table)
            job_id = new_id(table.number)
            tx.changed = True
            await tx.conn.execute(_INSERT, job_id, time.time() * 1000.0, spec.path, [encoded], when_ms, pending_state())
            return job_id

        job_id: str = await self._write(op)
        self.earliest = when_ms if self.earliest is None else min(self.earliest, when_ms)
        if self._on_committed is not None:
            self._on_committed(when_ms)
        return job_id
