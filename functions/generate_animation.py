"""The `generateAnimation` module (seeds 000, 001): Claude writes and refines Remotion animations.

`generate` and `refineAndPersist` follow the pending-then-complete flow: a pending generation first, then
Claude's reply streamed into it (so a subscriber watches the code appear), then `complete` with success, or
with failure, which removes the row and re-raises a clear error. `refine` is the preview: it persists nothing.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, TypedDict

from pydantic import Field

from functions import generations
from functions._model import AppError, now_ms, owned, token_of
from functions.claude import Claude, ClaudeError, claude_settings, extract_code
from functions.generations import ConversationTurn, GenerationId, StorageId
from functions.reference_images import image_blocks
from server import action
from server.errors import describe

log = logging.getLogger(__name__)

# What the composition is when the generation does not say.
DEFAULT_FPS = 30.0
DEFAULT_DURATION_S = 5.0

GENERATION_SYSTEM_PROMPT = """\
You write Remotion animations in React and TypeScript.
Answer with one complete component in a single ```tsx code block, exported as
`export const MyAnimation: React.FC = () => { ... }`. Use only React and `remotion`
(AbsoluteFill, Sequence, useCurrentFrame, useVideoConfig, interpolate, spring) and inline styles.
Fit the animation to the aspect ratio, frame rate and duration given with the request."""

REFINEMENT_SYSTEM_PROMPT = """\
You revise Remotion animations written in React and TypeScript.
You get the current component and a change request. Answer with the complete updated component in a
single ```tsx code block, changing only what the request asks for and keeping the same export."""

NonEmpty = Annotated[str, Field(min_length=1)]
Positive = Annotated[float, Field(gt=0)]


class RefinedCode(TypedDict):
    """Claude's reply and the component code taken out of it (refine: a preview, stored nowhere)."""

    rawCode: str
    code: str


class Generated(RefinedCode):
    """A finished, stored generation (generate, refineAndPersist): its id, its code and its composition."""

    id: GenerationId
    durationInFrames: float
    fps: float


@action
async def generate(
    ctx: Any,
    prompt: NonEmpty,
    aspect_ratio: str | None = None,
    duration_in_seconds: Positive | None = None,
    fps: Positive | None = None,
    reference_image_ids: list[StorageId] | None = None,
) -> Generated:
    """A new generation from a prompt: {id, rawCode, code, durationInFrames, fps}.

    `referenceImageIds` are uploaded files Claude sees, as images, before the prompt.
    """
    token = await token_of(ctx, "generate animations")
    claude = Claude.from_settings(claude_settings())
    composition = {"aspectRatio": aspect_ratio, "durationInSeconds": duration_in_seconds, "fps": fps}
    generation_id = await ctx.run_mutation(
        generations.create_pending,
        {
            "userId": token,
            "prompt": prompt,
            "createdAt": now_ms(),
            "model": claude.model,
            "referenceImageIds": reference_image_ids or None,
            **composition,
        },
    )
    request = f"{prompt}\n\n{_describe_composition(composition)}"
    messages: list[dict[str, Any]] = [{"role": "user", "content": request}]
    return await _fill_pending(
        ctx, claude, generation_id, composition, GENERATION_SYSTEM_PROMPT, messages, reference_image_ids or []
    )


@action
async def refine(
    ctx: Any,
    current_code: NonEmpty,
    refinement_prompt: NonEmpty,
    conversation_history: list[ConversationTurn] | None = None,
) -> RefinedCode:
    """A preview of the refined code, {rawCode, code}; nothing is stored."""
    await token_of(ctx, "refine animations")
    claude = Claude.from_settings(claude_settings())
    messages = _refinement_messages(current_code, refinement_prompt, conversation_history or [])
    raw_code = await claude.stream(system=REFINEMENT_SYSTEM_PROMPT, messages=messages)
    return {"rawCode": raw_code, "code": _code_of(raw_code)}


@action
async def refine_and_persist(
    ctx: Any,
    parent_generation_id: GenerationId,
    refinement_prompt: NonEmpty,
    conversation_history: list[ConversationTurn],
) -> Generated:
    """A refinement stored as a child of the parent; keeps its prompt, aspect ratio, fps and duration."""
    fn = "generateAnimation:refineAndPersist"
    token = await token_of(ctx, "refine animations")
    claude = Claude.from_settings(claude_settings())
    parent = owned(await ctx.run_query(generations.get_internal, {"id": parent_generation_id}), token)
    if parent is None:
        raise generations.not_found(fn, parent_generation_id)
    current_code = parent.get("code") or parent.get("rawCode")
    if not current_code:
        raise AppError(
            "INVALID_STATE",
            f'{fn}: generation "{parent_generation_id}" has no code yet; refine it once it has finished',
            id=parent_generation_id,
        )
    composition = {key: parent.get(key) for key in ("aspectRatio", "durationInSeconds", "fps")}
    reference_image_ids = parent.get("referenceImageIds") or []  # the refinement still sees what the parent saw
    child_id = await ctx.run_mutation(
        generations.create_pending,
        {
            "userId": token,
            "prompt": parent["prompt"],
            "createdAt": now_ms(),
            "parentGenerationId": parent_generation_id,
            "refinementPrompt": refinement_prompt,
            "conversationHistory": [turn.model_dump() for turn in conversation_history],
            "model": claude.model,
            "referenceImageIds": reference_image_ids or None,
            **composition,
        },
    )
    messages = _refinement_messages(current_code, refinement_prompt, conversation_history)
    return await _fill_pending(
        ctx, claude, child_id, composition, REFINEMENT_SYSTEM_PROMPT, messages, reference_image_ids
    )


async def _fill_pending(
    ctx: Any,
    claude: Claude,
    generation_id: str,
    composition: dict[str, Any],
    system: str,
    messages: list[dict[str, Any]],
    reference_image_ids: list[str],
) -> dict[str, Any]:
    """Stream Claude's reply into the pending generation, then complete it; on any failure remove it and re-raise.

    The reference images are read here, inside the failure handling, so one Claude cannot take fails this
    generation with a message that says why, like any other failure of the call.
    """

    async def show_partial(text: str) -> None:
        partial = {"id": generation_id, "rawCode": text, "code": extract_code(text, partial=True)}
        await ctx.run_mutation(generations.update_partial, partial)

    fps = composition.get("fps") or DEFAULT_FPS
    seconds = composition.get("durationInSeconds") or DEFAULT_DURATION_S
    try:
        if reference_image_ids:
            messages = _with_images(messages, await image_blocks(ctx, reference_image_ids))
        raw_code = await claude.stream(system=system, messages=messages, on_text=show_partial)
        result = {"rawCode": raw_code, "code": _code_of(raw_code), "durationInFrames": round(seconds * fps), "fps": fps}
        await ctx.run_mutation(
            generations.complete, {"id": generation_id, "status": "success", "model": claude.model, **result}
        )
    except BaseException as exc:  # also cancellation (action timeout): never leave a pending row behind
        await _discard(ctx, generation_id, exc)
        raise
    return {"id": generation_id, **result}


async def _discard(ctx: Any, generation_id: str, exc: BaseException) -> None:
    try:
        await ctx.run_mutation(
            generations.complete, {"id": generation_id, "status": "failed", "errorMessage": describe(exc)}
        )
    except Exception:
        log.exception("could not remove failed generation %s; it stays pending", generation_id)


def _code_of(raw_code: str) -> str:
    code = extract_code(raw_code)
    if not code:
        raise ClaudeError("Claude's reply held no code; try again or rephrase the request")
    return code


def _describe_composition(composition: dict[str, Any]) -> str:
    fps = composition.get("fps") or DEFAULT_FPS
    seconds = composition.get("durationInSeconds") or DEFAULT_DURATION_S
    aspect = composition.get("aspectRatio") or "16:9"
    return f"Composition: aspect ratio {aspect}, {fps:g} fps, {seconds:g} seconds ({round(seconds * fps)} frames)."


def _with_images(messages: list[dict[str, Any]], images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last (user) message with the images before its text, as the Messages API advises for image prompts."""
    *earlier, last = messages
    return [*earlier, {**last, "content": [*images, {"type": "text", "text": last["content"]}]}]


def _refinement_messages(
    current_code: str, refinement_prompt: str, history: list[ConversationTurn]
) -> list[dict[str, Any]]:
    request = f"Current code:\n```tsx\n{current_code}\n```\n\nChange request: {refinement_prompt}"
    return [*(turn.model_dump() for turn in history), {"role": "user", "content": request}]
