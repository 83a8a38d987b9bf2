"""`ripple run` and `ripple watch`: call a function once over HTTP, or follow a query live over the sync socket.

Both speak only the public wire protocol (the HTTP API and the Convex sync WebSocket), never the server's internals,
so they work against any deployment from outside its process, exactly as the official clients do, and double as a
smoke test of one. `watch` redraws in place on a terminal; when stdout is not a terminal (a pipe, a log file, a test)
it prints every new result as a frame of its own, because rich's `Live` would only print the last one there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from rich.console import Console, Group, RenderableType
from rich.json import JSON
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from server import values

__all__ = ["run_once", "watch"]

CLIENT_NAME = "ripple-cli"
# Stop `watch` after this many results (0 or unset: never). For scripts and tests; people press Ctrl-C.
MAX_UPDATES_ENV = "RIPPLE_WATCH_MAX_UPDATES"
# Reconnect backoff: short first, so a restarting server is picked up at once; capped like the JS client's 16 s.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 16.0
# Actions may run for minutes (the server's own timeout bounds them); only connecting has to be quick.
HTTP_TIMEOUT = httpx.Timeout(10.0, read=None)
_ZERO_VERSION = {"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="}
_JOB_KEYS = frozenset({"progressPercentage", "currentStage", "jobId"})
_STATUS_STYLE = {"Completed": "bold green", "Failed": "bold red", "Queued": "dim"}


def run_once(
    url: str, function: str, args: dict[str, Any], *, token: str | None = None, admin_key: str | None = None
) -> int:
    """Call `function` (a query, mutation or action) once through `POST /api/function` and print its result.

    Asks for clean JSON (`format: "json"`) so the output pipes straight into `jq`. Returns 1, with the server's
    message on stderr, when the call fails, the credential is refused or the server cannot be reached.
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would bury the result
    headers = {"Convex-Client": CLIENT_NAME}
    if admin_key or token:
        headers["Authorization"] = f"Convex {admin_key}" if admin_key else f"Bearer {token}"
    request = {"path": function, "args": args, "format": "json"}
    try:
        response = httpx.post(f"{url.rstrip('/')}/api/function", json=request, headers=headers, timeout=HTTP_TIMEOUT)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _fail(f"{function}: cannot reach {url}: {exc}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _fail(f"{function}: HTTP {response.status_code}, not a Convex reply: {response.text[:500]}")
    if response.status_code != 200:
        return _fail(f"{function}: HTTP {response.status_code} {body.get('code')}: {body.get('message')}")
    if body.get("status") != "success":
        return _fail(f"{function} failed: {body.get('errorMessage')}", body.get("errorData"))
    out = Console()
    if out.is_terminal:
        out.print_json(data=body.get("value"))
    else:
        print(json.dumps(body.get("value"), indent=2, ensure_ascii=False), flush=True)
    return 0


def _fail(message: str, data: Any = None) -> int:
    err = Console(stderr=True)
    err.print(Text(message, style="red"))
    if data is not None:
        err.print_json(data=data)
    return 1


def watch(
    url: str,
    function: str,
    args: dict[str, Any],
    *,
    token: str | None = None,
    admin_key: str | None = None,
    max_updates: int | None = None,
) -> int:
    """Subscribe to the query `function(args)` and redraw its result on every change until Ctrl-C (exit 0).

    Reconnects with backoff when the socket drops, as the official clients do. Exits 1 only on errors a reconnect
    cannot fix: a refused token (AuthError) or a protocol error (FatalError). `max_updates` (or the environment
    variable `RIPPLE_WATCH_MAX_UPDATES`) makes it exit 0 after that many results, for scripts and tests.
    """
    if max_updates is None:
        max_updates = int(os.environ.get(MAX_UPDATES_ENV) or 0)
    view = _View(function, Console())
    try:
        credential = ("Admin", admin_key) if admin_key else ("User", token) if token else None
        return asyncio.run(_follow(_sync_url(url), function, args, credential, view, max_updates))
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()


def _sync_url(url: str) -> str:
    """http(s)://host[/anything] → ws(s)://host/api/sync, as the Rust and Python clients map a deployment URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise SystemExit(f"--url must start with http:// or https://, got {url!r}")
    return urlunsplit((scheme, parts.netloc, "/api/sync", "", ""))


async def _follow(
    ws_url: str,
    function: str,
    args: dict[str, Any],
    credential: tuple[str, str] | None,
    view: _View,
    max_updates: int,
) -> int:
    """Run sockets one after another until the watch ends; each new one re-sends the whole subscription."""
    updates, attempt, reason, backoff_s = 0, 0, "InitialConnect", BACKOFF_FIRST_S
    while True:
        try:
            async with connect(ws_url, additional_headers={"Convex-Client": CLIENT_NAME}, open_timeout=10) as ws:
                view.set_status("connected")
                for message in _hello(function, args, credential, attempt, reason):
                    await ws.send(json.dumps(message))
                version: dict[str, Any] = dict(_ZERO_VERSION)  # versions restart on every socket
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("type") in ("AuthError", "FatalError"):
                        view.show_error(f"{msg['type']}: {msg.get('error')}")
                        return 1
                    if msg.get("type") != "Transition":
                        continue  # Ping, and responses to requests this client never makes
                    if msg["startVersion"] != version:  # we may have missed a change: start over, as Rust does
                        raise ConnectionError(f"transition starts at {msg['startVersion']}, expected {version}")
                    version, backoff_s = msg["endVersion"], BACKOFF_FIRST_S
                    for mod in msg["modifications"]:
                        if mod.get("queryId") != 0 or mod["type"] not in ("QueryUpdated", "QueryFailed"):
                            continue
                        if mod["type"] == "QueryUpdated":
                            view.show_value(values.encode_clean_json(values.decode(mod["value"])))
                        else:
                            view.show_error(mod["errorMessage"])
                        updates += 1
                        if max_updates and updates >= max_updates:
                            return 0
                reason = f"closed with code {ws.close_code}"
        except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
            reason = str(exc) or type(exc).__name__
        attempt += 1
        delay_s = backoff_s * random.uniform(1.0, 1.5)
        view.set_status(f"disconnected ({reason}); reconnecting in {delay_s:.1f}s")
        await asyncio.sleep(delay_s)
        backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)


def _hello(
    function: str, args: dict[str, Any], credential: tuple[str, str] | None, attempt: int, reason: str
) -> list[dict[str, Any]]:
    """What a new socket sends first: Connect, Authenticate when signed in (a user's token, or the admin key as
    the official clients' `setAdminAuth` sends it), then the whole query set (0 → 1)."""
    session = {"sessionId": str(uuid.uuid4()), "connectionCount": attempt, "lastCloseReason": reason}
    auth = []
    if credential is not None:
        auth = [{"type": "Authenticate", "tokenType": credential[0], "value": credential[1], "baseVersion": 0}]
    add = {"type": "Add", "queryId": 0, "udfPath": function, "args": [args]}
    return [
        {"type": "Connect", **session, "clientTs": int(time.time() * 1000)},
        *auth,
        {"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [add]},
    ]


class _View:
    """What the watcher shows: the latest result (or error) under a status line; redrawn in place on a terminal."""

    def __init__(self, function: str, console: Console) -> None:
        self.function, self.console = function, console
        self.status, self.updates, self.at = "connecting", 0, ""
        self.body: RenderableType = Text("waiting for the first result…", style="dim")
        self.live = Live(self._render(), console=console, auto_refresh=False) if console.is_terminal else None
        if self.live is not None:
            self.live.start()

    def show_value(self, value: Any) -> None:
        self._show(_render_value(value))

    def show_error(self, message: str) -> None:
        self._show(Panel(Text(message, style="red"), title="error", border_style="red", title_align="left"))

    def set_status(self, status: str) -> None:
        self.status = status
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
        elif status != "connected":
            self.console.print(Text(f"{self.function}: {status}", style="dim"))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()

    def _show(self, body: RenderableType) -> None:
        self.body, self.updates, self.at = body, self.updates + 1, time.strftime("%H:%M:%S")
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
        else:
            self.console.print(self._render())

    def _render(self) -> RenderableType:
        at = f"  {self.at}" if self.at else ""
        return Group(
            Text.assemble((self.function, "bold"), f"  update {self.updates}{at}", (f"  {self.status}", "dim")),
            self.body,
        )


def _is_job(value: Any) -> bool:
    """A job has progress fields once a worker reports; a video still Queued is one too (twitchId + status)."""
    return isinstance(value, dict) and bool(_JOB_KEYS & value.keys() or {"twitchId", "status"} <= value.keys())


def _render_value(value: Any) -> RenderableType:
    """A video job → a progress bar; a list of jobs → a table of bars; anything else → pretty JSON."""
    if _is_job(value):
        return _job_panel(value)
    if isinstance(value, list) and value and all(_is_job(item) for item in value):
        table = Table("job", "status", "stage", "progress", "", "ETA", title=f"{len(value)} jobs")
        for job in value:
            pct = _percent(job)
            bar = ProgressBar(total=100, completed=pct, width=24)
            eta = _eta(job.get("estimatedCompletionSeconds"))
            table.add_row(_title(job), _status(job), str(job.get("currentStage") or ""), bar, f"{pct:.0f}%", eta)
        return table
    return JSON.from_data(value)


def _job_panel(job: dict[str, Any]) -> RenderableType:
    pct = _percent(job)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=100, completed=pct, width=40), Text(f"{pct:.0f}%", style="bold"))
    stage, eta = job.get("currentStage") or "-", _eta(job.get("estimatedCompletionSeconds"))
    lines: list[RenderableType] = [bar, Text.assemble("status ", _status(job), f"   stage {stage}   ETA {eta}")]
    if job.get("errorMessage"):
        lines.append(Text(f"{job.get('errorType') or 'error'}: {job['errorMessage']}", style="red"))
    jobid = str(job.get("jobId") or "")
    return Panel(Group(*lines), title=_title(job), title_align="left", subtitle=jobid, expand=False)


def _title(job: dict[str, Any]) -> str:
    return str(job.get("title") or job.get("twitchId") or job.get("jobId") or job.get("_id") or "job")


def _percent(job: dict[str, Any]) -> float:
    pct = job.get("progressPercentage")
    if not isinstance(pct, (int, float)):
        return 100.0 if job.get("status") == "Completed" else 0.0
    return max(0.0, min(100.0, float(pct)))


def _status(job: dict[str, Any]) -> Text:
    status = str(job.get("status") or "?")
    return Text(status, style=_STATUS_STYLE.get(status, "yellow"))


def _eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
