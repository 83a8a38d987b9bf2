"""A local fake of a Replicate-style prediction API, with signed webhooks, for tests.

    async with run_fake_replicate(token="r8_test", secret=SECRET) as fake:
        # point REPLICATE_BASE_URL at fake.base_url ...
        await fake.wait_delivered(6)

A real HTTP server (uvicorn on 127.0.0.1, a free port), as the server under test reaches it over HTTP.

``POST /v1/predictions`` takes ``{"version", "input": {"prompt", ...}, "webhook", "webhook_events_filter"}`` with
``Authorization: Bearer <token>``; another token gets Replicate's 401 problem+json, a body without ``version``,
``input.prompt`` or ``webhook`` a 422. It answers 201 with the prediction (status "starting") and, after
``delay_s``, POSTs the finished prediction to its webhook, signed as standard-webhooks specifies (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed by the base64
after "whsec_"). The signing here is written independently of the server's verifier, so a shared mistake cannot
hide. A succeeded prediction's ``output`` is ``[<URL of a PNG this fake serves>]`` (``GET /files/<id>.png``), each
prediction's PNG distinct (``fake.image_of(id)`` gives its bytes).

Knobs (set before or while the fake runs): ``fail`` (prediction numbers, in arrival order from 0, that finish
"failed" with ``error``), ``refuse`` (numbers answered 422 at creation), ``duplicate`` (each webhook sent twice),
``wrong_secret`` (webhooks signed with another secret), ``hold`` (no automatic webhooks: call ``deliver``),
``create_delay_s`` (a pause before answering each creation).
``fake.deliveries`` records each webhook sent and the answer it got.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.images import png


def png_with_text(text: str) -> bytes:
    """A real 1x1 PNG carrying `text` in a tEXt chunk, so every prediction's image has its own bytes."""
    return png(1, 1, (0, 128, 255), comment=text)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()


def _signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, webhook_id.encode() + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@dataclass
class Delivery:
    prediction_id: str
    status_code: int
    body: Any


@dataclass
class FakeReplicate:
    token: str
    secret: str
    delay_s: float = 0.05
    create_delay_s: float = 0.0  # before answering a prediction's creation (a slow provider)
    error: str = "CUDA out of memory"
    fail: set[int] = field(default_factory=set)
    refuse: set[int] = field(default_factory=set)
    duplicate: bool = False
    wrong_secret: bool = False
    hold: bool = False
    base_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)  # accepted prediction bodies, in order
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the finished prediction
    webhooks: dict[str, str] = field(default_factory=dict)  # id -> its webhook URL
    deliveries: list[Delivery] = field(default_factory=list)
    _count: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _delivered: asyncio.Condition = field(default_factory=asyncio.Condition)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/predictions", self._create, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    def image_of(self, prediction_id: str) -> bytes:
        return png_with_text(prediction_id)

    async def _create(self, request: Request) -> Response:
        await asyncio.sleep(self.create_delay_s)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _problem(400, "Invalid JSON", "the body is not JSON")
        prompt = (body.get("input") or {}).get("prompt") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not body.get("version") or not prompt or not body.get("webhook"):
            return _problem(422, "Invalid input", "version, input.prompt and webhook are required")
        number = self._count
        self._count += 1
        if number in self.refuse:
            return _problem(422, "Invalid version or not permitted", f"prediction {number} refused by the fake")
        self.requests.append(body)
        prediction_id = f"fake{number:02d}{uuid.uuid4().hex[:14]}"
        created = {
            "id": prediction_id,
            "version": body["version"],
            "input": body["input"],
            "status": "starting",
            "output": None,
            "error": None,
            "webhook": body["webhook"],
            "webhook_events_filter": body.get("webhook_events_filter"),
            "created_at": _iso_now(),
            "urls": {"get": f"{self.base_url}/v1/predictions/{prediction_id}"},
        }
        finished = dict(created, completed_at=_iso_now(), metrics={"predict_time": 0.01})
        if number in self.fail:
            finished.update(status="failed", error=self.error)
        else:
            finished.update(status="succeeded", output=[f"{self.base_url}/files/{prediction_id}.png"])
        self.predictions[prediction_id] = finished
        self.webhooks[prediction_id] = body["webhook"]
        if not self.hold:
            task = asyncio.create_task(self._deliver_later(prediction_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return JSONResponse(created, status_code=201)

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        prediction_id = name.removesuffix(".png")
        if prediction_id not in self.predictions:
            return Response("not found", status_code=404)
        return Response(self.image_of(prediction_id), media_type="image/png")

    async def _deliver_later(self, prediction_id: str) -> None:
        await asyncio.sleep(self.delay_s)
        for _ in range(2 if self.duplicate else 1):
            await self.deliver(prediction_id)

    async def deliver(
        self,
        prediction_id: str,
        *,
        secret: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
        webhook_id: str | None = None,
    ) -> httpx.Response:
        """POST the finished prediction to its webhook now (signed with `secret`, default the fake's, or another
        when `wrong_secret`); records and returns the answer."""
        body = json.dumps(self.predictions[prediction_id]).encode()
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        stamp = int(time.time()) if timestamp is None else timestamp
        key = secret or (new_secret() if self.wrong_secret else self.secret)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature if signature is not None else _signature(key, webhook_id, stamp, body),
        }
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(self.webhooks[prediction_id], content=body, headers=headers)
        try:
            answer: Any = response.json()
        except ValueError:
            answer = response.text
        async with self._delivered:
            self.deliveries.append(Delivery(prediction_id, response.status_code, answer))
            self._delivered.notify_all()
        return response

    async def wait_delivered(self, count: int, timeout_s: float = 10.0) -> list[Delivery]:
        async with self._delivered:
            await asyncio.wait_for(self._delivered.wait_for(lambda: len(self.deliveries) >= count), timeout_s)
            return list(self.deliveries)


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"title": title, "detail": detail, "status": status}, status_code=status, media_type="application/problem+json"
    )


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class _Server(uvicorn.Server):
    # Leave the host process's signal handlers (pytest's) alone.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def run_fake_replicate(token: str, secret: str, **knobs: Any) -> AsyncIterator[FakeReplicate]:
    """Serve a FakeReplicate on 127.0.0.1 (free port) for the duration of the block."""
    fake = FakeReplicate(token=token, secret=secret, **knobs)
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("fake Replicate server exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("fake Replicate server did not start within 10 s")
        await asyncio.sleep(0.01)
    fake.base_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        yield fake
    finally:
        for pending in list(fake._tasks):
            pending.cancel()
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, Exception):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
