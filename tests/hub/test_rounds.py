"""The hub's round loop against a real server: instances freed with their last subscriber and never run as a
departed caller, deliveries isolated per session, nothing published by a round that failed, supervised tasks,
and a commit whose NOTIFY never arrives."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from server import query
from server.hub.changes import CHANNEL
from server.hub.instances import QueryResult
from server.hub.supervise import Supervisor
from tests.support import testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import RippleServer
from tests.support.ws import SyncClient

READS_AUTH = [False]
RAN_AS: list[str | None] = []


@query(name="hubtest:maybeWho")
async def maybe_who(ctx: Any, twitch_id: str) -> list[Any]:
    """A row's count; and, while READS_AUTH says so, who is asking (so the instance is split by caller)."""
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    count = doc.get("progressPercentage", 0) if doc else -1
    if not READS_AUTH[0]:
        return [count, None]
    identity = await ctx.auth.get_user_identity()
    subject = identity["subject"] if identity else None
    RAN_AS.append(subject)
    return [count, subject]


class Recorder:
    """A subscriber that keeps what the hub delivered (or raises, while `fail` is set)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.fail = False
        self.results: dict[int, Any] = {}

    def deliver(self, ts: int, updates: list[tuple[int, QueryResult]]) -> None:
        if self.fail:
            raise RuntimeError("this session is broken")
        for token, result in updates:
            self.results[token] = json.loads("{" + result.wire)["value"]


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the hub")
        await asyncio.sleep(0.01)


async def sql(ripple: RippleServer, statement: str, *args: object) -> Any:
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


async def test_a_shared_instance_runs_as_a_subscriber_and_goes_with_its_last(ripple: RippleServer) -> None:
    """Alice makes a shared instance, Bob joins, Alice leaves: once the query reads auth, it must run as Bob (never
    as Alice, who no longer subscribes), and no instance may be left without subscribers."""
    hub = ripple.services.hub
    await sql(ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('lk', 't', 'Q', 1)")
    alice, bob = Recorder("alice"), Recorder("bob")
    ta, tb = hub.new_token(), hub.new_token()
    args = {"twitchId": "lk"}
    RAN_AS.clear()
    try:
        hub.subscribe(alice, ta, "hubtest:maybeWho", args, None, await ripple.caller("alice"))
        await until(lambda: ta in alice.results)
        hub.subscribe(bob, tb, "hubtest:maybeWho", args, None, await ripple.caller("bob"))
        await until(lambda: tb in bob.results)
        assert hub.instance_count == 1  # shared while it ignores auth
        hub.unsubscribe(ta)
        READS_AUTH[0] = True
        await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'lk'")
        await until(lambda: bob.results[tb] == [2, "bob"])
        assert set(RAN_AS) == {"bob"}, RAN_AS
        assert (hub.instance_count, hub.subscription_count, len(hub.index)) == (1, 1, 1)

        # Split by caller while both subscribe: one instance each, each run as its own subscriber.
        tc = hub.new_token()
        hub.subscribe(alice, tc, "hubtest:maybeWho", args, None, await ripple.caller("alice"))
        await until(lambda: alice.results.get(tc) == [2, "alice"])
        assert (hub.instance_count, len(hub.index)) == (2, 2)
        hub.unsubscribe(tb)
        hub.unsubscribe(tc)
        await until(lambda: hub.instance_count == 0)
        assert (hub.subscription_count, len(hub.index)) == (0, 0)
    finally:
        READS_AUTH[0] = False


async def test_a_session_whose_deliver_raises_costs_no_other_session_its_results(
    ripple: RippleServer, caplog: pytest.LogCaptureFixture
) -> None:
    hub = ripple.services.hub
    caller = await ripple.caller()
    broken, fine = Recorder("broken-session-7"), Recorder("fine")
    tokens = {s: hub.new_token() for s in (broken, fine)}
    for session in (broken, fine):  # the broken one first: its failure must not end the round's deliveries
        hub.subscribe(session, tokens[session], "testing:count", {"twitchId": "dl"}, None, caller)
    await until(lambda: all(tokens[s] in s.results for s in (broken, fine)))
    broken.fail = True
    with caplog.at_level(logging.ERROR, logger="ripple.hub"):
        await sql(
            ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('dl', 't', 'Q', 1)"
        )
        await until(lambda: fine.results[tokens[fine]] == 1)
        await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'dl'")  # and the next round
        await until(lambda: fine.results[tokens[fine]] == 2)
    assert "session broken-session-7 failed" in caplog.text


async def test_a_round_that_fails_before_delivering_publishes_nothing(ripple: RippleServer) -> None:
    """A round whose connection dies while a re-run waits for a lock: `processed_ts` stays where it was, and the
    retry delivers every result of that round, also those whose re-runs had finished before the failure."""
    hub = ripple.services.hub
    caller = await ripple.caller()
    await sql(ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('rf', 't', 'Q', 1)")
    rec = Recorder("rf")
    good: dict[int, int] = {}
    slow = hub.new_token()
    for k in (1, 2, 3):
        good[hub.new_token()] = k
        hub.subscribe(rec, next(reversed(good)), "testing:counts", {"twitchIds": ["rf"] * k}, None, caller)
    hub.subscribe(rec, slow, "testing:countThenFirst", {"twitchId": "rf", "table": "agentSessions"}, None, caller)
    for k in (4, 5, 6):
        good[hub.new_token()] = k
        hub.subscribe(rec, next(reversed(good)), "testing:counts", {"twitchIds": ["rf"] * k}, None, caller)
    await until(lambda: len(rec.results) == 7)

    async def hub_waits_for_the_lock() -> int:
        pid = 0
        for _ in range(500):
            pid = hub._conn.backend_pid or 0
            waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
            if pid and await sql(ripple, waiting, pid):  # not in the locker's transaction: its view is frozen
                return pid
            await asyncio.sleep(0.01)
        raise AssertionError("the hub's re-run never waited for the lock")

    locker = await asyncpg.connect(ripple.settings.database_url)
    try:
        await locker.execute("BEGIN; LOCK TABLE agent_sessions IN ACCESS EXCLUSIVE MODE")
        before = hub.processed_ts
        await sql(ripple, "UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'rf'")
        ts = await sql(ripple, "SELECT _ripple_latest_ts()")
        pid = await hub_waits_for_the_lock()
        await sql(ripple, "SELECT pg_terminate_backend($1)", pid)
        await until(lambda: hub._conn.backend_pid not in (None, pid))
        await hub_waits_for_the_lock()  # the retry, waiting again
        assert hub.processed_ts == before < ts
        assert all(rec.results[t] == [1] * k for t, k in good.items())
        await locker.execute("ROLLBACK")
    finally:
        await locker.close()
    await until(lambda: rec.results[slow] == [2, None])
    assert all(rec.results[t] == [2] * k for t, k in good.items())
    assert hub.processed_ts >= ts


async def test_a_hub_task_that_dies_is_restarted(ripple: RippleServer, caplog: pytest.LogCaptureFixture) -> None:
    hub = ripple.services.hub
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:count", {"twitchId": "sv"})
    for name in ("ripple-hub", "ripple-change-feed", "ripple-prune"):
        task = hub.tasks.task(name)
        assert task is not None
        with caplog.at_level(logging.ERROR, logger="ripple.hub"):
            task.cancel()
            await until(lambda name=name, task=task: hub.tasks.task(name) not in (None, task))
        assert hub.tasks.restarts[name] == 1 and f"task {name} was cancelled from outside" in caplog.text
    assert hub.healthy
    await sql(ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('sv', 't', 'Q', 4)")
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 4)
    await client.close()


async def test_the_supervisor_restarts_a_task_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    restarted: list[str] = []
    forever = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run breaks")
        await forever.wait()

    tasks = Supervisor(on_restart=restarted.append)
    with caplog.at_level(logging.ERROR, logger="ripple.hub"):
        tasks.start("flaky", flaky)
        await until(lambda: len(runs) == 2)
    assert restarted == ["flaky"] and tasks.restarts["flaky"] == 1 and tasks.healthy
    assert "task flaky died" in caplog.text and "first run breaks" in caplog.text
    await tasks.close()
    assert tasks.task("flaky") is None or tasks.task("flaky").done()  # type: ignore[union-attr]


async def test_a_commit_whose_notify_never_arrives_reaches_subscribers_within_the_interval(
    ripple: RippleServer,
) -> None:
    hub = ripple.services.hub
    client = await SyncClient.connect(ripple.ws_url)
    qid = await client.subscribe("testing:count", {"twitchId": "nn"})
    assert hub.feed._conn is not None
    await hub.feed._conn.remove_listener(CHANNEL, hub.feed._notified)  # UNLISTEN: no NOTIFY reaches the hub
    started = time.monotonic()
    await sql(ripple, "INSERT INTO videos (twitch_id, title, status, progress_percentage) VALUES ('nn', 't', 'Q', 5)")
    await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == 5, timeout_s=5)
    assert time.monotonic() - started < ripple.settings.log_check_interval_s + 1.0
    await client.close()
