"""Transactions with Convex's guarantees: snapshot reads at a commit ts, serializable mutations retried on conflict.

A mutation is one SERIALIZABLE transaction; a serialization failure or deadlock re-runs it from the start with
jittered exponential backoff (Convex's optimistic concurrency, done by PostgreSQL). Its COMMIT draws the commit
ts from schema.sql's clock; the caller then reads it back by xid, so it learns the ts its write is visible at.

Round trips are what a mutation costs (each is a send, a wake-up and a protocol parse on both sides), so the
path is: BEGIN, the handler's own statements, one message with the dedupe row and COMMIT, and one statement that
reads the ts back and NOTIFYs it. The NOTIFY comes after COMMIT because inside a transaction it takes a lock
held until COMMIT ends, which would serialise all writers.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson

from server.database.catalog import Catalog
from server.database.transaction import Limits, Transaction

__all__ = ["Database", "MutationOutcome", "Snapshot"]

T = TypeVar("T")

_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
_MAX_RETRY_DELAY_S = 0.25

# Ripple announces its own commits after COMMIT (see the module docstring and schema.sql's _ripple_commit_ts).
_BEGIN = "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL ripple.notify = 'after_commit'"
_PUBLISH_SQL = "SELECT ts, pg_notify('ripple_commits', ts::text) FROM _ripple_commits WHERE xid = $1"
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


def _literal(text: str) -> str:
    """`text` as an SQL string literal, valid whatever `standard_conforming_strings` is."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _record_and_commit(dedupe: tuple[str, int], result: Any, xid: int) -> str:
    """The dedupe row and COMMIT in one simple-protocol message (no parameters there, hence literals)."""
    session_id, request_id = dedupe
    return (
        "INSERT INTO _ripple_mutations (session_id, request_id, result, xid) VALUES "
        f"({_literal(session_id)}, {int(request_id)}, {_literal(orjson.dumps(result).decode())}::jsonb, {int(xid)});"
        " COMMIT"
    )


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
        # Called with the ts of each commit made here, right after it is visible (the hub wakes on it without
        # waiting for its own NOTIFY to come back).
        self.on_commit: list[Callable[[int], None]] = []

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
                async with self.pool.acquire() as conn:
                    if dedupe is not None and maybe_applied and attempt == 0:
                        stored = await self._applied(conn, dedupe)
                        if stored is not None:
                            return stored
                    value, xid = await self._attempt(conn, fn, dedupe, encode)
                    if xid is None:
                        # Nothing to apply twice and no commit of its own: it read at a snapshot no newer than
                        # the newest visible commit.
                        return MutationOutcome(value, int(await conn.fetchval("SELECT _ripple_latest_ts()")), attempt)
                    ts = int(await conn.fetchval(_PUBLISH_SQL, xid))
                for listener in self.on_commit:
                    listener(ts)
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

    async def _attempt(
        self,
        conn: asyncpg.Connection,
        fn: Callable[[Transaction], Awaitable[Any]],
        dedupe: tuple[str, int] | None,
        encode: Callable[[Any], Any],
    ) -> tuple[Any, int | None]:
        """One try: the handler's value and the transaction's xid (None when it wrote nothing)."""
        await conn.execute(_BEGIN)
        try:
            tx = Transaction(conn, self.catalog, writable=True, limits=self.limits)
            value = await fn(tx)
            if tx.xid is not None and dedupe is not None:
                await conn.execute(_record_and_commit(dedupe, {"value": encode(value)}, tx.xid))
            else:
                await conn.execute("COMMIT")
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            raise
        return value, tx.xid

    async def _applied(self, conn: asyncpg.Connection, dedupe: tuple[str, int]) -> MutationOutcome | None:
        row = await conn.fetchrow(_APPLIED_SQL, *dedupe)
        if row is None:
            return None
        ts = row["ts"] if row["ts"] is not None else await conn.fetchval("SELECT _ripple_latest_ts()")
        return MutationOutcome(row["result"]["value"], int(ts), 0, deduplicated=True)
