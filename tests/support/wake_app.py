"""A scheduled mutation that records which server ran it (tests/test_scheduler.py, the wake-up tests).

Its run is a `videos` row titled with that server's `RIPPLE_TEST_PROCESS` ("in-process" for the test's own).
"""

from __future__ import annotations

import os
from typing import Any

from server import internal_mutation, mutation


@internal_mutation(name="wake:record")
async def record(ctx: Any, twitch_id: str) -> str:
    title = os.environ.get("RIPPLE_TEST_PROCESS", "in-process")
    return await ctx.db.insert("videos", {"twitchId": twitch_id, "title": title, "status": "ran"})  # type: ignore[no-any-return]


@mutation(name="wake:schedule")
async def schedule(ctx: Any, delay_ms: float, twitch_id: str) -> str:
    return await ctx.scheduler.run_after(delay_ms, record, {"twitchId": twitch_id})  # type: ignore[no-any-return]
