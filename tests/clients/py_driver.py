"""Drive the OFFICIAL PyPI ``convex`` ConvexClient from a JSON-lines script.

Usage: python py_driver.py <deploymentUrl>

Same line protocol as convex_driver.mjs (see the header there), restricted to
the ops the Python client has: subscribe, unsubscribe, mutation, action, query,
setAuth (token or null), clearAuth, close. Values use Convex's JSON encoding
({"$integer": b64}, {"$bytes": b64}, {"$float": b64}); plain JSON numbers in
args are sent as float64 (the client does that for Python ints anyway).

Must run as its own process: the client's blocking calls (query, mutation,
action, set_auth) hold the GIL, so nothing else in the process runs while one
is in flight. Commands are therefore processed strictly in order: a blocking
call holds up the commands after it until it returns. Subscription updates are
read with the async API (``async for`` over QuerySubscription) and delivered
whenever no blocking call is running. Note that the Python client yields a
subscription's value on every Transition that carries a result for it, so the
same value can arrive in several update events.

"subs" in a mutation/action result (and error) is the latest value each
subscription had yielded to this driver when the call returned, taken after
letting the updates the client had already queued through (best effort: until
no update arrived for 30 ms, at most 300 ms). The Python client itself only
promises that a mutation returns after the next Transition following its
MutationResponse.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import struct
import sys
import traceback
from typing import Any

from convex import ConvexClient, ConvexError, ConvexInt64

_out = sys.stdout


def emit(obj: dict[str, Any]) -> None:
    _out.write(json.dumps(obj, allow_nan=False) + "\n")
    _out.flush()


# ------------------------------------------------------------------ values
def to_json(v: Any) -> Any:
    """Client value -> Convex JSON encoding (as on the wire)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, ConvexInt64):
        return {"$integer": base64.b64encode(struct.pack("<q", v.value)).decode()}
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v) or (v == 0.0 and math.copysign(1.0, v) < 0):
            return {"$float": base64.b64encode(struct.pack("<d", v)).decode()}
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return {"$unencodable": repr(v)}


def from_json(v: Any) -> Any:
    """Convex JSON encoding -> value for the Python client."""
    if v is None or isinstance(v, (bool, str, float)):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, list):
        return [from_json(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1:
            (k,) = v
            if k == "$integer":
                return ConvexInt64(struct.unpack("<q", base64.b64decode(v[k]))[0])
            if k == "$bytes":
                return base64.b64decode(v[k])
            if k == "$float":
                return struct.unpack("<d", base64.b64decode(v[k]))[0]
        return {k: from_json(x) for k, x in v.items()}
    raise ValueError(f"bad JSON value {v!r}")


def error_event(base: dict[str, Any], err: BaseException) -> dict[str, Any]:
    ev = {**base, "event": "error", "message": str(err), "convexError": isinstance(err, ConvexError)}
    if isinstance(err, ConvexError):
        ev["data"] = to_json(err.data)
    return ev


# ------------------------------------------------------------------ driver
class Driver:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = ConvexClient(url)
        self.subs: dict[str, dict[str, Any]] = {}
        self.commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.last_delivery = 0.0

    # subscriptions -----------------------------------------------------
    async def _pump(self, sid: str, sub: Any) -> None:
        entry = self.subs[sid]
        while True:
            try:
                value = await sub.__anext__()
            except asyncio.CancelledError:
                raise
            except StopAsyncIteration:
                return
            except Exception as e:  # QueryFailed (plain or ConvexError)
                self.last_delivery = asyncio.get_running_loop().time()
                entry["lastError"] = str(e)
                emit(error_event({"id": sid, "op": "subscribe"}, e))
                continue
            self.last_delivery = asyncio.get_running_loop().time()
            entry["last"] = to_json(value)
            entry["hasLast"] = True
            entry.pop("lastError", None)
            emit({"event": "update", "id": sid, "value": entry["last"]})

    def op_subscribe(self, cmd: dict[str, Any]) -> None:
        sid = cmd["id"]
        if sid in self.subs:
            raise ValueError(f"subscription id in use: {sid}")
        sub = self.client.subscribe(cmd["fn"], from_json(cmd.get("args") or {}))
        self.subs[sid] = {"sub": sub, "hasLast": False}
        self.subs[sid]["task"] = asyncio.create_task(self._pump(sid, sub))

    def op_unsubscribe(self, cmd: dict[str, Any]) -> None:
        entry = self.subs.pop(cmd["id"], None)
        if entry is None:
            raise ValueError(f"no subscription {cmd['id']}")
        entry["task"].cancel()
        entry["sub"].unsubscribe()
        emit({"event": "ack", "op": "unsubscribe", "id": cmd["id"]})

    def snapshot(self) -> dict[str, Any]:
        subs = {k: e["last"] for k, e in self.subs.items() if e.get("hasLast")}
        errors = {k: e["lastError"] for k, e in self.subs.items() if "lastError" in e}
        return {"subs": subs, "subErrors": errors}

    # blocking calls ----------------------------------------------------
    async def op_mutation(self, cmd: dict[str, Any]) -> None:
        await self._call(cmd, self.client.mutation)

    async def op_action(self, cmd: dict[str, Any]) -> None:
        await self._call(cmd, self.client.action)

    async def op_query(self, cmd: dict[str, Any]) -> None:
        await self._call(cmd, self.client.query)

    async def op_setAuth(self, cmd: dict[str, Any]) -> None:
        await asyncio.to_thread(self.client.set_auth, cmd.get("token"))
        emit({"event": "ack", "op": "setAuth", "id": cmd.get("id")})

    async def op_clearAuth(self, cmd: dict[str, Any]) -> None:
        await asyncio.to_thread(self.client.clear_auth)
        emit({"event": "ack", "op": "clearAuth", "id": cmd.get("id")})

    async def _call(self, cmd: dict[str, Any], fn: Any) -> None:
        op = cmd["op"]
        base = {"id": cmd.get("id"), "op": op}
        try:
            # In a worker thread only so that a client which does release the
            # GIL would not stall the loop; the 0.8.1 client does not release it.
            value = await asyncio.to_thread(fn, cmd["fn"], from_json(cmd.get("args") or {}))
        except Exception as e:
            ev = error_event(base, e)
        else:
            ev = {"event": "result", **base, "value": to_json(value)}
        if op != "query":
            await self._settle()
            ev.update(self.snapshot())
        emit(ev)

    async def _settle(self) -> None:
        # Best effort: the call has returned, so the client has already
        # received the Transition it waited for; let the updates it queued
        # for the subscriptions reach their pump tasks (each one hops through
        # the client's Rust runtime) before taking the snapshot. Waits until no
        # update arrived for 30 ms, at most 300 ms.
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            if now - start >= 0.3 or (now - start >= 0.03 and now - self.last_delivery >= 0.03):
                return

    # main loop ----------------------------------------------------------
    async def handle(self, cmd: dict[str, Any]) -> None:
        op = cmd.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            emit({"event": "driverError", "id": cmd.get("id"), "message": f"unknown op {op!r}"})
            return
        try:
            r = handler(cmd)
            if asyncio.iscoroutine(r):
                await r
        except Exception:
            emit({"event": "driverError", "id": cmd.get("id"), "op": op, "message": traceback.format_exc()})

    async def _process(self) -> None:
        # Commands run strictly in order: a blocking call (query, mutation,
        # action, setAuth) holds up the commands after it until it returns.
        while True:
            cmd = await self.commands.get()
            if cmd is None:
                return
            await self.handle(cmd)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        processor = asyncio.create_task(self._process())
        emit({"event": "ready", "url": self.url})
        while True:
            line = await reader.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
            except ValueError as e:
                emit({"event": "driverError", "message": f"bad JSON: {e}", "line": line.decode(errors="replace")})
                continue
            if not isinstance(cmd, dict):
                emit({"event": "driverError", "message": "command is not an object"})
                continue
            if cmd.get("op") == "close":
                break
            self.commands.put_nowait(cmd)
        # close (or EOF): commands sent before it still run, but a call that
        # hangs does not keep the driver alive for more than 5 s.
        self.commands.put_nowait(None)
        try:
            await asyncio.wait_for(processor, timeout=5)
        except TimeoutError:
            emit({"event": "log", "level": "warn", "message": "close: a pending call did not finish in 5 s"})
        for entry in self.subs.values():
            entry["task"].cancel()
        emit({"event": "closed"})


def main() -> None:
    if len(sys.argv) < 2:
        print("usage: py_driver.py <deploymentUrl>", file=sys.stderr)
        sys.exit(2)
    # The Rust client's logging (init_logging) writes to stdout; keep our
    # protocol on a private duplicate of fd 1 and point fd 1 at stderr.
    global _out
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    _out = os.fdopen(proto_fd, "w", buffering=1)
    sys.stdout = sys.stderr
    asyncio.run(Driver(sys.argv[1]).run())
    _out.flush()
    # The client's Rust threads can keep the interpreter from exiting promptly.
    os._exit(0)


if __name__ == "__main__":
    main()
