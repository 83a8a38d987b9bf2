"""`agents:*`: agent sessions (seed 002), one document per agent run, owned by the signed-in user who created it.

A session document is one of three variants, told apart by `kind` (seed 002's `v.union`):

    planner_session   agentType "planner"   plan
    coder_session     agentType "coder"     code, language
    reviewer_session  agentType "reviewer"  review, approved

Every write goes through `_write_checked`, which refuses a document whose agentType does not match its kind, that
carries another variant's fields, or that is `completed` without its variant's results (a completed coder session
has code and language). Status values: idle | running | completed | failed; `startedAt` is set on the first move
to running, `completedAt` on completed/failed. The Claude SDK session id is the document's `sessionId` field;
arguments call it `claudeSessionId`, since `sessionId` names the document itself (as in the seed's
`getAgentSession({sessionId})`). Another user's session reads as absent and refuses writes with NOT_FOUND.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from functions._model import (
    AppError,
    WireModel,
    check_choice,
    check_text,
    load_workflow,
    now_ms,
    owned,
    token_of,
    workflow_or_none,
)
from server import Doc, Id, Page, mutation, query
from server.errors import ArgumentError

SESSION_STATUSES = ("idle", "running", "completed", "failed")
FINISHED = ("completed", "failed")

# kind → (agentType, the variant's own fields, the fields a completed session of that kind must have).
VARIANTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "planner_session": ("planner", ("plan",), ("plan",)),
    "coder_session": ("coder", ("code", "language"), ("code", "language")),
    "reviewer_session": ("reviewer", ("review", "approved"), ("review", "approved")),
}
VARIANT_FIELDS = {f for _, own, _ in VARIANTS.values() for f in own}


class PlannerSession(WireModel):
    kind: Literal["planner_session"]
    agent_type: Literal["planner"] = "planner"
    plan: str | None = None


class CoderSession(WireModel):
    kind: Literal["coder_session"]
    agent_type: Literal["coder"] = "coder"
    code: str | None = None
    language: str | None = None


class ReviewerSession(WireModel):
    kind: Literal["reviewer_session"]
    agent_type: Literal["reviewer"] = "reviewer"
    review: str | None = None
    approved: bool | None = None


Variant = Annotated[PlannerSession | CoderSession | ReviewerSession, Field(discriminator="kind")]


def _variant_fields(variant: PlannerSession | CoderSession | ReviewerSession) -> dict[str, Any]:
    """The variant's own result fields that were given (camelCase), without kind/agentType."""
    data = variant.model_dump(by_alias=True, exclude_none=True)
    return {k: v for k, v in data.items() if k in VARIANT_FIELDS}


def check_session(fn: str, doc: dict[str, Any]) -> None:
    """The union check of seed 002, on a whole session document (after the write would apply)."""
    kind = doc.get("kind")
    if kind not in VARIANTS:
        raise ArgumentError(f'{fn}: "kind" must be one of {", ".join(VARIANTS)}; got {kind!r}')
    agent_type, own, required = VARIANTS[kind]
    if doc.get("agentType") != agent_type:
        raise ArgumentError(f'{fn}: a {kind} has agentType "{agent_type}"; got {doc.get("agentType")!r}')
    foreign = sorted(f for f in VARIANT_FIELDS - set(own) if doc.get(f) is not None)
    if foreign:
        raise ArgumentError(f"{fn}: a {kind} cannot have {', '.join(foreign)} (its own fields: {', '.join(own)})")
    check_choice(fn, "status", doc.get("status"), SESSION_STATUSES)
    if doc["status"] == "completed":
        missing = [f for f in required if doc.get(f) is None]
        if missing:
            raise ArgumentError(
                f"{fn}: a completed {kind} needs {', '.join(missing)}; pass them in variant "
                f'({{"kind": "{kind}", ...}}) with status "completed"'
            )


def _timestamps(old_status: str | None, status: str, doc: dict[str, Any], now: float) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if status == "running" and doc.get("startedAt") is None:
        fields["startedAt"] = now
    if status in FINISHED and old_status not in FINISHED:
        fields["completedAt"] = now
    elif status not in FINISHED and doc.get("completedAt") is not None:
        fields["completedAt"] = None  # restarted: no longer finished
    return fields


async def _load_session(ctx: Any, fn: str, session_id: str, token: str) -> dict[str, Any]:
    session = owned(await ctx.db.get(session_id), token)
    if session is None:
        raise AppError("NOT_FOUND", f'{fn}: agent session "{session_id}" not found', id=session_id)
    return session


@mutation
async def create_agent_session(
    ctx: Any,
    input: str,
    variant: Variant,
    workflow_id: Id("workflows") | None = None,
    status: str | None = None,
    claude_session_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Id("agentSessions"):
    """A new session (status "idle" unless given); `workflowId`, when given, must be the caller's workflow."""
    fn = "agents:createAgentSession"
    token = await token_of(ctx, "create an agent session")
    check_text(fn, "input", input)
    if workflow_id is not None:
        await load_workflow(ctx, fn, workflow_id, token)
    now = now_ms()
    doc: dict[str, Any] = {
        "kind": variant.kind,
        "agentType": variant.agent_type,
        "status": status if status is not None else "idle",
        "input": input,
        "userId": token,
        **_variant_fields(variant),
    }
    if workflow_id is not None:
        doc["workflowId"] = workflow_id
    if claude_session_id is not None:
        doc["sessionId"] = claude_session_id
    if metadata is not None:
        doc["metadata"] = metadata
    check_session(fn, doc)
    doc.update(_timestamps(None, doc["status"], doc, now))
    return await ctx.db.insert("agentSessions", {k: v for k, v in doc.items() if v is not None})


@query
async def get_agent_session(ctx: Any, session_id: Id("agentSessions")) -> Doc("agentSessions") | None:
    token = await token_of(ctx, "read an agent session")
    return owned(await ctx.db.get(session_id), token)


@mutation
async def update_agent_session(
    ctx: Any,
    session_id: Id("agentSessions"),
    status: str | None = None,
    output: str | None = None,
    error: str | None = None,
    variant: Variant | None = None,
    claude_session_id: str | None = None,
) -> None:
    """Set the given fields; `variant` carries the kind's results and must name the session's own kind."""
    fn = "agents:updateAgentSession"
    token = await token_of(ctx, "update an agent session")
    if status is not None:
        check_choice(fn, "status", status, SESSION_STATUSES)
    session = await _load_session(ctx, fn, session_id, token)
    fields: dict[str, Any] = {}
    if status is not None:
        fields["status"] = status
    if output is not None:
        fields["output"] = output
    if error is not None:
        fields["error"] = error
    if claude_session_id is not None:
        fields["sessionId"] = claude_session_id
    if variant is not None:
        if variant.kind != session["kind"]:
            raise ArgumentError(
                f'{fn}: session "{session_id}" is a {session["kind"]}; variant.kind must be "{session["kind"]}", '
                f'got "{variant.kind}"'
            )
        fields.update(_variant_fields(variant))
    merged = {**session, **fields}
    check_session(fn, merged)
    fields.update(_timestamps(session["status"], merged["status"], merged, now_ms()))
    if fields:
        await ctx.db.patch(session_id, fields)


@query
async def list_sessions_by_workflow(
    ctx: Any, workflow_id: Id("workflows"), status: str | None = None
) -> list[Doc("agentSessions")]:
    """The workflow's sessions, oldest first (optionally only those with `status`); [] for another's workflow."""
    token = await token_of(ctx, "list agent sessions")
    if status is not None:
        check_choice("agents:listSessionsByWorkflow", "status", status, SESSION_STATUSES)
    if await workflow_or_none(ctx, workflow_id, token) is None:
        return []
    if status is None:
        q = ctx.db.query("agentSessions").with_index("by_workflow", lambda r: r.eq("workflowId", workflow_id))
    else:
        q = ctx.db.query("agentSessions").with_index(
            "by_workflow_and_status", lambda r: r.eq("workflowId", workflow_id).eq("status", status)
        )
    return await q.collect()


@query
async def list_by_status(ctx: Any, status: str, pagination_opts: dict[str, Any]) -> Page(Doc("agentSessions")):
    """The caller's sessions with `status`, oldest first, one page at a time (Convex `paginate`)."""
    token = await token_of(ctx, "list agent sessions")
    check_choice("agents:listByStatus", "status", status, SESSION_STATUSES)
    return await (
        ctx.db.query("agentSessions")
        .with_index("by_status", lambda q: q.eq("status", status))
        .filter(lambda q: q.eq(q.field("userId"), token))
        .paginate(pagination_opts)
    )
