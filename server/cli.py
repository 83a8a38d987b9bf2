"""`ripple`: serve a project folder (by default the seed apps'), create a project, develop one with reload, mint a
development token, call a function, watch a query live, follow the function log, generate typed client code, run
the benchmark."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.config import Settings
    from server.project import Project

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from server.project import LoadFailed, ProjectError
    from server.serve import serve

    settings = args.settings
    settings.host, settings.port = args.host, args.port
    settings.schema_allow_destructive = args.allow_destructive_schema
    try:
        project = _project(args)
        registry = project.load()
    except (ProjectError, LoadFailed) as exc:
        print(f"ripple {args.command}: {exc}", file=sys.stderr)
        return 1
    production = args.production or settings.env == "production"
    return serve(
        settings, project, registry, dev=args.command == "dev", production=production, log_level=args.log_level
    )


def _project(args: argparse.Namespace) -> Project:
    """The project to serve: PATH, else RIPPLE_PROJECT, else the current folder (`dev`) or the seed applications;
    with the RIPPLE_MODULES entries loaded beside its functions.

    Raises:
        ProjectError: the folder is not a project, or no PATH was given and the seed project is not installed.
    """
    from server.project import Project, seed_project

    settings = args.settings
    path = args.path or settings.project or ("." if args.command == "dev" else None)
    return Project.open(path, settings.modules) if path else seed_project(settings.modules)


def _init(args: argparse.Namespace) -> int:
    from server.project import ProjectError, init_project

    dest = Path(args.dir)
    try:
        init_project(dest)
    except ProjectError as exc:
        print(f"ripple init: {exc}", file=sys.stderr)
        return 1
    print(f"ripple: created a project in {dest}\n  cd {dest}\n  ripple dev    # serve it, reloading on save")
    print("  pytest        # run its tests")
    return 0


def _token(args: argparse.Namespace) -> int:
    from server.auth import make_dev_token
    from server.dev_auth import AuthSetupError, dev_secret_path, read_dev_secret

    settings = args.settings
    secret = settings.jwt_secret
    if not secret:
        if settings.jwks or settings.all_auth_providers():
            print(
                "ripple token: this server verifies tokens of your identity provider (RIPPLE_JWKS, "
                "RIPPLE_AUTH_PROVIDERS or RIPPLE_AUTH_CONFIG); get a token there, or also set RIPPLE_JWT_SECRET to "
                "accept tokens signed with it",
                file=sys.stderr,
            )
            return 2
        if settings.env == "production":
            print(
                "ripple token: RIPPLE_ENV=production never uses the development secret; set RIPPLE_JWT_SECRET to "
                "the server's HS256 secret",
                file=sys.stderr,
            )
            return 2
        try:
            secret = read_dev_secret(settings)
        except AuthSetupError as exc:
            print(f"ripple token: {exc}", file=sys.stderr)
            return 2
        if secret is None:
            print(
                f"ripple token: no development secret at {dev_secret_path(settings)} yet: start `ripple serve` once "
                "with the same settings (same directory or RIPPLE_DATA_DIR; it makes the secret), or set "
                "RIPPLE_JWT_SECRET to the server's secret",
                file=sys.stderr,
            )
            return 2
    print(
        make_dev_token(
            secret,
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


def _admin_key(args: argparse.Namespace) -> str | None:
    """--admin-key, else RIPPLE_ADMIN_KEY unless --token says to call as a user: a flag overrides the
    environment, so a worker's shell with the admin key set can still try a call as alice."""
    if args.admin_key and args.token:
        raise SystemExit(f"ripple {args.command}: give --token (call as a user) or --admin-key, not both")
    if args.admin_key or args.token:
        return str(args.admin_key) if args.admin_key else None
    admin_key: str | None = args.settings.admin_key
    return admin_key


def _run(args: argparse.Namespace) -> int:
    from server.watch import run_once

    args_json = _parse_args_json(args.args)
    return run_once(args.url, args.function, args_json, token=args.token, admin_key=_admin_key(args))


def _watch(args: argparse.Namespace) -> int:
    from server.watch import watch

    args_json = _parse_args_json(args.args)
    return watch(args.url, args.function, args_json, token=args.token, admin_key=_admin_key(args))


def _logs(args: argparse.Namespace) -> int:
    from server.log_tail import tail

    return tail(
        args.url,
        args.admin_key or args.settings.admin_key,
        function=args.function,
        level=args.level,
        request_id=args.request,
        as_json=args.json,
        count=args.count,
    )


def _codegen(args: argparse.Namespace) -> int:
    from server.codegen import CodegenError, run
    from server.database.embedded import EmbeddedPostgres
    from server.project import LoadFailed, ProjectError

    settings = args.settings
    out = Path(args.out)
    try:
        project = _project(args)
        registry = project.load()
    except (ProjectError, LoadFailed) as exc:
        print(f"ripple codegen: {exc}", file=sys.stderr)
        return 1
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    try:
        if not dsn:  # the tables come from PostgreSQL, as `serve` reads them: the same embedded server and data
            embedded = EmbeddedPostgres()
            dsn = embedded.start(Path(settings.data_dir).resolve() / "pgdata")
        python = Path(args.python) if args.python else None
        changed = run(dsn, project.schema_path, registry, out, python)
    except CodegenError as exc:
        print(f"ripple codegen: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    print(f"ripple codegen: {', '.join(changed) if changed else 'nothing changed'} in {out}")
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, as it stands with this environment and `.env`: `ripple serve
    --help` run where the server runs says which port it takes. Options without a value (unset) say in their own
    words what happens then; secrets are never shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


def _load_settings() -> Settings:
    from pydantic import ValidationError

    from server.config import Settings, get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            info = Settings.model_fields.get(name)
            alias = info.validation_alias if info is not None else None
            variable = alias if isinstance(alias, str) else f"RIPPLE_{name.upper()}"
            problems.append(f"{variable}: {error['msg']}" if name else str(error["msg"]))
        raise SystemExit(f"ripple: a setting is invalid (environment or .env): {'; '.join(problems)}") from None


def _parser(settings: Settings) -> argparse.ArgumentParser:
    admin_key_state = "set" if settings.admin_key else "unset"
    client_url = settings.client_url()

    def command(name: str, helptext: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, description=description or helptext, formatter_class=_HelpFormatter)

    def client_options(p: argparse.ArgumentParser, admin_help: str) -> None:
        p.add_argument(
            "--url",
            default=client_url,
            help="the server to call (default: %(default)s, from RIPPLE_URL, else http://RIPPLE_HOST:RIPPLE_PORT)",
        )
        p.add_argument(
            "--admin-key",
            help=f"{admin_help} (default: RIPPLE_ADMIN_KEY, now {admin_key_state})",
        )

    parser = argparse.ArgumentParser(
        prog="ripple",
        description="Convex's reactive backend, on PostgreSQL. Settings come from RIPPLE_* variables and .env; "
        "every command reads the same ones, and flags override them.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = command(
        "init",
        "create a project folder: schema.sql, functions/, a test, pytest.ini and a README",
        "Write a working Ripple project into DIR (new or empty): schema.sql with one table and index, "
        "functions/messages.py with one query and one mutation, a test using Ripple's pytest plugin, and a README. "
        "Then: cd DIR && ripple dev (serve it, reloading on save) and pytest.",
    )
    init.add_argument("dir", help="the folder to create")
    init.set_defaults(fn=_init)

    serve = command(
        "serve",
        "run the server (embedded PostgreSQL unless DATABASE_URL is set)",
        "Run the server. Without DATABASE_URL it starts an embedded PostgreSQL in RIPPLE_DATA_DIR; without "
        "RIPPLE_JWT_SECRET or RIPPLE_JWKS it accepts development tokens (`ripple token`), signed with a secret it "
        "keeps in RIPPLE_DATA_DIR.",
    )
    serve.add_argument(
        "path",
        nargs="?",
        help="a project folder (schema.sql and functions/) to serve; default: RIPPLE_PROJECT, else the seed "
        "applications shipped with Ripple",
    )
    serve.add_argument(
        "--host", default=settings.host, help="interface to listen on (default: %(default)s, from RIPPLE_HOST)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=settings.port,
        help="port to listen on; 0 picks a free one (default: %(default)s, from RIPPLE_PORT)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log level"
    )
    serve.add_argument(
        "--production",
        action="store_true",
        default=settings.env == "production",
        help="refuse to start without real auth (RIPPLE_JWT_SECRET or RIPPLE_JWKS); same as RIPPLE_ENV=production "
        f"(now {settings.env})",
    )
    serve.add_argument(
        "--allow-destructive-schema",
        action="store_true",
        default=settings.schema_allow_destructive,
        help="apply a changed schema.sql even where it drops or retypes data (listed when a start refuses it); "
        "same as RIPPLE_SCHEMA_ALLOW_DESTRUCTIVE=1",
    )
    serve.set_defaults(fn=_serve)
    # `ripple dev [PATH]`: `serve` of a project (default: this folder) that reloads its functions and schema on save.
    dev = sub.add_parser(
        "dev",
        parents=[serve],
        add_help=False,
        help="serve a project folder (default: this one) and reload its functions and schema.sql on save",
        description="Serve a project folder (default: RIPPLE_PROJECT, else the current folder) like `serve`, and "
        "on each saved change reload its functions in place: open sockets stay and every subscription re-runs "
        "with the new code. A module that fails to import is reported and the last good code keeps serving; a "
        "schema.sql change is applied (a destructive one is refused and reported).",
        formatter_class=_HelpFormatter,
    )
    dev.set_defaults(fn=_serve)

    token = command(
        "token",
        "print a development JWT the server accepts",
        "Print an HS256 JWT for a user, signed with RIPPLE_JWT_SECRET or, when that is unset, the development "
        "secret `ripple serve` keeps in RIPPLE_DATA_DIR (outside production).",
    )
    token.add_argument("--sub", required=True, help="the user's subject (id)")
    token.add_argument("--name", help="the user's name claim (unset: none)")
    token.add_argument("--email", help="the user's email claim (unset: none)")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(fn=_token)

    for name, fn, helptext in (
        ("run", _run, "call a function once and print its result"),
        ("watch", _watch, "subscribe to a query and redraw its result live"),
    ):
        p = command(name, helptext)
        p.add_argument("function", help='wire name, like "videos:getJobById"')
        p.add_argument("args", nargs="?", default="{}", help="arguments as a JSON object")
        client_options(
            p, "call with the admin key, as trusted workers do; RIPPLE_ADMIN_KEY is not used when --token is given"
        )
        p.add_argument("--token", help="a JWT to call as a signed-in user, e.g. from `ripple token` (unset: anonymous)")
        p.set_defaults(fn=fn)

    logs = command("logs", "follow the function log live (calls, printed and logged lines)")
    client_options(logs, "the server's admin key, which the log stream needs")
    logs.add_argument("--function", help='only this function, like "videos:getJobById" (unset: all)')
    logs.add_argument(
        "--level", choices=["debug", "info", "warn", "error"], help="only this level and above (unset: all)"
    )
    logs.add_argument("--request", help="only this request id, as an error message names it (unset: all)")
    logs.add_argument("--json", action="store_true", help="print each record as JSON")
    logs.add_argument("--count", type=int, help="stop after this many records (unset: follow until Ctrl-C)")
    logs.set_defaults(fn=_logs)

    codegen = command(
        "codegen",
        "write typed client code: Convex's _generated/api.d.ts, api.js, dataModel.d.ts, and a Python client",
        "Write Convex's _generated/ files from the Python functions and schema.sql, so that `api.module.fn` is "
        "typed for the npm client. Reads the tables from DATABASE_URL, else from the embedded PostgreSQL in "
        "RIPPLE_DATA_DIR (applying schema.sql first, as `serve` does).",
    )
    codegen.add_argument(
        "path",
        nargs="?",
        help="the project folder (schema.sql and functions/) to generate for; default: RIPPLE_PROJECT, else the "
        "seed applications shipped with Ripple",
    )
    codegen.add_argument("--out", default="convex/_generated", help="the folder to write the files into")
    codegen.add_argument(
        "--python",
        metavar="FILE",
        help="also write a typed Python client (on the official `convex` PyPI client) to this file (unset: none)",
    )
    codegen.set_defaults(fn=_codegen)

    sub.add_parser("bench", help="measure Ripple against floors measured in the same run (--quick, --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options (argparse would eat leading ones)
        from bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    settings = _load_settings()
    args = _parser(settings).parse_args(argv)
    args.settings = settings
    from server.logs import configure_logging

    configure_logging(getattr(args, "log_level", "info"), settings.log_format)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
