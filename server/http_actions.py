"""HTTP actions, as Convex's `http.ts`: a project's routes, and the ASGI layer that serves them.

A project's `http.py` builds `http = HttpRouter()` and calls `http.route(path=..., method=..., handler=...)` (or
`path_prefix=` ending in "/"); handlers are `@http_action async def h(ctx, request) -> Response`, with `ctx` an
`ActionCtx` (`ctx.run_query/run_mutation/run_action`, internal functions allowed, `ctx.auth` from the request's
`Authorization` header, `ctx.scheduler`).

Site URL: Convex serves HTTP actions on a second origin (`<deployment>.convex.site`); Ripple serves them on the main
port under `RIPPLE_SITE_PREFIX` (default `/http`, as Convex's own local backend does), so a route `/videos/progress`
is `http://host:port/http/videos/progress`. One port keeps deployment, TLS and the health check one thing.

CORS follows Convex: nothing is added. The server's CORS middleware (for `/api/...`) does not see these requests;
a handler adds `Access-Control-Allow-*` headers itself, and a route declared with method "OPTIONS" answers a
browser's preflight.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import RequestError

if TYPE_CHECKING:
    from server.app import Services
    from server.functions.context import ActionCtx

__all__ = ["ROUTABLE_METHODS", "HttpAction", "HttpRouter", "SiteRoutes", "find_router", "http_action"]


# Convex's ROUTABLE_HTTP_METHODS; HEAD runs the GET route and drops the body, as Convex does.
ROUTABLE_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")

Handler = Callable[["ActionCtx", Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HttpAction:
    """A handler marked as an HTTP action; only these may be routed (as Convex's `httpAction`), so a plain
    function passed by mistake fails at start, not on the first request."""

    handler: Handler
    name: str


def http_action(handler: Handler) -> HttpAction:
    """Mark `async def handler(ctx, request) -> Response` as an HTTP action."""
    return HttpAction(handler, f"{handler.__module__}.{handler.__qualname__}")


@dataclass(frozen=True, slots=True)
class Match:
    """What a request's path and method found: the action and the route as declared (its metrics label)."""

    action: HttpAction
    route: str


class HttpRouter:
    """Routes as Convex's `httpRouter()`: exact paths, and path prefixes (longest first); one action per method."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, HttpAction]] = {}
        self.prefix: dict[str, dict[str, HttpAction]] = {}
        self.origin: dict[tuple[str, str], str] = {}  # (route, method) → where it was declared, for conflicts

    def route(
        self,
        *,
        method: str,
        handler: HttpAction,
        path: str | None = None,
        path_prefix: str | None = None,
        origin: str = "",
    ) -> None:
        """Declare a route.

        Raises:
            ValueError: a malformed path or method, a handler not made with `@http_action`, or a route declared twice.
        """
        method = method.upper()
        if method not in ROUTABLE_METHODS:
            raise ValueError(f"HTTP route method {method!r} is not routable: use one of {', '.join(ROUTABLE_METHODS)}")
        if not isinstance(handler, HttpAction):
            raise ValueError(
                f"HTTP route {method} {path or path_prefix}: the handler must be made with @http_action "
                f"(got {type(handler).__name__})"
            )
        if (path is None) == (path_prefix is None):
            raise ValueError("HTTP route: give exactly one of path= (exact) or path_prefix= (ending in '/')")
        if path is not None:
            if not path.startswith("/"):
                raise ValueError(f"HTTP route path {path!r} must start with '/'")
            table, key = self.exact, path
        else:
            assert path_prefix is not None
            if not path_prefix.startswith("/") or not path_prefix.endswith("/"):
                raise ValueError(f"HTTP route path_prefix {path_prefix!r} must start and end with '/'")
            table, key = self.prefix, path_prefix
        label = key if path is not None else key + "*"
        methods = table.setdefault(key, {})
        if method in methods:
            where = self.origin.get((label, method), "")
            raise ValueError(f"HTTP route {method} {label} is declared twice{f' (first in {where})' if where else ''}")
        methods[method] = handler
        self.origin[(label, method)] = origin or handler.name

    def include(self, other: HttpRouter) -> None:
        """Add another router's routes (several modules may each define `http`).

        Raises:
            ValueError: a route both declare.
        """
        for table, suffix, kw in ((other.exact, "", "path"), (other.prefix, "*", "path_prefix")):
            for key, methods in table.items():
                for method, action in methods.items():
                    self.route(method=method, handler=action, origin=other.origin[(key + suffix, method)], **{kw: key})

    def lookup(self, path: str, method: str) -> Match | None:
        """The exact route, else the longest prefix route, for this method."""
        found = self.exact.get(path, {}).get(method)
        if found is not None:
            return Match(found, path)
        for prefix in sorted((p for p in self.prefix if path.startswith(p)), key=len, reverse=True):
            found = self.prefix[prefix].get(method)
            if found is not None:
                return Match(found, prefix + "*")
        return None

    def allowed(self, path: str) -> list[str]:
        """Every method some route of this path answers (the `Allow` of a 405); empty: the path is unknown."""
        methods = set(self.exact.get(path, {}))
        for prefix, routes in self.prefix.items():
            if path.startswith(prefix):
                methods.update(routes)
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def __len__(self) -> int:
        return sum(len(m) for m in self.exact.values()) + sum(len(m) for m in self.prefix.values())


def _router_of(module: ModuleType) -> HttpRouter | None:
    found = getattr(module, "http", None)
    if isinstance(found, ModuleType):
        found = getattr(found, "http", None)
    return found if isinstance(found, HttpRouter) else None


def find_router(modules: list[str]) -> HttpRouter:
    """The routes of every module of `modules` (a project's package, RIPPLE_MODULES entries) that defines an `http`
    router (or, for a package, whose `http` submodule does), merged.

    Raises:
        ValueError: two modules declare the same route.
    """
    merged = HttpRouter()
    for name in modules:
        module = importlib.import_module(name)
        if hasattr(module, "__path__") and importlib.util.find_spec(f"{name}.http") is not None:
            module = importlib.import_module(f"{name}.http")
        router = _router_of(module)
        if router is not None:
            try:
                merged.include(router)
            except ValueError as exc:
                raise ValueError(f"{exc}; declared again in module {module.__name__}") from None
    return merged


def _plain(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"code": code, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    """The whole body, refused past `limit` bytes before more is read (a declared length is checked first)."""
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length", b"").decode("latin-1")
    too_large = f"the request body is over the {limit}-byte limit for HTTP actions (RIPPLE_MAX_HTTP_ACTION_BODY_BYTES)"
    if length.isdigit() and int(length) > limit:
        raise RequestError(too_large, code="PayloadTooLarge", http_status=413)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("the client went away before sending the whole body", code="ClientDisconnected")
        body += message.get("body", b"")
        if len(body) > limit:
            raise RequestError(too_large, code="PayloadTooLarge", http_status=413)
        if not message.get("more_body", False):
            return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then waits on the real one (for the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class SiteRoutes:
    """ASGI middleware placed before CORS: requests under the site prefix go to the project's HTTP actions."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        services: Services | None = getattr(scope["app"].state, "services", None)
        if services is None:
            await _plain(503, "NotReady", "the server is starting; retry shortly")(scope, receive, send)
            return
        site_path = path[len(self.prefix) :] or "/"
        response = await self._serve(services, dict(scope, path=site_path, root_path=self.prefix), receive)
        await response(scope, receive, send)

    async def _serve(self, services: Services, scope: Scope, receive: Receive) -> Response:
        from server.http_api import caller_from_header  # the same credentials as the HTTP API

        router = services.http
        method = scope["method"].upper()
        match = router.lookup(scope["path"], "GET" if method == "HEAD" else method)
        if match is None:
            allowed = router.allowed(scope["path"])
            if not allowed:
                return _plain(
                    404, "NoRoute", f"no HTTP action route matches {scope['path']!r} (routes are declared in http.py)"
                )
            return _plain(
                405,
                "MethodNotAllowed",
                f"{scope['path']!r} has no {method} route; it answers {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        try:
            body = await _read_body(receive, scope, services.settings.max_http_action_body_bytes)
            caller = await caller_from_header(services, _header(scope, b"authorization"))
        except RequestError as exc:
            return _plain(exc.http_status, exc.code, exc.message)
        request = Request(scope, _replay(body, receive))
        action = match.action

        async def run(ctx: ActionCtx) -> Response:
            result = await action.handler(ctx, request)
            if not isinstance(result, Response):
                raise TypeError(f"HTTP action {action.name} returned {type(result).__name__}, not a starlette Response")
            return result

        route = f"{'GET' if method == 'HEAD' else method} {match.route}"
        result, outcome = await services.runner.call_http_action(route, caller, run)
        if outcome.error is not None:
            return _plain(
                500,
                "ServerError",
                outcome.describe_error(outcome.request_id),
                headers={"X-Ripple-Request-Id": outcome.request_id or ""},
            )
        assert isinstance(result, Response)
        return result  # for HEAD, uvicorn sends the headers only


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
