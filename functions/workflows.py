"""`workflows:*`: multi-agent workflows (seed 002), each owned by the signed-in user who created it.

A workflow starts `pending` with `currentStep` "planner"; its agents move it through `in_progress` to
`completed` or `failed`. Any of the four statuses may follow any other (a failed workflow can be retried); only
the values are checked. Another user's workflow reads as absent (None, or left out of a page) and refuses writes
with NOT_FOUND.
"""

from __future__ import annotations

from typing import Any

from functions._model import (
    WORKFLOW_STATUSES,
    check_choice,
    check_text,
    load_workflow,
    now_ms,
    token_of,
    workflow_or_none,
)
from server import Doc, Id, Page, mutation, query


@mutation
async def create_workflow(
    ctx: Any, task: str, current_step: str | None = None, artifacts: list[str] | None = None
) -> Id("workflows"):
    fn = "workflows:createWorkflow"
    token = await token_of(ctx, "create a workflow")
    check_text(fn, "task", task)
    step = check_text(fn, "currentStep", current_step) if current_step is not None else "planner"
    now = now_ms()
    return await ctx.db.insert(
        "workflows",
        {
            "task": task,
            "status": "pending",
            "currentStep": step,
            "artifacts": list(artifacts or []),
            "metadata": {"createdAt": now, "updatedAt": now},
            "userId": token,
            "createdAt": now,
            "updatedAt": now,
        },
    )


@query
async def get_workflow(ctx: Any, workflow_id: Id("workflows")) -> Doc("workflows") | None:
    token = await token_of(ctx, "read a workflow")
    return await workflow_or_none(ctx, workflow_id, token)


@mutation
async def update_workflow_status(
    ctx: Any, workflow_id: Id("workflows"), status: str, current_step: str | None = None
) -> None:
    fn = "workflows:updateWorkflowStatus"
    token = await token_of(ctx, "update a workflow")
    check_choice(fn, "status", status, WORKFLOW_STATUSES)
    if current_step is not None:
        check_text(fn, "currentStep", current_step)
    workflow = await load_workflow(ctx, fn, workflow_id, token)
    now = now_ms()
    fields: dict[str, Any] = {
        "status": status,
        "updatedAt": now,
        # Merged, not replaced: the seed's patch of `metadata: {updatedAt}` would drop createdAt.
        "metadata": {**(workflow.get("metadata") or {}), "updatedAt": now},
    }
    if current_step is not None:
        fields["currentStep"] = current_step
    await ctx.db.patch(workflow_id, fields)


@mutation
async def add_artifacts(ctx: Any, workflow_id: Id("workflows"), artifacts: list[str]) -> list[str]:
    """Append artifact paths (duplicates skipped); returns the workflow's artifacts."""
    fn = "workflows:addArtifacts"
    token = await token_of(ctx, "update a workflow")
    for i, path in enumerate(artifacts):
        check_text(fn, f"artifacts.{i}", path)
    workflow = await load_workflow(ctx, fn, workflow_id, token)
    merged = list(workflow.get("artifacts") or [])
    merged += [path for path in dict.fromkeys(artifacts) if path not in merged]
    now = now_ms()
    await ctx.db.patch(
        workflow_id,
        {"artifacts": merged, "updatedAt": now, "metadata": {**(workflow.get("metadata") or {}), "updatedAt": now}},
    )
    return merged


@query
async def list_by_status(ctx: Any, status: str, pagination_opts: dict[str, Any]) -> Page(Doc("workflows")):
    """The caller's workflows with `status`, oldest first, one page at a time (Convex `paginate`)."""
    token = await token_of(ctx, "list workflows")
    check_choice("workflows:listByStatus", "status", status, WORKFLOW_STATUSES)
    return await (
        ctx.db.query("workflows")
        .with_index("by_status", lambda q: q.eq("status", status))
        .filter(lambda q: q.eq(q.field("userId"), token))
        .paginate(pagination_opts)
    )
