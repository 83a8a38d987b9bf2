"""Runs one function call: resolve the wire name, validate arguments, run the handler in the right transaction
with its limits, and encode the result as Convex JSON.

Every caller goes through here: the HTTP API and sync sessions with `call`, the hub with `run_query` inside the
snapshot it re-runs a round of queries in, and actions with `ctx.run_*`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from server import values
from server.database.database import Database, MutationKey, Snapshot, args_digest
from server.database.reads import ReadSet
from server.database.transaction import DatabaseReader, DatabaseWriter, Transaction
from server.errors import ConvexError, LimitExceeded, RippleError, describe
from server.functions.context import ActionCtx, Auth, Caller, MutationCtx, QueryCtx
from server.functions.registry import FunctionKind, FunctionSpec, Registry
from server.functions.registry import registry as default_registry
from server.functions.validation import id_tables, validate_args

__all__ = ["Outcome", "Runner", "RunnerLimits"]


@dataclass(slots=True)
class RunnerLimits:
    query_timeout_s: float = 10.0
    mutation_timeout_s: float = 10.0
    action_timeout_s: float = 600.0
    max_result_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class Outcome:
    """The result of one call. `value` is Convex-encoded JSON; `error` is set instead when the function failed."""

    path: str
    value: Any = None
    error: BaseException | None = None
    ts: int | None = None
    read_set: ReadSet = field(default_factory=ReadSet)
    reads_auth: bool = False
    journal: str | None = None
    log_lines: list[str] = field(default_factory=list)
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_message(self) -> str:
        return describe(self.error) if self.error is not None else ""

    @property
    def error_data(self) -> tuple[bool, Any]:
        """(True, encoded data) for a ConvexError: only then does the wire carry `errorData`."""
        if isinstance(self.error, ConvexError):
            return True, values.encode(_plain(self.error.data))
        return False, None


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Runner:
    def __init__(
        self,
        database: Database,
        registry: Registry | None = None,
        limits: RunnerLimits | None = None,
    ) -> None:
        self.database = database
        self.registry = registry or default_registry
        self.limits = limits or RunnerLimits()
        self._tables = {t.number: t.convex_name for t in database.catalog.tables.values()}

    def resolve(self, path: str, *, internal_ok: bool = False) -> FunctionSpec:
        return self.registry.resolve(path, internal_ok=internal_ok)

    def validate(self, spec: FunctionSpec, args: Any) -> dict[str, Any]:
        """Check wire arguments against the function's parameters; returns handler keyword arguments."""
        token = id_tables.set(self._tables)
        try:
            return validate_args(spec.path, spec.args, {} if args is None else args)
        finally:
            id_tables.reset(token)

    def _encode(self, value: Any) -> Any:
        encoded = values.encode(_plain(value))
        size = len(values.dumps(encoded))
        if size > self.limits.max_result_bytes:
            raise LimitExceeded(
                f"the result is {size} bytes, over the {self.limits.max_result_bytes}-byte limit; return less "
                "(take(n) or paginate())"
            )
        return encoded

    async def call(
        self,
        path: str,
        args: Any,
        caller: Caller,
        *,
        internal_ok: bool = False,
        kind: FunctionKind | None = None,
        dedupe: tuple[str, int] | None = None,
        maybe_applied: bool = True,
    ) -> Outcome:
        """Run any function by wire name; failures come back in the Outcome, never raised."""
        outcome = Outcome(path)
        try:
            spec = self.resolve(path, internal_ok=internal_ok)
            outcome.path = spec.path
            if kind is not None and spec.kind is not kind:
                raise RippleError(f"{spec.path} is a {spec.kind.value}, not a {kind.value}; call it as one")
            kwargs = self.validate(spec, args)
            if spec.kind is FunctionKind.QUERY:
                async with self.database.snapshot() as snap:
                    return await self._query(spec, kwargs, caller, snap, None, outcome)
            if spec.kind is FunctionKind.MUTATION:
                key = None
                if dedupe is not None:
                    # A resend replays only for the same caller, function and arguments (database.py).
                    who = orjson.dumps(list(caller.principal)).decode()
                    key = MutationKey(dedupe[0], dedupe[1], who, spec.path, args_digest(args))
                return await self._mutation(spec, kwargs, caller, key, maybe_applied, outcome)
            return await self._action(spec, kwargs, caller, outcome)
        except Exception as exc:  # every failure is reported on its own request
            outcome.error = exc
            return outcome

    async def run_query(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        caller: Caller,
        snapshot: Snapshot,
        journal: str | None = None,
    ) -> Outcome:
        """Run a query with already-validated arguments (see `validate`) inside a snapshot the caller holds.

        The hub's rounds use this; failures come back in the Outcome.
        """
        outcome = Outcome(spec.path)
        try:
            return await self._query(spec, kwargs, caller, snapshot, journal, outcome)
        except Exception as exc:
            outcome.error = exc
            return outcome

    async def _query(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        caller: Caller,
        snapshot: Snapshot,
        journal: str | None,
        outcome: Outcome,
    ) -> Outcome:
        tx = self.database.reader(snapshot, journal)
        auth = Auth(caller)
        outcome.read_set = tx.read_set
        try:
            # asyncio.timeout rather than wait_for: no task per run, which the hub's re-runs would pay for.
            async with asyncio.timeout(self.limits.query_timeout_s):
                value = await spec.handler(QueryCtx(DatabaseReader(tx), auth), **kwargs)
            outcome.value = self._encode(value)
        except TimeoutError:
            outcome.error = LimitExceeded(f"{spec.path} ran longer than {self.limits.query_timeout_s} s")
        except Exception as exc:
            outcome.error = exc
        outcome.ts = snapshot.ts
        outcome.reads_auth = auth.read
        outcome.journal = tx.journal
        return outcome

    async def _mutation(
        self,
        spec: FunctionSpec,
        kwargs: dict[str, Any],
        caller: Caller,
        dedupe: MutationKey | None,
        maybe_applied: bool,
        outcome: Outcome,
    ) -> Outcome:
        # The time limit covers the handler (across retries), never the COMMIT: a mutation cut short there would
        # be reported as failed although it committed.
        limit_s = self.limits.mutation_timeout_s
        deadline = asyncio.get_running_loop().time() + limit_s

        async def body(tx: Transaction) -> Any:
            timer = asyncio.timeout_at(deadline)
            try:
                async with timer:
                    value = await spec.handler(MutationCtx(DatabaseWriter(tx), Auth(caller)), **kwargs)
            except TimeoutError:
                if timer.expired():
                    raise LimitExceeded(f"{spec.path} ran longer than {limit_s} s") from None
                raise
            return self._encode(value)

        result = await self.database.mutate(body, dedupe=dedupe, maybe_applied=maybe_applied)
        outcome.value, outcome.ts, outcome.retries = result.value, result.ts, result.retries
        return outcome

    async def _action(self, spec: FunctionSpec, kwargs: dict[str, Any], caller: Caller, outcome: Outcome) -> Outcome:
        async def run(kind: FunctionKind, fn: Any, args: dict[str, Any] | None) -> Any:
            path = fn.path if isinstance(fn, FunctionSpec) else fn
            inner = await self.call(path, args or {}, caller, internal_ok=True, kind=kind)
            if inner.error is not None:
                raise inner.error
            return values.decode(inner.value)

        ctx = ActionCtx(
            Auth(caller),
            lambda fn, a: run(FunctionKind.QUERY, fn, a),
            lambda fn, a: run(FunctionKind.MUTATION, fn, a),
            lambda fn, a: run(FunctionKind.ACTION, fn, a),
        )
        try:
            async with asyncio.timeout(self.limits.action_timeout_s):
                value = await spec.handler(ctx, **kwargs)
        except TimeoutError:
            raise LimitExceeded(f"{spec.path} ran longer than {self.limits.action_timeout_s} s") from None
        outcome.value = self._encode(value)
        return outcome
