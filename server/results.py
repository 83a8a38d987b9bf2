"""Return annotations that only typed clients read: `-> Doc("videos")`, `-> Page(Doc("agentSessions"))`.

A handler's result is not validated at run time (it is whatever the handler returns, checked against Convex's
value limits); its annotation exists so that `ripple codegen` can give clients the right type. These markers
therefore stay plain dicts for Python and pydantic (`Annotated[dict[str, Any], marker]`), and carry the one fact a
plain dict cannot say: which table's document it is, or what a page of `.paginate()` holds.

`Id("table")` (server/functions/validation.py) works as a return annotation too: `-> Id("videos")` is typed
`Id<"videos">` / `VideosId` for clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

__all__ = ["Doc", "DocOf", "Page", "PageOf"]


@dataclass(frozen=True, slots=True)
class DocOf:
    """Marks a result annotation as a document of `table`, so clients see `Doc<"table">`."""

    table: str


@dataclass(frozen=True, slots=True)
class PageOf:
    """Marks a result annotation as one page of `.paginate()` whose documents are `item`."""

    item: Any


def Doc(table: str) -> Any:
    """The type of a document of `table` (its Convex name), for return annotations: `-> list[Doc("videos")]`.

    At run time it is a plain dict; only `ripple codegen` reads the marker (a bare `dict` would be
    `Record<string, any>` for clients)."""
    return Annotated[dict[str, Any], DocOf(table)]


def Page(item: Any) -> Any:
    """The result of `.paginate()` whose page holds `item`: `-> Page(Doc("agentSessions"))`.

    Clients get Convex's `PaginationResult<Doc<"agentSessions">>` (what `usePaginatedQuery` takes) and, in Python,
    `PaginationResult[AgentSessions]`. At run time it is the plain dict `.paginate()` returns. `item` is any
    result annotation: `Doc(...)`, a TypedDict or pydantic model for a page mapped to another shape."""
    return Annotated[dict[str, Any], PageOf(item)]
