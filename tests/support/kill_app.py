"""Scheduled functions that hold their work, for killing the server that runs them (tests/test_scheduler.py).

Each records its run as a `videos` row titled with `RIPPLE_TEST_PROCESS` (which server ran it), then, when
`RIPPLE_TEST_HOLD_S` is set in that server's environment, waits that long: the process to be killed holds the
job; the one that survives, without the variable, finishes at once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from server import internal_action, internal_mutation, mutation


def _process() -> str:
    return os.environ.get("RIPPLE_TEST_PROCESS", "in-process")


async def _hold() -> None:
    await asyncio.sleep(float(os.environ.get("RIPPLE_TEST_HOLD_S", "0")))


@internal_mutation(name="kill:record")
async def record(ctx: Any, twitch_id: str, title: str) -> str:
    return await ctx.db.insert("videos", {"twitchId": twitch_id, "title": title, "status": "ran"})  # type: ignore[no-any-return]


@internal_mutation(name="kill:slowMutation")
async def slow_mutation(ctx: Any, twitch_id: str) -> None:
    """Writes, then holds its transaction (and so its claim on the job) open."""
    await ctx.db.insert("videos", {"twitchId": twitch_id, "title": _process(), "status": "ran"})
    await _hold()


@internal_action(name="kill:slowAction")
async def slow_action(ctx: Any, twitch_id: str) -> None:
    """Records that it started (committed at once), then holds."""
    await ctx.run_mutation(record, {"twitchId": twitch_id, "title": _process()})
    await _hold()


@mutation(name="kill:schedule")
async def schedule(ctx: Any, twitch_id: str, kind: str) -> str:
    fn = slow_action if kind == "action" else slow_mutation
    return await ctx.scheduler.run_after(0, fn, {"twitchId": twitch_id})  # type: ignore[no-any-return]
