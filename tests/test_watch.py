"""`ripple run` and `ripple watch` as a user runs them: subprocesses of the real CLI against a real server.

The server runs in the test's event loop, so the CLI must run as an asyncio subprocess (a blocking
`subprocess.run` would stall the server it talks to). stdout is a pipe, so `watch` prints one frame per result.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
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
        self._decoder = codecs.getincrementaldecoder("utf-8")()  # a read may end inside a box-drawing character

    async def until(self, text: str, timeout_s: float = 15) -> str:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (at := self.output.find(text, self._seen)) < 0:
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(4096), max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"no {text!r} after {timeout_s}s; output:\n{self.output}") from None
            if not chunk:
                raise AssertionError(f"watch exited before printing {text!r}; output:\n{self.output}")
            self.output += self._decoder.decode(chunk)
        frame, self._seen = self.output[self._seen : at + len(text)], at + len(text)
        return frame

    async def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(self.proc.communicate(), 15)
        assert self.proc.returncode is not None
        return self.proc.returncode


StartWatch = Callable[..., Awaitable[Watcher]]


@pytest.fixture
async def start_watch() -> AsyncIterator[StartWatch]:
    """`await start_watch(url, function, args, *cli_options, **env)`; every watcher still running is killed after."""
    started: list[Watcher] = []

    async def start(url: str, function: str, args: dict[str, Any], *extra: str, **env: str) -> Watcher:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "watch", function, json.dumps(args), "--url", url, *extra,
            cwd=ROOT, env={**ENV, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        started.append(Watcher(proc))
        return started[-1]

    yield start
    for watcher in started:
        if watcher.proc.returncode is None:
            watcher.proc.kill()
            await watcher.proc.wait()


def progress(twitch_id: str, job_id: str, percent: float, stage: str, eta_s: float) -> dict[str, Any]:
    """A worker's `videos:updateJobProgress` report."""
    return {
        "twitchId": twitch_id,
        "jobId": job_id,
        "progressPercentage": percent,
        "status": stage,
        "currentStage": stage,
        "estimatedCompletionSeconds": eta_s,
    }


@pytest.fixture
async def job(ripple: RippleServer) -> str:
    """A video whose job `job-1` is 10% into Downloading."""
    await ripple.call("videos:create", {"twitchId": "tw1", "title": "Speedrun VOD"}, admin=True)
    await ripple.call("videos:updateJobProgress", progress("tw1", "job-1", 10, "Downloading", 95), admin=True)
    return "job-1"


async def test_run_prints_the_result_as_json(ripple: RippleServer, job: str) -> None:
    code, out, err = await ripple_cli("run", "videos:getJobById", json.dumps({"jobId": job}), "--url", ripple.url)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["jobId"] == job and doc["title"] == "Speedrun VOD" and doc["progressPercentage"] == 10


async def test_run_calls_as_the_admin_or_a_user(ripple: RippleServer, job: str) -> None:
    report = json.dumps(progress("tw1", job, 60, "Transcribing", 40))
    code, out, err = await ripple_cli(
        "run", "videos:updateJobProgress", report, "--url", ripple.url, "--admin-key", ADMIN_KEY
    )
    assert (code, out.strip()) == (0, "null"), err
    assert (await ripple.call("videos:getJobById", {"jobId": job}))["progressPercentage"] == 60
    code, out, _ = await ripple_cli("run", "testing:whoami", "--url", ripple.url, "--token", ripple.token("ann"))
    assert code == 0 and json.loads(out)["subject"] == "ann"


async def test_run_failure_exits_1_with_the_message(ripple: RippleServer, job: str) -> None:
    report = json.dumps(progress("tw1", job, 60, "Transcribing", 40))
    code, out, err = await ripple_cli("run", "videos:updateJobProgress", report, "--url", ripple.url)
    assert (code, out) == (1, "") and "videos:updateJobProgress failed" in err and "admin" in err
    code, out, err = await ripple_cli(
        "run", "videos:create", '{"twitchId": "tw1", "title": "again"}', "--url", ripple.url, "--admin-key", ADMIN_KEY
    )
    assert code == 1 and "already exists" in err and '"code": "ALREADY_EXISTS"' in err  # errorData, as JSON
    code, _, err = await ripple_cli("run", "videos:listByStatus", "--url", ripple.url, "--admin-key", "wrong")
    assert code == 1 and "admin key" in err
    code, _, err = await ripple_cli("run", "videos:listByStatus", "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach" in err


async def test_watch_redraws_a_job_when_a_mutation_changes_it(
    ripple: RippleServer, job: str, start_watch: StartWatch
) -> None:
    watcher = await start_watch(ripple.url, "videos:getJobById", {"jobId": job})
    frame = await watcher.until("ETA 1m 35s")
    assert "Speedrun VOD" in frame and "10%" in frame and "status Downloading" in frame
    await watcher.until("job-1")  # the panel's subtitle
    await ripple.call("videos:updateJobProgress", progress("tw1", job, 60, "Transcribing", 40), admin=True)
    frame = await watcher.until("ETA 40s")
    assert "update 2" in frame and "60%" in frame and "status Transcribing" in frame
    await ripple.call("videos:completeJob", {"twitchId": "tw1", "jobId": job}, admin=True)
    assert "100%" in await watcher.until("status Completed")
    assert await watcher.interrupt() == 0  # Ctrl-C is the normal way out


async def test_watch_draws_a_table_for_a_list_of_jobs(ripple: RippleServer, job: str, start_watch: StartWatch) -> None:
    watcher = await start_watch(
        ripple.url, "videos:listByStatus", {"status": "Downloading"}, RIPPLE_WATCH_MAX_UPDATES="2"
    )
    assert "1 jobs" in await watcher.until("10%")
    await ripple.call("videos:create", {"twitchId": "tw2", "title": "Second"}, admin=True)
    await ripple.call("videos:updateJobProgress", progress("tw2", "job-2", 35, "Downloading", 20), admin=True)
    frame = await watcher.until("35%")  # newest first: Second, then Speedrun VOD
    assert "2 jobs" in frame and "Second" in frame and "update 2" in frame
    rest = await watcher.until("1m 35s")
    assert "Speedrun VOD" in rest and "10%" in rest
    await asyncio.wait_for(watcher.proc.wait(), 15)
    assert watcher.proc.returncode == 0


async def test_watch_shows_plain_values_as_json_and_failures_as_errors(
    ripple: RippleServer, start_watch: StartWatch
) -> None:
    watcher = await start_watch(
        ripple.url, "testing:whoami", {}, "--token", ripple.token("bob", name="Bob"), RIPPLE_WATCH_MAX_UPDATES="1"
    )
    assert '"subject": "bob"' in await watcher.until('"name": "Bob"')
    assert await watcher.proc.wait() == 0
    watcher = await start_watch(ripple.url, "testing:nope", {}, RIPPLE_WATCH_MAX_UPDATES="1")
    assert "error" in await watcher.until("Could not find public function for 'testing:nope'")
    assert await watcher.proc.wait() == 0


async def test_watch_exits_1_when_the_token_is_refused(ripple: RippleServer, start_watch: StartWatch) -> None:
    watcher = await start_watch(ripple.url, "testing:whoami", {}, "--token", "not-a-jwt")
    await watcher.until("AuthError")
    assert await asyncio.wait_for(watcher.proc.wait(), 15) == 1


async def test_watch_reconnects_when_the_socket_drops(start_watch: StartWatch) -> None:
    """A fake sync endpoint that hangs up after its first answer: the watcher must come back and resubscribe."""
    connections: list[list[dict[str, Any]]] = []

    async def handler(ws: ServerConnection) -> None:
        received = [json.loads(await ws.recv()) for _ in range(2)]  # Connect, ModifyQuerySet
        connections.append(received)
        update = {"type": "QueryUpdated", "queryId": 0, "value": {"socket": len(connections)}, "logLines": []}
        start, end = (
            {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="},
            {"querySet": 1, "identity": 0, "ts": "AQAAAAAAAAA="},
        )
        await ws.send(
            json.dumps(
                {
                    "type": "Transition",
                    "startVersion": start,
                    "endVersion": end,
                    "modifications": [{**update, "journal": None}],
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
