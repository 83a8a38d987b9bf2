"""Shared pieces of the benchmark: its configuration, the report table, and small statistics helpers."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("memory", "latency", "fanout", "tick", "mutations", "churn", "scheduler")


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
    churn_sockets: int
    churn_cycles: int
    churn_settle_timeout_s: float
    idle_cpu_s: float
    settle_s: float
    sched_jobs: int
    sched_gap_s: float
    sched_backlog: int

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
                churn_sockets=200,
                churn_cycles=3,
                churn_settle_timeout_s=30,
                idle_cpu_s=1,
                settle_s=0.7,
                sched_jobs=40,
                sched_gap_s=0.04,
                sched_backlog=300,
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
            churn_sockets=2000,
            churn_cycles=3,
            churn_settle_timeout_s=60,
            idle_cpu_s=5,
            settle_s=2.0,
            sched_jobs=150,
            sched_gap_s=0.03,
            sched_backlog=1500,
        )

    @property
    def rows(self) -> int:
        return max(
            self.mem_sockets,
            self.lat_sockets * self.lat_per_socket,
            self.tick_unrelated,
            self.tick_small,
            self.churn_sockets,
        )

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


def per_mutation(res: dict[str, Any], key: str = "machine_cpu_s") -> str:
    """A mutation phase's CPU seconds (`machine_cpu_s`: every process; `cpu_s`: the clients') per mutation, in ms."""
    return f"{res.get(key, math.nan) / max(1, res['count']) * 1e3:.2f}"


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def join_values(values: Any) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def fx(r: float) -> str:
    return "n/a" if math.isnan(r) else f"{r:.2f}x"


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
