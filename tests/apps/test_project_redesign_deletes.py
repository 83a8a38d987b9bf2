"""projectRedesign:* (seed 004) deletes: every cascade leaves no orphan, and takes the images' stored files with it
(after the commit, so a failed delete keeps them)."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from server import ConvexError
from server.testing import RippleApp
from tests.support.redesign import Project, table_counts


async def test_deletes_cascade_without_orphans(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create()
    keep = await Project(ripple_app, "alice").create()  # untouched by every delete below
    k_scene, (k_shot,) = await keep.scene(1, 1)
    k_imgs = await keep.images(k_scene, k_shot, 0, n=2)
    await keep.call(
        "selectMasterShot", {"projectId": keep.id, "sceneId": k_scene, "shotId": k_shot, "selectedImageId": k_imgs[0]}
    )

    s1, (a, b) = await p.scene(1, 2)
    s2, (c,) = await p.scene(2, 1)
    a0 = await p.images(s1, a, 0)
    a1 = await p.images(s1, a, 1, n=3, parent=a0[0])
    b0 = await p.images(s1, b, 0, n=2)
    c0 = await p.images(s2, c, 0, n=4)
    for scene, shot, image in ((s1, a, a0[0]), (s1, b, b0[0]), (s2, c, c0[0])):
        await p.call(
            "selectMasterShot", {"projectId": p.id, "sceneId": scene, "shotId": shot, "selectedImageId": image}
        )
    counts = await table_counts(ripple_app)
    assert counts == {
        "video_projects": 2,
        "project_scenes": 3,
        "scene_shots": 4,
        "shot_images": 17,
        "storyboard_selections": 4,
        "orphans": 0,
    }

    # An image that was selected and is a parent: its selection goes, references to it are cleared.
    await p.call("deleteShotImage", {"imageId": a0[0]})
    counts = await table_counts(ripple_app)
    assert (counts["shot_images"], counts["storyboard_selections"], counts["orphans"]) == (16, 3, 0)
    shot_a = (await p.call("getSceneShots", {"sceneId": s1}))[0]
    assert "selectedImageId" not in shot_a
    assert all("parentImageId" not in i for i in await p.call("getShotImages", {"shotId": a, "iterationNumber": 1}))
    assert (await p.progress())["shotsWithSelections"] == 2
    # An unselected image: only itself.
    await p.call("deleteShotImage", {"imageId": a1[2]})
    assert (await table_counts(ripple_app))["shot_images"] == 15

    await p.call("deleteSceneShot", {"shotId": b})  # 2 images, 1 selection
    counts = await table_counts(ripple_app)
    assert (counts["scene_shots"], counts["shot_images"], counts["storyboard_selections"], counts["orphans"]) == (
        3,
        13,
        2,
        0,
    )

    await p.call("deleteProjectScene", {"sceneId": s2})  # shot c, 4 images, 1 selection
    counts = await table_counts(ripple_app)
    assert counts == {
        "video_projects": 2,
        "project_scenes": 2,
        "scene_shots": 2,
        "shot_images": 9,
        "storyboard_selections": 1,
        "orphans": 0,
    }
    assert [s["_id"] for s in await p.call("getProjectScenes", {"projectId": p.id})] == [s1]

    await p.call("deleteRedesignProject", {"projectId": p.id})
    assert await table_counts(ripple_app) == {
        "video_projects": 1,
        "project_scenes": 1,
        "scene_shots": 1,
        "shot_images": 2,
        "storyboard_selections": 1,
        "orphans": 0,
    }
    assert await p.call("getProject", {"projectId": p.id}) is None
    assert await p.progress() is None
    with pytest.raises(ConvexError, match="not found"):
        await p.call("deleteRedesignProject", {"projectId": p.id})
    assert (await keep.progress())["isSelectionComplete"] is True


async def _stored(ripple_app: RippleApp, data: bytes) -> str:
    """A stored file, as an upload (or the image generation's download) makes one."""
    return await ripple_app.store_file(data, "image/png")


async def _served(ripple_app: RippleApp, storage_ids: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=ripple_app.url) as http:
        return [(await http.get(f"/api/storage/{storage_id}")).status_code for storage_id in storage_ids]


async def _fileimage_inputs(p: Project, scene: str, shot: str, files: list[str | None]) -> list[str]:
    images = [
        {"variantNumber": v, "imageUrl": f"https://img/{v}.png", **({"imageStorageId": f} if f else {})}
        for v, f in enumerate(files)
    ]
    args = {"projectId": p.id, "sceneId": scene, "shotId": shot, "iterationNumber": 0, "iterationPrompt": "p"}
    return await p.call("batchCreateShotImages", {**args, "images": images})


async def test_deletes_take_the_images_files_with_them(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create()
    scene, (shot1, shot2) = await p.scene(1, 2)
    other_scene, (shot3,) = await p.scene(2, 1)
    files = [await _stored(ripple_app, f"image {i}".encode()) for i in range(6)]
    # Two images of shot 1 name the same upload; one names something that is no file (any string is accepted).
    img = await _fileimage_inputs(p, scene, shot1, [files[0], files[1], files[1], "not-a-file"])
    await _fileimage_inputs(p, scene, shot2, [files[2]])
    await _fileimage_inputs(p, other_scene, shot3, [files[3], files[4], None])
    assert await _served(ripple_app, files) == [200] * 6

    await p.call("deleteShotImage", {"imageId": img[0]})
    assert await _served(ripple_app, files) == [404] + [200] * 5
    await p.call("deleteShotImage", {"imageId": img[1]})  # its file is still the other image's
    assert await _served(ripple_app, files) == [404] + [200] * 5
    await p.call("deleteShotImage", {"imageId": img[3]})
    await p.call("deleteSceneShot", {"shotId": shot1})
    assert await _served(ripple_app, files) == [404, 404] + [200] * 4
    await p.call("deleteProjectScene", {"sceneId": scene})
    assert await _served(ripple_app, files) == [404, 404, 404] + [200] * 3
    await p.call("deleteRedesignProject", {"projectId": p.id})
    assert await _served(ripple_app, files) == [404] * 5 + [200]  # the last file was no image's
    conn = await asyncpg.connect(ripple_app.database_url)
    try:
        assert await conn.fetchval("SELECT array_agg(_id) FROM _storage") == [files[5]]
    finally:
        await conn.close()


@pytest.mark.parametrize("ripple_settings", [{"max_documents_written": 6}])
async def test_a_failed_delete_deletes_no_file(ripple_app: RippleApp) -> None:
    p = await Project(ripple_app, "alice").create()
    scene, (shot,) = await p.scene(1, 1)
    files = [await _stored(ripple_app, f"image {i}".encode()) for i in range(3)]
    await _fileimage_inputs(p, scene, shot, list(files))
    before = await table_counts(ripple_app)
    # Three images and their three files are deleted, then the shot is one write too many: the mutation fails.
    with pytest.raises(Exception, match="wrote more than 6 documents"):
        await p.call("deleteRedesignProject", {"projectId": p.id})
    assert await _served(ripple_app, files) == [200] * 3
    assert await table_counts(ripple_app) == before
