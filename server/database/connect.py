"""How Ripple opens its own PostgreSQL connections, direct or through a transaction pooler (PgBouncer).

Why one place: a transaction pooler lends a server connection per transaction, so everything that outlives a
transaction on a connection breaks behind it. Ripple's connections therefore send no startup parameters a pooler
may refuse (PgBouncer refuses `client_min_messages`: such settings are made per transaction instead), and, behind a
pooler, keep no prepared-statement cache (asyncpg's named statements would be looked up on another server
connection; PgBouncer only tracks them from 1.21 on, with `max_prepared_statements`). Where the connection is
TCP, the kernel's keepalives find a peer that vanished without closing (only idle connections; a probe at the
application level covers the rest: hub/changes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from typing import Any

import asyncpg

__all__ = ["connect", "enable_keepalive", "pooler_options", "probe_listen"]

log = logging.getLogger("ripple")

# Seconds idle before the first keepalive, between keepalives, and how many unanswered ones drop the connection.
_KEEPALIVE = (10, 5, 3)


def pooler_options(pooled: bool) -> dict[str, Any]:
    """asyncpg options for a connection that may go through a transaction pooler."""
    return {"statement_cache_size": 0} if pooled else {}


def enable_keepalive(conn: asyncpg.Connection) -> None:
    """TCP keepalives on `conn`'s socket, when it is TCP (a Unix socket cannot lose packets)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = _KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


async def connect(dsn: str, *, pooled: bool = False, **kwargs: Any) -> asyncpg.Connection:
    """A connection with keepalives, and with the pooler options when `pooled`."""
    conn = await asyncpg.connect(dsn, **pooler_options(pooled), **kwargs)
    enable_keepalive(conn)
    return conn


async def probe_listen(dsn: str, *, wait_s: float = 1.0) -> bool:
    """Whether a LISTEN on `dsn` hears a NOTIFY sent from another connection within `wait_s`.

    Behind a transaction pooler it does not: the LISTEN stays on whichever server connection ran it, which is no
    longer this client's once that statement ended. The NOTIFY comes from a second connection on purpose: a
    backend hears its own NOTIFY even behind a pooler, since it is delivered before that statement returns.
    """
    channel = "ripple_probe_" + secrets.token_hex(6)
    heard = asyncio.Event()
    listener = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        await listener.add_listener(channel, lambda *_: heard.set())
        notifier = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            await notifier.execute(f"NOTIFY {channel}")
        finally:
            await notifier.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await heard.wait()
    finally:
        listener.terminate()
    return heard.is_set()
