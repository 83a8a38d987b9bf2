"""Every error a client can see, in one place: a stable code, a message that says what to do, and an HTTP status.

Function failures (bad arguments, unknown function, a handler that raised) are reported *inside* a successful
response, as Convex does; only request-level problems (malformed body, oversized message) use non-2xx statuses.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentError",
    "AuthRequired",
    "ConvexError",
    "FunctionNotFound",
    "IdError",
    "LimitExceeded",
    "RequestError",
    "RippleError",
    "SchemaError",
    "describe",
    "excerpt",
]


class RippleError(Exception):
    """A failure whose message is safe and useful to show the caller.

    Anything else a handler raises is also reported to the caller (as Convex's development deployments do), but
    through `describe()`, which names the exception type.
    """

    code = "RippleError"
    http_status = 200

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConvexError(RippleError):
    """Raise from a function to send structured `data` to the client (`errorData`), never redacted.

    Example: ``raise ConvexError({"code": "NOT_FOUND", "id": video_id})``.
    """

    code = "ConvexError"

    def __init__(self, data: Any) -> None:
        message = data if isinstance(data, str) else "ConvexError"
        super().__init__(message)
        self.data = data


class FunctionNotFound(RippleError):
    code = "FunctionNotFound"


class ArgumentError(RippleError):
    code = "ArgumentValidationError"


class IdError(ArgumentError):
    code = "InvalidId"


class LimitExceeded(RippleError):
    code = "LimitExceeded"


class AuthRequired(RippleError):
    code = "Unauthenticated"


class SchemaError(RippleError):
    code = "SchemaError"


class RequestError(RippleError):
    """The request itself is malformed; answered with a non-2xx status and `{code, message}`."""

    code = "BadRequest"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status


def excerpt(text: object, limit: int = 80) -> str:
    """`text` as repr, cut to about `limit` characters: what an error may echo of a caller's input (a 100 KB
    function path is not sent back whole)."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}… ({len(str(text))} characters)"


def describe(exc: BaseException) -> str:
    """The message a client sees for a failed function."""
    if isinstance(exc, RippleError):
        return exc.message
    return f"Uncaught {type(exc).__name__}: {exc}"
