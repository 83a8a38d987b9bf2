"""`Hub`: keeps every subscribed query's result current, one consistent snapshot at a time.

One task runs rounds. A round takes the queued subscribe/unsubscribe requests, opens one REPEATABLE READ
snapshot whose newest commit is S, reads the commit log up to S, re-runs only the instances whose read sets
the changes touch (plus new ones) in that snapshot, and hands each session the results that changed, all at
ts S. Rounds happen only when a commit is notified, a subscription arrives or the LISTEN connection came back:
while nothing changes, nothing is queried.

When the commits' announcements (database/announce.py) name their changes, a round needs the log only to learn
its snapshot's ts and that the snapshot holds exactly those commits: it starts with one instance the changes
invalidate and reads that head inside the re-run's first statement (changes.py, `with_round_head`). From an idle
machine each round trip costs a wake-up of both processes, and this saves one of the two a round otherwise needs.
And when the announced changes touch no live query, the round needs no round trip at all (`_advance_quietly`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import asyncpg

from server.database.announce import Announcement, Change
from server.database.catalog import Catalog
from server.database.database import Database, Snapshot
from server.database.pool import init_connection
from server.errors import ArgumentError, RippleError
from server.functions.context import Caller
from server.functions.registry import FunctionKind
from server.functions.runner import Outcome, Runner
from server.hub.changes import (
    ROUND_NOTICE,
    Announcements,
    ChangeFeed,
    LogSlice,
    RoundHead,
    read_changes,
    with_round_head,
)
from server.hub.index import ReadSetIndex
from server.hub.instances import Instances, QueryInstance, QueryResult, Subscriber

if TYPE_CHECKING:
    from server.config import Settings
    from server.metrics import Metrics

__all__ = ["Hub"]

# The hub's connection waits for each round inside an open REPEATABLE READ transaction: its snapshot is taken by
# the round's first query, so the BEGIN is off the path from commit to client. The savepoint takes no snapshot;
# rolling back to it after a re-run whose statement failed (which aborts the transaction) keeps the snapshot, so
# that failure stays that query's and the round's other re-runs still read at S.
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SAVEPOINT rerun"
_RECOVER = "ROLLBACK TO SAVEPOINT rerun"
_NEXT_ROUND = "COMMIT; " + _BEGIN
# When that snapshot may lack a commit below its newest ts (a writer was between drawing its ts and becoming
# visible, or aborted after drawing), take the clock key before a new snapshot (schema.sql); read_changes lets
# it go. Writers reaching COMMIT queue behind the hub's request, so it gives up after a while: a transaction
# that drew its ts and then stays open (one calling _ripple_commit_ts() early and idling) holds up the hub, not
# every writer.
_SETTLE_TIMEOUT = "2s"
_SETTLE = f"ROLLBACK; SELECT set_config('lock_timeout', '{_SETTLE_TIMEOUT}', true), _ripple_settle(); COMMIT; {_BEGIN}"
_CLOCK_HOLDERS_SQL = """
SELECT coalesce(string_agg(k.pid::text, ', '), 'none') FROM pg_locks k
WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
  AND ((k.classid::bigint << 32) | k.objid::bigint) = 7264001000000000002
"""

# How long a round may wait for this process's commits to fill a gap in the announced ts
# (`Hub._wait_for_local_commit`).
_GAP_WAIT_S = 0.005

log = logging.getLogger("ripple.hub")


class _Subscribe:
    __slots__ = ("args", "caller", "journal", "path", "session", "token")

    def __init__(self, session: Subscriber, token: int, path: str, args: Any, journal: str | None, caller: Caller):
        self.session, self.token, self.path, self.args, self.journal, self.caller = (
            session,
            token,
            path,
            args,
            journal,
            caller,
        )


class Hub:
    def __init__(
        self,
        dsn: str,
        database: Database,
        runner: Runner,
        *,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.database = database
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self.feed = ChangeFeed(dsn, self._wake, reconnect_max_s=settings.listen_reconnect_max_s)
        database.on_commit.append(self._wake)
        self.index = ReadSetIndex()
        self.processed_ts = 0
        self.rounds = 0
        self._instances = Instances(runner.validate)
        self._requests: list[_Subscribe | int] = []
        self._pending_new: dict[int, set[int]] = defaultdict(set)
        self._wakeup = asyncio.Event()
        self._waiters: list[tuple[int, int, asyncio.Future[int]]] = []
        self._waiter_seq = 0
        self._next_token = 0
        self._task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._closing = False
        self._notified_at: float | None = None
        self._indexes = self._index_fields(database.catalog)
        # What commits not processed yet announced, the head a round's NOTICE carried, and whether the next round
        # may start from the announcements (not right after a failed round).
        self._announced = Announcements()
        self._head: RoundHead | None = None
        self._hinting = True
        self.hinted_rounds = 0  # rounds that took their changes from announcements: one round trip
        self.quiet_rounds = 0  # rounds whose announced changes touched no live query: no round trip
        self.gap_waits = 0  # rounds ended at once to wait for a commit in flight (`_wait_for_local_commit`)
        self._gap_timer: asyncio.TimerHandle | None = None  # set while waiting: it ends the wait
        self._look = False  # a wake-up that may stand for unannounced commits (a LISTEN reconnect): read the log

    @staticmethod
    def _index_fields(catalog: Catalog) -> dict[str, dict[str, tuple[str, ...]]]:
        return {t.name: {i.name: i.key_fields for i in t.indexes.values()} for t in catalog.tables.values()}

    # Lifecycle.

    async def start(self) -> None:
        conn = await self._connection()
        await conn.execute(_SETTLE)
        self.processed_ts = int(await conn.fetchval("SELECT _ripple_latest_ts() FROM _ripple_unsettle()"))
        await conn.execute(_NEXT_ROUND)
        await self.feed.start()
        self._task = asyncio.create_task(self._run(), name="ripple-hub")
        self._prune_task = asyncio.create_task(self._prune_loop(), name="ripple-prune")

    async def close(self, reason: str) -> None:
        self._closing = True
        self._end_gap_wait()
        self._wakeup.set()
        for task in (self._task, self._prune_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, self._prune_task) if t), return_exceptions=True)
        await self.feed.close()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        log.info("hub closed: %s", reason)

    # What sessions call.

    def new_token(self) -> int:
        self._next_token += 1
        return self._next_token

    def subscribe(
        self, session: Subscriber, token: int, path: str, args: Any, journal: str | None, caller: Caller
    ) -> None:
        """Queue a subscription; its first result reaches `session.deliver` at the end of the next round."""
        self._requests.append(_Subscribe(session, token, path, args, journal, caller))
        self._wakeup.set()

    def unsubscribe(self, token: int) -> None:
        self._requests.append(token)
        self._wakeup.set()

    async def wait_for_ts(self, ts: int) -> int:
        """Wait until every commit up to `ts` has been processed (and delivered); return the processed ts."""
        if self.processed_ts >= ts:
            return self.processed_ts
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiter_seq += 1
        bisect.insort(self._waiters, (ts, self._waiter_seq, fut))
        self._wakeup.set()  # the commit may be visible before its NOTIFY arrives
        return await fut

    @property
    def instance_count(self) -> int:
        return len(self._instances.by_id)

    @property
    def subscription_count(self) -> int:
        return self._instances.subscriptions

    # The round loop.

    def _wake(self, said: Announcement | None = None) -> None:
        """A commit was announced (NOTIFY, or a mutation of this process), or anything may have happened (None)."""
        if said is None:
            self._look = True
        else:
            if said.ts <= self.processed_ts:
                return
            self._announced.add(said)
        if self._notified_at is None:
            self._notified_at = time.perf_counter()
        self._wakeup.set()

    async def _run(self) -> None:
        delay = 0.01
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._round()
                delay = 0.01
                self._hinting = True
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database went away mid-round: requests were kept, so retry the round after a pause (and
                # without a hinted first re-run, in case the rewrite of its statement is what broke the round).
                self._hinting = False
                log.exception("hub round failed; retrying in %.2f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.listen_reconnect_max_s)
                self._wakeup.set()

    async def _round(self) -> None:
        requests, self._requests = self._requests, []
        # Tokens awaiting their first delivery survive a failed round (the requests are already applied).
        new = self._pending_new
        deliveries: dict[Subscriber, list[tuple[int, QueryResult]]] = defaultdict(list)
        self._apply_requests(requests, new, deliveries)
        notified_at, self._notified_at = self._notified_at, None
        look, self._look = self._look, False
        quiet = not requests and not new and self._hinting
        if quiet and self._advance_quietly():
            self._end_gap_wait()
            if not look and not self._waiters and not self._announced:
                self._finish_quietly(notified_at)
                return
        if quiet and not look and self._announced and self._wait_for_local_commit():
            self._notified_at = notified_at
            return
        self._end_gap_wait()
        delivered: set[int] = set()
        limit = self.settings.max_changes_per_round
        conn = await self._connection()
        try:
            first = self._hinted_instance() if self._hinting else None
            early: tuple[QueryInstance, Outcome] | None = None
            found: LogSlice | None = None
            unsettled = False
            if first is not None:
                outcome, head = await self._run_hinted(conn, first)
                early = (first, outcome) if outcome is not None else None
                if head is not None and not head.settled:
                    early, unsettled = None, True  # read before every commit up to S was visible: drop it
                elif head is not None:
                    found = self._announced.log_slice(self.processed_ts, head, limit)
                    if found is not None:
                        self.hinted_rounds += 1
                        if self.metrics:
                            self.metrics.hub_announced.inc()
            if found is None and not unsettled:
                found = await read_changes(conn, self.processed_ts, limit, settled=False)
            if found is None:
                if self.metrics:
                    self.metrics.hub_settles.inc()
                await self._settle(conn)
                found = await read_changes(conn, self.processed_ts, limit, settled=True)
                assert found is not None
            log_slice = found
            ts = log_slice.snapshot_ts
            snap = Snapshot(conn, ts)
            stale = self._invalidated(log_slice) if ts > self.processed_ts else set()
            live = self._instances.by_id
            work = [live[i] for i in stale | new.keys() if i in live]
            work = [i for i in work if i.id in stale or i.result is None]
            if early is not None:
                work = [i for i in work if i is not early[0]]
                work.extend(self._record(*early, deliveries, delivered, new))
            while work:
                inst = work.pop()
                if inst.id not in live:
                    continue
                outcome = await self._rerun(inst, snap)
                work.extend(self._record(inst, outcome, deliveries, delivered, new))
            for inst_id, tokens in new.items():
                joined = live.get(inst_id)
                if joined is None or joined.result is None:
                    continue
                for token in tokens - delivered:
                    entry = joined.subscribers.get(token)
                    if entry is not None:
                        deliveries[entry[0]].append((token, joined.result))
            # Deliver before COMMIT: the snapshot is read-only, so its results are final once read, and the
            # sessions need not wait for one more database round trip.
            self.processed_ts = max(self.processed_ts, ts)
            self.rounds += 1
            self._pending_new = defaultdict(set)
            self._announced.forget_through(self.processed_ts)
            for session, updates in deliveries.items():
                session.deliver(ts, updates)
            self._release_waiters()
        except BaseException:
            await self._drop_connection()
            raise
        # End this snapshot and open the next round's transaction in one round trip.
        try:
            await conn.execute(_NEXT_ROUND)
        except BaseException:
            await self._drop_connection()
            raise
        if self.metrics:
            self.metrics.hub_ts.set(self.processed_ts)
            self.metrics.query_instances.set(self.instance_count)
            self.metrics.subscriptions.set(self.subscription_count)
            if notified_at is not None:
                self.metrics.transition_latency.observe(time.perf_counter() - notified_at)
            if log_slice.drawn_at is not None:
                self.metrics.hub_lag.set(max(0.0, time.time() - log_slice.drawn_at))

    def _advance_quietly(self) -> bool:
        """Advance to the newest ts M such that every commit in (processed, M] announced its changes, when none of
        them touches a live query: every result at the processed ts is then also the result at M, so no snapshot
        is needed. Most writes nobody watches end here; the round reads the database only for what is left (a ts
        not announced yet, a waiter past M, a reconnect)."""
        upto, changes = self._announced.contiguous(self.processed_ts)
        if upto == self.processed_ts:
            return False
        stale: set[int] = set()
        self._match(changes, stale)
        live = self._instances.by_id
        if any(i in live for i in stale):  # not set.isdisjoint(dict): that walks the whole dict
            return False
        self.processed_ts = upto
        self._announced.forget_through(upto)
        self._release_waiters()
        return True

    def _wait_for_local_commit(self) -> bool:
        """Whether to end this round at once, because a ts below an announced one is missing while commits of this
        process are on their way back: one of them most likely drew it, and its announcement is a wake-up away,
        where reading the log now would find it not yet visible and settle. Waits at most `_GAP_WAIT_S` for a
        gap: then the round reads the log as usual (a gap left by another process or an aborted commit)."""
        if not self.database.committing:
            return False
        loop = asyncio.get_running_loop()
        if self._gap_timer is None:
            self._gap_timer = loop.call_later(_GAP_WAIT_S, self._wakeup.set)
        elif loop.time() >= self._gap_timer.when():
            return False
        self.gap_waits += 1
        if self.metrics:
            self.metrics.hub_gap_waits.inc()
        return True

    def _end_gap_wait(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None

    def _finish_quietly(self, notified_at: float | None) -> None:
        self.rounds += 1
        self.quiet_rounds += 1
        if self.metrics:
            self.metrics.hub_quiet.inc()
            self.metrics.hub_ts.set(self.processed_ts)
            if notified_at is not None:
                self.metrics.transition_latency.observe(time.perf_counter() - notified_at)

    def _hinted_instance(self) -> QueryInstance | None:
        """An instance the announced changes invalidate (the lowest id, so a hint is stable), if any."""
        stale: set[int] = set()
        self._match(self._announced.after(self.processed_ts), stale)
        live = [i for i in stale if i in self._instances.by_id]
        return self._instances.by_id[min(live)] if live else None

    async def _run_hinted(
        self, conn: asyncpg.Connection, inst: QueryInstance
    ) -> tuple[Outcome | None, RoundHead | None]:
        """Re-run `inst` with the round's head read inside its first statement; the head is None when the run made
        no statement. The outcome is None when a statement failed: the round re-runs it without the rewrite, so an
        error it delivers is the query's own."""
        self._head = None
        snap = Snapshot(conn, self.processed_ts, first_statement=with_round_head(self.processed_ts))
        outcome = await self._rerun(inst, snap)
        head, self._head = self._head, None
        if snap.failed:
            return None, head
        if head is not None:
            outcome.ts = head.snapshot_ts
        return outcome, head

    async def _rerun(self, inst: QueryInstance, snap: Snapshot) -> Outcome:
        """Run `inst` in `snap`; after a failed statement, back to the savepoint (`snap.failed` tells)."""
        snap.failed = False
        outcome = await self.runner.run_query(inst.spec, inst.kwargs, inst.caller, snap, inst.journal)
        if self.metrics:
            self.metrics.reruns.inc()
        if snap.failed:
            await snap.conn.execute(_RECOVER)
        return outcome

    def _round_notice(self, conn: Any, message: Any) -> None:
        if getattr(message, "message", None) == ROUND_NOTICE:
            self._head = RoundHead.parse(message.detail)

    async def _settle(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.execute(_SETTLE)
        except asyncpg.LockNotAvailableError:
            holders = await conn.fetchval(_CLOCK_HOLDERS_SQL)
            raise RippleError(
                f"the hub waited {_SETTLE_TIMEOUT} for transactions that drew a commit ts to finish (backend pids "
                f"{holders}); a transaction should not stay open after it has its ts"
            ) from None

    def _release_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.processed_ts:
            _, _, fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(self.processed_ts)

    async def _connection(self) -> asyncpg.Connection:
        """The hub's own connection, inside a REPEATABLE READ, READ ONLY transaction whose snapshot the round's
        first query will take. No pool checkout or reset between rounds; a failed round drops the connection,
        and with it the clock key if the round held it."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
            await init_connection(self._conn)
            self._conn.add_log_listener(self._round_notice)
            await self._conn.execute(_BEGIN)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _invalidated(self, log_slice: LogSlice) -> set[int]:
        """Instances whose read sets the commits in (processed_ts, S] touched."""
        if log_slice.horizon > self.processed_ts:
            log.warning("the commit log was pruned past ts %d; re-running every query", self.processed_ts)
            return set(self._instances.by_id)
        stale: set[int] = set()
        if log_slice.tables is not None:
            for table in log_slice.tables:
                stale |= self.index.instances_reading(table)
            return stale
        self._match(log_slice.changes, stale)
        if self.metrics:
            self.metrics.invalidations.inc(len(stale))
        return stale

    def _match(self, changes: list[Change], stale: set[int]) -> None:
        for change in changes:
            indexes = self._indexes.get(change.table)
            if indexes is None:
                continue
            old = dict(change.old_keys, _id=change.doc_id) if change.old_keys is not None else None
            new = dict(change.new_keys, _id=change.doc_id) if change.new_keys is not None else None
            self.index.match(change.table, indexes, old, new, stale)

    def _record(
        self,
        inst: QueryInstance,
        outcome: Outcome,
        deliveries: dict[Subscriber, list[tuple[int, QueryResult]]],
        delivered: set[int],
        new: dict[int, set[int]],
    ) -> list[QueryInstance]:
        """Store a run's result, re-index its reads, queue deliveries if it changed; return instances to run."""
        result = QueryResult.from_outcome(outcome)
        inst.journal = outcome.journal
        self.index.put(inst.id, outcome.read_set.ranges)
        split: list[QueryInstance] = []
        for moved, token in self._instances.rekey(inst, outcome.reads_auth):
            new[moved.id].add(token)
            if moved.result is None and moved not in split:
                split.append(moved)
        if inst.result is None or result.wire != inst.result.wire:
            inst.result = result
            for token, (session, _) in inst.subscribers.items():
                deliveries[session].append((token, result))
                delivered.add(token)
        return split

    def _apply_requests(
        self,
        requests: list[_Subscribe | int],
        new: dict[int, set[int]],
        deliveries: dict[Subscriber, list[tuple[int, QueryResult]]],
    ) -> None:
        """Attach and detach subscriptions; `new` collects instance id → tokens awaiting a first delivery."""
        for req in requests:
            if isinstance(req, int):
                self._detach(req)
                for tokens in new.values():
                    tokens.discard(req)
                continue
            try:
                if isinstance(req.args, Exception):
                    raise ArgumentError(f"{req.path}: {req.args}")
                spec = self.runner.resolve(req.path)
                if spec.kind is not FunctionKind.QUERY:
                    raise RippleError(f"{spec.path} is a {spec.kind.value}; only queries can be subscribed to")
                inst = self._instances.attach(spec, req.session, req.token, req.args, req.journal, req.caller)
            except Exception as exc:  # a bad subscription fails alone, in order with the round's results
                deliveries[req.session].append((req.token, QueryResult.from_outcome(Outcome(req.path, error=exc))))
                continue
            new[inst.id].add(req.token)

    def _detach(self, token: int) -> None:
        gone = self._instances.detach(token)
        if gone is not None:
            self.index.remove(gone.id)

    # Housekeeping.

    async def _prune_loop(self) -> None:
        """Delete log rows older than the retention, but only after the hub has processed something new."""
        pruned_at = self.processed_ts
        while not self._closing:
            await asyncio.sleep(self.settings.prune_interval_s)
            if self.processed_ts == pruned_at:
                continue
            try:
                await self.database.pool.execute("SELECT _ripple_prune($1)", self.settings.log_retention_s * 1000.0)
                pruned_at = self.processed_ts
            except Exception:
                log.exception("pruning the commit log failed; will try again")
