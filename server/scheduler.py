"""The executor of `_scheduled_functions`: runs each due job, in scheduled order, as Convex does.

* A mutation runs exactly once: its claim (`FOR UPDATE SKIP LOCKED` on a pending row), its handler and its
  success are one transaction (`runner.Claim`), so a crash or a conflict leaves it pending and whole, and no
  two processes run it. One that fails is marked failed with its error, in a transaction of its own.
* An action runs at most once: claimed (inProgress, with a claim row naming this executor) in its own
  transaction, then run, then marked. An executor's claims are kept fresh while it lives; an action whose
  executor went quiet (a crash, a kill) is marked failed, never run again.
* It wakes at the next due time (a timer); at once when a commit of this process schedules something sooner
  (`poke`, from `Runner.on_scheduled`, the fastest path); when the hub's round says a commit of any process or
  plain SQL changed `_scheduled_functions` (`tables_changed`, on `Hub.on_tables_changed`: a look at the new
  earliest due time, and no query for commits that changed other tables); and at least every
  `check_interval_s` as a safety net (a lost NOTIFY, a hub that is behind). A backlog after downtime runs in
  (scheduled time, creation time) order.
* Scheduled functions run with no user identity (Convex does not propagate auth to them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import asyncpg

from server.database.database import Database, DatabaseUnavailable
from server.database.transaction import Transaction
from server.functions.context import Caller
from server.functions.registry import FunctionKind
from server.functions.runner import Outcome, Runner
from server.functions.scheduling import SCHEDULED_TABLE
from server.hub.supervise import Supervisor

__all__ = ["ScheduleExecutor"]

log = logging.getLogger("ripple.scheduler")

_BATCH = 100
_DUE = """
SELECT _id, name, args FROM _scheduled_functions
WHERE (state ->> 'kind') = 'pending' AND scheduled_time <= $1
ORDER BY scheduled_time, _creation_time LIMIT $2
"""
_NEXT_DUE = "SELECT min(scheduled_time) FROM _scheduled_functions WHERE (state ->> 'kind') = 'pending'"
_CLAIM_PENDING = """
SELECT 1 FROM _scheduled_functions WHERE _id = $1 AND (state ->> 'kind') = 'pending' FOR UPDATE SKIP LOCKED
"""
_SET_STATE = "UPDATE _scheduled_functions SET state = $2, completed_time = $3 WHERE _id = $1"
_FAIL_IF = """
UPDATE _scheduled_functions SET state = $2, completed_time = $3 WHERE _id = $1 AND (state ->> 'kind') = $4
RETURNING 1
"""
_START_ACTION = """
UPDATE _scheduled_functions SET state = '{"kind": "inProgress"}' WHERE _id = $1 AND (state ->> 'kind') = 'pending'
RETURNING 1
"""
_CLAIM_ROW = "INSERT INTO _ripple_scheduled_claims (job_id, executor) VALUES ($1, $2)"
_DROP_CLAIM = "DELETE FROM _ripple_scheduled_claims WHERE job_id = $1"
_HEARTBEAT = "UPDATE _ripple_scheduled_claims SET seen_at = now() WHERE executor = $1"
# Actions whose executor went quiet: failed, their claim gone.
_ABANDONED = """
SELECT f._id FROM _scheduled_functions f LEFT JOIN _ripple_scheduled_claims c ON c.job_id = f._id
WHERE (f.state ->> 'kind') = 'inProgress'
  AND (c.job_id IS NULL OR c.seen_at < now() - make_interval(secs => $1))
"""


def _now_ms() -> float:
    return time.time() * 1000.0


def _failed(error: str) -> dict[str, Any]:
    return {"kind": "failed", "error": error}


async def _set_if(tx: Transaction, job_id: str, state: dict[str, Any], expected: str) -> None:
    """Move a job from state `expected` to `state`; a job in another state by now is left alone. Only a row that
    changed counts as a write (a commit without one draws no ts)."""
    if await tx.conn.fetchval(_FAIL_IF, job_id, state, _now_ms(), expected) is not None:
        tx.changed = True


class _Claim:
    """A scheduled mutation's claim (runner.Claim): taken and marked succeeded inside its own transaction."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    async def take(self, tx: Transaction) -> bool:
        return await tx.conn.fetchval(_CLAIM_PENDING, self.job_id) is not None

    async def done(self, tx: Transaction) -> None:
        tx.changed = True
        await tx.conn.execute(_SET_STATE, self.job_id, {"kind": "success"}, _now_ms())


class ScheduleExecutor:
    """Runs due scheduled functions of one process. `start()` runs its loops under a `Supervisor`."""

    def __init__(
        self,
        database: Database,
        runner: Runner,
        *,
        check_interval_s: float = 1.0,
        abandoned_after_s: float = 30.0,
    ) -> None:
        self.database = database
        self.runner = runner
        self.check_interval_s = check_interval_s
        self.abandoned_after_s = abandoned_after_s
        self.executor_id = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._armed_ms: float | None = None  # when the loop's current wait ends (epoch ms), None: not waiting
        self._actions: set[asyncio.Task[None]] = set()
        self._supervisor = Supervisor()
        self.looks = 0  # times the loop looked for due jobs (each a query or two): what wake-ups cost

    def start(self) -> None:
        self.runner.on_scheduled = self.poke
        self._supervisor.start("scheduler", self._loop)
        self._supervisor.start("scheduler-claims", self._keep_claims)

    async def close(self) -> None:
        if self.runner.on_scheduled == self.poke:
            self.runner.on_scheduled = None
        await self._supervisor.close()
        for task in list(self._actions):
            task.cancel()
        await asyncio.gather(*self._actions, return_exceptions=True)

    def poke(self, when_ms: float) -> None:
        """A commit of this process scheduled a job due at `when_ms`: wake now if that is before the armed wait
        ends (always safe: a wake-up only makes the loop look again)."""
        if self._armed_ms is None or when_ms < self._armed_ms:
            self._wake.set()

    def tables_changed(self, tables: frozenset[str] | None) -> None:
        """The hub processed commits (of any process, or plain SQL) that changed `tables` (None: it cannot say
        which). One that changed `_scheduled_functions` may have scheduled a job sooner than the armed wait, so
        look again (that look finds the new earliest due time); other tables cost nothing."""
        if tables is None or SCHEDULED_TABLE in tables:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # before looking: a poke or a hint from here on wakes the wait below
            next_ms = await self.run_due()
            wait_s = self.check_interval_s
            if next_ms is not None:
                wait_s = min(wait_s, max((next_ms - _now_ms()) / 1000.0, 0.0))
            self._armed_ms = _now_ms() + wait_s * 1000.0
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_s)
            finally:
                self._armed_ms = None

    async def run_due(self) -> float | None:
        """Run every job due now, in order; returns when the next pending one is due (epoch ms) or None."""
        self.looks += 1
        skipped: set[str] = set()
        while True:
            rows = await self.database.pool.fetch(_DUE, _now_ms(), _BATCH + len(skipped))
            rows = [r for r in rows if r["_id"] not in skipped]
            if not rows:
                break
            for row in rows:
                if not await self._run_one(row["_id"], row["name"], row["args"]):
                    skipped.add(row["_id"])  # another process has it (its lock); not ours to wait for
        if skipped:
            return _now_ms() + self.check_interval_s * 1000.0  # look again later: the other process may die
        value = await self.database.pool.fetchval(_NEXT_DUE)
        return float(value) if value is not None else None

    async def _run_one(self, job_id: str, name: str, args: Any) -> bool:
        """Run one due job; False when another process holds it."""
        wire_args = args[0] if isinstance(args, list) and args else {}
        try:
            spec = self.runner.resolve(name, internal_ok=True)
        except Exception as exc:
            await self._fail(job_id, f"{exc}", "pending")
            return True
        if spec.kind is FunctionKind.MUTATION:
            outcome = await self.runner.call(
                name,
                wire_args,
                Caller(),
                internal_ok=True,
                kind=FunctionKind.MUTATION,
                transport="scheduled",
                claim=_Claim(job_id),
            )
            if not outcome.claimed:
                return False
            if isinstance(outcome.error, DatabaseUnavailable):
                raise outcome.error  # left pending: the supervised loop restarts with a backoff and runs it then
            if outcome.error is not None:
                await self._fail(job_id, outcome.error_message, "pending")
            return True
        if spec.kind is FunctionKind.ACTION:
            if not await self._start_action(job_id):
                return False
            task = asyncio.create_task(self._run_action(job_id, name, wire_args), name=f"scheduled-{job_id}")
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)
            return True
        await self._fail(job_id, f"{spec.path} is a {spec.kind.value}; only mutations and actions run", "pending")
        return True

    async def _start_action(self, job_id: str) -> bool:
        executor = self.executor_id

        async def claim(tx: Transaction) -> bool:
            if await tx.conn.fetchval(_CLAIM_PENDING, job_id) is None:
                return False
            tx.changed = True
            await tx.conn.execute(_START_ACTION, job_id)
            await tx.conn.execute(_CLAIM_ROW, job_id, executor)
            return True

        return bool((await self.database.mutate(claim)).value)

    async def _run_action(self, job_id: str, name: str, wire_args: Any) -> None:
        outcome: Outcome | None = None
        try:
            outcome = await self.runner.call(
                name, wire_args, Caller(), internal_ok=True, kind=FunctionKind.ACTION, transport="scheduled"
            )
        finally:
            if outcome is None:
                state = _failed("the server stopped while this action ran; it was not run again")
            elif outcome.error is not None:
                state = _failed(outcome.error_message)
            else:
                state = {"kind": "success"}
            await asyncio.shield(self._finish_action(job_id, state))

    async def _finish_action(self, job_id: str, state: dict[str, Any]) -> None:
        async def mark(tx: Transaction) -> None:
            await _set_if(tx, job_id, state, "inProgress")
            await tx.conn.execute(_DROP_CLAIM, job_id)

        try:
            await self.database.mutate(mark)
        except Exception:
            log.exception("could not record the end of scheduled action %s; it will be marked failed", job_id)

    async def _fail(self, job_id: str, error: str, expected: str) -> None:
        async def mark(tx: Transaction) -> None:
            await _set_if(tx, job_id, _failed(error), expected)

        await self.database.mutate(mark)

    async def _keep_claims(self) -> None:
        """Keep this executor's claims fresh, and fail the actions of executors that went quiet."""
        while True:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await self.database.pool.execute(_HEARTBEAT, self.executor_id)
            await self.fail_abandoned()
            await asyncio.sleep(min(self.check_interval_s, self.abandoned_after_s / 3))

    async def fail_abandoned(self) -> int:
        """Mark failed every action in progress whose executor stopped refreshing its claim; returns how many."""
        rows = await self.database.pool.fetch(_ABANDONED, self.abandoned_after_s)
        error = "the server running this action stopped before it finished; actions are not run again"
        for row in rows:
            job_id = row["_id"]

            async def mark(tx: Transaction, job_id: str = job_id) -> None:
                await _set_if(tx, job_id, _failed(error), "inProgress")
                await tx.conn.execute(_DROP_CLAIM, job_id)

            await self.database.mutate(mark)
            log.warning("scheduled action %s was in progress on a server that stopped: marked failed", job_id)
        return len(rows)
