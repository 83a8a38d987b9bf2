"""`ripple run` and `ripple watch` as a user runs them: subprocesses of the real CLI against a real server.

The server runs in the test's event loop, so the CLI must run as an asyncio subprocess (a blocking
`subprocess.run` would stall the server it talks to). stdout is a pipe, so `watch` prints one frame per result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

import tests.support.testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import ADMIN_KEY, RippleServer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "COLUMNS": "100", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
ENV.pop("FORCE_COLOR", None)
ENV.pop("RIPPLE_WATCH_MAX_UPDATES", None)


async def ripple_cli(*argv: str, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *argv,
        cwd=ROOT,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Watcher:
    """A running `ripple watch`; `until(text)` waits for `text` to appear in its output after what was seen so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc, self.output, self._seen = proc, "", 0

    async def until(self, text: str, timeout_s: float = 15) -> str:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (at := self.output.find(text, self._seen)) < 0:
            chunk = await asyncio.wait_for(self.proc.stdout.read(4096), max(0.01, deadline - loop.time()))
            if not chunk:
                raise AssertionError(f"watch exited before printing {text!r}; output:\n{self.output}")
            self.output += chunk.decode()
        frame, self._seen = self.output[self._seen : at + len(text)], at + len(text)
        return frame

    async def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(self.proc.communicate(), 15)
        assert self.proc.returncode is not None
        return self.proc.returncode


async def start_watch(url: str, function: str, args: dict[str, Any], *extra: str, **env: str) -> Watcher:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "watch",
        function,
        json.dumps(args),
        "--url",
        url,
        *extra,
        cwd=ROOT,
        env={**ENV, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Watcher(proc)


@pytest.fixture
async def job(ripple: RippleServer) -> AsyncIterator[str]:
    yield await ripple.call(
        "testing:insert",
        {
            "table": "videos",
            "doc": {
                "twitchId": "tw1",
                "title": "Speedrun VOD",
                "status": "Downloading",
                "jobId": "job-1",
                "progressPercentage": 10,
                "currentStage": "download",
                "estimatedCompletionSeconds": 95,
            },
        },
    )


async def test_run_prints_the_result_as_json(ripple: RippleServer, job: str) -> None:
    code, out, err = await ripple_cli("run", "testing:get", json.dumps({"id": job}), "--url", ripple.url)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["_id"] == job and doc["title"] == "Speedrun VOD" and doc["progressPercentage"] == 10


async def test_run_calls_mutations_with_a_token(ripple: RippleServer) -> None:
    code, out, _ = await ripple_cli("run", "testing:whoami", "--url", ripple.url, "--token", ripple.token("ann"))
    assert code == 0 and json.loads(out)["subject"] == "ann"
    code, out, _ = await ripple_cli(
        "run",
        "testing:insert",
        '{"table": "videos", "doc": {"twitchId": "m", "title": "t", "status": "Queued"}}',
        "--url",
        ripple.url,
    )
    assert code == 0 and len(json.loads(out)) == 36


async def test_run_failure_exits_1_with_the_message(ripple: RippleServer) -> None:
    code, out, err = await ripple_cli("run", "testing:nope", "--url", ripple.url)
    assert (code, out) == (1, "") and "testing:nope" in err
    code, _, err = await ripple_cli("run", "testing:secret", "--url", ripple.url, "--admin-key", "wrong")
    assert code == 1 and "admin key" in err
    code, out, err = await ripple_cli("run", "testing:whoami", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach" in err


async def test_run_with_the_admin_key(ripple: RippleServer) -> None:
    code, out, err = await ripple_cli(
        "run", "testing:viaAction", '{"twitchId": "adm"}', "--url", ripple.url, "--admin-key", ADMIN_KEY
    )
    assert code == 0, err
    assert json.loads(out)["secret"] == "internal"


async def test_watch_redraws_a_job_when_a_mutation_changes_it(ripple: RippleServer, job: str) -> None:
    watcher = await start_watch(ripple.url, "testing:get", {"id": job})
    frame = await watcher.until("ETA 1m 35s")
    assert "Speedrun VOD" in frame and "10%" in frame and "Downloading" in frame and "stage download" in frame
    await ripple.call(
        "testing:patch",
        {
            "id": job,
            "fields": {
                "progressPercentage": 60,
                "currentStage": "transcribe",
                "status": "Transcribing",
                "estimatedCompletionSeconds": 40,
            },
        },
    )
    frame = await watcher.until("ETA 40s")
    assert "update 2" in frame and "60%" in frame and "Transcribing" in frame and "stage transcribe" in frame
    await ripple.call("testing:patch", {"id": job, "fields": {"progressPercentage": 100, "status": "Completed"}})
    assert "100%" in await watcher.until("Completed")
    assert await watcher.interrupt() == 0  # Ctrl-C is the normal way out


async def test_watch_draws_a_table_for_a_list_of_jobs(ripple: RippleServer, job: str) -> None:
    watcher = await start_watch(
        ripple.url, "testing:videosByStatus", {"status": "Downloading"}, RIPPLE_WATCH_MAX_UPDATES="2"
    )
    assert "1 jobs" in await watcher.until("10%")
    await ripple.call(
        "testing:insert",
        {
            "table": "videos",
            "doc": {
                "twitchId": "tw2",
                "title": "Second",
                "status": "Downloading",
                "progressPercentage": 35,
                "currentStage": "download",
            },
        },
    )
    frame = await watcher.until("35%")
    assert "2 jobs" in frame and "Speedrun VOD" in frame and "Second" in frame
    await asyncio.wait_for(watcher.proc.wait(), 15)
    assert watcher.proc.returncode == 0


async def test_watch_shows_plain_values_as_json_and_failures_as_errors(ripple: RippleServer) -> None:
    watcher = await start_watch(
        ripple.url, "testing:whoami", {}, "--token", ripple.token("bob", name="Bob"), RIPPLE_WATCH_MAX_UPDATES="1"
    )
    assert '"subject": "bob"' in await watcher.until('"name": "Bob"')
    assert await watcher.proc.wait() == 0
    watcher = await start_watch(ripple.url, "testing:nope", {}, RIPPLE_WATCH_MAX_UPDATES="1")
    assert "error" in await watcher.until("Could not find public function for 'testing:nope'")
    assert await watcher.proc.wait() == 0


async def test_watch_exits_1_when_the_token_is_refused(ripple: RippleServer) -> None:
    watcher = await start_watch(ripple.url, "testing:whoami", {}, "--token", "not-a-jwt")
    await watcher.until("AuthError")
    assert await asyncio.wait_for(watcher.proc.wait(), 15) == 1


async def test_watch_reconnects_when_the_socket_drops() -> None:
    """A fake sync endpoint that hangs up after its first answer: the watcher must come back and resubscribe."""
    connections: list[list[dict[str, Any]]] = []

    async def handler(ws: ServerConnection) -> None:
        received = [json.loads(await ws.recv()) for _ in range(2)]  # Connect, ModifyQuerySet
        connections.append(received)
        ts = "AQAAAAAAAAA="
        await ws.send(
            json.dumps(
                {
                    "type": "Transition",
                    "startVersion": {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="},
                    "endVersion": {"querySet": 1, "identity": 0, "ts": ts},
                    "modifications": [
                        {
                            "type": "QueryUpdated",
                            "queryId": 0,
                            "value": {"socket": len(connections)},
                            "logLines": [],
                            "journal": None,
                        }
                    ],
                }
            )
        )
        if len(connections) == 1:
            await ws.close(1011, "InternalServerError")
        else:
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else 0
        watcher = await start_watch(
            f"http://127.0.0.1:{port}", "jobs:get", {"jobId": "j"}, RIPPLE_WATCH_MAX_UPDATES="2"
        )
        await watcher.until('"socket": 1')
        assert "reconnecting in" in await watcher.until('"socket": 2')
        assert await asyncio.wait_for(watcher.proc.wait(), 15) == 0
    assert connections[1][0]["connectionCount"] == 1 and "1011" in connections[1][0]["lastCloseReason"]
    assert connections[1][1]["modifications"] == [
        {"type": "Add", "queryId": 0, "udfPath": "jobs:get", "args": [{"jobId": "j"}]}
    ]
