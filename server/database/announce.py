"""What a commit announces (schema.sql, `_ripple_commit_ts`): its ts and, when they are provably all of them and
fit, the keys it changed.

A change list is trusted to be ALL the changes of its ts: a hub whose round's commits all announced one re-runs
the right queries without reading the log, or skips the round (hub/changes.py, `Announcements`). So only Ripple's
writers announce changes (their ts is drawn at COMMIT; a captured write after the draw degrades the announcement to
the ts alone); plain-SQL writers, bulk writes and TRUNCATE announce the ts alone, which sends hubs to the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Announcement", "Change", "parse_announcement"]


@dataclass(frozen=True, slots=True)
class Change:
    """One captured row change: the indexed values before (None for an insert) and after (None for a delete)."""

    ts: int
    table: str
    doc_id: str
    old_keys: dict[str, Any] | None
    new_keys: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Announcement:
    ts: int
    changes: list[Change] | None  # None: not told (too many, or an announcement of ts alone)


def parse_announcement(text: str) -> Announcement | None:
    """`"<ts>"` or `"<ts> [[table, _id, old, new], ...]"`; None for anything else (a hub then just looks)."""
    head, _, rest = text.partition(" ")
    if not head.isdigit():
        return None
    ts = int(head)
    if not rest:
        return Announcement(ts, None)
    try:
        items = orjson.loads(rest)
        return Announcement(ts, [Change(ts, str(t), str(d), o, n) for t, d, o, n in items])
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return Announcement(ts, None)
