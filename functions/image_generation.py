"""`imageGeneration:*`: a shot's six image variants made by a Replicate-style prediction API (seed 004).

The flow, one step per function, each safe to repeat:
1. `generateShotImages` (the owner, a mutation): the next iteration's six `shotImages` rows, status "pending", and,
   in the same transaction, `startPredictions` scheduled (so rows exist exactly when their start is scheduled).
2. `startPredictions` (an action): one prediction per row at the provider, its webhook naming the row
   (`?imageId=...`); `predictionsStarted` records each `replicateImageId` and moves the rows to "processing", or a
   refused start to "failed" with the provider's message in `metadata.error`.
3. The provider POSTs the finished prediction to `POST /replicate/webhook` (functions/http.py), which checks its
   signature and runs `predictionFinished`: "failed" or "canceled" fail the row; "succeeded" records the output URL
   and schedules `storeOutput`, which downloads the image into file storage and `completeImage` moves the row to
   "complete" with `imageStorageId` and `imageUrl` (the file's URL).

Nothing stays pending or processing for ever: a run of `startPredictions` that fails (not a refusal, recorded as
above) fails its rows before it ends, keeping the predictions it did start; and the cron `failStalledImages`
(functions/crons.py) fails rows still pending or processing `RIPPLE_IMAGE_STALE_AFTER_MINUTES` (30) after their
last update: the server stopped while starting them (a scheduled action is not run again), or the provider never
called back. A result arriving for a row failed so is ignored.

Providers retry webhooks, so a delivery may arrive twice, or before step 2 has recorded the prediction: a row
already finished, or whose output is already being stored, ignores it; a prediction id other than the row's is
refused. A row deleted meanwhile (its shot deleted) ignores everything, and a file stored for it is deleted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypedDict

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions._model import AppError, WireModel, check_text, now_ms, token_of
from functions._redesign import VARIANTS_PER_ITERATION, image_of_shot, insert_images, load_child
from functions.replicate import ImageApi, ReplicateError, image_api_settings
from server import Doc, Id, internal_action, internal_mutation, internal_query, mutation

if TYPE_CHECKING:  # mypy sees strings; at run time each argument is checked to name a row of its table
    ShotId = str
    ImageId = str
    StorageId = str
else:
    ShotId = Id("sceneShots")
    ImageId = Id("shotImages")
    StorageId = Id("_storage")

log = logging.getLogger(__name__)

# A generated image larger than this is refused rather than stored (a 1440x1440 PNG is a few MiB).
MAX_IMAGE_BYTES = 15 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 30.0
_FINISHED = ("complete", "failed")


# failStalledImages fails at most this many rows per status per run; the next run takes the rest.
_STALE_BATCH = 100


class StallSettings(BaseSettings):
    """Read when the cron runs (as ImageApiSettings, functions/replicate.py), so a change needs no restart."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Replicate's predictions take seconds to a few minutes (a cold model boots first): past this, none will come.
    stale_after_minutes: float = Field(default=30.0, gt=0, validation_alias="RIPPLE_IMAGE_STALE_AFTER_MINUTES")


class Started(WireModel):
    image_id: str
    prediction_id: str


class Refused(WireModel):
    image_id: str
    error: str


class IterationStarted(TypedDict):
    """What generateShotImages made: the iteration's number and its pending rows, by variant."""

    iterationNumber: float
    imageIds: list[ImageId]


@mutation
async def generate_shot_images(
    ctx: Any, shot_id: ShotId, prompt: str | None = None, parent_image_id: ImageId | None = None
) -> IterationStarted:
    """Ask for the shot's next iteration: six variants of `prompt` (default: the shot's initialPrompt, else its
    description). Returns {iterationNumber, imageIds}; the rows then move pending → processing → complete."""
    fn = "imageGeneration:generateShotImages"
    token = await token_of(ctx, "generate images")
    shot = await load_child(ctx, fn, "sceneShots", shot_id, token)
    settings = image_api_settings()
    settings.require("generating images")
    text = check_text(fn, "prompt", prompt or shot.get("initialPrompt") or shot["description"])
    if parent_image_id is not None:
        await image_of_shot(ctx, fn, "parentImageId", parent_image_id, shot)
    latest = (
        await ctx.db.query("shotImages").with_index("by_shot", lambda q: q.eq("shotId", shot_id)).order("desc").first()
    )
    iteration = latest["iterationNumber"] + 1 if latest is not None else 0
    rows = [
        {"_where": "", "variantNumber": v, "imageUrl": "", "status": "pending", "metadata": {"model": settings.model}}
        for v in range(VARIANTS_PER_ITERATION)
    ]
    ids = await insert_images(
        ctx, fn, token, (shot["projectId"], shot["sceneId"], shot_id), iteration, text, parent_image_id, rows
    )
    await ctx.scheduler.run_after(0, start_predictions, {"imageIds": ids})
    return {"iterationNumber": iteration, "imageIds": ids}


@internal_query
async def images_to_start(ctx: Any, image_ids: list[ImageId]) -> list[Doc("shotImages")]:
    """The rows among `image_ids` still pending (a deleted or finished one needs no prediction)."""
    images = [await ctx.db.get(image_id) for image_id in image_ids]
    return [img for img in images if img is not None and img["status"] == "pending"]


@internal_action
async def start_predictions(ctx: Any, image_ids: list[ImageId]) -> dict[str, float]:
    """Start one prediction per pending row; returns how many started and how many were refused. A run that fails
    fails the rows it did not start, so they do not wait for failStalledImages, and then fails itself."""
    started: list[dict[str, str]] = []
    refused: list[dict[str, str]] = []
    try:
        settings = image_api_settings()
        api = ImageApi(settings)
        images = await ctx.run_query(images_to_start, {"imageIds": image_ids})
        webhook = settings.resolved_webhook_url() if not settings.missing() else ""  # unset: each start says what
        for image in images:  # in variant order; the provider queues them anyway
            try:
                prediction_id = await api.start_prediction(
                    image["iterationPrompt"], f"{webhook}?imageId={image['_id']}"
                )
            except ReplicateError as exc:
                log.warning("image %s: the prediction was not started: %s", image["_id"], exc)
                refused.append({"imageId": image["_id"], "error": str(exc)})
                continue
            started.append({"imageId": image["_id"], "predictionId": prediction_id})
        await ctx.run_mutation(predictions_started, {"started": started, "refused": refused})
    except Exception as exc:
        done = {item["imageId"] for item in started + refused}
        error = f"the predictions could not be started: {exc}; generate the images again"
        refused += [{"imageId": image_id, "error": error} for image_id in image_ids if image_id not in done]
        try:  # predictions_started only moves rows still pending, so whatever the first call did stays
            await ctx.run_mutation(predictions_started, {"started": started, "refused": refused})
        except Exception as again:
            log.warning("images %s stay pending until failStalledImages fails them: %s", image_ids, again)
        raise
    return {"started": float(len(started)), "refused": float(len(refused))}


@internal_mutation
async def predictions_started(ctx: Any, started: list[Started], refused: list[Refused]) -> None:
    """Pending rows move to processing (their prediction id kept) or, when the provider refused, to failed."""
    now = now_ms()
    for item in started:
        image = await ctx.db.get(item.image_id)
        # A row no longer pending was moved on by a webhook that overtook this (or failed as stalled): leave it.
        if image is None or image["status"] != "pending":
            continue
        await ctx.db.patch(
            item.image_id, {"replicateImageId": item.prediction_id, "status": "processing", "updatedAt": now}
        )
    for failure in refused:
        image = await ctx.db.get(failure.image_id)
        if image is not None and image["status"] == "pending":
            await ctx.db.patch(failure.image_id, _failed(image, failure.error, now))


@internal_mutation
async def fail_stalled_images(ctx: Any, stale_after_minutes: float | None = None) -> float:
    """Fail the rows pending or processing for longer than `stale_after_minutes` since their last update (unset:
    RIPPLE_IMAGE_STALE_AFTER_MINUTES, 30), saying why in `metadata.error`; returns how many it failed."""
    minutes = StallSettings().stale_after_minutes if stale_after_minutes is None else stale_after_minutes
    now = now_ms()
    cutoff = now - minutes * 60_000.0
    reasons = {
        "pending": f"the prediction was not started within {minutes:g} minutes (the server may have stopped while "
        "starting it); generate the images again",
        "processing": f"the image API sent no result within {minutes:g} minutes; generate the images again",
    }
    failed = 0
    for status, reason in reasons.items():
        stale = await (
            ctx.db.query("shotImages")
            .with_index("by_status", lambda q, s=status: q.eq("status", s).lt("updatedAt", cutoff))
            .take(_STALE_BATCH)
        )
        for image in stale:
            await ctx.db.patch(image["_id"], _failed(image, reason, now))
            failed += 1
    if failed:
        log.warning("%d images had no result for %g minutes: marked failed", failed, minutes)
    return float(failed)


def _failed(image: dict[str, Any], error: str, now: float) -> dict[str, Any]:
    return {"status": "failed", "metadata": {**(image.get("metadata") or {}), "error": error}, "updatedAt": now}


def _owning(image: dict[str, Any] | None, prediction_id: str) -> dict[str, Any] | None:
    """The row when it still waits for this prediction; None when it is gone or finished (nothing to do).

    Raises AppError CONFLICT when the row waits for another prediction: a delivery sent to the wrong row."""
    if image is None or image["status"] in _FINISHED:
        return None
    recorded = image.get("replicateImageId")
    if recorded is not None and recorded != prediction_id:
        raise AppError(
            "CONFLICT",
            f'image "{image["_id"]}" waits for prediction "{recorded}", not "{prediction_id}"',
            id=image["_id"],
        )
    return image


@internal_mutation
async def prediction_finished(
    ctx: Any,
    image_id: ImageId,
    prediction_id: str,
    status: str,
    output_url: str | None = None,
    error: str | None = None,
) -> str:
    """Apply the provider's final word on a prediction. Returns what happened: "failed", "storing" (the output is
    being downloaded), "ignored" (not a final status) or "duplicate" (already done, or the row is gone)."""
    image = _owning(await ctx.db.get(image_id), prediction_id)
    if image is None:
        return "duplicate"
    now = now_ms()
    if status in ("failed", "canceled"):
        reason = error or ("the prediction was canceled" if status == "canceled" else "the prediction failed")
        await ctx.db.patch(image_id, {"replicateImageId": prediction_id, **_failed(image, reason, now)})
        return "failed"
    if status != "succeeded":
        return "ignored"  # "starting" or "processing": only completions finish a row
    metadata = image.get("metadata") or {}
    if metadata.get("outputUrl") is not None:
        return "duplicate"  # its download is already scheduled
    if not output_url:
        await ctx.db.patch(
            image_id,
            {"replicateImageId": prediction_id, **_failed(image, "the prediction succeeded without an image", now)},
        )
        return "failed"
    await ctx.db.patch(
        image_id,
        {"replicateImageId": prediction_id, "metadata": {**metadata, "outputUrl": output_url}, "updatedAt": now},
    )
    await ctx.scheduler.run_after(
        0, store_output, {"imageId": image_id, "predictionId": prediction_id, "outputUrl": output_url}
    )
    return "storing"


@internal_action
async def store_output(ctx: Any, image_id: ImageId, prediction_id: str, output_url: str) -> StorageId | None:
    """Download the prediction's image into file storage and complete the row; returns the storage id (None when
    the row no longer wanted it). A download that fails fails the row, and this run, with the reason."""
    try:
        data, content_type = await _download(output_url)
    except ReplicateError as exc:
        log.warning("image %s: %s", image_id, exc)
        await ctx.run_mutation(fail_image, {"imageId": image_id, "predictionId": prediction_id, "error": str(exc)})
        raise
    storage_id = await ctx.storage.store(data, content_type)
    args = {"imageId": image_id, "predictionId": prediction_id, "storageId": storage_id}
    if not await ctx.run_mutation(complete_image, args):
        await ctx.storage.delete(storage_id)  # the row was deleted or finished meanwhile: keep no orphan file
        return None
    return str(storage_id)


async def _download(url: str) -> tuple[bytes, str]:
    try:
        async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ReplicateError(f"could not download the generated image ({url}): HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if not content_type.startswith("image/"):
                    raise ReplicateError(
                        f"the generated image at {url} is not an image (Content-Type {content_type or 'missing'!r})"
                    )
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise ReplicateError(f"the generated image at {url} is over {MAX_IMAGE_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise ReplicateError(f"could not download the generated image ({url}): {exc}") from None
    return bytes(data), content_type


@internal_mutation
async def complete_image(ctx: Any, image_id: ImageId, prediction_id: str, storage_id: StorageId) -> bool:
    """The row complete with its stored file; False (nothing changed) when the row is gone or already finished."""
    image = _owning(await ctx.db.get(image_id), prediction_id)
    if image is None:
        return False
    url = await ctx.storage.get_url(storage_id)
    await ctx.db.patch(
        image_id,
        {"status": "complete", "imageStorageId": storage_id, "imageUrl": url or "", "updatedAt": now_ms()},
    )
    return True


@internal_mutation
async def fail_image(ctx: Any, image_id: ImageId, prediction_id: str, error: str) -> bool:
    image = _owning(await ctx.db.get(image_id), prediction_id)
    if image is None:
        return False
    await ctx.db.patch(image_id, _failed(image, error, now_ms()))
    return True


def prediction_args(image_id: str, prediction: Any) -> dict[str, Any]:
    """`predictionFinished`'s arguments from a webhook's body (Replicate's prediction object).

    Raises:
        ValueError: the body is not a prediction (the message says what is missing).
    """
    if not isinstance(prediction, dict):
        raise ValueError('the body must be a prediction object: {"id", "status", "output", "error", ...}')
    prediction_id, status = prediction.get("id"), prediction.get("status")
    if not isinstance(prediction_id, str) or not prediction_id or not isinstance(status, str):
        raise ValueError('the prediction must have a string "id" and "status"')
    output = prediction.get("output")
    if isinstance(output, list):  # most image models answer a list of URLs; we keep the first
        output = output[0] if output else None
    error = prediction.get("error")
    args: dict[str, Any] = {"imageId": image_id, "predictionId": prediction_id, "status": status}
    if isinstance(output, str) and output:
        args["outputUrl"] = output
    if error is not None:
        args["error"] = str(error)
    return args
