"""The README's quick start as a new user runs it: `ripple serve` on a fresh data directory with no auth set up,
`ripple token`, then `ripple run` / `ripple watch` configured only by the environment. Real processes, real
sockets; one server for the whole module (each start is an embedded PostgreSQL)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "quickstart-admin-key"
# Settings a developer's shell may hold that would make these runs something other than a fresh machine's.
_SCRUBBED = ("DATABASE_URL", "RIPPLE_")


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(RIPPLE_DATA_DIR=str(data_dir), RIPPLE_MODULES='["tests.support.testing_app"]', **extra)
    return env


def _ripple(*argv: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Served:
    proc: subprocess.Popen[str]
    data_dir: Path
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _start(data_dir: Path, env: dict[str, str]) -> Served:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(proc, data_dir)
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: served.lines.extend(iter(stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + 60
    while not served.port:
        assert proc.poll() is None and time.monotonic() < deadline, served.output
        found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", served.output)
        served.port = int(found.group(1)) if found else 0
        time.sleep(0.05)
    while "ripple ready" not in served.output:
        assert proc.poll() is None and time.monotonic() < deadline, served.output
        time.sleep(0.05)
    return served


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="ripple-quickstart-"))
    server = _start(data_dir, _env(data_dir, RIPPLE_ADMIN_KEY=ADMIN_KEY))
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_fresh_data_dir_uses_a_development_secret_that_ripple_token_signs_with(served: Served) -> None:
    assert "development auth: tokens from `ripple token` are accepted" in served.output
    assert "set RIPPLE_JWT_SECRET or RIPPLE_JWKS for production" in served.output
    secret_file = served.data_dir / "dev-jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text().strip()) >= 32

    token = _ripple("token", "--sub", "alice", env=_env(served.data_dir))
    assert token.returncode == 0, token.stderr
    response = httpx.post(
        f"http://127.0.0.1:{served.port}/api/query",
        json={"path": "testing:whoami", "args": {}, "format": "json"},
        headers={"Authorization": f"Bearer {token.stdout.strip()}"},
    )
    assert response.json()["status"] == "success", response.text
    assert response.json()["value"]["subject"] == "alice"


def test_run_and_watch_take_port_and_admin_key_from_the_environment(served: Served) -> None:
    env = _env(served.data_dir, RIPPLE_PORT=str(served.port), RIPPLE_ADMIN_KEY=ADMIN_KEY, RIPPLE_WATCH_MAX_UPDATES="1")
    created = _ripple("run", "videos:create", '{"twitchId": "qs1", "title": "Quick start"}', env=env)
    assert created.returncode == 0, created.stderr  # videos:create needs a user or the admin key
    watched = _ripple("watch", "videos:getByTwitchId", '{"twitchId": "qs1"}', env=env)
    assert watched.returncode == 0 and "Quick start" in watched.stdout, watched.stdout + watched.stderr

    # The admin key really travels on the sync socket: a wrong one in the environment is refused there.
    wrong = _ripple("watch", "videos:getByTwitchId", '{"twitchId": "qs1"}', env={**env, "RIPPLE_ADMIN_KEY": "nope"})
    assert wrong.returncode == 1 and "admin key is not valid" in wrong.stdout + wrong.stderr

    # Flags override the environment: --token calls as that user even with RIPPLE_ADMIN_KEY set; --url wins.
    token = _ripple("token", "--sub", "bob", env=env).stdout.strip()
    who = _ripple("run", "testing:whoami", "--token", token, env=env)
    assert who.returncode == 0 and '"bob"' in who.stdout, who.stdout + who.stderr
    closed_port = _closed_port()
    unreachable = _ripple("run", "testing:whoami", "--url", f"http://127.0.0.1:{closed_port}", env=env)
    assert unreachable.returncode == 1 and f"127.0.0.1:{closed_port}" in unreachable.stderr


def test_a_busy_port_fails_before_ready_with_what_to_do(served: Served) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ripple-busy-"))
    try:
        second = _ripple("serve", env=_env(data_dir, RIPPLE_PORT=str(served.port)))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    assert f"port {served.port} is in use" in output and "RIPPLE_PORT or --port" in output
    assert "ripple ready" not in output and "serving on" not in output and "embedded PostgreSQL" not in output


def test_production_refuses_to_start_without_real_auth(tmp_path: Path) -> None:
    for argv, extra in ((["serve"], {"RIPPLE_ENV": "production"}), (["serve", "--production"], {})):
        refused = _ripple(*argv, env=_env(tmp_path, **extra))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refusing to start" in refused.stderr and "RIPPLE_JWKS" in refused.stderr
        assert "ripple ready" not in refused.stdout
    short = _ripple("serve", "--production", env=_env(tmp_path, RIPPLE_JWT_SECRET="short"))
    assert short.returncode == 2 and "at least 32" in short.stderr
    assert not (tmp_path / "dev-jwt-secret").exists()  # production never makes (or uses) the development secret
    token = _ripple("token", "--sub", "alice", env=_env(tmp_path, RIPPLE_ENV="production"))
    assert token.returncode == 2 and "RIPPLE_JWT_SECRET" in token.stderr


def test_an_invalid_setting_names_its_variable(tmp_path: Path) -> None:
    refused = _ripple("serve", env=_env(tmp_path, RIPPLE_ENV="prod"))
    assert refused.returncode == 1 and "RIPPLE_ENV" in refused.stderr and "production" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_token_before_any_serve_says_what_to_do(tmp_path: Path) -> None:
    token = _ripple("token", "--sub", "alice", env=_env(tmp_path))
    assert token.returncode == 2 and not token.stdout
    assert str(tmp_path / "dev-jwt-secret") in token.stderr and "ripple serve" in token.stderr


def test_help_shows_each_default_and_where_it_comes_from(tmp_path: Path) -> None:
    env = _env(tmp_path, RIPPLE_PORT="9123", RIPPLE_ADMIN_KEY="do-not-print-me")
    serve = " ".join(_ripple("serve", "--help", env=env).stdout.split())  # argparse wraps lines anywhere
    assert "default: 9123, from RIPPLE_PORT" in serve and "default: 127.0.0.1, from RIPPLE_HOST" in serve
    assert "RIPPLE_ENV=production" in serve and "default: info" in serve
    for command in ("run", "watch", "logs"):
        text = " ".join(_ripple(command, "--help", env=env).stdout.split())
        assert "default: http://127.0.0.1:9123, from RIPPLE_URL" in text, text
        assert "default: RIPPLE_ADMIN_KEY, now set" in text and "do-not-print-me" not in text
    token = " ".join(_ripple("token", "--help", env=env).stdout.split())
    assert "default: 86400" in token and "RIPPLE_JWT_SECRET" in token


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _try_it_lines() -> list[str]:
    """The README's "Try it" block, line by line."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- try-it", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


class _Shell:
    """One README line in bash, in a fresh directory, with `ripple` being this checkout's CLI."""

    def __init__(self, line: str, cwd: Path, env: dict[str, str]) -> None:
        prelude = f'ripple() {{ exec "{sys.executable}" -m server "$@"; }}\n'
        self.proc = subprocess.Popen(
            ["bash", "-c", prelude + line],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: self.lines.extend(iter(stdout.readline, "")), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.proc.poll() is None and time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.05)

    def finish(self, timeout_s: float = 30) -> str:
        assert self.proc.wait(timeout_s) == 0, self.output
        time.sleep(0.1)  # the reader thread's last lines
        return self.output


def test_the_readme_try_it_works_as_written(tmp_path: Path) -> None:
    env = _env(tmp_path / "unused", RIPPLE_PORT=str(_closed_port()), RIPPLE_WATCH_MAX_UPDATES="2")
    env = {k: v for k, v in env.items() if k not in ("RIPPLE_DATA_DIR", "RIPPLE_MODULES")}  # as a user has it
    env["PYTHONPATH"] = str(ROOT)
    setup, serve_line, create, watch_line, report = _try_it_lines()
    _Shell(setup, tmp_path, env).finish()
    serve = _Shell(serve_line, tmp_path, env)
    try:
        serve.wait_for("ripple ready")
        assert "development auth" in serve.output
        _Shell(create, tmp_path, env).finish()
        watch = _Shell(watch_line, tmp_path, env)
        watch.wait_for("Demo")
        _Shell(report, tmp_path, env).finish()
        assert "40%" in watch.finish().split("update 2", 1)[1]  # the worker's report redrew the watch
    finally:
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(30)
