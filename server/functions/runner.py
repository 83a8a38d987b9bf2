"""Runs one function call: resolve the wire name, validate arguments, run the handler in the right transaction
with its limits, and encode the result as Convex JSON.

Every caller goes through here: the HTTP API and sync sessions with `call`, the hub with `run_query` inside the
snapshot it re-runs a round of queries in, and actions with `ctx.run_*`. So this is also where each call gets its
request id, its captured log lines (calllog.py), its one record in the `ripple.functions` log and its report to
the `CallObserver` (metrics, the live log stream).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson
from pydantic import BaseModel

from server import values
from server.database.database import Database, MutationKey, Snapshot, args_digest
from server.database.reads import ReadSet
from server.database.transaction import Transaction
from server.errors import ConvexError, LimitExceeded, RippleError, describe
from server.functions import calllog
from server.functions.calllog import CallLog
from server.functions.context import ActionCtx, Auth, Caller, MutationCtx, MutationDb, QueryCtx, QueryDb
from server.functions.registry import FunctionKind, FunctionSpec, Registry
from server.functions.registry import registry as default_registry
from server.functions.scheduling import Scheduler
from server.functions.storage_ctx import ActionStorage, MutationStorage, QueryStorage, Storage
from server.functions.validation import id_tables, validate_args

__all__ = [
    "CallObserver",
    "CallRecord",
    "Claim",
    "Outcome",
    "Runner",
    "RunnerLimits",
    "Transport",
    "is_database_error",
]

# How a call arrived: "http" (the HTTP API), "websocket" (a sync socket's mutation or action), "hub" (a
# subscription's run or re-run), "internal" (an action's ctx.run_*, in-process callers), "scheduled" (the
# scheduler's executor, server/scheduler.py).
Transport = str


def is_database_error(exc: BaseException) -> bool:
    """The driver's errors carry SQL, parameter positions and server internals: never shown to a client."""
    return isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError)) or type(exc).__module__.startswith(
        "asyncpg"
    )


def error_kind(exc: BaseException | None) -> str:
    """The outcome label of a call: "ok", a RippleError's code, "database" or "uncaught" (a bounded set)."""
    if exc is None:
        return "ok"
    if isinstance(exc, RippleError):
        return exc.code
    return "database" if is_database_error(exc) else "uncaught"


def caller_name(caller: Caller) -> str:
    identity = caller.identity
    if identity is not None:
        return str(getattr(identity, "subject", None) or identity.token_identifier)
    return "admin" if caller.is_admin else "anonymous"


@dataclass(slots=True)
class CallRecord:
    """What the server log, the metrics and the live stream learn about one finished call."""

    path: str
    known: bool  # a registered function (metrics label only these, so a caller cannot grow their cardinality)
    kind: str
    transport: Transport
    request_id: str
    caller: str
    duration_s: float
    outcome: str
    error: BaseException | None

    def fields(self) -> dict[str, Any]:
        return {
            "function": self.path,
            "kind": self.kind,
            "transport": self.transport,
            "request_id": self.request_id,
            "caller": self.caller,
            "duration_ms": round(self.duration_s * 1000, 3),
            "outcome": self.outcome,
        }


class CallObserver(Protocol):
    """Told about every call (metrics) and every captured line (the live stream); must not raise or block."""

    def call_finished(self, record: CallRecord) -> None: ...

    def line(self, call: CallLog, level: str, text: str) -> None: ...


class Claim(Protocol):
    """What a scheduled mutation does in its own transaction around its handler (server/scheduler.py): `take` claims
    the job first (False: another process has it, or it was canceled; nothing runs), `done` marks it succeeded, so
    the job's effects and its success commit together, once."""

    async def take(self, tx: Transaction) -> bool: ...

    async def done(self, tx: Transaction) -> None: ...


class _NotClaimed(Exception):
    """A scheduled mutation's claim found the job taken: its transaction rolls back with nothing written."""


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
    request_id: str | None = None
    # False when a scheduled mutation did not run because its job was already taken (Claim.take).
    claimed: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_message(self) -> str:
        """What the client sees: a RippleError's own message; for anything else, the request id that finds the
        traceback in the server log, and never a database driver's internals."""
        return self.describe_error(self.request_id)

    def describe_error(self, request_id: str | None) -> str:
        exc = self.error
        if exc is None:
            return ""
        if isinstance(exc, RippleError):
            return describe(exc)
        where = f" (request {request_id})" if request_id else ""
        if is_database_error(exc):
            return f"Server error: the database refused this function's statement{where}"
        if request_id:
            return f"{describe(exc)} (request {request_id}; the server log has the traceback)"
        return describe(exc)

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
        observer: CallObserver | None = None,
    ) -> None:
        self.database = database
        self.registry = registry or default_registry
        self.limits = limits or RunnerLimits()
        self.observer = observer
        self._tables = {t.number: t.convex_name for t in database.catalog.tables.values()}
        # Told, after the commit that scheduled it, when the earliest newly scheduled function is due (epoch ms):
        # the executor (server/scheduler.py) sets it to wake for it.
        self.on_scheduled: Callable[[float], None] | None = None
        # File storage (`ctx.storage`), set by the app once it has made it; None: ctx.storage calls say so.
        self.storage: Storage | None = None

    def reload(self, registry: Registry) -> None:
        """Call `registry`'s functions from now on, with the tables of the database's catalog (`ripple dev`)."""
        self.registry = registry
        self._tables = {t.number: t.convex_name for t in self.database.catalog.tables.values()}

    def resolve(self, path: str, *, internal_ok: bool = False) -> FunctionSpec:
        return self.registry.resolve(path, internal_ok=internal_ok)

    def resolve_for(self, path: str, caller: Caller, *, internal_ok: bool = False) -> FunctionSpec:
        """`path` as `caller` may reach it: an admin reaches internal functions too, as with Convex's admin key
        (`npx convex run`, the dashboard, the console's `_system/` functions); everyone else public ones only,
        unless the call comes from the server itself (`internal_ok`: `ctx.run_*`, the scheduler)."""
        return self.registry.resolve(path, internal_ok=internal_ok or caller.is_admin)

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

    def _begin(self, path: str) -> CallLog:
        """A call's log; a call made inside another (an action's ctx.run_*) shares its request id."""
        parent = calllog.current()
        request_id = parent.request_id if parent is not None else calllog.new_request_id()
        return CallLog(path, request_id, self._on_line)

    def _on_line(self, call: CallLog, level: str, text: str, printed: bool) -> None:
        if printed:
            calllog.write_line(call, level, text)
        if self.observer is not None:
            self.observer.line(call, level, text)

    def _finish(
        self, call: CallLog, outcome: Outcome, known: bool, kind: str, transport: Transport, caller: Caller
    ) -> None:
        """The call's one record in the server log (with the traceback of an uncaught exception), then metrics."""
        outcome.log_lines = call.lines
        record = CallRecord(
            call.path,
            known,
            kind,
            transport,
            call.request_id,
            caller_name(caller),
            time.perf_counter() - call.started,
            error_kind(outcome.error),
            outcome.error,
        )
        if record.outcome in ("uncaught", "database"):
            level = logging.ERROR
        elif transport == "hub" and outcome.error is None:
            level = logging.DEBUG  # a commit can re-run thousands of instances: one INFO line each is noise
        else:
            level = logging.INFO
        calllog.server_log(
            level,
            "%s %s via %s: %s in %.1f ms (request %s, caller %s)",
            record.path,
            kind,
            transport,
            record.outcome,
            record.duration_s * 1000,
            record.request_id,
            record.caller,
            extra=record.fields(),
            exc_info=outcome.error if level == logging.ERROR else None,
        )
        if self.observer is not None:
            self.observer.call_finished(record)

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
        transport: Transport = "internal",
        claim: Claim | None = None,
    ) -> Outcome:
        """Run any function by wire name; failures come back in the Outcome, never raised."""
        call = self._begin(path)
        outcome = Outcome(path, request_id=call.request_id)
        known, kind_name = False, kind.value if kind is not None else "unknown"
        token = call.enter()
        try:
            spec = self.resolve_for(path, caller, internal_ok=internal_ok)
            outcome.path = call.path = spec.path
            known, kind_name = True, spec.kind.value
            if kind is not None and spec.kind is not kind:
                raise RippleError(f"{spec.path} is a {spec.kind.value}, not a {kind.value}; call it as one")
            kwargs = self.validate(spec, args)
            if spec.kind is FunctionKind.QUERY:
                async with self.database.snapshot() as snap:
                    await self._query(spec, kwargs, caller, snap, None, outcome)
            elif spec.kind is FunctionKind.MUTATION:
                key = None
                if dedupe is not None:
                    # A resend replays only for the same caller, function and arguments (database.py).
                    who = orjson.dumps(list(caller.principal)).decode()
                    key = MutationKey(dedupe[0], dedupe[1], who, spec.path, args_digest(args))
                await self._mutation(spec, kwargs, caller, key, maybe_applied, outcome, claim)
            else:
                await self._action(spec, kwargs, caller, outcome)
        except _NotClaimed:
            outcome.claimed = False
            return outcome  # not a call: another process runs it (or it was canceled)
        except Exception as exc:  # every failure is reported on its own request
            outcome.error = exc
        finally:
            call.exit(token)
        self._finish(call, outcome, known, kind_name, transport, caller)
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
        call = self._begin(spec.path)
        outcome = Outcome(spec.path, request_id=call.request_id)
        token = call.enter()
        try:
            await self._query(spec, kwargs, caller, snapshot, journal, outcome)
        except Exception as exc:
            outcome.error = exc
        finally:
            call.exit(token)
        self._finish(call, outcome, True, spec.kind.value, "hub", caller)
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
                value = await spec.handler(QueryCtx(QueryDb(tx), auth, QueryStorage(self.storage, tx)), **kwargs)
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
        claim: Claim | None = None,
    ) -> Outcome:
        # The time limit covers the handler (across retries), never the COMMIT: a mutation cut short there would
        # be reported as failed although it committed.
        limit_s = self.limits.mutation_timeout_s
        deadline = asyncio.get_running_loop().time() + limit_s
        scheduler: Scheduler | None = None
        storage: MutationStorage | None = None

        async def body(tx: Transaction) -> Any:
            nonlocal scheduler, storage
            call = calllog.current()
            if call is not None:  # a retried attempt's lines are not the committed run's
                call.restart()
            if claim is not None and not await claim.take(tx):
                raise _NotClaimed
            # A new one per attempt: a retried attempt schedules again in its fresh transaction.
            scheduler = Scheduler(lambda op: op(tx), lambda path: self.resolve(path, internal_ok=True))
            storage = MutationStorage(self.storage, tx)  # per attempt too: a retry's deletes are its own
            timer = asyncio.timeout_at(deadline)
            try:
                async with timer:
                    ctx = MutationCtx(MutationDb(tx), Auth(caller), scheduler, storage)
                    value = await spec.handler(ctx, **kwargs)
            except TimeoutError:
                if timer.expired():
                    raise LimitExceeded(f"{spec.path} ran longer than {limit_s} s") from None
                raise
            encoded = self._encode(value)
            if claim is not None:
                await claim.done(tx)
            return encoded

        result = await self.database.mutate(body, dedupe=dedupe, maybe_applied=maybe_applied)
        outcome.value, outcome.ts, outcome.retries = result.value, result.ts, result.retries
        if scheduler is not None and scheduler.earliest is not None and not result.deduplicated:
            self._scheduled(scheduler.earliest)
        if storage is not None and not result.deduplicated:
            await storage.after_commit()  # deleted files' bytes go only once their rows are gone for good
        return outcome

    def _scheduled(self, when_ms: float) -> None:
        if self.on_scheduled is not None:
            self.on_scheduled(when_ms)

    async def call_http_action(
        self, route: str, caller: Caller, handler: Callable[[ActionCtx], Awaitable[Any]]
    ) -> tuple[Any, Outcome]:
        """Run an HTTP action (server/http_actions.py) as a call: its own request id (its ctx.run_* share it), the
        action time limit, one record (kind "httpAction", transport "http"). Returns what the handler returned, not
        encoded (a Response), and the Outcome, whose `error` is set instead when it raised."""
        call = self._begin(route)
        outcome = Outcome(route, request_id=call.request_id)
        result: Any = None
        token = call.enter()
        try:
            async with asyncio.timeout(self.limits.action_timeout_s):
                result = await handler(self._action_ctx(caller))
        except TimeoutError:
            outcome.error = LimitExceeded(f"HTTP action {route} ran longer than {self.limits.action_timeout_s} s")
        except Exception as exc:  # reported as a 500 with the request id
            outcome.error = exc
        finally:
            call.exit(token)
        self._finish(call, outcome, True, "httpAction", "http", caller)
        return result, outcome

    def _action_ctx(self, caller: Caller) -> ActionCtx:
        async def run(kind: FunctionKind, fn: Any, args: dict[str, Any] | None) -> Any:
            path = fn.path if isinstance(fn, FunctionSpec) else fn
            inner = await self.call(path, args or {}, caller, internal_ok=True, kind=kind, transport="internal")
            if inner.error is not None:
                raise inner.error
            return values.decode(inner.value)

        async def write(op: Callable[[Transaction], Awaitable[Any]]) -> Any:
            return (await self.database.mutate(op)).value

        return ActionCtx(
            Auth(caller),
            lambda fn, a: run(FunctionKind.QUERY, fn, a),
            lambda fn, a: run(FunctionKind.MUTATION, fn, a),
            lambda fn, a: run(FunctionKind.ACTION, fn, a),
            Scheduler(write, lambda path: self.resolve(path, internal_ok=True), on_committed=self._scheduled),
            ActionStorage(self.storage),
        )

    async def _action(self, spec: FunctionSpec, kwargs: dict[str, Any], caller: Caller, outcome: Outcome) -> Outcome:
        ctx = self._action_ctx(caller)
        try:
            async with asyncio.timeout(self.limits.action_timeout_s):
                value = await spec.handler(ctx, **kwargs)
        except TimeoutError:
            raise LimitExceeded(f"{spec.path} ran longer than {self.limits.action_timeout_s} s") from None
        outcome.value = self._encode(value)
        return outcome
