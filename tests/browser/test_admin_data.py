"""The admin console's Data and Functions sections in a real headless Chromium against a running Ripple."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import expect

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.clients.driver import ClientDriver
from tests.support.browser import artifact, chromium_page
from tests.support.images import png
from tests.support.server import ADMIN_KEY, RippleServer


async def _open(page: Any, ripple: RippleServer, section: str = "data") -> None:
    await page.goto(f"{ripple.url}/_admin/#{section}")
    await page.get_by_label("Admin key").fill(ADMIN_KEY)
    await page.get_by_test_id("key-submit").click()
    await expect(page.get_by_test_id("nav")).to_be_visible()


def _video(twitch_id: str, title: str = "t") -> dict[str, Any]:
    return {"table": "videos", "doc": {"twitchId": twitch_id, "title": title, "status": "Queued"}}


async def test_data_view_is_live_and_edits_reach_an_official_client(ripple: RippleServer) -> None:
    first = await ripple.call("testing:insert", _video("first"))
    async with (
        await ClientDriver.start("node", ripple.url) as client,
        chromium_page() as page,
    ):
        await client.subscribe("s1", "testing:videosByStatus", {"status": "Queued"})
        assert [d["twitchId"] for d in (await client.next_update("s1"))["value"]] == ["first"]

        await _open(page, ripple, "data?table=videos")
        await expect(page.get_by_test_id(f"doc-{first}")).to_be_visible()
        await expect(page.get_by_test_id("count-videos")).to_have_text("1")

        # (a) A mutation made elsewhere appears without reload.
        second = await ripple.call("testing:insert", _video("second"))
        await expect(page.get_by_test_id(f"doc-{second}")).to_be_visible()
        await expect(page.get_by_test_id("count-videos")).to_have_text("2")

        # An invalid edit is refused before sending; (b) a valid one reaches the subscribed client.
        await page.get_by_test_id(f"edit-{first}").click()
        editor = page.get_by_label("Fields to set on")
        await editor.fill('{"_id": "x"}')
        await page.get_by_test_id("data-editor-save").click()
        await expect(page.get_by_test_id("data-editor-error")).to_contain_text('System field "_id"')
        await editor.fill('{"title": "edited in the console"}')
        await page.get_by_test_id("data-editor-save").click()
        await expect(page.get_by_test_id(f"doc-{first}")).to_contain_text("edited in the console")
        update = await client.expect(
            lambda e: (
                e.get("event") == "update"
                and any(d.get("title") == "edited in the console" for d in e.get("value") or [])
            )
        )
        assert update["id"] == "s1"

        # A server-side refusal shows with the request id.
        await page.get_by_test_id(f"edit-{first}").click()
        await page.get_by_label("Fields to set on").fill('{"title": 5}')
        await page.get_by_test_id("data-editor-save").click()
        await expect(page.get_by_test_id("data-editor-error")).to_contain_text("must be a string")
        await expect(page.get_by_test_id("data-editor-error")).to_contain_text("(request ")
        await page.get_by_test_id("data-editor-cancel").click()

        # Filter by a field, then delete with a confirmation.
        await page.get_by_label("Filter field").select_option("twitchId")
        await page.get_by_label("equals").fill("second")
        await page.get_by_test_id("data-apply").click()
        await expect(page.get_by_test_id(f"doc-{first}")).to_have_count(0)
        await expect(page.get_by_test_id(f"doc-{second}")).to_be_visible()
        await page.screenshot(path=artifact("admin-data.png"), full_page=True)
        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_test_id(f"delete-{second}").click()
        await expect(page.get_by_test_id("count-videos")).to_have_text("1")
        await client.expect(lambda e: e.get("event") == "update" and len(e.get("value") or []) == 1)
        assert page.console_errors == []


async def test_insert_and_id_links(ripple: RippleServer) -> None:
    async with chromium_page() as page:
        await _open(page, ripple, "data?table=videos")
        await page.get_by_test_id("data-insert").click()
        await page.get_by_label("New document in videos").fill(
            '{"twitchId": "made", "title": "Made here", "status": "Queued"}'
        )
        await page.get_by_test_id("data-editor-save").click()
        await expect(page.get_by_text("Made here")).to_be_visible()
        made = await ripple.call("testing:videosByStatus", {"status": "Queued"})
        assert [d["twitchId"] for d in made] == ["made"]
        # An id of another table is a link to that document.
        project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
        await ripple.call(
            "projectRedesign:createSceneWithShots",
            {"projectId": project, "sceneNumber": 1, "title": "Opening", "description": "Dawn", "shots": []},
            user="alice",
        )
        await page.goto(f"{ripple.url}/_admin/#data?table=projectScenes")
        await page.get_by_role("link", name=project).first.click()
        await expect(page.get_by_test_id("focus-json")).to_contain_text("Tokyo")
        assert page.console_errors == []


async def test_functions_run_as_a_user_respect_ownership(ripple: RippleServer) -> None:
    project = await ripple.call("projectRedesign:createRedesignProject", {"prompt": "Tokyo"}, user="alice")
    args = f'{{"projectId": "{project}", "promptPlannerData": "plan"}}'
    async with chromium_page() as page:
        await _open(page, ripple, "functions")
        await page.get_by_label("Search").fill("updatePromptPlanner")
        await page.get_by_test_id("fn-projectRedesign:updatePromptPlanner").click()
        await expect(page.get_by_test_id("fn-title")).to_have_text("projectRedesign:updatePromptPlanner")

        # Checked against the schema before sending.
        await page.get_by_label("Arguments (JSON)").fill('{"projectId": 3}')
        await page.get_by_test_id("fn-run").click()
        await expect(page.get_by_test_id("fn-error")).to_contain_text('missing required argument "promptPlannerData"')
        await expect(page.get_by_test_id("fn-error")).to_contain_text("projectId must be string")

        await page.get_by_label("Arguments (JSON)").fill(args)
        await page.get_by_test_id("fn-as-user").check()
        await page.get_by_label("Subject (required)").fill("alice")
        await page.get_by_test_id("fn-run").click()
        await expect(page.get_by_test_id("fn-result")).to_have_text("null")
        assert (await ripple.call("projectRedesign:getProject", {"projectId": project}, user="alice"))[
            "promptPlannerData"
        ] == "plan"

        await page.get_by_label("Subject (required)").fill("bob")
        await page.get_by_test_id("fn-run").click()
        await expect(page.get_by_test_id("fn-error")).to_contain_text("not found")
        await expect(page.get_by_test_id("fn-error")).to_contain_text("(request ")
        await page.screenshot(path=artifact("admin-functions.png"), full_page=True)

        # A query followed live as the owner, and an internal function run as admin.
        await page.get_by_label("Search").fill("getProject")
        await page.get_by_test_id("fn-projectRedesign:getProject").click()
        await page.get_by_label("Arguments (JSON)").fill(f'{{"projectId": "{project}"}}')
        await page.get_by_test_id("fn-as-user").check()
        await page.get_by_label("Subject (required)").fill("alice")
        await page.get_by_label("Follow live").check()
        await page.get_by_test_id("fn-run").click()
        await expect(page.get_by_test_id("fn-result")).to_contain_text('"promptPlannerData": "plan"')
        await ripple.call(
            "projectRedesign:updatePromptPlanner", {"projectId": project, "promptPlannerData": "live"}, user="alice"
        )
        await expect(page.get_by_test_id("fn-result")).to_contain_text('"promptPlannerData": "live"')

        await page.get_by_label("Search").fill("testing:secret")
        await page.get_by_test_id("fn-testing:secret").click()
        await page.get_by_test_id("fn-run").click()
        await expect(page.get_by_test_id("fn-result")).to_have_text('"internal"')
        assert page.console_errors == []


async def test_a_bad_key_is_refused_with_a_message(ripple: RippleServer) -> None:
    async with chromium_page() as page:
        await page.goto(f"{ripple.url}/_admin/")
        await page.get_by_label("Admin key").fill("not-the-key")
        await page.get_by_test_id("key-submit").click()
        await expect(page.get_by_test_id("key-error")).to_have_text("That admin key is not valid.")
        await expect(page.get_by_test_id("nav")).to_be_hidden()


async def test_no_horizontal_scroll_at_390_px(ripple: RippleServer) -> None:
    await ripple.call("testing:insert", _video("narrow", "a title long enough to need wrapping on a phone"))
    async with chromium_page(width=390, height=844) as page:
        for section, shot in (("data?table=videos", "admin-data-390.png"), ("functions", "admin-functions-390.png")):
            await _open(page, ripple, section) if section.startswith("data") else await page.goto(
                f"{ripple.url}/_admin/#{section}"
            )
            await expect(page.get_by_test_id("view")).not_to_be_empty()
            if section == "functions":
                await page.get_by_test_id("fn-testing:insert").click()
            else:
                await expect(page.get_by_text("narrow", exact=True)).to_be_visible()
            wide = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert wide <= 0, f"{section}: the page is {wide} px wider than the 390 px screen"
            await page.screenshot(path=artifact(shot), full_page=True)
        assert page.console_errors == []


async def test_storage_ids_show_a_preview_of_the_stored_image(ripple: RippleServer) -> None:
    assert ripple.services.storage is not None
    ripple.services.storage.base_url = ripple.url  # the port is the OS's choice (RIPPLE_PUBLIC_URL when deployed)
    async with httpx.AsyncClient(timeout=30) as http:
        upload = await http.post(
            await ripple.call("testing:uploadUrl"),
            content=png(20, 10, (200, 40, 40)),
            headers={"Content-Type": "image/png"},
        )
    assert upload.status_code == 200, upload.text
    storage_id = upload.json()["storageId"]
    async with chromium_page() as page:
        await _open(page, ripple, "data?table=_storage")
        preview = page.get_by_alt_text(f"stored image {storage_id}").first
        await expect(preview).to_be_visible()
        await page.wait_for_function(
            """(id) => [...document.querySelectorAll('img.preview')]
                       .some((img) => img.alt === `stored image ${id}` && img.complete && img.naturalWidth === 20)""",
            arg=storage_id,
        )
        await page.screenshot(path=artifact("admin-data-storage.png"), full_page=True)
        assert page.console_errors == []
