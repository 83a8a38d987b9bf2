"""The `generations` module (seeds 000, 001): animation generations and their refinement chains.

A generation starts pending (`createPending`, from a generateAnimation action), shows Claude's partial reply
while it streams (`updatePartial`), then either succeeds (`complete` patches the code in) or fails (`complete`
removes the row). Refinements point at the generation they refine through `parentGenerationId`. Clients read
only their own generations; someone else's id is "not found", exactly like an id that does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from functions._model import AppError, WireModel, now_ms, owned, token_of
from server import Doc, Id, Page, internal_mutation, internal_query, query

if TYPE_CHECKING:  # mypy sees a string; at run time the argument is checked to name a generation (a file)
    GenerationId = str
    StorageId = str
else:
    GenerationId = Id("generations")
    StorageId = Id("_storage")

# getRefinementChain returns at most this many generations: the one asked for and its nearest ancestors.
MAX_CHAIN_LENGTH = 50


class ConversationTurn(WireModel):
    """One earlier turn of a refinement conversation, as Claude's Messages API takes it."""

    role: Literal["user", "assistant"]
    content: str


def not_found(fn: str, generation_id: str) -> AppError:
    return AppError("NOT_FOUND", f'{fn}: generation "{generation_id}" not found', id=generation_id)


async def load_own(ctx: Any, fn: str, generation_id: str, token: str) -> dict[str, Any]:
    """The caller's generation, or NOT_FOUND (also for another user's: ids do not leak)."""
    generation = owned(await ctx.db.get(generation_id), token)
    if generation is None:
        raise not_found(fn, generation_id)
    return generation


# Internal: written by generateAnimation's actions, never reachable by a client.


@internal_mutation
async def create_pending(
    ctx: Any,
    user_id: str,
    prompt: str,
    created_at: float,
    batch_id: str | None = None,
    variation_index: float | None = None,
    variation_count: float | None = None,
    aspect_ratio: str | None = None,
    duration_in_seconds: float | None = None,
    fps: float | None = None,
    reference_image_ids: list[StorageId] | None = None,
    continuation_type: str | None = None,
    parent_generation_id: GenerationId | None = None,
    refinement_prompt: str | None = None,
    conversation_history: list[ConversationTurn] | None = None,
    model: str | None = None,
) -> GenerationId:
    return await ctx.db.insert(
        "generations",
        {
            "userId": user_id,
            "prompt": prompt,
            "status": "pending",
            "createdAt": created_at,
            "batchId": batch_id,
            "variationIndex": variation_index,
            "variationCount": variation_count,
            "aspectRatio": aspect_ratio,
            "durationInSeconds": duration_in_seconds,
            "fps": fps,
            "referenceImageIds": reference_image_ids,
            "continuationType": continuation_type,
            "parentGenerationId": parent_generation_id,
            "refinementPrompt": refinement_prompt,
            "conversationHistory": _turns(conversation_history),
            "model": model,
        },
    )


@internal_mutation
async def store(
    ctx: Any,
    user_id: str,
    prompt: str,
    code: str,
    raw_code: str,
    created_at: float | None = None,
    duration_in_frames: float | None = None,
    fps: float | None = None,
    aspect_ratio: str | None = None,
    duration_in_seconds: float | None = None,
    batch_id: str | None = None,
    variation_index: float | None = None,
    variation_count: float | None = None,
    continuation_type: str | None = None,
    parent_generation_id: GenerationId | None = None,
    refinement_prompt: str | None = None,
    model: str | None = None,
) -> GenerationId:
    """Insert a finished generation in one step (no pending phase)."""
    return await ctx.db.insert(
        "generations",
        {
            "userId": user_id,
            "prompt": prompt,
            "status": "success",
            "code": code,
            "rawCode": raw_code,
            "createdAt": now_ms() if created_at is None else created_at,
            "durationInFrames": duration_in_frames,
            "fps": fps,
            "aspectRatio": aspect_ratio,
            "durationInSeconds": duration_in_seconds,
            "batchId": batch_id,
            "variationIndex": variation_index,
            "variationCount": variation_count,
            "continuationType": continuation_type,
            "parentGenerationId": parent_generation_id,
            "refinementPrompt": refinement_prompt,
            "model": model,
        },
    )


@internal_mutation
async def update_partial(
    ctx: Any,
    id: GenerationId,
    raw_code: str,
    code: str | None = None,
) -> bool:
    """Show Claude's reply so far on a pending generation. False (and no write) once it is no longer pending."""
    generation = await ctx.db.get(id)
    if generation is None or generation["status"] != "pending":
        return False
    await ctx.db.patch(id, {"rawCode": raw_code, "code": code})
    return True


@internal_mutation
async def complete(
    ctx: Any,
    id: GenerationId,
    status: Literal["success", "failed"],
    code: str | None = None,
    raw_code: str | None = None,
    duration_in_frames: float | None = None,
    fps: float | None = None,
    model: str | None = None,
    error_message: str | None = None,
) -> None:
    """Finish a pending generation: "success" patches in the result; "failed" removes the row (seed 000).

    A failure never removes a finished generation, and reporting one for a row already gone is not an error.
    """
    generation = await ctx.db.get(id)
    if status == "failed":
        if generation is not None and generation["status"] == "pending":
            await ctx.db.delete(id)
        return
    if generation is None:
        raise not_found("generations:complete", id)
    if code is None or raw_code is None:
        raise AppError("INVALID_STATE", 'generations:complete: status "success" needs "code" and "rawCode"')
    fields = {"code": code, "rawCode": raw_code, "durationInFrames": duration_in_frames, "fps": fps, "model": model}
    await ctx.db.patch(id, {"status": "success", **{k: v for k, v in fields.items() if v is not None}})


@internal_query
async def get_internal(ctx: Any, id: GenerationId) -> Doc("generations") | None:
    """Any generation, without an ownership check: for actions that check ownership themselves."""
    return await ctx.db.get(id)


@internal_query
async def reference_files(ctx: Any, ids: list[StorageId]) -> list[Doc("_storage") | None]:
    """The `_storage` rows of a generation's reference images (None for a file gone): their type and size, which
    an action cannot read itself, so it can refuse what Claude would not take before reading any bytes."""
    return [await ctx.db.system.get(storage_id) for storage_id in ids]


# Public reads: signed-in users, their own generations only.


@query
async def get(ctx: Any, id: GenerationId) -> Doc("generations"):
    token = await token_of(ctx, "view generations")
    return await load_own(ctx, "generations:get", id, token)


@query(name="list")
async def list_own(ctx: Any, pagination_opts: dict[str, Any]) -> Page(Doc("generations")):
    """The caller's generations, newest first, one page at a time."""
    token = await token_of(ctx, "list generations")
    return await (
        ctx.db.query("generations")
        .with_index("by_user", lambda q: q.eq("userId", token))
        .order("desc")
        .paginate(pagination_opts)
    )


@query
async def list_by_parent(ctx: Any, parent_id: GenerationId) -> list[Doc("generations")]:
    """The refinements of one generation, oldest first."""
    token = await token_of(ctx, "view refinements")
    await load_own(ctx, "generations:listByParent", parent_id, token)
    return await (
        ctx.db.query("generations")
        .with_index("by_parent", lambda q: q.eq("parentGenerationId", parent_id))
        .filter(lambda q: q.eq(q.field("userId"), token))
        .order("asc")
        .collect()
    )


@query
async def get_refinement_chain(ctx: Any, generation_id: GenerationId) -> list[Doc("generations")]:
    """The generation and its ancestors, root first: original → V1 → V2 → ... → this one.

    Walks parent links up, stopping at a missing or foreign ancestor, at a cycle, or after MAX_CHAIN_LENGTH.
    """
    token = await token_of(ctx, "view the refinement chain")
    current = await load_own(ctx, "generations:getRefinementChain", generation_id, token)
    chain = [current]
    seen = {current["_id"]}
    while len(chain) < MAX_CHAIN_LENGTH:
        parent_id = current.get("parentGenerationId")
        if parent_id is None or parent_id in seen:
            break
        parent = owned(await ctx.db.get(parent_id), token)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent_id)
        current = parent
    chain.reverse()
    return chain


def _turns(history: list[ConversationTurn] | None) -> list[dict[str, Any]] | None:
    return [turn.model_dump() for turn in history] if history else None
