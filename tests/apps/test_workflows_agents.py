"""workflows:* and agents:* (seed 002) on a live server: ownership, status checks, the session union, pages."""

from __future__ import annotations

from typing import Any

import pytest

from server import ConvexError
from server.errors import ArgumentError, AuthRequired, IdError
from tests.support.server import RippleServer


async def _all_pages(ripple: RippleServer, path: str, args: dict[str, Any], user: str, n: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(50):
        page = await ripple.call(path, {**args, "paginationOpts": {"numItems": n, "cursor": cursor}}, user=user)
        assert len(page["page"]) <= n
        ids += [doc["_id"] for doc in page["page"]]
        if page["isDone"]:
            return ids
        cursor = page["continueCursor"]
    raise AssertionError("pagination never finished")


def _code(exc: pytest.ExceptionInfo[ConvexError]) -> str:
    return str(exc.value.data["code"])


async def test_workflow_lifecycle_and_ownership(ripple: RippleServer) -> None:
    wf = await ripple.call("workflows:createWorkflow", {"task": "build a CLI"}, user="alice")
    doc = await ripple.call("workflows:getWorkflow", {"workflowId": wf}, user="alice")
    assert doc["task"] == "build a CLI" and doc["status"] == "pending" and doc["currentStep"] == "planner"
    assert doc["artifacts"] == [] and doc["userId"].endswith("|alice")
    assert doc["metadata"]["createdAt"] == doc["createdAt"] == doc["updatedAt"]

    await ripple.call(
        "workflows:updateWorkflowStatus",
        {"workflowId": wf, "status": "in_progress", "currentStep": "coder"},
        user="alice",
    )
    doc = await ripple.call("workflows:getWorkflow", {"workflowId": wf}, user="alice")
    assert (doc["status"], doc["currentStep"]) == ("in_progress", "coder")
    assert doc["metadata"]["createdAt"] == doc["createdAt"] and doc["metadata"]["updatedAt"] >= doc["createdAt"]
    # Any status may follow any other: a failed workflow is retried.
    for status in ("failed", "in_progress", "completed"):
        await ripple.call("workflows:updateWorkflowStatus", {"workflowId": wf, "status": status}, user="alice")
    assert (await ripple.call("workflows:getWorkflow", {"workflowId": wf}, user="alice"))["status"] == "completed"

    merged = await ripple.call(
        "workflows:addArtifacts", {"workflowId": wf, "artifacts": ["a.py", "b.py"]}, user="alice"
    )
    merged = await ripple.call(
        "workflows:addArtifacts", {"workflowId": wf, "artifacts": ["b.py", "c.md"]}, user="alice"
    )
    assert merged == ["a.py", "b.py", "c.md"]

    # Bob sees nothing and changes nothing; anonymous callers are told to sign in.
    assert await ripple.call("workflows:getWorkflow", {"workflowId": wf}, user="bob") is None
    with pytest.raises(ConvexError) as exc:
        await ripple.call("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "failed"}, user="bob")
    assert _code(exc) == "NOT_FOUND" and "not found" in str(exc.value)
    with pytest.raises(ConvexError) as exc:
        await ripple.call("workflows:addArtifacts", {"workflowId": wf, "artifacts": ["x"]}, user="bob")
    assert _code(exc) == "NOT_FOUND"
    with pytest.raises(AuthRequired, match="signed in to create a workflow"):
        await ripple.call("workflows:createWorkflow", {"task": "t"})
    with pytest.raises(AuthRequired):
        await ripple.call("workflows:getWorkflow", {"workflowId": wf})
    assert (await ripple.call("workflows:getWorkflow", {"workflowId": wf}, user="alice"))["status"] == "completed"

    # Validation.
    with pytest.raises(ArgumentError, match=r'"status" must be one of "pending", "in_progress", "completed", "failed"'):
        await ripple.call("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "done"}, user="alice")
    with pytest.raises(ArgumentError, match='"task" must be a non-empty string'):
        await ripple.call("workflows:createWorkflow", {"task": "  "}, user="alice")
    with pytest.raises(ArgumentError, match='"currentStep" must be a non-empty string'):
        await ripple.call(
            "workflows:updateWorkflowStatus", {"workflowId": wf, "status": "failed", "currentStep": ""}, user="alice"
        )
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await ripple.call(
            "workflows:listByStatus",
            {"status": "nope", "paginationOpts": {"numItems": 1, "cursor": None}},
            user="alice",
        )
    with pytest.raises(IdError, match='must be Id\\("workflows"\\)'):
        await ripple.call("workflows:getWorkflow", {"workflowId": "nope"}, user="alice")
    with pytest.raises(ArgumentError, match='unexpected argument "userId"'):
        await ripple.call("workflows:createWorkflow", {"task": "t", "userId": "bob"}, user="alice")


async def test_workflow_list_by_status_pages_cover_own_workflows_once(ripple: RippleServer) -> None:
    mine = [await ripple.call("workflows:createWorkflow", {"task": f"t{i}"}, user="alice") for i in range(7)]
    theirs = [await ripple.call("workflows:createWorkflow", {"task": f"b{i}"}, user="bob") for i in range(3)]
    done = mine[5:]
    for wf in done:
        await ripple.call("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "completed"}, user="alice")
    await ripple.call("workflows:updateWorkflowStatus", {"workflowId": theirs[0], "status": "completed"}, user="bob")

    for n in (1, 2, 3, 10):
        pending = await _all_pages(ripple, "workflows:listByStatus", {"status": "pending"}, "alice", n)
        assert pending == mine[:5]  # oldest first, each exactly once, none of bob's
    assert await _all_pages(ripple, "workflows:listByStatus", {"status": "completed"}, "alice", 1) == done
    assert await _all_pages(ripple, "workflows:listByStatus", {"status": "completed"}, "bob", 2) == theirs[:1]
    assert await _all_pages(ripple, "workflows:listByStatus", {"status": "failed"}, "alice", 2) == []


async def test_agent_session_variants_statuses_and_ownership(ripple: RippleServer) -> None:
    wf = await ripple.call("workflows:createWorkflow", {"task": "ship it"}, user="alice")
    planner = await ripple.call(
        "agents:createAgentSession",
        {"workflowId": wf, "input": "plan the CLI", "variant": {"kind": "planner_session"}},
        user="alice",
    )
    doc = await ripple.call("agents:getAgentSession", {"sessionId": planner}, user="alice")
    assert (doc["kind"], doc["agentType"], doc["status"], doc["workflowId"]) == (
        "planner_session",
        "planner",
        "idle",
        wf,
    )
    assert "startedAt" not in doc and "completedAt" not in doc

    await ripple.call(
        "agents:updateAgentSession",
        {"sessionId": planner, "status": "running", "claudeSessionId": "sdk-1"},
        user="alice",
    )
    doc = await ripple.call("agents:getAgentSession", {"sessionId": planner}, user="alice")
    assert doc["status"] == "running" and doc["sessionId"] == "sdk-1" and doc["startedAt"] > 0

    # A completed session needs its variant's results.
    with pytest.raises(ArgumentError, match="a completed planner_session needs plan"):
        await ripple.call("agents:updateAgentSession", {"sessionId": planner, "status": "completed"}, user="alice")
    await ripple.call(
        "agents:updateAgentSession",
        {
            "sessionId": planner,
            "status": "completed",
            "output": "ok",
            "variant": {"kind": "planner_session", "plan": "1. parse"},
        },
        user="alice",
    )
    doc = await ripple.call("agents:getAgentSession", {"sessionId": planner}, user="alice")
    assert (doc["status"], doc["plan"], doc["output"]) == ("completed", "1. parse", "ok") and doc["completedAt"] > 0

    coder = await ripple.call(
        "agents:createAgentSession",
        {
            "workflowId": wf,
            "input": "write it",
            "status": "running",
            "variant": {"kind": "coder_session", "agentType": "coder", "language": "python"},
        },
        user="alice",
    )
    # The union: a coder session takes only coder results, with agentType "coder".
    with pytest.raises(ArgumentError, match='variant.kind must be "coder_session"'):
        await ripple.call(
            "agents:updateAgentSession",
            {"sessionId": coder, "variant": {"kind": "reviewer_session", "review": "x"}},
            user="alice",
        )
    with pytest.raises(ArgumentError, match="variant.coder_session.plan"):
        await ripple.call(
            "agents:updateAgentSession",
            {"sessionId": coder, "variant": {"kind": "coder_session", "plan": "x"}},
            user="alice",
        )
    with pytest.raises(ArgumentError, match="agentType"):
        await ripple.call(
            "agents:createAgentSession",
            {"input": "x", "variant": {"kind": "coder_session", "agentType": "planner"}},
            user="alice",
        )
    with pytest.raises(ArgumentError, match="variant"):
        await ripple.call("agents:createAgentSession", {"input": "x", "variant": {"kind": "tester"}}, user="alice")
    with pytest.raises(ArgumentError, match="a completed coder_session needs code"):
        await ripple.call("agents:updateAgentSession", {"sessionId": coder, "status": "completed"}, user="alice")
    await ripple.call(
        "agents:updateAgentSession", {"sessionId": coder, "status": "failed", "error": "tests failed"}, user="alice"
    )
    reviewer = await ripple.call(
        "agents:createAgentSession",
        {
            "workflowId": wf,
            "input": "review",
            "status": "completed",
            "variant": {"kind": "reviewer_session", "review": "LGTM", "approved": True},
        },
        user="alice",
    )
    doc = await ripple.call("agents:getAgentSession", {"sessionId": reviewer}, user="alice")
    assert doc["approved"] is True and doc["completedAt"] > 0 and "startedAt" not in doc

    # A failed session restarted is no longer finished.
    await ripple.call("agents:updateAgentSession", {"sessionId": coder, "status": "running"}, user="alice")
    doc = await ripple.call("agents:getAgentSession", {"sessionId": coder}, user="alice")
    assert doc["status"] == "running" and "completedAt" not in doc and doc["error"] == "tests failed"

    # Status values.
    with pytest.raises(ArgumentError, match=r'"status" must be one of "idle", "running", "completed", "failed"'):
        await ripple.call("agents:updateAgentSession", {"sessionId": coder, "status": "paused"}, user="alice")
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await ripple.call(
            "agents:createAgentSession",
            {"input": "x", "status": "done", "variant": {"kind": "planner_session"}},
            user="alice",
        )
    with pytest.raises(ArgumentError, match='"input" must be a non-empty string'):
        await ripple.call(
            "agents:createAgentSession", {"input": "", "variant": {"kind": "planner_session"}}, user="alice"
        )

    # Sessions by workflow, optionally by status.
    listed = await ripple.call("agents:listSessionsByWorkflow", {"workflowId": wf}, user="alice")
    assert [s["_id"] for s in listed] == [planner, coder, reviewer]
    running = await ripple.call("agents:listSessionsByWorkflow", {"workflowId": wf, "status": "running"}, user="alice")
    assert [s["_id"] for s in running] == [coder]
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await ripple.call("agents:listSessionsByWorkflow", {"workflowId": wf, "status": "x"}, user="alice")

    # Bob: cannot read, list, update, or attach a session to alice's workflow.
    assert await ripple.call("agents:getAgentSession", {"sessionId": planner}, user="bob") is None
    assert await ripple.call("agents:listSessionsByWorkflow", {"workflowId": wf}, user="bob") == []
    with pytest.raises(ConvexError) as exc:
        await ripple.call("agents:updateAgentSession", {"sessionId": planner, "output": "mine"}, user="bob")
    assert _code(exc) == "NOT_FOUND"
    with pytest.raises(ConvexError) as exc:
        await ripple.call(
            "agents:createAgentSession",
            {"workflowId": wf, "input": "sneak", "variant": {"kind": "planner_session"}},
            user="bob",
        )
    assert _code(exc) == "NOT_FOUND" and "workflow" in str(exc.value)
    with pytest.raises(AuthRequired):
        await ripple.call("agents:getAgentSession", {"sessionId": planner})
    with pytest.raises(IdError, match='must be Id\\("agentSessions"\\), got an id of table "workflows"'):
        await ripple.call("agents:getAgentSession", {"sessionId": wf}, user="alice")
    assert (await ripple.call("agents:getAgentSession", {"sessionId": planner}, user="alice"))["output"] == "ok"

    # A standalone session (no workflow) is still owned.
    solo = await ripple.call(
        "agents:createAgentSession", {"input": "solo", "variant": {"kind": "planner_session"}}, user="bob"
    )
    assert "workflowId" not in await ripple.call("agents:getAgentSession", {"sessionId": solo}, user="bob")


async def test_agent_list_by_status_pages_cover_own_sessions_once(ripple: RippleServer) -> None:
    wf = await ripple.call("workflows:createWorkflow", {"task": "t"}, user="alice")
    mine = [
        await ripple.call(
            "agents:createAgentSession",
            {"workflowId": wf, "input": f"i{i}", "status": "running", "variant": {"kind": "coder_session"}},
            user="alice",
        )
        for i in range(6)
    ]
    await ripple.call(
        "agents:createAgentSession",
        {"input": "b", "status": "running", "variant": {"kind": "coder_session"}},
        user="bob",
    )
    await ripple.call("agents:updateAgentSession", {"sessionId": mine[0], "status": "failed"}, user="alice")
    for n in (1, 4, 5, 6):
        assert await _all_pages(ripple, "agents:listByStatus", {"status": "running"}, "alice", n) == mine[1:]
    assert await _all_pages(ripple, "agents:listByStatus", {"status": "failed"}, "alice", 1) == mine[:1]
    assert len(await _all_pages(ripple, "agents:listByStatus", {"status": "running"}, "bob", 3)) == 1
    with pytest.raises(ArgumentError, match='"status" must be one of'):
        await ripple.call(
            "agents:listByStatus", {"status": "x", "paginationOpts": {"numItems": 1, "cursor": None}}, user="alice"
        )
    with pytest.raises(AuthRequired):
        await ripple.call("agents:listByStatus", {"status": "idle", "paginationOpts": {"numItems": 1, "cursor": None}})
