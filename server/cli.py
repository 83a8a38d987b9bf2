"""`ripple`: serve, mint a development token, call a function, watch a query live, follow the function log, run the
benchmark."""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import GracefulServer, create_app, load_modules
    from server.config import get_settings
    from server.database.embedded import EmbeddedPostgres

    settings = get_settings()
    if args.port is not None:
        settings.port = args.port
    if args.host is not None:
        settings.host = args.host
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if not dsn:
        data_dir = Path(settings.data_dir).resolve()
        embedded = EmbeddedPostgres()
        dsn = embedded.start(data_dir / "pgdata")
        print(f"ripple: embedded PostgreSQL, data in {data_dir / 'pgdata'}", flush=True)
        print(f"ripple: connect with: psql '{dsn}'", flush=True)
    else:
        print("ripple: using DATABASE_URL", flush=True)
    print(f"ripple: serving on http://{settings.host}:{settings.port}", flush=True)
    app = create_app(settings, dsn)
    load_modules(settings.modules)
    _tune_gc(settings.gc_gen0_threshold)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; turned into KeyboardInterrupt here, that
    # re-raise unwinds to the `finally` below, so the embedded PostgreSQL is stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
            log_config=None,  # keep the logging set up by configure_logging (text or JSON)
            ws_max_size=settings.max_message_bytes,
            ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_ping_timeout_s,
            timeout_graceful_shutdown=5,
        )
        GracefulServer(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _token(args: argparse.Namespace) -> int:
    from server.auth import make_dev_token
    from server.config import get_settings

    settings = get_settings()
    if not settings.jwt_secret:
        print("ripple token: set RIPPLE_JWT_SECRET (the HS256 secret the server verifies with)", file=sys.stderr)
        return 2
    print(
        make_dev_token(
            settings.jwt_secret,
            args.sub,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            name=args.name,
            email=args.email,
            ttl_s=args.ttl,
        )
    )
    return 0


def _parse_args_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f'ARGS must be a JSON object, like \'{{"jobId": "j1"}}\': {exc}') from None
    if not isinstance(value, dict):
        raise SystemExit("ARGS must be a JSON object")
    return value


def _run(args: argparse.Namespace) -> int:
    from server.watch import run_once

    return run_once(args.url, args.function, _parse_args_json(args.args), token=args.token, admin_key=args.admin_key)


def _watch(args: argparse.Namespace) -> int:
    from server.watch import watch

    return watch(args.url, args.function, _parse_args_json(args.args), token=args.token)


def _logs(args: argparse.Namespace) -> int:
    from server.log_tail import tail

    return tail(
        args.url,
        args.admin_key or os.environ.get("RIPPLE_ADMIN_KEY"),
        function=args.function,
        level=args.level,
        request_id=args.request,
        as_json=args.json,
        count=args.count,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options (argparse would eat leading ones)
        from bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ripple", description="Convex's reactive backend, on PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (embedded PostgreSQL unless DATABASE_URL is set)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(fn=_serve)

    token = sub.add_parser("token", help="print a development JWT signed with RIPPLE_JWT_SECRET")
    token.add_argument("--sub", required=True, help="the user's subject (id)")
    token.add_argument("--name")
    token.add_argument("--email")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(fn=_token)

    for name, fn, helptext in (
        ("run", _run, "call a function once and print its result"),
        ("watch", _watch, "subscribe to a query and redraw its result live"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("function", help='wire name, like "videos:getJobById"')
        p.add_argument("args", nargs="?", default="{}", help="arguments as a JSON object")
        p.add_argument("--url", default="http://127.0.0.1:8000")
        p.add_argument("--token", help="a JWT to call as a signed-in user")
        if name == "run":
            p.add_argument("--admin-key", help="call with the admin key (trusted workers)")
        p.set_defaults(fn=fn)

    logs = sub.add_parser("logs", help="follow the function log live (calls, printed and logged lines)")
    logs.add_argument("--url", default="http://127.0.0.1:8000")
    logs.add_argument("--admin-key", help="the server's admin key (default: RIPPLE_ADMIN_KEY)")
    logs.add_argument("--function", help='only this function, like "videos:getJobById"')
    logs.add_argument("--level", choices=["debug", "info", "warn", "error"], help="only this level and above")
    logs.add_argument("--request", help="only this request id (as an error message names it)")
    logs.add_argument("--json", action="store_true", help="print each record as JSON")
    logs.add_argument("--count", type=int, help="stop after this many records")
    logs.set_defaults(fn=_logs)

    sub.add_parser("bench", help="measure Ripple against floors measured in the same run (--quick, --help)")

    args = parser.parse_args(argv)
    from server.logs import configure_logging

    configure_logging(getattr(args, "log_level", "info"), os.environ.get("RIPPLE_LOG_FORMAT", "text"))
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
