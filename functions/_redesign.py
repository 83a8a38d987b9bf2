"""Helpers of `projectRedesign` (like the seed's `convex/model/`): loaders that enforce ownership, the checks that
keep parents consistent, inserts shared by several functions, and the cascade. No functions are registered here.
"""

from __future__ import annotations

from typing import Any

from functions._model import (
    AppError,
    WireModel,
    check_choice,
    check_number,
    check_text,
    now_ms,
    owned,
)
from server.errors import ArgumentError, IdError

REDESIGN_STATUSES = ("prompt_planning", "scenes_setup", "shot_iteration", "storyboard_final", "animation_complete")
IMAGE_STATUSES = ("pending", "processing", "complete", "failed")
ANIMATION_STATUSES = ("pending", "processing", "complete", "failed")
VARIANTS_PER_ITERATION = 6  # variantNumber 0..5
_PARENT = {"projectId": "project", "sceneId": "scene", "shotId": "shot"}
_TABLE_WORD = {
    "projectScenes": "scene",
    "sceneShots": "shot",
    "shotImages": "image",
    "storyboardSelections": "selection",
}


class ShotInput(WireModel):
    shot_number: float
    description: str
    initial_prompt: str | None = None


class ImageInput(WireModel):
    variant_number: float
    image_url: str
    image_storage_id: str | None = None
    replicate_image_id: str | None = None
    status: str | None = None
    metadata: dict[str, Any] | None = None


async def owned_project(ctx: Any, project_id: str, token: str) -> dict[str, Any] | None:
    return owned(await ctx.db.get(project_id), token)


async def load_project(ctx: Any, fn: str, project_id: str, token: str) -> dict[str, Any]:
    project = await owned_project(ctx, project_id, token)
    if project is None:
        raise AppError("NOT_FOUND", f'{fn}: project "{project_id}" not found', id=project_id)
    return project


async def readable(ctx: Any, doc_id: str, token: str) -> dict[str, Any] | None:
    """A scene/shot/image/selection when the caller owns its project; else None."""
    doc = await ctx.db.get(doc_id)
    if doc is None or await owned_project(ctx, doc["projectId"], token) is None:
        return None
    return doc


async def load_child(ctx: Any, fn: str, table: str, doc_id: str, token: str, **parents: str | None) -> dict[str, Any]:
    """A document under one of the caller's projects, checked to belong to the given parents."""
    word = _TABLE_WORD[table]
    doc = await readable(ctx, doc_id, token)
    if doc is None:
        raise AppError("NOT_FOUND", f'{fn}: {word} "{doc_id}" not found', id=doc_id)
    for field, expected in parents.items():
        if expected is not None and doc.get(field) != expected:
            raise ArgumentError(f'{fn}: {word} "{doc_id}" does not belong to {_PARENT[field]} "{expected}"')
    return doc


async def image_of_shot(ctx: Any, fn: str, name: str, image_id: str, shot: dict[str, Any]) -> dict[str, Any]:
    image = await ctx.db.get(image_id)
    if image is None or image.get("shotId") != shot["_id"]:
        raise ArgumentError(f'{fn}: "{name}" must be an image of shot "{shot["_id"]}"; "{image_id}" is not')
    return image


def check_user_arg(fn: str, user_id: str | None, identity: dict[str, Any]) -> None:
    if user_id is not None and user_id not in (identity["tokenIdentifier"], identity.get("subject")):
        raise ArgumentError(
            f'{fn}: "userId" must be the signed-in caller (their tokenIdentifier or subject); a project always '
            "belongs to its creator, so userId may be left out"
        )


async def insert_project(
    ctx: Any, fn: str, prompt: str, title: str | None, prompt_planner_data: str | None, user_id: str | None
) -> str:
    identity = await ctx.auth.require_user("create a project")
    check_user_arg(fn, user_id, identity)
    check_text(fn, "prompt", prompt)
    if title is not None:
        check_text(fn, "title", title)
    now = now_ms()
    doc = {
        "userId": identity["tokenIdentifier"],
        "prompt": prompt,
        "title": title or prompt,
        "workflowVersion": "v2_redesign",
        "redesignStatus": "prompt_planning",
        "promptPlannerData": prompt_planner_data,
        "createdAt": now,
        "updatedAt": now,
    }
    return await ctx.db.insert("videoProjects", {k: v for k, v in doc.items() if v is not None})


async def delete_all(ctx: Any, table: str, index: str, field: str, value: str) -> None:
    """Delete the rows of `table` whose `field` is `value`, and the stored files of images among them."""
    for doc in await ctx.db.query(table).with_index(index, lambda q: q.eq(field, value)).collect():
        await ctx.db.delete(doc["_id"])
        if table == "shotImages":
            await delete_image_file(ctx, doc)


async def delete_image_file(ctx: Any, image: dict[str, Any]) -> None:
    """Delete the file an image names (a generated image, or an upload passed to createShotImage): an image owns
    its file, which nothing else shows once the image is gone. The bytes go once the mutation commits, so a delete
    that fails keeps them. A name that is no (longer a) file, as createShotImage accepts any string, is skipped."""
    storage_id = image.get("imageStorageId")
    if not storage_id:
        return
    try:
        exists = await ctx.storage.get_url(storage_id) is not None
    except IdError:
        return
    if exists:
        await ctx.storage.delete(storage_id)


async def insert_scene(
    ctx: Any, fn: str, project_id: str, scene_number: float, title: str, description: str, now: float
) -> str:
    check_number(fn, "sceneNumber", scene_number, low=0)
    check_text(fn, "title", title)
    return await ctx.db.insert(
        "projectScenes",
        {
            "projectId": project_id,
            "sceneNumber": scene_number,
            "title": title,
            "description": description,
            "createdAt": now,
            "updatedAt": now,
        },
    )


async def insert_shot(
    ctx: Any,
    fn: str,
    project_id: str,
    scene_id: str,
    shot_number: float,
    description: str,
    initial_prompt: str | None,
    now: float,
    where: str = "",
) -> str:
    check_number(fn, f"{where}shotNumber", shot_number, low=0)
    doc = {
        "projectId": project_id,
        "sceneId": scene_id,
        "shotNumber": shot_number,
        "description": description,
        "initialPrompt": initial_prompt,
        "createdAt": now,
        "updatedAt": now,
    }
    return await ctx.db.insert("sceneShots", {k: v for k, v in doc.items() if v is not None})


async def insert_images(
    ctx: Any,
    fn: str,
    token: str,
    ids: tuple[str, str, str],
    iteration_number: float,
    iteration_prompt: str,
    parent_image_id: str | None,
    images: list[dict[str, Any]],
) -> list[str]:
    """The one path images are created by: checks the hierarchy, numbers, statuses and uniqueness."""
    project_id, scene_id, shot_id = ids
    shot = await load_child(ctx, fn, "sceneShots", shot_id, token, projectId=project_id, sceneId=scene_id)
    check_number(fn, "iterationNumber", iteration_number, low=0, whole=True)
    if parent_image_id is not None:
        await image_of_shot(ctx, fn, "parentImageId", parent_image_id, shot)
    seen: set[float] = set()
    docs = []
    now = now_ms()
    for image in images:
        where = image.pop("_where")
        variant = check_number(fn, f"{where}variantNumber", image["variantNumber"], low=0, high=5, whole=True)
        if variant in seen:
            raise ArgumentError(f"{fn}: variantNumber {variant:g} appears twice in this iteration")
        seen.add(variant)
        image["status"] = check_choice(fn, f"{where}status", image.get("status") or "complete", IMAGE_STATUSES)
        if image["status"] == "complete" or image["imageUrl"] != "":
            check_text(fn, f"{where}imageUrl", image["imageUrl"])  # an image not made yet has "" until it is
        taken = await (
            ctx.db.query("shotImages")
            .with_index(
                "by_shot",
                lambda q, v=variant: (
                    q.eq("shotId", shot_id).eq("iterationNumber", iteration_number).eq("variantNumber", v)
                ),
            )
            .first()
        )
        if taken is not None:
            raise AppError(
                "ALREADY_EXISTS",
                f'{fn}: shot "{shot_id}" already has variant {variant:g} of iteration {iteration_number:g} '
                f'("{taken["_id"]}"); use getLatestIterationNumber + 1 for a new iteration',
            )
        doc = {
            "projectId": project_id,
            "sceneId": scene_id,
            "shotId": shot_id,
            "iterationNumber": iteration_number,
            "iterationPrompt": iteration_prompt,
            "parentImageId": parent_image_id,
            "isFavorite": False,
            "createdAt": now,
            "updatedAt": now,
            **image,
        }
        docs.append({k: v for k, v in doc.items() if v is not None})
    return [await ctx.db.insert("shotImages", doc) for doc in docs]


async def selection_of(ctx: Any, shot_id: str) -> dict[str, Any] | None:
    return await ctx.db.query("storyboardSelections").with_index("by_shot", lambda q: q.eq("shotId", shot_id)).first()


async def point_selection(ctx: Any, selection: dict[str, Any], image_id: str, now: float) -> None:
    """Move a selection to another image; its animation was of the old image, so it starts over."""
    if selection["selectedImageId"] == image_id:
        return
    await ctx.db.patch(
        selection["_id"],
        {
            "selectedImageId": image_id,
            "animationStatus": None,
            "animatedVideoUrl": None,
            "replicateVideoId": None,
            "updatedAt": now,
        },
    )


async def selection_target(
    ctx: Any, fn: str, token: str, project_id: str, scene_id: str, shot_id: str, image_id: str
) -> dict[str, Any]:
    shot = await load_child(ctx, fn, "sceneShots", shot_id, token, projectId=project_id, sceneId=scene_id)
    await image_of_shot(ctx, fn, "selectedImageId", image_id, shot)
    return shot


async def insert_selection(
    ctx: Any, ids: tuple[str, str, str], image_id: str, animation_status: str | None, now: float
) -> str:
    project_id, scene_id, shot_id = ids
    doc = {
        "projectId": project_id,
        "sceneId": scene_id,
        "shotId": shot_id,
        "selectedImageId": image_id,
        "animationStatus": animation_status,
        "createdAt": now,
        "updatedAt": now,
    }
    selection_id = await ctx.db.insert("storyboardSelections", {k: v for k, v in doc.items() if v is not None})
    await ctx.db.patch(shot_id, {"selectedImageId": image_id, "updatedAt": now})
    return selection_id
