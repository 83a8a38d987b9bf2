"""Test helpers for app authors: Ripple serving your modules on a fresh database, and clients that act as users.

`RippleApp.start(...)` runs a real server (uvicorn, the hub, the sync endpoint) on its own thread and event loop,
so it works whatever loop or loop scope the test uses, and a test that stalls cannot stall the server. Calls
cross to that loop and back; subscriptions go over a real socket through the sync protocol, as an official
client's do. The pytest fixtures that build these are in `server.pytest_plugin`.

    alice = ripple_app.as_user("alice")
    video_id = await alice.mutation("videos:create", {"twitchId": "v1", "title": "Stream"})
    sub = await alice.subscribe("videos:listByStatus", {})
    assert [v["_id"] for v in await sub.next()] == [video_id]
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server import values
from server.app import GracefulServer, Services, create_app
from server.auth import Identity, make_dev_token
from server.config import Settings
from server.database.embedded import create_database, drop_database
from server.functions.context import Caller
from server.functions.registry import FunctionKind

__all__ = ["Client", "QueryFailed", "RippleApp", "Subscription"]

_T = TypeVar("_T")
_ISSUER = "https://ripple.test"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT_S = 10.0


class QueryFailed(Exception):
    """A subscribed query failed on the server. `message` is what a client sees; `data` is the `ConvexError`
    data it raised, or None."""

    def __init__(self, path: str, message: str, data: Any = None) -> None:
        super().__init__(f"{path} failed: {message}")
        self.path = path
        self.message = message
        self.data = data


class _LoopThread:
    """An event loop on its own thread, so the server keeps running while the test's loop waits on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ripple-test-server", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        """Run `coro` there and wait for it from a thread that is not running a loop (fixture setup)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def run_async(self, coro: Coroutine[Any, Any, _T]) -> Awaitable[_T]:
        """Run `coro` there; await the result from the caller's own loop. Exceptions keep their type."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(drain(), _STOP_TIMEOUT_S)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(_STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self.loop.close()


class RippleApp:
    """A running Ripple server on a database of its own. Build it with `RippleApp.start`; act through clients:
    `as_user(subject)`, `as_admin()`, `anonymous()`."""

    def __init__(self, url: str, settings: Settings, services: Services, loop: _LoopThread) -> None:
        self.url = url
        self.settings = settings
        self._services = services
        self._loop = loop

    @property
    def sync_url(self) -> str:
        """The WebSocket URL an official client derives from `url`."""
        return self.url.replace("http://", "ws://", 1) + "/api/sync"

    @property
    def database_url(self) -> str:
        """This app's own database, for a test that checks what was stored with plain SQL."""
        assert self.settings.database_url is not None
        return self.settings.database_url

    @property
    def admin_key(self) -> str:
        assert self.settings.admin_key is not None
        return self.settings.admin_key

    @classmethod
    @contextmanager
    def start(
        cls,
        admin_dsn: str,
        *,
        modules: list[str] | None = None,
        schema_path: Path | None = None,
        **overrides: Any,
    ) -> Iterator[RippleApp]:
        """Create a database on the server of `admin_dsn`, serve `modules` with `schema_path` applied (Ripple's
        own `schema.sql` when None) and yield the app; then stop it and drop the database. `overrides` are
        `Settings` fields (e.g. `query_timeout_s=1`). Call it where no event loop runs (a sync fixture)."""
        loop = _LoopThread()
        try:
            dsn = loop.run(create_database(admin_dsn), _START_TIMEOUT_S)
            try:
                values_: dict[str, Any] = {
                    "database_url": dsn,
                    "jwt_secret": secrets.token_hex(32),
                    "jwt_issuer": _ISSUER,
                    "admin_key": f"ripple-test-{secrets.token_hex(16)}",
                    "pool_min_size": 1,
                    "pool_max_size": 8,
                    "anthropic_api_key": None,
                    "anthropic_base_url": None,
                    "modules": list(modules or []),
                    # Each test's files apart, removed with the test's database.
                    "storage_dir": Path(tempfile.mkdtemp(prefix="ripple-test-storage-")),
                }
                if schema_path is not None:
                    values_["schema_path"] = Path(schema_path)
                values_.update(overrides)
                # A developer's `.env` (say, a DATABASE_URL of a real deployment) has no place in a test.
                settings = Settings(_env_file=None, **values_)  # type: ignore[call-arg]
                app = create_app(settings, dsn)
                config = uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=0,
                    log_level="warning",
                    lifespan="on",
                    ws_max_size=settings.max_message_bytes,
                )
                server = GracefulServer(config)
                task = loop.run(_serve(server), _START_TIMEOUT_S)
                try:
                    port = server.servers[0].sockets[0].getsockname()[1]
                    url = f"http://127.0.0.1:{port}"
                    if app.state.services.storage is not None and "public_url" not in overrides:
                        app.state.services.storage.base_url = url  # file and upload URLs: the port bound just now
                    ripple = cls(url, settings, app.state.services, loop)
                    yield ripple
                finally:
                    server.should_exit = True
                    loop.run(asyncio.wait_for(_await(task), _STOP_TIMEOUT_S), _STOP_TIMEOUT_S + 1)
            finally:
                loop.run(drop_database(admin_dsn, unquote(urlsplit(dsn).path.lstrip("/"))), _STOP_TIMEOUT_S)
                if "storage_dir" not in overrides:
                    shutil.rmtree(values_["storage_dir"], ignore_errors=True)
        finally:
            loop.close()

    def token(self, subject: str, *, name: str | None = None, email: str | None = None) -> str:
        """A development JWT for `subject` that this server accepts (for an official client, or `Authorization`)."""
        assert self.settings.jwt_secret is not None
        return make_dev_token(self.settings.jwt_secret, subject, issuer=_ISSUER, name=name, email=email)

    def as_user(self, subject: str, *, name: str | None = None, email: str | None = None) -> Client:
        """A client signed in as `subject` (`ctx.auth` sees `tokenIdentifier` "https://ripple.test|<subject>")."""
        return self._client(self.token(subject, name=name, email=email), admin=False, who=f"user {subject!r}")

    def token_identifier(self, subject: str) -> str:
        """The `tokenIdentifier` this server gives `subject`'s identity: what functions that key rows by owner
        store, so a test can pass it to an internal function (as an action passes `userId` on) or find the rows."""
        return Identity.from_claims({"sub": subject, "iss": _ISSUER}).token_identifier

    def as_admin(self) -> Client:
        """A client holding the admin key, as a trusted worker does. Like the admin key over HTTP and sync, it may
        call internal functions too, so a test can drive them as the server's own actions and jobs would."""
        return self._client(None, admin=True, who="admin")

    def anonymous(self) -> Client:
        """A client that is not signed in."""
        return self._client(None, admin=False, who="anonymous")

    async def store_file(self, data: bytes, content_type: str | None = None) -> str:
        """Store `data` as a file and return its `_storage` id, as an upload does: through a one-time upload URL
        over HTTP, so the test's file is stored exactly as a user's would be (type, size limit)."""
        url = await self.as_admin().mutation("_system/platform:generateUploadUrl")
        headers = {"Content-Type": content_type} if content_type else {}
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(url, content=data, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"storing a {len(data)}-byte file failed: HTTP {response.status_code} {response.text}")
        return str(response.json()["storageId"])

    def _client(self, token: str | None, *, admin: bool, who: str) -> Client:
        return Client(self, token, admin=admin, who=who)

    async def _caller(self, token: str | None, admin: bool) -> Caller:
        identity = await self._services.authenticator.verify_async(token) if token else None
        return Caller(identity, is_admin=admin)

    async def _run(self, kind: FunctionKind, path: str, args: dict[str, Any], token: str | None, admin: bool) -> Any:
        """On the server's loop: run one function as the caller, raise its own error (`ConvexError`,
        `ArgumentError`, ...) if it failed, else return its value as a client decodes it."""
        caller = await self._caller(token, admin)
        outcome = await self._services.runner.call(path, args, caller, kind=kind)
        if outcome.error is not None:
            raise outcome.error
        return values.decode(outcome.value)


async def _await(task: asyncio.Task[None]) -> None:
    await task


async def _serve(server: GracefulServer) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(
                "Ripple did not start; uvicorn's log above says why (e.g. 'Application startup failed': a module "
                "that does not import, or a schema that does not apply)"
            )
        await asyncio.sleep(0.01)
    return task


class Client:
    """Calls functions as one caller, and follows queries over the sync protocol as an official client does.

    `query`, `mutation` and `action` run the function in the server as this caller (an admin's may be internal)
    and raise the server's own
    error types (`server.ConvexError` with its `data`, `server.errors.ArgumentError`, `AuthRequired`, ...), so a
    test can tell them apart; `http` goes through the HTTP API instead, as a worker would.
    """

    def __init__(self, app: RippleApp, token: str | None, *, admin: bool, who: str) -> None:
        self._app = app
        self.token = token
        self.admin = admin
        self._who = who
        self._sync: _SyncConnection | None = None

    def __repr__(self) -> str:
        return f"<ripple Client {self._who}>"

    async def query(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return await self._call(FunctionKind.QUERY, path, args)

    async def mutation(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return await self._call(FunctionKind.MUTATION, path, args)

    async def action(self, path: str, args: dict[str, Any] | None = None) -> Any:
        return await self._call(FunctionKind.ACTION, path, args)

    async def _call(self, kind: FunctionKind, path: str, args: dict[str, Any] | None) -> Any:
        return await self._app._loop.run_async(self._app._run(kind, path, args or {}, self.token, self.admin))

    async def http(
        self, kind: Literal["query", "mutation", "action"], path: str, args: dict[str, Any] | None = None
    ) -> httpx.Response:
        """POST /api/<kind> with this caller's credentials; the raw response (function errors are 200s with
        `status: "error"`, as Convex's)."""
        headers = {}
        if self.admin:
            headers["Authorization"] = f"Convex {self._app.admin_key}"
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        async with httpx.AsyncClient(base_url=self._app.url, timeout=30) as http:
            body = {"path": path, "args": values.encode(args or {}), "format": "convex_encoded_json"}
            return await http.post(f"/api/{kind}", json=body, headers=headers)

    async def subscribe(self, path: str, args: dict[str, Any] | None = None) -> Subscription:
        """Subscribe to a query over this client's sync socket (opened on first use). `await sub.next()` gives
        its first result, then each changed one."""
        if self._sync is None:
            self._sync = await _SyncConnection.open(self._app, self.token, self._app.admin_key if self.admin else None)
        return await self._sync.add(path, args or {})

    async def close(self) -> None:
        """Close the sync socket, if one is open; its subscriptions end."""
        sync, self._sync = self._sync, None
        if sync is not None:
            await sync.close()


@dataclass(frozen=True)
class _Result:
    value: Any = None
    error: QueryFailed | None = None

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Subscription:
    """One query followed live. Results arrive in Transitions; `next()` reads them in order, each once."""

    def __init__(self, connection: _SyncConnection, query_id: int, path: str, args: dict[str, Any]) -> None:
        self.path = path
        self.args = args
        self._connection = connection
        self._query_id = query_id
        self._results: list[_Result] = []
        self._read = 0
        self._arrived = asyncio.Event()

    def _deliver(self, result: _Result) -> None:
        self._results.append(result)
        self._arrived.set()

    def _wake(self) -> None:
        self._arrived.set()

    @property
    def value(self) -> Any:
        """The newest result received (whether or not `next()` has returned it); raises `QueryFailed` if the
        query's newest outcome is a failure, LookupError before any result arrived."""
        if not self._results:
            raise LookupError(f"{self.path} has no result yet: await next() first")
        return self._results[-1].get()

    async def next(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """The next result not yet returned: the first result, then each change. Raises `QueryFailed` for a
        failed run, TimeoutError when none arrives in time."""
        await self._wait_for(lambda: self._read < len(self._results), timeout_s, "a new result")
        result = self._results[self._read]
        self._read += 1
        return result.get()

    async def wait_until(self, predicate: Callable[[Any], bool], timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        """The first result, from the newest already received on, for which `predicate(value)` holds. Every
        result up to it counts as read. Raises `QueryFailed` if the query fails on the way."""
        start = max(0, len(self._results) - 1)
        checked = start

        def found() -> bool:
            nonlocal checked
            while checked < len(self._results):
                if predicate(self._results[checked].get()):
                    return True
                checked += 1
            return False

        await self._wait_for(found, timeout_s, "a result that satisfies the predicate")
        self._read = checked + 1
        return self._results[checked].get()

    async def unsubscribe(self) -> None:
        await self._connection.remove(self)

    async def _wait_for(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not ready():
            self._connection.raise_if_closed()
            remaining = deadline - loop.time()
            if remaining <= 0:
                last = repr(self._results[-1]) if self._results else "none"
                raise TimeoutError(f"{self.path} sent no {what} within {timeout_s:g} s (its newest result: {last})")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass


class _SyncConnection:
    """One sync-protocol session (Connect, Authenticate, ModifyQuerySet), its reader on the test's loop."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._query_set = 0
        self._next_query_id = 0
        self._subscriptions: dict[int, Subscription] = {}
        self._closed: str | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, app: RippleApp, token: str | None, admin_key: str | None) -> _SyncConnection:
        ws = await connect(app.sync_url, max_size=None, compression=None)
        await ws.send(
            values.dumps(
                {
                    "type": "Connect",
                    "sessionId": str(uuid.uuid4()),
                    "connectionCount": 0,
                    "lastCloseReason": "InitialConnect",
                    "clientTs": 0,
                }
            )
        )
        if token or admin_key:
            kind, value = ("Admin", admin_key) if admin_key else ("User", token)
            await ws.send(values.dumps({"type": "Authenticate", "tokenType": kind, "value": value, "baseVersion": 0}))
        return cls(ws)

    async def add(self, path: str, args: dict[str, Any]) -> Subscription:
        self.raise_if_closed()
        query_id, self._next_query_id = self._next_query_id, self._next_query_id + 1
        subscription = Subscription(self, query_id, path, args)
        self._subscriptions[query_id] = subscription
        add = {"type": "Add", "queryId": query_id, "udfPath": path, "args": [values.encode(args)]}
        await self._modify(add)
        return subscription

    async def remove(self, subscription: Subscription) -> None:
        if self._subscriptions.pop(subscription._query_id, None) is not None and self._closed is None:
            await self._modify({"type": "Remove", "queryId": subscription._query_id})

    async def _modify(self, modification: dict[str, Any]) -> None:
        base, self._query_set = self._query_set, self._query_set + 1
        message = {"type": "ModifyQuerySet", "baseVersion": base, "newVersion": self._query_set}
        await self._ws.send(values.dumps({**message, "modifications": [modification]}))

    def raise_if_closed(self) -> None:
        if self._closed is not None:
            raise ConnectionError(f"the sync socket is closed: {self._closed}")

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = values.loads(raw)
                kind = message.get("type")
                if kind == "Transition":
                    self._transition(message["modifications"])
                elif kind in ("AuthError", "FatalError"):
                    self._closed = f"{kind}: {message.get('error')}"
                    break
            else:
                self._closed = self._closed or "the server closed it"
        except ConnectionClosed as exc:
            self._closed = f"closed ({exc})"
        except Exception as exc:  # a bug here must show in the test, not hang it
            self._closed = f"the reader failed: {type(exc).__name__}: {exc}"
        finally:
            self._closed = self._closed or "closed"
            for subscription in self._subscriptions.values():
                subscription._wake()

    def _transition(self, modifications: list[dict[str, Any]]) -> None:
        for mod in modifications:
            subscription = self._subscriptions.get(mod["queryId"])
            if subscription is None:
                continue
            if mod["type"] == "QueryUpdated":
                subscription._deliver(_Result(values.decode(mod["value"])))
            elif mod["type"] == "QueryFailed":
                data = values.decode(mod["errorData"]) if "errorData" in mod else None
                subscription._deliver(_Result(error=QueryFailed(subscription.path, mod["errorMessage"], data)))

    async def close(self) -> None:
        self._closed = self._closed or "closed by the test"
        await self._ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)
