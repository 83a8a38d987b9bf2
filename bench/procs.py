"""Child processes of the bench: the Ripple server, the raw WebSocket server, load-generating clients.

Every child gets PR_SET_PDEATHSIG, so it dies with the bench even if the bench is killed; every wait here has a
timeout.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def _stop(proc: asyncio.subprocess.Process, sig: int, timeout: float) -> None:
    if proc.returncode is not None:
        return
    try:
        proc.send_signal(sig)
        await asyncio.wait_for(proc.wait(), timeout)
    except (TimeoutError, ProcessLookupError):
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


class ClientProc:
    """`python -m bench.clients`: a JSON spec in, JSON event lines out."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label

    @classmethod
    async def start(cls, spec: dict[str, Any], workdir: Path, label: str) -> ClientProc:
        err = open(workdir / f"client-{label}.log", "ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.clients",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=workdir,
            env=child_env(),
            preexec_fn=_die_with_parent,
            limit=1 << 26,
        )
        err.close()
        self = cls(proc, label)
        self.send(orjson.dumps(spec).decode())
        return self

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def event(self, name: str, timeout: float, match: Any = None) -> dict[str, Any]:
        """The next event called `name` (and matching `match`), skipping others; raise on an error event."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"client {self.label}: no '{name}' event within {timeout:.0f} s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                raise TimeoutError(f"client {self.label}: no '{name}' event within {timeout:.0f} s") from None
            if not line:
                raise RuntimeError(f"client {self.label} exited (code {await self.proc.wait()}) before '{name}'")
            ev = orjson.loads(line)
            if ev.get("event") == "error":
                raise RuntimeError(f"client {self.label}: {ev.get('message')}")
            if ev.get("event") == name and (match is None or match(ev)):
                return dict(ev)

    async def stats(self, timeout: float = 60) -> dict[str, Any]:
        self.send("stats")
        return await self.event("stats", timeout)

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                self.send("quit")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                await _stop(self.proc, signal.SIGKILL, 5)


class RippleServer:
    """`python -m server serve` on a free port, with the bench's functions loaded."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.admin_key = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/sync"

    @classmethod
    async def start(cls, dsn: str, workdir: Path, label: str, env: dict[str, str] | None = None) -> RippleServer:
        port = free_port()
        log = workdir / f"server-{label}.log"
        out = open(log, "ab")
        admin_key = secrets.token_hex(16)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=workdir,
            env=child_env(
                DATABASE_URL=dsn,
                RIPPLE_JWT_SECRET=secrets.token_hex(16),
                RIPPLE_ADMIN_KEY=admin_key,
                RIPPLE_MODULES='["bench.functions"]',
                **(env or {}),
            ),
            preexec_fn=_die_with_parent,
        )
        out.close()
        self = cls(proc, port, log)
        self.admin_key = admin_key
        try:
            await self._wait_healthy(60)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"the Ripple server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    r = await client.get(self.url + "/health")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the Ripple server was not healthy within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    async def metrics(self) -> dict[str, float]:
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(self.url + "/metrics")
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    async def wait_connections(self, want: float, timeout: float) -> float | None:
        """Poll /metrics until `ripple_connections` is `want`, so a reading is taken once the server has seen
        every socket open or close; returns the seconds that took, or None when the server exports no such
        gauge (the caller then waits a fixed time instead)."""
        t0 = time.monotonic()
        seen = math.nan
        while time.monotonic() - t0 < timeout:
            metrics = await self.metrics()
            if "ripple_connections" not in metrics:
                return None
            seen = metrics["ripple_connections"]
            if seen == want:
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"the Ripple server still reports {seen:.0f} connections (ripple_connections) after {timeout:.0f} s, "
            f"expected {want:.0f}: sessions of closed sockets were not torn down; its log ends:\n{self.log_tail()}"
        )

    async def gc_stats(self, freeze: bool = False) -> dict[str, Any]:
        """The server's garbage-collector pauses so far (from `bench:gcStats`); resets the per-generation max."""
        import httpx

        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                self.url + "/api/query",
                json={
                    "path": "bench:gcStats",
                    "args": {"resetMax": True, "freeze": freeze},
                    "format": "json",
                },
            )
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"bench:gcStats failed: {body}")
        return dict(body["value"])

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    async def stop(self) -> None:
        await _stop(self.proc, signal.SIGTERM, 15)


class RawServer:
    """`python -m bench.rawws`: the bare broadcast server."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/sub"

    @property
    def control_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/control"

    @classmethod
    async def start(cls, workdir: Path) -> RawServer:
        port = free_port()
        err = open(workdir / "rawws.log", "ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.rawws",
            "--port",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=workdir,
            env=child_env(),
            preexec_fn=_die_with_parent,
        )
        err.close()
        self = cls(proc, port)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.startswith(b"READY"):
            await self.stop()
            raise RuntimeError(f"the raw websocket server did not start: {line!r}")
        return self

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    async def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            await _stop(self.proc, signal.SIGKILL, 5)


class Profiler:
    """Optional: `py-spy record` of a server while a phase runs (`--profile DIR`)."""

    def __init__(self, proc: asyncio.subprocess.Process | None) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, out_dir: Path | None, pid: int, label: str) -> Profiler:
        if out_dir is None:
            return cls(None)
        import shutil

        exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if exe is None:
            print("[bench] --profile: py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
            return cls(None)
        out_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "-o",
            str(out_dir / f"{label}.collapsed.txt"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        await asyncio.sleep(0.5)
        return cls(proc)

    async def stop(self) -> None:
        if self.proc is not None:
            await _stop(self.proc, signal.SIGINT, 30)
