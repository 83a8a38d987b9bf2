"""Ripple: Convex's reactive programming model on PostgreSQL. What app modules import lives here."""

from __future__ import annotations

from server.crons import Crons
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
from server.http_actions import HttpRouter, http_action
from server.results import Doc, Page

__version__ = "0.1.0"

__all__ = [
    "ConvexError",
    "Crons",
    "Doc",
    "HttpRouter",
    "Id",
    "Page",
    "__version__",
    "action",
    "http_action",
    "internal_action",
    "internal_mutation",
    "internal_query",
    "mutation",
    "query",
]
