"""Project folders: `ripple init` writes one whose own test passes; `ripple dev` reloads it in place."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import functions  # noqa: F401  (the seed project holds the package name in this process, as under the suite's servers)
from server.cli import main
from server.functions.registry import module_name
from server.project import Project, ProjectError, seed_project
from tests.clients.driver import ClientDriver
from tests.support.ws import SyncClient

ROOT = Path(__file__).resolve().parent.parent


def test_module_names_are_paths_below_the_functions_package() -> None:
    assert module_name("functions.messages") == "messages"
    assert module_name("functions.admin.user_roles") == "admin/userRoles"
    assert module_name("functions.generate_animation") == "generateAnimation"
    assert module_name("some_app.notes") == "notes"


def test_init_refuses_a_folder_with_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["init", str(tmp_path)]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_open_says_what_a_project_lacks(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="no schema.sql and no functions/__init__.py"):
        Project.open(tmp_path)


def test_init_writes_a_project_whose_own_test_passes(tmp_path: Path, pg_server: str) -> None:
    project = tmp_path / "chat"
    assert main(["init", str(project)]) == 0
    specs = Project.open(project).load()
    paths = sorted(s.path for s in specs)
    # The project's own functions, and the admin console's system functions every registry carries.
    assert [p for p in paths if not p.startswith("_system/")] == ["messages:list", "messages:send"]
    assert "_system/data:tables" in paths
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL", "PYTEST_"))}
    env.update(PYTHONPATH=str(ROOT), RIPPLE_TEST_DATABASE_URL=pg_server)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr


def test_a_second_project_loads_beside_the_seed_without_taking_its_package(tmp_path: Path) -> None:
    """One process, two `functions` packages: the seed's (imported as the suite's servers import it) keeps the
    name; the second project's functions are loaded and registered all the same."""
    import functions.generations as seed_generations

    project = tmp_path / "chat"
    assert main(["init", str(project)]) == 0
    paths = {s.path for s in Project.open(project).load()}
    assert {"messages:list", "messages:send"} <= paths and "generations:listByParent" not in paths
    import functions.generations

    assert functions.generations is seed_generations and sys.modules["functions"].__file__ == str(
        ROOT / "functions" / "__init__.py"
    )
    assert str(project) not in sys.path
    assert "messages" not in {n.rpartition(".")[2] for n in sys.modules if n.startswith("functions.")}
    assert seed_project().root == ROOT  # what `ripple serve` serves when given no project, in a source checkout


_PROBE = """
from server import mutation, query


@query
async def version(ctx) -> str:
    return "{version}"
"""

_PIN = """

@mutation
async def pin(ctx, body: str) -> str:
    return await ctx.db.insert("messages", {"channel": "c", "author": "a", "body": body, "pinned": True})
"""


_SHOUT = """

@mutation
async def shout(ctx, body: str) -> str:
    return body.upper()
"""


def _updated(qid: int) -> Callable[[dict[str, Any]], Any]:
    def matches(message: dict[str, Any]) -> Any:
        return message["type"] == "Transition" and [
            m for m in message["modifications"] if m["queryId"] == qid and m["type"] == "QueryUpdated"
        ]

    return matches


def _value(message: dict[str, Any], qid: int) -> Any:
    return next(m["value"] for m in message["modifications"] if m["queryId"] == qid)


class _Dev:
    """`ripple dev` on a project, in a process of its own; its stderr is collected in a file."""

    def __init__(self, project: Path, dsn: str, **settings: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RIPPLE_", "DATABASE_URL"))}
        env.update(PYTHONPATH=str(ROOT), DATABASE_URL=dsn, RIPPLE_DATA_DIR=str(project / ".ripple"), **settings)
        self.err_path = project.parent / "dev.err"
        self.err = self.err_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "dev", str(project), "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "serving on " in line:
                self.url = line.split("serving on ")[1].strip().replace("http://", "ws://") + "/api/sync"
                break
        else:
            raise AssertionError(f"ripple dev did not start: {self.err_path.read_text()}")

    async def started(self) -> None:
        await self.stderr_says("ripple ready", timeout_s=30)

    async def stderr_says(self, text: str, timeout_s: float = 10.0) -> None:
        for _ in range(int(timeout_s / 0.1)):
            if text in self.err_path.read_text():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"ripple dev never said {text!r}: {self.err_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.err.close()


async def test_dev_reloads_code_and_schema_under_a_live_subscription(tmp_path: Path, fresh_dsn: str) -> None:
    project = tmp_path / "chat"
    assert main(["init", str(project)]) == 0
    probe = project / "functions" / "probe.py"
    probe.write_text(_PROBE.format(version="one"))
    dev = _Dev(project, fresh_dsn)
    try:
        await dev.started()
        client = await SyncClient.connect(dev.url)
    except BaseException:
        dev.stop()
        raise
    try:
        qid = await client.subscribe("probe:version", wait=False)
        assert _value(await client.expect(_updated(qid)), qid) == "one"

        probe.write_text(_PROBE.format(version="two, reloaded"))
        assert _value(await client.expect(_updated(qid)), qid) == "two, reloaded"

        probe.write_text(_PROBE.format(version="three") + "\ndef broken(:\n")
        await dev.stderr_says("SyntaxError")
        await dev.stderr_says("the last good code keeps serving")
        assert (await client.mutation("messages:send", {"channel": "c", "author": "a", "body": "b"}))["success"]

        schema = project / "schema.sql"
        body = 'body           text COLLATE "C" NOT NULL'
        schema.write_text(schema.read_text().replace(body, body + ",\n    pinned         boolean"))
        probe.write_text(_PROBE.format(version="four") + _PIN)
        assert _value(await client.expect(_updated(qid)), qid) == "four"
        response = await client.mutation("probe:pin", {"body": "pinned"})
        assert response["success"], response
        listed = await client.subscribe("messages:list", {"channel": "c"}, wait=False)
        rows = _value(await client.expect(_updated(listed)), listed)
        assert [(r["body"], r.get("pinned")) for r in rows] == [("b", None), ("pinned", True)]
    finally:
        await client.close()
        dev.stop()


async def test_dev_reload_reaches_a_subscribed_npm_client_and_the_console(tmp_path: Path, fresh_dsn: str) -> None:
    """The official npm client stays connected across a reload and gets the new code's result; the admin console's
    system functions and function list serve the project's code, the reloaded one included."""
    project = tmp_path / "chat"
    assert main(["init", str(project)]) == 0
    probe = project / "functions" / "probe.py"
    probe.write_text(_PROBE.format(version="one"))
    key = "dev-console-admin-key"
    dev = _Dev(project, fresh_dsn, RIPPLE_ADMIN_KEY=key)
    try:
        await dev.started()
        url = dev.url.replace("ws://", "http://").removesuffix("/api/sync")
        async with await ClientDriver.start("node", url) as client, httpx.AsyncClient(base_url=url) as http:
            await client.subscribe("v", "probe:version", {})
            assert (await client.next_update("v"))["value"] == "one"

            generated = project / "_generated"
            assert "version: FunctionReference" in (generated / "api.d.ts").read_text()  # written at start
            assert "shout" not in (generated / "api.py").read_text()

            probe.write_text(_PROBE.format(version="two, reloaded") + _SHOUT)
            update = await client.expect(lambda e: e.get("event") == "update" and e.get("value") == "two, reloaded")
            assert update["id"] == "v"
            for _ in range(100):  # ...and rewritten after the reload
                if "shout" in (generated / "api.py").read_text():
                    break
                await asyncio.sleep(0.1)
            assert (
                'shout: FunctionReference<"mutation", "public", { body: string }, string>'
                in (generated / "api.d.ts").read_text()
            )
            assert "def shout(self, *, body: str) -> str:" in (generated / "api.py").read_text()
            result = await client.call("mutation", "probe:shout", {"body": "after reload"})
            assert result["event"] == "result" and result["value"] == "AFTER RELOAD", result

            admin = {"Authorization": f"Convex {key}"}
            listed = (await http.get("/api/admin/functions", headers=admin)).json()["functions"]
            assert {"probe:version", "probe:shout", "messages:send"} <= {f["path"] for f in listed}
            tables = await http.post("/api/query", json={"path": "_system/data:tables", "args": {}}, headers=admin)
            assert tables.json()["status"] == "success", tables.text
            assert "messages" in {t["name"] for t in tables.json()["value"]}
    finally:
        dev.stop()


_HTTP = """
from starlette.requests import Request
from starlette.responses import JSONResponse

from server import HttpRouter, http_action


@http_action
async def post_message(ctx, request: Request) -> JSONResponse:
    body = await request.json()
    await ctx.run_mutation("messages:send", {"channel": "web", "author": "hook", "body": body["text"]})
    return JSONResponse({"messages": len(await ctx.run_query("messages:list", {"channel": "web"}))})


http = HttpRouter()
http.route(path="/post", method="POST", handler=post_message)
"""

_CRONS = """
from server import Crons, internal_mutation


@internal_mutation
async def tick(ctx) -> None:
    await ctx.db.insert("messages", {"channel": "cron", "author": "cron", "body": "tick"})


crons = Crons()
crons.interval("tick", {"seconds": 0.2}, "crons:tick", {})
"""


async def test_a_projects_http_and_crons_modules_are_served(tmp_path: Path, fresh_dsn: str) -> None:
    """As a Convex app's convex/http.ts and convex/crons.ts: functions/http.py's routes answer under /http, and
    functions/crons.py's jobs run."""
    import httpx

    project = tmp_path / "chat"
    assert main(["init", str(project)]) == 0
    (project / "functions" / "http.py").write_text(_HTTP)
    (project / "functions" / "crons.py").write_text(_CRONS)
    dev = _Dev(project, fresh_dsn)
    try:
        await dev.started()
        base = dev.url.replace("ws://", "http://").removesuffix("/api/sync")
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            posted = await http.post("/http/post", json={"text": "hi"})
            assert posted.status_code == 200 and posted.json() == {"messages": 1}, posted.text
            for _ in range(100):
                got = await http.post("/api/query", json={"path": "messages:list", "args": {"channel": "cron"}})
                if len(got.json().get("value") or []) >= 2:
                    break
                await asyncio.sleep(0.1)
            assert len(got.json()["value"]) >= 2, got.text  # the 200 ms interval ran, more than once
    finally:
        dev.stop()
