"""A local fake of Anthropic's Messages API for tests.

    async with run_fake_anthropic(FakeScript(chunks=["Hel", "lo"], chunk_delay_s=0.05)) as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="test", max_retries=0)
        ...
        assert fake.requests[0]["model"] == "claude-fake"

It is a real HTTP server (uvicorn on 127.0.0.1, a free port), because the
anthropic SDK talks through httpx2, which httpx-level mocks do not intercept.
A server under test in another process can be pointed at ``fake.base_url``.

The script decides every answer. ``run_fake_anthropic`` takes one FakeScript
(used for every request), a list of them (one per request, in order; the last
one repeats), or a callable ``(request_body) -> FakeScript``. ``fake.script``
can be reassigned while the fake runs.

``POST /v1/messages`` accepts the key as ``x-api-key`` or
``authorization: Bearer``. Without ``"stream": true`` it answers one Message
JSON; with it, ``text/event-stream`` events message_start,
content_block_start, ping, content_block_delta (one per chunk, waiting
``chunk_delay_s`` between chunks), content_block_stop, message_delta (stop
reason and usage) and message_stop. Modes: ``"ok"``; ``"error"`` answers
``error_status`` with Anthropic's error JSON (529 overloaded_error, 500
api_error, 429 rate_limit_error, ...); ``"hang"`` never answers (until the fake
stops), for client timeouts. A stream can also fail mid-way
(``stream_error_after``: an SSE ``error`` event after that many chunks) or stall
mid-way (``hang_after_chunks``).

Message content is a string or a list of blocks, as the real API takes it:
``text`` blocks and ``image`` blocks with a base64 source (png, jpeg, gif or
webp, valid base64). Anything else is refused with a 400
invalid_request_error, as the real API does. ``fake.images`` records every
accepted image block in arrival order, its data decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# The image types the Messages API takes.
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class ReceivedImage:
    """One image block the fake accepted: which request and message it came in, its type and decoded bytes."""

    request_index: int
    message_index: int
    block_index: int
    media_type: str
    data: bytes


# Anthropic's error type for each HTTP status it documents.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class FakeScript:
    """How the fake answers one request."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    chunk_delay_s: float = 0.0
    mode: Literal["ok", "error", "hang"] = "ok"
    # mode="error"
    error_status: int = 529
    error_type: str | None = None  # default: from ERROR_TYPES, else "api_error"
    error_message: str = "Overloaded"
    # mode="ok"
    stop_reason: str = "end_turn"
    input_tokens: int = 10
    model: str | None = None  # default: echo the request's model
    # Streaming only: emit an SSE error event (overloaded_error) after this many chunks.
    stream_error_after: int | None = None
    stream_error_type: str = "overloaded_error"
    # Streaming only: stop sending (but keep the response open) after this many chunks.
    hang_after_chunks: int | None = None
    # Delay before the response starts (headers), either mode.
    initial_delay_s: float = 0.0
    # If set, any other API key gets a 401 authentication_error.
    require_api_key: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


ScriptSpec = FakeScript | list[FakeScript] | Callable[[dict[str, Any]], FakeScript]


class FakeAnthropic:
    """State of one running fake: what it was asked, and how it answers."""

    def __init__(self, script: ScriptSpec | None = None) -> None:
        self.script: ScriptSpec = script if script is not None else FakeScript()
        self.base_url = ""  # set once the server is listening
        self.requests: list[dict[str, Any]] = []  # parsed JSON bodies, in arrival order
        self.request_headers: list[dict[str, str]] = []
        self.api_keys: list[str | None] = []
        self.images: list[ReceivedImage] = []  # every accepted image block, in arrival order
        self.stopping = asyncio.Event()  # releases hanging responses when the fake stops
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    # -------------------------------------------------------------- script
    def _script_for(self, index: int, body: dict[str, Any]) -> FakeScript:
        spec = self.script
        if isinstance(spec, FakeScript):
            return spec
        if isinstance(spec, list):
            if not spec:
                return FakeScript()
            return spec[min(index, len(spec) - 1)]
        return spec(body)

    # -------------------------------------------------------------- handler
    async def _messages(self, request: Request) -> Response:
        raw = await request.body()
        api_key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if api_key is None and auth.lower().startswith("bearer "):
            api_key = auth[7:].strip()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_unparsable": raw.decode(errors="replace")}
        index = len(self.requests)
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        self.api_keys.append(api_key)
        script = self._script_for(index, body)

        if script.initial_delay_s:
            await self._sleep(script.initial_delay_s)

        if not api_key:
            return _error(401, "authentication_error", "x-api-key header is required")
        if script.require_api_key is not None and api_key != script.require_api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if "_unparsable" in body or not isinstance(body, dict):
            return _error(400, "invalid_request_error", "There was an issue with the format of your request")
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                return _error(400, "invalid_request_error", f"{key}: Field required")
        images_or_problem = _images_in(index, body["messages"])
        if isinstance(images_or_problem, str):
            return _error(400, "invalid_request_error", images_or_problem)
        self.images.extend(images_or_problem)

        if script.mode == "hang":
            await self.stopping.wait()
            return _error(503, "api_error", "fake stopped while hanging")
        if script.mode == "error":
            etype = script.error_type or ERROR_TYPES.get(script.error_status, "api_error")
            return _error(script.error_status, etype, script.error_message)

        model = script.model or str(body.get("model", "claude-fake"))
        msg_id = "msg_fake_" + uuid.uuid4().hex[:20]
        if body.get("stream"):
            return StreamingResponse(
                self._stream(script, model, msg_id),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "request-id": _request_id()},
            )
        message = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": script.text}],
            "stop_reason": script.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": script.input_tokens, "output_tokens": len(script.chunks)},
        }
        return JSONResponse(message, headers={"request-id": _request_id()})

    async def _stream(self, script: FakeScript, model: str, msg_id: str) -> AsyncIterator[bytes]:
        yield _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": script.input_tokens, "output_tokens": 1},
                },
            },
        )
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield _sse("ping", {"type": "ping"})
        for i, chunk in enumerate(script.chunks):
            if script.hang_after_chunks is not None and i >= script.hang_after_chunks:
                await self.stopping.wait()
                return
            if script.stream_error_after is not None and i >= script.stream_error_after:
                yield _stream_error(script.stream_error_type)
                return
            if i > 0 and script.chunk_delay_s:
                await self._sleep(script.chunk_delay_s)
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
            )
        n = len(script.chunks)
        if script.hang_after_chunks is not None and n >= script.hang_after_chunks:
            await self.stopping.wait()
            return
        if script.stream_error_after is not None and n >= script.stream_error_after:
            yield _stream_error(script.stream_error_type)
            return
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": script.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": n},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    async def _sleep(self, seconds: float) -> None:
        # Ends early when the fake stops, so shutdown never waits on a script.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)


def _images_in(request_index: int, messages: Any) -> list[ReceivedImage] | str:
    """The image blocks of a request's messages, or what is wrong with its content (the API's 400 message)."""
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    images = []
    for m, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages.{m}.content: Input should be a valid string or list"
        for b, block in enumerate(content):
            where = f"messages.{m}.content.{b}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    return f"{where}.text: Field required"
                continue
            if kind != "image":
                return f"{where}: Input tag {kind!r} is not one of 'text', 'image'"
            source = block.get("source")
            if not isinstance(source, dict) or source.get("type") != "base64":
                return f"{where}.source: only base64 image sources are accepted by this fake"
            media_type = source.get("media_type")
            if media_type not in IMAGE_MEDIA_TYPES:
                return f"{where}.source.media_type: Input should be one of {', '.join(IMAGE_MEDIA_TYPES)}"
            try:
                data = base64.b64decode(str(source.get("data", "")), validate=True)
            except (binascii.Error, ValueError):
                return f"{where}.source.data: invalid base64 data"
            images.append(ReceivedImage(request_index, m, b, media_type, data))
    return images


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _stream_error(etype: str) -> bytes:
    return _sse("error", {"type": "error", "error": {"type": etype, "message": "Overloaded"}})


def _request_id() -> str:
    return "req_fake_" + uuid.uuid4().hex[:20]


def _error(status: int, etype: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": _request_id()},
        status_code=status,
        headers={"request-id": _request_id()},
    )


class _Server(uvicorn.Server):
    # Leave the host process's signal handlers (pytest's) alone.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def run_fake_anthropic(script: ScriptSpec | None = None) -> AsyncIterator[FakeAnthropic]:
    """Serve a FakeAnthropic on 127.0.0.1 (free port) for the duration of the block."""
    fake = FakeAnthropic(script)
    config = uvicorn.Config(
        fake.app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()  # raises the startup error, if any
            raise RuntimeError("fake Anthropic server exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("fake Anthropic server did not start within 10 s")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake.stopping.set()
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, Exception):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
