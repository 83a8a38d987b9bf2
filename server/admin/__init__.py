"""The admin console at `/_admin`: its static page (`static/`) and the admin-only system functions it calls."""

from __future__ import annotations

import importlib
from typing import Any

from server.functions.registry import FunctionSpec, registry

__all__ = ["SYSTEM_MODULES", "SYSTEM_PREFIX", "system_functions", "transaction_of"]

# The console's system functions (`_system/...`, internal, so admin only).
SYSTEM_MODULES = ("server.admin.data", "server.admin.platform")
SYSTEM_PREFIX = "_system/"


def system_functions() -> list[FunctionSpec]:
    """The system functions, for every registry that serves: the built-in apps' and each one a project builds.

    They register into the process's registry when first imported, so call this outside `collect_into` (a
    project's reload imports its own modules into a fresh registry, then adds these)."""
    for name in SYSTEM_MODULES:
        importlib.import_module(name)
    return [spec for spec in registry if spec.path.startswith(SYSTEM_PREFIX)]


def transaction_of(ctx: Any) -> Any:
    """The transaction behind a system function's `ctx.db`, for the few statements the query builder has no verb
    for (a capped `count(*)`, Ripple's own `_ripple_crons`). Its `fetch` is the one to use: in a hub re-run it
    marks the shared snapshot failed on error, so the round rolls back to its savepoint; `record_read` keeps such a
    read reactive. App code has no such door: this is for the console's functions only."""
    return ctx.db._tx
