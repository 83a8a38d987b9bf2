"""Ripple behind a real PgBouncer in transaction mode (how most managed PostgreSQL is reached): it starts (no
startup parameter PgBouncer refuses, no prepared-statement cache to break), serves mutations, and plain-SQL
writes and a second process's mutations reach subscribers: through the periodic log check when DATABASE_URL is
all it has, through LISTEN on RIPPLE_LISTEN_DATABASE_URL when that names a direct connection."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from server.database.connect import probe_listen
from tests.hub.test_live import second_process
from tests.support import testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.proxy import _upstream, via
from tests.support.server import run_server
from tests.support.ws import SyncClient

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_user() -> str | None:
    """PgBouncer refuses to run as root: the user to switch to (-u), when root. `pgserver` first: the embedded
    PostgreSQL's socket is in its data directory, which only that user may enter."""
    if os.geteuid() != 0:
        return None
    for name in ("pgserver", "postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root and no unprivileged user (postgres, pgserver, nobody) for pgbouncer to run as")


@pytest.fixture
def pgbouncer(fresh_dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the test database; yields the DSN through it."""
    unix, host, port = _upstream(fresh_dsn)
    upstream_host = os.path.dirname(unix) if unix is not None else host
    listen = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ripple-pgbouncer-"))
    parts = urlsplit(fresh_dsn)
    user = parts.username or "postgres"
    password = parts.password or ""
    (tmp / "users.txt").write_text(f'"{user}" "{password}"\n')
    (tmp / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={upstream_host} port={port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = {"trust" if not password else "plain"}
auth_file = {tmp / "users.txt"}
pool_mode = transaction
max_client_conn = 500
default_pool_size = 40
logfile = {tmp / "pgbouncer.log"}
pidfile = {tmp / "pgbouncer.pid"}
"""
    )
    run_as = _unprivileged_user()
    if run_as is not None:
        uid = pwd.getpwnam(run_as).pw_uid
        for path in (tmp, *tmp.iterdir()):
            os.chown(path, uid, -1)
        tmp.chmod(0o755)
    proc = subprocess.Popen(
        [PGBOUNCER, *(["-u", run_as] if run_as else []), str(tmp / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            if proc.poll() is not None:
                log = (tmp / "pgbouncer.log").read_text() if (tmp / "pgbouncer.log").exists() else ""
                raise RuntimeError(f"pgbouncer exited: {proc.stderr.read().decode() if proc.stderr else ''} {log}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", listen)) == 0:
                    break
            time.sleep(0.05)
        yield via(fresh_dsn, listen)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if (tmp / "pgbouncer.log").exists():
            print((tmp / "pgbouncer.log").read_text()[-3000:])  # shown when the test failed
        shutil.rmtree(tmp, ignore_errors=True)


def _titled(rows: list[dict[str, object]], title: str) -> bool:
    return any(row["title"] == title for row in rows)


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_pooler_is_told_apart_from_a_direct_connection(pgbouncer: str, fresh_dsn: str) -> None:
    assert await probe_listen(fresh_dsn)
    assert not await probe_listen(pgbouncer)


async def test_ripple_through_pgbouncer_alone(pgbouncer: str) -> None:
    """Only a transaction-pooled DATABASE_URL: LISTEN cannot work there, so the hub polls the log, and every write
    (this process's, plain SQL's, another process's) still reaches subscribers."""
    async with run_server(pgbouncer, log_check_interval_s=0.3) as ripple:
        assert ripple.services.hub.listen_mode == "polling"
        client = await SyncClient.connect(ripple.ws_url)
        writer = await SyncClient.connect(ripple.ws_url)
        qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        count = await client.subscribe("testing:count", {"twitchId": "pb"})
        await writer.mutation("testing:setProgress", {"twitchId": "pb", "progress": 1})
        await client.expect(lambda m: m["type"] == "Transition" and client.results[count] == 1, timeout_s=5)
        await _sql(pgbouncer, "INSERT INTO videos (twitch_id, title, status) VALUES ('pq', 'psql', 'Queued')")
        await client.expect(lambda m: m["type"] == "Transition" and _titled(client.results[qid], "psql"), timeout_s=5)
        async with second_process(ripple) as other:
            there = await SyncClient.connect(other.replace("http", "ws") + "/api/sync")
            await there.mutation("testing:setProgress", {"twitchId": "pb", "progress": 2})
            await client.expect(lambda m: m["type"] == "Transition" and client.results[count] == 2, timeout_s=5)
            await there.close()
        # Many mutations at once, through the pooler's shared server connections.
        await asyncio.gather(
            *(ripple.call("testing:setProgress", {"twitchId": f"m{i}", "progress": i}) for i in range(30))
        )
        await client.close()
        await writer.close()


async def test_ripple_through_pgbouncer_with_a_direct_listen_url(pgbouncer: str, fresh_dsn: str) -> None:
    """DATABASE_URL through PgBouncer, RIPPLE_LISTEN_DATABASE_URL direct: LISTEN works, so with the periodic look
    at 60 s a plain-SQL write still arrives at once."""
    async with run_server(pgbouncer, listen_database_url=fresh_dsn, log_check_interval_s=60.0) as ripple:
        assert ripple.services.hub.listen_mode == "listen"
        client = await SyncClient.connect(ripple.ws_url)
        qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        await _sql(pgbouncer, "INSERT INTO videos (twitch_id, title, status) VALUES ('pl', 'psql', 'Queued')")
        await client.expect(lambda m: m["type"] == "Transition" and _titled(client.results[qid], "psql"), timeout_s=3)
        async with second_process(ripple) as other:
            there = await SyncClient.connect(other.replace("http", "ws") + "/api/sync")
            await there.mutation("testing:setProgress", {"twitchId": "pl2", "progress": 1})
            await there.close()
        await _sql(pgbouncer, "UPDATE videos SET status = 'Failed' WHERE twitch_id = 'pl'")
        await client.expect(
            lambda m: m["type"] == "Transition" and not _titled(client.results[qid], "psql"), timeout_s=3
        )
        await client.close()
