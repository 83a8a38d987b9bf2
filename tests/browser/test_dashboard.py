"""The live dashboard in a real headless Chromium: a worker reports progress and the page shows it move."""

from __future__ import annotations

from playwright.async_api import expect

from tests.support.browser import artifact, chromium_page
from tests.support.server import RippleServer


async def test_dashboard_shows_job_progress_project_and_chain_live(ripple: RippleServer) -> None:
    await ripple.call("videos:create", {"twitchId": "live1", "title": "Friday stream"}, user="alice")

    async def report(pct: float, stage: str, eta: float) -> None:
        await ripple.call(
            "videos:updateJobProgress",
            {
                "twitchId": "live1",
                "jobId": "job-live1",
                "progressPercentage": pct,
                "currentStage": stage,
                "estimatedCompletionSeconds": eta,
            },
            admin=True,
        )

    project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
    made = await ripple.call(
        "projectRedesign:createSceneWithShots",
        {
            "projectId": project,
            "sceneNumber": 1,
            "title": "Opening",
            "description": "Dawn",
            "shots": [{"shotNumber": n, "description": f"shot {n}", "initialPrompt": "p"} for n in (1, 2)],
        },
        user="alice",
    )
    parent = await ripple.call(
        "generations:store",
        {
            "userId": f"{ripple.settings.jwt_issuer}|alice",
            "prompt": "a ball",
            "code": "ball();",
            "rawCode": "ball();",
        },
        internal=True,
    )

    token = ripple.token("alice")
    async with chromium_page() as page:
        await page.goto(f"{ripple.url}/?token={token}&project={project}&generation={parent}")
        await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "connected")
        await expect(page.get_by_test_id("job-live1")).to_be_visible()
        await expect(page.get_by_test_id("progress-live1")).to_have_text("0%")

        await report(10, "Downloading", 125)
        await expect(page.get_by_test_id("progress-live1")).to_have_text("10%")
        await expect(page.get_by_test_id("stage-live1")).to_contain_text("Downloading")
        await expect(page.get_by_test_id("eta-live1")).to_have_text("2m 05s")
        await report(64, "Analyzing", 40)
        await expect(page.get_by_test_id("progress-live1")).to_have_text("64%")
        await expect(page.get_by_test_id("stage-live1")).to_contain_text("Analyzing")

        # The project panel: selecting a master shot moves the selection percentage.
        await expect(page.get_by_test_id("selection-progress")).to_have_text("0%")
        scene, shot = made["sceneId"], made["shotIds"][0]
        images = await ripple.call(
            "projectRedesign:batchCreateShotImages",
            {
                "projectId": project,
                "sceneId": scene,
                "shotId": shot,
                "iterationNumber": 0,
                "iterationPrompt": "p",
                "images": [{"variantNumber": 0, "imageUrl": "https://i/0.png"}],
            },
            user="alice",
        )
        await ripple.call(
            "projectRedesign:selectMasterShot",
            {"projectId": project, "sceneId": scene, "shotId": shot, "selectedImageId": images[0]},
            user="alice",
        )
        await expect(page.get_by_test_id("selection-progress")).to_have_text("50%")

        # The refinement chain panel shows the stored generation.
        await expect(page.get_by_test_id("chain-item-0")).to_be_visible()
        await expect(page.get_by_test_id("chain-code-0")).to_contain_text("ball();")

        await page.wait_for_timeout(600)  # let the progress bars finish their CSS transition
        await page.screenshot(path=artifact("dashboard.png"), full_page=True)
        assert page.console_errors == []
