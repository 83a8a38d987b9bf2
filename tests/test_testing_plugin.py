"""The app authors' test helpers (server/testing.py, server/pytest_plugin.py): clients as users, admin and
anonymous; subscriptions over the real sync protocol; and the plugin loaded by its entry point in a project of
its own, outside this repository."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg
import httpx
import pytest

from server import ConvexError
from server.errors import AuthRequired, FunctionNotFound, RippleError
from server.testing import QueryFailed, RippleApp

ROOT = Path(__file__).resolve().parents[1]


async def test_subscription_follows_changes_in_order(ripple_app: RippleApp) -> None:
    alice, admin = ripple_app.as_user("alice"), ripple_app.as_admin()
    sub = await alice.subscribe("videos:listByStatus", {"status": "Queued"})
    assert await sub.next() == [] and sub.value == []
    with pytest.raises(TimeoutError, match=r"videos:listByStatus sent no a new result within 0\.2 s"):
        await sub.next(timeout_s=0.2)

    vid = await alice.mutation("videos:create", {"twitchId": "v1", "title": "One"})
    assert [v["_id"] for v in await sub.next()] == [vid]
    # A change its query does not read sends it nothing; one it reads does.
    await admin.mutation("videos:updateJobProgress", {"twitchId": "v1", "jobId": "j", "status": "Analyzing"})
    assert await sub.next() == []

    watched = await alice.subscribe("videos:getByTwitchId", {"twitchId": "v1"})
    for pct in (10, 20, 30):
        await admin.mutation("videos:updateJobProgress", {"twitchId": "v1", "jobId": "j", "progressPercentage": pct})
    video = await watched.wait_until(lambda v: v["progressPercentage"] == 30)
    assert video["status"] == "Analyzing" and watched.value["progressPercentage"] == 30

    await watched.unsubscribe()
    await admin.mutation("videos:updateJobProgress", {"twitchId": "v1", "jobId": "j", "progressPercentage": 40})
    with pytest.raises(TimeoutError):
        await watched.next(timeout_s=0.3)
    await alice.close()
    with pytest.raises(ConnectionError, match="closed by the test"):
        await sub.next(timeout_s=1)


async def test_identity_reaches_functions_over_both_paths(ripple_app: RippleApp) -> None:
    alice, bob, anon = ripple_app.as_user("alice"), ripple_app.as_user("bob"), ripple_app.anonymous()
    wf = await alice.mutation("workflows:createWorkflow", {"task": "t"})
    assert (await alice.query("workflows:getWorkflow", {"workflowId": wf}))["userId"] == "https://ripple.test|alice"
    assert await bob.query("workflows:getWorkflow", {"workflowId": wf}) is None

    mine = await alice.subscribe("workflows:getWorkflow", {"workflowId": wf})
    theirs = await bob.subscribe("workflows:getWorkflow", {"workflowId": wf})
    nobody = await anon.subscribe("workflows:getWorkflow", {"workflowId": wf})
    assert (await mine.next())["task"] == "t" and await theirs.next() is None
    with pytest.raises(QueryFailed, match="workflows:getWorkflow failed: .*signed in") as failed:
        await nobody.next()
    assert failed.value.data is None
    await alice.mutation("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "completed"})
    assert (await mine.next())["status"] == "completed"

    # The server's own errors, typed; a ConvexError keeps its data.
    with pytest.raises(AuthRequired):
        await anon.mutation("workflows:createWorkflow", {"task": "t"})
    with pytest.raises(ConvexError) as exc:
        await bob.mutation("workflows:updateWorkflowStatus", {"workflowId": wf, "status": "failed"})
    assert exc.value.data["code"] == "NOT_FOUND"
    with pytest.raises(RippleError, match="workflows:createWorkflow is a mutation, not a query"):
        await alice.query("workflows:createWorkflow", {"task": "t"})

    # The HTTP API with the same credentials; the admin over the sync socket.
    body = (await alice.http("query", "workflows:getWorkflow", {"workflowId": wf})).json()
    assert body["status"] == "success" and body["value"]["status"] == "completed"
    assert (await anon.http("query", "workflows:getWorkflow", {"workflowId": wf})).json()["status"] == "error"
    await alice.mutation("videos:create", {"twitchId": "v", "title": "V"})
    progress = await ripple_app.as_admin().subscribe("videos:getByTwitchId", {"twitchId": "v"})
    assert (await progress.next())["status"] == "Queued"


async def test_each_test_has_a_database_of_its_own(ripple_app: RippleApp) -> None:
    conn = await asyncpg.connect(ripple_app.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM videos") == 0
    finally:
        await conn.close()
    await ripple_app.as_user("alice").mutation("videos:create", {"twitchId": "only-here", "title": "t"})


async def test_the_suite_and_the_plugin_share_one_postgres(ripple_app: RippleApp, pg_server: str) -> None:
    """The suite's databases and the plugin's live on one server: a second embedded PostgreSQL per session would
    cost its start-up and memory on every run (tests/conftest.py's pg_server is the plugin's ripple_postgres)."""
    name = urlsplit(ripple_app.database_url).path.lstrip("/")
    conn = await asyncpg.connect(pg_server)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", unquote(name)) == 1
    finally:
        await conn.close()


async def test_calls_run_concurrently(ripple_app: RippleApp) -> None:
    alice = ripple_app.as_user("alice")
    ids = await asyncio.gather(
        *(alice.mutation("videos:create", {"twitchId": f"c{i}", "title": "t"}) for i in range(8))
    )
    assert len(set(ids)) == 8


async def test_admin_reaches_internal_functions_on_every_path(ripple_app: RippleApp) -> None:
    alice, admin = ripple_app.as_user("alice"), ripple_app.as_admin()
    owner = ripple_app.token_identifier("alice")
    gen = await admin.mutation("generations:store", {"userId": owner, "prompt": "p", "code": "c", "rawCode": "r"})
    # The owner key a function stores for alice is the one token_identifier gives: she reads her generation.
    assert (await alice.query("generations:get", {"id": gen}))["userId"] == owner
    assert (await admin.query("generations:getInternal", {"id": gen}))["_id"] == gen
    body = (await admin.http("query", "generations:getInternal", {"id": gen})).json()
    assert (body["status"], body["value"]["_id"]) == ("success", gen)
    internal = await admin.subscribe("generations:getInternal", {"id": gen})
    assert (await internal.next())["_id"] == gen
    # Anyone else is told there is no such function, in-process as over HTTP.
    for caller in (alice, ripple_app.anonymous()):
        with pytest.raises(FunctionNotFound):
            await caller.query("generations:getInternal", {"id": gen})
    body = (await alice.http("query", "generations:getInternal", {"id": gen})).json()
    assert body["status"] == "error" and "Could not find public function" in body["errorMessage"]


async def test_store_file_stores_as_an_upload_does(ripple_app: RippleApp) -> None:
    data = b"\x89PNG\r\n\x1a\n not really an image"
    png, untyped = await ripple_app.store_file(data, "image/png"), await ripple_app.store_file(b"abc")
    rows = await ripple_app.as_admin().query("generations:referenceFiles", {"ids": [png, untyped]})
    assert [(r["_id"], r["size"], r.get("contentType")) for r in rows] == [
        (png, len(data), "image/png"),
        (untyped, 3, None),
    ]
    async with httpx.AsyncClient(base_url=ripple_app.url) as http:
        served = await http.get(f"/api/storage/{png}")
    assert (served.status_code, served.content, served.headers["content-type"]) == (200, data, "image/png")


@pytest.mark.parametrize("ripple_settings", [{"storage_max_upload_bytes": 4}])
async def test_store_file_reports_a_refused_upload(ripple_app: RippleApp) -> None:
    with pytest.raises(RuntimeError, match="storing a 5-byte file failed: HTTP 413 .*upload limit"):
        await ripple_app.store_file(b"12345")
    assert len(await ripple_app.store_file(b"1234")) == 36


@pytest.mark.parametrize("ripple_settings", [{"max_documents_read": 2}])
async def test_settings_fixture_overrides_the_server(ripple_app: RippleApp) -> None:
    alice = ripple_app.as_user("alice")
    for i in range(3):
        await alice.mutation("videos:create", {"twitchId": f"s{i}", "title": "t"})
    with pytest.raises(RippleError, match="read"):
        await alice.query("videos:listByStatus", {})


# A project of its own: one app module, its schema (a copy of Ripple's schema.sql, whose system part every schema
# carries, and one table of its own), its pytest configuration; nothing of this repository's tests.
_APP = """
from server import mutation, query


@mutation(name="notes:add")
async def add(ctx, text: str) -> str:
    identity = await ctx.auth.require_user("add a note")
    return await ctx.db.insert("notes", {"text": text, "author": identity["subject"]})


@query(name="notes:list")
async def list_notes(ctx) -> list:
    return await ctx.db.query("notes").order("asc").collect()
"""

_TABLE = """
CREATE TABLE IF NOT EXISTS notes (
    _id            text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('notes'),
    _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(),
    text           text COLLATE "C" NOT NULL,
    author         text COLLATE "C" NOT NULL
);
CREATE INDEX IF NOT EXISTS "notes__by_author" ON notes (author NULLS FIRST, _creation_time, _id);
SELECT _ripple_on_start();
"""

_TESTS = """
import pytest

from server.errors import AuthRequired


@pytest.mark.asyncio
async def test_notes_live(ripple_app):
    alice = ripple_app.as_user("alice")
    notes = await alice.subscribe("notes:list")
    assert await notes.next() == []
    await alice.mutation("notes:add", {"text": "hello"})
    assert [(n["text"], n["author"]) for n in await notes.next()] == [("hello", "alice")]
    with pytest.raises(AuthRequired):
        await ripple_app.anonymous().mutation("notes:add", {"text": "nope"})


@pytest.mark.asyncio
async def test_fresh_database(ripple_app):
    assert await ripple_app.anonymous().query("notes:list") == []
"""


def _entry_point_dist(site: Path) -> None:
    """A distribution on the path whose only content is this repository's `pytest11` entry point, as pip would
    record it: pytest then loads the plugin as it would for a project that pip-installed Ripple."""
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    dist = site / "ripple_plugin_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ripple-plugin-probe\nVersion: 0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[pytest11]\n{lines}")


def test_plugin_serves_a_project_of_its_own(tmp_path: Path, pg_server: str) -> None:
    project = tmp_path / "notes_project"
    project.mkdir()
    (project / "notes_app.py").write_text(_APP)
    (project / "schema.sql").write_text((ROOT / "schema.sql").read_text() + _TABLE)
    (project / "test_notes.py").write_text(_TESTS)
    (project / "pytest.ini").write_text(
        textwrap.dedent("""
        [pytest]
        pythonpath = .
        ripple_modules = notes_app
        ripple_schema = schema.sql
        asyncio_default_fixture_loop_scope = function
        """)
    )
    site = tmp_path / "site"
    _entry_point_dist(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL", "PYTEST_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), RIPPLE_TEST_DATABASE_URL=pg_server)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr
