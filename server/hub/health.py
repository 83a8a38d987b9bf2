"""`DatabaseWatch`: whether the database answers and how far the hub is behind it, so staleness is never silent.

The hub can fall behind without failing: a LISTEN connection that hears nothing, a round that hangs, a task that
died. Measured from the database's side (the oldest commit the hub has not processed, and its age by the
database's own clock), any of these shows as lag; an unreachable database shows as a failed check. Both feed
/health (503 with the reason) and the metrics, and an outage that lasts closes the sync sockets
(`on_outage`), so clients learn their results may be stale instead of waiting on them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from server.metrics import Metrics

__all__ = ["DatabaseWatch", "HubHealth", "judge"]

log = logging.getLogger("ripple.hub")

_LAG_SQL = """
SELECT _ripple_latest_ts() AS newest,
       (SELECT extract(epoch FROM clock_timestamp() - c.at)::float8
        FROM _ripple_commits c WHERE c.ts > $1 ORDER BY c.ts LIMIT 1) AS oldest_unprocessed_age
"""


@dataclass(frozen=True, slots=True)
class HubHealth:
    """One measurement. `lag_s` is the age of the oldest commit the hub has not processed (0 when caught up)."""

    database_ok: bool
    error: str | None
    processed_ts: int
    newest_ts: int | None
    lag_s: float
    tasks_ok: bool
    unreachable_s: float = 0.0

    @property
    def lag_commits(self) -> int:
        return max(0, self.newest_ts - self.processed_ts) if self.newest_ts is not None else 0


def judge(health: HubHealth, stale_after_s: float) -> list[str]:
    """What is wrong, each as a sentence saying what to look at; empty when healthy."""
    problems = []
    if not health.database_ok:
        problems.append(f"the database is unreachable ({health.error}); check DATABASE_URL and that it is up")
    if health.lag_s > stale_after_s:
        problems.append(
            f"the hub is {health.lag_s:.1f} s ({health.lag_commits} commits) behind the newest commit, past "
            f"RIPPLE_HUB_STALE_AFTER_S={stale_after_s:g}; subscribers may see stale results (see the hub's log)"
        )
    if not health.tasks_ok:
        problems.append("a hub task is down and restarting (see the log for its error)")
    return problems


class DatabaseWatch:
    """Measures every `interval_s`; `check()` measures now (for /health)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        processed_ts: Callable[[], int],
        tasks_ok: Callable[[], bool],
        *,
        interval_s: float,
        timeout_s: float,
        outage_after_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._processed_ts = processed_ts
        self._tasks_ok = tasks_ok
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._outage_after_s = outage_after_s
        self._metrics = metrics
        self.on_outage: list[Callable[[], None]] = []
        self.unreachable_since: float | None = None
        self.last: HubHealth | None = None

    @property
    def database_down(self) -> bool:
        """Whether the last check failed: requests can fail fast with a clear error instead of waiting."""
        return self.unreachable_since is not None

    async def check(self) -> HubHealth:
        loop = asyncio.get_running_loop()
        processed = self._processed_ts()
        try:
            async with asyncio.timeout(self._timeout_s):
                row = await self._pool.fetchrow(_LAG_SQL, processed)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.unreachable_since is None:
                self.unreachable_since = loop.time()
                log.error("the database does not answer (%s)", _describe(exc, self._timeout_s))
            health = HubHealth(
                False,
                _describe(exc, self._timeout_s),
                processed,
                None,
                0.0,
                self._tasks_ok(),
                loop.time() - self.unreachable_since,
            )
        else:
            if self.unreachable_since is not None:
                log.warning("the database answers again")
                self.unreachable_since = None
            assert row is not None
            age = row["oldest_unprocessed_age"]
            newest = int(row["newest"])
            lag = 0.0 if newest <= processed else max(0.0, float(age) if age is not None else 0.0)
            health = HubHealth(True, None, processed, newest, lag, self._tasks_ok())
        self.last = health
        self._export(health)
        return health

    def _export(self, health: HubHealth) -> None:
        if self._metrics is None:
            return
        self._metrics.database_up.set(1 if health.database_ok else 0)
        if health.database_ok:
            self._metrics.hub_lag.set(health.lag_s)
            self._metrics.hub_lag_commits.set(health.lag_commits)

    async def run(self) -> None:
        """The periodic check, and the outage signal while the database stays unreachable."""
        while True:
            health = await self.check()
            if not health.database_ok and health.unreachable_s >= self._outage_after_s:
                for signal in self.on_outage:
                    try:
                        signal()
                    except Exception:
                        log.exception("signalling the database outage failed")
            await asyncio.sleep(self._interval_s)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
