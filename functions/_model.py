"""Helpers the app modules share (Convex's `convex/model/`): who the caller is, typed errors, checks on values,
and the workflow loader that both `workflows` and `agents` go through. Registers no functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from server import ConvexError
from server.errors import ArgumentError

__all__ = [
    "WORKFLOW_STATUSES",
    "AppError",
    "WireModel",
    "check_choice",
    "check_number",
    "check_text",
    "load_workflow",
    "now_ms",
    "owned",
    "round_percent",
    "token_of",
    "workflow_or_none",
]


class WireModel(BaseModel):
    """A nested argument object: camelCase on the wire, unknown fields refused (as Convex's `v.object`)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=False)


class AppError(ConvexError):
    """A refusal with a readable message and a stable code; the client gets `errorData = {code, message, ...}`.

    Codes: NOT_FOUND (missing, or another user's: the two are not told apart), ALREADY_EXISTS,
    INVALID_TRANSITION, INVALID_STATE.
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__({"code": code, "message": message, **details})
        self.message = message
        self.args = (message,)


def now_ms() -> float:
    return time.time() * 1000.0


async def token_of(ctx: Any, action: str) -> str:
    """The caller's tokenIdentifier, the owner key of what they create; a clear error when not signed in."""
    identity = await ctx.auth.require_user(action)
    return str(identity["tokenIdentifier"])


def owned(doc: dict[str, Any] | None, token: str) -> dict[str, Any] | None:
    """`doc` when it exists and belongs to `token`; otherwise None, so others cannot tell it exists."""
    return doc if doc is not None and doc.get("userId") == token else None


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def check_choice(fn: str, name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ArgumentError(f'{fn}: "{name}" must be one of {_quoted(allowed)}; got {value!r}')
    return str(value)


def check_number(
    fn: str, name: str, value: Any, *, low: float | None = None, high: float | None = None, whole: bool = False
) -> float:
    """A finite number within [low, high]; `whole` also refuses fractions."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    ok = ok and (not whole or float(value).is_integer())
    if not ok:
        kind = "a whole number" if whole else "a number"
        if low is not None and high is not None:
            want = f"{kind} from {low:g} to {high:g}"
        elif low is not None:
            want = f"{kind} >= {low:g}"
        else:
            want = kind
        raise ArgumentError(f'{fn}: "{name}" must be {want}; got {value!r}')
    return float(value)


def check_text(fn: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ArgumentError(f'{fn}: "{name}" must be a non-empty string; got {value!r}')
    return value


def round_percent(part: int, whole: int) -> float:
    """`part / whole` as a percentage rounded half up to one decimal (66.7, 33.3), 0 when `whole` is 0."""
    if whole <= 0:
        return 0.0
    return math.floor(part * 1000 / whole + 0.5) / 10


# Workflows: shared by workflows.py (its own API) and agents.py (sessions belong to a workflow).

WORKFLOW_STATUSES = ("pending", "in_progress", "completed", "failed")


async def workflow_or_none(ctx: Any, workflow_id: str, token: str) -> dict[str, Any] | None:
    return owned(await ctx.db.get(workflow_id), token)


async def load_workflow(ctx: Any, fn: str, workflow_id: str, token: str) -> dict[str, Any]:
    """The caller's workflow, or NOT_FOUND (also for another user's workflow)."""
    workflow = await workflow_or_none(ctx, workflow_id, token)
    if workflow is None:
        raise AppError("NOT_FOUND", f'{fn}: workflow "{workflow_id}" not found', id=workflow_id)
    return workflow
