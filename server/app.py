"""`create_app()`: the ASGI app. Its lifespan starts pool → schema → catalog → hub, and stops them in reverse."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from server import __version__, http_api, log_stream, storage
from server.admin import status as admin_status
from server.admin import system_functions
from server.auth import AuthConfig, Authenticator, AuthProvider
from server.config import Settings, shared_path
from server.crons import CronExecutor, find_crons
from server.database.catalog import Catalog, apply_schema, load_catalog
from server.database.connect import connect, probe_listen
from server.database.database import Database
from server.database.pool import create_pool
from server.database.transaction import Limits
from server.database.writers import Writers
from server.functions.calllog import CallLog
from server.functions.registry import Registry
from server.functions.runner import CallRecord, Runner, RunnerLimits
from server.functions.storage_ctx import Storage
from server.http_actions import HttpRouter, SiteRoutes, find_router
from server.hub.hub import Hub
from server.hub.supervise import Supervisor
from server.log_stream import LogStream
from server.metrics import Metrics
from server.project import PACKAGE as PROJECT_PACKAGE
from server.project import package_modules
from server.scheduler import ScheduleExecutor
from server.storage_sweep import OrphanSweep
from server.sync.socket import sync_endpoint, watch_sessions

__all__ = ["GracefulServer", "Services", "create_app", "load_modules"]

log = logging.getLogger("ripple")

_BROWSER_DIR = shared_path("client_examples/browser")
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class Services:
    """Everything a request handler needs, built once per app by the lifespan."""

    settings: Settings
    pool: asyncpg.Pool
    database: Database
    runner: Runner
    authenticator: Authenticator
    hub: Hub
    metrics: Metrics
    sessions: set[Any] = field(default_factory=set)
    version: str = __version__
    log_stream: LogStream = field(default_factory=LogStream)
    http: HttpRouter = field(default_factory=HttpRouter)  # the project's HTTP actions (http_actions.py)
    storage: Storage | None = None
    scheduler: ScheduleExecutor | None = None  # None when RIPPLE_SCHEDULER_ENABLED is off


class _Observers:
    """Every call and captured line goes to the metrics and to the live log stream."""

    def __init__(self, metrics: Metrics, stream: LogStream) -> None:
        self.metrics = metrics
        self.stream = stream

    def call_finished(self, record: CallRecord) -> None:
        self.metrics.call_finished(record)
        self.stream.call_finished(record)

    def line(self, call: CallLog, level: str, text: str) -> None:
        self.stream.line(call, level, text)


def load_modules(modules: list[str]) -> None:
    """Import app modules into the process's registry (a package with every module below it); their decorators
    register their functions. For servers given no project's registry: the test helpers' (server/testing.py)."""
    system_functions()  # the admin console's, with every set of app modules
    for name in modules:
        package_modules(name)


def authenticator_for(settings: Settings) -> Authenticator:
    """The process's authenticator: RIPPLE_JWT_SECRET, RIPPLE_JWKS and the auth providers together.

    Raises:
        ValueError: RIPPLE_JWKS names an unreadable file (the auth config file was read with the settings).
    """
    providers = tuple(AuthProvider(p.domain, p.application_id) for p in settings.all_auth_providers())
    return Authenticator(
        AuthConfig(
            jwt_secret=settings.jwt_secret,
            jwks=settings.jwks,
            issuer=settings.jwt_issuer if (settings.jwt_secret or settings.jwks) else None,
            audience=settings.jwt_audience,
            admin_key=settings.admin_key,
            jwks_cache_s=settings.auth_keys_cache_s,
            providers=providers,
            key_refetch_interval_s=settings.auth_key_refetch_interval_s,
        )
    )


def _pages(directory: Path) -> ASGIApp:
    """Static files, gzipped for browsers that take it: the vendored client is 159 KB raw, 33 KB gzipped. Only
    pages are compressed; the API's small JSON replies are not worth the CPU."""
    return GZipMiddleware(StaticFiles(directory=directory, html=True), minimum_size=1024)


class _CollapseSlashes:
    """The JS client builds `//api/...` from a deployment URL with a trailing slash; Convex accepts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "//" in scope["path"]:
            scope = dict(scope, path=re.sub("/{2,}", "/", scope["path"]))
        await self.app(scope, receive, send)


class GracefulServer(uvicorn.Server):
    """uvicorn, but sync sockets are closed first with Ripple's own reason (1012, reconnect), so clients know
    to come back rather than guess from a bare close."""

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.app
        services = getattr(getattr(app, "state", None), "services", None)
        if services is not None:
            for session in list(services.sessions):
                session.shut(1012, "server shutting down; reconnect")
            for _ in range(20):  # give the send loops a moment to send their close frames
                if not services.sessions:
                    break
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)


@dataclass(frozen=True)
class ConnectionPlan:
    """Where each connection goes: `pooled` says DATABASE_URL is a transaction pooler; the hub's own
    connection (LISTEN, snapshot) goes to `hub_dsn`, pooled too when no direct URL was given."""

    pooled: bool
    hub_dsn: str
    hub_pooled: bool


async def connection_plan(settings: Settings, dsn: str) -> ConnectionPlan:
    """Find out whether `dsn` is behind a transaction pooler (unless RIPPLE_DATABASE_POOLED says) and say once,
    at start, what a pooled deployment without a direct URL lacks and what to set."""
    pooled = settings.database_pooled
    if pooled is None:
        pooled = not await probe_listen(dsn)
        if pooled:
            log.info("DATABASE_URL goes through a transaction pooler (a LISTEN there heard no NOTIFY within 1 s)")
    direct = settings.listen_database_url
    if direct:
        return ConnectionPlan(pooled, direct, False)
    if pooled:
        log.warning(
            "DATABASE_URL goes through a transaction pooler, where LISTEN cannot work: commits of other processes "
            "and plain SQL reach subscribers only through the periodic log check, every %g s "
            "(RIPPLE_LOG_CHECK_INTERVAL_S). Set RIPPLE_LISTEN_DATABASE_URL to a direct (session) connection to "
            "the same database for immediate updates.",
            settings.log_check_interval_s,
        )
    return ConnectionPlan(pooled, dsn, pooled)


async def _apply_schema(pool: asyncpg.Pool, route: ConnectionPlan, settings: Settings) -> Catalog:
    """Apply schema.sql under its session-level advisory lock. Behind a pooler, lock, schema and unlock must
    reach one backend: on the direct connection when there is one, else inside one transaction."""
    if route.pooled and not route.hub_pooled:
        conn = await connect(route.hub_dsn)
        try:
            await apply_schema(conn, settings.schema_path, allow_destructive=settings.schema_allow_destructive)
        finally:
            await conn.close()
        async with pool.acquire() as pooled_conn:
            return await load_catalog(pooled_conn)
    async with pool.acquire() as conn:
        if route.pooled:
            async with conn.transaction():
                await apply_schema(conn, settings.schema_path, allow_destructive=settings.schema_allow_destructive)
        else:
            await apply_schema(conn, settings.schema_path, allow_destructive=settings.schema_allow_destructive)
        return await load_catalog(conn)


def _close_for_outage(sessions: set[Any]) -> None:
    """The database has been unreachable for a while: results may be stale, so close every sync socket with a
    reason; the official clients reconnect (with backoff) and resubscribe, and converge once it is back."""
    if sessions:
        log.warning("closing %d sync sockets: the database is unavailable", len(sessions))
    for session in list(sessions):
        session.shut(1013, "database unavailable; reconnecting")


def create_app(settings: Settings, dsn: str, *, registry: Registry | None = None) -> Starlette:
    """The app. `registry` serves a project's functions (server/project.py, loaded with `settings.modules`);
    without one, the process's registry serves `settings.modules` (imported at start) and whatever the caller
    imported. `app.state.services` holds what a reload (server/devserver.py) swaps."""
    metrics = Metrics()
    stream = LogStream()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A project's http.py and crons.py, as a Convex app's convex/http.ts and convex/crons.ts, and those of the
        # extra modules (read at start; `ripple dev` does not reload them).
        modules = list(settings.modules)
        if registry is None:
            load_modules(modules)
        else:
            modules.insert(0, PROJECT_PACKAGE)  # a project folder (server/project.py) has loaded its package
        http_routes = find_router(modules)
        cron_jobs = find_crons(modules) if settings.crons_enabled else []
        route = await connection_plan(settings, dsn)
        pool = await create_pool(
            dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size, pooled=route.pooled
        )
        writers = Writers(dsn, settings.pool_max_size, pooled=route.pooled)
        try:
            catalog = await _apply_schema(pool, route, settings)
            database = Database(
                pool,
                writers,
                catalog,
                limits=Limits(settings.max_documents_read, settings.max_documents_written),
                max_retries=settings.mutation_max_retries,
                retry_base_s=settings.mutation_retry_base_s,
            )
            runner = Runner(
                database,
                registry=registry,
                limits=RunnerLimits(
                    settings.query_timeout_s,
                    settings.mutation_timeout_s,
                    settings.action_timeout_s,
                    settings.max_result_bytes,
                ),
                observer=_Observers(metrics, stream),
            )
            files = Storage(
                database,
                await storage.blobs_for(settings),
                settings.public_url or settings.client_url(),
                max_upload_bytes=settings.storage_max_upload_bytes,
                upload_url_ttl_s=settings.storage_upload_url_ttl_s,
            )
            runner.storage = files
            sweep = OrphanSweep(
                files, grace_s=settings.storage_orphan_grace_s, interval_s=settings.storage_sweep_interval_s
            )
            hub = Hub(
                route.hub_dsn,
                database,
                runner,
                settings=settings,
                metrics=metrics,
                pooled=route.hub_pooled,
                listen=not route.hub_pooled,
            )
            await hub.start()
            app.state.services = Services(
                settings,
                pool,
                database,
                runner,
                authenticator_for(settings),
                hub,
                metrics,
                log_stream=stream,
                http=http_routes,
                storage=files,
            )
            hub.watch.on_outage.append(lambda: _close_for_outage(app.state.services.sessions))
            watcher = Supervisor()
            watcher.start(
                "sync-watcher",
                lambda: watch_sessions(
                    app.state.services.sessions, settings.ping_interval_s, settings.slow_client_timeout_s
                ),
            )
            scheduler: ScheduleExecutor | None = None
            if settings.scheduler_enabled:
                scheduler = ScheduleExecutor(
                    database,
                    runner,
                    check_interval_s=settings.scheduler_check_interval_s,
                    abandoned_after_s=settings.scheduler_abandoned_after_s,
                )
                scheduler.start()
                hub.on_tables_changed.append(scheduler.tables_changed)
            app.state.scheduler = app.state.services.scheduler = scheduler
            crons = CronExecutor(database, cron_jobs, poke=scheduler.poke if scheduler is not None else None)
            crons.check(lambda path: runner.resolve(path, internal_ok=True))
            crons.start()
            app.state.crons = crons
            sweep.start()
            app.state.storage_sweep = sweep
            log.info("ripple ready: %d tables, %d functions", len(catalog.tables), sum(1 for _ in runner.registry))
            log.info(
                "HTTP actions: %d routes at %s/... (RIPPLE_SITE_PREFIX; Convex's site URL)",
                len(http_routes),
                settings.site_url(),
            )
            try:
                yield
            finally:
                await watcher.close()
                await sweep.close()
                await crons.close()
                if scheduler is not None:
                    hub.on_tables_changed.remove(scheduler.tables_changed)
                    await scheduler.close()
                for session in list(app.state.services.sessions):
                    session.shut(1012, "server shutting down; reconnect")
                await hub.close("server shutting down")
        finally:
            await writers.close()
            await pool.close()

    routes: list[Route | WebSocketRoute | Mount] = [
        *http_api.routes,
        *log_stream.routes,
        *storage.routes,
        *admin_status.routes,
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        WebSocketRoute("/api/sync", sync_endpoint),
        WebSocketRoute("/api/{version}/sync", sync_endpoint),
    ]
    # The admin console and the vendored official browser client ship in the package, so a pip install has them.
    routes.append(Mount("/_static", _pages(_PACKAGE_DIR / "static"), name="static"))
    routes.append(Mount("/_admin", _pages(_PACKAGE_DIR / "admin" / "static"), name="admin"))
    if _BROWSER_DIR.is_dir():
        routes.append(Mount("/", _pages(_BROWSER_DIR), name="dashboard"))
    middleware = [
        Middleware(_CollapseSlashes),
        Middleware(SiteRoutes, prefix=settings.site_prefix),  # before CORS: HTTP actions set their own headers
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        ),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
