"""The client examples run as their READMEs say, against a real Ripple server, and see its changes live.

Each example is a subprocess (the server runs in the test's event loop, so they are asyncio subprocesses); the React
page is built with Vite, served from 127.0.0.1 and driven in headless Chromium through Playwright. Node examples
need `npm ci` in client_examples/node (CI does it) and are skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.staticfiles import StaticFiles

from tests.clients.driver import npm_ci
from tests.support.browser import artifact, chromium_page
from tests.support.server import ADMIN_KEY, RippleServer

ROOT = Path(__file__).resolve().parents[2]
PYTHON_EXAMPLES = ROOT / "client_examples" / "python"
NODE_EXAMPLES = ROOT / "client_examples" / "node"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="the node examples need Node.js")


async def start(*argv: str | Path, cwd: Path = ROOT) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *map(str, argv), cwd=cwd, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )


async def finish(proc: asyncio.subprocess.Process, timeout_s: float = 60) -> tuple[int, str]:
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"{proc.pid} still running after {timeout_s}s:\n{out.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def first_line(proc: asyncio.subprocess.Process, timeout_s: float = 20) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), timeout_s)).decode()


async def test_python_worker_reports_progress_that_job_monitor_follows(ripple: RippleServer) -> None:
    monitor = await start(
        sys.executable,
        PYTHON_EXAMPLES / "job_monitor.py",
        "--url",
        ripple.url,
        "--job-id",
        "vod-1-job",
        "--timeout",
        "40",
    )
    assert "waiting for the job to start" in await first_line(monitor)
    code, out = await finish(
        await start(
            sys.executable,
            PYTHON_EXAMPLES / "worker.py",
            "--url",
            ripple.url,
            "--admin-key",
            ADMIN_KEY,
            "--twitch-id",
            "vod-1",
            "--title",
            "Speedrun",
            "--delay",
            "0.2",
        )
    )
    assert code == 0, out
    assert "queued video vod-1" in out and "100%  Completed" in out
    code, seen = await finish(monitor)
    assert code == 0, seen
    percents = [float(line.split("%")[0].split()[-1]) for line in seen.splitlines()[1:]]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 3, seen
    assert "Completed" in seen.splitlines()[-1]
    video = await ripple.call("videos:getByTwitchId", {"twitchId": "vod-1"})
    assert video["status"] == "Completed" and video["transcriptUrl"].endswith("/vod-1/transcript.json")


async def test_python_worker_failure_ends_job_monitor_with_the_error(ripple: RippleServer) -> None:
    monitor = await start(
        sys.executable,
        PYTHON_EXAMPLES / "job_monitor.py",
        "--url",
        ripple.url,
        "--job-id",
        "vod-2-job",
        "--timeout",
        "40",
    )
    await first_line(monitor)
    code, out = await finish(
        await start(
            sys.executable,
            PYTHON_EXAMPLES / "worker.py",
            "--url",
            ripple.url,
            "--admin-key",
            ADMIN_KEY,
            "--twitch-id",
            "vod-2",
            "--delay",
            "0.1",
            "--fail",
        )
    )
    assert code == 1 and "failed: the transcription service timed out" in out
    code, seen = await finish(monitor)
    assert code == 1 and "Failed" in seen and "error=external_service_error" in seen, seen


async def test_raw_websocket_prints_each_result(ripple: RippleServer) -> None:
    proc = await start(
        sys.executable,
        PYTHON_EXAMPLES / "raw_websocket.py",
        "--url",
        ripple.url,
        "videos:getByTwitchId",
        '{"twitchId": "raw-1"}',
        "--updates",
        "2",
        "--timeout",
        "30",
    )
    assert '"type": "Connect"' in await first_line(proc)
    assert '"type": "ModifyQuerySet"' in await first_line(proc)
    assert (await first_line(proc)).rstrip().endswith(": null")
    await ripple.call("videos:create", {"twitchId": "raw-1", "title": "Raw"}, admin=True)
    code, out = await finish(proc)
    assert code == 0 and '"twitchId": "raw-1"' in out and '"status": "Queued"' in out, out


@needs_node
async def test_node_subscribe_sees_its_own_mutation(ripple: RippleServer) -> None:
    if not (NODE_EXAMPLES / "node_modules" / "convex").is_dir():
        await npm_ci(NODE_EXAMPLES)
    code, out = await finish(
        await start(
            "node",
            NODE_EXAMPLES / "subscribe.mjs",
            "--url",
            ripple.url,
            "--token",
            ripple.token("node-user"),
            "--twitch-id",
            "node-1",
            "--timeout",
            "30",
        )
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "update: no such video yet" and "update: Node demo node-1: Queued" in lines, out
    assert lines[-1] == "done: node-1 is Queued"


@pytest.fixture
async def react_page() -> AsyncIterator[str]:
    """The React example, built by Vite and served from 127.0.0.1; yields the page's base URL."""
    if not (NODE_EXAMPLES / "node_modules" / "vite").is_dir():
        await npm_ci(NODE_EXAMPLES)
    code, out = await finish(
        await start(NODE_EXAMPLES / "node_modules" / ".bin" / "vite", "build", cwd=NODE_EXAMPLES), 120
    )
    assert code == 0, out
    app = Starlette()
    app.mount("/", StaticFiles(directory=NODE_EXAMPLES / "react" / "dist", html=True))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the static server stopped before it started"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_react_page_renders_jobs_and_workflows_live(ripple: RippleServer, react_page: str) -> None:
    from playwright.async_api import expect

    await ripple.call("videos:create", {"twitchId": "vod-a", "title": "First VOD"}, admin=True)
    report = {"twitchId": "vod-a", "jobId": "job-a", "status": "Downloading", "currentStage": "Downloading"}
    await ripple.call("videos:updateJobProgress", {**report, "progressPercentage": 25}, admin=True)
    for task in ("first task", "second task", "third task"):
        await ripple.call("workflows:createWorkflow", {"task": task}, user="alice")
    query = urlencode({"url": ripple.url, "token": ripple.token("alice")})

    async with chromium_page(900, 700) as page:
        await page.goto(f"{react_page}/index.html?{query}")
        row = page.locator('tr[data-twitch-id="vod-a"]')
        await expect(row).to_contain_text("25%")
        await expect(row).to_contain_text("Downloading")

        # useQuery: a mutation made elsewhere shows up without a reload.
        await ripple.call(
            "videos:updateJobProgress",
            {**report, "progressPercentage": 75, "status": "Transcribing", "currentStage": "Transcribing"},
            admin=True,
        )
        await expect(row).to_contain_text("75%")
        await expect(row).to_contain_text("Transcribing")
        await ripple.call("videos:create", {"twitchId": "vod-b", "title": "Second VOD"}, admin=True)
        await expect(page.locator('tr[data-twitch-id="vod-b"]')).to_contain_text("Queued")

        # usePaginatedQuery: two per page, "Load more" fetches the next page; useMutation adds one live.
        items = page.locator("#workflows li")
        await expect(items).to_have_count(2)
        await page.click("#load-more")
        await expect(items).to_have_count(3)
        await expect(page.locator("#page-status")).to_have_text("Exhausted")
        await page.fill("#task", "from the browser")
        await page.click("#create")
        await expect(items).to_have_count(4)
        await expect(items.last).to_contain_text("from the browser")
        await page.screenshot(path=artifact("client_examples_react.png"), full_page=True)
        assert page.console_errors == []
    created = await ripple.call(
        "workflows:listByStatus",
        {"status": "pending", "paginationOpts": {"numItems": 10, "cursor": None}},
        user="alice",
    )
    assert [w["task"] for w in created["page"]][-1] == "from the browser"
