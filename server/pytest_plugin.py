"""pytest fixtures for testing a Ripple app, loaded by pytest wherever Ripple is installed (entry point `pytest11`).

* `ripple_app`: Ripple serving your modules on a brand-new database, for one test (a `server.testing.RippleApp`:
  `ripple_app.as_user("alice")`, `.as_admin()`, `.anonymous()` give clients).
* `ripple_modules`, `ripple_schema`, `ripple_settings`: what it serves. By default the `ripple_modules` (one
  module per line) and `ripple_schema` (a path, relative to the ini file) ini options, and no `Settings`
  overrides; override the fixtures to choose per directory, module or test.
* `ripple_postgres`: the PostgreSQL server every test's database lives on, one per session: the server named by
  `RIPPLE_TEST_DATABASE_URL` (an admin DSN) when set, else an embedded one in a temporary directory.

The fixtures are synchronous (the server runs on its own thread and loop), so any async test runner works;
the clients' methods are coroutines.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported when first used: pytest loads this plugin in every run where Ripple is installed
    from server.testing import RippleApp

__all__ = ["ripple_app", "ripple_modules", "ripple_postgres", "ripple_schema", "ripple_settings"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "ripple_modules", type="linelist", default=[], help="Ripple: app modules the ripple_app fixture serves"
    )
    parser.addini(
        "ripple_schema",
        type="string",
        default="",
        help="Ripple: the schema.sql the ripple_app fixture applies, relative to the ini file (default: Ripple's)",
    )


@pytest.fixture(scope="session")
def ripple_postgres() -> Iterator[str]:
    """Admin DSN of the PostgreSQL server for this session's test databases."""
    url = os.environ.get("RIPPLE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():  # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset: harmless
        warnings.simplefilter("ignore")
        from server.database.embedded import EmbeddedPostgres
    tmp = Path(tempfile.mkdtemp(prefix="ripple-test-pg-"))
    embedded = EmbeddedPostgres()
    try:
        yield embedded.start(tmp / "pgdata")
    finally:
        embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def ripple_modules(pytestconfig: pytest.Config) -> list[str]:
    """The app modules to serve ("package.module"; a package with every module below it)."""
    return list(pytestconfig.getini("ripple_modules"))


@pytest.fixture
def ripple_schema(pytestconfig: pytest.Config) -> Path | None:
    """The schema.sql to apply; None means Ripple's own."""
    value = str(pytestconfig.getini("ripple_schema")).strip()
    if not value:
        return None
    base = pytestconfig.inipath.parent if pytestconfig.inipath else pytestconfig.rootpath
    path = (base / value).resolve()
    if not path.is_file():
        raise pytest.UsageError(f"ripple_schema = {value!r}: no file at {path}; give a path relative to {base}")
    return path


@pytest.fixture
def ripple_settings() -> dict[str, Any]:
    """`server.config.Settings` fields to override for the server, e.g. `{"query_timeout_s": 1.0}`."""
    return {}


@pytest.fixture
def ripple_app(
    ripple_postgres: str,
    ripple_modules: list[str],
    ripple_schema: Path | None,
    ripple_settings: dict[str, Any],
) -> Iterator[RippleApp]:
    """Ripple serving `ripple_modules` with `ripple_schema` on a database of this test alone."""
    from server.testing import RippleApp

    with RippleApp.start(ripple_postgres, modules=ripple_modules, schema_path=ripple_schema, **ripple_settings) as app:
        yield app
