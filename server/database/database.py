"""Transactions with Convex's guarantees: snapshot reads at a commit ts, serializable mutations retried on conflict.

A mutation is one SERIALIZABLE transaction; a serialization failure or deadlock re-runs it from the start with
jittered exponential backoff (Convex's optimistic concurrency, done by PostgreSQL). Its last statement draws the
commit ts from schema.sql's clock, so the caller learns the ts its write is visible at.
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
        if dedupe is not None:
            stored = await self.pool.fetchrow(
                "SELECT result, ts FROM _ripple_mutations WHERE session_id = $1 AND request_id = $2", *dedupe
            )
            if stored is not None:
                return MutationOutcome(stored["result"]["value"], int(stored["ts"]), 0, deduplicated=True)
        attempt = 0
        while True:
            try:
                async with self.pool.acquire() as conn, conn.transaction(isolation="serializable"):
                    tx = Transaction(conn, self.catalog, writable=True, limits=self.limits)
                    value = await fn(tx)
                    if tx.wrote:
                        ts = int(await conn.fetchval("SELECT _ripple_commit_ts()"))
                        if dedupe is not None:
                            await conn.execute(
                                "INSERT INTO _ripple_mutations (session_id, request_id, result, ts)"
                                " VALUES ($1, $2, $3, $4)",
                                *dedupe,
                                {"value": encode(value)},
                                ts,
                            )
                if not tx.wrote:
                    # Nothing to apply twice and no commit of its own: it read at a snapshot no newer than the
                    # newest visible commit. (Reading _ripple_commits inside the SERIALIZABLE transaction would
                    # make it conflict with every writer.)
                    ts = await self.latest_ts()
                return MutationOutcome(value, ts, attempt)
            except _RETRYABLE:
                attempt += 1
                self.retries_total += 1
                if attempt > self.max_retries:
                    raise
                delay = self.retry_base_s * (2 ** min(attempt, 10))
                await asyncio.sleep(delay * (0.5 + random.random()))
            except asyncpg.UniqueViolationError as exc:
                if dedupe is None or exc.table_name != "_ripple_mutations":
                    raise
                stored = await self.pool.fetchrow(
                    "SELECT result, ts FROM _ripple_mutations WHERE session_id = $1 AND request_id = $2", *dedupe
                )
                return MutationOutcome(stored["result"]["value"], int(stored["ts"]), attempt, deduplicated=True)
