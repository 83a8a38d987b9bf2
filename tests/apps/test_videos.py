"""videos:* (seed 003) on a live server: the job lifecycle reported by an admin-key worker, public reads."""

from __future__ import annotations

import asyncio

import pytest

from server import ConvexError
from server.errors import ArgumentError, AuthRequired
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


async def test_job_lifecycle_progress_error_retry_complete(ripple: RippleServer) -> None:
    vid = await ripple.call("videos:create", {"twitchId": "v1", "title": "Stream 1"}, user="alice")
    video = await ripple.call("videos:getByTwitchId", {"twitchId": "v1"})  # reads are public
    assert video["_id"] == vid and video["status"] == "Queued" and video["createdAt"] == video["updatedAt"]
    assert "jobId" not in video and "processingStartedAt" not in video
    with pytest.raises(ConvexError) as exc:
        await ripple.call("videos:create", {"twitchId": "v1", "title": "again"}, user="bob")
    assert exc.value.data["code"] == "ALREADY_EXISTS" and 'twitchId "v1" already exists' in str(exc.value)

    # First progress report: sets jobId, the stage and processingStartedAt; absent fields stay absent.
    await ripple.call(
        "videos:updateJobProgress",
        {"twitchId": "v1", "jobId": "j1", "progressPercentage": 0, "status": "Downloading"},
        admin=True,
    )
    video = await ripple.call("videos:getJobById", {"jobId": "j1"})
    assert video["_id"] == vid and video["status"] == "Downloading" and video["progressPercentage"] == 0
    started = video["processingStartedAt"]
    assert "currentStage" not in video and "estimatedCompletionSeconds" not in video
    for pct, stage in ((20, "Fetching chat"), (45.5, "Transcribing")):
        await ripple.call(
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
            admin=True,
        )
    video = await ripple.call("videos:getJobById", {"jobId": "j1"})
    assert (video["status"], video["progressPercentage"], video["currentStage"]) == (
        "Transcribing",
        45.5,
        "Transcribing",
    )
    assert video["processingStartedAt"] == started and video["stageProgress"] == {"transcribe": {"done": 3, "of": 10}}
    await ripple.call(
        "videos:updateJobProgress", {"twitchId": "v1", "jobId": "j1", "progressPercentage": 50}, admin=True
    )  # no status: the stage stays
    assert (await ripple.call("videos:getJobById", {"jobId": "j1"}))["status"] == "Transcribing"

    # Failure, then a retry (a progress report naming a stage), then completion.
    await ripple.call(
        "videos:updateJobError",
        {
            "twitchId": "v1",
            "jobId": "j1",
            "errorType": "network_error",
            "errorMessage": "timeout",
            "errorDetails": "GET /chat: 504",
            "isRetryable": True,
        },
        admin=True,
    )
    video = await ripple.call("videos:getByTwitchId", {"twitchId": "v1"})
    assert (
        video["status"],
        video["errorType"],
        video["errorMessage"],
        video["errorDetails"],
        video["isRetryable"],
    ) == ("Failed", "network_error", "timeout", "GET /chat: 504", True)
    assert video["processingCompletedAt"] >= started
    with pytest.raises(ConvexError, match="to retry it, report progress with a processing stage") as exc:
        await ripple.call(
            "videos:updateJobProgress", {"twitchId": "v1", "jobId": "j2", "progressPercentage": 5}, admin=True
        )
    assert exc.value.data["code"] == "INVALID_STATE"
    await ripple.call(
        "videos:updateJobProgress",
        {"twitchId": "v1", "jobId": "j2", "status": "Analyzing", "progressPercentage": 60},
        admin=True,
    )
    video = await ripple.call("videos:getJobById", {"jobId": "j2"})
    assert video["status"] == "Analyzing" and video["retryCount"] == 1 and video["processingStartedAt"] == started
    assert not {"errorType", "errorMessage", "errorDetails", "isRetryable", "processingCompletedAt"} & video.keys()
    assert await ripple.call("videos:getJobById", {"jobId": "j1"}) is None

    await ripple.call(
        "videos:completeJob",
        {"twitchId": "v1", "jobId": "j2", "urls": {"transcriptUrl": "https://x/t.json", "chatUrl": "https://x/c.json"}},
        admin=True,
    )
    video = await ripple.call("videos:getJobById", {"jobId": "j2"})
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
            await ripple.call(path, {"twitchId": "v1", "jobId": "j2", **args}, admin=True)
        assert exc.value.data["code"] == "INVALID_STATE"

    # Unknown videos.
    for path, args in (
        ("videos:updateJobProgress", {}),
        ("videos:updateJobError", {"errorType": "unknown_error", "errorMessage": "m", "isRetryable": False}),
        ("videos:completeJob", {}),
    ):
        with pytest.raises(ConvexError, match='no video has twitchId "nope"') as exc:
            await ripple.call(path, {"twitchId": "nope", "jobId": "j", **args}, admin=True)
        assert exc.value.data["code"] == "NOT_FOUND"
    assert await ripple.call("videos:getByTwitchId", {"twitchId": "nope"}) is None


async def test_worker_mutations_validate_every_field(ripple: RippleServer) -> None:
    await ripple.call("videos:create", {"twitchId": "v2", "title": "Stream 2"}, admin=True)  # the worker may queue
    base = {"twitchId": "v2", "jobId": "j"}
    for bad in (-1, 100.5, 101):
        with pytest.raises(ArgumentError, match=r'"progressPercentage" must be a number from 0 to 100'):
            await ripple.call("videos:updateJobProgress", {**base, "progressPercentage": bad}, admin=True)
    with pytest.raises(ArgumentError, match='"estimatedCompletionSeconds" must be a number >= 0'):
        await ripple.call("videos:updateJobProgress", {**base, "estimatedCompletionSeconds": -3}, admin=True)
    with pytest.raises(ArgumentError, match='"status" must be a processing stage, one of "Downloading"'):
        await ripple.call("videos:updateJobProgress", {**base, "status": "Uploading"}, admin=True)
    for end in ("Completed", "Failed", "Queued"):
        with pytest.raises(ArgumentError, match='"status" must be a processing stage') as exc:
            await ripple.call("videos:updateJobProgress", {**base, "status": end}, admin=True)
        assert ("completeJob or updateJobError" in str(exc.value)) == (end != "Queued")
    for stage in STAGES:
        await ripple.call("videos:updateJobProgress", {**base, "status": stage}, admin=True)
    with pytest.raises(ArgumentError, match='"jobId" must be a non-empty string'):
        await ripple.call("videos:updateJobProgress", {**base, "jobId": ""}, admin=True)
    with pytest.raises(ArgumentError, match='unexpected argument "retryCount"'):
        await ripple.call("videos:updateJobProgress", {**base, "retryCount": 3}, admin=True)

    err = {**base, "errorMessage": "boom", "isRetryable": False}
    with pytest.raises(ArgumentError, match=r'"errorType" must be one of "network_error", .*"unknown_error"; got'):
        await ripple.call("videos:updateJobError", {**err, "errorType": "disk_full"}, admin=True)
    with pytest.raises(ArgumentError, match='missing required argument "isRetryable"'):
        await ripple.call(
            "videos:updateJobError", {**base, "errorType": "unknown_error", "errorMessage": "m"}, admin=True
        )
    with pytest.raises(ArgumentError, match='"errorMessage" must be a non-empty string'):
        await ripple.call(
            "videos:updateJobError", {**err, "errorType": "unknown_error", "errorMessage": ""}, admin=True
        )
    for error_type in ERROR_TYPES:
        await ripple.call("videos:updateJobError", {**err, "errorType": error_type}, admin=True)
        assert (await ripple.call("videos:getByTwitchId", {"twitchId": "v2"}))["errorType"] == error_type
    with pytest.raises(ArgumentError, match='unexpected argument "urls.videoUrl"'):
        await ripple.call("videos:completeJob", {**base, "urls": {"videoUrl": "x"}}, admin=True)

    for bad in ({"twitchId": "", "title": "t"}, {"twitchId": "v3", "title": " "}):
        with pytest.raises(ArgumentError, match="must be a non-empty string"):
            await ripple.call("videos:create", bad, user="alice")


async def test_worker_mutations_require_the_admin_key(ripple: RippleServer) -> None:
    await ripple.call("videos:create", {"twitchId": "v4", "title": "Stream 4"}, user="alice")
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
        for user in ("alice", None):
            with pytest.raises(AuthRequired, match="Only a trusted worker with the admin key"):
                await ripple.call(path, args, user=user)
        response = await ripple.http("mutation", path, args, token=ripple.token("alice"))
        body = response.json()
        assert response.status_code == 200 and body["status"] == "error", body
        assert "admin key" in body["errorMessage"]
    video = await ripple.call("videos:getByTwitchId", {"twitchId": "v4"})
    assert video["status"] == "Queued" and "jobId" not in video  # nothing was written

    # Anonymous callers cannot queue videos; reads need nobody.
    with pytest.raises(AuthRequired, match="signed in to queue a video"):
        await ripple.call("videos:create", {"twitchId": "v5", "title": "t"})
    response = await ripple.http("mutation", "videos:updateJobProgress", calls["videos:updateJobProgress"], admin=True)
    assert response.json()["status"] == "success"
    response = await ripple.http("query", "videos:getJobById", {"jobId": "j4"})
    assert response.json()["value"]["progressPercentage"] == 10


async def test_list_by_status_newest_first_and_bounded(ripple: RippleServer) -> None:
    ids = [await ripple.call("videos:create", {"twitchId": f"t{i}", "title": f"T{i}"}, user="alice") for i in range(6)]
    for i in (1, 3, 4):
        await ripple.call(
            "videos:updateJobProgress", {"twitchId": f"t{i}", "jobId": f"j{i}", "status": "Analyzing"}, admin=True
        )
    await ripple.call("videos:completeJob", {"twitchId": "t4", "jobId": "j4"}, admin=True)

    latest = await ripple.call("videos:listByStatus", {})
    assert [v["_id"] for v in latest] == ids[::-1]
    assert [v["_id"] for v in await ripple.call("videos:listByStatus", {"limit": 2})] == ids[:-3:-1]
    analyzing = await ripple.call("videos:listByStatus", {"status": "Analyzing"})
    assert [v["_id"] for v in analyzing] == [ids[3], ids[1]]
    assert [v["_id"] for v in await ripple.call("videos:listByStatus", {"status": "Queued", "limit": 1})] == [ids[5]]
    assert [v["_id"] for v in await ripple.call("videos:listByStatus", {"status": "Completed"})] == [ids[4]]
    assert await ripple.call("videos:listByStatus", {"status": "Failed"}) == []
    with pytest.raises(ArgumentError, match='"status" must be one of "Queued", "Downloading"'):
        await ripple.call("videos:listByStatus", {"status": "queued"})
    for bad in (0, 501, 2.5):
        with pytest.raises(ArgumentError, match='"limit"'):
            await ripple.call("videos:listByStatus", {"limit": bad})


async def test_concurrent_creates_of_one_twitch_id_make_one_video(ripple: RippleServer) -> None:
    async def create(i: int) -> str | BaseException:
        try:
            return str(await ripple.call("videos:create", {"twitchId": "dup", "title": f"T{i}"}, user="alice"))
        except ConvexError as exc:
            return exc

    results = await asyncio.gather(*(create(i) for i in range(6)))
    made = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, ConvexError)]
    assert len(made) == 1 and len(refused) == 5
    assert all(r.data["code"] == "ALREADY_EXISTS" for r in refused)
    assert [v["_id"] for v in await ripple.call("videos:listByStatus", {"status": "Queued"})] == made
