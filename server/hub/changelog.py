"""The one owner of "what changed since processed ts P, and is that all of it".

Everything the hub knows about commits comes through here, in two forms:

* `read_since(conn, P, limit)`: the truth, read from the commit log in the hub's REPEATABLE READ snapshot.
* `quiet_advance(P, announced)`: what the commits' announcements (NOTIFY payloads) prove without a snapshot.

Everything else (NOTIFY wake-ups without changes, local commits, the periodic look) is a hint to ask again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import asyncpg

from server.database.announce import Announcement, Change
from server.errors import RippleError

log = logging.getLogger("ripple.hub")

__all__ = [
    "prune_forever",
    "BEGIN_SNAPSHOT",
    "NEXT_SNAPSHOT",
    "RECOVER",
    "Announcements",
    "Changes",
    "quiet_advance",
    "read_since",
    "settled_head",
]

# The hub's connection waits for each round inside an open REPEATABLE READ transaction: its snapshot is taken by
# the round's first query (read_since), so the BEGIN is off the path from commit to client. The savepoint takes
# no snapshot; rolling back to it after a re-run whose statement failed (which aborts the transaction) keeps the
# snapshot, so that failure stays that query's and the round's other re-runs still read at S.
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SAVEPOINT rerun"
RECOVER = "ROLLBACK TO SAVEPOINT rerun"
NEXT_SNAPSHOT = "COMMIT; " + BEGIN_SNAPSHOT

# Settling (schema.sql, "the clock key"): take the key exclusive outside any transaction, which waits for every
# writer between drawing its ts and becoming visible and holds back new draws; open a new snapshot; the head
# query lets the key go inside the statement that takes that snapshot. Writers reaching COMMIT queue behind the
# hub's request, so it gives up after a while: a transaction that drew its ts and then stays open holds up the
# hub, not every writer.
_SETTLE_TIMEOUT = "2s"
_SETTLE = (
    f"ROLLBACK; SELECT set_config('lock_timeout', '{_SETTLE_TIMEOUT}', true), _ripple_settle(); COMMIT; "
    + BEGIN_SNAPSHOT
)
_CLOCK_HOLDERS_SQL = """
SELECT coalesce(string_agg(k.pid::text, ', '), 'none') FROM pg_locks k
WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
  AND ((k.classid::bigint << 32) | k.objid::bigint) = 7264001000000000002
"""

# One round trip for the head (schema.sql, `_ripple_round_head`: the snapshot's newest ts S, whether it holds
# every commit in (P, S], when S was drawn, the pruned horizon) and the changes of (P, S] (at least one row).
# The changes are looked up per commit (OFFSET 0 keeps the planner from making that a join, which a generic plan
# made while the log was small turned into a scan of the whole log) through the xid index (see schema.sql on its
# statistics).
_ROUND_SQL = """
WITH h AS MATERIALIZED (SELECT * FROM _ripple_round_head($1, $3))
SELECT h.*, x.*
FROM h
LEFT JOIN LATERAL (
    SELECT c.ts, ch.table_name, ch.doc_id, ch.old_keys, ch.new_keys
    FROM _ripple_commits c
    CROSS JOIN LATERAL (SELECT * FROM _ripple_changes ch WHERE ch.xid = c.xid OFFSET 0) ch
    WHERE h.settled AND c.ts > $1 AND c.ts <= h.snapshot_ts
    ORDER BY c.ts
    LIMIT $2
) x ON TRUE
"""

_TABLES_SQL = """
SELECT DISTINCT ch.table_name
FROM _ripple_commits c
CROSS JOIN LATERAL (SELECT ch.table_name FROM _ripple_changes ch WHERE ch.xid = c.xid OFFSET 0) ch
WHERE c.ts > $1 AND c.ts <= $2
"""


@dataclass(slots=True)
class Changes:
    """What commits in (after, upto] changed, in one of three precisions (coarser when finer is not at hand):

    * `everything`: the log of some of them was pruned (horizon > after): re-run every query;
    * `tables` (not None): more changes than the round's limit: invalidate every query reading these tables;
    * `changes`: every changed key, old and new.
    """

    after: int
    upto: int
    changes: list[Change]
    tables: set[str] | None = None
    everything: bool = False
    drawn_at: float | None = None  # when `upto` was drawn (epoch seconds), if its commit is still in the log
    settled: bool = False  # whether the hub had to take the clock key to get a snapshot holding all of them


async def read_since(conn: asyncpg.Connection, after: int, limit: int) -> Changes:
    """What changed since processed ts `after`, read in `conn`'s open REPEATABLE READ snapshot (BEGIN_SNAPSHOT,
    no query run in it yet), which the caller then reads its queries in.

    Invariant (complete by construction): with S = the newest ts the snapshot sees, every commit with a ts in
    (after, S] is visible in that snapshot, and the answer names all their changes (or coarser: their tables, or
    everything). Why: ts are drawn from one sequence, one per commit, so (after, S] holds S - after numbers;
    `_ripple_settled` counts them among the snapshot's commits. When one is missing (a writer between drawing and
    becoming visible, one that aborted after drawing, or a pruned range) this settles: the clock key taken
    exclusive waits out every drawn-but-invisible writer and holds back new draws, so the next snapshot holds
    every ts up to its newest that will ever commit (an aborted draw never will). The log rows are written in
    the same transaction as the commit's ts, so a visible commit's changes are all visible with it; a pruned
    range is caught by the horizon.
    """
    rows = await conn.fetch(_ROUND_SQL, after, limit + 1, False)
    settled = False
    if not rows[0]["settled"]:
        await _settle(conn)
        settled = True
        rows = await conn.fetch(_ROUND_SQL, after, limit + 1, True)
    head = rows[0]
    upto, horizon = int(head["snapshot_ts"]), int(head["horizon"])
    drawn_at = float(head["drawn_at"]) if head["drawn_at"] is not None else None
    if upto <= after:
        return Changes(after, after, [], drawn_at=drawn_at, settled=settled)
    if horizon > after:
        return Changes(after, upto, [], everything=True, drawn_at=drawn_at, settled=settled)
    if len(rows) > limit:
        tables = {r["table_name"] for r in await conn.fetch(_TABLES_SQL, after, upto)}
        return Changes(after, upto, [], tables=tables, drawn_at=drawn_at, settled=settled)
    found = [
        Change(r["ts"], r["table_name"], r["doc_id"], r["old_keys"], r["new_keys"]) for r in rows if r["ts"] is not None
    ]
    return Changes(after, upto, found, drawn_at=drawn_at, settled=settled)


async def settled_head(conn: asyncpg.Connection) -> int:
    """The newest ts S such that every commit up to S is visible (where the hub starts: it has no P yet).
    `conn` waits in BEGIN_SNAPSHOT, and does so again on return."""
    await _settle(conn)
    head = int(await conn.fetchval("SELECT _ripple_latest_ts() FROM _ripple_unsettle()"))
    await conn.execute(NEXT_SNAPSHOT)
    return head


async def _settle(conn: asyncpg.Connection) -> None:
    try:
        await conn.execute(_SETTLE)
    except asyncpg.LockNotAvailableError:
        holders = await conn.fetchval(_CLOCK_HOLDERS_SQL)
        raise RippleError(
            f"the hub waited {_SETTLE_TIMEOUT} for transactions that drew a commit ts to finish (backend pids "
            f"{holders}); a transaction should not stay open after it has its ts"
        ) from None


def quiet_advance(after: int, announced: Mapping[int, list[Change]]) -> tuple[int, list[Change]]:
    """The newest M such that every ts in (after, M] is in `announced`, and the changes of those commits.

    Invariant: (after, M] holds exactly these commits and exactly these changes. Why: ts are drawn from one
    sequence, one per commit, so no other commit lies in (after, M]; and `announced` holds only change lists that
    are the whole of their commit (schema.sql, `_ripple_commit_ts`: a commit announces its changes only when they
    are provably all of them, else its ts alone, which `Announcements` does not keep). A NOTIFY is sent only
    once its commit is visible, so each of them is visible to any later snapshot. Hence when none of these
    changes touches a query's read set, that query's result at `after` is its result at M, without a snapshot.
    """
    upto, changes = after, []
    while (listed := announced.get(upto + 1)) is not None:
        upto += 1
        changes.extend(listed)
    return upto, changes


class Announcements(Mapping[int, list[Change]]):
    """The whole change lists announced by commits not processed yet, by ts (the input of `quiet_advance`)."""

    def __init__(self) -> None:
        self._by_ts: dict[int, list[Change]] = {}

    def add(self, said: Announcement) -> None:
        if said.changes is not None:
            self._by_ts[said.ts] = said.changes

    def forget_through(self, ts: int) -> None:
        for done in [t for t in self._by_ts if t <= ts]:
            del self._by_ts[done]

    def __getitem__(self, ts: int) -> list[Change]:
        return self._by_ts[ts]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_ts)

    def __len__(self) -> int:
        return len(self._by_ts)


async def prune_forever(
    pool: asyncpg.Pool, retention_s: float, interval_s: float, processed_ts: Callable[[], int]
) -> None:
    """Delete log rows older than the retention (schema's `_ripple_prune`: a hub behind them re-runs everything,
    see `Changes.everything`), but only after the hub has processed something new."""
    pruned_at = processed_ts()
    while True:
        await asyncio.sleep(interval_s)
        if processed_ts() == pruned_at:
            continue
        try:
            await pool.execute("SELECT _ripple_prune($1)", retention_s * 1000.0)
            pruned_at = processed_ts()
        except Exception:
            log.exception("pruning the commit log failed; will try again")
