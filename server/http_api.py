"""Convex's HTTP function API: `POST /api/query|mutation|action` (and `/api/function`, `/api/run/...`).

Function failures are HTTP 200 with `status: "error"` (the official clients rely on that); only a malformed
request or a bad credential is non-2xx, with `{code, message}`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import values
from server.auth import AuthError, parse_authorization
from server.errors import RequestError
from server.functions.context import Caller
from server.functions.registry import FunctionKind
from server.hub.health import judge
from server.impersonation import admin_caller, split_admin_credential

if TYPE_CHECKING:
    from server.app import Services

__all__ = ["routes", "caller_from_header"]


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return values.dumps_bytes(content)


def _error(exc: RequestError) -> Response:
    return _JSON({"code": exc.code, "message": exc.message}, status_code=exc.http_status)


async def caller_from_header(services: Services, header: str | None) -> Caller:
    """`Authorization: Bearer <jwt>` → a verified identity; `Convex <admin key>` → an admin caller."""
    parsed = parse_authorization(header)
    if parsed is None:
        return Caller()
    scheme, credential = parsed
    if scheme == "admin":
        # `<key>:<base64 identity>` is ConvexHttpClient's `setAdminAuth(key, actingAs)`: admin, acting as that user.
        try:
            valid, acting = split_admin_credential(credential, services.authenticator)
            if not valid:
                raise RequestError("The admin key is not valid.", code="BadAdminKey", http_status=401)
            return admin_caller(acting, services.authenticator)
        except AuthError as exc:
            raise RequestError(str(exc), code="BadAdminKey", http_status=401) from None
    try:
        return Caller(await services.authenticator.verify_async(credential))
    except AuthError as exc:
        raise RequestError(str(exc), code="Unauthenticated", http_status=401) from None


async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"request body is over the {limit}-byte limit", code="PayloadTooLarge", http_status=413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body is over the {limit}-byte limit", code="PayloadTooLarge", http_status=413)
    try:
        parsed = values.loads(body)
    except values.ValueTooLargeError as exc:
        raise RequestError(str(exc), code="PayloadTooLarge", http_status=413) from None
    except Exception:
        raise RequestError("request body must be JSON: {path, args, format}", code="BadJsonBody") from None
    if not isinstance(parsed, dict):
        raise RequestError("request body must be a JSON object: {path, args, format}", code="BadJsonBody")
    return parsed


def _args(raw: Any, encoded: bool) -> dict[str, Any]:
    if isinstance(raw, list):
        if len(raw) != 1:
            raise RequestError(f"args must be one object or a one-element array, got {len(raw)} elements")
        raw = raw[0]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(f"args must be an object, got {type(raw).__name__}")
    try:
        return values.decode(raw, encoded=encoded)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise RequestError(f"args are not valid Convex JSON: {exc}") from None


async def _run(request: Request, kind: FunctionKind | None, path: str | None = None) -> Response:
    services: Services = request.app.state.services
    try:
        body = await _read_body(request, services.settings.max_message_bytes)
        path = path or body.get("path")
        if not isinstance(path, str) or not path:
            raise RequestError('request body needs "path": the function name, like "messages:list"')
        fmt = body.get("format", "json")
        if fmt not in ("json", "convex_encoded_json"):
            raise RequestError(f'format must be "json" or "convex_encoded_json", got {fmt!r}', code="BadFormat")
        encoded = fmt == "convex_encoded_json"
        args = _args(body.get("args"), encoded)
        caller = await caller_from_header(services, request.headers.get("authorization"))
    except RequestError as exc:
        return _error(exc)
    outcome = await services.runner.call(path, args, caller, kind=kind, transport="http")
    if outcome.ok:
        value = outcome.value if encoded else values.encode_clean_json(values.decode(outcome.value))
        return _JSON({"status": "success", "value": value, "logLines": outcome.log_lines}, headers=_request_id(outcome))
    response: dict[str, Any] = {
        "status": "error",
        "errorMessage": outcome.error_message,
        "logLines": outcome.log_lines,
    }
    has_data, data = outcome.error_data
    if has_data:
        response["errorData"] = data if encoded else values.encode_clean_json(values.decode(data))
    return _JSON(response, headers=_request_id(outcome))


def _request_id(outcome: Any) -> dict[str, str]:
    """The call's request id as a header (the envelope stays Convex's), so the console can show it with an error
    and a user can find the call's lines in the log."""
    return {"x-request-id": outcome.request_id} if outcome.request_id else {}


async def query(request: Request) -> Response:
    return await _run(request, FunctionKind.QUERY)


async def mutation(request: Request) -> Response:
    return await _run(request, FunctionKind.MUTATION)


async def action(request: Request) -> Response:
    return await _run(request, FunctionKind.ACTION)


async def function(request: Request) -> Response:
    return await _run(request, None)


async def run_by_path(request: Request) -> Response:
    parts = request.path_params["path"].strip("/").split("/")
    return await _run(request, None, "/".join(parts[:-1]) + ":" + parts[-1] if len(parts) > 1 else parts[0])


async def health(request: Request) -> Response:
    """200 when the database answers, the hub is caught up within `hub_stale_after_s` and its tasks run; 503 with
    the reasons otherwise, so a load balancer or orchestrator takes a stale server out instead of trusting it."""
    services: Services = request.app.state.services
    hub = services.hub
    measured = await hub.watch.check()
    problems = judge(measured, services.settings.hub_stale_after_s)
    body: dict[str, Any] = {
        "status": "unavailable" if problems else "ok",
        "ts": measured.newest_ts,
        "processedTs": measured.processed_ts,
        "lagSeconds": round(measured.lag_s, 3),
        "lagCommits": measured.lag_commits,
        "listen": hub.listen_mode,
        "version": services.version,
    }
    if problems:
        body["problems"] = problems
    return _JSON(body, status_code=503 if problems else 200)


routes = [
    Route("/api/query", query, methods=["POST"]),
    Route("/api/mutation", mutation, methods=["POST"]),
    Route("/api/action", action, methods=["POST"]),
    Route("/api/function", function, methods=["POST"]),
    Route("/api/run/{path:path}", run_by_path, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
]
