"""The live dashboard in a real headless Chromium: a worker reports progress and the page shows it move."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from playwright.async_api import expect

import tests.support.testing_app  # noqa: F401  (registers testing:uploadUrl, to store a file)
from tests.support.browser import artifact, chromium_page
from tests.support.images import png
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

        # The storyboard names shots by scene and shot number, never by id.
        row = page.get_by_test_id("shot-1-1")
        await expect(row).to_contain_text("Scene 1 · Shot 1")
        await expect(row).to_contain_text("selected: iteration 0, variant 0")
        await expect(page.get_by_test_id("shot-1-2")).to_contain_text("no image selected")
        storyboard = await page.get_by_test_id("storyboard-list").inner_text()
        for raw in (scene, shot, images[0], project):
            assert raw not in storyboard

        # The refinement chain panel shows the stored generation.
        await expect(page.get_by_test_id("chain-item-0")).to_be_visible()
        await expect(page.get_by_test_id("chain-code-0")).to_contain_text("ball();")

        await page.wait_for_timeout(600)  # let the progress bars finish their CSS transition
        await page.screenshot(path=artifact("dashboard.png"), full_page=True)
        assert await _low_contrast(page) == []
        assert page.console_errors == []


async def test_job_shows_updated_ago_and_is_marked_stalled_until_it_reports(ripple: RippleServer) -> None:
    await ripple.call("videos:create", {"twitchId": "slow1", "title": "Slow stream"}, user="alice")
    await ripple.call("videos:create", {"twitchId": "done1", "title": "Done stream"}, user="alice")
    await ripple.call("videos:completeJob", {"twitchId": "done1", "jobId": "job-done1"}, admin=True)

    async def report(pct: float) -> None:
        args = {"twitchId": "slow1", "jobId": "job-slow1", "progressPercentage": pct, "status": "Downloading"}
        await ripple.call("videos:updateJobProgress", args, admin=True)

    await report(5)
    async with chromium_page() as page:
        # Signed out: the jobs are public (the seed's videos queries need no identity) and the page says so.
        await page.goto(f"{ripple.url}/?stallAfter=3")
        await expect(page.get_by_test_id("jobs-public-note")).to_contain_text("Public")
        updated = page.get_by_test_id("updated-slow1")
        await expect(updated).to_have_text(re.compile(r"^updated (just now|[0-2]s ago)$"))
        await expect(page.get_by_test_id("stalled-slow1")).to_be_hidden()
        # No new data arrives, yet the age counts up every second and the job turns stalled past 3 s.
        await expect(updated).to_have_text(re.compile(r"^updated 2s ago$"), timeout=4000)
        await expect(page.get_by_test_id("stalled-slow1")).to_be_visible(timeout=4000)
        await expect(page.get_by_test_id("job-slow1")).to_have_attribute("data-stalled", "true")
        await expect(updated).to_contain_text("Stalled: no report for 3s, updated 4s ago")
        # A finished job is never stalled, however old.
        await expect(page.get_by_test_id("job-done1")).to_have_attribute("data-stalled", "false")
        await expect(page.get_by_test_id("stalled-done1")).to_be_hidden()
        await page.screenshot(path=artifact("dashboard-stalled.png"), full_page=True)
        assert await _low_contrast(page) == []

        # A report made elsewhere clears it, live.
        await report(40)
        await expect(page.get_by_test_id("progress-slow1")).to_have_text("40%")
        await expect(page.get_by_test_id("stalled-slow1")).to_be_hidden()
        await expect(page.get_by_test_id("job-slow1")).to_have_attribute("data-stalled", "false")
        await expect(updated).to_have_text(re.compile(r"^updated (just now|[0-2]s ago)$"))
        assert page.console_errors == []


async def test_phone_width_has_no_horizontal_scroll_and_stays_live(ripple: RippleServer) -> None:
    long_id = "a-very-long-twitch-video-identifier-without-any-spaces-" * 2
    await ripple.call("videos:create", {"twitchId": long_id, "title": "W" * 80}, user="alice")
    await ripple.call(
        "videos:updateJobError",
        {
            "twitchId": long_id,
            "jobId": "job-" + "x" * 60,
            "errorType": "network_error",
            "errorMessage": "connection-reset-by-peer-" * 5,
            "isRetryable": True,
        },
        admin=True,
    )
    project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
    await ripple.call(
        "projectRedesign:createSceneWithShots",
        {
            "projectId": project,
            "sceneNumber": 2,
            "title": "Night market " * 4,
            "description": "Neon",
            "shots": [{"shotNumber": n, "description": "lanterns " * 10, "initialPrompt": "p"} for n in (1, 2, 3)],
        },
        user="alice",
    )
    generation = await ripple.call(
        "generations:store",
        {
            "userId": f"{ripple.settings.jwt_issuer}|alice",
            "prompt": "a ball " * 30,
            "code": "ball(" + "1, " * 80 + ");",
            "rawCode": "ball();",
        },
        internal=True,
    )

    async with chromium_page(width=390, height=844) as page:
        await page.goto(f"{ripple.url}/?project={project}&generation={generation}")
        await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "connected")
        # Keyboard only: Tab to the token field, type, Enter signs in.
        for _ in range(10):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement?.id") == "token-input":
                break
        assert await page.evaluate("document.activeElement?.id") == "token-input"
        await page.keyboard.type(ripple.token("alice"))
        await page.keyboard.press("Enter")
        await expect(page.get_by_test_id("auth-status")).to_have_text("Signed in as alice")
        await expect(page.get_by_test_id("shot-2-3")).to_contain_text("Scene 2 · Shot 3")
        await expect(page.get_by_test_id("chain-code-0")).to_contain_text("ball(")
        await expect(page.get_by_test_id(f"error-{long_id}")).to_be_visible()

        await ripple.call("videos:create", {"twitchId": "phone1", "title": "Made elsewhere"}, user="bob")
        await expect(page.get_by_test_id("job-phone1")).to_be_visible()
        await page.wait_for_timeout(600)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, await _widest(page)
        await page.screenshot(path=artifact("dashboard-390.png"), full_page=True)
        assert await _low_contrast(page) == []
        assert page.console_errors == []


async def _widest(page: Any) -> Any:
    """What sticks out past the viewport, for the failure message."""
    return await page.evaluate(
        """() => [...document.querySelectorAll("body *")]
            .filter((e) => e.getBoundingClientRect().right > innerWidth + 0.5)
            .slice(0, 8).map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""
    )


async def _low_contrast(page: Any) -> Any:
    """Visible text below WCAG AA contrast (4.5:1, 3:1 for large text) against the nearest opaque background."""
    return await page.evaluate(
        """() => {
          const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
          const lum = ([r, g, b]) => {
            const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
          };
          const background = (e) => {
            for (; e; e = e.parentElement) {
              const c = rgb(getComputedStyle(e).backgroundColor);
              if (c.length < 4 || c[3] === 1) return c.slice(0, 3);
            }
            return [255, 255, 255];
          };
          const bad = [];
          for (const e of document.querySelectorAll("body *")) {
            const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
            if (!own || !e.getClientRects().length || e.closest("pre")) continue;
            const style = getComputedStyle(e);
            const [a, b] = [lum(rgb(style.color)), lum(background(e))];
            const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
            const size = parseFloat(style.fontSize);
            const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
            const text = e.textContent.trim().slice(0, 30);
            if (ratio < (large ? 3 : 4.5)) bad.push(`${e.tagName}.${e.className} "${text}" ${ratio.toFixed(2)}`);
          }
          return bad;
        }"""
    )


async def test_job_age_uses_the_servers_clock_when_the_browsers_is_wrong(ripple: RippleServer) -> None:
    await ripple.call("videos:create", {"twitchId": "skew1", "title": "Skewed clock"}, user="alice")
    async with chromium_page() as page:
        # This browser's clock is 10 minutes fast; the job was updated just now by the server's.
        await page.clock.install()
        await page.clock.set_system_time(time.time() + 600)
        await page.goto(f"{ripple.url}/?stallAfter=60")
        updated = page.get_by_test_id("updated-skew1")
        await expect(updated).to_have_text(re.compile(r"^updated (just now|[0-9]s ago)$"))
        await expect(page.get_by_test_id("job-skew1")).to_have_attribute("data-stalled", "false")
        assert page.console_errors == []


async def test_selected_images_show_their_state_and_appear_when_complete(ripple: RippleServer) -> None:
    # The port is the OS's choice, so file URLs learn it here (RIPPLE_PUBLIC_URL in a deployment).
    assert ripple.services.storage is not None
    ripple.services.storage.base_url = ripple.url
    project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
    made = await ripple.call(
        "projectRedesign:createSceneWithShots",
        {
            "projectId": project,
            "sceneNumber": 3,
            "title": "Harbour",
            "description": "Dusk",
            "shots": [{"shotNumber": n, "description": f"cranes {n}", "initialPrompt": "p"} for n in (1, 2, 3)],
        },
        user="alice",
    )
    scene = made["sceneId"]

    async def selected_image(shot: str, status: str, metadata: dict[str, Any] | None = None) -> str:
        image: str = await ripple.call(
            "projectRedesign:createShotImage",
            {
                "projectId": project,
                "sceneId": scene,
                "shotId": shot,
                "iterationNumber": 0,
                "variantNumber": 2,
                "imageUrl": "",
                "iterationPrompt": "cranes at dusk",
                "status": status,
                **({"metadata": metadata} if metadata else {}),
            },
            user="alice",
        )
        await ripple.call(
            "projectRedesign:selectMasterShot",
            {"projectId": project, "sceneId": scene, "shotId": shot, "selectedImageId": image},
            user="alice",
        )
        return image

    waiting = await selected_image(made["shotIds"][0], "pending")
    await selected_image(made["shotIds"][1], "failed", {"error": "the provider refused the prompt"})

    async with chromium_page(width=390, height=844) as page:
        await page.goto(f"{ripple.url}/?token={ripple.token('alice')}&project={project}")
        await expect(page.get_by_test_id("auth-status")).to_have_text("Signed in as alice")
        # Not made yet: the tile says which state each selected image is in; the project counts them.
        pending, failed = page.get_by_test_id("image-state-3-1"), page.get_by_test_id("image-state-3-2")
        await expect(pending).to_have_text("Pending")
        await expect(failed).to_have_text("Failed")
        await expect(failed).to_have_attribute("title", "the provider refused the prompt")
        await expect(page.get_by_test_id("image-state-3-3")).to_have_text("No image")
        await expect(page.get_by_test_id("images-detail")).to_have_text("1 of 2 finished")
        await expect(page.get_by_test_id("images-pending")).to_have_text("1 pending")
        await expect(page.get_by_test_id("images-failed")).to_have_text("1 failed")
        await expect(page.get_by_test_id("images-progress")).to_have_text("50%")

        await ripple.call("projectRedesign:updateShotImage", {"imageId": waiting, "status": "processing"}, user="alice")
        await expect(pending).to_have_text("Generating…")
        await expect(page.get_by_test_id("images-processing")).to_have_text("1 generating")
        await expect(page.get_by_test_id("images-pending")).to_have_count(0)

        # The image completes the way image generation completes it: a stored file, then completeImage.
        async with httpx.AsyncClient(timeout=30) as http:
            upload = await http.post(
                await ripple.call("testing:uploadUrl"),
                content=png(24, 16, (30, 120, 200)),
                headers={"Content-Type": "image/png"},
            )
        assert upload.status_code == 200, upload.text
        args = {"imageId": waiting, "predictionId": "p-1", "storageId": upload.json()["storageId"]}
        assert await ripple.call("imageGeneration:completeImage", args, internal=True) is True

        thumb = page.get_by_test_id("thumb-3-1")
        await expect(thumb).to_be_visible()
        await expect(pending).to_be_hidden()
        alt = "Selected image of Scene 3 · Shot 1: cranes 1 (iteration 0, variant 2)"
        await expect(thumb).to_have_attribute("alt", alt)
        assert (await thumb.get_attribute("src") or "").startswith(f"{ripple.url}/api/storage/")
        # Decoded, not just requested: the stored file is served to the page and is the PNG that was stored.
        await page.wait_for_function(
            """() => { const img = document.querySelector('[data-testid="thumb-3-1"]');
                       return img && img.complete && img.naturalWidth === 24; }"""
        )
        await expect(page.get_by_test_id("images-detail")).to_have_text("2 of 2 finished")
        await expect(page.get_by_test_id("images-progress")).to_have_text("100%")
        # Finished, but not all made: the bar says so as well as the badge.
        await expect(page.locator("#images-bar")).to_have_attribute("data-tone", "bad")
        await expect(page.get_by_test_id("images-processing")).to_have_count(0)
        await expect(failed).to_have_text("Failed")

        await page.wait_for_timeout(600)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, await _widest(page)
        await page.screenshot(path=artifact("dashboard-images-390.png"), full_page=True)
        assert await _low_contrast(page) == []
        assert page.console_errors == []


async def test_a_refused_token_says_why_and_errors_stay_in_their_panel(ripple: RippleServer) -> None:
    project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
    expired = ripple.token("alice", ttl_s=-60)
    async with chromium_page() as page:
        # A malformed generation id fails that panel's query only; the jobs panel stays live.
        await page.goto(f"{ripple.url}/?token={expired}&project={project}&generation=not-an-id")
        status = page.get_by_test_id("auth-status")
        await expect(status).to_have_attribute("data-state", "error")
        await expect(status).to_have_text(
            "Sign-in failed: the token expired; make a new one with: ripple token --sub alice"
        )
        await expect(page.get_by_test_id("project-notice")).to_have_text("Sign in to see project progress.")
        assert await page.evaluate("localStorage.getItem('ripple.dashboard.token')") is None

        await page.get_by_test_id("token-input").fill(ripple.token("alice"))
        await page.get_by_test_id("sign-in").click()
        await expect(status).to_have_text("Signed in as alice")
        await expect(page.get_by_test_id("project-summary")).to_have_text("0 scenes · 0 shots")
        chain_error = page.get_by_test_id("chain-error")
        await expect(chain_error).to_be_visible()
        await expect(chain_error).to_contain_text("not-an-id")
        await expect(page.get_by_test_id("project-error")).to_be_hidden()
        await ripple.call("videos:create", {"twitchId": "still1", "title": "Still live"}, user="bob")
        await expect(page.get_by_test_id("job-still1")).to_be_visible()

        await page.get_by_test_id("sign-out").click()
        await expect(status).to_have_text("Signed out")
        await expect(page.get_by_test_id("project-notice")).to_have_text("Sign in to see project progress.")
        await expect(page.get_by_test_id("chain-error")).to_be_hidden()
        await page.reload()
        await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "connected")
        await expect(status).to_have_text("Signed out")
        assert page.console_errors == []
