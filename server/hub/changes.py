"""`ChangeFeed`: learns that commits happened (LISTEN).

NOTIFY only wakes the hub (with the commit's announcement, database/announce.py); the log in PostgreSQL is the
truth (changelog.py). A lost LISTEN connection is re-opened with backoff and followed by a wake-up that says
"anything may have happened", so the hub catches up from the log. A NOTIFY that never arrives is caught by the
hub's periodic look at the log head (`log_check_interval_s`).

A connection can also be lost without being closed (a NAT or firewall dropping its packets, a peer that vanished):
nothing then says so, and LISTEN would hear nothing while all looks well. So the connection is probed every
`probe_interval_s` (`SELECT 1`, which must answer within `probe_timeout_s`); a probe that fails drops it, which
reconnects it like any lost connection. TCP keepalives (database/connect.py) cover the same at the kernel level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from server.database.announce import Announcement, parse_announcement
from server.database.connect import connect
from server.hub.changelog import _ROUND_SQL as _ROUND_SQL  # tests/database/test_capture.py reads it here

__all__ = ["CHANNEL", "ChangeFeed"]

log = logging.getLogger("ripple.hub")

CHANNEL = "ripple_commits"


class ChangeFeed:
    """Owns one LISTEN connection. `on_wake` is called with every announcement NOTIFY brings, and with None after
    every reconnect (anything may have been missed).

    Lifecycle: `start()` connects (raising if the database is unreachable); `keep_alive()` is the long-lived loop
    that probes the connection and re-opens it when lost (run it under a supervisor: hub/supervise.py); `close()`
    ends both.
    """

    def __init__(
        self,
        dsn: str,
        on_wake: Callable[[Announcement | None], None],
        *,
        reconnect_max_s: float = 5.0,
        probe_interval_s: float = 5.0,
        probe_timeout_s: float = 3.0,
    ) -> None:
        self._dsn = dsn
        self._on_wake = on_wake
        self._reconnect_max_s = reconnect_max_s
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._closing = False
        self.reconnects = 0
        self.failed_probes = 0

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        conn = await asyncio.wait_for(connect(self._dsn), self._probe_timeout_s + 5.0)
        self._conn = conn
        self._lost.clear()
        conn.add_termination_listener(self._terminated)
        await conn.add_listener(CHANNEL, self._notified)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:  # not one dropped earlier, whose end is reported late
            self._lost.set()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._on_wake(parse_announcement(payload))

    @property
    def backend_pid(self) -> int | None:
        return self._conn.get_server_pid() if self._conn is not None else None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and not self._lost.is_set()

    async def keep_alive(self) -> None:
        """Probe the connection, re-open it whenever it is lost, until `close()`; returns only then."""
        while not self._closing:
            await self._until_lost()
            if self._closing:
                return
            log.warning("LISTEN connection lost; reconnecting and catching up from the commit log")
            delay = 0.05
            while not self._closing:
                try:
                    await self._connect()
                    self.reconnects += 1
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("reconnecting LISTEN failed (%s); retrying in %.2f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reconnect_max_s)
            self._on_wake(None)

    async def _until_lost(self) -> None:
        """Return once the connection is lost: closed, or not answering a probe in time (then dropped here)."""
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_interval_s):
                    await self._lost.wait()
                return
            if self._closing or not await self._probe():
                self._drop()
                return

    async def _probe(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                await conn.fetchval("SELECT 1")
            return True
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.failed_probes += 1
            log.warning(
                "the LISTEN connection did not answer a probe within %.1f s (%s); dropping it and reconnecting",
                self._probe_timeout_s,
                exc or type(exc).__name__,
            )
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._lost.set()
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
