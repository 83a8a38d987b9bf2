"""`ripple serve` and `ripple dev`: plan auth, bind the port, start the embedded PostgreSQL when no DATABASE_URL is
set, then run uvicorn (with the project watcher under `dev`) until interrupted, and stop the database after it."""

from __future__ import annotations

import errno
import gc
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.config import Settings
    from server.functions.registry import Registry
    from server.project import Project

__all__ = ["bind_or_explain", "listen_url", "serve"]


def _tune_gc(gen0_threshold: int) -> None:
    """Move what exists at start-up (modules, the app) out of the collector's sight and collect young objects
    less often: with thousands of sockets, full collections of long-lived session objects otherwise dominate
    fan-out time (see the benchmark notes in README.md)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _bind(host: str, port: int) -> socket.socket:
    """Listen before anything starts, so a busy port fails at once, before the database, the lifespan and its
    "ready" line; uvicorn then serves on this socket. SO_REUSEADDR (as uvicorn sets it) lets a restart reuse a
    port in TIME_WAIT, but never one another process listens on."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_or_explain(host: str, port: int) -> socket.socket | str:
    try:
        return _bind(host, port)
    except socket.gaierror as exc:
        return f"cannot listen on host {host!r}: {exc.strerror}; set RIPPLE_HOST or --host"
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (
                f"port {port} is in use: another process (maybe another `ripple serve`) listens on {host}:{port}; "
                "stop it, or set RIPPLE_PORT or --port"
            )
        if exc.errno == errno.EACCES:
            return (
                f"cannot listen on port {port}: permission denied (ports below 1024 need root); "
                "set RIPPLE_PORT or --port"
            )
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}; set RIPPLE_HOST/RIPPLE_PORT or --host/--port"


def serve(
    settings: Settings, project: Project, registry: Registry, *, dev: bool, production: bool, log_level: str
) -> int:
    """Serve `project` (its functions already loaded into `registry`) until interrupted; returns the exit code.

    The order is what makes failures clear and early: auth is planned and the port bound before the database
    starts, so a refused production start or a busy port says so before anything prints "ready"."""
    import uvicorn

    from server.app import GracefulServer, create_app
    from server.database.embedded import EmbeddedPostgres
    from server.dev_auth import AuthSetupError, dev_secret_path, ensure_dev_secret, plan_auth

    settings.schema_path = project.schema_path
    print(f"ripple: serving the project in {project.root} ({sum(1 for _ in registry)} functions)", flush=True)
    try:
        plan = plan_auth(settings, production)
    except AuthSetupError as exc:
        print(f"ripple serve: refusing to start: {exc}", file=sys.stderr)
        return 2
    bound = bind_or_explain(settings.host, settings.port)
    if isinstance(bound, str):
        print(f"ripple serve: {bound}", file=sys.stderr)
        return 1
    sock = bound
    settings.port = int(sock.getsockname()[1])  # the port chosen, when asked for port 0
    for warning in plan.warnings:
        print(f"ripple: warning: {warning}", flush=True)
    if plan.mode == "development":
        try:
            settings.jwt_secret = ensure_dev_secret(settings)
        except (AuthSetupError, OSError) as exc:
            sock.close()
            print(f"ripple serve: cannot set up development auth: {exc}", file=sys.stderr)
            return 2
        print(
            "ripple: development auth: tokens from `ripple token` are accepted (secret in "
            f"{dev_secret_path(settings)}); set RIPPLE_JWT_SECRET or RIPPLE_JWKS for production",
            flush=True,
        )
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    try:
        if not dsn:
            data_dir = Path(settings.data_dir).resolve()
            embedded = EmbeddedPostgres()
            dsn = embedded.start(data_dir / "pgdata")
            print(f"ripple: embedded PostgreSQL, data in {data_dir / 'pgdata'}", flush=True)
            print(f"ripple: connect with: psql '{dsn}'", flush=True)
        else:
            print("ripple: using DATABASE_URL", flush=True)
        print(f"ripple: serving on {listen_url(settings)}", flush=True)
        app = create_app(settings, dsn, registry=registry)
        _tune_gc(settings.gc_gen0_threshold)
        # uvicorn shuts down gracefully on SIGTERM and then re-raises it; turned into KeyboardInterrupt here, that
        # re-raise unwinds to the `finally` below, so the embedded PostgreSQL is stopped too.
        signal.signal(signal.SIGTERM, _interrupt)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            log_config=None,  # keep the logging set up by configure_logging (text or JSON)
            ws_max_size=settings.max_message_bytes,
            ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_ping_timeout_s,
            timeout_graceful_shutdown=5,
        )
        if dev:
            from server.devserver import DevServer

            DevServer(config, project).run(sockets=[sock])
        else:
            GracefulServer(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if embedded is not None:
            embedded.stop()
    return 0


def listen_url(settings: Settings) -> str:
    """Where this server listens, whatever RIPPLE_URL (the CLI's target) says."""
    return settings.model_copy(update={"url": None}).client_url()
