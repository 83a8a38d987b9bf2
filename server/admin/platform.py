"""The console's system functions for scheduled functions, cron runs and files, under `_system/platform:...`.

They are internal functions, so only an admin (the console's key) reaches them, over HTTP or sync. They read
through `ctx.db.system`, so the hub re-runs them when a commit touches what they read: the console sees a job move
from pending to success, or a file arrive, as a subscribed client sees any other change.

Pages are newest first, cut by a cursor (`"<creation time>|<id>"` of the last row scanned), so a page stays put
while newer rows arrive above it. Scheduled functions are filtered by state in Python (the state is a JSON object,
which a query's `filter` cannot compare): a page scans at most `MAX_SCAN` rows, so a rare state may come back
as a short page that is not done; the next page goes on from where the scan stopped.
"""

from __future__ import annotations

from typing import Any

from server import internal_mutation, internal_query
from server.admin import transaction_of
from server.errors import ArgumentError

__all__ = ["MAX_PAGE", "MAX_SCAN", "STATES"]

STATES = ("pending", "inProgress", "success", "failed", "canceled")
MAX_PAGE = 200
MAX_SCAN = 2000
_BATCH = 200
_CRONS = "SELECT name, last_tick, job_id FROM _ripple_crons ORDER BY name"


def _cursor_of(doc: dict[str, Any]) -> str:
    return f"{doc['_creationTime']!r}|{doc['_id']}"


def _parse_cursor(cursor: str) -> tuple[float, str]:
    created, sep, doc_id = cursor.partition("|")
    try:
        if not sep or not doc_id:
            raise ValueError
        return float(created), doc_id
    except ValueError:
        raise ArgumentError(
            f"cursor {cursor!r} is not one this function returned; pass a page's continueCursor, or null for the "
            "newest page"
        ) from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ArgumentError(f"limit must be from 1 to {MAX_PAGE}, got {limit}")


async def _scan(ctx: Any, table: str, cursor: str | None, batch: int) -> list[dict[str, Any]]:
    """Up to `batch` rows of a system table, newest first, strictly older than `cursor`."""
    query = ctx.db.system.query(table).order("desc")
    if cursor is not None:
        created, doc_id = _parse_cursor(cursor)
        query = query.filter(
            lambda q: q.or_(
                q.lt(q.field("_creationTime"), created),
                q.and_(q.eq(q.field("_creationTime"), created), q.lt(q.field("_id"), doc_id)),
            )
        )
    rows: list[dict[str, Any]] = await query.take(batch)
    return rows


@internal_query(name="_system/platform:scheduled")
async def scheduled(ctx: Any, state: str | None = None, limit: int = 50, cursor: str | None = None) -> Any:
    """Scheduled functions, newest first, optionally only those in one state."""
    _check_limit(limit)
    if state is not None and state not in STATES:
        raise ArgumentError(f"state must be one of {', '.join(STATES)} (or null for all), got {state!r}")
    page: list[dict[str, Any]] = []
    scanned = 0
    done = False
    while len(page) < limit and scanned < MAX_SCAN:
        # One row more than needed: a full page that leaves a row unread is known not to be the last.
        want = limit - len(page) + 1 if state is None else min(_BATCH, MAX_SCAN - scanned)
        rows = await _scan(ctx, "_scheduled_functions", cursor, want)
        read_all = True
        for row in rows:
            if len(page) == limit:
                read_all = False
                break
            scanned += 1
            cursor = _cursor_of(row)
            if state is None or row["state"].get("kind") == state:
                page.append(row)
        if len(rows) < want and read_all:
            done = True
            break
    return {"page": page, "isDone": done, "continueCursor": cursor}


@internal_mutation(name="_system/platform:cancel")
async def cancel(ctx: Any, id: str) -> None:
    """Cancel a pending scheduled function; one that has started or finished is left as it is."""
    assert ctx.scheduler is not None
    await ctx.scheduler.cancel(id)


@internal_query(name="_system/platform:cronRuns")
async def cron_runs(ctx: Any) -> Any:
    """Each cron job that has ticked: its last tick and its last run (the `_scheduled_functions` row, live).

    `_ripple_crons` is Ripple's own bookkeeping, not a captured table, so it is read directly; a tick that runs
    inserts its `_scheduled_functions` row in the same commit, and reading the newest row here makes that commit
    re-run this query. The declared jobs, their schedules and next runs come from the process
    (`GET /api/admin/crons`, server/admin/status.py), since they are code, not data.
    """
    await ctx.db.system.query("_scheduled_functions").order("desc").first()
    rows = await transaction_of(ctx).fetch(_CRONS, [])
    runs = []
    for row in rows:
        job = await ctx.db.system.get(row["job_id"]) if row["job_id"] else None
        runs.append({"name": row["name"], "lastTick": row["last_tick"], "lastRun": job})
    return runs


@internal_query(name="_system/platform:files")
async def files(ctx: Any, limit: int = 50, cursor: str | None = None) -> Any:
    """Stored files, newest first, each with the URL that serves it."""
    _check_limit(limit)
    rows = await _scan(ctx, "_storage", cursor, limit + 1)
    page = rows[:limit]
    assert ctx.storage is not None
    for doc in page:
        doc["url"] = await ctx.storage.get_url(doc["_id"])
    return {
        "page": page,
        "isDone": len(rows) <= limit,
        "continueCursor": _cursor_of(page[-1]) if page else cursor,
    }


@internal_mutation(name="_system/platform:deleteFile")
async def delete_file(ctx: Any, storage_id: str) -> None:
    """Delete a stored file: its row now, its bytes once this commits."""
    assert ctx.storage is not None
    await ctx.storage.delete(storage_id)


@internal_mutation(name="_system/platform:generateUploadUrl")
async def generate_upload_url(ctx: Any) -> str:
    """A one-time URL the console posts a file's bytes to."""
    assert ctx.storage is not None
    url: str = await ctx.storage.generate_upload_url()
    return url
