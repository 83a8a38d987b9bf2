"""Each seed's flow as its users watch it: a subscriber over the sync protocol sees the state move."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fakes.anthropic_api import FakeScript, run_fake_anthropic
from tests.support.server import RippleServer
from tests.support.ws import SyncClient

KEY = "sk-live-flow-test"


async def signed_in(ripple: RippleServer, user: str) -> SyncClient:
    client = await SyncClient.connect(ripple.ws_url)
    await client.authenticate(ripple.token(user))
    return client


def updated(client: SyncClient, qid: int, check: Any) -> Any:
    return lambda m: m["type"] == "Transition" and qid in client.results and check(client.results[qid])


async def test_worker_progress_reaches_a_job_watcher(ripple: RippleServer) -> None:
    """seed 003: a worker with the admin key reports 0 → 100; a public subscriber to getJobById sees each step."""
    await ripple.call("videos:create", {"twitchId": "tw1", "title": "Stream"}, user="alice")
    watcher = await SyncClient.connect(ripple.ws_url)
    qid = await watcher.subscribe("videos:getJobById", {"jobId": "job-1"})
    assert watcher.results[qid] is None

    worker = await SyncClient.connect(ripple.ws_url)
    await worker.authenticate(ripple.services.settings.admin_key, token_type="Admin")
    seen = []
    for pct, stage in [(0, "Downloading"), (25, "Transcribing"), (60, "Analyzing"), (90, "Finding highlights")]:
        response = await worker.mutation(
            "videos:updateJobProgress",
            {
                "twitchId": "tw1",
                "jobId": "job-1",
                "progressPercentage": pct,
                "currentStage": stage,
                "estimatedCompletionSeconds": 100 - pct,
            },
        )
        assert response["success"], response
        await watcher.expect(updated(watcher, qid, lambda doc, pct=pct: doc and doc["progressPercentage"] == pct))
        seen.append((watcher.results[qid]["progressPercentage"], watcher.results[qid]["currentStage"]))
    await worker.mutation("videos:completeJob", {"twitchId": "tw1", "jobId": "job-1"})
    await watcher.expect(updated(watcher, qid, lambda doc: doc["status"] == "Completed"))
    assert watcher.results[qid]["progressPercentage"] == 100
    assert seen == [(0, "Downloading"), (25, "Transcribing"), (60, "Analyzing"), (90, "Finding highlights")]

    # Without the admin key the same report is refused and nothing changes.
    anonymous = await SyncClient.connect(ripple.ws_url)
    refused = await anonymous.mutation(
        "videos:updateJobProgress", {"twitchId": "tw1", "jobId": "job-1", "progressPercentage": 5}
    )
    assert refused["success"] is False and "admin key" in refused["result"]
    for client in (watcher, worker, anonymous):
        await client.close()


async def test_project_progress_moves_as_selections_and_animations_complete(ripple: RippleServer) -> None:
    """seed 004: a subscriber to getProjectProgress sees the percentages move."""
    alice = await signed_in(ripple, "alice")

    async def call(name: str, args: dict[str, Any]) -> Any:
        response = await alice.mutation(f"projectRedesign:{name}", args)
        assert response["success"], response
        return response["result"]

    project = await call("createRedesignProject", {"prompt": "Tokyo dreams", "title": "Tokyo"})
    qid = await alice.subscribe("projectRedesign:getProjectProgress", {"projectId": project})
    assert alice.results[qid]["totalShots"] == 0
    made = await call(
        "createSceneWithShots",
        {
            "projectId": project,
            "sceneNumber": 1,
            "title": "Opening",
            "description": "Dawn",
            "shots": [{"shotNumber": n, "description": f"shot {n}", "initialPrompt": "p"} for n in (1, 2)],
        },
    )
    scene, shots = made["sceneId"], made["shotIds"]
    assert alice.results[qid]["totalShots"] == 2  # read-your-writes: already there when the mutation returned
    selections = []
    for shot in shots:
        images = await call(
            "batchCreateShotImages",
            {
                "projectId": project,
                "sceneId": scene,
                "shotId": shot,
                "iterationNumber": 0,
                "iterationPrompt": "first",
                "images": [{"variantNumber": v, "imageUrl": f"https://i/{v}.png"} for v in range(6)],
            },
        )
        selections.append(
            await call(
                "selectMasterShot",
                {"projectId": project, "sceneId": scene, "shotId": shot, "selectedImageId": images[2]},
            )
        )
        assert alice.results[qid]["shotsWithSelections"] == len(selections)
    assert alice.results[qid]["selectionProgress"] == 100 and alice.results[qid]["isSelectionComplete"] is True
    stored = await ripple.call("projectRedesign:getStoryboardSelections", {"projectId": project}, user="alice")
    for n, selection in enumerate(s["_id"] for s in stored):
        await call(
            "updateStoryboardAnimation",
            {"selectionId": selection, "animationStatus": "complete", "animatedVideoUrl": f"https://v/{n}.mp4"},
        )
        assert alice.results[qid]["animationProgress"] == [50, 100][n]
    assert alice.results[qid]["isAnimationComplete"] is True

    # Another user's subscription to the same project sees nothing of it.
    bob = await signed_in(ripple, "bob")
    bq = await bob.subscribe("projectRedesign:getProjectProgress", {"projectId": project})
    assert bob.results[bq] is None
    await alice.close()
    await bob.close()


async def test_agent_sessions_change_status_live(ripple: RippleServer) -> None:
    """seed 002: a subscriber to listSessionsByWorkflow sees sessions change status."""
    alice = await signed_in(ripple, "alice")
    workflow = (await alice.mutation("workflows:createWorkflow", {"task": "build a CLI"}))["result"]
    qid = await alice.subscribe("agents:listSessionsByWorkflow", {"workflowId": workflow})
    assert alice.results[qid] == []
    planner = (
        await alice.mutation(
            "agents:createAgentSession",
            {"workflowId": workflow, "input": "plan it", "variant": {"kind": "planner_session"}},
        )
    )["result"]
    watcher = await signed_in(ripple, "alice")  # a second screen of the same user
    wq = await watcher.subscribe("agents:listSessionsByWorkflow", {"workflowId": workflow})
    assert [s["status"] for s in watcher.results[wq]] == ["idle"]
    await alice.mutation("agents:updateAgentSession", {"sessionId": planner, "status": "running"})
    await watcher.expect(updated(watcher, wq, lambda sessions: sessions[0]["status"] == "running"))
    await alice.mutation(
        "agents:updateAgentSession",
        {"sessionId": planner, "status": "completed", "variant": {"kind": "planner_session", "plan": "1. parse"}},
    )
    await watcher.expect(updated(watcher, wq, lambda sessions: sessions[0]["status"] == "completed"))
    assert watcher.results[wq][0]["plan"] == "1. parse"
    await alice.close()
    await watcher.close()


async def test_refinement_appears_and_streams_in_the_chain(
    ripple: RippleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seed 000: a subscriber to getRefinementChain sees the refinement appear, its code stream in, then succeed."""
    parent = await ripple.call(
        "generations:store",
        {
            "userId": f"{ripple.settings.jwt_issuer}|alice",
            "prompt": "a bouncing ball",
            "code": "ball()",
            "rawCode": "```tsx\nball()\n```",
            "aspectRatio": "16:9",
            "fps": 30,
            "durationInSeconds": 4,
        },
        internal=True,
    )
    chunks = ["Here you go:\n```tsx\n", "const ball = ", "blue();", "\nball.bounce();", "\n```"]
    async with run_fake_anthropic(FakeScript(chunks=chunks, chunk_delay_s=0.25)) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        monkeypatch.setenv("RIPPLE_STREAM_PATCH_INTERVAL_S", "0.05")
        alice = await signed_in(ripple, "alice")
        children = await alice.subscribe("generations:listByParent", {"parentId": parent})
        assert alice.results[children] == []
        refine = asyncio.create_task(
            ripple.call(
                "generateAnimation:refineAndPersist",
                {"parentGenerationId": parent, "refinementPrompt": "make it blue", "conversationHistory": []},
                user="alice",
            )
        )
        await alice.expect(updated(alice, children, lambda docs: len(docs) == 1), timeout_s=15)
        child = alice.results[children][0]["_id"]
        chain = await alice.subscribe("generations:getRefinementChain", {"generationId": child})
        versions = []
        while not (alice.results[chain][-1]["status"] == "success"):
            await alice.expect(lambda m: m["type"] == "Transition" and m["modifications"], timeout_s=15)
            if chain in alice.results:
                versions.append(alice.results[chain][-1].get("rawCode", ""))
        result = await refine
        final = alice.results[chain]
        assert [g["_id"] for g in final] == [parent, child]
        assert final[1]["code"] == "const ball = blue();\nball.bounce();" == result["code"]
        assert final[1]["aspectRatio"] == "16:9" and final[1]["fps"] == 30 and final[1]["durationInSeconds"] == 4
        partial = [v for v in versions if v and v != final[1]["rawCode"]]
        assert len(partial) >= 2, versions  # the code was seen growing while Claude streamed
        assert all(final[1]["rawCode"].startswith(v) for v in partial)
        await alice.close()
