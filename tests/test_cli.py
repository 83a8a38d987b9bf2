"""The README's first command on a fresh data folder: `ripple serve` starts an embedded PostgreSQL, answers
/health within seconds, reuses the data on restart and stops PostgreSQL when it is stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve_once(data_dir: Path) -> tuple[float, dict]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(RIPPLE_DATA_DIR=str(data_dir), RIPPLE_JWT_SECRET="s" * 32)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with httpx.AsyncClient() as http:
            while True:
                assert loop.time() - started < 30, "ripple serve did not answer /health within 30 s"
                assert proc.returncode is None, (await proc.stdout.read()).decode()
                try:
                    health = (await http.get(f"http://127.0.0.1:{port}/health")).json()
                    return loop.time() - started, health
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
        assert proc.returncode == 0, output
        assert "embedded PostgreSQL" in output and "psql '" in output


def _postgres_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


async def test_ripple_serve_with_embedded_postgres() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ripple-serve-"))
    try:
        took, health = await _serve_once(data_dir)
        assert health["status"] == "ok" and took < 30
        assert not _postgres_running(data_dir)  # SIGTERM stopped the embedded PostgreSQL too
        took, health = await _serve_once(data_dir)  # the data folder is reused
        assert health["status"] == "ok"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
