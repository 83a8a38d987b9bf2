"""The seed apps' cron jobs (Convex's `crons.ts`): found by the server as a project's `crons.py` is."""

from __future__ import annotations

from functions import image_generation, videos
from server.crons import Crons

crons = Crons()

# A worker that dies mid-job reports nothing more; without this its video would show a live stage forever.
crons.interval(
    "fail stalled video jobs",
    {"minutes": 1},
    videos.fail_stalled_jobs,
    {"staleAfterMinutes": videos.STALE_AFTER_MINUTES},
)

# Images whose predictions were never started (the server stopped meanwhile) or never answered: shown failed.
crons.interval("fail stalled images", {"minutes": 1}, image_generation.fail_stalled_images)
