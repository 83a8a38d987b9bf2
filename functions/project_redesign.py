"""`projectRedesign:*`: the v2 video project (seed 004): project → scenes → shots → image iterations →
storyboard selections, owned by the signed-in user who created the project.

Ownership: a project's `userId` is the creator's tokenIdentifier (a `userId` argument, as the seed's clients send,
must name the caller and is otherwise unused). Everything under a project is read and written only by its owner;
another user's (or a missing) document reads as absent (None / [] / -1) and refuses writes with NOT_FOUND.

Invariants every write keeps:
- a child names its parents consistently: a shot's scene is in its project, an image's shot is in its scene, an
  image's parentImage is an image of the same shot, a selection's image is an image of its shot;
- a shot has at most one storyboard selection, and the shot's `selectedImageId` names the same image;
- (shotId, iterationNumber, variantNumber) is unique; variantNumber is 0-5;
- deletes cascade down the hierarchy (scenes → shots → images → selections) and leave no dangling reference; an
  image's stored file (`imageStorageId`) is deleted with it, once the delete commits.

`redesignStatus` follows prompt_planning → scenes_setup → shot_iteration → storyboard_final → animation_complete,
one step at a time: forward to the next stage or back to the previous one (to revise); skips are refused.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, TypedDict

from functions._model import (
    AppError,
    check_choice,
    check_number,
    check_text,
    now_ms,
    round_percent,
    token_of,
)
from functions._redesign import (
    ANIMATION_STATUSES,
    IMAGE_STATUSES,
    REDESIGN_STATUSES,
    VARIANTS_PER_ITERATION,
    ImageInput,
    ShotInput,
    delete_all,
    delete_image_file,
    image_of_shot,
    insert_images,
    insert_project,
    insert_scene,
    insert_selection,
    insert_shot,
    load_child,
    load_project,
    owned_project,
    point_selection,
    readable,
    selection_of,
    selection_target,
)
from server import Doc, Id, mutation, query
from server.errors import ArgumentError

# Result shapes: the dicts the functions below return, key for key as on the wire, so `ripple codegen` gives clients
# their types.


class SceneWithShots(TypedDict):
    """The ids createSceneWithShots made: the scene's, and its shots' in the order given."""

    sceneId: Id("projectScenes")
    shotIds: list[Id("sceneShots")]


class ImageGroup(TypedDict):
    """One iteration of a shot's images (getGroupedShotImages)."""

    iterationNumber: float
    images: list[Doc("shotImages")]
    prompt: str
    parentImage: Doc("shotImages") | None


class SelectedImage(TypedDict):
    _id: Id("shotImages")
    iterationNumber: float
    variantNumber: float
    imageUrl: str


class StoryboardRow(TypedDict):
    """One shot of a storyboard with its scene's number and title and its selection (getStoryboard)."""

    sceneId: Id("projectScenes")
    sceneNumber: float
    sceneTitle: str
    shotId: Id("sceneShots")
    shotNumber: float
    description: str
    selection: Doc("storyboardSelections") | None
    selectedImage: SelectedImage | None


class ProjectProgress(TypedDict):
    """Selection, animation and image progress over a project's shots (getProjectProgress); percentages 0-100."""

    totalImages: int
    imagesPending: int
    imagesProcessing: int
    imagesComplete: int
    imagesFailed: int
    imageProgress: float
    totalScenes: int
    totalShots: int
    shotsWithSelections: int
    shotsWithAnimations: int
    selectionProgress: float
    animationProgress: float
    isSelectionComplete: bool
    isAnimationComplete: bool


# Projects.


@mutation
async def create_redesign_project(
    ctx: Any,
    prompt: str,
    title: str | None = None,
    prompt_planner_data: str | None = None,
    user_id: str | None = None,
) -> Id("videoProjects"):
    """A new v2 project at "prompt_planning"; title defaults to the prompt."""
    return await insert_project(
        ctx, "projectRedesign:createRedesignProject", prompt, title, prompt_planner_data, user_id
    )


@mutation
async def initialize_project(
    ctx: Any, prompt: str, prompt_planner_data: str, title: str | None = None, user_id: str | None = None
) -> Id("videoProjects"):
    """createRedesignProject with the prompt planner's brain dump, in one transaction (the seed's composite)."""
    fn = "projectRedesign:initializeProject"
    return await insert_project(ctx, fn, prompt, title, prompt_planner_data, user_id)


@mutation
async def update_prompt_planner(ctx: Any, project_id: Id("videoProjects"), prompt_planner_data: str) -> None:
    fn = "projectRedesign:updatePromptPlanner"
    token = await token_of(ctx, "update a project")
    await load_project(ctx, fn, project_id, token)
    await ctx.db.patch(project_id, {"promptPlannerData": prompt_planner_data, "updatedAt": now_ms()})


@mutation
async def update_redesign_status(ctx: Any, project_id: Id("videoProjects"), status: str) -> None:
    """Move the project one stage forward or back (or stay); skipping a stage is refused."""
    fn = "projectRedesign:updateRedesignStatus"
    token = await token_of(ctx, "update a project")
    check_choice(fn, "status", status, REDESIGN_STATUSES)
    project = await load_project(ctx, fn, project_id, token)
    current = project.get("redesignStatus")
    here = REDESIGN_STATUSES.index(current) if current in REDESIGN_STATUSES else -1
    there = REDESIGN_STATUSES.index(status)
    if abs(there - here) > 1:
        shown = f'"{current}"' if current else "no status"
        allowed = [REDESIGN_STATUSES[i] for i in (here - 1, here, here + 1) if 0 <= i < len(REDESIGN_STATUSES)]
        raise AppError(
            "INVALID_TRANSITION",
            f'{fn}: cannot move project "{project_id}" from {shown} to '
            f'"{status}": the stages ({" → ".join(REDESIGN_STATUSES)}) are taken one at a time, forward or back; '
            "allowed now: " + ", ".join(f'"{s}"' for s in allowed),
            current=current,
            requested=status,
        )
    await ctx.db.patch(project_id, {"redesignStatus": status, "updatedAt": now_ms()})


@mutation
async def delete_redesign_project(ctx: Any, project_id: Id("videoProjects")) -> None:
    """Delete the project and everything under it, images' files included."""
    token = await token_of(ctx, "delete a project")
    await load_project(ctx, "projectRedesign:deleteRedesignProject", project_id, token)
    for table in ("storyboardSelections", "shotImages", "sceneShots", "projectScenes"):
        await delete_all(ctx, table, "by_project", "projectId", project_id)
    await ctx.db.delete(project_id)


@query
async def get_project(ctx: Any, project_id: Id("videoProjects")) -> Doc("videoProjects") | None:
    token = await token_of(ctx, "read a project")
    return await owned_project(ctx, project_id, token)


# Scenes.


@mutation
async def create_project_scene(
    ctx: Any, project_id: Id("videoProjects"), scene_number: float, title: str, description: str
) -> Id("projectScenes"):
    fn = "projectRedesign:createProjectScene"
    token = await token_of(ctx, "add a scene")
    await load_project(ctx, fn, project_id, token)
    return await insert_scene(ctx, fn, project_id, scene_number, title, description, now_ms())


@mutation
async def create_scene_with_shots(
    ctx: Any,
    project_id: Id("videoProjects"),
    scene_number: float,
    title: str,
    description: str,
    shots: list[ShotInput],
) -> SceneWithShots:
    """A scene and its shots in one transaction: all are created or none. Returns {sceneId, shotIds}."""
    fn = "projectRedesign:createSceneWithShots"
    token = await token_of(ctx, "add a scene")
    await load_project(ctx, fn, project_id, token)
    now = now_ms()
    scene_id = await insert_scene(ctx, fn, project_id, scene_number, title, description, now)
    shot_ids = [
        await insert_shot(
            ctx, fn, project_id, scene_id, s.shot_number, s.description, s.initial_prompt, now, f"shots.{i}."
        )
        for i, s in enumerate(shots)
    ]
    return {"sceneId": scene_id, "shotIds": shot_ids}


@mutation
async def update_project_scene(
    ctx: Any,
    scene_id: Id("projectScenes"),
    scene_number: float | None = None,
    title: str | None = None,
    description: str | None = None,
) -> None:
    fn = "projectRedesign:updateProjectScene"
    token = await token_of(ctx, "update a scene")
    await load_child(ctx, fn, "projectScenes", scene_id, token)
    fields: dict[str, Any] = {"updatedAt": now_ms()}
    if scene_number is not None:
        fields["sceneNumber"] = check_number(fn, "sceneNumber", scene_number, low=0)
    if title is not None:
        fields["title"] = check_text(fn, "title", title)
    if description is not None:
        fields["description"] = description
    await ctx.db.patch(scene_id, fields)


@mutation
async def delete_project_scene(ctx: Any, scene_id: Id("projectScenes")) -> None:
    """Delete the scene with its shots, their images (and their files) and selections."""
    token = await token_of(ctx, "delete a scene")
    await load_child(ctx, "projectRedesign:deleteProjectScene", "projectScenes", scene_id, token)
    for table in ("storyboardSelections", "shotImages", "sceneShots"):
        await delete_all(ctx, table, "by_scene", "sceneId", scene_id)
    await ctx.db.delete(scene_id)


@query
async def get_project_scenes(ctx: Any, project_id: Id("videoProjects")) -> list[Doc("projectScenes")]:
    """The project's scenes by sceneNumber."""
    token = await token_of(ctx, "read a project")
    if await owned_project(ctx, project_id, token) is None:
        return []
    return (
        await ctx.db.query("projectScenes").with_index("by_project", lambda q: q.eq("projectId", project_id)).collect()
    )


# Shots.


@mutation
async def create_scene_shot(
    ctx: Any,
    project_id: Id("videoProjects"),
    scene_id: Id("projectScenes"),
    shot_number: float,
    description: str,
    initial_prompt: str | None = None,
) -> Id("sceneShots"):
    fn = "projectRedesign:createSceneShot"
    token = await token_of(ctx, "add a shot")
    await load_child(ctx, fn, "projectScenes", scene_id, token, projectId=project_id)
    return await insert_shot(ctx, fn, project_id, scene_id, shot_number, description, initial_prompt, now_ms())


@mutation
async def update_scene_shot(
    ctx: Any,
    shot_id: Id("sceneShots"),
    shot_number: float | None = None,
    description: str | None = None,
    initial_prompt: str | None = None,
    selected_image_id: Id("shotImages") | None = None,
) -> None:
    """Set the given fields. A new selectedImageId (an image of this shot) also moves the shot's storyboard
    selection, when it has one, to that image (use selectMasterShot to create the selection)."""
    fn = "projectRedesign:updateSceneShot"
    token = await token_of(ctx, "update a shot")
    shot = await load_child(ctx, fn, "sceneShots", shot_id, token)
    now = now_ms()
    fields: dict[str, Any] = {"updatedAt": now}
    if shot_number is not None:
        fields["shotNumber"] = check_number(fn, "shotNumber", shot_number, low=0)
    if description is not None:
        fields["description"] = description
    if initial_prompt is not None:
        fields["initialPrompt"] = initial_prompt
    if selected_image_id is not None:
        await image_of_shot(ctx, fn, "selectedImageId", selected_image_id, shot)
        fields["selectedImageId"] = selected_image_id
        selection = await selection_of(ctx, shot_id)
        if selection is not None:
            await point_selection(ctx, selection, selected_image_id, now)
    await ctx.db.patch(shot_id, fields)


@mutation
async def delete_scene_shot(ctx: Any, shot_id: Id("sceneShots")) -> None:
    """Delete the shot with its images (and their files) and selection."""
    token = await token_of(ctx, "delete a shot")
    await load_child(ctx, "projectRedesign:deleteSceneShot", "sceneShots", shot_id, token)
    for table in ("storyboardSelections", "shotImages"):
        await delete_all(ctx, table, "by_shot", "shotId", shot_id)
    await ctx.db.delete(shot_id)


@query
async def get_scene_shots(ctx: Any, scene_id: Id("projectScenes")) -> list[Doc("sceneShots")]:
    """The scene's shots by shotNumber."""
    token = await token_of(ctx, "read a project")
    if await readable(ctx, scene_id, token) is None:
        return []
    return await ctx.db.query("sceneShots").with_index("by_scene", lambda q: q.eq("sceneId", scene_id)).collect()


# Images.


@mutation
async def create_shot_image(
    ctx: Any,
    project_id: Id("videoProjects"),
    scene_id: Id("projectScenes"),
    shot_id: Id("sceneShots"),
    iteration_number: float,
    variant_number: float,
    image_url: str,
    iteration_prompt: str,
    image_storage_id: str | None = None,
    parent_image_id: Id("shotImages") | None = None,
    replicate_image_id: str | None = None,
    status: str | None = None,
    is_favorite: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> Id("shotImages"):
    """One image of an iteration (status defaults to "complete", as in the seed)."""
    token = await token_of(ctx, "add an image")
    image = {
        "_where": "",
        "variantNumber": variant_number,
        "imageUrl": image_url,
        "imageStorageId": image_storage_id,
        "replicateImageId": replicate_image_id,
        "status": status,
        "metadata": metadata,
    }
    if is_favorite is not None:
        image["isFavorite"] = is_favorite
    (image_id,) = await insert_images(
        ctx,
        "projectRedesign:createShotImage",
        token,
        (project_id, scene_id, shot_id),
        iteration_number,
        iteration_prompt,
        parent_image_id,
        [image],
    )
    return image_id


@mutation
async def batch_create_shot_images(
    ctx: Any,
    project_id: Id("videoProjects"),
    scene_id: Id("projectScenes"),
    shot_id: Id("sceneShots"),
    iteration_number: float,
    iteration_prompt: str,
    images: list[ImageInput],
    parent_image_id: Id("shotImages") | None = None,
) -> list[Id("shotImages")]:
    """One iteration's variants (1 to 6, distinct variantNumbers), all or none; returns their ids in order."""
    fn = "projectRedesign:batchCreateShotImages"
    token = await token_of(ctx, "add images")
    if not 1 <= len(images) <= VARIANTS_PER_ITERATION:
        raise ArgumentError(f'{fn}: "images" must hold 1 to {VARIANTS_PER_ITERATION} variants; got {len(images)}')
    rows = [{"_where": f"images.{i}.", **img.model_dump(by_alias=True)} for i, img in enumerate(images)]
    return await insert_images(
        ctx, fn, token, (project_id, scene_id, shot_id), iteration_number, iteration_prompt, parent_image_id, rows
    )


@mutation
async def update_shot_image(
    ctx: Any,
    image_id: Id("shotImages"),
    image_url: str | None = None,
    image_storage_id: str | None = None,
    replicate_image_id: str | None = None,
    status: str | None = None,
    is_favorite: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    fn = "projectRedesign:updateShotImage"
    token = await token_of(ctx, "update an image")
    await load_child(ctx, fn, "shotImages", image_id, token)
    fields: dict[str, Any] = {"updatedAt": now_ms()}
    if status is not None:
        fields["status"] = check_choice(fn, "status", status, IMAGE_STATUSES)
    if image_url is not None:
        fields["imageUrl"] = check_text(fn, "imageUrl", image_url)
    for name, value in (
        ("imageStorageId", image_storage_id),
        ("replicateImageId", replicate_image_id),
        ("isFavorite", is_favorite),
        ("metadata", metadata),
    ):
        if value is not None:
            fields[name] = value
    await ctx.db.patch(image_id, fields)


@mutation
async def toggle_favorite(ctx: Any, image_id: Id("shotImages")) -> bool:
    """Flip the image's isFavorite; returns the new value."""
    token = await token_of(ctx, "update an image")
    image = await load_child(ctx, "projectRedesign:toggleFavorite", "shotImages", image_id, token)
    value = not image.get("isFavorite", False)
    await ctx.db.patch(image_id, {"isFavorite": value, "updatedAt": now_ms()})
    return value


@mutation
async def delete_shot_image(ctx: Any, image_id: Id("shotImages")) -> None:
    """Delete the image, its stored file, the selection that picked it, and every reference to it (shot, derived
    images)."""
    token = await token_of(ctx, "delete an image")
    image = await load_child(ctx, "projectRedesign:deleteShotImage", "shotImages", image_id, token)
    shot_id = image["shotId"]
    now = now_ms()
    selection = await selection_of(ctx, shot_id)
    if selection is not None and selection["selectedImageId"] == image_id:
        await ctx.db.delete(selection["_id"])
    shot = await ctx.db.get(shot_id)
    if shot is not None and shot.get("selectedImageId") == image_id:
        await ctx.db.patch(shot_id, {"selectedImageId": None, "updatedAt": now})
    shares_file = False
    for other in await ctx.db.query("shotImages").with_index("by_shot", lambda q: q.eq("shotId", shot_id)).collect():
        if other.get("parentImageId") == image_id:
            await ctx.db.patch(other["_id"], {"parentImageId": None, "updatedAt": now})
        if (
            image.get("imageStorageId")
            and other["_id"] != image_id
            and other.get("imageStorageId") == image["imageStorageId"]
        ):
            shares_file = True  # an upload named by two images of the shot stays with the other
    await ctx.db.delete(image_id)
    if not shares_file:
        await delete_image_file(ctx, image)


@query
async def get_shot_images(
    ctx: Any, shot_id: Id("sceneShots"), iteration_number: float | None = None
) -> list[Doc("shotImages")]:
    """The shot's images by iteration then variant; only one iteration's when iterationNumber is given."""
    token = await token_of(ctx, "read a project")
    if await readable(ctx, shot_id, token) is None:
        return []
    if iteration_number is None:
        rng = lambda q: q.eq("shotId", shot_id)  # noqa: E731
    else:
        check_number("projectRedesign:getShotImages", "iterationNumber", iteration_number, low=0, whole=True)
        rng = lambda q: q.eq("shotId", shot_id).eq("iterationNumber", iteration_number)  # noqa: E731
    return await ctx.db.query("shotImages").with_index("by_shot", rng).collect()


@query
async def get_latest_iteration_number(ctx: Any, shot_id: Id("sceneShots")) -> float:
    """The highest iterationNumber of the shot's images, -1 when it has none (so the next is latest + 1)."""
    token = await token_of(ctx, "read a project")
    if await readable(ctx, shot_id, token) is None:
        return -1
    latest = (
        await ctx.db.query("shotImages").with_index("by_shot", lambda q: q.eq("shotId", shot_id)).order("desc").first()
    )
    return latest["iterationNumber"] if latest is not None else -1


@query
async def get_grouped_shot_images(ctx: Any, shot_id: Id("sceneShots")) -> list[ImageGroup]:
    """[{iterationNumber, images (by variant), prompt, parentImage (document or null)}] by iteration."""
    token = await token_of(ctx, "read a project")
    if await readable(ctx, shot_id, token) is None:
        return []
    images = await ctx.db.query("shotImages").with_index("by_shot", lambda q: q.eq("shotId", shot_id)).collect()
    by_id = {img["_id"]: img for img in images}
    groups: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for img in images:  # index order: iteration, then variant
        groups[img["iterationNumber"]].append(img)
    result = []
    for iteration, imgs in groups.items():
        parent_id = imgs[0].get("parentImageId")
        result.append(
            {
                "iterationNumber": iteration,
                "images": imgs,
                "prompt": imgs[0].get("iterationPrompt", ""),
                "parentImage": by_id.get(parent_id) if parent_id else None,
            }
        )
    return result


# Storyboard selections.


@mutation
async def create_storyboard_selection(
    ctx: Any,
    project_id: Id("videoProjects"),
    scene_id: Id("projectScenes"),
    shot_id: Id("sceneShots"),
    selected_image_id: Id("shotImages"),
    animation_status: str | None = None,
) -> Id("storyboardSelections"):
    """The shot's storyboard selection (also set as the shot's selectedImageId); refused when the shot already has
    one: selectMasterShot changes it."""
    fn = "projectRedesign:createStoryboardSelection"
    token = await token_of(ctx, "select a master shot")
    if animation_status is not None:
        check_choice(fn, "animationStatus", animation_status, ANIMATION_STATUSES)
    await selection_target(ctx, fn, token, project_id, scene_id, shot_id, selected_image_id)
    existing = await selection_of(ctx, shot_id)
    if existing is not None:
        raise AppError(
            "ALREADY_EXISTS",
            f'{fn}: shot "{shot_id}" already has a storyboard selection ("{existing["_id"]}"); '
            "use selectMasterShot to change it",
            id=existing["_id"],
        )
    return await insert_selection(ctx, (project_id, scene_id, shot_id), selected_image_id, animation_status, now_ms())


@mutation
async def select_master_shot(
    ctx: Any,
    project_id: Id("videoProjects"),
    scene_id: Id("projectScenes"),
    shot_id: Id("sceneShots"),
    selected_image_id: Id("shotImages"),
) -> Id("storyboardSelections"):
    """Create or move the shot's storyboard selection to this image and set the shot's selectedImageId.
    Moving it to another image resets its animation. Returns the selection id."""
    fn = "projectRedesign:selectMasterShot"
    token = await token_of(ctx, "select a master shot")
    await selection_target(ctx, fn, token, project_id, scene_id, shot_id, selected_image_id)
    now = now_ms()
    existing = await selection_of(ctx, shot_id)
    if existing is None:
        return await insert_selection(ctx, (project_id, scene_id, shot_id), selected_image_id, None, now)
    await point_selection(ctx, existing, selected_image_id, now)
    await ctx.db.patch(shot_id, {"selectedImageId": selected_image_id, "updatedAt": now})
    return str(existing["_id"])


@mutation
async def update_storyboard_animation(
    ctx: Any,
    selection_id: Id("storyboardSelections"),
    animation_status: str | None = None,
    animated_video_url: str | None = None,
    replicate_video_id: str | None = None,
) -> None:
    """Record the animation's progress; "complete" needs animatedVideoUrl (given now or before)."""
    fn = "projectRedesign:updateStoryboardAnimation"
    token = await token_of(ctx, "update an animation")
    if animation_status is not None:
        check_choice(fn, "animationStatus", animation_status, ANIMATION_STATUSES)
    selection = await load_child(ctx, fn, "storyboardSelections", selection_id, token)
    if animation_status == "complete" and not (animated_video_url or selection.get("animatedVideoUrl")):
        raise ArgumentError(f'{fn}: animationStatus "complete" needs animatedVideoUrl')
    fields: dict[str, Any] = {"updatedAt": now_ms()}
    for name, value in (
        ("animationStatus", animation_status),
        ("animatedVideoUrl", animated_video_url),
        ("replicateVideoId", replicate_video_id),
    ):
        if value is not None:
            fields[name] = value
    await ctx.db.patch(selection_id, fields)


@query
async def get_storyboard_selections(ctx: Any, project_id: Id("videoProjects")) -> list[Doc("storyboardSelections")]:
    token = await token_of(ctx, "read a project")
    if await owned_project(ctx, project_id, token) is None:
        return []
    return await (
        ctx.db.query("storyboardSelections").with_index("by_project", lambda q: q.eq("projectId", project_id)).collect()
    )


@query
async def get_storyboard(ctx: Any, project_id: Id("videoProjects")) -> list[StoryboardRow]:
    """Every shot of the project in scene then shot order, each with its scene's number and title and its
    storyboard selection (or None): what a storyboard view shows, where ids alone mean nothing to a reader.

    Not in the seed: one subscription here replaces getProjectScenes + getSceneShots per scene +
    getStoryboardSelections, so the rows can never show a shot whose scene has not arrived yet."""
    token = await token_of(ctx, "read a project")
    if await owned_project(ctx, project_id, token) is None:
        return []

    def by_project(q: Any) -> Any:
        return q.eq("projectId", project_id)

    scenes = await ctx.db.query("projectScenes").with_index("by_project", by_project).collect()
    shots = await ctx.db.query("sceneShots").with_index("by_project", by_project).collect()
    selections = await ctx.db.query("storyboardSelections").with_index("by_project", by_project).collect()
    scene_of = {scene["_id"]: scene for scene in scenes}
    selection_for = {s["shotId"]: s for s in selections}
    rows = []
    for shot in shots:
        scene = scene_of.get(shot["sceneId"])
        if scene is None:
            continue  # a cascade keeps this from happening; a row without its scene has nothing to show
        selection = selection_for.get(shot["_id"])
        image = await ctx.db.get(selection["selectedImageId"]) if selection else None
        rows.append(
            {
                "sceneId": scene["_id"],
                "sceneNumber": scene["sceneNumber"],
                "sceneTitle": scene["title"],
                "shotId": shot["_id"],
                "shotNumber": shot["shotNumber"],
                "description": shot["description"],
                "selection": selection,
                "selectedImage": None
                if image is None
                else {
                    "_id": image["_id"],
                    "iterationNumber": image["iterationNumber"],
                    "variantNumber": image["variantNumber"],
                    "imageUrl": image["imageUrl"],
                },
            }
        )
    rows.sort(key=lambda r: (r["sceneNumber"], r["shotNumber"]))
    return rows


@query
async def get_scene_storyboard_complete(ctx: Any, scene_id: Id("projectScenes")) -> bool | None:
    """True when the scene has shots and every one has a storyboard selection; None for an unknown scene."""
    token = await token_of(ctx, "read a project")
    if await readable(ctx, scene_id, token) is None:
        return None
    shots = await ctx.db.query("sceneShots").with_index("by_scene", lambda q: q.eq("sceneId", scene_id)).collect()
    selections = await (
        ctx.db.query("storyboardSelections").with_index("by_scene", lambda q: q.eq("sceneId", scene_id)).collect()
    )
    selected = {s["shotId"] for s in selections}
    return bool(shots) and all(shot["_id"] in selected for shot in shots)


@query
async def get_project_progress(ctx: Any, project_id: Id("videoProjects")) -> ProjectProgress | None:
    """Selection and animation progress over the project's shots, and how many of its images are made (beyond the
    seed, for image generation: imageProgress is the share finished, complete or failed); percentages rounded to one
    decimal."""
    token = await token_of(ctx, "read a project")
    if await owned_project(ctx, project_id, token) is None:
        return None

    def by_project(q: Any) -> Any:
        return q.eq("projectId", project_id)

    scenes = await ctx.db.query("projectScenes").with_index("by_project", by_project).collect()
    shots = await ctx.db.query("sceneShots").with_index("by_project", by_project).collect()
    selections = await ctx.db.query("storyboardSelections").with_index("by_project", by_project).collect()
    images = await ctx.db.query("shotImages").with_index("by_project", by_project).collect()
    shot_ids = {shot["_id"] for shot in shots}
    selected = {s["shotId"] for s in selections} & shot_ids
    animated = {s["shotId"] for s in selections if s.get("animationStatus") == "complete"} & shot_ids
    total = len(shot_ids)
    image_counts = {status: 0 for status in IMAGE_STATUSES}
    for image in images:
        image_counts[image["status"]] = image_counts.get(image["status"], 0) + 1
    return {
        # Image generation (imageGeneration:generateShotImages) moves these as each variant is made.
        "totalImages": len(images),
        "imagesPending": image_counts["pending"],
        "imagesProcessing": image_counts["processing"],
        "imagesComplete": image_counts["complete"],
        "imagesFailed": image_counts["failed"],
        "imageProgress": round_percent(image_counts["complete"] + image_counts["failed"], len(images)),
        "totalScenes": len(scenes),
        "totalShots": total,
        "shotsWithSelections": len(selected),
        "shotsWithAnimations": len(animated),
        "selectionProgress": round_percent(len(selected), total),
        "animationProgress": round_percent(len(animated), total),
        "isSelectionComplete": total > 0 and len(selected) == total,
        "isAnimationComplete": total > 0 and len(animated) == total,
    }
