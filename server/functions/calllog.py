"""Per-call function logs: what a handler prints or logs, captured for its caller, as Convex's `logLines`.

A call's `CallLog` lives in a contextvar, so concurrent calls (and the tasks a handler spawns, which copy the
context) never mix lines. Two hooks catch the output, both installed once per process and passing everything
through unchanged outside a call:

- a proxy for `sys.stdout` (`print`), which splits the output into lines;
- a log record factory (standard `logging`, any logger), which also tags every record made during a call with
  its `request_id` and `function`, so the server log ties Ripple's own lines (retries, errors) to the call.

Records of Ripple's own loggers and of the libraries it calls on the function's behalf (asyncpg, httpx...) are
tagged but not sent to the client: they describe the server, not the app.

Limits (Convex's): at most `MAX_LINES` lines per call (then one "[WARN] ... omitted" line), each cut to
`MAX_LINE_CHARS` characters.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = [
    "MAX_LINES",
    "MAX_LINE_CHARS",
    "CallLog",
    "current",
    "install",
    "new_request_id",
    "quote",
]

MAX_LINES = 256
MAX_LINE_CHARS = 4096

# Loggers whose records stay out of a client's logLines (they are still tagged with the request id).
_SERVER_LOGGERS = ("ripple", "server.", "asyncpg", "httpx", "httpcore", "uvicorn", "starlette", "websockets")

_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "ERROR"}

log = logging.getLogger("ripple.functions")

_current: contextvars.ContextVar[CallLog | None] = contextvars.ContextVar("ripple_call_log", default=None)
# Set while a captured line is being written to the server log, so a handler that writes to stdout cannot loop.
_emitting = threading.local()


def new_request_id() -> str:
    """12 hex digits: short enough to read out, random enough never to repeat in one log's lifetime."""
    return os.urandom(6).hex()


def quote(text: str) -> str:
    """A string as Convex's console shows one: single quotes, with quotes, backslashes and newlines escaped."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


class CallLog:
    """One call's captured lines, request id and identity for the server log."""

    __slots__ = ("_partial", "on_line", "path", "request_id", "lines", "started", "dropped")

    def __init__(
        self, path: str, request_id: str, on_line: Callable[[CallLog, str, str, bool], None] | None = None
    ) -> None:
        self.path = path
        self.request_id = request_id
        self.lines: list[str] = []
        self.dropped = 0
        self.started = time.perf_counter()
        self.on_line = on_line  # (call, level, text, printed): the server log and the live stream
        self._partial = ""

    def add(self, level: str, text: str, printed: bool = False) -> None:
        if len(text) > MAX_LINE_CHARS:
            text = f"{text[:MAX_LINE_CHARS]}… ({len(text)} characters)"
        if len(self.lines) < MAX_LINES:
            self.lines.append(f"[{level}] {quote(text)}")
        elif self.dropped == 0:
            self.lines.append(f"[WARN] {quote(f'Log overflow (maximum {MAX_LINES}). Remaining lines omitted.')}")
            self.dropped += 1
        else:
            self.dropped += 1
        if self.on_line is not None:
            self.on_line(self, level, text, printed)

    def restart(self) -> None:
        """Forget the lines so far: a retried mutation reports only its committed attempt's lines."""
        self.lines.clear()
        self.dropped = 0
        self._partial = ""

    def write(self, text: str) -> None:
        """stdout text: every complete line is one LOG line; the rest waits for its newline or `flush`."""
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            self.add("LOG", line, printed=True)

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, ""
            self.add("LOG", partial, printed=True)

    def enter(self) -> contextvars.Token[CallLog | None]:
        install()
        return _current.set(self)

    def exit(self, token: contextvars.Token[CallLog | None]) -> None:
        self.flush()
        _current.reset(token)


def current() -> CallLog | None:
    return _current.get()


class _StdoutProxy:
    """`sys.stdout` during a function call goes to that call's log; outside one, to the real stream."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        call = _current.get()
        if call is None or getattr(_emitting, "on", False):
            return self._stream.write(text)
        call.write(text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_lock = threading.Lock()
_factory_installed = False


def install() -> None:
    """Install the stdout proxy and the record factory (idempotent; cheap enough to call before every call, which
    re-installs the proxy when something, such as a test runner's capture, replaced `sys.stdout`)."""
    global _factory_installed
    if type(sys.stdout) is not _StdoutProxy:
        sys.stdout = _StdoutProxy(sys.stdout)
    if _factory_installed:
        return
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            call = _current.get()
            if call is None or getattr(_emitting, "on", False):
                return record
            if not hasattr(record, "request_id"):
                record.request_id = call.request_id
                record.function = call.path
            name = record.name
            if not name.startswith(_SERVER_LOGGERS):
                text = record.getMessage()
                if record.exc_info and record.exc_info[1] is not None:
                    exc = record.exc_info[1]
                    text = f"{text} ({type(exc).__name__}: {exc})"
                _emitting.on = True
                try:
                    call.add(_LEVELS.get(record.levelname, record.levelname), text)
                finally:
                    _emitting.on = False
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def server_log(level: int, message: str, *args: Any, extra: dict[str, Any], exc_info: Any = None) -> None:
    """Write to `ripple.functions` with `extra` fields, even inside a call (whose tags would otherwise clash with
    them) and without the line being captured again."""
    if not log.isEnabledFor(level):
        return
    _emitting.on = True
    try:
        log.log(level, message, *args, extra=extra, exc_info=exc_info)
    finally:
        _emitting.on = False


def write_line(call: CallLog, level: str, text: str) -> None:
    """A printed line into the server log (logged lines are there already), tagged with the call's request id."""
    extra = {"request_id": call.request_id, "function": call.path}
    server_log(logging.INFO, "%s [%s] %s (request %s)", call.path, level, text, call.request_id, extra=extra)
