"""`GET /api/logs`: the function log, live, for operators (admin key), as Server-Sent Events of JSON records.

Two kinds of record, the same fields the `ripple.functions` server log has:

- `{"type": "call", "function", "kind", "transport", "request_id", "caller", "duration_ms", "outcome", "level", "ts"}`
  once per finished call (hub runs included); a failed call adds `"error"` (its message, as the server log has it)
  and, for an app bug or a refused statement (`outcome` uncaught or database), `"traceback"`;
- `{"type": "line", "function", "request_id", "level", "message", "ts"}` for each line a function printed or logged.

Filters (query string): `function=<path>`, `request=<id>`, `level=<least level: debug|info|warn|error>`.
A reader that cannot keep up loses records, never slows a call: each reader has a bounded buffer
(`BUFFER_RECORDS`); what did not fit is counted and reported as `{"type": "dropped", "count": n}` once the reader
catches up.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.errors import RequestError
from server.http_api import caller_from_header

if TYPE_CHECKING:
    from server.app import Services
    from server.functions.calllog import CallLog
    from server.functions.runner import CallRecord

__all__ = ["BUFFER_RECORDS", "LogStream", "routes"]

BUFFER_RECORDS = 1000
KEEPALIVE_S = 15.0
_RANK = {"debug": 0, "info": 1, "log": 1, "warn": 2, "error": 3}


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class Reader:
    """One connected reader: its filters, its bounded buffer, and how many records it lost."""

    def __init__(self, function: str | None, request_id: str | None, least: int) -> None:
        self.function = function
        self.request_id = request_id
        self.least = least
        self.buffer: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def wants(self, record: dict[str, Any]) -> bool:
        return (
            (self.function is None or record.get("function") == self.function)
            and (self.request_id is None or record.get("request_id") == self.request_id)
            and _RANK.get(record["level"], 1) >= self.least
        )

    def offer(self, record: dict[str, Any]) -> None:
        if not self.wants(record):
            return
        if len(self.buffer) >= BUFFER_RECORDS:
            self.dropped += 1
            return
        self.buffer.append(record)
        self.wakeup.set()


class LogStream:
    """A CallObserver that fans the function log out to the connected readers (nothing when there are none)."""

    def __init__(self) -> None:
        self.readers: set[Reader] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()

    def call_finished(self, record: CallRecord) -> None:
        if self.readers:
            bug = record.outcome in ("uncaught", "database")
            entry = {"type": "call", **record.fields(), "level": "error" if bug else "info", "ts": _now()}
            if record.error is not None:
                entry["error"] = f"{type(record.error).__name__}: {record.error}"
                if bug:
                    entry["traceback"] = "".join(traceback.format_exception(record.error))
            self._publish(entry)

    def line(self, call: CallLog, level: str, text: str) -> None:
        if self.readers:
            entry = {
                "type": "line",
                "function": call.path,
                "request_id": call.request_id,
                "level": level.lower(),
                "message": text,
                "ts": _now(),
            }
            self._publish(entry)

    def _publish(self, record: dict[str, Any]) -> None:
        # A function's thread (asyncio.to_thread) may log too: hand its records to the loop.
        if threading.get_ident() != self._thread and self._loop is not None:
            self._loop.call_soon_threadsafe(self._offer, record)
        else:
            self._offer(record)

    def _offer(self, record: dict[str, Any]) -> None:
        for reader in list(self.readers):
            reader.offer(record)

    async def follow(self, reader: Reader) -> AsyncIterator[bytes]:
        """The reader's records as SSE events, a comment now and then so proxies keep the stream open."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.readers.add(reader)
        try:
            yield b": ripple log stream\n\n"
            while True:
                if not reader.buffer:
                    reader.wakeup.clear()
                    try:
                        await asyncio.wait_for(reader.wakeup.wait(), KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                if reader.dropped:
                    dropped, reader.dropped = reader.dropped, 0
                    yield b"data: " + orjson.dumps({"type": "dropped", "count": dropped}) + b"\n\n"
                while reader.buffer:
                    yield b"data: " + orjson.dumps(reader.buffer.popleft(), default=str) + b"\n\n"
        finally:
            self.readers.discard(reader)


async def logs(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        caller = await caller_from_header(services, request.headers.get("authorization"))
        if not caller.is_admin:
            raise RequestError(
                "The log stream needs the admin key: send Authorization: Convex <admin key>.",
                code="Unauthenticated",
                http_status=401,
            )
        level = request.query_params.get("level", "debug").lower()
        if level not in _RANK:
            raise RequestError(f"level must be one of debug, info, warn, error; got {level!r}", code="BadLevel")
    except RequestError as exc:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.http_status)
    reader = Reader(request.query_params.get("function"), request.query_params.get("request"), _RANK[level])
    return StreamingResponse(
        services.log_stream.follow(reader),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


routes = [Route("/api/logs", logs, methods=["GET"])]
