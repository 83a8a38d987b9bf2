"""Cron jobs, as Convex's `crons.ts`: a project's `crons.py` declares them, every process runs the ticks.

A module builds `crons = Crons()` and calls `crons.interval("name", {"minutes": 5}, fn, args)`,
`crons.cron("name", "*/5 * * * *", fn, args)` or `crons.hourly/daily/weekly/monthly(...)` (times in UTC).

* Tick times are a pure function of the schedule (an interval's ticks are multiples of it since the epoch; a cron
  expression's come from cronsim), so every process computes the same ones.
* A tick runs once across all processes: it becomes one row of `_scheduled_functions` (the scheduler then runs
  it, a mutation exactly once, an action at most once), inserted in the transaction that moves the job's
  `_ripple_crons.last_tick` forward. That row is locked and its tick compared first, so a second process that
  reaches the same tick finds it taken and inserts nothing.
* A job whose previous run is still pending or in progress skips the tick (logged), so runs never overlap.
* Ticks missed while no process ran are not made up: the next run is at the next tick after now.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from cronsim import CronSim, CronSimError

from server import values
from server.database.database import Database
from server.database.ids import new_id
from server.database.transaction import Transaction
from server.functions.registry import FunctionKind, FunctionSpec
from server.functions.scheduling import SCHEDULED_TABLE, pending_state
from server.hub.supervise import Supervisor

__all__ = ["CronExecutor", "CronJob", "Crons", "CronSchedule", "IntervalSchedule", "find_crons"]

log = logging.getLogger("ripple.crons")

_UNITS_MS = {"seconds": 1000.0, "minutes": 60_000.0, "hours": 3_600_000.0}
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


@dataclass(frozen=True)
class IntervalSchedule:
    """Every `every_ms`, at the multiples of it since the epoch."""

    every_ms: float

    def next_after(self, t_ms: float) -> float:
        return (math.floor(t_ms / self.every_ms) + 1) * self.every_ms


@dataclass(frozen=True)
class CronSchedule:
    """A five-field cron expression, in UTC."""

    expression: str

    def next_after(self, t_ms: float) -> float:
        start = datetime.fromtimestamp(t_ms / 1000.0, UTC)
        return next(iter(CronSim(self.expression, start))).timestamp() * 1000.0


Schedule = IntervalSchedule | CronSchedule


@dataclass(frozen=True)
class CronJob:
    name: str
    schedule: Schedule
    path: str  # the function's wire name ("module:function")
    args: dict[str, Any] = field(default_factory=dict)


def _option(options: Mapping[str, Any], camel: str, snake: str, default: int | None, low: int, high: int) -> int:
    value = options.get(camel, options.get(snake, default))
    if value is None:
        raise ValueError(f"{camel} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{camel} must be a whole number from {low} to {high}, got {value!r}")
    return value


class Crons:
    """The jobs of one `crons.py` (Convex's `cronJobs()`). Each method raises ValueError on a bad declaration."""

    def __init__(self) -> None:
        self.jobs: dict[str, CronJob] = {}

    def interval(self, name: str, every: Mapping[str, float], fn: Any, args: Mapping[str, Any] | None = None) -> None:
        """Run `fn(args)` every `{"seconds" | "minutes" | "hours": n}`."""
        if len(every) != 1 or next(iter(every)) not in _UNITS_MS:
            raise ValueError(
                f'cron "{name}": the interval must be one of {{"seconds"|"minutes"|"hours": n}}, got {every!r}'
            )
        unit, amount = next(iter(every.items()))
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
            raise ValueError(f'cron "{name}": the interval must be a positive number of {unit}, got {amount!r}')
        self._add(name, IntervalSchedule(float(amount) * _UNITS_MS[unit]), fn, args)

    def cron(self, name: str, expression: str, fn: Any, args: Mapping[str, Any] | None = None) -> None:
        """Run `fn(args)` at the times of a five-field cron expression (minute hour day month weekday), in UTC."""
        try:
            CronSim(expression, datetime.now(UTC))
        except CronSimError as exc:
            raise ValueError(f'cron "{name}": {expression!r} is not a valid cron expression: {exc}') from None
        self._add(name, CronSchedule(expression), fn, args)

    def hourly(self, name: str, at: Mapping[str, int], fn: Any, args: Mapping[str, Any] | None = None) -> None:
        """Every hour at `{"minuteUTC": m}`."""
        minute = self._checked(name, lambda: _option(at, "minuteUTC", "minute_utc", None, 0, 59))
        self.cron(name, f"{minute} * * * *", fn, args)

    def daily(self, name: str, at: Mapping[str, int], fn: Any, args: Mapping[str, Any] | None = None) -> None:
        """Every day at `{"hourUTC": h, "minuteUTC": m}`."""
        hour = self._checked(name, lambda: _option(at, "hourUTC", "hour_utc", None, 0, 23))
        minute = self._checked(name, lambda: _option(at, "minuteUTC", "minute_utc", 0, 0, 59))
        self.cron(name, f"{minute} {hour} * * *", fn, args)

    def weekly(self, name: str, at: Mapping[str, Any], fn: Any, args: Mapping[str, Any] | None = None) -> None:
        """Every week at `{"dayOfWeek": "monday", "hourUTC": h, "minuteUTC": m}`."""
        day = str(at.get("dayOfWeek", at.get("day_of_week", ""))).lower()
        if day not in _DAYS:
            raise ValueError(f'cron "{name}": dayOfWeek must be one of {", ".join(_DAYS)}, got {day!r}')
        hour = self._checked(name, lambda: _option(at, "hourUTC", "hour_utc", None, 0, 23))
        minute = self._checked(name, lambda: _option(at, "minuteUTC", "minute_utc", 0, 0, 59))
        self.cron(name, f"{minute} {hour} * * {_DAYS.index(day)}", fn, args)

    def monthly(self, name: str, at: Mapping[str, int], fn: Any, args: Mapping[str, Any] | None = None) -> None:
        """Every month at `{"day": d, "hourUTC": h, "minuteUTC": m}` (a day past a month's end: that month skips)."""
        day = self._checked(name, lambda: _option(at, "day", "day", None, 1, 31))
        hour = self._checked(name, lambda: _option(at, "hourUTC", "hour_utc", None, 0, 23))
        minute = self._checked(name, lambda: _option(at, "minuteUTC", "minute_utc", 0, 0, 59))
        self.cron(name, f"{minute} {hour} {day} * *", fn, args)

    @staticmethod
    def _checked(name: str, read: Any) -> int:
        try:
            return int(read())
        except ValueError as exc:
            raise ValueError(f'cron "{name}": {exc}') from None

    def _add(self, name: str, schedule: Schedule, fn: Any, args: Mapping[str, Any] | None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a cron job needs a non-empty name")
        if name in self.jobs:
            raise ValueError(f'cron "{name}" is declared twice; give each job its own name')
        path = fn.path if isinstance(fn, FunctionSpec) else fn
        if not isinstance(path, str):
            raise ValueError(f'cron "{name}": give a registered function or its name, got {type(fn).__name__}')
        if args is not None and not isinstance(args, Mapping):
            raise ValueError(f'cron "{name}": args must be an object, got {type(args).__name__}')
        self.jobs[name] = CronJob(name, schedule, path, dict(args or {}))


def _crons_of(module: ModuleType) -> Crons | None:
    found = getattr(module, "crons", None)
    if isinstance(found, ModuleType):
        found = getattr(found, "crons", None)
    return found if isinstance(found, Crons) else None


def find_crons(modules: list[str]) -> list[CronJob]:
    """The jobs of every module of `modules` (a project's package, RIPPLE_MODULES entries) that defines `crons`
    (or, for a package, whose `crons` submodule does), as `http.py` is found (server/http_actions.py).

    Raises:
        ValueError: two modules declare a job of the same name.
    """
    jobs: dict[str, CronJob] = {}
    for name in modules:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "__path__") and importlib.util.find_spec(f"{name}.crons") is not None:
            module = importlib.import_module(f"{name}.crons")
        crons = _crons_of(module)
        for job in crons.jobs.values() if crons is not None else ():
            if job.name in jobs:
                raise ValueError(f'cron "{job.name}" is declared again in module {module.__name__}; names are unique')
            jobs[job.name] = job
    return list(jobs.values())


_ENSURE = "INSERT INTO _ripple_crons (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
_LOCK = "SELECT last_tick, job_id FROM _ripple_crons WHERE name = $1 FOR UPDATE"
_PREVIOUS_STATE = "SELECT state ->> 'kind' FROM _scheduled_functions WHERE _id = $1"
_ADVANCE = "UPDATE _ripple_crons SET last_tick = $2, job_id = coalesce($3, job_id) WHERE name = $1"
_INSERT = (
    "INSERT INTO _scheduled_functions (_id, _creation_time, name, args, scheduled_time, state) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)


class CronExecutor:
    """Turns each due tick of the jobs into one `_scheduled_functions` row; `poke(when_ms)` wakes the scheduler."""

    def __init__(self, database: Database, jobs: list[CronJob], poke: Any = None) -> None:
        self.database = database
        self.jobs = jobs
        self.poke = poke
        self._supervisor = Supervisor()

    def check(self, resolve: Any) -> None:
        """Refuse at start a job naming no mutation or action (better than a failed row at every tick).

        Raises:
            ValueError: says which job and why.
        """
        for job in self.jobs:
            try:
                spec = resolve(job.path)
            except Exception as exc:
                raise ValueError(f'cron "{job.name}": {exc}') from None
            if spec.kind not in (FunctionKind.MUTATION, FunctionKind.ACTION):
                raise ValueError(
                    f'cron "{job.name}": {job.path} is a {spec.kind.value}; crons run mutations or actions'
                )

    def start(self) -> None:
        if self.jobs:
            self._supervisor.start("crons", self._loop)

    async def close(self) -> None:
        await self._supervisor.close()

    async def _loop(self) -> None:
        now = time.time() * 1000.0
        due = {job.name: job.schedule.next_after(now) for job in self.jobs}
        by_name = {job.name: job for job in self.jobs}
        while True:
            name = min(due, key=lambda n: due[n])
            wait_s = (due[name] - time.time() * 1000.0) / 1000.0
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            tick = due[name]
            await self.run_tick(by_name[name], tick)
            due[name] = by_name[name].schedule.next_after(max(tick, time.time() * 1000.0))

    async def run_tick(self, job: CronJob, tick: float) -> str:
        """Schedule `job`'s run for `tick` unless that tick is taken or its last run is not over; returns what
        happened: "scheduled", "taken" or "skipped"."""
        encoded = values.encode(job.args)

        async def op(tx: Transaction) -> str:
            await tx.conn.execute(_ENSURE, job.name)
            row = await tx.conn.fetchrow(_LOCK, job.name)
            if row["last_tick"] is not None and row["last_tick"] >= tick:
                return "taken"
            if row["job_id"] is not None:
                state = await tx.conn.fetchval(_PREVIOUS_STATE, row["job_id"])
                if state in ("pending", "inProgress"):
                    await tx.conn.execute(_ADVANCE, job.name, tick, None)
                    return "skipped"
            table = tx.catalog.table(SCHEDULED_TABLE)
            tx.count_write(table)
            tx.changed = True
            job_id = new_id(table.number)
            await tx.conn.execute(_INSERT, job_id, time.time() * 1000.0, job.path, [encoded], tick, pending_state())
            await tx.conn.execute(_ADVANCE, job.name, tick, job_id)
            return "scheduled"

        result = str((await self.database.mutate(op)).value)
        if result == "skipped":
            log.info('cron "%s": its previous run has not finished; the tick at %.0f is skipped', job.name, tick)
        elif result == "scheduled" and self.poke is not None:
            self.poke(tick)
        return result
