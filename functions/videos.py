"""`videos:*`: Twitch video processing jobs (seed 003), reported on by an external worker holding the admin key.

Lifecycle: `create` queues a video ("Queued"); the worker reports `updateJobProgress` (optionally moving `status`
through the processing stages Downloading → Fetching chat → Transcribing → Analyzing → Finding highlights), then
either `completeJob` ("Completed") or `updateJobError` ("Failed"). A completed job takes no more reports; a failed
job restarts only by a progress report that names a processing stage (a retry: `retryCount` + 1, error fields
cleared). Reads are public; `create` needs a signed-in user or the admin key.

A video created with a `callbackUrl` is told when its job ends: the mutation that completes or fails it (completeJob,
updateJobError, the stalled-job cron) schedules `sendCallback` in its own transaction, which POSTs
`{"event": "job.completed" | "job.failed", "video": <the video as it ended>}` to the URL once. A callback that
fails is logged and its scheduled function marked failed with the reason; it is not retried (a retry loop against a
dead receiver would never end, and the video's state, which is what a receiver wants, is always readable).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from functions._model import AppError, WireModel, check_choice, check_number, check_text, now_ms
from server import Doc, Id, internal_action, internal_mutation, mutation, query
from server.errors import ArgumentError
from server.functions import calllog

log = logging.getLogger(__name__)

STATUSES = (
    "Queued",
    "Downloading",
    "Fetching chat",
    "Transcribing",
    "Analyzing",
    "Finding highlights",
    "Completed",
    "Failed",
)
PROCESSING_STAGES = STATUSES[1:6]
ERROR_TYPES = (
    "network_error",
    "invalid_video_url",
    "video_too_large",
    "processing_timeout",
    "insufficient_resources",
    "external_service_error",
    "unknown_error",
)
ERROR_FIELDS = ("errorType", "errorMessage", "errorDetails", "isRetryable")

# A receiver that has not answered in this long has failed the callback.
CALLBACK_TIMEOUT_S = 5.0

# listByStatus returns at most this many jobs (default DEFAULT_LIST_LIMIT): a bounded read, newest first.
MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 50


class JobUrls(WireModel):
    """The result files a completed job may report (seed 003's `urls`, spread into the video)."""

    transcript_url: str | None = None
    chat_url: str | None = None
    audiowave_url: str | None = None
    transcript_analysis_url: str | None = None
    transcript_word_url: str | None = None


async def _by_twitch_id(ctx: Any, twitch_id: str) -> dict[str, Any] | None:
    return await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).first()


async def _load_for_report(ctx: Any, fn: str, twitch_id: str) -> dict[str, Any]:
    """The video a worker reports on: admin key required, the video must exist and not be completed."""
    ctx.auth.require_admin(f"report on a video job ({fn})")
    check_text(fn, "twitchId", twitch_id)
    video = await _by_twitch_id(ctx, twitch_id)
    if video is None:
        raise AppError("NOT_FOUND", f'{fn}: video not found: no video has twitchId "{twitch_id}"', twitchId=twitch_id)
    if video["status"] == "Completed":
        raise AppError(
            "INVALID_STATE",
            f'{fn}: the job of video "{twitch_id}" is already Completed; it takes no more reports',
            twitchId=twitch_id,
        )
    return video


async def _notify_end(ctx: Any, video: dict[str, Any], fields: dict[str, Any]) -> None:
    """Schedule the end-of-job callback, in the caller's transaction, when the video asked for one."""
    url = video.get("callbackUrl")
    if not url:
        return
    ended = {k: v for k, v in {**video, **fields}.items() if v is not None}
    event = "job.completed" if ended["status"] == "Completed" else "job.failed"
    await ctx.scheduler.run_after(0, send_callback, {"url": url, "payload": {"event": event, "video": ended}})


@internal_action
async def send_callback(ctx: Any, url: str, payload: dict[str, Any]) -> None:
    """POST the job's final state to its callbackUrl, once. Raises (so the scheduled run is marked failed, with
    the reason) when the receiver cannot be reached, is too slow, or answers anything but 2xx."""
    call = calllog.current()
    request_id = call.request_id if call is not None else "?"
    twitch_id = payload.get("video", {}).get("twitchId")
    try:
        async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S) as client:
            response = await client.post(url, json=payload, headers={"X-Ripple-Request-Id": request_id})
    except httpx.TimeoutException:
        problem = f"no answer within {CALLBACK_TIMEOUT_S:g} s"
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        if response.is_success:
            return
        problem = f"HTTP {response.status_code}: {response.text[:200]}"
    log.warning("callback of video %r to %s failed (request %s): %s", twitch_id, url, request_id, problem)
    raise AppError(
        "CALLBACK_FAILED",
        f'the callback of video "{twitch_id}" to {url} failed: {problem} (request {request_id}); it is not retried, '
        "the video's state stays readable with videos:getByTwitchId",
        twitchId=twitch_id,
    )


@mutation
async def create(ctx: Any, twitch_id: str, title: str, callback_url: str | None = None) -> Id("videos"):
    """Queue a video; refused when a video with this twitchId exists. `callbackUrl` (http or https) is POSTed the
    video when its job completes or fails."""
    fn = "videos:create"
    if not ctx.auth.is_admin:
        await ctx.auth.require_user("queue a video")
    check_text(fn, "twitchId", twitch_id)
    check_text(fn, "title", title)
    if callback_url is not None and not callback_url.startswith(("http://", "https://")):
        raise ArgumentError(f'{fn}: "callbackUrl" must be an http:// or https:// URL; got {callback_url!r}')
    if await _by_twitch_id(ctx, twitch_id) is not None:
        raise AppError(
            "ALREADY_EXISTS", f'{fn}: a video with twitchId "{twitch_id}" already exists', twitchId=twitch_id
        )
    now = now_ms()
    doc = {"twitchId": twitch_id, "title": title, "status": "Queued", "createdAt": now, "updatedAt": now}
    if callback_url is not None:
        doc["callbackUrl"] = callback_url
    return await ctx.db.insert("videos", doc)


@mutation
async def update_job_progress(
    ctx: Any,
    twitch_id: str,
    job_id: str,
    progress_percentage: float | None = None,
    current_stage: str | None = None,
    estimated_completion_seconds: float | None = None,
    stage_progress: dict[str, Any] | None = None,
    status: str | None = None,
) -> None:
    """Record a progress report; only the fields given change. The first report sets processingStartedAt."""
    fn = "videos:updateJobProgress"
    video = await _load_for_report(ctx, fn, twitch_id)
    check_text(fn, "jobId", job_id)
    if progress_percentage is not None:
        check_number(fn, "progressPercentage", progress_percentage, low=0, high=100)
    if estimated_completion_seconds is not None:
        check_number(fn, "estimatedCompletionSeconds", estimated_completion_seconds, low=0)
    if status is not None and status not in PROCESSING_STAGES:
        stages = ", ".join(f'"{s}"' for s in PROCESSING_STAGES)
        hint = "; report the end with completeJob or updateJobError" if status in ("Completed", "Failed") else ""
        raise ArgumentError(f'{fn}: "status" must be a processing stage, one of {stages}; got {status!r}{hint}')
    now = now_ms()
    fields: dict[str, Any] = {"jobId": job_id, "updatedAt": now}
    if video["status"] == "Failed":
        if status is None:
            raise AppError(
                "INVALID_STATE",
                f'{fn}: the job of video "{twitch_id}" Failed; to retry it, report progress with a processing '
                f"stage as status ({', '.join(PROCESSING_STAGES)})",
                twitchId=twitch_id,
            )
        fields.update({f: None for f in ERROR_FIELDS})
        fields["retryCount"] = float(video.get("retryCount", 0)) + 1
        fields["processingCompletedAt"] = None
    for name, value in (
        ("progressPercentage", progress_percentage),
        ("currentStage", current_stage),
        ("estimatedCompletionSeconds", estimated_completion_seconds),
        ("stageProgress", stage_progress),
        ("status", status),
    ):
        if value is not None:
            fields[name] = value
    if video.get("processingStartedAt") is None:
        fields["processingStartedAt"] = now
    await ctx.db.patch(video["_id"], fields)


@mutation
async def update_job_error(
    ctx: Any,
    twitch_id: str,
    job_id: str,
    error_type: str,
    error_message: str,
    is_retryable: bool,
    error_details: str | None = None,
) -> None:
    """Mark the job Failed with the worker's error (errorType: one of the seed's seven)."""
    fn = "videos:updateJobError"
    video = await _load_for_report(ctx, fn, twitch_id)
    check_text(fn, "jobId", job_id)
    check_choice(fn, "errorType", error_type, ERROR_TYPES)
    check_text(fn, "errorMessage", error_message)
    now = now_ms()
    fields = {
        "jobId": job_id,
        "status": "Failed",
        "errorType": error_type,
        "errorMessage": error_message,
        "errorDetails": error_details,
        "isRetryable": is_retryable,
        "processingCompletedAt": now,
        "updatedAt": now,
    }
    await ctx.db.patch(video["_id"], fields)
    await _notify_end(ctx, video, fields)


@mutation
async def complete_job(ctx: Any, twitch_id: str, job_id: str, urls: JobUrls | None = None) -> None:
    """Mark the job Completed at 100%, storing the result URLs given; clears a retried job's old error."""
    fn = "videos:completeJob"
    video = await _load_for_report(ctx, fn, twitch_id)
    check_text(fn, "jobId", job_id)
    now = now_ms()
    fields: dict[str, Any] = {
        "jobId": job_id,
        "status": "Completed",
        "progressPercentage": 100,
        "currentStage": "Completed",
        "estimatedCompletionSeconds": 0,
        "processingCompletedAt": now,
        "updatedAt": now,
        **{f: None for f in ERROR_FIELDS},
    }
    if urls is not None:
        fields.update(urls.model_dump(by_alias=True, exclude_none=True))
    await ctx.db.patch(video["_id"], fields)
    await _notify_end(ctx, video, fields)


@query
async def get_job_by_id(ctx: Any, job_id: str) -> Doc("videos") | None:
    return await ctx.db.query("videos").with_index("by_job_id", lambda q: q.eq("jobId", job_id)).first()


@query
async def get_by_twitch_id(ctx: Any, twitch_id: str) -> Doc("videos") | None:
    return await _by_twitch_id(ctx, twitch_id)


@query
async def list_by_status(ctx: Any, status: str | None = None, limit: int | None = None) -> list[Doc("videos")]:
    """Newest first, at most `limit` (default 50, up to 500): jobs with `status`, or all jobs by createdAt."""
    fn = "videos:listByStatus"
    n = (
        DEFAULT_LIST_LIMIT
        if limit is None
        else int(check_number(fn, "limit", limit, low=1, high=MAX_LIST_LIMIT, whole=True))
    )
    if status is None:
        q = ctx.db.query("videos").with_index("by_created_at")
    else:
        check_choice(fn, "status", status, STATUSES)
        q = ctx.db.query("videos").with_index("by_status", lambda r: r.eq("status", status))
    return await q.order("desc").take(n)


# A job in a processing stage with no report for this long is failed by the seed cron (functions/crons.py).
STALE_AFTER_MINUTES = 30.0
_STALE_BATCH = 100


@internal_mutation
async def fail_stalled_jobs(ctx: Any, stale_after_minutes: float = STALE_AFTER_MINUTES) -> float:
    """Fail, as `processing_timeout` (retryable), the queued or processing jobs whose last report is older than
    `stale_after_minutes`: a worker that died reports nothing, and its job would otherwise look alive forever.
    At most 100 per stage per run (the next run takes the rest); returns how many it failed."""
    cutoff = now_ms() - stale_after_minutes * 60_000.0
    now = now_ms()
    failed = 0
    for status in PROCESSING_STAGES:
        stale = await (
            ctx.db.query("videos")
            .with_index("by_status", lambda q, s=status: q.eq("status", s))
            .filter(lambda q: q.lt(q.field("updatedAt"), cutoff))
            .take(_STALE_BATCH)
        )
        for video in stale:
            fields = {
                "status": "Failed",
                "errorType": "processing_timeout",
                "errorMessage": f"no progress report for {stale_after_minutes:g} minutes (stage {status!r})",
                "isRetryable": True,
                "processingCompletedAt": now,
                "updatedAt": now,
            }
            await ctx.db.patch(video["_id"], fields)
            await _notify_end(ctx, video, fields)
            failed += 1
    return float(failed)
