"""`ripple bench` / `python -m bench`: Ripple against floors measured in the same run, printed as one table.

Processes (a 2-core machine is assumed, so load generation never shares the server's process):

* this process: starts PostgreSQL (embedded, or a fresh database on `DATABASE_URL`'s server), seeds rows, is the
  writer (plain SQL at a steady rate, each write stamped with its wall-clock time in the row) and reads results;
* a Ripple server (`python -m server serve`), a fresh one per phase (one shared by all phases with --quick),
  with `bench.functions` loaded;
* a client process (`python -m bench.clients`) holding the sockets, LISTEN connection or mutators;
* for the fan-out and memory floors, a bare `websockets` server (`python -m bench.rawws`).

Phases and floors:

1. latency   - commit → client latency, 1,000 subscriptions of distinct rows, steady write rate.
               Floor: the same writes to a trigger-less table with NOTIFY in the same statement, a LISTENer.
2. fanout    - one change to N subscribers of one query: commit → last subscriber received.
               Floor: a bare websockets server broadcasting a message of the same size to N clients.
3. tick      - a commit touching a row nobody reads, with 10,000 vs 10 unrelated subscriptions: the server's own
               commit-to-round-done histogram (/metrics), plus a tracker subscription's latency.
4. mutations - mutations/s over the sync protocol, several sockets each one at a time.
               Floor: the same read-modify-write as SERIALIZABLE asyncpg transactions, same concurrency.
5. memory    - server RSS growth per idle connection with one subscription. Floor: the bare websockets server.

Besides the table, the notes under it give the server's side of each figure: its CPU time (/proc), its own
commit-to-Transitions histogram (/metrics), its garbage-collector pauses (`bench:gcStats`, a callback that
`bench.functions` installs inside the server), and for mutations what the database backends were doing
(pg_stat_activity sampled at 100 Hz). Flags marked "experiment" change the server's setup to test a suspected
bottleneck; the table then says so in its title.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import raise_nofile
from bench.procs import ClientProc, Profiler, RawServer, RippleServer

PHASES = ("memory", "latency", "fanout", "tick", "mutations")


@dataclass
class Config:
    quick: bool
    mem_sockets: int
    lat_sockets: int
    lat_per_socket: int
    lat_rate: float
    lat_duration_s: float
    fan_subs: int
    fan_trials: int
    tick_unrelated: int
    tick_small: int
    tick_writes: int
    tick_rate: float
    mut_clients: int
    mut_duration_s: float
    mut_warmup_s: float
    idle_cpu_s: float
    settle_s: float

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(
                True,
                mem_sockets=300,
                lat_sockets=20,
                lat_per_socket=10,
                lat_rate=50,
                lat_duration_s=2,
                fan_subs=500,
                fan_trials=3,
                tick_unrelated=2000,
                tick_small=10,
                tick_writes=60,
                tick_rate=50,
                mut_clients=8,
                mut_duration_s=1.5,
                mut_warmup_s=0.3,
                idle_cpu_s=1,
                settle_s=0.7,
            )
        return cls(
            False,
            mem_sockets=2000,
            lat_sockets=100,
            lat_per_socket=10,
            lat_rate=100,
            lat_duration_s=12,
            fan_subs=5000,
            fan_trials=5,
            tick_unrelated=10000,
            tick_small=10,
            tick_writes=200,
            tick_rate=40,
            mut_clients=8,
            mut_duration_s=8,
            mut_warmup_s=1,
            idle_cpu_s=5,
            settle_s=2.0,
        )

    @property
    def rows(self) -> int:
        return max(self.mem_sockets, self.lat_sockets * self.lat_per_socket, self.tick_unrelated, self.tick_small)

    # Special rows, after the general ones.
    @property
    def fan_row(self) -> int:
        return self.rows

    @property
    def tracker_row(self) -> int:
        return self.rows + 1

    @property
    def unread_row(self) -> int:
        return self.rows + 2

    @property
    def mut_row(self) -> int:
        return self.rows + 10


@dataclass
class Row:
    metric: str
    ripple: str
    floor: str
    ratio: str
    target: str
    ok: bool | None  # None: for information


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    load: list[str] = field(default_factory=lambda: [load_average()])
    experiment: str = ""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return pct(values, 50)


def ms(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.2f} ms" if x < 100 else f"{x:.0f} ms"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def delta(m0: dict[str, float], m1: dict[str, float], name: str) -> float:
    return m1.get(name, 0.0) - m0.get(name, 0.0)


def rounds(m0: dict[str, float], m1: dict[str, float]) -> float:
    return delta(m0, m1, "ripple_transition_latency_seconds_count")


def round_mean_ms(m0: dict[str, float], m1: dict[str, float]) -> float:
    """Mean of the server's own NOTIFY → Transitions-queued histogram over the rounds between two scrapes."""
    n = rounds(m0, m1)
    return delta(m0, m1, "ripple_transition_latency_seconds_sum") / n * 1000 if n else math.nan


def gc_note(g0: dict[str, Any], g1: dict[str, Any]) -> str:
    """What the server's garbage collector cost between two `bench:gcStats` reads."""
    counts = [int(b - a) for a, b in zip(g0["count"], g1["count"], strict=True)]
    paused = [(b - a) * 1000 for a, b in zip(g0["totalS"], g1["totalS"], strict=True)]
    return (
        f"server GC paused {sum(paused):.0f} ms (gen0 {counts[0]}x {paused[0]:.0f} ms, gen1 {counts[1]}x "
        f"{paused[1]:.0f} ms, gen2 {counts[2]}x {paused[2]:.0f} ms, longest gen2 {g1['maxS'][2] * 1000:.0f} ms; "
        f"{g1['oldest'] / 1e6:.2f} M objects in the oldest generation)"
    )


def backends(res: dict[str, Any]) -> str:
    return ", ".join(f"{v:.1f} {k}" for k, v in list(res.get("backends", {}).items())[:4]) or "none busy"


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _join(values: Any) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def fx(r: float) -> str:
    return "n/a" if math.isnan(r) else f"{r:.2f}x"


class Bench:
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

    async def clients(self, spec: dict[str, Any], label: str, timeout: float = 300) -> tuple[ClientProc, dict]:
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

    def add(self, *row: Any) -> None:
        self.report.rows.append(Row(*row))

    def note(self, text: str) -> None:
        self.report.notes.append(text)

    # 1. Latency.

    async def phase_latency(self) -> None:
        cfg = self.cfg
        subs = cfg.lat_sockets * cfg.lat_per_socket
        n = int(cfg.lat_rate * cfg.lat_duration_s)
        order = list(range(subs))
        random.Random(7).shuffle(order)

        log(f"latency floor: commit+NOTIFY → LISTENer, {n} commits at {cfg.lat_rate:.0f}/s")
        client, _ = await self.clients(
            {"mode": "listen", "dsn": self.dsn, "channel": "bench_floor", "groups": [{"sockets": 1}]}, "listen"
        )
        try:
            lag_f = await self.steady(self.write_floor, order, cfg.lat_rate, n)
            await asyncio.sleep(self.cfg.settle_s)
            floor = (await client.stats())["groups"][0]
        finally:
            await client.close()
        f_lat = [r[4] * 1000 - r[1] for r in floor["records"]]

        log(f"latency Ripple: {subs} subscriptions on {cfg.lat_sockets} sockets, {n} commits at {cfg.lat_rate:.0f}/s")
        srv = await self.server("latency")
        prof = None
        try:
            client, ready = await self.clients(
                {
                    "mode": "convex",
                    "url": srv.ws_url,
                    "groups": [
                        {
                            "sockets": cfg.lat_sockets,
                            "per_socket": cfg.lat_per_socket,
                            "row_start": 0,
                            "row_count": subs,
                        }
                    ],
                },
                "latency",
            )
            log(f"  {subs} subscriptions ready in {ready['ready_s']:.1f} s")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                prof = await Profiler.start(self.profile, srv.pid, "latency")
                cpu0, m0, gc0 = srv.cpu_s(), await srv.metrics(), await srv.gc_stats(self.gc_freeze)
                lag_r = await self.steady(self.write_row, order, cfg.lat_rate, n)
                await asyncio.sleep(self.cfg.settle_s + 0.5)
                cpu1, m1, gc1 = srv.cpu_s(), await srv.metrics(), await srv.gc_stats()
                ripple = (await client.stats())["groups"][0]
            finally:
                await client.close()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)
        recs = ripple["records"]
        r_lat = [r[4] * 1000 - r[1] for r in recs]
        commit = [r[2] / 1e6 - r[1] for r in recs]
        hub = [(r[3] - r[2]) / 1e6 for r in recs]
        wire = [r[4] * 1000 - r[3] / 1e6 for r in recs]

        f50, f99, r50, r99 = pct(f_lat, 50), pct(f_lat, 99), pct(r_lat, 50), pct(r_lat, 99)
        self.add(
            f"1. commit→client p50 ({subs} subs, {cfg.lat_rate:.0f} commits/s)",
            ms(r50),
            ms(f50),
            fx(ratio(r50, f50)),
            "≤ 3x floor",
            ratio(r50, f50) <= 3,
        )
        self.add("1. commit→client p99", ms(r99), ms(f99), fx(ratio(r99, f99)), "≤ 15 ms", r99 <= 15)
        self.note(
            f"1. received {len(r_lat)}/{n} updates (floor {len(f_lat)}/{n}); max {ms(max(r_lat, default=math.nan))} "
            f"(floor {ms(max(f_lat, default=math.nan))}); breakdown p50: write→commit ts {ms(median(commit))}, "
            f"commit ts→serverTs (NOTIFY+hub round+queue) {ms(median(hub))}, serverTs→client {ms(median(wire))}; "
            f"p99: {ms(pct(commit, 99))} / {ms(pct(hub, 99))} / {ms(pct(wire, 99))}; server CPU "
            f"{(cpu1 - cpu0) / max(1, len(r_lat)) * 1e3:.2f} ms per commit; server round (NOTIFY → Transitions "
            f"queued) mean {ms(round_mean_ms(m0, m1))} over {rounds(m0, m1):.0f} rounds; "
            f"writer max lag {lag_r * 1e3:.1f} ms "
            f"(floor {lag_f * 1e3:.1f} ms); {gc_note(gc0, gc1)}"
        )
        self.report.data["latency"] = {
            "ripple_ms": r_lat,
            "floor_ms": f_lat,
            "commit_ms": commit,
            "hub_ms": hub,
            "wire_ms": wire,
        }
        if ripple["error_count"]:
            self.report.errors.append(f"latency: {ripple['error_count']} client errors: {ripple['errors'][:3]}")

    # 2. Fan-out.

    async def _fan_trials(self, client: ClientProc, trigger: Any, cpu: Any) -> list[dict[str, float]]:
        out = []
        for _ in range(self.cfg.fan_trials):
            await asyncio.sleep(0.5)
            c0 = cpu()
            seq, stamp = await trigger()
            ev = await client.event("complete", 60, match=lambda e, s=seq: e["seq"] == s)
            await asyncio.sleep(0.05)
            out.append(
                {"last": ev["last"] * 1000 - stamp, "first": ev["first"] * 1000 - stamp, "cpu_ms": (cpu() - c0) * 1000}
            )
        return out

    async def phase_fanout(self) -> None:
        cfg = self.cfg
        n = cfg.fan_subs
        group = {
            "sockets": n,
            "per_socket": 1,
            "row_start": cfg.fan_row,
            "row_count": 1,
            "record_all": False,
            "notify_complete": True,
        }

        log(f"fan-out Ripple: {n} sockets subscribed to one query, {cfg.fan_trials} changes")
        srv = await self.server("fanout")
        prof = None
        try:
            client, ready = await self.clients({"mode": "convex", "url": srv.ws_url, "groups": [group]}, "fanout")
            log(f"  {n} sockets ready in {ready['ready_s']:.1f} s")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                idle = await self._idle_cpu(srv.cpu_s)
                prof = await Profiler.start(self.profile, srv.pid, "fanout")
                m0, gc0 = await srv.metrics(), await srv.gc_stats(self.gc_freeze)
                ripple = await self._fan_trials(client, lambda: self.write_row(cfg.fan_row), srv.cpu_s)
                round_ms, gc1 = round_mean_ms(m0, await srv.metrics()), await srv.gc_stats()
                size = (await client.stats())["groups"][0]["msg_bytes"]
            finally:
                await client.close()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)

        log(
            f"fan-out floor: bare websockets broadcast of {size} bytes to {n} sockets (server idle CPU with "
            f"{n} sockets was {idle:.1f}%)"
        )
        raw = await RawServer.start(self.workdir)
        try:
            client, ready = await self.clients({"mode": "raw", "url": raw.ws_url, "groups": [group]}, "fanout-raw")
            try:
                from websockets.asyncio.client import connect

                async with connect(raw.control_url, compression=None, ping_interval=None) as control:
                    await asyncio.sleep(self.cfg.settle_s)

                    async def trigger() -> tuple[int, float]:
                        seq = self.next_seq()
                        stamp = time.time() * 1000.0
                        await control.send(f"go {seq} {stamp!r} {size}")
                        return seq, stamp

                    floor = await self._fan_trials(client, trigger, raw.cpu_s)
                    await control.recv()
            finally:
                await client.close()
        finally:
            await raw.stop()

        r_last, f_last = median([t["last"] for t in ripple]), median([t["last"] for t in floor])
        self.add(
            f"2. fan-out to {n} subscribers (commit→last, median of {cfg.fan_trials})",
            ms(r_last),
            ms(f_last),
            fx(ratio(r_last, f_last)),
            "≤ 1.5x floor",
            ratio(r_last, f_last) <= 1.5,
        )
        r_cpu, f_cpu = median([t["cpu_ms"] for t in ripple]), median([t["cpu_ms"] for t in floor])
        self.note(
            f"2. per trial, Ripple last: {_join(t['last'] for t in ripple)} ms, first "
            f"{median([t['first'] for t in ripple]):.1f} ms; floor last: "
            f"{_join(t['last'] for t in floor)} ms, first {median([t['first'] for t in floor]):.1f} ms; "
            f"server CPU per change {r_cpu:.0f} ms = {r_cpu * 1000 / n:.0f} µs/subscriber (floor {f_cpu:.0f} ms = "
            f"{f_cpu * 1000 / n:.0f} µs); server round (NOTIFY → all {n} Transitions queued, /metrics mean) "
            f"{ms(round_ms)}; message {size} bytes; idle server CPU with {n} sockets {idle:.1f}%; during the "
            f"{cfg.fan_trials} changes: {gc_note(gc0, gc1)}"
        )
        self.report.data["fanout"] = {"ripple": ripple, "floor": floor, "msg_bytes": size}

    # 3. Tick cost.

    async def _tick_case(self, unrelated: int) -> dict[str, Any]:
        cfg = self.cfg
        per = min(100, unrelated)
        groups = [
            {
                "sockets": math.ceil(unrelated / per),
                "per_socket": per,
                "row_start": 0,
                "row_count": unrelated,
                "record_all": False,
            },
            {"sockets": 1, "per_socket": 1, "row_start": cfg.tracker_row, "row_count": 1},
        ]
        srv = await self.server(f"tick{unrelated}")
        prof = None
        try:
            client, ready = await self.clients(
                {"mode": "convex", "url": srv.ws_url, "groups": groups}, f"tick{unrelated}"
            )
            log(f"  {unrelated} unrelated subscriptions + 1 tracker ready in {ready['ready_s']:.1f} s")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                prof = await Profiler.start(self.profile, srv.pid, f"tick{unrelated}")
                m0, c0, gc0 = await srv.metrics(), srv.cpu_s(), await srv.gc_stats(self.gc_freeze)
                await self.steady(self.write_row, [cfg.unread_row], cfg.tick_rate, cfg.tick_writes)
                await asyncio.sleep(self.cfg.settle_s)
                m1, c1, gc1 = await srv.metrics(), srv.cpu_s(), await srv.gc_stats()
                await self.steady(self.write_row, [cfg.tracker_row], cfg.tick_rate, cfg.tick_writes)
                await asyncio.sleep(self.cfg.settle_s)
                stats = await client.stats()
                rss = srv.rss_kb()
            finally:
                await client.close()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)
        tick_ms, n_rounds = round_mean_ms(m0, m1), rounds(m0, m1)
        tracker = stats["groups"][1]["records"]
        lat = [r[4] * 1000 - r[1] for r in tracker]
        hub = [(r[3] - r[2]) / 1e6 for r in tracker]
        return {
            "tick_ms": tick_ms,
            "rounds": n_rounds,
            "cpu_ms": (c1 - c0) * 1000 / cfg.tick_writes,
            "tracker_p50": pct(lat, 50),
            "tracker_p90": pct(lat, 90),
            "tracker_hub_p50": pct(hub, 50),
            "received": len(lat),
            "rss_kb": rss,
            "ready_s": ready["ready_s"],
            "gc": gc_note(gc0, gc1),
        }

    async def phase_tick(self) -> None:
        cfg = self.cfg
        log(f"tick: {cfg.tick_small} unrelated subscriptions, {cfg.tick_writes} commits to an unread row")
        small = await self._tick_case(cfg.tick_small)
        log(f"tick: {cfg.tick_unrelated} unrelated subscriptions, {cfg.tick_writes} commits to an unread row")
        big = await self._tick_case(cfg.tick_unrelated)
        r = ratio(big["tick_ms"], small["tick_ms"])
        self.add(
            f"3. tick, unread-row commit, {cfg.tick_unrelated} vs {cfg.tick_small} subs (server mean)",
            ms(big["tick_ms"]),
            ms(small["tick_ms"]),
            fx(r),
            "≤ 1.1x",
            r <= 1.1,
        )
        rc = ratio(big["cpu_ms"], small["cpu_ms"])
        self.add("3. server CPU per unread-row commit (info)", ms(big["cpu_ms"]), ms(small["cpu_ms"]), fx(rc), "", None)
        rt = ratio(big["tracker_p50"], small["tracker_p50"])
        self.add(
            "3. tracker commit→client p50 (info)", ms(big["tracker_p50"]), ms(small["tracker_p50"]), fx(rt), "", None
        )
        self.note(
            f"3. rounds seen {big['rounds']:.0f}/{small['rounds']:.0f} of {cfg.tick_writes} commits; tracker p90 "
            f"{ms(big['tracker_p90'])} vs {ms(small['tracker_p90'])}; tracker commit ts→serverTs p50 "
            f"{ms(big['tracker_hub_p50'])} vs {ms(small['tracker_hub_p50'])}; server RSS {big['rss_kb'] / 1024:.0f} "
            f"vs {small['rss_kb'] / 1024:.0f} MiB; subscribe-to-ready {big['ready_s']:.1f} s vs "
            f"{small['ready_s']:.1f} s; unread-row commits with {cfg.tick_unrelated}: {big['gc']}; with "
            f"{cfg.tick_small}: {small['gc']}"
        )
        self.report.data["tick"] = {"small": small, "big": big}

    # 4. Mutations.

    async def _sample_backends(self, stop: asyncio.Event) -> dict[str, float]:
        """Average number of this database's client backends in each state while mutations run (100 Hz)."""
        query = """
            SELECT coalesce(state, '') AS state, coalesce(wait_event_type, '') AS wtype,
                   coalesce(wait_event, '') AS wevent, count(*) AS n
            FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
            GROUP BY 1, 2, 3
        """
        counts: dict[str, float] = {}
        samples = 0
        while not stop.is_set():
            for r in await self.conn.fetch(query):
                if r["state"] == "idle":
                    continue
                if r["state"].startswith("idle in transaction"):
                    label = "idle in transaction (waiting for the app)"
                elif r["wtype"] == "Lock" and r["wevent"] == "advisory":
                    label = "waiting for the commit-clock advisory lock"
                elif r["wtype"]:
                    label = f"active, waiting on {r['wtype']}:{r['wevent']}"
                else:
                    label = "active on CPU"
                counts[label] = counts.get(label, 0) + r["n"]
            samples += 1
            await asyncio.sleep(0.01)
        return {k: v / max(1, samples) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}

    async def _mutate(self, spec: dict[str, Any], label: str, table: str = "public.videos") -> dict[str, Any]:
        cfg = self.cfg
        spec.update(
            clients=cfg.mut_clients, row_start=cfg.mut_row, duration_s=cfg.mut_duration_s, warmup_s=cfg.mut_warmup_s
        )
        hot = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = $1::regclass"
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        h0 = await self.conn.fetchrow(hot, table)
        client, _ = await self.clients(spec, label)
        stop = asyncio.Event()
        try:
            client.send("go")
            sampler = asyncio.create_task(self._sample_backends(stop))
            res = await client.event("result", cfg.mut_warmup_s + cfg.mut_duration_s + 60)
        finally:
            stop.set()
            await client.close()
        res["backends"] = await sampler
        await asyncio.sleep(0.6)  # cumulative statistics are flushed about every 0.5 s
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        h1 = await self.conn.fetchrow(hot, table)
        res["rate"] = res["count"] / res["window_s"]
        upd = h1["n_tup_upd"] - h0["n_tup_upd"]
        res["hot_pct"] = (h1["n_tup_hot_upd"] - h0["n_tup_hot_upd"]) / upd * 100 if upd else math.nan
        return res

    async def phase_mutations(self) -> None:
        cfg = self.cfg
        log(f"mutations Ripple: {cfg.mut_clients} sockets, each one mutation at a time, {cfg.mut_duration_s} s")
        srv = await self.server("mutations")
        prof = None
        try:
            prof = await Profiler.start(self.profile, srv.pid, "mutations")
            c0, m0, gc0 = srv.cpu_s(), await srv.metrics(), await srv.gc_stats()
            ripple = await self._mutate({"mode": "mutate", "url": srv.ws_url}, "mutate")
            s_cpu, m1, gc1 = srv.cpu_s() - c0, await srv.metrics(), await srv.gc_stats()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)
        log("mutations floor: asyncpg SERIALIZABLE read-modify-write, same concurrency")
        raw = await self._mutate(
            {"mode": "rawmutate", "dsn": self.dsn, "table": "bench_raw.videos"}, "rawmutate", "bench_raw.videos"
        )
        trig = await self._mutate({"mode": "rawmutate", "dsn": self.dsn, "table": "public.videos"}, "rawmutate2")
        r = ratio(ripple["rate"], raw["rate"])
        self.add(
            f"4. mutations/s over the protocol ({cfg.mut_clients} sockets, serial each)",
            f"{ripple['rate']:.0f}/s",
            f"{raw['rate']:.0f}/s",
            f"{r * 100:.0f}%",
            "≥ 50% of raw",
            r >= 0.5,
        )
        rt = ratio(trig["rate"], raw["rate"])
        self.add(
            "4. raw asyncpg on videos with Ripple's capture triggers (info)",
            f"{trig['rate']:.0f}/s",
            f"{raw['rate']:.0f}/s",
            f"{rt * 100:.0f}%",
            "",
            None,
        )
        self.note(
            f"4. round trip p50/p99: Ripple {ms(pct(ripple['latencies'], 50) * 1e3)}/"
            f"{ms(pct(ripple['latencies'], 99) * 1e3)}, raw {ms(pct(raw['latencies'], 50) * 1e3)}/"
            f"{ms(pct(raw['latencies'], 99) * 1e3)}, raw+triggers {ms(pct(trig['latencies'], 50) * 1e3)}; "
            f"server CPU {s_cpu / max(1, ripple['count']) * 1e3:.2f} ms per mutation (whole run incl. warm-up); "
            f"Postgres backends on average (Ripple | raw+triggers | raw): {backends(ripple)} | {backends(trig)} | "
            f"{backends(raw)}; "
            f"MutationResponse → covering Transition p50 {ms(pct(ripple['cover'], 50) * 1e3)}; "
            f"HOT updates: Ripple {ripple['hot_pct']:.0f}%, raw {raw['hot_pct']:.0f}%, raw+triggers "
            f"{trig['hot_pct']:.0f}%; serialization retries: Ripple "
            f"{delta(m0, m1, 'ripple_mutation_retries_total'):.0f} (server /metrics), "
            f"raw {raw['retries']}, raw+triggers {trig['retries']}; Ripple failed mutations {ripple['errors']}"
            + (f" (first: {ripple['first_error'].splitlines()[0]})" if ripple["first_error"] else "")
            + f"; {gc_note(gc0, gc1)}"
        )
        self.report.data["mutations"] = {
            k: {x: v[x] for x in ("rate", "count", "errors", "retries")}
            for k, v in (("ripple", ripple), ("raw", raw), ("raw_triggers", trig))
        }

    # 5. Memory.

    async def _idle_cpu(self, cpu: Any) -> float:
        c0, t0 = cpu(), time.perf_counter()
        await asyncio.sleep(self.cfg.idle_cpu_s)
        return (cpu() - c0) / (time.perf_counter() - t0) * 100

    async def phase_memory(self) -> None:
        cfg = self.cfg
        n = cfg.mem_sockets
        warm = {"sockets": 20, "per_socket": 1, "row_start": 0, "row_count": 20}
        group = {"sockets": n, "per_socket": 1, "row_start": 0, "row_count": n, "record_all": False}

        log(f"memory Ripple: {n} idle sockets with one subscription each")
        srv = await self.server("memory")
        try:
            client, _ = await self.clients({"mode": "convex", "url": srv.ws_url, "groups": [warm]}, "mem-warm")
            await client.close()
            await asyncio.sleep(self.cfg.settle_s)
            rss0 = srv.rss_kb()
            client, ready = await self.clients({"mode": "convex", "url": srv.ws_url, "groups": [group]}, "memory")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                rss1 = srv.rss_kb()
                r_idle = await self._idle_cpu(srv.cpu_s)
                objects = (await srv.gc_stats())["oldest"]
            finally:
                await client.close()
        finally:
            await self.release(srv)

        log(f"memory floor: {n} idle sockets on a bare websockets server")
        raw = await RawServer.start(self.workdir)
        try:
            client, _ = await self.clients({"mode": "raw", "url": raw.ws_url, "groups": [warm]}, "mem-warm-raw")
            await client.close()
            await asyncio.sleep(self.cfg.settle_s)
            f0 = raw.rss_kb()
            client, _ = await self.clients({"mode": "raw", "url": raw.ws_url, "groups": [group]}, "memory-raw")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                f1 = raw.rss_kb()
                f_idle = await self._idle_cpu(raw.cpu_s)
            finally:
                await client.close()
        finally:
            await raw.stop()
        per, fper = (rss1 - rss0) / n, (f1 - f0) / n
        self.add(
            f"5. memory per idle connection ({n} sockets, 1 sub each)",
            f"{per:.1f} KiB",
            f"{fper:.1f} KiB",
            fx(ratio(per, fper)),
            "(none)",
            None,
        )
        self.add(f"5. idle server CPU with {n} sockets (info)", f"{r_idle:.1f}%", f"{f_idle:.1f}%", "", "", None)
        self.note(
            f"5. server RSS {rss0 / 1024:.0f} → {rss1 / 1024:.0f} MiB (bare websockets {f0 / 1024:.0f} → "
            f"{f1 / 1024:.0f} MiB); {n} sockets subscribed in {ready['ready_s']:.1f} s; "
            f"{objects / 1e6:.2f} M objects in the server's oldest GC generation"
        )
        self.report.data["memory"] = {
            "ripple_kib": per,
            "floor_kib": fper,
            "idle_cpu_pct": r_idle,
            "floor_idle_cpu_pct": f_idle,
        }


def render(report: Report, cfg: Config, elapsed: float) -> str:
    head = ("metric", "Ripple", "floor", "ratio", "target", "result")
    body = [
        (r.metric, r.ripple, r.floor, r.ratio, r.target, "info" if r.ok is None else ("PASS" if r.ok else "FAIL"))
        for r in report.rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt(cells: tuple[str, ...]) -> str:
        return "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))

    import os

    title = (
        f"Ripple benchmark ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s, {os.cpu_count()} cores, "
        f"load average {report.load[0]} at start, {load_average()} at end)"
    )
    if report.experiment:
        title += f"\nEXPERIMENT (not Ripple's defaults): {report.experiment}"
    out = [title, line, fmt(head), line]
    out += [fmt(b) for b in body]
    out.append(line)
    out += report.notes
    out += [f"ERROR {e}" for e in report.errors]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> int:
    from server.database.embedded import EmbeddedPostgres, create_database, drop_database

    cfg = Config.make(args.quick)
    only = [p.strip() for p in args.only.split(",")] if args.only else list(PHASES)
    unknown = set(only) - set(PHASES)
    if unknown:
        print(f"unknown phase(s) {sorted(unknown)}; phases are {', '.join(PHASES)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="ripple-bench-"))
    embedded: EmbeddedPostgres | None = None
    db_name = f"ripple_bench_{secrets.token_hex(4)}"
    admin = args.database_url
    bench: Bench | None = None
    try:
        if not admin:
            embedded = EmbeddedPostgres()
            admin = embedded.start(workdir / "pgdata")
            log("embedded PostgreSQL started")
        dsn = await create_database(admin, db_name)
        bench = Bench(cfg, dsn, workdir, Path(args.profile) if args.profile else None)
        bench.gc_threshold, bench.gc_freeze = args.server_gc_threshold, args.gc_freeze
        bench.deflate = args.deflate
        bench.report.experiment = " ".join(
            ([f"server gc.set_threshold({args.server_gc_threshold})"] if args.server_gc_threshold else [])
            + (["server gc.freeze() after connecting"] if args.gc_freeze else [])
            + (["clients offer permessage-deflate"] if args.deflate else [])
        )
        await bench.prepare()
        log(f"database ready: {cfg.mut_row + cfg.mut_clients + 10} bench rows")
        for name in PHASES:
            if name not in only:
                continue
            try:
                t_phase = time.perf_counter()
                await asyncio.wait_for(getattr(bench, f"phase_{name}")(), 600)
                log(f"phase {name} done in {time.perf_counter() - t_phase:.0f} s")
            except Exception as exc:
                log(f"phase {name} failed: {type(exc).__name__}: {exc}")
                bench.report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        if bench is not None:
            await bench.close()
        if admin:
            try:
                await drop_database(admin, db_name)
            except Exception as exc:
                log(f"could not drop {db_name}: {exc}")
        if embedded is not None:
            embedded.stop()
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert bench is not None
    print(render(bench.report, cfg, time.perf_counter() - started), flush=True)
    if args.json:
        import orjson

        out = {
            "quick": cfg.quick,
            "rows": [r.__dict__ for r in bench.report.rows],
            "notes": bench.report.notes,
            "errors": bench.report.errors,
            "data": bench.report.data,
        }
        Path(args.json).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if bench.report.errors:
        return 1
    if args.strict and any(r.ok is False for r in bench.report.rows):
        return 1
    return 0


def main(argv: list[str]) -> int:
    import os

    parser = argparse.ArgumentParser(prog="ripple bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, under a minute (a smoke run)")
    parser.add_argument("--only", help=f"comma-separated phases to run: {', '.join(PHASES)}")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record each phase's server with py-spy into DIR (collapsed stacks: flamegraph, speedscope); "
        "sampling pauses the server, so a profiled run's timings are not comparable",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the server and client logs")
    parser.add_argument(
        "--server-gc-threshold",
        metavar="G0,G1,G2",
        help="experiment: gc.set_threshold(G0, G1, G2) inside the server (via bench.functions)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() inside the server once a phase's sockets are connected",
    )
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="clients offer permessage-deflate (browsers and the npm client do; the default run does not)",
    )
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    args.database_url = os.environ.get("DATABASE_URL")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * Config.make(args.quick).fan_subs + 200:
        log(f"warning: the open-file limit is {soft}; thousands of sockets may fail")
    return asyncio.run(asyncio.wait_for(run(args), 1800))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
