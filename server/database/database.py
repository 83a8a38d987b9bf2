"""Transactions with Convex's guarantees: snapshot reads at a commit ts, serializable mutations retried on conflict.

A mutation is one SERIALIZABLE transaction; a serialization failure or deadlock re-runs it from the start with
jittered exponential backoff (Convex's optimistic concurrency, done by PostgreSQL). Its COMMIT draws the commit
ts from schema.sql's clock and hands it back (writers.py), so the caller learns the ts its write is visible at.

Round trips are what a mutation costs, so it runs on a writer connection already inside its transaction
(writers.py): the handler's reads (and any write that must be checked where it was made), then one message with
its held writes (transaction.py), the dedupe row, COMMIT, the NOTIFY of its ts and the next BEGIN. The NOTIFY
comes after COMMIT because inside a transaction it takes a lock held until COMMIT ends, which would serialise all
writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from server.database.announce import Announcement
from server.database.catalog import Catalog
from server.database.sql import literal
from server.database.transaction import Limits, Transaction
from server.database.writers import WriterConnection, Writers

__all__ = ["Database", "MutationOutcome", "Snapshot"]

T = TypeVar("T")

_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
_MAX_RETRY_DELAY_S = 0.25

# The stored result of an applied (session, request), with its commit ts (or none, if the log was pruned).
_APPLIED_SQL = """
SELECT m.result, coalesce(c.ts, m.ts) AS ts
FROM _ripple_mutations m LEFT JOIN _ripple_commits c ON c.xid = m.xid
WHERE m.session_id = $1 AND m.request_id = $2
"""


@dataclass(slots=True)
class MutationOutcome:
    value: Any
    ts: int
    retries: int
    # True when a resend of an already-applied mutation returned the stored result without running.
    deduplicated: bool = False


@dataclass(slots=True)
class Snapshot:
    """An open REPEATABLE READ, READ ONLY transaction; `ts` is the newest commit it sees.

    `first_statement`, when set, rewrites the next statement run in this snapshot, once (the hub reads its round
    there: hub/changes.py, `with_round_head`). `failed` is set when a statement raised: PostgreSQL may have
    aborted the transaction, and whoever shares the snapshot must roll back to a savepoint before the next one.
    """

    conn: asyncpg.Connection
    ts: int
    first_statement: Callable[[str, list[Any]], tuple[str, list[Any]]] | None = None
    failed: bool = False


def _record(dedupe: tuple[str, int], result: Any) -> str:
    """The dedupe row, for the simple-protocol message that commits (no parameters there, hence literals)."""
    session_id, request_id = dedupe
    return (
        "INSERT INTO _ripple_mutations (session_id, request_id, result, xid) VALUES "
        f"({literal(session_id)}, {int(request_id)}, {literal(result, json=True)}, txid_current())"
    )


class Database:
    def __init__(
        self,
        pool: asyncpg.Pool,
        writers: Writers,
        catalog: Catalog,
        *,
        limits: Limits | None = None,
        max_retries: int = 12,
        retry_base_s: float = 0.002,
    ) -> None:
        self.pool = pool
        self.writers = writers
        self.catalog = catalog
        self.limits = limits or Limits()
        self.max_retries = max_retries
        self.retry_base_s = retry_base_s
        self.retries_total = 0
        # Called with what each commit made here announced (its ts, maybe its changes), right after it is visible:
        # the hub wakes on it without waiting for its own NOTIFY to come back.
        self.on_commit: list[Callable[[Announcement], None]] = []
        # Commits sent and not yet back: the hub waits for them when a ts below an announced one is missing, as
        # one of them most likely drew it (hub/hub.py).
        self.committing = 0

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            ts = await conn.fetchval("SELECT _ripple_latest_ts()")
            yield Snapshot(conn, int(ts))

    def reader(self, snapshot: Snapshot, journal: str | None = None) -> Transaction:
        return Transaction(
            snapshot.conn, self.catalog, writable=False, limits=self.limits, journal=journal, snapshot=snapshot
        )

    async def read(
        self, fn: Callable[[Transaction], Awaitable[T]], journal: str | None = None
    ) -> tuple[T, Transaction]:
        async with self.snapshot() as snap:
            tx = self.reader(snap, journal)
            return await fn(tx), tx

    async def latest_ts(self) -> int:
        return int(await self.pool.fetchval("SELECT _ripple_latest_ts()"))

    async def mutate(
        self,
        fn: Callable[[Transaction], Awaitable[Any]],
        *,
        dedupe: tuple[str, int] | None = None,
        maybe_applied: bool = True,
        encode: Callable[[Any], Any] = lambda v: v,
    ) -> MutationOutcome:
        """Run `fn` in a SERIALIZABLE transaction, retrying on conflict; apply a (session, request) once.

        `encode` turns the result into what is stored for a resend (the wire value); the stored form is
        returned for duplicates, the live value otherwise. `maybe_applied=False` says the request cannot have
        been applied before (a session's first connection), which saves looking it up first.
        """
        attempt = 0
        while True:
            try:
                if dedupe is not None and maybe_applied and attempt == 0:
                    async with self.pool.acquire() as conn:
                        stored = await self._applied(conn, dedupe)
                    if stored is not None:
                        return stored
                async with self.writers.acquire() as writer:
                    value, committed = await self._attempt(writer, fn, dedupe, encode)
                if committed is None:
                    # Nothing to apply twice and no commit of its own: it read at a snapshot no newer than the
                    # newest visible commit.
                    return MutationOutcome(value, await self.latest_ts(), attempt)
                return MutationOutcome(value, committed.ts, attempt)
            except _RETRYABLE:
                attempt += 1
                self.retries_total += 1
                if attempt > self.max_retries:
                    raise
                delay = min(self.retry_base_s * (2 ** min(attempt, 10)), _MAX_RETRY_DELAY_S)
                await asyncio.sleep(delay * (0.5 + random.random()))
            except asyncpg.UniqueViolationError as exc:
                if dedupe is None or exc.table_name != "_ripple_mutations":
                    raise
                async with self.pool.acquire() as conn:
                    stored = await self._applied(conn, dedupe)  # a resend raced the original: return its result
                if stored is None:
                    raise
                return stored

    async def _attempt(
        self,
        writer: WriterConnection,
        fn: Callable[[Transaction], Awaitable[Any]],
        dedupe: tuple[str, int] | None,
        encode: Callable[[Any], Any],
    ) -> tuple[Any, Announcement | None]:
        """One try: the handler's value and what its commit announced (None when it wrote nothing)."""
        try:
            tx = Transaction(writer.conn, self.catalog, writable=True, limits=self.limits)
            value = await fn(tx)
            statements = [tx.take_held()]
            if tx.changed and dedupe:
                statements.append(_record(dedupe, {"value": encode(value)}))
            self.committing += 1
            try:
                committed = await writer.commit("; ".join(s for s in statements if s), wrote=tx.changed)
                if committed is not None:
                    for listener in self.on_commit:
                        listener(committed)
            finally:
                self.committing -= 1
        except Exception:
            # A failed statement, a ConvexError, a limit: the connection itself is fine, so end the transaction
            # and open its next one (if that fails too, the pool drops the connection).
            with contextlib.suppress(Exception):
                await writer.rollback()
            raise
        if tx.changed and committed is None:
            raise RuntimeError(
                "a mutation committed but its commit ts did not come back; is schema.sql applied and "
                "client_min_messages at most 'notice'?"
            )
        return value, committed

    async def _applied(self, conn: asyncpg.Connection, dedupe: tuple[str, int]) -> MutationOutcome | None:
        row = await conn.fetchrow(_APPLIED_SQL, *dedupe)
        if row is None:
            return None
        ts = row["ts"] if row["ts"] is not None else await conn.fetchval("SELECT _ripple_latest_ts()")
        return MutationOutcome(row["result"]["value"], int(ts), 0, deduplicated=True)
