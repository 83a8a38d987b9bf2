"""Shared fixtures: one PostgreSQL server per test session, one brand-new database per test.

* `pg_server` (session): admin DSN (to the `postgres` database) of the server every test uses, the plugin's
  `ripple_postgres` (server/pytest_plugin.py): the server named by `RIPPLE_TEST_DATABASE_URL` when set (e.g.
  Debian's PostgreSQL 15 in CI), otherwise an embedded pgserver (PostgreSQL 16) in a fresh temporary directory,
  stopped and deleted at the end of the session.
* `fresh_dsn` (function): DSN of a new, empty database on that server; dropped after the test.
* `schema_dsn` (function): like `fresh_dsn`, with Ripple's SQL and `schema.sql` applied (one `conn.execute`).
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

# pgserver imports platformdirs, which warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp/runtime-<uid>).
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

import asyncpg  # noqa: E402
import pytest  # noqa: E402

from server.database.catalog import schema_script  # noqa: E402
from server.database.embedded import create_database, drop_database  # noqa: E402
from tests.support.server import RippleServer, run_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_SQL = ROOT / "schema.sql"


# The plugin app authors get (its entry point is registered under the module's name, so an installed Ripple and
# this line load it once). Its session PostgreSQL is this suite's too.
pytest_plugins = ["server.pytest_plugin"]


@pytest.fixture(scope="session")
def pg_server(ripple_postgres: str) -> str:
    return ripple_postgres


@pytest.fixture
async def fresh_dsn(pg_server: str) -> AsyncIterator[str]:
    dsn = await create_database(pg_server)
    try:
        yield dsn
    finally:
        await drop_database(pg_server, unquote(urlsplit(dsn).path.lstrip("/")))


@pytest.fixture
async def schema_dsn(fresh_dsn: str) -> str:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await conn.execute(schema_script(SCHEMA_SQL.read_text()))
    finally:
        await conn.close()
    return fresh_dsn


@pytest.fixture
async def ripple(fresh_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[RippleServer]:
    """A running Ripple server on a fresh database. Parametrize indirectly with a dict of Settings overrides."""
    overrides = getattr(request, "param", None) or {}
    async with run_server(fresh_dsn, **overrides) as server:
        yield server


@pytest.fixture(scope="module")
async def module_ripple(pg_server: str) -> AsyncIterator[RippleServer]:
    """One server for a whole test module, for modules whose tests keep to their own users' data."""
    dsn = await create_database(pg_server)
    try:
        async with run_server(dsn) as server:
            yield server
    finally:
        await drop_database(pg_server, unquote(urlsplit(dsn).path.lstrip("/")))


@pytest.fixture
def alice() -> str:
    """A user name of this test alone."""
    return f"alice-{secrets.token_hex(4)}"


@pytest.fixture
def bob() -> str:
    return f"bob-{secrets.token_hex(4)}"
