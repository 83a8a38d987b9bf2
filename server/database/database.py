"""Transactions with Convex's guarantees: snapshot reads at a commit ts, serializable mutations retried on conflict.

A mutation is one SERIALIZABLE transaction; a serialization failure or deadlock re-runs it from the start with
jittered exponential backoff (Convex's optimistic concurrency, done by PostgreSQL). Its COMMIT draws the commit
ts from schema.sql's clock and hands it back (writers.py), so the caller learns the ts its write is visible at.

It runs on a writer connection already inside its transaction (writers.py): the handler's reads and writes, each
sent when made, then one message with the dedupe row, COMMIT, the NOTIFY of its ts and the next BEGIN. The NOTIFY
comes after COMMIT because inside a transaction it takes a lock held until COMMIT ends, which would serialise all
writers.

A committed mutation is never reported as failed. The commit message runs to its end even when the caller is
cancelled (it is shielded and waited for: the writer is not reused while it runs), and every writing mutation
stores a dedupe row (under an internal key when the caller gave none), so an outcome left unknown by an error in
that message (a lost connection, a cancelled statement) is settled by looking the row up once the writer's backend
has ended. A resent (session, request) replays its stored result only for the same caller, function and arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson

from server.database.announce import Announcement
from server.database.catalog import Catalog
from server.database.sql import literal
from server.database.transaction import Limits, Transaction
from server.database.writers import WriterConnection, Writers
from server.errors import RippleError

__all__ = ["Database", "DatabaseUnavailable", "MutationKey", "MutationOutcome", "Snapshot", "args_digest"]

T = TypeVar("T")

_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# What a database that is down or restarting looks like from here (refused, reset, or ended connections).
_UNREACHABLE = (
    OSError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
_MAX_RETRY_DELAY_S = 0.25
# How long a lost writer's backend may go on (finishing its COMMIT) before it is terminated, and how long it may
# then take to end before whether it committed is given up as unknown.
_BACKEND_END_WAIT_S = 30.0
_BACKEND_TERMINATE_WAIT_S = 10.0

# The stored result of an applied (session, request), with its commit ts (or none, if the log was pruned), and
# what the request was.
_APPLIED_SQL = """
SELECT m.result, coalesce(c.ts, m.ts) AS ts, m.caller, m.path, m.args_digest
FROM _ripple_mutations m LEFT JOIN _ripple_commits c ON c.xid = m.xid
WHERE m.session_id = $1 AND m.request_id = $2
"""
_END_BACKEND_SQL = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2"
_BACKEND_ALIVE_SQL = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2)"
_INTERNAL_SESSION = "ripple-internal:"


class DatabaseUnavailable(RippleError):
    """The database could not be reached: said as such, rather than as the socket error that showed it."""

    code = "DatabaseUnavailable"

    @classmethod
    def because(cls, exc: BaseException, *, mutation: bool) -> DatabaseUnavailable:
        retry = (
            "send it again once the database is back (a resend with the same requestId is applied at most once)"
            if mutation
            else "try again once the database is back"
        )
        return cls(f"the database is unavailable ({type(exc).__name__}: {exc}); {retry}")


def args_digest(args: Any) -> str:
    """SHA-256 of a request's arguments, with object keys sorted, so a resend with the same arguments matches."""
    try:
        text = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        text = repr(args).encode()
    return hashlib.sha256(text).hexdigest()


@dataclass(frozen=True, slots=True)
class MutationKey:
    """What makes a mutation request apply once: its (session, request) and what a resend must repeat to replay
    the stored result (who calls, which function, which arguments)."""

    session_id: str
    request_id: int
    caller: str = ""
    path: str = ""
    args_digest: str = ""

    @classmethod
    def internal(cls) -> MutationKey:
        """A key no client sends: for mutations without one, so their outcome can still be settled."""
        return cls(_INTERNAL_SESSION + uuid.uuid4().hex, 0)

    def row(self, result: Any) -> str:
        """The dedupe row, for the simple-protocol message that commits (no parameters there, hence literals)."""
        return (
            "INSERT INTO _ripple_mutations (session_id, request_id, result, xid, caller, path, args_digest) VALUES "
            f"({literal(self.session_id)}, {int(self.request_id)}, {literal(result, json=True)}, txid_current(), "
            f"{literal(self.caller)}, {literal(self.path)}, {literal(self.args_digest)})"
        )

    def mismatch(self, caller: str | None, path: str | None, digest: str | None) -> str | None:
        """What differs between this request and the stored one, or None when a resend may replay it. Rows written
        before these columns existed (NULL) match: they can only be genuine resends of older requests."""
        if caller is not None and caller != self.caller:
            return "by another caller"
        if path is not None and path != self.path:
            return f"for another function ({path}, not {self.path})"
        if digest is not None and digest != self.args_digest:
            return "with other arguments"
        return None


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

    `failed` is set when a statement raised: PostgreSQL may have aborted the transaction, and whoever shares the
    snapshot must roll back to a savepoint before the next one.
    """

    conn: asyncpg.Connection
    ts: int
    failed: bool = False


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

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        try:
            conn = await self.pool.acquire()
        except _UNREACHABLE as exc:
            raise DatabaseUnavailable.because(exc, mutation=False) from exc
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                try:
                    ts = await conn.fetchval("SELECT _ripple_latest_ts()")
                except _UNREACHABLE as exc:
                    raise DatabaseUnavailable.because(exc, mutation=False) from exc
                yield Snapshot(conn, int(ts))
        finally:
            await self.pool.release(conn)

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
        dedupe: MutationKey | None = None,
        maybe_applied: bool = True,
        encode: Callable[[Any], Any] = lambda v: v,
    ) -> MutationOutcome:
        """Run `fn` in a SERIALIZABLE transaction, retrying on conflict; apply a (session, request) once.

        `encode` turns the result into what is stored for a resend (the wire value); the stored form is
        returned for duplicates, the live value otherwise. `maybe_applied=False` says the request cannot have
        been applied before (a session's first connection), which saves looking it up first. Without `dedupe`
        an internal key is stored, so a commit whose outcome came back unknown can still be settled.
        """
        if dedupe is None:
            key, maybe_applied = MutationKey.internal(), False
        else:
            key = dedupe
        attempt = 0
        while True:
            try:
                if maybe_applied and attempt == 0:
                    stored = await self._applied(key)
                    if stored is not None:
                        return stored
                async with self.writers.acquire() as writer:
                    value, committed = await self._attempt(writer, fn, key, encode)
                if committed is None:
                    # Nothing to apply twice and no commit of its own: it read at a snapshot no newer than the
                    # newest visible commit.
                    return MutationOutcome(value, await self.latest_ts(), attempt)
                if isinstance(committed, MutationOutcome):
                    committed.retries = attempt  # settled from the dedupe row
                    return committed
                return MutationOutcome(value, committed.ts, attempt)
            except _RETRYABLE:
                attempt += 1
                self.retries_total += 1
                if attempt > self.max_retries:
                    raise
                delay = min(self.retry_base_s * (2 ** min(attempt, 10)), _MAX_RETRY_DELAY_S)
                await asyncio.sleep(delay * (0.5 + random.random()))
            except _UNREACHABLE as exc:
                raise DatabaseUnavailable.because(exc, mutation=True) from exc
            except asyncpg.UniqueViolationError as exc:
                if exc.table_name != "_ripple_mutations":
                    raise
                stored = await self._applied(key)  # a resend raced the original: return its result
                if stored is None:
                    raise
                return stored

    async def _attempt(
        self,
        writer: WriterConnection,
        fn: Callable[[Transaction], Awaitable[Any]],
        key: MutationKey,
        encode: Callable[[Any], Any],
    ) -> tuple[Any, Announcement | MutationOutcome | None]:
        """One try: the handler's value and what its commit announced (None when it wrote nothing; the stored
        outcome when an error in the commit message left it to the dedupe row to tell)."""
        try:
            tx = Transaction(writer.conn, self.catalog, writable=True, limits=self.limits)
            value = await fn(tx)
        except BaseException:
            # A failed statement, a ConvexError, a limit: the connection itself is fine, so end the transaction
            # and open its next one (if that fails too, the pool drops the connection).
            with contextlib.suppress(Exception):
                await writer.rollback()
            raise
        record = key.row({"value": encode(value)}) if tx.changed else ""
        # Shielded, and waited for even when this task is cancelled: a COMMIT cut short would leave its outcome
        # unknown and its NOTIFY unsent, and the writer must not be reused while its message runs.
        task = asyncio.ensure_future(self._commit(writer, record, key, wrote=tx.changed))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True
            except BaseException:
                break
        if cancelled:
            with contextlib.suppress(BaseException):
                task.result()  # nobody is left to tell; a commit still reached the listeners (the hub)
            raise asyncio.CancelledError
        committed = task.result()
        if tx.changed and committed is None:
            raise RuntimeError(
                "a mutation committed but its commit ts did not come back; is schema.sql applied and "
                "client_min_messages at most 'notice'?"
            )
        return value, committed

    async def _commit(
        self, writer: WriterConnection, record: str, key: MutationKey, *, wrote: bool
    ) -> Announcement | MutationOutcome | None:
        """The commit message, and the settling of its outcome when it failed (a lost connection, a cancelled or
        failed statement): a mutation whose dedupe row is there committed, whatever the error said."""
        try:
            committed = await writer.commit(record, wrote=wrote)
        except Exception as exc:
            if not wrote:
                raise  # nothing was written: there is nothing to settle
            stored = await self._settle(writer, key)
            if stored is None and writer.conn.is_closed():
                raise RippleError(
                    "the connection to PostgreSQL was lost during this mutation's COMMIT and it did not commit (its "
                    "dedupe row is absent), so nothing of it was applied; send it again"
                ) from exc
            if not writer.conn.is_closed():
                with contextlib.suppress(Exception):
                    await writer.rollback()  # the message has ended: make the writer usable again
            if stored is None:
                raise
            # Its NOTIFY may have been lost with the message: announce the ts again (alone, so hubs read the log). A
            # failure here only delays the hubs (until the next commit or their reconnect), so it is not reported.
            with contextlib.suppress(Exception):
                await self.pool.execute("SELECT pg_notify('ripple_commits', $1)", str(stored.ts))
            self._announce(Announcement(stored.ts, None))
            stored.deduplicated = False
            return stored
        if committed is not None:
            self._announce(committed)
        return committed

    def _announce(self, committed: Announcement) -> None:
        for listener in self.on_commit:
            listener(committed)

    async def _settle(self, writer: WriterConnection, key: MutationKey) -> MutationOutcome | None:
        """The outcome of a commit message that failed, from its dedupe row, once the writer's backend can no
        longer commit: at once when the connection is alive (the message has ended), after the backend ended
        when it is lost (it may still be inside its COMMIT)."""
        if writer.conn.is_closed() and writer.backend is not None:
            pid, started = writer.backend
            if not await self._backend_ended(pid, started, _BACKEND_END_WAIT_S):
                with contextlib.suppress(asyncpg.PostgresError):
                    await self.pool.execute(_END_BACKEND_SQL, pid, started)
                if not await self._backend_ended(pid, started, _BACKEND_TERMINATE_WAIT_S):
                    raise RippleError(
                        f"lost the connection to PostgreSQL during the COMMIT of mutation request {key.request_id} "
                        f"and its backend (pid {pid}) did not end, so whether it committed is unknown; send it "
                        "again with the same sessionId and requestId to learn its outcome"
                    )
        stored = await self._applied(key)
        if stored is None and writer.conn.is_closed() and writer.backend is None:
            # Behind a transaction pooler the backend is not known: it may still be inside this COMMIT.
            raise RippleError(
                f"lost the connection during the COMMIT of mutation request {key.request_id} (through a connection "
                "pooler, so its backend cannot be waited for) and whether it committed is unknown; send it again "
                "with the same sessionId and requestId to learn its outcome"
            )
        return stored

    async def _backend_ended(self, pid: int, started: Any, wait_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while await self.pool.fetchval(_BACKEND_ALIVE_SQL, pid, started):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _applied(self, key: MutationKey) -> MutationOutcome | None:
        """The stored outcome of `key`'s request, or None when it was not applied; a RippleError, and nothing
        run, when the stored request was another caller's, function's or arguments'."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(_APPLIED_SQL, key.session_id, key.request_id)
            if row is None:
                return None
            differs = key.mismatch(row["caller"], row["path"], row["args_digest"])
            if differs is not None:
                raise RippleError(
                    f"mutation request {key.request_id} of session {key.session_id} was already applied {differs}, "
                    "so it was not run; a resend must repeat the same request, and a new mutation needs a new "
                    "requestId"
                )
            ts = row["ts"] if row["ts"] is not None else await conn.fetchval("SELECT _ripple_latest_ts()")
        return MutationOutcome(row["result"]["value"], int(ts), 0, deduplicated=True)
