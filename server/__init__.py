"""Ripple: Convex's reactive programming model on PostgreSQL. What app modules import lives here."""

from __future__ import annotations

from server.errors import ConvexError
from server.functions.registry import (
    action,
    internal_action,
    internal_mutation,
    internal_query,
    mutation,
    query,
)
from server.functions.validation import Id

__version__ = "0.1.0"

__all__ = [
    "ConvexError",
    "Id",
    "__version__",
    "action",
    "internal_action",
    "internal_mutation",
    "internal_query",
    "mutation",
    "query",
]
