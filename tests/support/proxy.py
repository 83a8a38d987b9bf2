"""A TCP proxy in front of the test PostgreSQL that a test controls: it can stop forwarding without closing
(packets dropped, as a NAT or firewall does), cut every connection, and refuse new ones (the database is down).

The embedded PostgreSQL listens on a Unix socket only, so the proxy listens on 127.0.0.1 and forwards there (or
to the TCP address of RIPPLE_TEST_DATABASE_URL's server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, urlsplit, urlunsplit


def _upstream(dsn: str) -> tuple[str | None, str, int]:
    """(unix socket path or None, host, port) of the server `dsn` names."""
    parts = urlsplit(dsn)
    host = parse_qs(parts.query).get("host", [parts.hostname or "localhost"])[0]
    port = parts.port or int(parse_qs(parts.query).get("port", ["5432"])[0])
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}", host, port
    return None, host, port


def via(dsn: str, port: int) -> str:
    """`dsn` with its server replaced by 127.0.0.1:`port`."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
    return urlunsplit(("postgresql", f"{auth}127.0.0.1:{port}", parts.path, "", ""))


class Proxy:
    def __init__(self, upstream_dsn: str) -> None:
        self._unix, self._host, self._port = _upstream(upstream_dsn)
        self._dsn = upstream_dsn
        self._server: asyncio.Server | None = None
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.refusing = False

    @property
    def dsn(self) -> str:
        return via(self._dsn, self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            if self._unix is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.close()
            return
        pipe = (writer, up_writer)
        self._pipes.add(pipe)
        one = asyncio.create_task(self._pump(reader, up_writer, writer))
        two = asyncio.create_task(self._pump(up_reader, writer, writer))
        self._tasks |= {one, two}
        await asyncio.gather(one, two, return_exceptions=True)
        self._tasks -= {one, two}
        self._pipes.discard(pipe)
        for w in pipe:
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                while client in self._stalled:  # drop nothing, forward nothing, close nothing
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def stall(self) -> None:
        """Stop forwarding on every open connection without closing any; new connections still pass."""
        self._stalled |= {client for client, _ in self._pipes}

    def cut(self) -> None:
        """Close every open connection (both sides)."""
        for client, upstream in list(self._pipes):
            client.close()
            upstream.close()

    def refuse(self, refusing: bool = True) -> None:
        """While refusing, new connections are closed at once: the database looks down."""
        self.refusing = refusing

    async def close(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()


@asynccontextmanager
async def proxy_to(dsn: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(dsn)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
