"""`ChangeFeed`: learns that commits happened (LISTEN) and reads what they changed (the commit log).

NOTIFY only wakes the hub; the log in PostgreSQL is the truth, read by ts range. A lost LISTEN connection is
re-opened with backoff and followed by a wake-up, so the hub catches up from the log: nothing is missed, and
nothing is polled while nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.database.announce import Announcement, Change, parse_announcement

__all__ = ["ROUND_NOTICE", "Announcements", "ChangeFeed", "LogSlice", "RoundHead", "read_changes", "with_round_head"]

log = logging.getLogger("ripple.hub")

CHANNEL = "ripple_commits"


# One round trip for the round's head (schema.sql, `_ripple_round_head`: the snapshot's newest ts S, whether it
# holds every commit up to S, when S was drawn, the pruned horizon) and the changes up to S (at least one row).
# The changes are looked up per commit (OFFSET 0 keeps the planner from making that a join, which a generic plan
# made while the log was small turned into a scan of the whole log) through the xid index (see schema.sql on its
# statistics).
_ROUND_SQL = """
WITH h AS MATERIALIZED (SELECT * FROM _ripple_round_head($1, $3))
SELECT h.*, x.*
FROM h
LEFT JOIN LATERAL (
    SELECT c.ts, ch.table_name, ch.doc_id, ch.old_keys, ch.new_keys
    FROM _ripple_commits c
    CROSS JOIN LATERAL (SELECT * FROM _ripple_changes ch WHERE ch.xid = c.xid OFFSET 0) ch
    WHERE h.settled AND c.ts > $1 AND c.ts <= h.snapshot_ts
    ORDER BY c.ts
    LIMIT $2
) x ON TRUE
"""

_TABLES_SQL = """
SELECT DISTINCT ch.table_name
FROM _ripple_commits c
CROSS JOIN LATERAL (SELECT ch.table_name FROM _ripple_changes ch WHERE ch.xid = c.xid OFFSET 0) ch
WHERE c.ts > $1 AND c.ts <= $2
"""


@dataclass(slots=True)
class LogSlice:
    """What a round reads first: its snapshot's ts, the horizon, and the changes since the last round.

    `tables` is set instead of `changes` when there were more than the limit: invalidate those tables whole.
    """

    snapshot_ts: int
    horizon: int
    changes: list[Change]
    tables: set[str] | None = None
    drawn_at: float | None = None  # when S was drawn (epoch seconds), if its commit is still in the log


async def read_changes(conn: asyncpg.Connection, after_ts: int, limit: int, *, settled: bool) -> LogSlice | None:
    """Read, in the caller's open snapshot, its newest commit ts S and the changes of commits in (after_ts, S].

    `settled` says the caller took the clock key before the snapshot (and this lets go of it). Otherwise None
    means the snapshot may lack a commit at or below S: settle, take a new snapshot and read again.
    """
    rows = await conn.fetch(_ROUND_SQL, after_ts, limit + 1, settled)
    if not rows[0]["settled"]:
        return None
    snapshot_ts, horizon = int(rows[0]["snapshot_ts"]), int(rows[0]["horizon"])
    drawn_at = float(rows[0]["drawn_at"]) if rows[0]["drawn_at"] is not None else None
    if len(rows) > limit:
        tables = {r["table_name"] for r in await conn.fetch(_TABLES_SQL, after_ts, snapshot_ts)}
        return LogSlice(snapshot_ts, horizon, [], tables, drawn_at)
    changes = [
        Change(r["ts"], r["table_name"], r["doc_id"], r["old_keys"], r["new_keys"]) for r in rows if r["ts"] is not None
    ]
    return LogSlice(snapshot_ts, horizon, changes, None, drawn_at)


# The head of a round read inside another statement (schema.sql, `_ripple_round_head_notice`).
ROUND_NOTICE = "ripple round"


@dataclass(frozen=True, slots=True)
class RoundHead:
    snapshot_ts: int
    settled: bool
    horizon: int
    drawn_at: float | None

    @classmethod
    def parse(cls, detail: str) -> RoundHead:
        ts, settled, horizon, *drawn = detail.split(" ")
        return cls(int(ts), settled == "1", int(horizon), float(drawn[0]) if drawn else None)


def with_round_head(after_ts: int) -> Callable[[str, list[Any]], tuple[str, list[Any]]]:
    """A rewrite of a statement (`Snapshot.first_statement`) that also reads the round's head in its snapshot."""

    def rewrite(sql: str, params: list[Any]) -> tuple[str, list[Any]]:
        wrapped = f"SELECT u.* FROM ({sql}) u WHERE (SELECT _ripple_round_head_notice(${len(params) + 1}))"
        return wrapped, [*params, after_ts]

    return rewrite


class Announcements:
    """What commits not processed yet announced of their changes (database/announce.py), by ts.

    A round may take its changes from here instead of the log when every commit in (processed, S] announced them:
    the trigger that writes the log rows wrote the announcement in the same transaction. A ts announced without
    its changes (too many, TRUNCATE, an older writer) or not announced yet leaves the log to tell.
    """

    def __init__(self) -> None:
        self._by_ts: dict[int, list[Change]] = {}

    def add(self, said: Announcement) -> None:
        if said.changes is not None:
            self._by_ts[said.ts] = said.changes

    def after(self, after_ts: int) -> list[Change]:
        """Every announced change of a commit past `after_ts`."""
        return [change for ts, changes in self._by_ts.items() if ts > after_ts for change in changes]

    def log_slice(self, after_ts: int, head: RoundHead, limit: int) -> LogSlice | None:
        """The round's LogSlice when the announcements cover (after_ts, S] whole and the log was not pruned past
        `after_ts`; None otherwise (read the log)."""
        upto = head.snapshot_ts
        if head.horizon > after_ts or upto - after_ts > len(self._by_ts):
            return None
        changes: list[Change] = []
        for ts in range(after_ts + 1, upto + 1):
            announced = self._by_ts.get(ts)
            if announced is None:
                return None
            changes.extend(announced)
        if len(changes) > limit:
            return None
        return LogSlice(upto, head.horizon, changes, None, head.drawn_at)

    def contiguous(self, after_ts: int) -> tuple[int, list[Change]]:
        """The newest ts M such that every ts in (after_ts, M] announced its changes, and those changes (commit ts
        are drawn from one sequence, so no other commit lies at or below M)."""
        upto, changes = after_ts, []
        while (announced := self._by_ts.get(upto + 1)) is not None:
            upto += 1
            changes.extend(announced)
        return upto, changes

    def __bool__(self) -> bool:
        return bool(self._by_ts)

    def forget_through(self, ts: int) -> None:
        for done in [t for t in self._by_ts if t <= ts]:
            del self._by_ts[done]


class ChangeFeed:
    """Owns one LISTEN connection. `on_wake` is called with every announcement (database/announce.py) NOTIFY
    brings, and with None after every reconnect (anything may have been missed).

    Lifecycle: `start()` connects (raising if the database is unreachable), a supervisor task then keeps the
    connection alive until `close()`.
    """

    def __init__(
        self, dsn: str, on_wake: Callable[[Announcement | None], None], *, reconnect_max_s: float = 5.0
    ) -> None:
        self._dsn = dsn
        self._on_wake = on_wake
        self._reconnect_max_s = reconnect_max_s
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="ripple-change-feed")

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self._conn = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._on_wake(parse_announcement(payload))

    @property
    def backend_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            log.warning("LISTEN connection lost; reconnecting and catching up from the commit log")
            delay = 0.05
            while not self._closing:
                try:
                    await self._connect()
                    self.reconnects += 1
                    break
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("reconnecting LISTEN failed (%s); retrying in %.2f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reconnect_max_s)
            self._on_wake(None)

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
