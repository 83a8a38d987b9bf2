"""Embedded PostgreSQL (pgserver's bundled PostgreSQL 16), used when no DATABASE_URL is configured.

Why pgserver: it is a pip-only PostgreSQL (no system packages), starts in about 0.5 s, and runs as root by
creating a `pgserver` system user. Two of its behaviours need care, handled here:

* It reference-counts a server through `<pgdata>/.handle_pids.json` and stops it when the last listed process
  exits. A SIGKILLed holder stays listed forever, so its postmaster keeps running and no later process ever
  stops it. `start` drops dead pids from that list first: a leaked postmaster is then simply reused (it is a
  normal server on our own data directory) and is stopped by our `stop` like one we started.
* When root, it makes every parent of the data directory world-traversable (o+rx) and chowns the data
  directory to `pgserver`; choose a data directory whose parents may be traversable.

The DSN is a Unix-socket URI (`postgresql://postgres:@/postgres?host=<dir>`): no TCP port is opened.
"""

from __future__ import annotations

import json
import re
import secrets
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import psutil

with warnings.catch_warnings():  # platformdirs warns on import when XDG_RUNTIME_DIR is unset: harmless
    warnings.simplefilter("ignore")
    from pgserver.postgres_server import PostgresServer, get_server

__all__ = ["EmbeddedPostgres", "create_database", "drop_database", "dsn_with_database"]


class EmbeddedPostgres:
    """One embedded server on one data directory; `start` reuses the directory's data and any running server."""

    def __init__(self) -> None:
        self._server: PostgresServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, data_dir: Path) -> str:
        """Start (or attach to) the server on `data_dir`, creating it on first use; returns the admin DSN."""
        if self._server is not None:
            raise RuntimeError("EmbeddedPostgres is already started; stop() it first")
        pgdata = Path(data_dir).expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:  # the same inter-process lock pgserver takes around its pid list
            _forget_dead_holders(pgdata)
            _remove_foreign_pidfile(pgdata)
        self._server = get_server(pgdata, cleanup_mode="stop")
        return self._server.get_uri()

    def stop(self) -> None:
        """Release our handle; the server stops when no other live process holds it."""
        server, self._server = self._server, None
        if server is None:
            return
        server.cleanup()
        # pgserver caches one handle per data dir and only forgets it when it stopped the server: forget it
        # here too, so a later start() in this process registers itself again instead of reusing a dead handle.
        PostgresServer._instances.pop(server.pgdata, None)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _forget_dead_holders(pgdata: Path) -> None:
    """Drop pids of dead processes from pgserver's holder list, so the last live holder stops the server."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _remove_foreign_pidfile(pgdata: Path) -> None:
    """Remove a postmaster.pid whose pid now belongs to another process (reused after a crash or reboot):
    pgserver would take that process for our server, and postgres would refuse to start."""
    pidfile = pgdata / "postmaster.pid"
    try:
        proc = psutil.Process(int(pidfile.read_text().split("\n", 1)[0]))
        ours = proc.name() == "postgres" and str(pgdata) in " ".join(proc.cmdline())
    except (FileNotFoundError, ValueError):
        return
    except psutil.NoSuchProcess:
        return  # a dead pid: pgserver and postgres both handle that
    except psutil.AccessDenied:
        return  # not ours to judge; leave it to postgres
    if not ours:
        pidfile.unlink(missing_ok=True)


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server DSN (URI form), pointing at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URI, got {dsn!r}")
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", name):
        raise ValueError(f"database name must be 1-63 letters, digits or underscores, got {name!r}")


async def create_database(admin_dsn: str, name: str | None = None) -> str:
    """Create a new, empty database on the server of `admin_dsn` and return its DSN.

    It copies template0, which nobody connects to, so concurrent creations never fail on a busy template1.
    """
    name = name or f"ripple_{secrets.token_hex(6)}"
    _check_name(name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database, closing its remaining connections (PostgreSQL 13+)."""
    _check_name(name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
