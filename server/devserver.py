"""`ripple dev`: the server of `ripple serve`, plus a watcher that reloads the project in place on each save.

A reload never drops a socket: the functions are imported anew into a new registry and swapped in whole, and
the hub re-runs every subscription with the new code. Code that fails to import, or a schema change that is
refused, is reported and what served before keeps serving.

As `npx convex dev` keeps `convex/_generated/` current, `ripple dev` writes the project's `_generated/` (the
TypeScript `api.d.ts`, `api.js`, `dataModel.d.ts` and the Python client `api.py`, server/codegen*.py) at start
and after each reload, from the code and tables that serve now; a file is rewritten only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import asyncpg
from watchfiles import Change, awatch

from server.app import GracefulServer, Services
from server.codegen import CodegenError, render, write_files
from server.codegen_python import render_python
from server.database.catalog import Catalog, apply_schema, load_catalog
from server.errors import SchemaError
from server.functions.registry import Registry
from server.project import PACKAGE, LoadFailed, Project

__all__ = ["DevServer", "reload_project"]

log = logging.getLogger("ripple.dev")
GENERATED = "_generated"


def _report(message: str) -> None:
    """To the log (JSON logs, `ripple logs` readers) and to the terminal the developer watches."""
    log.error("%s", message)
    print(f"ripple dev: {message}", file=sys.stderr, flush=True)


async def reload_project(services: Services, project: Project, *, schema: bool) -> bool:
    """Load the project's code anew and serve it (applying schema.sql first when `schema`). Returns whether the
    new code serves now; when not, the reason was reported and the last good code serves on."""
    try:
        registry = project.load()
    except LoadFailed as error:
        _report(f"{error.message}; the last good code keeps serving")
        return False
    catalog: Catalog | None = None
    if schema:
        try:
            async with services.pool.acquire() as conn:
                await apply_schema(
                    conn, project.schema_path, allow_destructive=services.settings.schema_allow_destructive
                )
                catalog = await load_catalog(conn)
        except (SchemaError, asyncpg.PostgresError) as error:
            _report(f"schema.sql was not applied: {error}; the previous schema keeps serving")
    services.hub.reload(registry, catalog)
    write_generated(services, project, registry)
    print(
        f"ripple dev: reloaded {sum(1 for _ in registry)} functions"
        + (" and schema.sql" if catalog is not None else ""),
        flush=True,
    )
    return True


def write_generated(services: Services, project: Project, registry: Registry) -> None:
    """The project's `_generated/` for the code serving now; a type codegen cannot translate is reported (the
    server goes on serving: a wrong type is the client's problem, not the running code's)."""
    catalog = services.database.catalog
    try:
        files = {**render(registry, catalog), "api.py": render_python(registry, catalog)}
    except CodegenError as error:
        _report(f"_generated/ was not updated: {error}")
        return
    changed = write_files(project.root / GENERATED, files)
    if changed:
        print(f"ripple dev: wrote {', '.join(changed)} in {GENERATED}/", flush=True)


class DevServer(GracefulServer):
    """uvicorn with the project's watcher alongside, on the same event loop."""

    def __init__(self, config: Any, project: Project) -> None:
        super().__init__(config)
        self.project = project

    async def serve(self, sockets: Any = None) -> None:
        watcher = asyncio.create_task(self._watch())
        first = asyncio.create_task(self._generate_once_started())
        try:
            await super().serve(sockets)
        finally:
            for task in (watcher, first):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _generate_once_started(self) -> None:
        while (services := self._services()) is None or not self.started:  # set once the lifespan has run
            await asyncio.sleep(0.05)
        write_generated(services, self.project, services.runner.registry)

    def _services(self) -> Services | None:
        return getattr(getattr(self.config.app, "state", None), "services", None)

    def _relevant(self, change: Change, path: str) -> bool:
        file = Path(path)
        if file == self.project.schema_path:
            return True
        return file.suffix == ".py" and file.is_relative_to(self.project.package_dir) and "__pycache__" not in path

    async def _watch(self) -> None:
        async for changes in awatch(self.project.root, watch_filter=self._relevant, debounce=200, step=50):
            services = self._services()
            if services is None:
                continue  # still starting: the start loads the files as they are now
            schema = any(Path(path) == self.project.schema_path for _, path in changes)
            try:
                await reload_project(services, self.project, schema=schema)
            except Exception:
                log.exception("reloading %s failed; the last good code keeps serving", self.project.root / PACKAGE)
