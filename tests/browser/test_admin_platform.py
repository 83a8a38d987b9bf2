"""The console's Logs, Schedules, Files and Health sections: their system functions and endpoints over HTTP with
the admin key (and refused without it), then each view in a real headless Chromium against a running server."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.browser import artifact, chromium_page
from tests.support.server import ADMIN_KEY, RippleServer, run_server
from tests.support.ws import SyncClient

CRON_MODULES = ["tests.support.testing_app", "tests.support.cron_app"]
# A 1x1 PNG (a red pixel).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def ripple(fresh_dsn: str, tmp_path: Path) -> AsyncIterator[RippleServer]:
    """A server whose file URLs name its port (known only once it listens), files kept in the test's folder."""
    async with run_server(fresh_dsn, storage_dir=tmp_path / "files") as server:
        assert server.services.storage is not None
        server.services.storage.base_url = server.url
        yield server


async def admin_query(ripple: RippleServer, path: str, args: dict[str, Any] | None = None) -> Any:
    response = await ripple.http("query", path, args or {}, admin=True, fmt="json")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", body
    return body["value"]


async def admin_mutation(ripple: RippleServer, path: str, args: dict[str, Any] | None = None) -> Any:
    response = await ripple.http("mutation", path, args or {}, admin=True, fmt="json")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", body
    return body["value"]


async def wait_for(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still {value!r} after {timeout_s} s")
        await asyncio.sleep(0.02)


async def upload(ripple: RippleServer, data: bytes, content_type: str) -> str:
    url = await admin_mutation(ripple, "_system/platform:generateUploadUrl")
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, content=data, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    return str(response.json()["storageId"])


# The system functions and endpoints over HTTP.


async def test_system_functions_need_the_admin_key(ripple: RippleServer) -> None:
    for kind, path in [
        ("query", "_system/platform:scheduled"),
        ("query", "_system/platform:files"),
        ("query", "_system/platform:cronRuns"),
        ("mutation", "_system/platform:generateUploadUrl"),
    ]:
        anonymous = await ripple.http(kind, path, {}, fmt="json")
        assert anonymous.status_code != 200 or anonymous.json()["status"] == "error", anonymous.text
        assert "Could not find public function" in anonymous.text
        signed_in = await ripple.http(kind, path, {}, token=ripple.token("mallory"), fmt="json")
        assert "Could not find public function" in signed_in.text
    async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as http:
        for endpoint in ("/api/admin/health", "/api/admin/crons"):
            refused = await http.get(endpoint)
            assert refused.status_code == 401 and "admin key" in refused.json()["message"]
            wrong = await http.get(endpoint, headers={"Authorization": "Convex not-the-key"})
            assert wrong.status_code == 401
            user = await http.get(endpoint, headers={"Authorization": f"Bearer {ripple.token('mallory')}"})
            assert user.status_code == 401


async def test_scheduled_functions_page_newest_first_filter_by_state_and_cancel(ripple: RippleServer) -> None:
    later = [await ripple.call("testing:schedule", {"delayMs": 60_000, "twitchId": f"later{i}"}) for i in range(3)]
    soon = await ripple.call("testing:schedule", {"delayMs": 0, "twitchId": "soon"})

    async def soon_done() -> bool:
        page = (await admin_query(ripple, "_system/platform:scheduled", {"state": "success"}))["page"]
        return [doc["_id"] for doc in page] == [soon]

    await wait_for(soon_done)
    everything = await admin_query(ripple, "_system/platform:scheduled")
    assert [doc["_id"] for doc in everything["page"]] == [soon, *reversed(later)]
    assert everything["isDone"] is True
    assert everything["page"][0]["name"] == "testing:scheduledInsert"
    assert everything["page"][0]["args"] == [{"twitchId": "soon"}]

    # Page by page, one at a time: every job once, newest first, then done.
    seen: list[str] = []
    cursor = None
    while True:
        page = await admin_query(ripple, "_system/platform:scheduled", {"limit": 1, "cursor": cursor})
        seen += [doc["_id"] for doc in page["page"]]
        cursor = page["continueCursor"]
        if page["isDone"]:
            break
        assert len(seen) <= 4
    assert seen == [soon, *reversed(later)]

    pending = await admin_query(ripple, "_system/platform:scheduled", {"state": "pending", "limit": 2})
    assert [doc["_id"] for doc in pending["page"]] == [later[2], later[1]] and pending["isDone"] is False
    rest = await admin_query(
        ripple, "_system/platform:scheduled", {"state": "pending", "limit": 2, "cursor": pending["continueCursor"]}
    )
    assert [doc["_id"] for doc in rest["page"]] == [later[0]] and rest["isDone"] is True

    await admin_mutation(ripple, "_system/platform:cancel", {"id": later[1]})
    canceled = await admin_query(ripple, "_system/platform:scheduled", {"state": "canceled"})
    assert [doc["_id"] for doc in canceled["page"]] == [later[1]]
    assert canceled["page"][0]["completedTime"] > 0

    bad = await ripple.http("query", "_system/platform:scheduled", {"state": "done"}, admin=True, fmt="json")
    assert "state must be one of pending, inProgress, success, failed, canceled" in bad.json()["errorMessage"]
    bad_cursor = await ripple.http("query", "_system/platform:scheduled", {"cursor": "x"}, admin=True, fmt="json")
    assert "is not one this function returned" in bad_cursor.json()["errorMessage"]


async def test_files_list_with_size_type_and_url_and_delete(ripple: RippleServer) -> None:
    first = await upload(ripple, b"hello", "text/plain")
    image = await upload(ripple, PNG, "image/png")
    listed = await admin_query(ripple, "_system/platform:files")
    assert [doc["_id"] for doc in listed["page"]] == [image, first]
    doc = listed["page"][0]
    assert doc["size"] == len(PNG) and doc["contentType"] == "image/png" and doc["_creationTime"] > 0
    assert doc["url"] == f"{ripple.url}/api/storage/{image}"
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(doc["url"])).content == PNG
    one = await admin_query(ripple, "_system/platform:files", {"limit": 1})
    assert [d["_id"] for d in one["page"]] == [image] and one["isDone"] is False
    two = await admin_query(ripple, "_system/platform:files", {"limit": 1, "cursor": one["continueCursor"]})
    assert [d["_id"] for d in two["page"]] == [first] and two["isDone"] is True

    await admin_mutation(ripple, "_system/platform:deleteFile", {"storageId": first})
    assert [d["_id"] for d in (await admin_query(ripple, "_system/platform:files"))["page"]] == [image]
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{ripple.url}/api/storage/{first}")).status_code == 404


async def test_health_figures_are_those_of_metrics(ripple: RippleServer) -> None:
    async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as http:
        figures = (await http.get("/api/admin/health", headers={"Authorization": f"Convex {ADMIN_KEY}"})).json()
        metrics = (await http.get("/metrics")).text
    assert figures["sockets"] == 0 and figures["subscriptions"] == 0 and figures["queryInstances"] == 0
    assert f"ripple_connections {float(figures['sockets'])}" in metrics
    for key in ("hubLagSeconds", "hubLagCommits", "rounds", "reruns", "functionCalls", "monotonicS"):
        assert isinstance(figures[key], (int, float)), key


async def test_cron_jobs_with_schedule_last_run_and_next_run(fresh_dsn: str, tmp_path: Path) -> None:
    async with run_server(
        fresh_dsn, modules=CRON_MODULES, crons_enabled=True, storage_dir=tmp_path / "files"
    ) as ripple:
        async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as http:
            declared = (await http.get("/api/admin/crons", headers={"Authorization": f"Convex {ADMIN_KEY}"})).json()
        assert declared["enabled"] is True
        jobs = {job["name"]: job for job in declared["jobs"]}
        assert jobs["tick"]["function"] == "crontest:tick" and jobs["tick"]["args"] == {"label": "cron-tick"}
        assert jobs["tick"]["schedule"] == {"kind": "interval", "everyMs": 200.0}
        assert jobs["tick"]["nextRun"] > time.time() * 1000 - 1000

        async def ran() -> dict[str, Any] | None:
            runs = {run["name"]: run for run in await admin_query(ripple, "_system/platform:cronRuns")}
            finished = ("success", "failed")
            if all(
                runs.get(n, {}).get("lastRun") and runs[n]["lastRun"]["state"]["kind"] in finished
                for n in ("tick", "fails")
            ):
                return runs
            return None

        runs = await wait_for(ran)
        assert runs["tick"]["lastRun"]["state"]["kind"] == "success"
        assert runs["fails"]["lastRun"]["state"] == {"kind": "failed", "error": "the cron job failed on purpose"}
        assert runs["tick"]["lastRun"]["name"] == "crontest:tick" and runs["tick"]["lastTick"] > 0


async def test_the_log_stream_carries_an_errors_traceback(ripple: RippleServer) -> None:
    records: list[str] = []

    async def read() -> None:
        async with httpx.AsyncClient(base_url=ripple.url, timeout=30) as http:
            headers = {"Authorization": f"Convex {ADMIN_KEY}"}
            async with http.stream("GET", "/api/logs?function=testing:buggy", headers=headers) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        records.append(line[6:])

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(0.3)
        failed = await ripple.http("mutation", "testing:buggy", {"key": "missing"}, fmt="json")
        assert failed.json()["status"] == "error"

        async def called() -> bool:
            return any('"type":"call"' in r for r in records)

        await wait_for(called)
    finally:
        reader.cancel()
    call = next(json.loads(r) for r in records if '"type":"call"' in r)
    assert call["outcome"] == "uncaught" and call["error"] == "KeyError: 'missing'"
    assert "Traceback (most recent call last)" in call["traceback"] and "return {}[key]" in call["traceback"]


# The views in Chromium.


async def open_console(page: Any, ripple: RippleServer, section: str) -> None:
    """Open the console, give the admin key once, and go to `section`."""
    await page.goto(f"{ripple.url}/_admin/#{section}")
    await page.get_by_label("Admin key").fill(ADMIN_KEY)
    await page.get_by_test_id("key-submit").click()
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "admin")
    await page.get_by_test_id(f"nav-{section}").click()
    await expect(page.get_by_test_id("view")).to_have_attribute("data-section", section)


async def no_horizontal_scroll(page: Any) -> None:
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.wait_for_timeout(100)
    width = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide at 390 px"


async def test_logs_view_shows_lines_and_tracebacks_filtered(ripple: RippleServer) -> None:
    async with chromium_page() as page:
        await open_console(page, ripple, "logs")
        await expect(page.get_by_test_id("log-status")).to_contain_text("Live")
        said = await ripple.http("query", "testing:chattyCount", {"twitchId": "v1", "tag": "hello-console"}, fmt="json")
        assert said.json()["status"] == "success"
        failed = await ripple.http("mutation", "testing:buggy", {"key": "missing"}, fmt="json")
        assert failed.json()["status"] == "error"

        rows = page.get_by_test_id("log-row")
        line = rows.filter(has_text="hello-console read v1")
        await expect(line).to_have_count(1)
        await expect(rows.filter(has_text="hello-console counted")).to_have_count(1)
        traceback = page.get_by_test_id("log-traceback")
        await expect(traceback).to_have_count(1)
        await traceback.locator("summary").click()
        await expect(traceback).to_contain_text("KeyError: 'missing'")
        await expect(traceback).to_contain_text("return {}[key]")
        await page.screenshot(path=artifact("admin-logs.png"), full_page=True)

        # By function: only testing:buggy's line ("looking up missing") and its call.
        await page.get_by_label("Function").fill("testing:buggy")
        await expect(rows.filter(has_text="hello-console")).to_have_count(0)
        await expect(rows.filter(has_text="looking up missing")).to_have_count(1)
        assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.function)")) == {"testing:buggy"}
        await page.get_by_label("Function").fill("")

        # By level: errors only, so the buggy call and nothing it printed.
        await page.get_by_label("Level").select_option("error")
        await expect(rows.filter(has_text="looking up missing")).to_have_count(0)
        await expect(rows.filter(has_text="uncaught")).to_have_count(1)
        assert set(await rows.evaluate_all("rs => rs.map(r => r.dataset.level)")) == {"error"}
        await page.get_by_label("Level").select_option("debug")

        # By request id: the chatty call's lines and its call record, nothing of the other call.
        request = await line.get_attribute("data-request")
        assert request
        await page.get_by_label("Request id").fill(request)
        await expect(rows.filter(has_text="looking up missing")).to_have_count(0)
        await expect(rows).to_have_count(3)  # two lines and the call
        await page.get_by_label("Request id").fill("")

        # By user: the calls were anonymous; no user matches "alice".
        await page.get_by_label("User").fill("anonymous")
        await expect(rows.filter(has_text="hello-console read v1")).to_have_count(1)
        await page.get_by_label("User").fill("alice")
        await expect(rows).to_have_count(0)
        await page.get_by_label("User").fill("")

        # Paused, new records are counted but not shown; resumed, they appear.
        await page.get_by_test_id("log-pause").click()
        await ripple.http("query", "testing:chattyCount", {"twitchId": "v2", "tag": "while-paused"}, fmt="json")
        await expect(page.get_by_test_id("log-status")).to_contain_text("Paused: 3 new records")
        await expect(rows.filter(has_text="while-paused")).to_have_count(0)
        await page.get_by_test_id("log-pause").click()
        await expect(rows.filter(has_text="while-paused read v2")).to_have_count(1)

        await no_horizontal_scroll(page)
        await page.screenshot(path=artifact("admin-logs-390.png"), full_page=True)
        assert page.console_errors == []


async def test_schedules_view_moves_pending_to_success_live_and_cancels(ripple: RippleServer) -> None:
    async with chromium_page() as page:
        await open_console(page, ripple, "schedules")
        await expect(page.get_by_test_id("crons-note")).to_contain_text("turned off")
        soon = await ripple.call("testing:schedule", {"delayMs": 1500, "twitchId": "soon"})
        later = await ripple.call("testing:schedule", {"delayMs": 600_000, "twitchId": "later"})
        await expect(page.get_by_test_id(f"job-state-{soon}")).to_have_text("pending")
        await expect(page.get_by_test_id(f"job-state-{soon}")).to_have_text("success", timeout=10_000)
        await expect(page.get_by_test_id(f"cancel-{soon}")).to_have_count(0)

        await expect(page.get_by_test_id(f"job-state-{later}")).to_have_text("pending")
        cancel = page.get_by_test_id(f"cancel-{later}")
        await cancel.focus()
        await page.keyboard.press("Enter")  # asks first
        await expect(cancel).to_have_text("Confirm cancel")
        await page.keyboard.press("Enter")
        await expect(page.get_by_test_id(f"job-state-{later}")).to_have_text("canceled")
        assert (await ripple.call("testing:job", {"id": later}))["state"]["kind"] == "canceled"

        await page.get_by_label("State").select_option("success")
        await expect(page.get_by_test_id(f"job-{later}")).to_have_count(0)
        await expect(page.get_by_test_id(f"job-{soon}")).to_be_visible()
        await page.get_by_label("State").select_option("")
        await page.screenshot(path=artifact("admin-schedules.png"), full_page=True)
        await no_horizontal_scroll(page)
        await page.screenshot(path=artifact("admin-schedules-390.png"), full_page=True)
        assert page.console_errors == []


async def test_schedules_view_shows_crons_last_and_next_run(fresh_dsn: str, tmp_path: Path) -> None:
    async with (
        run_server(fresh_dsn, modules=CRON_MODULES, crons_enabled=True, storage_dir=tmp_path / "f") as ripple,
        chromium_page() as page,
    ):
        await open_console(page, ripple, "schedules")
        await expect(page.get_by_test_id("cron-tick")).to_contain_text("crontest:tick")
        await expect(page.get_by_test_id("cron-tick")).to_contain_text("every 200 ms")
        await expect(page.get_by_test_id("cron-state-tick")).to_have_text("success")
        await expect(page.get_by_test_id("cron-state-fails")).to_have_text("failed")
        await expect(page.get_by_test_id("cron-fails")).to_contain_text("the cron job failed on purpose")
        assert (await page.get_by_test_id("cron-next-tick").text_content()) not in ("", "—")
        await page.screenshot(path=artifact("admin-crons.png"), full_page=True)
        assert page.console_errors == []


async def test_files_view_previews_an_uploaded_image_and_deletes(ripple: RippleServer) -> None:
    async with chromium_page() as page:
        await open_console(page, ripple, "files")
        text = await upload(ripple, b"plain words", "text/plain")
        await expect(page.get_by_test_id(f"file-type-{text}")).to_have_text("text/plain")
        await expect(page.get_by_test_id(f"file-size-{text}")).to_have_text("11 B")

        # Upload through the page's own file input.
        await page.get_by_label("Upload a file").set_input_files(
            {"name": "pixel.png", "mimeType": "image/png", "buffer": PNG}
        )
        await expect(page.get_by_test_id("files-status")).to_contain_text("Uploaded pixel.png as ")
        image = (await page.get_by_test_id("files-status").text_content() or "").rsplit(" ", 1)[1].rstrip(".")
        preview = page.get_by_test_id(f"file-preview-{image}")
        await expect(preview).to_be_visible()
        await page.wait_for_function(
            "id => { const img = document.querySelector(`[data-testid=file-preview-${id}]`);"
            " return img && img.complete && img.naturalWidth === 1; }",
            arg=image,
        )
        link = page.get_by_test_id(f"file-link-{image}")
        assert await link.get_attribute("href") == f"{ripple.url}/api/storage/{image}"
        await page.screenshot(path=artifact("admin-files.png"), full_page=True)

        delete = page.get_by_test_id(f"delete-{text}")
        await delete.click()
        await expect(delete).to_have_text("Confirm delete")
        await delete.click()
        await expect(page.get_by_test_id(f"file-{text}")).to_have_count(0)
        assert [d["_id"] for d in (await admin_query(ripple, "_system/platform:files"))["page"]] == [image]
        await no_horizontal_scroll(page)
        await page.screenshot(path=artifact("admin-files-390.png"), full_page=True)
        assert page.console_errors == []


async def test_health_view_follows_sockets_and_subscriptions(ripple: RippleServer) -> None:
    async with chromium_page() as page:
        await open_console(page, ripple, "health")
        # The console's own client is one socket, subscribed to nothing in this section.
        await expect(page.get_by_test_id("health-sockets")).to_have_text("1")
        await expect(page.get_by_test_id("health-subscriptions")).to_have_text("0")
        await expect(page.get_by_test_id("health-rounds")).not_to_have_text("—")
        client = await SyncClient.connect(ripple.ws_url)
        try:
            await client.subscribe("testing:count", {"twitchId": "h1"})
            await expect(page.get_by_test_id("health-sockets")).to_have_text("2")
            await expect(page.get_by_test_id("health-subscriptions")).to_have_text("1")
            await expect(page.get_by_test_id("health-instances")).to_have_text("1")
            await page.screenshot(path=artifact("admin-health.png"), full_page=True)
        finally:
            await client.close()
        await expect(page.get_by_test_id("health-sockets")).to_have_text("1")
        await expect(page.get_by_test_id("health-subscriptions")).to_have_text("0")
        await no_horizontal_scroll(page)
        await page.screenshot(path=artifact("admin-health-390.png"), full_page=True)
        assert page.console_errors == []
