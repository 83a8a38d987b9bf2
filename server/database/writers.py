"""`Writers`: connections that wait for the next mutation inside an already open SERIALIZABLE transaction.

Why a pool of their own: a mutation costs what its round trips cost (each is a send, a wake-up and a parse on
both sides), so a writer connection is kept inside `BEGIN ISOLATION LEVEL SERIALIZABLE`, and the end of one
mutation (the dedupe row, COMMIT, the NOTIFY of its ts) and the start of the next travel in one message. Such an
open transaction holds nothing: no snapshot is taken and no xid assigned before its first statement. asyncpg's
pool rolls back whatever a connection comes back with, hence this small pool. A writer still rests outside a
transaction about once a second, when PostgreSQL reports its table statistics (autovacuum goes by them).

What a COMMIT drew (its ts and the changes it announces, database/announce.py) comes back as a NOTICE (schema.sql,
`_ripple_commit_ts`, when `ripple.notify` is 'after_commit'): a message of simple statements returns no rows to
asyncpg, and reading the ts in another statement would cost the round trip this saves. A write after the draw
(another deferred trigger) raises the NOTICE again with the ts alone, so the last one is what the commit announced.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from server.database.announce import Announcement, parse_announcement
from server.database.connect import connect
from server.database.pool import init_connection

__all__ = ["ANNOUNCE_SQL", "APPLICATION_NAME", "OPEN_SQL", "WriterConnection", "Writers"]

# What pg_stat_activity shows for these connections (idle in transaction between mutations, by design).
APPLICATION_NAME = "ripple writer"

# client_min_messages is set here, per transaction, not as a startup parameter: transaction poolers (PgBouncer)
# refuse that one, and the commit's ts comes back as a NOTICE, which a stricter server default would swallow.
OPEN_SQL = (
    "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL ripple.notify = 'after_commit'; "
    "SET LOCAL client_min_messages = notice"
)
# After a COMMIT that drew a ts: announce it to every hub (schema.sql leaves it in ripple.last_commit). The NOTIFY
# runs in a transaction of its own, outside the writer's (see schema.sql); an explicit one, as a COMMIT ending an
# implicit one costs a WARNING message per mutation. It commits asynchronously: it holds no data, and a database
# that crashes before flushing it drops every LISTEN connection anyway, whose hubs then catch up from the log.
ANNOUNCE_SQL = (
    "BEGIN; SET LOCAL synchronous_commit = off; "
    "SELECT pg_notify('ripple_commits', current_setting('ripple.last_commit')); COMMIT"
)
_TS_NOTICE = "ripple commit ts"
_BACKEND_SQL = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
# PostgreSQL reports a backend's table statistics (which autovacuum goes by) only while it is idle outside a
# transaction, so a writer rests there at least this often.
_REST_EVERY_S = 1.0


class WriterConnection:
    """One connection and what its last COMMIT announced."""

    def __init__(self, conn: asyncpg.Connection, backend: tuple[int, datetime.datetime] | None = None) -> None:
        self.conn = conn
        # (pid, backend_start): tells when this connection's backend has ended, even if the pid is reused.
        self.backend = backend
        self.committed: Announcement | None = None
        # "open": in a fresh transaction; "idle": outside any (resting); "busy": lent out, state unknown.
        self.state = "idle"
        self._rested_at = time.monotonic()
        # When it last came back to the pool, and the one timer that rests it after _REST_EVERY_S unused.
        self.returned_at = self._rested_at
        self.rest_timer: asyncio.TimerHandle | None = None
        conn.add_log_listener(self._notice)

    def _notice(self, conn: Any, message: Any) -> None:
        if getattr(message, "message", None) == _TS_NOTICE:
            self.committed = parse_announcement(message.detail)

    async def open(self) -> None:
        await self.conn.execute(OPEN_SQL)
        self.state = "open"

    async def commit(self, statements: str = "", *, wrote: bool = True) -> Announcement | None:
        """Run `statements` (simple protocol, may be empty) and COMMIT, announce the ts if the transaction `wrote`,
        then open the next transaction in the same message unless it is time to rest; return what the COMMIT
        announced (its ts, maybe its changes), or None when it wrote nothing."""
        self.committed = None
        rest = time.monotonic() - self._rested_at >= _REST_EVERY_S
        parts = [statements] if statements else []
        parts += ["COMMIT", ANNOUNCE_SQL] if wrote else ["COMMIT"]
        if not rest:
            parts.append(OPEN_SQL)
        await self.conn.execute("; ".join(parts))
        if rest:
            self._rested_at = time.monotonic()
        self.state = "idle" if rest else "open"
        return self.committed

    async def rollback(self) -> None:
        """End a failed or abandoned transaction and open the next."""
        await self.conn.execute(("ROLLBACK; " if self.conn.is_in_transaction() else "") + OPEN_SQL)
        self.state = "open"


class Writers:
    """Up to `size` writer connections, opened on demand. A connection whose state is unknown (cancelled
    mid-statement, broken) is closed rather than reused."""

    def __init__(self, dsn: str, size: int = 10, *, pooled: bool = False) -> None:
        """`pooled`: `dsn` goes through a transaction pooler. Each message that commits also opens the next
        transaction (or rests outside one), and `ripple.last_commit` is written and read within one message, so
        writers work through one; only the backend pid means nothing there (another backend serves each
        transaction), so a commit whose connection is lost is reported as of unknown outcome."""
        self._dsn = dsn
        self._pooled = pooled
        self._size = size
        self._idle: list[WriterConnection] = []
        self._opened = 0
        self._available = asyncio.Condition()
        self._resting: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def opened(self) -> int:
        """Connections open now (idle, lent out or resting)."""
        return self._opened

    async def _connect(self) -> WriterConnection:
        conn = await connect(self._dsn, pooled=self._pooled, server_settings={"application_name": APPLICATION_NAME})
        try:
            await init_connection(conn)
            row = None if self._pooled else await conn.fetchrow(_BACKEND_SQL)
        except BaseException:
            conn.terminate()
            raise
        return WriterConnection(conn, (row["pid"], row["backend_start"]) if row is not None else None)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[WriterConnection]:
        """A connection inside an open SERIALIZABLE transaction; end it with `commit` or `rollback`, or the
        connection is dropped."""
        writer = await self._take()
        try:
            if writer.state == "idle":
                await writer.open()
            writer.state = "busy"
            yield writer
        finally:
            await self._give_back(writer, writer.state != "busy" and not writer.conn.is_closed())

    async def _take(self) -> WriterConnection:
        async with self._available:
            while True:
                if self._closed:
                    raise asyncpg.InterfaceError("the writer pool is closed")
                while self._idle:
                    writer = self._idle.pop()
                    if not writer.conn.is_closed():
                        return writer
                    self._opened -= 1  # the server ended it while it waited (restart, idle timeout)
                if self._opened < self._size:
                    self._opened += 1
                    break
                await self._available.wait()
        try:
            return await self._connect()
        except BaseException:
            async with self._available:
                self._opened -= 1
                self._available.notify()
            raise

    async def _give_back(self, writer: WriterConnection, healthy: bool) -> None:
        if not healthy or self._closed:
            writer.conn.terminate()
        async with self._available:
            if healthy and not self._closed:
                self._idle.append(writer)
                writer.returned_at = time.monotonic()
                if writer.state == "open" and writer.rest_timer is None:
                    writer.rest_timer = asyncio.get_running_loop().call_later(
                        _REST_EVERY_S, self._rest_if_unused, writer
                    )
            else:
                self._opened -= 1
            self._available.notify()

    def _rest_if_unused(self, writer: WriterConnection) -> None:
        """A writer left open and unused for _REST_EVERY_S rests, so its statistics are reported (once, not
        periodically: a resting connection is not touched again until it is needed). One timer per writer, not
        one per mutation: a writer used again meanwhile is looked at again when its quiet second would end."""
        writer.rest_timer = None
        if writer not in self._idle or writer.state != "open" or self._closed:
            return  # lent out (its return sets the next timer), resting or closed
        unused_s = time.monotonic() - writer.returned_at
        if unused_s < _REST_EVERY_S:
            writer.rest_timer = asyncio.get_running_loop().call_later(
                _REST_EVERY_S - unused_s, self._rest_if_unused, writer
            )
            return
        self._idle.remove(writer)
        self._resting.add(asyncio.create_task(self._rest(writer)))

    async def _rest(self, writer: WriterConnection) -> None:
        writer.state = "busy"
        try:
            await writer.conn.execute("COMMIT")
            writer.state = "idle"
        except Exception:
            pass
        finally:
            self._resting.discard(asyncio.current_task())
            await self._give_back(writer, writer.state == "idle" and not writer.conn.is_closed())

    async def close(self) -> None:
        await asyncio.gather(*self._resting, return_exceptions=True)
        async with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
            for writer in idle:
                if writer.rest_timer is not None:
                    writer.rest_timer.cancel()
            self._available.notify_all()
        await asyncio.gather(*(w.conn.close() for w in idle), return_exceptions=True)
