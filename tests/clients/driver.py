"""Async helper that runs an official Convex client in a subprocess for pytest.

    drv = await ClientDriver.start("node", url)      # or "python"
    try:
        await drv.send({"op": "subscribe", "id": "s1", "fn": "messages:list", "args": {}})
        ev = await drv.expect({"event": "update", "id": "s1"}, timeout_s=10)
        res = await drv.call("mutation", "messages:send", {"body": "hi"})   # result event
        assert res["subs"]["s1"] == ...                                     # read-your-writes
    finally:
        await drv.close()

The subprocess is tests/clients/convex_driver.mjs (npm ``convex`` ConvexClient,
needs ``npm ci`` in tests/clients) or tests/clients/py_driver.py (PyPI
``convex``, run with this interpreter). The JSON-lines protocol is documented
at the top of convex_driver.mjs. Values use Convex's JSON encoding; ``decode``
turns them into plain Python values.

``expect`` returns the first not-yet-returned event (in arrival order) that
matches, so events that arrive while a test waits for something else are not
lost; ``events`` holds every event seen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import struct
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "convex_driver.mjs"
PY_SCRIPT = HERE / "py_driver.py"

Event = dict[str, Any]
Predicate = Callable[[Event], bool] | dict[str, Any]


async def npm_ci(folder: Path) -> None:
    """Install a folder's locked npm packages, so a plain `pytest` works on a fresh checkout."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not on PATH: install Node.js, or run `npm ci` in {folder}")
    proc = await asyncio.create_subprocess_exec(
        npm,
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"`npm ci` in {folder} failed:\n{output.decode(errors='replace')[-2000:]}")


class DriverExited(RuntimeError):
    """The driver process ended while a test was waiting on it."""


def _matcher(predicate: Predicate) -> Callable[[Event], bool]:
    if callable(predicate):
        return predicate
    want = dict(predicate)
    return lambda ev: all(k in ev and ev[k] == v for k, v in want.items())


def decode(v: Any) -> Any:
    """Convex JSON encoding -> Python: $integer -> int, $bytes -> bytes, $float -> float."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1:
            ((k, x),) = v.items()
            if k == "$integer":
                return struct.unpack("<q", base64.b64decode(x))[0]
            if k == "$bytes":
                return base64.b64decode(x)
            if k == "$float":
                return struct.unpack("<d", base64.b64decode(x))[0]
        return {k: decode(x) for k, x in v.items()}
    return v


def encode_int64(i: int) -> dict[str, str]:
    """Python int -> Convex int64 JSON, for args (``{"$integer": ...}``)."""
    return {"$integer": base64.b64encode(struct.pack("<q", i)).decode()}


def encode_bytes(b: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(b).decode()}


class ClientDriver:
    def __init__(self, kind: str, url: str, proc: asyncio.subprocess.Process) -> None:
        self.kind = kind
        self.url = url
        self.proc = proc
        self.events: list[Event] = []
        self._consumed: set[int] = set()
        self._stderr_tail: deque[str] = deque(maxlen=200)
        self._changed = asyncio.Event()
        self._eof = False
        self._ids = itertools.count(1)
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    # ------------------------------------------------------------ lifecycle
    @classmethod
    async def start(
        cls,
        kind: Literal["node", "python"],
        url: str,
        *,
        options: dict[str, Any] | None = None,
        ready_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> ClientDriver:
        """Spawn the driver for ``kind`` against deployment ``url`` and wait for "ready".

        ``options`` (node only) is passed to ``new ConvexClient(url, options)``.
        """
        if kind == "node":
            node = shutil.which("node")
            if node is None:
                raise RuntimeError("node is not on PATH")
            if not (HERE / "node_modules" / "convex").is_dir():
                await npm_ci(HERE)
            argv = [node, str(NODE_SCRIPT), url]
            if options:
                argv.append(json.dumps(options))
        elif kind == "python":
            if options:
                raise ValueError("the Python client takes no options")
            argv = [sys.executable, str(PY_SCRIPT), url]
        else:
            raise ValueError(f"unknown driver kind {kind!r}")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            limit=64 * 1024 * 1024,
        )
        drv = cls(kind, url, proc)
        try:
            await drv.expect({"event": "ready"}, timeout_s=ready_timeout_s)
        except BaseException:
            await drv.kill()
            raise
        return drv

    async def __aenter__(self) -> ClientDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Ask the driver to close its client, then make sure the process is gone."""
        try:
            if self.proc.returncode is None and self.proc.stdin and not self.proc.stdin.is_closing():
                with contextlib.suppress(Exception):
                    await self.send({"op": "close"})
                with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
                    await asyncio.wait_for(self.proc.wait(), timeout_s)
        finally:
            await self.kill()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.stdin:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        for t in self._readers:
            t.cancel()
        for t in self._readers:
            with contextlib.suppress(BaseException):
                await t

    # ------------------------------------------------------------ I/O
    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                text = line.decode(errors="replace").strip()
                if not text:
                    continue
                try:
                    ev = json.loads(text)
                except ValueError:
                    ev = {"event": "nonJsonOutput", "line": text}
                self.events.append(ev)
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self._stderr_tail.append(line.decode(errors="replace").rstrip("\n"))

    async def send(self, obj: dict[str, Any]) -> None:
        if self.proc.stdin is None or self.proc.stdin.is_closing():
            raise DriverExited(f"{self.kind} driver stdin is closed")
        self.proc.stdin.write((json.dumps(obj, allow_nan=False) + "\n").encode())
        try:
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise DriverExited(f"{self.kind} driver exited: {self._describe()}") from e

    def new_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    # ------------------------------------------------------------ matching
    def _find(self, match: Callable[[Event], bool]) -> Event | None:
        for i, ev in enumerate(self.events):
            if i in self._consumed:
                continue
            if match(ev):
                self._consumed.add(i)
                return ev
        return None

    async def expect(self, predicate: Predicate, timeout_s: float = 10.0) -> Event:
        """Return the first unreturned event matching ``predicate`` (a callable or a
        dict of fields that must be equal), waiting up to ``timeout_s``."""
        match = _matcher(predicate)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._changed.clear()
            ev = self._find(match)
            if ev is not None:
                return ev
            if self._eof:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 1)
                raise DriverExited(
                    f"{self.kind} driver exited (rc={self.proc.returncode}) before an event matching "
                    f"{_show(predicate)} arrived.\n{self._describe()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"no event matching {_show(predicate)} from the {self.kind} driver within {timeout_s}s.\n"
                    f"{self._describe()}"
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def expect_none(self, predicate: Predicate, within_s: float) -> None:
        """Assert that no unreturned event matches ``predicate`` for ``within_s`` seconds."""
        try:
            ev = await self.expect(predicate, timeout_s=within_s)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event from the {self.kind} driver: {ev}")

    def skip_pending(self) -> None:
        """Mark every event seen so far as returned (later expects only see newer ones)."""
        self._consumed.update(range(len(self.events)))

    def uncaught(self) -> list[Event]:
        """Exceptions the client let escape (node) and malformed-command reports."""
        return [e for e in self.events if e.get("event") in ("uncaught", "driverError", "nonJsonOutput")]

    # ------------------------------------------------------------ conveniences
    async def call(self, op: str, fn: str, args: dict[str, Any] | None = None, *, timeout_s: float = 10.0) -> Event:
        """Run a mutation/action/query and return its result or error event."""
        rid = self.new_id(op[0])
        await self.send({"op": op, "id": rid, "fn": fn, "args": args or {}})
        return await self.expect(
            lambda e: e.get("id") == rid and e.get("op") == op and e.get("event") in ("result", "error"),
            timeout_s=timeout_s,
        )

    async def subscribe(self, sid: str, fn: str, args: dict[str, Any] | None = None) -> None:
        await self.send({"op": "subscribe", "id": sid, "fn": fn, "args": args or {}})

    async def next_update(self, sid: str, timeout_s: float = 10.0) -> Event:
        """The next update or error event for subscription ``sid``."""
        return await self.expect(
            lambda e: (
                e.get("id") == sid and e.get("event") in ("update", "error") and e.get("op", "subscribe") == "subscribe"
            ),
            timeout_s=timeout_s,
        )

    # ------------------------------------------------------------ diagnostics
    def _describe(self) -> str:
        unreturned = [ev for i, ev in enumerate(self.events) if i not in self._consumed]
        lines = [f"events not yet returned ({len(unreturned)} of {len(self.events)}):"]
        lines += [f"  {_clip(json.dumps(ev))}" for ev in unreturned[-60:]]
        if self._stderr_tail:
            lines.append("stderr (tail):")
            lines += [f"  {_clip(s)}" for s in list(self._stderr_tail)[-40:]]
        return "\n".join(lines)


def _show(predicate: Predicate) -> str:
    if callable(predicate):
        return getattr(predicate, "__name__", repr(predicate))
    return json.dumps(predicate)


def _clip(s: str, n: int = 500) -> str:
    return s if len(s) <= n else s[:n] + "…"
