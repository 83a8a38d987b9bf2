"""workflows:* and agents:* (seed 002) on a live server: ownership, status checks, the session union, pages."""

from __future__ import annotations

from typing import Any

import pytest

from server import ConvexError
from server.errors import ArgumentError, AuthRequired, IdError
from server.testing import Client, RippleApp


async def _all_pages(caller: Client, path: str, args: dict[str, Any], n: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(50):
        page = await caller.query(path, {**args, "paginationOpts": {"numItems": n, "cursor": cursor}})
        assert len(page["page"]) <= n
        ids += [doc["_id"] for doc in page["page"]]
        if page["isDone"]:
            return ids
        cursor = page["continueCursor"]
    raise AssertionError("pagination never finished")


def _code(exc: pytest.ExceptionInfo[ConvexError]) -> str:
    return str(exc.value.data["code"])


async def test_workflow_lifecycle_and_ownership(ripple_app: RippleApp) -> None:
    alice, bob, anon = ripple_app.as_user("alice"), ripple_app.as_user("bob"), ripple_app.anonymous()
    wf = await alice.mutation("workflows:createWorkflow", {"task": "build a CLI"})
    doc = await alice.query("workflows:getWorkflow", {"workflowId": wf})
    assert doc["task"] == "build a CLI" and doc["status"] == "pending" and doc["currentStep"] == "planner"
    assert doc["artifacts"] == [] and doc["userId"].endswith("|alice")
    assert doc["metadata"]["createdAt"] == doc["createdAt"] == doc["updatedAt"]

    await alice.mutation(
        "workflows:updateWorkflowStatus", {"workflowId": wf, "status": "in_progress", "currentStep": "coder"}
    )
    doc = await alice.query("workflows:getWorkflow", {"workflowId": wf})
    assert (doc["status"], doc["currentStep"]) == ("in_progress", "coder")
    assert doc["metadata"]["createdAt"] == doc["createdAt"] and doc["metadata"]["updatedAt"] >= doc["createdAt"]
    # Any status may follow any other: a failed workflow is retried.
    for status in ("failed", "in_progress", "completed"):
        await alice.mutation("workflows:updateWorkflowStatus", {"workflowId": wf, "status": status})
    assert (await alice.query("workflows:getWorkflow", {"workflowId": wf}))["status"] == "completed"

    merged = await alice.mutation("workflows:addArtifacts", {"workflowId": wf, "artifacts": ["a.py", "b.py"]})
    merged = await alice.mutation("workflows:addArtifacts", {"workflowId": wf, "artifacts": ["b.py", "c.md"]})
    assert merged == ["a.py", "b.py", "c.md"]

    # Bob sees nothing and changes nothing; anonymous callers are told to sign in.
    assert await bob.query("workflows:getWorkflow", {"workflowId": wf}) is None
    with pytest.raises(ConvexError) as exc:
        await bob.mutation("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "failed"})
    assert _code(exc) == "NOT_FOUND" and "not found" in str(exc.value)
    with pytest.raises(ConvexError) as exc:
        await bob.mutation("workflows:addArtifacts", {"workflowId": wf, "artifacts": ["x"]})
    assert _code(exc) == "NOT_FOUND"
    with pytest.raises(AuthRequired, match="signed in to create a workflow"):
        await anon.mutation("workflows:createWorkflow", {"task": "t"})
    with pytest.raises(AuthRequired):
        await anon.query("workflows:getWorkflow", {"workflowId": wf})
    assert (await alice.query("workflows:getWorkflow", {"workflowId": wf}))["status"] == "completed"

    # Validation.
    with pytest.raises(ArgumentError, match=r'"status" must be one of "pending", "in_progress", "completed", "failed"'):
        await alice.mutation("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "done"})
    with pytest.raises(ArgumentError, match='"task" must be a non-empty string'):
        await alice.mutation("workflows:createWorkflow", {"task": "  "})
    with pytest.raises(ArgumentError, match='"currentStep" must be a non-empty string'):
        await alice.mutation(
            "workflows:updateWorkflowStatus", {"workflowId": wf, "status": "failed", "currentStep": ""}
        )
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await alice.query(
            "workflows:listByStatus", {"status": "nope", "paginationOpts": {"numItems": 1, "cursor": None}}
        )
    with pytest.raises(IdError, match='must be Id\\("workflows"\\)'):
        await alice.query("workflows:getWorkflow", {"workflowId": "nope"})
    with pytest.raises(ArgumentError, match='unexpected argument "userId"'):
        await alice.mutation("workflows:createWorkflow", {"task": "t", "userId": "bob"})


async def test_workflow_list_by_status_pages_cover_own_workflows_once(ripple_app: RippleApp) -> None:
    alice, bob = ripple_app.as_user("alice"), ripple_app.as_user("bob")
    mine = [await alice.mutation("workflows:createWorkflow", {"task": f"t{i}"}) for i in range(7)]
    theirs = [await bob.mutation("workflows:createWorkflow", {"task": f"b{i}"}) for i in range(3)]
    done = mine[5:]
    for wf in done:
        await alice.mutation("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "completed"})
    await bob.mutation("workflows:updateWorkflowStatus", {"workflowId": theirs[0], "status": "completed"})

    for n in (1, 2, 3, 10):
        pending = await _all_pages(alice, "workflows:listByStatus", {"status": "pending"}, n)
        assert pending == mine[:5]  # oldest first, each exactly once, none of bob's
    assert await _all_pages(alice, "workflows:listByStatus", {"status": "completed"}, 1) == done
    assert await _all_pages(bob, "workflows:listByStatus", {"status": "completed"}, 2) == theirs[:1]
    assert await _all_pages(alice, "workflows:listByStatus", {"status": "failed"}, 2) == []


async def test_agent_session_variants_statuses_and_ownership(ripple_app: RippleApp) -> None:
    alice, bob, anon = ripple_app.as_user("alice"), ripple_app.as_user("bob"), ripple_app.anonymous()
    wf = await alice.mutation("workflows:createWorkflow", {"task": "ship it"})
    planner = await alice.mutation(
        "agents:createAgentSession", {"workflowId": wf, "input": "plan the CLI", "variant": {"kind": "planner_session"}}
    )
    doc = await alice.query("agents:getAgentSession", {"sessionId": planner})
    assert (doc["kind"], doc["agentType"], doc["status"], doc["workflowId"]) == (
        "planner_session",
        "planner",
        "idle",
        wf,
    )
    assert "startedAt" not in doc and "completedAt" not in doc

    await alice.mutation(
        "agents:updateAgentSession", {"sessionId": planner, "status": "running", "claudeSessionId": "sdk-1"}
    )
    doc = await alice.query("agents:getAgentSession", {"sessionId": planner})
    assert doc["status"] == "running" and doc["sessionId"] == "sdk-1" and doc["startedAt"] > 0

    # A completed session needs its variant's results.
    with pytest.raises(ArgumentError, match="a completed planner_session needs plan"):
        await alice.mutation("agents:updateAgentSession", {"sessionId": planner, "status": "completed"})
    await alice.mutation(
        "agents:updateAgentSession",
        {
            "sessionId": planner,
            "status": "completed",
            "output": "ok",
            "variant": {"kind": "planner_session", "plan": "1. parse"},
        },
    )
    doc = await alice.query("agents:getAgentSession", {"sessionId": planner})
    assert (doc["status"], doc["plan"], doc["output"]) == ("completed", "1. parse", "ok") and doc["completedAt"] > 0

    coder = await alice.mutation(
        "agents:createAgentSession",
        {
            "workflowId": wf,
            "input": "write it",
            "status": "running",
            "variant": {"kind": "coder_session", "agentType": "coder", "language": "python"},
        },
    )
    # The union: a coder session takes only coder results, with agentType "coder".
    with pytest.raises(ArgumentError, match='variant.kind must be "coder_session"'):
        await alice.mutation(
            "agents:updateAgentSession", {"sessionId": coder, "variant": {"kind": "reviewer_session", "review": "x"}}
        )
    with pytest.raises(ArgumentError, match="variant.coder_session.plan"):
        await alice.mutation(
            "agents:updateAgentSession", {"sessionId": coder, "variant": {"kind": "coder_session", "plan": "x"}}
        )
    with pytest.raises(ArgumentError, match="agentType"):
        await alice.mutation(
            "agents:createAgentSession", {"input": "x", "variant": {"kind": "coder_session", "agentType": "planner"}}
        )
    with pytest.raises(ArgumentError, match="variant"):
        await alice.mutation("agents:createAgentSession", {"input": "x", "variant": {"kind": "tester"}})
    with pytest.raises(ArgumentError, match="a completed coder_session needs code"):
        await alice.mutation("agents:updateAgentSession", {"sessionId": coder, "status": "completed"})
    await alice.mutation("agents:updateAgentSession", {"sessionId": coder, "status": "failed", "error": "tests failed"})
    reviewer = await alice.mutation(
        "agents:createAgentSession",
        {
            "workflowId": wf,
            "input": "review",
            "status": "completed",
            "variant": {"kind": "reviewer_session", "review": "LGTM", "approved": True},
        },
    )
    doc = await alice.query("agents:getAgentSession", {"sessionId": reviewer})
    assert doc["approved"] is True and doc["completedAt"] > 0 and "startedAt" not in doc

    # A failed session restarted is no longer finished.
    await alice.mutation("agents:updateAgentSession", {"sessionId": coder, "status": "running"})
    doc = await alice.query("agents:getAgentSession", {"sessionId": coder})
    assert doc["status"] == "running" and "completedAt" not in doc and doc["error"] == "tests failed"

    # Status values.
    with pytest.raises(ArgumentError, match=r'"status" must be one of "idle", "running", "completed", "failed"'):
        await alice.mutation("agents:updateAgentSession", {"sessionId": coder, "status": "paused"})
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await alice.mutation(
            "agents:createAgentSession", {"input": "x", "status": "done", "variant": {"kind": "planner_session"}}
        )
    with pytest.raises(ArgumentError, match='"input" must be a non-empty string'):
        await alice.mutation("agents:createAgentSession", {"input": "", "variant": {"kind": "planner_session"}})

    # Sessions by workflow, optionally by status.
    listed = await alice.query("agents:listSessionsByWorkflow", {"workflowId": wf})
    assert [s["_id"] for s in listed] == [planner, coder, reviewer]
    running = await alice.query("agents:listSessionsByWorkflow", {"workflowId": wf, "status": "running"})
    assert [s["_id"] for s in running] == [coder]
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await alice.query("agents:listSessionsByWorkflow", {"workflowId": wf, "status": "x"})

    # Bob: cannot read, list, update, or attach a session to alice's workflow.
    assert await bob.query("agents:getAgentSession", {"sessionId": planner}) is None
    assert await bob.query("agents:listSessionsByWorkflow", {"workflowId": wf}) == []
    with pytest.raises(ConvexError) as exc:
        await bob.mutation("agents:updateAgentSession", {"sessionId": planner, "output": "mine"})
    assert _code(exc) == "NOT_FOUND"
    with pytest.raises(ConvexError) as exc:
        await bob.mutation(
            "agents:createAgentSession", {"workflowId": wf, "input": "sneak", "variant": {"kind": "planner_session"}}
        )
    assert _code(exc) == "NOT_FOUND" and "workflow" in str(exc.value)
    with pytest.raises(AuthRequired):
        await anon.query("agents:getAgentSession", {"sessionId": planner})
    with pytest.raises(IdError, match='must be Id\\("agentSessions"\\), got an id of table "workflows"'):
        await alice.query("agents:getAgentSession", {"sessionId": wf})
    assert (await alice.query("agents:getAgentSession", {"sessionId": planner}))["output"] == "ok"

    # A standalone session (no workflow) is still owned.
    solo = await bob.mutation("agents:createAgentSession", {"input": "solo", "variant": {"kind": "planner_session"}})
    assert "workflowId" not in await bob.query("agents:getAgentSession", {"sessionId": solo})


async def test_agent_list_by_status_pages_cover_own_sessions_once(ripple_app: RippleApp) -> None:
    alice, bob, anon = ripple_app.as_user("alice"), ripple_app.as_user("bob"), ripple_app.anonymous()
    wf = await alice.mutation("workflows:createWorkflow", {"task": "t"})
    mine = [
        await alice.mutation(
            "agents:createAgentSession",
            {"workflowId": wf, "input": f"i{i}", "status": "running", "variant": {"kind": "coder_session"}},
        )
        for i in range(6)
    ]
    await bob.mutation(
        "agents:createAgentSession", {"input": "b", "status": "running", "variant": {"kind": "coder_session"}}
    )
    await alice.mutation("agents:updateAgentSession", {"sessionId": mine[0], "status": "failed"})
    for n in (1, 4, 5, 6):
        assert await _all_pages(alice, "agents:listByStatus", {"status": "running"}, n) == mine[1:]
    assert await _all_pages(alice, "agents:listByStatus", {"status": "failed"}, 1) == mine[:1]
    assert len(await _all_pages(bob, "agents:listByStatus", {"status": "running"}, 3)) == 1
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await alice.query("agents:listByStatus", {"status": "x", "paginationOpts": {"numItems": 1, "cursor": None}})
    with pytest.raises(AuthRequired):
        await anon.query("agents:listByStatus", {"status": "idle", "paginationOpts": {"numItems": 1, "cursor": None}})
