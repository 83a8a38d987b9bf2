"""The benchmark's harness: the database and its rows, the plain-SQL writers, the server and load processes of
each phase, and the report the phases add to (phases.py)."""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import Any

from bench.procs import ClientProc, RippleServer
from bench.report import Config, Report, Row, log

__all__ = ["Harness"]


class Harness:
    """What every phase stands on: the database and its rows, the writers, a server and client processes per
    phase, and the report the phases add to."""

    def __init__(self, cfg: Config, dsn: str, workdir: Path, profile: Path | None) -> None:
        self.cfg = cfg
        self.dsn = dsn
        self.workdir = workdir
        self.profile = profile
        self.report = Report()
        self.seq = 0
        self.conn: Any = None
        self.shared: RippleServer | None = None
        self.gc_threshold: str | None = None  # experiment: the server's gc.set_threshold
        self.gc_freeze = False  # experiment: gc.freeze() in the server once a phase's clients are connected
        self.deflate = False  # clients offer permessage-deflate, as browsers and the npm client do

    # Set-up and helpers.

    async def prepare(self) -> None:
        import asyncpg

        from server.config import Settings
        from server.database.catalog import apply_schema

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            schema = Settings().schema_path
        self.conn = await asyncpg.connect(self.dsn)
        await apply_schema(self.conn, schema)
        n = self.cfg.mut_row + self.cfg.mut_clients + 10
        await self.conn.execute(
            "INSERT INTO videos (twitch_id, title, status, progress_percentage, updated_at) "
            "SELECT 'r' || g, 'bench', 'Queued', 0, 0 FROM generate_series(0, $1::int - 1) g",
            n,
        )
        await self.conn.execute(
            f"""
            CREATE SCHEMA bench_raw;
            CREATE TABLE bench_raw.floor_rows (id int PRIMARY KEY, seq double precision, stamp double precision);
            INSERT INTO bench_raw.floor_rows SELECT g, 0, 0 FROM generate_series(0, {n - 1}) g;
            CREATE TABLE bench_raw.videos (LIKE public.videos INCLUDING DEFAULTS INCLUDING INDEXES);
            INSERT INTO bench_raw.videos SELECT * FROM public.videos;
            ANALYZE;
            """
        )

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def write_row(self, row: int) -> tuple[int, float]:
        """One plain-SQL commit to a `videos` row (capture triggers and the commit clock run as for any writer)."""
        seq = self.next_seq()
        stamp = time.time() * 1000.0
        await self.conn.execute(
            "UPDATE videos SET progress_percentage = $1, updated_at = $2 WHERE twitch_id = $3",
            float(seq),
            stamp,
            f"r{row}",
        )
        return seq, stamp

    async def write_floor(self, row: int) -> tuple[int, float]:
        """The floor's commit: the same kind of single-statement write, NOTIFY in the same transaction."""
        seq = self.next_seq()
        stamp = time.time() * 1000.0
        await self.conn.execute(
            "WITH u AS (UPDATE bench_raw.floor_rows SET seq = $1, stamp = $2 WHERE id = $3 RETURNING 1) "
            "SELECT pg_notify('bench_floor', $4) FROM u",
            float(seq),
            stamp,
            row,
            f"{seq}:{stamp!r}",
        )
        return seq, stamp

    async def steady(self, write: Any, rows: list[int], rate: float, n: int) -> float:
        """`n` writes at `rate` per second (open loop: a late write does not push the schedule); returns lag."""
        t0 = time.perf_counter()
        worst = 0.0
        for i in range(n):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                worst = max(worst, -delay)
            await write(rows[i % len(rows)])
        return worst

    async def server(self, label: str) -> RippleServer:
        """A fresh server per phase; in a quick run, one server shared by every phase (to stay under a minute)."""
        if self.shared is not None:
            return self.shared
        env = {"BENCH_GC_THRESHOLD": self.gc_threshold} if self.gc_threshold else None
        srv = await RippleServer.start(self.dsn, self.workdir, label, env)
        log(f"  Ripple server up (pid {srv.pid}, port {srv.port})")
        if self.cfg.quick:
            self.shared = srv
        return srv

    async def release(self, srv: RippleServer) -> None:
        if srv is not self.shared:
            await srv.stop()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.stop()
            self.shared = None
        if self.conn is not None:
            await self.conn.close()

    async def clients(
        self, spec: dict[str, Any], label: str, timeout: float = 300
    ) -> tuple[ClientProc, dict[str, Any]]:
        spec.setdefault("max_s", 900)
        spec.setdefault("ready_timeout_s", timeout)
        spec.setdefault("deflate", self.deflate)
        client = await ClientProc.start(spec, self.workdir, label)
        try:
            ready = await client.event("ready", timeout + 30)
        except BaseException:
            await client.close()
            raise
        return client, ready

    async def idle_cpu(self, cpu: Any) -> float:
        """A process's CPU use in percent over `idle_cpu_s` of doing nothing (`cpu` reads its CPU seconds)."""
        c0, t0 = cpu(), time.perf_counter()
        await asyncio.sleep(self.cfg.idle_cpu_s)
        return float(cpu() - c0) / (time.perf_counter() - t0) * 100

    def add(self, *row: Any) -> None:
        self.report.rows.append(Row(*row))

    def note(self, text: str) -> None:
        self.report.notes.append(text)
