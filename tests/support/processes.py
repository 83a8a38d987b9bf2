"""`ripple serve` as a child process the test can kill (SIGKILL: no shutdown, no cleanup, as a crash)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from tests.support.server import ADMIN_KEY, ISSUER, JWT_SECRET, ROOT, _free_port


@dataclass
class ServeProcess:
    url: str
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: the process ends mid-work; its sockets (and so its database sessions) close with it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)

    async def mutation(self, path: str, args: dict[str, object]) -> object:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            response = await http.post("/api/mutation", json={"path": path, "args": args})
        assert response.status_code == 200 and response.json()["status"] == "success", response.text
        return response.json()["value"]


@asynccontextmanager
async def serve_process(dsn: str, modules: list[str], **env: str) -> AsyncIterator[ServeProcess]:
    """A `ripple serve` on `dsn` loading `modules`, with `env` added (RIPPLE_* settings); yields it once healthy.
    Its log is printed when it ends, so pytest shows it with a failure."""
    port = _free_port()
    environment = dict(
        os.environ,
        DATABASE_URL=dsn,
        RIPPLE_JWT_SECRET=JWT_SECRET,
        RIPPLE_JWT_ISSUER=ISSUER,
        RIPPLE_ADMIN_KEY=ADMIN_KEY,
        RIPPLE_CRONS_ENABLED="false",
        RIPPLE_MODULES=json.dumps(modules),
        PYTHONPATH=str(ROOT),
        **env,
    )
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), "--log-level", "warning"],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(200):
                if proc.poll() is not None:
                    raise RuntimeError(f"ripple serve exited with {proc.returncode} before it was healthy")
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("ripple serve was not healthy within 20 s")
        yield ServeProcess(url, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        log.seek(0)
        text = log.read().decode(errors="replace")
        log.close()
        if text:
            print(f"ripple serve ({env.get('RIPPLE_TEST_PROCESS', '?')}) log:\n{text}", file=sys.stderr)
