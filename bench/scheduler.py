"""Phase 7, the scheduler: how late a scheduled function starts, and how fast a backlog drains, each against a
floor measured in the same run.

* Latency: jobs scheduled 10 ms ahead (`bench:schedule` over the HTTP API, one at a time, spaced so they never
  overlap); `bench:stamp` records when its handler started, in the server's clock, beside the due time the same
  clock gave. Floor: this process does what the executor must at least do, with no server: an asyncio timer to
  the due time, the executor's due-jobs query, and its claim (`FOR UPDATE SKIP LOCKED`) in a SERIALIZABLE
  transaction; "started" is when the claim returned. The timer's own lateness is reported beside it.
* Throughput: a backlog of jobs all due at one instant, scheduled before it; rate = jobs / (last completion -
  first completion), from `_scheduled_functions.completedTime`. Floor: one asyncpg connection running the same
  claim-run-mark SQL (due batch, claim, the stamp's insert, mark succeeded, commit) over a copy of the table,
  serially as the executor does.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.harness import Harness
from bench.report import fx, log, ms, pct, ratio

__all__ = ["SchedulerPhase"]

DELAY_MS = 10.0
# The executor's own statements (server/scheduler.py), on the floor's copy of the table.
_DUE = """
SELECT _id, name, args FROM bench_raw.sched
WHERE (state ->> 'kind') = 'pending' AND scheduled_time <= $1
ORDER BY scheduled_time, _creation_time LIMIT $2
"""
_CLAIM = "SELECT 1 FROM bench_raw.sched WHERE _id = $1 AND (state ->> 'kind') = 'pending' FOR UPDATE SKIP LOCKED"
_STAMP = (
    "INSERT INTO bench_raw.videos (twitch_id, title, status, progress_percentage, updated_at) "
    "VALUES ($1, 'scheduled', 'Queued', $2, $3)"
)
_MARK = """UPDATE bench_raw.sched SET state = '{"kind": "success"}', completed_time = $2 WHERE _id = $1"""
_NEW_JOB = """
INSERT INTO bench_raw.sched (_id, _creation_time, name, args, scheduled_time, state)
VALUES ($1, $2, 'bench:stamp', $3::jsonb, $4, '{"kind": "pending"}')
"""


def _now_ms() -> float:
    return time.time() * 1000.0


class SchedulerPhase(Harness):
    async def phase_scheduler(self) -> None:
        cfg = self.cfg
        await self.conn.execute(
            """
            CREATE TABLE IF NOT EXISTS bench_raw.sched (LIKE public._scheduled_functions INCLUDING DEFAULTS
                INCLUDING INDEXES);
            TRUNCATE bench_raw.sched;
            """
        )
        log(f"scheduler floor: timer + due query + claim, {cfg.sched_jobs} jobs {DELAY_MS:.0f} ms ahead")
        floor_late, timer_late = await self._floor_latency(cfg.sched_jobs, cfg.sched_gap_s)
        log(f"scheduler floor: claim-run-mark over a backlog of {cfg.sched_backlog}")
        floor_rate = await self._floor_backlog(cfg.sched_backlog)

        srv = await self.server("scheduler")
        try:
            log(f"scheduler Ripple: {cfg.sched_jobs} jobs {DELAY_MS:.0f} ms ahead, one every {cfg.sched_gap_s} s")
            late, missing = await self._ripple_latency(srv.url, cfg.sched_jobs, cfg.sched_gap_s)
            log(f"scheduler Ripple: a backlog of {cfg.sched_backlog}")
            c0 = srv.cpu_s()
            rate = await self._ripple_backlog(srv.url, cfg.sched_backlog)
            cpu = srv.cpu_s() - c0
        finally:
            await self.release(srv)

        p50, p99, f50, f99 = pct(late, 50), pct(late, 99), pct(floor_late, 50), pct(floor_late, 99)
        self.add(
            f"7. scheduled {DELAY_MS:.0f} ms ahead: due → function start p50",
            ms(p50),
            ms(f50),
            fx(ratio(p50, f50)),
            "≤ 5 ms late",
            p50 <= 5.0,
        )
        # On a loaded machine the floor's own timer is late by tens of ms at p99: the target is then 2x that floor.
        self.add(
            "7. due → function start p99",
            ms(p99),
            ms(f99),
            fx(ratio(p99, f99)),
            "≤ 20 ms, or ≤ 2x a slower floor",
            p99 <= max(20.0, 2 * f99),
        )
        r = ratio(rate, floor_rate)
        self.add(
            f"7. scheduled mutations run per second, a backlog of {cfg.sched_backlog} (info)",
            f"{rate:.0f}/s",
            f"{floor_rate:.0f}/s",
            f"{r * 100:.0f}%",
            "",
            None,
        )
        self.note(
            f"7. scheduler: {len(late)} of {cfg.sched_jobs} latency jobs measured"
            + (f" ({missing} never ran)" if missing else "")
            + f"; the floor's asyncio timer alone woke p50 {ms(pct(timer_late, 50))} / p99 {ms(pct(timer_late, 99))}"
            f" after the due time; Ripple max {ms(max(late, default=math.nan))}; server CPU "
            f"{cpu / max(1, cfg.sched_backlog) * 1e3:.2f} ms per backlog job (claim, handler, success, commit, the "
            "hub's round)"
        )
        self.report.data["scheduler"] = {
            "p50_ms": p50,
            "p99_ms": p99,
            "floor_p50_ms": f50,
            "floor_p99_ms": f99,
            "rate": rate,
            "floor_rate": floor_rate,
        }

    async def _mutation(self, http: Any, url: str, path: str, args: dict[str, Any]) -> Any:
        response = await http.post(url + "/api/mutation", json={"path": path, "args": args, "format": "json"})
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} failed: {body}")
        return body["value"]

    async def _ripple_latency(self, url: str, n: int, gap_s: float) -> tuple[list[float], int]:
        import httpx

        prefix = f"sl{self.next_seq()}-"
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i * gap_s - time.perf_counter()))
                await self._mutation(http, url, "bench:schedule", {"tags": [f"{prefix}{i}"], "delayMs": DELAY_MS})
        await asyncio.sleep(1.0)
        rows = await self.conn.fetch(
            "SELECT progress_percentage AS due, updated_at AS started FROM videos WHERE twitch_id LIKE $1", prefix + "%"
        )
        return [float(r["started"] - r["due"]) for r in rows], n - len(rows)

    async def _ripple_backlog(self, url: str, n: int) -> float:
        import httpx

        prefix = f"sb{self.next_seq()}-"
        tags = [f"{prefix}{i}" for i in range(n)]
        at = _now_ms() + 500.0 + 0.5 * n  # every job is in the table before the first is due
        async with httpx.AsyncClient(timeout=60) as http:
            for start in range(0, n, 1000):
                await self._mutation(http, url, "bench:schedule", {"tags": tags[start : start + 1000], "at": at})
        if _now_ms() >= at:
            raise RuntimeError("scheduling the backlog took longer than the head start it was given")
        done_sql = """
            SELECT count(*) AS n, min(completed_time) AS first, max(completed_time) AS last FROM _scheduled_functions
            WHERE name = 'bench:stamp' AND scheduled_time = $1 AND (state ->> 'kind') = 'success'
        """
        deadline = time.monotonic() + 120
        while True:
            row = await self.conn.fetchrow(done_sql, at)
            if row["n"] == n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row['n']} of {n} backlog jobs ran within 120 s")
            await asyncio.sleep(0.2)
        return (n - 1) / max(float(row["last"] - row["first"]), 1e-3) * 1000.0

    async def _claim_run_mark(self, job_id: str, due: float, tag: str) -> float:
        """The executor's work for one job, without a server; returns when the claim returned (epoch ms)."""
        async with self.conn.transaction(isolation="serializable"):
            claimed = await self.conn.fetchval(_CLAIM, job_id)
            started = _now_ms()
            if claimed is None:
                raise RuntimeError(f"the floor could not claim its own job {job_id}")
            await self.conn.execute(_STAMP, tag, due, started)
            await self.conn.execute(_MARK, job_id, _now_ms())
        return started

    async def _floor_latency(self, n: int, gap_s: float) -> tuple[list[float], list[float]]:
        late: list[float] = []
        timer: list[float] = []
        t0 = time.perf_counter()
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i * gap_s - time.perf_counter()))
            due = _now_ms() + DELAY_MS
            job_id = f"fl{self.next_seq()}"
            await self.conn.execute(_NEW_JOB, job_id, _now_ms(), "[{}]", due)
            await asyncio.sleep(max(0.0, (due - _now_ms()) / 1000.0))
            timer.append(_now_ms() - due)
            rows = await self.conn.fetch(_DUE, _now_ms(), 100)
            for row in rows:
                late.append(await self._claim_run_mark(row["_id"], due, job_id) - due)
        return late, timer

    async def _floor_backlog(self, n: int) -> float:
        at = _now_ms() - 1000.0
        base = self.next_seq()
        await self.conn.executemany(_NEW_JOB, [(f"fb{base}-{i:07d}", _now_ms(), "[{}]", at) for i in range(n)])
        while rows := await self.conn.fetch(_DUE, _now_ms(), 100):
            for row in rows:
                await self._claim_run_mark(row["_id"], at, row["_id"])
        first, last = await self.conn.fetchrow(
            "SELECT min(completed_time), max(completed_time) FROM bench_raw.sched WHERE scheduled_time = $1", at
        )
        return (n - 1) / max(float(last - first), 1e-3) * 1000.0
