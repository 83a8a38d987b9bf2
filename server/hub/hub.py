"""`Hub`: keeps every subscribed query's result current, one consistent snapshot at a time.

One task runs rounds, a plain loop: take the queued subscribe/unsubscribe requests; learn what changed since the
processed ts P (changelog.py, the one owner of that answer); invalidate through the ReadSetIndex; re-run the
invalidated and new instances in one snapshot at its ts S; hand each session its changed results, each session
in isolation; only then advance `processed_ts` to S and wake the waiters. A round that fails before delivering
publishes nothing (results, read sets and `processed_ts` stay at P), so its retry re-runs the same instances.

Rounds happen when a commit is announced, a subscription arrives, the LISTEN connection came back, or nothing
was read for `log_check_interval_s` (a NOTIFY may be lost): while nothing changes, only that look queries.
When the announced changes touch no live query, a round needs no snapshot at all (`quiet_advance`).

Others learn what changed from the rounds too (`on_tables_changed`: the scheduler wakes for jobs another process or
plain SQL scheduled), from what a round already knows, at no extra query; the hub knows none of them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.database.announce import Announcement, Change
from server.database.catalog import Catalog
from server.database.database import Database, Snapshot
from server.database.reads import IndexRange
from server.errors import ArgumentError, FunctionNotFound, RippleError
from server.functions.context import Caller
from server.functions.registry import FunctionKind, FunctionSpec, Registry
from server.functions.runner import Outcome, Runner
from server.hub.changelog import (
    NEXT_SNAPSHOT,
    RECOVER,
    Announcements,
    Changes,
    prune_forever,
    quiet_advance,
    read_since,
    settled_head,
)
from server.hub.changes import ChangeFeed
from server.hub.health import DatabaseWatch
from server.hub.index import ReadSetIndex
from server.hub.instances import Instances, QueryInstance, QueryResult, Subscriber
from server.hub.snapshot import HubConnection
from server.hub.supervise import Supervisor

if TYPE_CHECKING:
    from server.config import Settings
    from server.metrics import Metrics

__all__ = ["Hub", "TablesChanged"]

log = logging.getLogger("ripple.hub")

Deliveries = dict[Subscriber, list[tuple[int, QueryResult]]]

# Told the tables that the commits of a round changed (any process's, plain SQL's), or None when the hub cannot say
# which (the log was pruned past them): a hint, called in the hub's task, so it must return at once and not raise.
TablesChanged = Callable[[frozenset[str] | None], None]


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


class _Ran:
    """One re-run of a round, published (result, read set, journal) only once the whole round succeeded."""

    __slots__ = ("inst", "journal", "ranges", "result")

    def __init__(self, inst: QueryInstance, outcome: Outcome) -> None:
        self.inst = inst
        self.result = QueryResult.from_outcome(outcome)
        self.journal = outcome.journal
        self.ranges: list[IndexRange] = list(outcome.read_set.ranges)


class Hub:
    def __init__(
        self,
        dsn: str,
        database: Database,
        runner: Runner,
        *,
        settings: Settings,
        metrics: Metrics | None = None,
        pooled: bool = False,
        listen: bool = True,
    ) -> None:
        """`dsn` is the hub's own connection (its snapshot, and LISTEN); `pooled` says it goes through a
        transaction pooler, `listen=False` that LISTEN cannot work there (rounds then come from the periodic look
        at the log, every `log_check_interval_s`)."""
        self.database = database
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        if metrics is not None:
            # Read when /metrics is scraped, so they are right also after rounds that only (un)subscribed.
            metrics.query_instances.set_function(lambda: self.instance_count)
            metrics.subscriptions.set_function(lambda: self.subscription_count)
        self._listen = listen
        self._conn = HubConnection(dsn, pooled=pooled, timeout_s=settings.hub_read_timeout_s)
        self.feed = ChangeFeed(
            dsn,
            self._wake,
            reconnect_max_s=settings.listen_reconnect_max_s,
            probe_interval_s=settings.listen_probe_interval_s,
            probe_timeout_s=settings.listen_probe_timeout_s,
        )
        self.watch = DatabaseWatch(
            database.pool,
            lambda: self.processed_ts,
            lambda: self.healthy,
            interval_s=settings.database_check_interval_s,
            timeout_s=settings.database_check_timeout_s,
            outage_after_s=settings.outage_close_after_s,
            metrics=metrics,
        )
        database.on_commit.append(self._wake)
        self.index = ReadSetIndex()
        self.processed_ts = 0
        self.rounds = 0  # rounds that processed a commit or delivered something
        self.looks = 0  # log reads that found nothing to do (the periodic look while nothing changes)
        self.quiet_rounds = 0  # rounds whose announced changes touched no live query: no query at all
        self._instances = Instances(runner.validate)
        self._requests: list[_Subscribe | int] = []
        # Survive a failed round (their requests are already applied): tokens awaiting their first result, by
        # instance id, and refused subscriptions' errors.
        self._pending_new: dict[int, set[int]] = defaultdict(set)
        self._refused: dict[int, tuple[Subscriber, QueryResult]] = {}
        self._announced = Announcements()
        self._wakeup = asyncio.Event()
        self._look = True  # anything may have happened (start, a reconnect, a failed round): read the log
        self._looked_at = 0.0  # loop time of the last log read
        self._waiters: list[tuple[int, int, asyncio.Future[int]]] = []
        self._waiter_seq = 0
        self._next_token = 0
        self._notified_at: float | None = None
        self._indexes = self._index_fields(database.catalog)
        self._reloaded = False  # new code is in place: every instance takes its function anew and re-runs
        self.on_tables_changed: list[TablesChanged] = []
        self.tasks = Supervisor(on_restart=lambda _name: self._wake(None), max_delay_s=settings.listen_reconnect_max_s)

    @staticmethod
    def _index_fields(catalog: Catalog) -> dict[str, dict[str, tuple[str, ...]]]:
        return {t.name: {i.name: i.key_fields for i in t.indexes.values()} for t in catalog.tables.values()}

    # Lifecycle.

    async def start(self) -> None:
        self.processed_ts = await settled_head(await self._conn.get())
        self._look = False
        self._looked_at = asyncio.get_running_loop().time()
        self.tasks.start("ripple-hub", self._run)
        self.tasks.start(
            "ripple-prune",
            lambda: prune_forever(
                self.database.pool,
                self.settings.log_retention_s,
                self.settings.prune_interval_s,
                lambda: self.processed_ts,
            ),
        )
        self.tasks.start("ripple-database-watch", self.watch.run)
        if self._listen:
            await self.feed.start()
            self.tasks.start("ripple-change-feed", self.feed.keep_alive)

    async def close(self, reason: str) -> None:
        await self.tasks.close()
        await self.feed.close()
        self._conn.drop()
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        log.info("hub closed: %s", reason)

    @property
    def listen_mode(self) -> str:
        """How commits reach this hub: "listen" (NOTIFY wake-ups), "lost" (LISTEN reconnecting) or "polling" (behind a
        transaction pooler without RIPPLE_LISTEN_DATABASE_URL: the periodic log check only)."""
        if not self._listen:
            return "polling"
        return "listen" if self.feed.connected else "lost"

    @property
    def healthy(self) -> bool:
        """Whether every long-lived task of the hub is running (one that died is restarted after a backoff)."""
        return self.tasks.healthy

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

    def reload(self, registry: Registry, catalog: Catalog | None = None) -> None:
        """Serve `registry` (and `catalog`, when the schema changed) from now on (`ripple dev`): new calls resolve
        there at once; at the next round every instance takes its function anew and re-runs, so each subscriber
        gets the new code's result. One whose function is gone, or no longer takes its arguments, fails."""
        if catalog is not None:
            self.database.catalog = catalog
            self._indexes = self._index_fields(catalog)
        self.runner.reload(registry)
        self._reloaded = True
        self._look = True
        self._wakeup.set()

    def _respec(self) -> None:
        for inst in self._instances.by_id.values():
            try:
                spec = self.runner.resolve_for(inst.spec.path, inst.caller)
                if spec.kind is not FunctionKind.QUERY:
                    raise RippleError(f"{spec.path} is a {spec.kind.value} now; only queries can be subscribed to")
                inst.kwargs = self.runner.validate(spec, inst.args)
                inst.spec = spec
            except Exception as error:
                inst.spec = _failing(inst.spec, error)

    # The round loop.

    def _wake(self, said: Announcement | None = None) -> None:
        """A commit was announced (NOTIFY, or a mutation of this process), or anything may have happened (None)."""
        if said is not None and said.ts <= self.processed_ts:
            return
        if said is None or said.changes is None:
            self._look = True  # a ts alone (plain SQL, too many changes) or nothing: only the log can tell
        else:
            self._announced.add(said)
        if self._notified_at is None:
            self._notified_at = time.perf_counter()
        self._wakeup.set()

    async def _run(self) -> None:
        delay = 0.01
        while True:
            await self._next_wakeup()
            try:
                await self._round()
                delay = 0.01
            except Exception:
                # The database went away mid-round, or the clock key could not be had: nothing was published and
                # the requests were kept, so the retry is the same round, after a pause.
                log.exception("hub round failed; retrying in %.2f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.listen_reconnect_max_s)
                self._wakeup.set()

    async def _next_wakeup(self) -> None:
        """Wait for a wake-up; one `log_check_interval_s` after the last log read, look anyway: a NOTIFY that was
        lost (or never sent) then delays an update by at most that interval."""
        loop = asyncio.get_running_loop()
        timeout = self._looked_at + self.settings.log_check_interval_s - loop.time()
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._wakeup.wait()
        except TimeoutError:
            self._look = True
        self._wakeup.clear()

    async def _round(self) -> None:
        self._apply_requests()
        notified_at, self._notified_at = self._notified_at, None
        quiet = self._advance_quietly()
        if not self._needs_log():
            if quiet:
                self._count_round(notified_at, quiet=True)
            return
        self._look = False
        try:
            conn = await self._conn.get()
            self._looked_at = asyncio.get_running_loop().time()
            found = await self._conn.bounded(read_since(conn, self.processed_ts, self.settings.max_changes_per_round))
            self._tell_tables(_tables_of(found))
            ran = await self._rerun_all(Snapshot(conn, found.upto), self._stale(found))
            # Publish, deliver (before COMMIT: the snapshot is read-only, its results are final once read), then
            # advance: a round that failed above published nothing, and one that gets here delivers all it has.
            deliveries = self._publish(ran)
            self._deliver(found.upto, deliveries)
            self._advance(found.upto)
            if found.upto == found.after and not deliveries:
                self.looks += 1
            else:
                self._count_round(notified_at, quiet=False, found=found)
            await self._conn.bounded(conn.execute(NEXT_SNAPSHOT))
        except BaseException:
            self._look = True
            self._conn.drop()  # mid-statement or mid-transaction: start the next round afresh
            raise

    def _needs_log(self) -> bool:
        """Whether a round must read the log after all it could advance quietly: new subscriptions or refusals to
        deliver, a look asked for, a waiter or an announcement past what was proven."""
        return bool(self._look or self._pending_new or self._refused or self._waiters or self._announced)

    def _advance_quietly(self) -> bool:
        """Advance to M (`quiet_advance`) when the announced changes in (processed, M] touch no live query: every
        result at the processed ts is then also the result at M. Most writes nobody watches end here."""
        upto, changes = quiet_advance(self.processed_ts, self._announced)
        if upto == self.processed_ts or self._match(changes):
            return False
        self._tell_tables(frozenset(c.table for c in changes))
        self._advance(upto)
        return True

    def _tell_tables(self, tables: frozenset[str] | None) -> None:
        """Tell `on_tables_changed` what the commits now being processed changed, as soon as the round knows it
        (not after its re-runs: nothing there changes the answer). A round that fails and is retried tells again,
        which a hint allows. A listener that raises is logged and stops neither the round nor the others."""
        if tables is not None and not tables:
            return
        for listener in self.on_tables_changed:
            try:
                listener(tables)
            except Exception:
                log.exception("a listener of changed tables failed (%r); the hub goes on", listener)

    def _stale(self, found: Changes) -> set[int]:
        """Instances whose read sets the commits in (processed_ts, S] touched, plus those awaiting a first run."""
        live = self._instances.by_id
        if found.everything:
            log.warning("the commit log was pruned past ts %d; re-running every query", found.after)
            stale = set(live)
        elif found.tables is not None:
            stale = set().union(*(self.index.instances_reading(t) for t in found.tables))
        else:
            stale = self._match(found.changes)
            if self.metrics:
                self.metrics.invalidations.inc(len(stale))
        stale |= {i for i in self._pending_new if i in live and live[i].result is None}
        if self._reloaded:
            stale |= set(live)
            self._reloaded = False
        return stale

    def _match(self, changes: list[Change]) -> set[int]:
        """The live instances whose read sets contain a changed key (old or new)."""
        stale: set[int] = set()
        for change in changes:
            indexes = self._indexes.get(change.table)
            if indexes is None:
                continue
            old = dict(change.old_keys, _id=change.doc_id) if change.old_keys is not None else None
            new = dict(change.new_keys, _id=change.doc_id) if change.new_keys is not None else None
            self.index.match(change.table, indexes, old, new, stale)
        return stale

    async def _rerun_all(self, snap: Snapshot, ids: set[int]) -> dict[int, _Ran]:
        """Run every instance in `ids` in `snap`, and the instances split off them by caller; nothing published."""
        live = self._instances.by_id
        work = [live[i] for i in ids if i in live]
        ran: dict[int, _Ran] = {}
        while work:
            inst = work.pop()
            if inst.id not in live or inst.id in ran:
                continue
            outcome = await self._rerun(inst, snap)
            ran[inst.id] = _Ran(inst, outcome)
            for moved, token in self._instances.rekey(inst, outcome.reads_auth):
                self._pending_new[moved.id].add(token)
                if moved.result is None and moved.id not in ran:
                    work.append(moved)
            if inst.id not in live:  # split off to its subscribers' own instances: gone, whatever the round does
                self.index.remove(inst.id)
        return ran

    async def _rerun(self, inst: QueryInstance, snap: Snapshot) -> Outcome:
        """Run `inst` in `snap`; after a failed statement, back to the savepoint (`snap.failed` tells)."""
        snap.failed = False
        outcome = await self.runner.run_query(inst.spec, inst.kwargs, inst.caller, snap, inst.journal)
        if self.metrics:
            self.metrics.reruns.labels(inst.spec.path).inc()
        if snap.failed:
            await self._conn.bounded(snap.conn.execute(RECOVER))
        return outcome

    def _publish(self, ran: dict[int, _Ran]) -> Deliveries:
        """Store the round's results and read sets, and what each session is to receive: changed results, first
        results of new subscriptions, refusals. Pure bookkeeping: nothing here can fail halfway on I/O."""
        live = self._instances.by_id
        deliveries: Deliveries = defaultdict(list)
        sent: set[int] = set()
        for one in ran.values():
            inst = one.inst
            if inst.id not in live:
                continue
            inst.journal = one.journal
            self.index.put(inst.id, one.ranges)
            changed = inst.result is None or not one.result.same_as(inst.result)
            # The latest run's log lines go with the result (to later subscribers), but alone are no change.
            inst.result = one.result
            if changed:
                for token, (session, _) in inst.subscribers.items():
                    deliveries[session].append((token, one.result))
                    sent.add(token)
        for inst_id, tokens in self._pending_new.items():
            joined = live.get(inst_id)
            if joined is not None and joined.result is not None:
                for token in tokens - sent:
                    entry = joined.subscribers.get(token)
                    if entry is not None:
                        deliveries[entry[0]].append((token, joined.result))
        self._pending_new = defaultdict(set)
        for token, (session, refusal) in self._refused.items():
            deliveries[session].append((token, refusal))
        self._refused = {}
        return deliveries

    def _deliver(self, ts: int, deliveries: Deliveries) -> None:
        """Hand each session its results; one that raises is logged and costs no other session its results."""
        for session, updates in deliveries.items():
            try:
                session.deliver(ts, updates)
            except Exception:
                log.exception("delivering %d results at ts %d to session %s failed", len(updates), ts, _name(session))

    def _advance(self, ts: int) -> None:
        """The last step of a round: every result up to `ts` has been delivered."""
        self.processed_ts = max(self.processed_ts, ts)
        self._announced.forget_through(self.processed_ts)
        while self._waiters and self._waiters[0][0] <= self.processed_ts:
            _, _, fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(self.processed_ts)

    def _count_round(self, notified_at: float | None, *, quiet: bool, found: Changes | None = None) -> None:
        self.rounds += 1
        self.quiet_rounds += quiet
        if not self.metrics:
            return
        if quiet:
            self.metrics.hub_quiet.inc()
        if found is not None and found.settled:
            self.metrics.hub_settles.inc()
        self.metrics.hub_ts.set(self.processed_ts)
        if notified_at is not None:
            self.metrics.transition_latency.observe(time.perf_counter() - notified_at)

    # Requests.

    def _apply_requests(self) -> None:
        """Attach and detach subscriptions; a new token awaits its first result in `_pending_new`."""
        requests, self._requests = self._requests, []
        for req in requests:
            if isinstance(req, int):
                self._detach(req)
            else:
                self._attach(req)
        if self._reloaded:
            self._respec()

    def _attach(self, req: _Subscribe) -> None:
        try:
            if isinstance(req.args, Exception):
                raise ArgumentError(f"{req.path}: {req.args}")
            spec = self.runner.resolve_for(req.path, req.caller)
            if spec.kind is not FunctionKind.QUERY:
                raise RippleError(f"{spec.path} is a {spec.kind.value}; only queries can be subscribed to")
            inst = self._instances.attach(spec, req.session, req.token, req.args, req.journal, req.caller)
        except Exception as exc:  # a bad subscription fails alone, in order with the round's results
            self._refused[req.token] = (req.session, QueryResult.from_outcome(Outcome(req.path, error=exc)))
            return
        self._pending_new[inst.id].add(req.token)

    def _detach(self, token: int) -> None:
        self._refused.pop(token, None)
        for tokens in self._pending_new.values():
            tokens.discard(token)
        gone = self._instances.detach(token)
        if gone is not None:
            self.index.remove(gone.id)
            self._pending_new.pop(gone.id, None)


def _tables_of(found: Changes) -> frozenset[str] | None:
    """The tables the commits in `found` changed, at the precision the round has (None: any of them)."""
    if found.everything:
        return None
    if found.tables is not None:
        return frozenset(found.tables)
    return frozenset(c.table for c in found.changes)


def _name(session: Subscriber) -> str:
    return str(getattr(session, "session_id", None) or f"#{id(session):x}")


def _failing(spec: FunctionSpec, error: Exception) -> FunctionSpec:
    """`spec` as a function that fails with what a reload found wrong with it (it was removed, or its new
    parameters reject the subscription's arguments); a later reload that fixes it takes it back."""
    if isinstance(error, FunctionNotFound):
        error = FunctionNotFound(
            f"{spec.path} no longer exists in the reloaded code; subscribe to a function that does, or restore it"
        )

    async def fail(ctx: Any, **kwargs: Any) -> Any:
        raise error

    return FunctionSpec(spec.path, spec.kind, spec.visibility, fail, spec.args)
