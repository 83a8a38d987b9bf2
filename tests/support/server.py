"""A real Ripple server for tests: uvicorn on 127.0.0.1 with an OS-chosen port, in the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from server.app import GracefulServer, Services, create_app
from server.auth import make_dev_token
from server.config import Settings
from server.errors import RippleError
from server.functions.context import Caller

JWT_SECRET = "ripple-test-secret-0123456789abcdef-0123"
ADMIN_KEY = "ripple-test-admin-key"
ISSUER = "https://ripple.test"
ROOT = Path(__file__).resolve().parents[2]


# The seed project's package (the repository root's `functions/`), served by every in-process test server beside
# the modules a test names, in the process's registry (with tests.support.testing_app's, once a test imports it).
SEED = "functions"


def test_settings(dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "jwt_secret": JWT_SECRET,
        "jwt_issuer": ISSUER,
        "admin_key": ADMIN_KEY,
        "pool_min_size": 1,
        "pool_max_size": 8,
        "anthropic_api_key": None,
        "anthropic_base_url": None,
        # The seed apps' cron writes once a minute; tests that count commits or statements must not meet it
        # (tests/test_crons.py turns crons on).
        "crons_enabled": False,
    }
    values.update(overrides)
    values["modules"] = [SEED, *values.get("modules", [])]
    return Settings(**values)


@dataclass
class RippleServer:
    url: str
    services: Services
    settings: Settings

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/api/sync"

    def token(self, sub: str, **claims: Any) -> str:
        return make_dev_token(JWT_SECRET, sub, issuer=ISSUER, **claims)

    async def caller(self, user: str | None = None, *, admin: bool = False) -> Caller:
        identity = await self.services.authenticator.verify_async(self.token(user)) if user else None
        return Caller(identity, is_admin=admin)

    async def call(
        self,
        path: str,
        args: dict[str, Any] | None = None,
        *,
        user: str | None = None,
        admin: bool = False,
        internal: bool = False,
    ) -> Any:
        """Run a function in-process as `user` (or anonymously, or as admin); raise its error if it failed.

        Returns the decoded result (numbers as floats, as a Convex client sees them).
        """
        from server import values

        outcome = await self.services.runner.call(
            path, args or {}, await self.caller(user, admin=admin), internal_ok=internal
        )
        if outcome.error is not None:
            raise outcome.error
        return values.decode(outcome.value)

    async def http(
        self,
        kind: str,
        path: str,
        args: Any = None,
        *,
        token: str | None = None,
        admin: bool = False,
        fmt: str = "convex_encoded_json",
    ) -> httpx.Response:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if admin:
            headers["Authorization"] = f"Convex {ADMIN_KEY}"
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            return await client.post(
                f"/api/{kind}", json={"path": path, "args": args or {}, "format": fmt}, headers=headers
            )


@asynccontextmanager
async def run_server(dsn: str, **overrides: Any) -> AsyncIterator[RippleServer]:
    settings = test_settings(dsn, **overrides)
    app = create_app(settings, dsn)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws_max_size=settings.max_message_bytes
    )
    server = GracefulServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the test server stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RippleServer(f"http://127.0.0.1:{port}", app.state.services, settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def second_process(ripple: RippleServer) -> AsyncIterator[str]:
    """Another `ripple serve` process on the same database, with the testing functions; yields its base URL once
    it is healthy (tests/support/processes.py, which prints its log when it ends)."""
    from tests.support.processes import serve_process  # it imports this module's settings

    dsn = ripple.settings.database_url
    async with serve_process(dsn, ["tests.support.testing_app"], RIPPLE_TEST_PROCESS="second") as other:
        yield other.url


__all__ = [
    "ADMIN_KEY",
    "JWT_SECRET",
    "RippleError",
    "RippleServer",
    "run_server",
    "second_process",
    "test_settings",
]
