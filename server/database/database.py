"""Transactions with Convex's guarantees: snapshot reads at a commit ts, serializable mutations retried on conflict.

A mutation is one SERIALIZABLE transaction; a serialization failure or deadlock re-runs it from the start with
jittered exponential backoff (Convex's optimistic concurrency, done by PostgreSQL). Its COMMIT draws the commit
ts from schema.sql's clock; the caller then reads it back by xid, so it learns the ts its write is visible at.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from server.database.catalog import Catalog
from server.database.transaction import Limits, Transaction

__all__ = ["Database", "MutationOutcome", "Snapshot"]

T = TypeVar("T")

_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
_MAX_RETRY_DELAY_S = 0.25

_RECORD_SQL = """
INSERT INTO _ripple_mutations (session_id, request_id, result, xid) VALUES ($1, $2, $3, $4)
"""
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
    """An open REPEATABLE READ, READ ONLY transaction; `ts` is the newest commit it sees."""

    conn: asyncpg.Connection
    ts: int


class Database:
    def __init__(
        self,
        pool: asyncpg.Pool,
        catalog: Catalog,
        *,
        limits: Limits | None = None,
        max_retries: int = 12,
        retry_base_s: float = 0.002,
    ) -> None:
        self.pool = pool
        self.catalog = catalog
        self.limits = limits or Limits()
        self.max_retries = max_retries
        self.retry_base_s = retry_base_s
        self.retries_total = 0

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            ts = await conn.fetchval("SELECT _ripple_latest_ts()")
            yield Snapshot(conn, int(ts))

    def reader(self, snapshot: Snapshot, journal: str | None = None) -> Transaction:
        return Transaction(snapshot.conn, self.catalog, writable=False, limits=self.limits, journal=journal)

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
        encode: Callable[[Any], Any] = lambda v: v,
    ) -> MutationOutcome:
        """Run `fn` in a SERIALIZABLE transaction, retrying on conflict; apply a (session, request) once.

        `encode` turns the result into what is stored for a resend (the wire value); the stored form is
        returned for duplicates, the live value otherwise.
        """
        attempt = 0
        while True:
            try:
                async with self.pool.acquire() as conn:
                    if dedupe is not None and attempt == 0:
                        stored = await self._applied(conn, dedupe)
                        if stored is not None:
                            return stored
                    async with conn.transaction(isolation="serializable"):
                        tx = Transaction(conn, self.catalog, writable=True, limits=self.limits)
                        value = await fn(tx)
                        if tx.xid is not None and dedupe is not None:
                            await conn.execute(_RECORD_SQL, *dedupe, {"value": encode(value)}, tx.xid)
                    # COMMIT drew the ts (schema.sql's deferred trigger), holding the clock lock only inside
                    # PostgreSQL's commit: no network round trip or Python scheduling happens under it.
                    if tx.xid is not None:
                        ts = int(await conn.fetchval("SELECT ts FROM _ripple_commits WHERE xid = $1", tx.xid))
                    else:
                        # Nothing to apply twice and no commit of its own: it read at a snapshot no newer than
                        # the newest visible commit.
                        ts = int(await conn.fetchval("SELECT _ripple_latest_ts()"))
                return MutationOutcome(value, ts, attempt)
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

    async def _applied(self, conn: asyncpg.Connection, dedupe: tuple[str, int]) -> MutationOutcome | None:
        row = await conn.fetchrow(_APPLIED_SQL, *dedupe)
        if row is None:
            return None
        ts = row["ts"] if row["ts"] is not None else await conn.fetchval("SELECT _ripple_latest_ts()")
        return MutationOutcome(row["result"]["value"], int(ts), 0, deduplicated=True)
