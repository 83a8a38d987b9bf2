"""The bench's functions, loaded by the server from `RIPPLE_MODULES='["bench.functions"]'`.

Rows are `videos` documents whose `twitchId` names them (`r0`, `r1`, ...). A writer stores a sequence number
in `progressPercentage` and its commit stamp (ms since the epoch) in `updatedAt`; a subscriber of
`bench:counter` sees both and so measures commit → client latency.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from server import internal_mutation, mutation, query


async def _row(ctx: Any, twitch_id: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = (
        await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    )
    return doc


@query(name="bench:counter")
async def counter(ctx: Any, twitch_id: str) -> Any:
    doc = await _row(ctx, twitch_id)
    if doc is None:
        return None
    return {"seq": doc.get("progressPercentage", 0), "stamp": doc.get("updatedAt", 0)}


@mutation(name="bench:bump")
async def bump(ctx: Any, twitch_id: str) -> float:
    doc = await _row(ctx, twitch_id)
    if doc is None:
        raise ValueError(f"no bench row {twitch_id}")
    value = (doc.get("progressPercentage") or 0) + 1
    await ctx.db.patch(doc["_id"], {"progressPercentage": value})
    return value


# The scheduler phase (bench/scheduler.py): a scheduled mutation that stamps when its handler started.


@internal_mutation(name="bench:stamp")
async def stamp(ctx: Any, tag: str, due: float) -> None:
    """Records its own start (epoch ms, this process's clock, as `due` is) beside the time it was due."""
    started = time.time() * 1000.0
    await ctx.db.insert(
        "videos",
        {"twitchId": tag, "title": "scheduled", "status": "Queued", "progressPercentage": due, "updatedAt": started},
    )


@mutation(name="bench:schedule")
async def schedule(ctx: Any, tags: list[str], at: float | None = None, delay_ms: float = 0.0) -> float:
    """Schedules `bench:stamp` once per tag, all due at `at` (epoch ms) or `delay_ms` from now; returns the due time."""
    due = at if at is not None else time.time() * 1000.0 + delay_ms
    for tag in tags:
        await ctx.scheduler.run_at(due, stamp, {"tag": tag, "due": due})
    return due


# Garbage-collector pauses of the server process, for the report: the bench registers this callback inside the
# server (it is one of the server's app modules), so pauses are measured without touching server code.
_gc_start = [0.0]
_gc_count = [0, 0, 0]
_gc_total_s = [0.0, 0.0, 0.0]
_gc_max_s = [0.0, 0.0, 0.0]


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_start[0]
    gen = int(info.get("generation", 0))
    _gc_count[gen] += 1
    _gc_total_s[gen] += took
    _gc_max_s[gen] = max(_gc_max_s[gen], took)


gc.callbacks.append(_gc_callback)

# Experiments (`python -m bench --server-gc-threshold 50000,20,100`): tune the server's collector from here.
if os.environ.get("BENCH_GC_THRESHOLD"):
    gc.set_threshold(*(int(x) for x in os.environ["BENCH_GC_THRESHOLD"].split(",")))


@query(name="bench:gcStats")
async def gc_stats(ctx: Any, reset_max: bool = False, freeze: bool = False) -> Any:
    """Collections and pause seconds per generation since start (max since the last `resetMax`), and how many
    objects sit in the oldest generation (what a full collection walks) and in all (what a leak of reference
    cycles grows, outside what `gc.freeze()` set aside). `freeze` (an experiment, `--gc-freeze`)
    moves every object alive now into the permanent generation, which collections no longer walk."""
    if freeze:
        gc.freeze()
    out = {
        "count": [float(c) for c in _gc_count],
        "totalS": list(_gc_total_s),
        "maxS": list(_gc_max_s),
        "oldest": float(len(gc.get_objects(2))),
        "tracked": float(len(gc.get_objects())),
    }
    if reset_max:
        _gc_max_s[:] = [0.0, 0.0, 0.0]
    return out
