"""`ChangeFeed`: learns that commits happened (LISTEN).

NOTIFY only wakes the hub (with the commit's announcement, database/announce.py); the log in PostgreSQL is the
truth (changelog.py). A lost LISTEN connection is re-opened with backoff and followed by a wake-up that says
"anything may have happened", so the hub catches up from the log. A NOTIFY that never arrives is caught by the
hub's periodic look at the log head (`log_check_interval_s`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from server.database.announce import Announcement, parse_announcement
from server.hub.changelog import _ROUND_SQL as _ROUND_SQL  # tests/database/test_capture.py reads it here

__all__ = ["CHANNEL", "ChangeFeed"]

log = logging.getLogger("ripple.hub")

CHANNEL = "ripple_commits"


class ChangeFeed:
    """Owns one LISTEN connection. `on_wake` is called with every announcement NOTIFY brings, and with None after
    every reconnect (anything may have been missed).

    Lifecycle: `start()` connects (raising if the database is unreachable); `keep_alive()` is the long-lived loop
    that re-opens a lost connection (run it under a supervisor: hub/supervise.py); `close()` ends both.
    """

    def __init__(
        self, dsn: str, on_wake: Callable[[Announcement | None], None], *, reconnect_max_s: float = 5.0
    ) -> None:
        self._dsn = dsn
        self._on_wake = on_wake
        self._reconnect_max_s = reconnect_max_s
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._closing = False
        self.reconnects = 0

    async def start(self) -> None:
        await self._connect()

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

    async def keep_alive(self) -> None:
        """Re-open the connection whenever it is lost, until `close()`; returns only then."""
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
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
