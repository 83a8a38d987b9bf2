"""`HubConnection`: the hub's own connection, waiting inside its next REPEATABLE READ snapshot.

No pool checkout or reset between rounds: the connection waits inside `BEGIN_SNAPSHOT`, so a round's first query
takes its snapshot and the BEGIN is off the path from commit to client. Every statement of the hub's own (log
read, snapshot, savepoint) is bounded: past `timeout_s` the connection is taken for lost, because packets
dropped without a close would otherwise stall every subscriber. A failed round drops the connection, and with it
the clock key if the round held it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

from server.database.connect import connect
from server.database.pool import init_connection
from server.hub.changelog import BEGIN_SNAPSHOT

__all__ = ["HubConnection"]

T = TypeVar("T")


class HubConnection:
    def __init__(self, dsn: str, *, pooled: bool, timeout_s: float) -> None:
        self._dsn = dsn
        self._pooled = pooled
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        """The connection, opened (and inside its next snapshot) if it is not."""
        if self._conn is None or self._conn.is_closed():
            conn: asyncpg.Connection = await asyncio.wait_for(connect(self._dsn, pooled=self._pooled), self._timeout_s)
            self._conn = conn
            await self.bounded(init_connection(conn))
            await self.bounded(conn.execute(BEGIN_SNAPSHOT))
        return self._conn

    async def bounded(self, step: Coroutine[Any, Any, T]) -> T:
        """Run one of the hub's statements, which take milliseconds (a settle waits up to 2 s); past the timeout
        the round fails, to be retried on a new connection."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await step
        except TimeoutError:
            raise ConnectionError(
                f"the hub's connection gave no answer within {self._timeout_s:g} s (RIPPLE_HUB_READ_TIMEOUT_S); "
                "taking it for lost"
            ) from None

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend serving the hub (tests watch it), None while not connected."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    def drop(self) -> None:
        """Mid-statement or mid-transaction: start the next round afresh."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
