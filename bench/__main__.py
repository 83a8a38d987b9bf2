"""`ripple bench` / `python -m bench`: Ripple against floors measured in the same run, printed as one table.

Processes (a 2-core machine is assumed, so load generation never shares the server's process):

* this process: starts PostgreSQL (embedded, or a fresh database on `DATABASE_URL`'s server), seeds rows, is the
  writer (plain SQL at a steady rate, each write stamped with its wall-clock time in the row) and reads results;
* a Ripple server (`python -m server serve`), a fresh one per phase (one shared by all phases with --quick),
  with `bench.functions` loaded;
* a client process (`python -m bench.clients`) holding the sockets, LISTEN connection or mutators;
* for the fan-out and memory floors, a bare `websockets` server (`python -m bench.rawws`).

Phases and floors:

1. latency   - commit → client latency, 1,000 subscriptions of distinct rows, steady write rate.
               Floor: the same writes to a trigger-less table with NOTIFY in the same statement, a LISTENer.
2. fanout    - one change to N subscribers of one query: commit → last subscriber received.
               Floor: a bare websockets server broadcasting a message of the same size to N clients.
3. tick      - a commit touching a row nobody reads, with 10,000 vs 10 unrelated subscriptions: the server's own
               commit-to-round-done histogram (/metrics), plus a tracker subscription's latency.
4. mutations - mutations/s over the sync protocol, several sockets each one at a time.
               Floor: the same read-modify-write as SERIALIZABLE asyncpg transactions with a NOTIFY that a
               LISTENing connection receives (as Ripple's hub does), same concurrency.
5. memory    - server RSS growth per idle connection with one subscription. Floor: the bare websockets server.
6. churn     - server RSS before and after each of three cycles of sockets that connect, subscribe, receive the
               first result and close (a handshake), each reading once /metrics shows no socket left. No floor:
               it passes when RSS after the third cycle is within 10% of the first cycle's growth (or 5 MiB)
               of RSS after the first, i.e. closed sessions leave nothing behind.
7. scheduler - due time → function start p50/p99 of jobs scheduled 10 ms ahead, and scheduled mutations run per
               second draining a backlog. Floors: an asyncio timer plus the executor's due query and claim, with
               no server; the executor's claim-run-mark SQL over a backlog from one bare asyncpg connection.

Besides the table, the notes under it give the server's side of each figure: its CPU time (/proc), its own
commit-to-Transitions histogram (/metrics), its garbage-collector pauses (`bench:gcStats`, a callback that
`bench.functions` installs inside the server), and for mutations what the database backends were doing
(pg_stat_activity sampled at 100 Hz). Flags marked "experiment" change the server's setup to test a suspected
bottleneck; the table then says so in its title.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench.clients import raise_nofile
from bench.phases import Bench
from bench.report import PHASES, Config, Report, log, render  # noqa: F401


async def run(args: argparse.Namespace) -> int:
    from server.database.embedded import EmbeddedPostgres, create_database, drop_database

    cfg = Config.make(args.quick)
    only = [p.strip() for p in args.only.split(",")] if args.only else list(PHASES)
    unknown = set(only) - set(PHASES)
    if unknown:
        print(f"unknown phase(s) {sorted(unknown)}; phases are {', '.join(PHASES)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="ripple-bench-"))
    embedded: EmbeddedPostgres | None = None
    db_name = f"ripple_bench_{secrets.token_hex(4)}"
    admin = args.database_url
    bench: Bench | None = None
    try:
        if not admin:
            embedded = EmbeddedPostgres()
            admin = embedded.start(workdir / "pgdata")
            log("embedded PostgreSQL started")
        dsn = await create_database(admin, db_name)
        bench = Bench(cfg, dsn, workdir, Path(args.profile) if args.profile else None)
        bench.gc_threshold, bench.gc_freeze = args.server_gc_threshold, args.gc_freeze
        bench.deflate = args.deflate
        bench.report.experiment = " ".join(
            ([f"server gc.set_threshold({args.server_gc_threshold})"] if args.server_gc_threshold else [])
            + (["server gc.freeze() after connecting"] if args.gc_freeze else [])
            + (["clients offer permessage-deflate"] if args.deflate else [])
        )
        await bench.prepare()
        log(f"database ready: {cfg.mut_row + cfg.mut_clients + 10} bench rows")
        for name in PHASES:
            if name not in only:
                continue
            try:
                t_phase = time.perf_counter()
                await asyncio.wait_for(getattr(bench, f"phase_{name}")(), 600)
                log(f"phase {name} done in {time.perf_counter() - t_phase:.0f} s")
            except Exception as exc:
                log(f"phase {name} failed: {type(exc).__name__}: {exc}")
                bench.report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        if bench is not None:
            await bench.close()
        if admin:
            try:
                await drop_database(admin, db_name)
            except Exception as exc:
                log(f"could not drop {db_name}: {exc}")
        if embedded is not None:
            embedded.stop()
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert bench is not None
    print(render(bench.report, cfg, time.perf_counter() - started), flush=True)
    if args.json:
        import orjson

        out = {
            "quick": cfg.quick,
            "rows": [r.__dict__ for r in bench.report.rows],
            "notes": bench.report.notes,
            "errors": bench.report.errors,
            "data": bench.report.data,
        }
        Path(args.json).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if bench.report.errors:
        return 1
    if args.strict and any(r.ok is False for r in bench.report.rows):
        return 1
    return 0


def main(argv: list[str]) -> int:
    import os

    parser = argparse.ArgumentParser(prog="ripple bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller numbers, under a minute (a smoke run)")
    parser.add_argument("--only", help=f"comma-separated phases to run: {', '.join(PHASES)}")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record each phase's server with py-spy into DIR (collapsed stacks: flamegraph, speedscope); "
        "sampling pauses the server, so a profiled run's timings are not comparable",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the server and client logs")
    parser.add_argument(
        "--server-gc-threshold",
        metavar="G0,G1,G2",
        help="experiment: gc.set_threshold(G0, G1, G2) inside the server (via bench.functions)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() inside the server once a phase's sockets are connected",
    )
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="clients offer permessage-deflate (browsers and the npm client do; the default run does not)",
    )
    args = parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    args.database_url = os.environ.get("DATABASE_URL")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * Config.make(args.quick).fan_subs + 200:
        log(f"warning: the open-file limit is {soft}; thousands of sockets may fail")
    return asyncio.run(asyncio.wait_for(run(args), 1800))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
