"""projectRedesign:* (seed 004) on a live server: the hierarchy, its checks, ownership, progress, the storyboard.
Deletes and their cascades are in test_project_redesign_deletes.py."""

from __future__ import annotations

from typing import Any

import pytest

from server import ConvexError
from server.errors import ArgumentError, AuthRequired, IdError
from server.testing import RippleApp
from tests.support.redesign import P, Project, image_inputs, table_counts


async def test_project_built_step_by_step_reports_progress(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create(userId="alice", promptPlannerData="brain dump")
    project = await p.call("getProject", {"projectId": p.id})
    assert project["userId"].endswith("|alice") and project["title"] == "Tokyo dreams"
    assert (project["workflowVersion"], project["redesignStatus"], project["promptPlannerData"]) == (
        "v2_redesign",
        "prompt_planning",
        "brain dump",
    )
    empty = {
        "totalImages": 0,
        "imagesPending": 0,
        "imagesProcessing": 0,
        "imagesComplete": 0,
        "imagesFailed": 0,
        "imageProgress": 0,
        "totalScenes": 0,
        "totalShots": 0,
        "shotsWithSelections": 0,
        "shotsWithAnimations": 0,
        "selectionProgress": 0,
        "animationProgress": 0,
        "isSelectionComplete": False,
        "isAnimationComplete": False,
    }
    assert await p.progress() == empty

    s1, (shot1, shot2) = await p.scene(1, 2)
    s2 = await p.call(
        "createProjectScene", {"projectId": p.id, "sceneNumber": 0, "title": "Prologue", "description": "before"}
    )
    shot3 = await p.call("createSceneShot", {"projectId": p.id, "sceneId": s2, "shotNumber": 1, "description": "wide"})
    assert [s["_id"] for s in await p.call("getProjectScenes", {"projectId": p.id})] == [s2, s1]  # by sceneNumber
    assert [s["_id"] for s in await p.call("getSceneShots", {"sceneId": s1})] == [shot1, shot2]
    assert (await p.progress())["totalScenes"] == 2 and (await p.progress())["totalShots"] == 3
    assert await p.call("getSceneStoryboardComplete", {"sceneId": s1}) is False

    # Iterations on shot 1: 0 (six variants) then 1 from a favourite of 0.
    assert await p.call("getLatestIterationNumber", {"shotId": shot1}) == -1
    it0 = await p.images(s1, shot1, 0)
    assert await p.call("getLatestIterationNumber", {"shotId": shot1}) == 0
    assert await p.call("toggleFavorite", {"imageId": it0[2]}) is True
    it1 = await p.images(s1, shot1, 1, n=3, parent=it0[2])
    assert await p.call("getLatestIterationNumber", {"shotId": shot1}) == 1
    only1 = await p.call("getShotImages", {"shotId": shot1, "iterationNumber": 1})
    assert [i["_id"] for i in only1] == it1 and all(i["status"] == "complete" for i in only1)
    assert len(await p.call("getShotImages", {"shotId": shot1})) == 9
    grouped = await p.call("getGroupedShotImages", {"shotId": shot1})
    assert [g["iterationNumber"] for g in grouped] == [0, 1]
    assert [i["variantNumber"] for i in grouped[0]["images"]] == [0, 1, 2, 3, 4, 5]
    assert grouped[0]["prompt"] == "iteration 0" and grouped[0]["parentImage"] is None
    assert grouped[1]["parentImage"]["_id"] == it0[2] and grouped[1]["parentImage"]["isFavorite"] is True

    # Selections: one shot at a time.
    sel1 = await p.call(
        "selectMasterShot", {"projectId": p.id, "sceneId": s1, "shotId": shot1, "selectedImageId": it1[0]}
    )
    assert (await p.call("getSceneShots", {"sceneId": s1}))[0]["selectedImageId"] == it1[0]
    progress = await p.progress()
    assert (progress["shotsWithSelections"], progress["selectionProgress"]) == (1, 33.3)
    it2 = await p.images(s1, shot2, 0, n=2)
    sel2 = await p.call(
        "createStoryboardSelection",
        {"projectId": p.id, "sceneId": s1, "shotId": shot2, "selectedImageId": it2[1], "animationStatus": "pending"},
    )
    assert (await p.progress())["selectionProgress"] == 66.7
    assert await p.call("getSceneStoryboardComplete", {"sceneId": s1}) is True
    assert await p.call("getSceneStoryboardComplete", {"sceneId": s2}) is False
    it3 = await p.images(s2, shot3, 0, n=1)
    sel3 = await p.call(
        "selectMasterShot", {"projectId": p.id, "sceneId": s2, "shotId": shot3, "selectedImageId": it3[0]}
    )
    progress = await p.progress()
    assert progress["selectionProgress"] == 100 and progress["isSelectionComplete"] is True
    assert progress["animationProgress"] == 0 and progress["isAnimationComplete"] is False
    assert len(await p.call("getStoryboardSelections", {"projectId": p.id})) == 3

    # Animations complete one by one.
    await p.call(
        "updateStoryboardAnimation", {"selectionId": sel1, "animationStatus": "processing", "replicateVideoId": "r1"}
    )
    assert (await p.progress())["shotsWithAnimations"] == 0
    await p.call(
        "updateStoryboardAnimation",
        {"selectionId": sel1, "animationStatus": "complete", "animatedVideoUrl": "https://v/1.mp4"},
    )
    assert (await p.progress())["animationProgress"] == 33.3
    await p.call("updateStoryboardAnimation", {"selectionId": sel2, "animatedVideoUrl": "https://v/2.mp4"})
    await p.call("updateStoryboardAnimation", {"selectionId": sel2, "animationStatus": "complete"})  # URL stored before
    await p.call(
        "updateStoryboardAnimation",
        {"selectionId": sel3, "animationStatus": "complete", "animatedVideoUrl": "https://v/3.mp4"},
    )
    assert await p.progress() == {
        "totalImages": 12,  # 6 + 3 on shot 1, 2 on shot 2, 1 on shot 3, all made complete
        "imagesPending": 0,
        "imagesProcessing": 0,
        "imagesComplete": 12,
        "imagesFailed": 0,
        "imageProgress": 100,
        "totalScenes": 2,
        "totalShots": 3,
        "shotsWithSelections": 3,
        "shotsWithAnimations": 3,
        "selectionProgress": 100,
        "animationProgress": 100,
        "isSelectionComplete": True,
        "isAnimationComplete": True,
    }

    # Re-selecting the same image keeps the animation; another image resets it.
    assert (
        await p.call("selectMasterShot", {"projectId": p.id, "sceneId": s1, "shotId": shot1, "selectedImageId": it1[0]})
        == sel1
    )
    assert (await p.progress())["shotsWithAnimations"] == 3
    assert (
        await p.call("selectMasterShot", {"projectId": p.id, "sceneId": s1, "shotId": shot1, "selectedImageId": it0[5]})
        == sel1
    )
    selections = {s["_id"]: s for s in await p.call("getStoryboardSelections", {"projectId": p.id})}
    assert selections[sel1]["selectedImageId"] == it0[5] and "animationStatus" not in selections[sel1]
    assert "animatedVideoUrl" not in selections[sel1]
    progress = await p.progress()
    assert (progress["animationProgress"], progress["isAnimationComplete"]) == (66.7, False)
    # updateSceneShot(selectedImageId) keeps the shot and its selection on the same image.
    await p.call("updateSceneShot", {"shotId": shot2, "selectedImageId": it2[0], "description": "closer"})
    shot = (await p.call("getSceneShots", {"sceneId": s1}))[1]
    assert (shot["selectedImageId"], shot["description"]) == (it2[0], "closer")
    assert {s["_id"]: s for s in await p.call("getStoryboardSelections", {"projectId": p.id})}[sel2][
        "selectedImageId"
    ] == it2[0]

    # A fourth shot brings the percentages down: 2 of 4 selected... with rounding to one decimal.
    await p.call("createSceneShot", {"projectId": p.id, "sceneId": s2, "shotNumber": 2, "description": "d"})
    progress = await p.progress()
    assert (progress["totalShots"], progress["selectionProgress"], progress["animationProgress"]) == (4, 75, 25)

    # Updates of scenes, shots, images.
    await p.call("updateProjectScene", {"sceneId": s2, "sceneNumber": 3, "title": "Epilogue"})
    scenes = await p.call("getProjectScenes", {"projectId": p.id})
    assert [(s["_id"], s["title"]) for s in scenes] == [(s1, "Scene 1"), (s2, "Epilogue")]
    await p.call("updateSceneShot", {"shotId": shot1, "shotNumber": 9, "initialPrompt": "new"})
    assert [s["_id"] for s in await p.call("getSceneShots", {"sceneId": s1})] == [shot2, shot1]
    await p.call(
        "updateShotImage",
        {"imageId": it0[0], "status": "failed", "metadata": {"cfg": 7}, "isFavorite": True, "imageStorageId": "st1"},
    )
    img = (await p.call("getShotImages", {"shotId": shot1, "iterationNumber": 0}))[0]
    assert (img["status"], img["metadata"], img["isFavorite"], img["imageStorageId"]) == (
        "failed",
        {"cfg": 7},
        True,
        "st1",
    )
    assert await p.call("toggleFavorite", {"imageId": it0[0]}) is False
    one = await p.call(
        "createShotImage",
        {
            "projectId": p.id,
            "sceneId": s1,
            "shotId": shot1,
            "iterationNumber": 2,
            "variantNumber": 0,
            "imageUrl": "u",
            "iterationPrompt": "p2",
            "status": "pending",
            "parentImageId": it1[1],
        },
    )
    assert await p.call("getLatestIterationNumber", {"shotId": shot1}) == 2
    assert (await p.call("getShotImages", {"shotId": shot1, "iterationNumber": 2}))[0]["_id"] == one
    await p.call("updatePromptPlanner", {"projectId": p.id, "promptPlannerData": "v2"})
    assert (await p.call("getProject", {"projectId": p.id}))["promptPlannerData"] == "v2"
    assert (await table_counts(ripple_app))["orphans"] == 0


async def test_redesign_status_moves_one_step_at_a_time(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create()

    async def status() -> str:
        return str((await p.call("getProject", {"projectId": p.id}))["redesignStatus"])

    async def move(to: str) -> None:
        await p.call("updateRedesignStatus", {"projectId": p.id, "status": to})

    with pytest.raises(
        ConvexError, match='from "prompt_planning" to "shot_iteration".*allowed now: "prompt_planning", "scenes_setup"'
    ) as exc:
        await move("shot_iteration")
    assert exc.value.data["code"] == "INVALID_TRANSITION" and exc.value.data["current"] == "prompt_planning"
    for stage in ("scenes_setup", "shot_iteration", "storyboard_final", "animation_complete"):
        await move(stage)
        assert await status() == stage
    await move("animation_complete")  # staying is allowed
    await move("storyboard_final")  # one step back, to revise
    assert await status() == "storyboard_final"
    for skip in ("scenes_setup", "prompt_planning"):
        with pytest.raises(ConvexError, match="one at a time"):
            await move(skip)
    assert await status() == "storyboard_final"
    await move("shot_iteration")  # one more step back
    with pytest.raises(ConvexError, match='allowed now: "scenes_setup", "shot_iteration", "storyboard_final"'):
        await move("animation_complete")
    with pytest.raises(ArgumentError, match=r'"status" must be one of "prompt_planning", .*"animation_complete"'):
        await move("asset_upload")
    assert await status() == "shot_iteration"


async def test_every_write_is_validated(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create(title="T")
    s1, (shot1, shot2) = await p.scene(1, 2)
    s2, (shot3,) = await p.scene(2, 1)
    other = await Project(ripple_app, "alice").create()
    o_scene, (o_shot,) = await other.scene(1, 1)
    it0 = await p.images(s1, shot1, 0, n=2)
    it_shot2 = await p.images(s1, shot2, 0, n=1)
    ids = {"projectId": p.id, "sceneId": s1, "shotId": shot1}
    batch = {**ids, "iterationNumber": 1, "iterationPrompt": "p"}

    async def refused(name: str, args: dict[str, Any], match: str, error: type[Exception] = ArgumentError) -> None:
        with pytest.raises(error, match=match):
            await p.call(name, args)

    # Numbers and statuses.
    for bad in (6, -1, 1.5):
        await refused(
            "batchCreateShotImages",
            {**batch, "images": [{"variantNumber": bad, "imageUrl": "u"}]},
            r'"images.0.variantNumber" must be a whole number from 0 to 5',
        )
        await refused(
            "createShotImage",
            {**ids, "iterationNumber": 1, "variantNumber": bad, "imageUrl": "u", "iterationPrompt": "p"},
            r'"variantNumber" must be a whole number from 0 to 5',
        )
    await refused(
        "batchCreateShotImages",
        {**batch, "iterationNumber": -1, "images": image_inputs(1)},
        '"iterationNumber" must be a whole number >= 0',
    )
    await refused(
        "batchCreateShotImages", {**batch, "images": image_inputs(1) + image_inputs(1)}, "variantNumber 0 appears twice"
    )
    await refused(
        "batchCreateShotImages", {**batch, "images": image_inputs(7)}, r'"images" must hold 1 to 6 variants; got 7'
    )
    await refused("batchCreateShotImages", {**batch, "images": []}, "got 0")
    await refused(
        "batchCreateShotImages",
        {**batch, "images": image_inputs(1, status="done")},
        r'"images.0.status" must be one of "pending", "processing", "complete", "failed"',
    )
    await refused(
        "batchCreateShotImages",
        {**batch, "images": [{"variantNumber": 0, "imageUrl": "u", "x": 1}]},
        'unexpected argument "images.0.x"',
    )
    await refused(
        "batchCreateShotImages",
        {**batch, "iterationNumber": 0, "images": image_inputs(1, start=1)},
        "already has variant 1 of iteration 0",
        ConvexError,
    )
    await refused("updateShotImage", {"imageId": it0[0], "status": "done"}, '"status" must be one of "pending"')
    await refused(
        "createProjectScene",
        {"projectId": p.id, "sceneNumber": -2, "title": "t", "description": ""},
        '"sceneNumber" must be a number >= 0',
    )
    await refused(
        "createProjectScene",
        {"projectId": p.id, "sceneNumber": 1, "title": "", "description": ""},
        '"title" must be a non-empty string',
    )
    await refused(
        "createSceneWithShots",
        {
            "projectId": p.id,
            "sceneNumber": 3,
            "title": "t",
            "description": "",
            "shots": [{"shotNumber": 1, "description": ""}, {"shotNumber": -1, "description": ""}],
        },
        '"shots.1.shotNumber" must be a number >= 0',
    )
    await refused("updateSceneShot", {"shotId": shot1, "shotNumber": -1}, '"shotNumber" must be a number >= 0')
    await refused("updateProjectScene", {"sceneId": s1, "sceneNumber": -1}, '"sceneNumber" must be a number >= 0')
    await refused(
        "createStoryboardSelection",
        {**ids, "selectedImageId": it0[0], "animationStatus": "queued"},
        '"animationStatus" must be one of "pending", "processing", "complete", "failed"',
    )
    sel = await p.call("selectMasterShot", {**ids, "selectedImageId": it0[0]})
    await refused(
        "updateStoryboardAnimation",
        {"selectionId": sel, "animationStatus": "rendering"},
        '"animationStatus" must be one of',
    )
    await refused(
        "updateStoryboardAnimation",
        {"selectionId": sel, "animationStatus": "complete"},
        'animationStatus "complete" needs animatedVideoUrl',
    )
    await refused(
        "createStoryboardSelection",
        {**ids, "selectedImageId": it0[1]},
        "already has a storyboard selection",
        ConvexError,
    )
    await refused("getShotImages", {"shotId": shot1, "iterationNumber": 0.5}, '"iterationNumber" must be a whole')
    await refused("createRedesignProject", {"prompt": "p", "userId": "bob"}, '"userId" must be the signed-in caller')
    await refused("initializeProject", {"prompt": "p"}, 'missing required argument "promptPlannerData"')
    await refused("createRedesignProject", {"prompt": " "}, '"prompt" must be a non-empty string')

    # Ids must belong to the given parents.
    await refused(
        "createSceneShot",
        {"projectId": p.id, "sceneId": o_scene, "shotNumber": 1, "description": ""},
        f'scene "{o_scene}" does not belong to project "{p.id}"',
    )
    await refused(
        "batchCreateShotImages",
        {**batch, "sceneId": s2, "images": image_inputs(1)},
        f'shot "{shot1}" does not belong to scene "{s2}"',
    )
    await refused(
        "batchCreateShotImages",
        {**batch, "projectId": other.id, "images": image_inputs(1)},
        f'does not belong to project "{other.id}"',
    )
    await refused(
        "batchCreateShotImages",
        {**batch, "parentImageId": it_shot2[0], "images": image_inputs(1)},
        f'"parentImageId" must be an image of shot "{shot1}"',
    )
    await refused(
        "selectMasterShot",
        {**ids, "selectedImageId": it_shot2[0]},
        f'"selectedImageId" must be an image of shot "{shot1}"',
    )
    await refused(
        "selectMasterShot",
        {"projectId": p.id, "sceneId": s2, "shotId": shot3, "selectedImageId": it0[0]},
        '"selectedImageId" must be an image of shot',
    )
    await refused("updateSceneShot", {"shotId": shot2, "selectedImageId": it0[0]}, '"selectedImageId" must be an image')
    await refused(
        "createStoryboardSelection",
        {"projectId": other.id, "sceneId": o_scene, "shotId": shot1, "selectedImageId": it0[0]},
        "does not belong to",
    )
    await refused("getProject", {"projectId": s1}, r'must be Id\("videoProjects"\), got an id of table', IdError)
    assert (await table_counts(ripple_app))["orphans"] == 0
    assert o_shot


async def test_only_the_owner_reads_or_writes_a_project(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create()
    scene, (shot,) = await p.scene(1, 1)
    (img,) = await p.images(scene, shot, 0, n=1)
    sel = await p.call(
        "selectMasterShot", {"projectId": p.id, "sceneId": scene, "shotId": shot, "selectedImageId": img}
    )
    before = await table_counts(ripple_app)

    reads = {
        "getProject": ({"projectId": p.id}, None),
        "getProjectScenes": ({"projectId": p.id}, []),
        "getSceneShots": ({"sceneId": scene}, []),
        "getShotImages": ({"shotId": shot}, []),
        "getLatestIterationNumber": ({"shotId": shot}, -1),
        "getGroupedShotImages": ({"shotId": shot}, []),
        "getStoryboardSelections": ({"projectId": p.id}, []),
        "getStoryboard": ({"projectId": p.id}, []),
        "getSceneStoryboardComplete": ({"sceneId": scene}, None),
        "getProjectProgress": ({"projectId": p.id}, None),
    }
    for name, (args, absent) in reads.items():
        assert await p.call(name, args, user="bob") == absent, name
        assert await p.call(name, args) != absent, name
        with pytest.raises(AuthRequired):
            await p.call(name, args, user=None)

    ids = {"projectId": p.id, "sceneId": scene, "shotId": shot}
    writes = {
        "updatePromptPlanner": {"projectId": p.id, "promptPlannerData": "x"},
        "updateRedesignStatus": {"projectId": p.id, "status": "scenes_setup"},
        "createProjectScene": {"projectId": p.id, "sceneNumber": 2, "title": "t", "description": ""},
        "createSceneWithShots": {"projectId": p.id, "sceneNumber": 2, "title": "t", "description": "", "shots": []},
        "updateProjectScene": {"sceneId": scene, "title": "x"},
        "createSceneShot": {"projectId": p.id, "sceneId": scene, "shotNumber": 2, "description": ""},
        "updateSceneShot": {"shotId": shot, "description": "x"},
        "createShotImage": {**ids, "iterationNumber": 1, "variantNumber": 0, "imageUrl": "u", "iterationPrompt": "p"},
        "batchCreateShotImages": {**ids, "iterationNumber": 1, "iterationPrompt": "p", "images": image_inputs(1)},
        "updateShotImage": {"imageId": img, "status": "failed"},
        "toggleFavorite": {"imageId": img},
        "createStoryboardSelection": {**ids, "selectedImageId": img},
        "selectMasterShot": {**ids, "selectedImageId": img},
        "updateStoryboardAnimation": {"selectionId": sel, "animationStatus": "processing"},
        "deleteShotImage": {"imageId": img},
        "deleteSceneShot": {"shotId": shot},
        "deleteProjectScene": {"sceneId": scene},
        "deleteRedesignProject": {"projectId": p.id},
    }
    for name, args in writes.items():
        with pytest.raises(ConvexError, match="not found") as exc:
            await p.call(name, args, user="bob")
        assert exc.value.data["code"] == "NOT_FOUND", name
        with pytest.raises(AuthRequired):
            await p.call(name, args, user=None)
    assert await table_counts(ripple_app) == before
    project = await p.call("getProject", {"projectId": p.id})
    assert project["redesignStatus"] == "prompt_planning" and "promptPlannerData" not in project

    # Over HTTP with bob's token, too.
    bob = ripple_app.as_user("bob")
    response = await bob.http("mutation", P + "deleteRedesignProject", {"projectId": p.id})
    body = response.json()
    assert body["status"] == "error" and body["errorData"]["code"] == "NOT_FOUND"
    response = await bob.http("query", P + "getProject", {"projectId": p.id})
    body = response.json()
    assert (body["status"], body["value"]) == ("success", None)
    assert await table_counts(ripple_app) == before


async def test_storyboard_names_scenes_and_shots_by_number_in_order(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create()
    s2, (s2_shot1,) = await p.scene(2, 1)  # made first, listed second
    s1, (s1_shot1, s1_shot2) = await p.scene(1, 2)
    images = await p.images(s1, s1_shot2, 0, n=3)
    selection = await p.call(
        "selectMasterShot", {"projectId": p.id, "sceneId": s1, "shotId": s1_shot2, "selectedImageId": images[2]}
    )
    rows = await p.call("getStoryboard", {"projectId": p.id})
    assert [(r["sceneNumber"], r["shotNumber"], r["shotId"]) for r in rows] == [
        (1, 1, s1_shot1),
        (1, 2, s1_shot2),
        (2, 1, s2_shot1),
    ]
    assert rows[0]["sceneTitle"] == "Scene 1" and rows[0]["description"] == "shot 1"
    assert rows[0]["selection"] is None and rows[0]["selectedImage"] is None
    assert rows[1]["selection"]["_id"] == selection
    assert rows[1]["selectedImage"] == {
        "_id": images[2],
        "iterationNumber": 0,
        "variantNumber": 2,
        "imageUrl": "https://img/2.png",
    }
    assert rows[2]["sceneId"] == s2
