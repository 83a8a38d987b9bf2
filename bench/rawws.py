"""`python -m bench.rawws --port P`: the floor for fan-out and per-connection memory.

A bare `websockets` server (uvloop when installed, as uvicorn uses): every connection on `/sub` gets a hello and
then whatever is broadcast; a message `go <seq> <stamp_ms> <size>` on `/control` broadcasts one JSON message of
about `size` bytes to every subscriber with `websockets.broadcast` and answers `ok <n>`. No keepalive pings,
no per-connection work beyond the library's own. It exits after `--max-s` seconds or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson

from bench.clients import raise_nofile


async def _serve(port: int, max_s: float) -> None:
    from websockets.asyncio.server import broadcast, serve

    subscribers: set[Any] = set()

    async def handler(ws: Any) -> None:
        if ws.request.path == "/control":
            async for text in ws:
                _, seq, stamp, size = str(text).split()
                body = {"seq": float(seq), "stamp": float(stamp), "pad": ""}
                pad = max(0, int(size) - len(orjson.dumps(body)))
                message = orjson.dumps({**body, "pad": "x" * pad}).decode()
                targets = list(subscribers)
                broadcast(targets, message)
                await ws.send(f"ok {len(targets)}")
            return
        subscribers.add(ws)
        try:
            await ws.send("hi")
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)

    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        while await reader.readline():
            pass
        stdin_closed.set()

    async with serve(handler, "127.0.0.1", port, ping_interval=None, max_size=None, backlog=4096):
        print(f"READY {port}", flush=True)
        watcher = asyncio.create_task(watch_stdin())
        try:
            await asyncio.wait_for(stdin_closed.wait(), max_s)
        except TimeoutError:
            pass
        watcher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rawws")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-s", type=float, default=900.0)
    args = parser.parse_args()
    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args.port, args.max_s))
    else:
        uvloop.run(_serve(args.port, args.max_s))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
