"""videos:* (seed 003) on a live server: the job lifecycle reported by an admin-key worker, public reads, and the
callbackUrl a job's end is POSTed to (received by a real HTTP server on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from functions.videos import CALLBACK_TIMEOUT_S
from server import ConvexError
from server.errors import ArgumentError, AuthRequired
from server.testing import RippleApp
from tests.support.server import RippleServer

ERROR_TYPES = [
    "network_error",
    "invalid_video_url",
    "video_too_large",
    "processing_timeout",
    "insufficient_resources",
    "external_service_error",
    "unknown_error",
]
STAGES = ["Downloading", "Fetching chat", "Transcribing", "Analyzing", "Finding highlights"]


async def test_job_lifecycle_progress_error_retry_complete(ripple_app: RippleApp) -> None:
    alice, bob, admin, anon = (
        ripple_app.as_user("alice"),
        ripple_app.as_user("bob"),
        ripple_app.as_admin(),
        ripple_app.anonymous(),
    )
    vid = await alice.mutation("videos:create", {"twitchId": "v1", "title": "Stream 1"})
    video = await anon.query("videos:getByTwitchId", {"twitchId": "v1"})  # reads are public
    assert video["_id"] == vid and video["status"] == "Queued" and video["createdAt"] == video["updatedAt"]
    assert "jobId" not in video and "processingStartedAt" not in video
    with pytest.raises(ConvexError) as exc:
        await bob.mutation("videos:create", {"twitchId": "v1", "title": "again"})
    assert exc.value.data["code"] == "ALREADY_EXISTS" and 'twitchId "v1" already exists' in str(exc.value)

    # First progress report: sets jobId, the stage and processingStartedAt; absent fields stay absent.
    await admin.mutation(
        "videos:updateJobProgress", {"twitchId": "v1", "jobId": "j1", "progressPercentage": 0, "status": "Downloading"}
    )
    video = await anon.query("videos:getJobById", {"jobId": "j1"})
    assert video["_id"] == vid and video["status"] == "Downloading" and video["progressPercentage"] == 0
    started = video["processingStartedAt"]
    assert "currentStage" not in video and "estimatedCompletionSeconds" not in video
    for pct, stage in ((20, "Fetching chat"), (45.5, "Transcribing")):
        await admin.mutation(
            "videos:updateJobProgress",
            {
                "twitchId": "v1",
                "jobId": "j1",
                "progressPercentage": pct,
                "currentStage": stage,
                "status": stage,
                "estimatedCompletionSeconds": 120,
                "stageProgress": {"transcribe": {"done": 3, "of": 10}},
            },
        )
    video = await anon.query("videos:getJobById", {"jobId": "j1"})
    assert (video["status"], video["progressPercentage"], video["currentStage"]) == (
        "Transcribing",
        45.5,
        "Transcribing",
    )
    assert video["processingStartedAt"] == started and video["stageProgress"] == {"transcribe": {"done": 3, "of": 10}}
    await admin.mutation(
        "videos:updateJobProgress", {"twitchId": "v1", "jobId": "j1", "progressPercentage": 50}
    )  # no status: the stage stays
    assert (await anon.query("videos:getJobById", {"jobId": "j1"}))["status"] == "Transcribing"

    # Failure, then a retry (a progress report naming a stage), then completion.
    await admin.mutation(
        "videos:updateJobError",
        {
            "twitchId": "v1",
            "jobId": "j1",
            "errorType": "network_error",
            "errorMessage": "timeout",
            "errorDetails": "GET /chat: 504",
            "isRetryable": True,
        },
    )
    video = await anon.query("videos:getByTwitchId", {"twitchId": "v1"})
    assert (
        video["status"],
        video["errorType"],
        video["errorMessage"],
        video["errorDetails"],
        video["isRetryable"],
    ) == ("Failed", "network_error", "timeout", "GET /chat: 504", True)
    assert video["processingCompletedAt"] >= started
    with pytest.raises(ConvexError, match="to retry it, report progress with a processing stage") as exc:
        await admin.mutation("videos:updateJobProgress", {"twitchId": "v1", "jobId": "j2", "progressPercentage": 5})
    assert exc.value.data["code"] == "INVALID_STATE"
    await admin.mutation(
        "videos:updateJobProgress", {"twitchId": "v1", "jobId": "j2", "status": "Analyzing", "progressPercentage": 60}
    )
    video = await anon.query("videos:getJobById", {"jobId": "j2"})
    assert video["status"] == "Analyzing" and video["retryCount"] == 1 and video["processingStartedAt"] == started
    assert not {"errorType", "errorMessage", "errorDetails", "isRetryable", "processingCompletedAt"} & video.keys()
    assert await anon.query("videos:getJobById", {"jobId": "j1"}) is None

    await admin.mutation(
        "videos:completeJob",
        {"twitchId": "v1", "jobId": "j2", "urls": {"transcriptUrl": "https://x/t.json", "chatUrl": "https://x/c.json"}},
    )
    video = await anon.query("videos:getJobById", {"jobId": "j2"})
    assert (
        video["status"],
        video["progressPercentage"],
        video["currentStage"],
        video["estimatedCompletionSeconds"],
    ) == ("Completed", 100, "Completed", 0)
    assert video["transcriptUrl"] == "https://x/t.json" and video["chatUrl"] == "https://x/c.json"
    assert "audiowaveUrl" not in video and video["processingCompletedAt"] >= video["processingStartedAt"]

    # A completed job takes no more reports.
    for path, args in (
        ("videos:updateJobProgress", {"progressPercentage": 10}),
        ("videos:updateJobError", {"errorType": "unknown_error", "errorMessage": "late", "isRetryable": False}),
        ("videos:completeJob", {}),
    ):
        with pytest.raises(ConvexError, match="already Completed") as exc:
            await admin.mutation(path, {"twitchId": "v1", "jobId": "j2", **args})
        assert exc.value.data["code"] == "INVALID_STATE"

    # Unknown videos.
    for path, args in (
        ("videos:updateJobProgress", {}),
        ("videos:updateJobError", {"errorType": "unknown_error", "errorMessage": "m", "isRetryable": False}),
        ("videos:completeJob", {}),
    ):
        with pytest.raises(ConvexError, match='no video has twitchId "nope"') as exc:
            await admin.mutation(path, {"twitchId": "nope", "jobId": "j", **args})
        assert exc.value.data["code"] == "NOT_FOUND"
    assert await anon.query("videos:getByTwitchId", {"twitchId": "nope"}) is None


async def test_worker_mutations_validate_every_field(ripple_app: RippleApp) -> None:
    alice, admin, anon = ripple_app.as_user("alice"), ripple_app.as_admin(), ripple_app.anonymous()
    await admin.mutation("videos:create", {"twitchId": "v2", "title": "Stream 2"})  # the worker may queue
    base = {"twitchId": "v2", "jobId": "j"}
    for bad in (-1, 100.5, 101):
        with pytest.raises(ArgumentError, match=r'"progressPercentage" must be a number from 0 to 100'):
            await admin.mutation("videos:updateJobProgress", {**base, "progressPercentage": bad})
    with pytest.raises(ArgumentError, match='"estimatedCompletionSeconds" must be a number >= 0'):
        await admin.mutation("videos:updateJobProgress", {**base, "estimatedCompletionSeconds": -3})
    with pytest.raises(ArgumentError, match='"status" must be a processing stage, one of "Downloading"'):
        await admin.mutation("videos:updateJobProgress", {**base, "status": "Uploading"})
    for end in ("Completed", "Failed", "Queued"):
        with pytest.raises(ArgumentError, match='"status" must be a processing stage') as exc:
            await admin.mutation("videos:updateJobProgress", {**base, "status": end})
        assert ("completeJob or updateJobError" in str(exc.value)) == (end != "Queued")
    for stage in STAGES:
        await admin.mutation("videos:updateJobProgress", {**base, "status": stage})
    with pytest.raises(ArgumentError, match='"jobId" must be a non-empty string'):
        await admin.mutation("videos:updateJobProgress", {**base, "jobId": ""})
    with pytest.raises(ArgumentError, match='unexpected argument "retryCount"'):
        await admin.mutation("videos:updateJobProgress", {**base, "retryCount": 3})

    err = {**base, "errorMessage": "boom", "isRetryable": False}
    with pytest.raises(ArgumentError, match=r'"errorType" must be one of "network_error", .*"unknown_error"; got'):
        await admin.mutation("videos:updateJobError", {**err, "errorType": "disk_full"})
    with pytest.raises(ArgumentError, match='missing required argument "isRetryable"'):
        await admin.mutation("videos:updateJobError", {**base, "errorType": "unknown_error", "errorMessage": "m"})
    with pytest.raises(ArgumentError, match='"errorMessage" must be a non-empty string'):
        await admin.mutation("videos:updateJobError", {**err, "errorType": "unknown_error", "errorMessage": ""})
    for error_type in ERROR_TYPES:
        await admin.mutation("videos:updateJobError", {**err, "errorType": error_type})
        assert (await anon.query("videos:getByTwitchId", {"twitchId": "v2"}))["errorType"] == error_type
    with pytest.raises(ArgumentError, match='unexpected argument "urls.videoUrl"'):
        await admin.mutation("videos:completeJob", {**base, "urls": {"videoUrl": "x"}})

    for bad in ({"twitchId": "", "title": "t"}, {"twitchId": "v3", "title": " "}):
        with pytest.raises(ArgumentError, match="must be a non-empty string"):
            await alice.mutation("videos:create", bad)


async def test_worker_mutations_require_the_admin_key(ripple_app: RippleApp) -> None:
    alice, admin, anon = ripple_app.as_user("alice"), ripple_app.as_admin(), ripple_app.anonymous()
    await alice.mutation("videos:create", {"twitchId": "v4", "title": "Stream 4"})
    calls = {
        "videos:updateJobProgress": {"twitchId": "v4", "jobId": "j4", "progressPercentage": 10},
        "videos:updateJobError": {
            "twitchId": "v4",
            "jobId": "j4",
            "errorType": "unknown_error",
            "errorMessage": "m",
            "isRetryable": True,
        },
        "videos:completeJob": {"twitchId": "v4", "jobId": "j4"},
    }
    for path, args in calls.items():
        for caller in (alice, anon):
            with pytest.raises(AuthRequired, match="Only a trusted worker with the admin key"):
                await caller.mutation(path, args)
        response = await alice.http("mutation", path, args)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "error", body
        assert "admin key" in body["errorMessage"]
    video = await anon.query("videos:getByTwitchId", {"twitchId": "v4"})
    assert video["status"] == "Queued" and "jobId" not in video  # nothing was written

    # Anonymous callers cannot queue videos; reads need nobody.
    with pytest.raises(AuthRequired, match="signed in to queue a video"):
        await anon.mutation("videos:create", {"twitchId": "v5", "title": "t"})
    response = await admin.http("mutation", "videos:updateJobProgress", calls["videos:updateJobProgress"])
    assert response.json()["status"] == "success"
    response = await anon.http("query", "videos:getJobById", {"jobId": "j4"})
    assert response.json()["value"]["progressPercentage"] == 10


async def test_list_by_status_newest_first_and_bounded(ripple_app: RippleApp) -> None:
    alice, admin, anon = ripple_app.as_user("alice"), ripple_app.as_admin(), ripple_app.anonymous()
    ids = [await alice.mutation("videos:create", {"twitchId": f"t{i}", "title": f"T{i}"}) for i in range(6)]
    for i in (1, 3, 4):
        await admin.mutation("videos:updateJobProgress", {"twitchId": f"t{i}", "jobId": f"j{i}", "status": "Analyzing"})
    await admin.mutation("videos:completeJob", {"twitchId": "t4", "jobId": "j4"})

    latest = await anon.query("videos:listByStatus", {})
    assert [v["_id"] for v in latest] == ids[::-1]
    assert [v["_id"] for v in await anon.query("videos:listByStatus", {"limit": 2})] == ids[:-3:-1]
    analyzing = await anon.query("videos:listByStatus", {"status": "Analyzing"})
    assert [v["_id"] for v in analyzing] == [ids[3], ids[1]]
    assert [v["_id"] for v in await anon.query("videos:listByStatus", {"status": "Queued", "limit": 1})] == [ids[5]]
    assert [v["_id"] for v in await anon.query("videos:listByStatus", {"status": "Completed"})] == [ids[4]]
    assert await anon.query("videos:listByStatus", {"status": "Failed"}) == []
    with pytest.raises(ArgumentError, match='"status" must be one of "Queued", "Downloading"'):
        await anon.query("videos:listByStatus", {"status": "queued"})
    for bad in (0, 501, 2.5):
        with pytest.raises(ArgumentError, match='"limit"'):
            await anon.query("videos:listByStatus", {"limit": bad})


async def test_concurrent_creates_of_one_twitch_id_make_one_video(ripple_app: RippleApp) -> None:
    alice, anon = ripple_app.as_user("alice"), ripple_app.anonymous()

    async def create(i: int) -> str | BaseException:
        try:
            return str(await alice.mutation("videos:create", {"twitchId": "dup", "title": f"T{i}"}))
        except ConvexError as exc:
            return exc

    results = await asyncio.gather(*(create(i) for i in range(6)))
    made = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, ConvexError)]
    assert len(made) == 1 and len(refused) == 5
    assert all(r.data["code"] == "ALREADY_EXISTS" for r in refused)
    assert [v["_id"] for v in await anon.query("videos:listByStatus", {"status": "Queued"})] == made


# callbackUrl


@dataclass
class Receiver:
    """What the callback receiver got, and how it answers (`status`, or `delay_s` before answering)."""

    url: str = ""
    status: int = 200
    delay_s: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.received.append(json.loads(await request.body()))
        self.headers.append(dict(request.headers))
        await asyncio.sleep(self.delay_s)
        return Response("ok" if self.status < 400 else "receiver is down", status_code=self.status)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = Starlette(routes=[Route("/hook", found.handle, methods=["POST"])])
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the receiver did not start"
        await asyncio.sleep(0.01)
    found.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/hook"
    try:
        yield found
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def callback_jobs(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT state FROM _scheduled_functions WHERE name = 'videos:sendCallback' ORDER BY _creation_time"
        )
    finally:
        await conn.close()
    return [json.loads(r["state"]) if isinstance(r["state"], str) else r["state"] for r in rows]


async def settled(dsn: str, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The callback jobs, once `count` of them have finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = await callback_jobs(dsn)
        if len(jobs) >= count and all(j["kind"] in ("success", "failed") for j in jobs):
            return jobs
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(0.02)


async def test_callback_url_gets_the_completed_and_the_failed_job(ripple_app: RippleApp, receiver: Receiver) -> None:
    alice, admin = ripple_app.as_user("alice"), ripple_app.as_admin()
    await alice.mutation("videos:create", {"twitchId": "cb1", "title": "S", "callbackUrl": receiver.url})
    await alice.mutation("videos:create", {"twitchId": "cb2", "title": "S", "callbackUrl": receiver.url})
    await alice.mutation("videos:create", {"twitchId": "plain", "title": "no callback"})
    for twitch_id in ("cb1", "cb2", "plain"):
        await admin.mutation("videos:updateJobProgress", {"twitchId": twitch_id, "jobId": f"j-{twitch_id}"})
    await admin.mutation("videos:completeJob", {"twitchId": "cb1", "jobId": "j-cb1", "urls": {"chatUrl": "https://c"}})
    await admin.mutation(
        "videos:updateJobError",
        {
            "twitchId": "cb2",
            "jobId": "j-cb2",
            "errorType": "network_error",
            "errorMessage": "lost",
            "isRetryable": True,
        },
    )
    await admin.mutation("videos:completeJob", {"twitchId": "plain", "jobId": "j-plain"})
    assert [j["kind"] for j in await settled(ripple_app.database_url, 2)] == ["success", "success"]
    await asyncio.sleep(0.2)
    assert len(await callback_jobs(ripple_app.database_url)) == 2  # the video without a callbackUrl scheduled none

    by_id = {body["video"]["twitchId"]: body for body in receiver.received}
    assert sorted(by_id) == ["cb1", "cb2"]
    done, failed = by_id["cb1"], by_id["cb2"]
    assert done["event"] == "job.completed"
    assert done["video"] == await alice.query("videos:getByTwitchId", {"twitchId": "cb1"})  # the final state
    assert done["video"]["status"] == "Completed" and done["video"]["chatUrl"] == "https://c"
    assert failed["event"] == "job.failed" and failed["video"]["errorType"] == "network_error"
    assert failed["video"] == await alice.query("videos:getByTwitchId", {"twitchId": "cb2"})
    assert all(h["content-type"] == "application/json" and h["x-ripple-request-id"] for h in receiver.headers)


async def test_the_stalled_job_cron_calls_back_processing_timeout(ripple: RippleServer, receiver: Receiver) -> None:
    await ripple.call("videos:create", {"twitchId": "stall", "title": "S", "callbackUrl": receiver.url}, user="alice")
    progress = {"twitchId": "stall", "jobId": "j", "status": "Transcribing"}
    await ripple.call("videos:updateJobProgress", progress, admin=True)
    await asyncio.sleep(0.01)
    assert await ripple.call("videos:failStalledJobs", {"staleAfterMinutes": 0}, internal=True) == 1
    assert [j["kind"] for j in await settled(ripple.settings.database_url or "", 1)] == ["success"]
    [body] = receiver.received
    assert body["event"] == "job.failed" and body["video"]["errorType"] == "processing_timeout"


@pytest.mark.parametrize("trouble", ["refused", "slow", "unreachable"])
async def test_a_failed_callback_is_marked_failed_not_retried(
    ripple_app: RippleApp, receiver: Receiver, trouble: str
) -> None:
    alice, admin = ripple_app.as_user("alice"), ripple_app.as_admin()
    url = receiver.url
    if trouble == "refused":
        receiver.status = 500
    elif trouble == "slow":
        receiver.delay_s = CALLBACK_TIMEOUT_S + 2
    else:
        url = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    await alice.mutation("videos:create", {"twitchId": "down", "title": "S", "callbackUrl": url})
    await admin.mutation("videos:updateJobProgress", {"twitchId": "down", "jobId": "j"})
    await admin.mutation("videos:completeJob", {"twitchId": "down", "jobId": "j"})
    [job] = await settled(ripple_app.database_url, 1, timeout_s=CALLBACK_TIMEOUT_S + 5)
    assert job["kind"] == "failed"
    expected = {"refused": "HTTP 500: receiver is down", "slow": "no answer within 5 s", "unreachable": "ConnectError"}
    assert expected[trouble] in job["error"] and 'the callback of video "down"' in job["error"]
    assert "(request " in job["error"]
    await asyncio.sleep(0.3)
    assert len(await callback_jobs(ripple_app.database_url)) == 1  # not retried
    assert len(receiver.received) == (0 if trouble == "unreachable" else 1)
    video = await alice.query("videos:getByTwitchId", {"twitchId": "down"})
    assert video["status"] == "Completed"  # a receiver's trouble never changes the job


async def test_callback_url_must_be_http(ripple_app: RippleApp) -> None:
    with pytest.raises(ArgumentError, match='"callbackUrl" must be an http:// or https:// URL'):
        await ripple_app.as_user("alice").mutation(
            "videos:create", {"twitchId": "x", "title": "S", "callbackUrl": "file:///etc/passwd"}
        )
