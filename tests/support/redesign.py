"""Building seed 004 projects in tests through the public functions (`projectRedesign:*`), and counting what the
hierarchy holds, orphans included: shared by the module's tests and its deletion tests."""

from __future__ import annotations

from typing import Any

import asyncpg

from server.testing import RippleApp

__all__ = ["P", "Project", "image_inputs", "table_counts"]

P = "projectRedesign:"

# Rows that point at something missing, over every reference in the hierarchy.
ORPHANS_SQL = """
SELECT
  (SELECT count(*) FROM project_scenes c WHERE NOT EXISTS (SELECT 1 FROM video_projects p WHERE p._id = c.project_id))
+ (SELECT count(*) FROM scene_shots t
    WHERE NOT EXISTS (SELECT 1 FROM video_projects p WHERE p._id = t.project_id)
       OR NOT EXISTS (SELECT 1 FROM project_scenes c WHERE c._id = t.scene_id)
       OR (t.selected_image_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM shot_images i WHERE i._id = t.selected_image_id)))
+ (SELECT count(*) FROM shot_images i
    WHERE NOT EXISTS (SELECT 1 FROM video_projects p WHERE p._id = i.project_id)
       OR NOT EXISTS (SELECT 1 FROM project_scenes c WHERE c._id = i.scene_id)
       OR NOT EXISTS (SELECT 1 FROM scene_shots t WHERE t._id = i.shot_id)
       OR (i.parent_image_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM shot_images j WHERE j._id = i.parent_image_id)))
+ (SELECT count(*) FROM storyboard_selections s
    WHERE NOT EXISTS (SELECT 1 FROM video_projects p WHERE p._id = s.project_id)
       OR NOT EXISTS (SELECT 1 FROM project_scenes c WHERE c._id = s.scene_id)
       OR NOT EXISTS (SELECT 1 FROM scene_shots t WHERE t._id = s.shot_id)
       OR NOT EXISTS (SELECT 1 FROM shot_images i WHERE i._id = s.selected_image_id))
"""
TABLES = ("video_projects", "project_scenes", "scene_shots", "shot_images", "storyboard_selections")


async def table_counts(ripple_app: RippleApp) -> dict[str, int]:
    conn = await asyncpg.connect(ripple_app.database_url)
    try:
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
        counts["orphans"] = await conn.fetchval(ORPHANS_SQL)
        return counts
    finally:
        await conn.close()


def image_inputs(n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    return [{"variantNumber": v, "imageUrl": f"https://img/{v}.png", **extra} for v in range(start, start + n)]


class Project:
    """Builds one user's project through the public functions."""

    def __init__(self, ripple_app: RippleApp, user: str) -> None:
        self.ripple_app = ripple_app
        self.user = user
        self.id = ""

    async def call(self, name: str, args: dict[str, Any], user: str | None = "") -> Any:
        """Call `name` as the project's owner, as `user`, or signed out (None). The module names its queries
        get*: a name called as the wrong kind fails loudly ("... is a query, not a mutation")."""
        subject = self.user if user == "" else user
        client = self.ripple_app.as_user(subject) if subject is not None else self.ripple_app.anonymous()
        call = client.query if name.startswith("get") else client.mutation
        return await call(P + name, args)

    async def create(self, **args: Any) -> Project:
        self.id = await self.call("createRedesignProject", {"prompt": "Tokyo dreams", **args})
        return self

    async def scene(self, number: int, shots: int) -> tuple[str, list[str]]:
        made = await self.call(
            "createSceneWithShots",
            {
                "projectId": self.id,
                "sceneNumber": number,
                "title": f"Scene {number}",
                "description": "d",
                "shots": [
                    {"shotNumber": i + 1, "description": f"shot {i + 1}", "initialPrompt": "p"} for i in range(shots)
                ],
            },
        )
        return made["sceneId"], made["shotIds"]

    async def images(self, scene: str, shot: str, iteration: int, n: int = 6, parent: str | None = None) -> list[str]:
        args = {
            "projectId": self.id,
            "sceneId": scene,
            "shotId": shot,
            "iterationNumber": iteration,
            "iterationPrompt": f"iteration {iteration}",
            "images": image_inputs(n),
        }
        if parent:
            args["parentImageId"] = parent
        return await self.call("batchCreateShotImages", args)

    async def progress(self) -> dict[str, Any]:
        return await self.call("getProjectProgress", {"projectId": self.id})
