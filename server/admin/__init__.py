"""The admin console at `/_admin`: its static page (`static/`) and the admin-only system functions it calls."""

from __future__ import annotations

import importlib

from server.functions.registry import FunctionSpec, registry

__all__ = ["SYSTEM_MODULES", "SYSTEM_PREFIX", "system_functions"]

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
