"""Cron jobs of the crons tests (tests/test_crons.py): every 200 ms, one counting, one slow, one failing."""

from __future__ import annotations

import asyncio
from typing import Any

from server import ConvexError, Crons, internal_action, internal_mutation


@internal_mutation(name="crontest:tick")
async def tick(ctx: Any, label: str) -> None:
    await ctx.db.insert("videos", {"twitchId": label, "title": "tick", "status": "Queued"})


@internal_action(name="crontest:slow")
async def slow(ctx: Any) -> None:
    await asyncio.sleep(0.5)


@internal_mutation(name="crontest:fails")
async def fails(ctx: Any) -> None:
    raise ConvexError("the cron job failed on purpose")


crons = Crons()
crons.interval("tick", {"seconds": 0.2}, tick, {"label": "cron-tick"})
crons.interval("slow", {"seconds": 0.2}, slow)
crons.interval("fails", {"seconds": 0.2}, fails)
