"""Cron jobs (server/crons.py) on a real PostgreSQL and real servers: ticks, once across processes, overlap."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from functions import crons as seed_crons
from server.crons import CronExecutor, Crons, CronSchedule, IntervalSchedule
from tests.support.server import ADMIN_KEY, ISSUER, JWT_SECRET, ROOT, run_server

MODULES = ["tests.support.testing_app", "tests.support.cron_app"]


def ms(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp() * 1000.0  # type: ignore[misc]


def test_schedules_compute_the_next_time() -> None:
    every5 = CronSchedule("*/5 * * * *")
    assert every5.next_after(ms(2026, 1, 1, 0, 3)) == ms(2026, 1, 1, 0, 5)
    assert every5.next_after(ms(2026, 1, 1, 0, 5)) == ms(2026, 1, 1, 0, 10)  # strictly after
    assert CronSchedule("30 17 * * *").next_after(ms(2026, 1, 1, 18, 0)) == ms(2026, 1, 2, 17, 30)
    assert IntervalSchedule(200).next_after(1000) == 1200
    assert IntervalSchedule(200).next_after(1100) == 1200
    crons = Crons()
    crons.weekly("w", {"dayOfWeek": "tuesday", "hourUTC": 9, "minuteUTC": 15}, "m:f")
    crons.monthly("m", {"day": 31, "hourUTC": 0}, "m:f")
    crons.hourly("h", {"minuteUTC": 7}, "m:f")
    # 2026-01-01 is a Thursday: the next Tuesday is the 6th; February has no 31st.
    assert crons.jobs["w"].schedule.next_after(ms(2026, 1, 1)) == ms(2026, 1, 6, 9, 15)
    assert crons.jobs["m"].schedule.next_after(ms(2026, 1, 31, 1)) == ms(2026, 3, 31)
    assert crons.jobs["h"].schedule.next_after(ms(2026, 1, 1, 0, 7)) == ms(2026, 1, 1, 1, 7)


def test_bad_declarations_say_what_is_wrong() -> None:
    crons = Crons()
    with pytest.raises(ValueError, match="not a valid cron expression"):
        crons.cron("bad", "*/5 * *", "m:f")
    with pytest.raises(ValueError, match="seconds"):
        crons.interval("bad", {"days": 1}, "m:f")
    with pytest.raises(ValueError, match="hourUTC must be a whole number from 0 to 23"):
        crons.daily("bad", {"hourUTC": 24}, "m:f")
    crons.interval("once", {"minutes": 1}, "m:f")
    with pytest.raises(ValueError, match="declared twice"):
        crons.interval("once", {"minutes": 2}, "m:f")


async def runs(dsn: str, name: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT _creation_time, scheduled_time, completed_time, state ->> 'kind' AS kind,"
            " state ->> 'error' AS error FROM _scheduled_functions WHERE name = $1 ORDER BY scheduled_time",
            name,
        )
    finally:
        await conn.close()


async def test_interval_jobs_run_repeatedly_and_failures_show(fresh_dsn: str) -> None:
    async with run_server(fresh_dsn, modules=MODULES, crons_enabled=True) as ripple:
        await asyncio.sleep(1.6)
        ticks = await runs(fresh_dsn, "crontest:tick")
        done = [r for r in ticks if r["kind"] == "success"]
        assert len(done) >= 4, ticks
        times = [r["scheduled_time"] for r in ticks]
        assert all(t % 200 == 0 for t in times) and len(set(times)) == len(times)
        videos = await ripple.call("testing:videosOf", {"twitchId": "cron-tick"})
        assert len(videos) >= len(done)
        failed = [r for r in await runs(fresh_dsn, "crontest:fails") if r["kind"] == "failed"]
        assert len(failed) >= 3
        assert "the cron job failed on purpose" in failed[0]["error"]


async def test_a_slow_job_skips_the_ticks_it_overlaps(fresh_dsn: str) -> None:
    async with run_server(fresh_dsn, modules=MODULES, crons_enabled=True):
        await asyncio.sleep(2.5)
    slow = [r for r in await runs(fresh_dsn, "crontest:slow") if r["kind"] == "success"]
    assert len(slow) >= 2, slow
    for before, after in zip(slow, slow[1:], strict=False):
        # The next run was made only once the one before it had finished: ticks in between were skipped.
        assert after["_creation_time"] >= before["completed_time"]
        assert after["scheduled_time"] - before["scheduled_time"] >= 400


@asynccontextmanager
async def other_process(dsn: str) -> AsyncIterator[None]:
    env = dict(
        os.environ,
        DATABASE_URL=dsn,
        RIPPLE_JWT_SECRET=JWT_SECRET,
        RIPPLE_JWT_ISSUER=ISSUER,
        RIPPLE_ADMIN_KEY=ADMIN_KEY,
        RIPPLE_MODULES=json.dumps(MODULES),
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--log-level", "warning"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
        assert proc.poll() is None, "the other process stopped early: it took no ticks"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_two_processes_run_each_tick_once(fresh_dsn: str) -> None:
    async with run_server(fresh_dsn, modules=MODULES, crons_enabled=True) as ripple, other_process(fresh_dsn):
        await asyncio.sleep(4)
        ticks = await runs(fresh_dsn, "crontest:tick")
        times = [r["scheduled_time"] for r in ticks]
        assert len(times) >= 10 and len(set(times)) == len(times), times
        videos = await ripple.call("testing:videosOf", {"twitchId": "cron-tick"})
        succeeded = [r for r in await runs(fresh_dsn, "crontest:tick") if r["kind"] == "success"]
        assert len(videos) == len(succeeded)


async def test_the_seed_cron_fails_a_stalled_video_job(fresh_dsn: str) -> None:
    async with run_server(fresh_dsn, scheduler_check_interval_s=0.05) as ripple:
        old = time.time() * 1000 - 31 * 60_000
        stalled = await ripple.call(
            "testing:insert",
            {
                "table": "videos",
                "doc": {"twitchId": "stalled", "title": "t", "status": "Transcribing", "updatedAt": old},
            },
        )
        fresh = await ripple.call(
            "testing:insert",
            {
                "table": "videos",
                "doc": {"twitchId": "alive", "title": "t", "status": "Transcribing", "updatedAt": time.time() * 1000},
            },
        )
        job = seed_crons.crons.jobs["fail stalled video jobs"]
        cron = CronExecutor(ripple.services.database, [job])
        assert await cron.run_tick(job, time.time() * 1000) == "scheduled"
        deadline = time.monotonic() + 5
        while (await ripple.call("testing:get", {"id": stalled}))["status"] != "Failed":
            assert time.monotonic() < deadline, "the stalled job was not failed"
            await asyncio.sleep(0.05)
        doc: Any = await ripple.call("testing:get", {"id": stalled})
        assert doc["errorType"] == "processing_timeout" and doc["isRetryable"] is True
        assert (await ripple.call("testing:get", {"id": fresh}))["status"] == "Transcribing"
