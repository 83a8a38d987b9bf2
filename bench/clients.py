"""`python -m bench.clients`: one load-generating process, driven by the orchestrator over stdin/stdout.

The first stdin line is a JSON spec; later lines are commands (`stats`, `go`, `close`, `quit`). Every answer is
one JSON line on stdout. Modes:

* `convex`     - groups of sync WebSockets, each with some `bench:counter` subscriptions; records each update's
                 arrival against the commit stamp in the row (and the Transition's commit ts and serverTs).
* `raw`        - plain WebSockets to `bench.rawws`; records each broadcast's arrival against its stamp.
* `listen`     - one asyncpg connection LISTENing; records each NOTIFY's arrival against its stamp.
* `mutate`     - sync WebSockets sending `bench:bump` mutations, each socket one at a time.
* `rawmutate`  - asyncpg connections running the same read-modify-write transaction (with a NOTIFY in it, or
                 Ripple's statements), each one at a time; a NOTIFY goes to one more connection LISTENing, as
                 Ripple's go to its hub (a NOTIFY nobody listens to costs PostgreSQL next to nothing).

Every wait is bounded: the process exits by itself after `max_s` seconds, or when stdin closes.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.mutators import Mutator, RawMutator
from server.sync.protocol import decode_ts

OPEN_TIMEOUT_S = 120.0


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
    return want


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has used (user, nice, system, irq, softirq; /proc/stat): what a
    mutation costs in all, the server's, PostgreSQL's and the clients' share together, less moved by how busy
    the host is than a rate."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Group:
    """Subscriptions whose updates are tallied together."""

    def __init__(self, index: int, spec: dict[str, Any]) -> None:
        self.index = index
        self.sockets = int(spec["sockets"])
        self.per_socket = int(spec.get("per_socket", 1))
        self.row_start = int(spec.get("row_start", 0))
        self.row_count = int(spec.get("row_count", self.sockets * self.per_socket))
        self.record_all = bool(spec.get("record_all", True))
        self.notify_complete = bool(spec.get("notify_complete", False))
        self.expected = self.sockets * self.per_socket
        self.records: list[tuple[float, float, int | None, int | None, float]] = []
        self.seqs: dict[float, list[float]] = {}
        self.errors: list[str] = []
        self.msg_bytes = 0

    def rows_for(self, socket_index: int) -> list[str]:
        first = socket_index * self.per_socket
        return [f"r{self.row_start + (first + k) % self.row_count}" for k in range(self.per_socket)]

    def record(
        self, seq: float, stamp_ms: float, commit_ns: int | None, server_ns: int | None, arrival: float, size: int
    ) -> None:
        self.msg_bytes = size
        if self.record_all:
            self.records.append((seq, stamp_ms, commit_ns, server_ns, arrival))
        entry = self.seqs.get(seq)
        if entry is None:
            entry = self.seqs[seq] = [0, arrival, arrival, stamp_ms]
        entry[0] += 1
        entry[2] = arrival
        if self.notify_complete and entry[0] == self.expected:
            emit(
                {
                    "event": "complete",
                    "group": self.index,
                    "seq": seq,
                    "first": entry[1],
                    "last": entry[2],
                    "stamp": stamp_ms,
                }
            )

    def stats(self) -> dict[str, Any]:
        out = {
            "records": self.records,
            "seqs": [[k, *v] for k, v in self.seqs.items()],
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "msg_bytes": self.msg_bytes,
        }
        self.records, self.seqs, self.errors = [], {}, []
        return out


class Runner:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.mode = spec["mode"]
        self.groups = [Group(i, g) for i, g in enumerate(spec.get("groups", []))]
        self.compression = "deflate" if spec.get("deflate") else None
        self.sockets: list[Any] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.pending_ready = 0
        self.all_ready = asyncio.Event()
        self.failed: list[str] = []
        self.mutators: list[Mutator | RawMutator] = []
        self.pg: list[Any] = []
        self.notified = 0  # NOTIFYs the rawmutate listener received

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _one_ready(self) -> None:
        self.pending_ready -= 1
        if self.pending_ready == 0:
            self.all_ready.set()

    # Set-up.

    async def setup(self) -> None:
        t0 = time.perf_counter()
        if self.mode in ("convex", "raw"):
            await self._open_subscribers()
        elif self.mode == "listen":
            await self._open_listener()
        elif self.mode == "mutate":
            await self._open_mutators()
        elif self.mode == "rawmutate":
            await self._open_raw_mutators()
        else:
            raise ValueError(f"unknown mode {self.mode}")
        connected = time.perf_counter()
        if self.pending_ready:
            try:
                await asyncio.wait_for(self.all_ready.wait(), float(self.spec.get("ready_timeout_s", 300)))
            except TimeoutError:
                raise RuntimeError(
                    f"{self.pending_ready} sockets had no first result after {self.spec.get('ready_timeout_s', 300)} s"
                    + (f"; first error: {self.failed[0]}" if self.failed else "")
                ) from None
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} connections failed; first: {self.failed[0]}")
        emit(
            {
                "event": "ready",
                "connect_s": connected - t0,
                "ready_s": time.perf_counter() - t0,
                "sockets": len(self.sockets),
                "cpu_s": cpu_s(),
            }
        )

    async def _open_subscribers(self) -> None:
        from websockets.asyncio.client import connect

        url = self.spec["url"]
        limit = asyncio.Semaphore(int(self.spec.get("connect_concurrency", 64)))
        jobs = []
        for group in self.groups:
            for s in range(group.sockets):
                jobs.append((group, s))
        self.pending_ready = len(jobs)

        async def open_one(group: Group, s: int) -> None:
            async with limit:
                try:
                    ws = await connect(
                        url,
                        compression=self.compression,
                        max_size=None,
                        ping_interval=None,
                        open_timeout=OPEN_TIMEOUT_S,
                        close_timeout=1,
                        max_queue=None,
                    )
                except Exception as exc:
                    self.failed.append(f"connect: {exc!r}")
                    self.all_ready.set()
                    return
                self.sockets.append(ws)
                if self.mode == "convex":
                    rows = group.rows_for(s)
                    await ws.send(
                        orjson.dumps(
                            {
                                "type": "Connect",
                                "sessionId": str(uuid.uuid4()),
                                "connectionCount": 0,
                                "lastCloseReason": "InitialConnect",
                                "clientTs": 0,
                            }
                        ).decode()
                    )
                    await ws.send(
                        orjson.dumps(
                            {
                                "type": "ModifyQuerySet",
                                "baseVersion": 0,
                                "newVersion": 1,
                                "modifications": [
                                    {
                                        "type": "Add",
                                        "queryId": i,
                                        "udfPath": "bench:counter",
                                        "args": [{"twitchId": row}],
                                    }
                                    for i, row in enumerate(rows)
                                ],
                            }
                        ).decode()
                    )
                    self._spawn(self._read_convex(ws, group, len(rows)))
                else:
                    self._spawn(self._read_raw(ws, group))

        await asyncio.gather(*(open_one(g, s) for g, s in jobs))

    async def _read_convex(self, ws: Any, group: Group, n_queries: int) -> None:
        seen: set[int] = set()
        ready = False
        try:
            async for text in ws:
                arrival = time.time()
                msg = orjson.loads(text)
                kind = msg.get("type")
                if kind == "Transition":
                    commit_ns = decode_ts(msg["endVersion"]["ts"])
                    server_ns = msg.get("serverTs")
                    for mod in msg["modifications"]:
                        mtype = mod.get("type")
                        qid = mod.get("queryId")
                        if mtype == "QueryFailed":
                            group.errors.append(str(mod.get("errorMessage")))
                        if mtype not in ("QueryUpdated", "QueryFailed"):
                            continue
                        if qid not in seen:
                            seen.add(qid)
                            if not ready and len(seen) == n_queries:
                                ready = True
                                self._one_ready()
                            continue
                        value = mod.get("value")
                        if isinstance(value, dict):
                            group.record(value["seq"], value["stamp"], commit_ns, server_ns, arrival, len(text))
                elif kind in ("FatalError", "AuthError"):
                    group.errors.append(str(msg))
        except Exception as exc:
            group.errors.append(f"socket closed: {exc!r}")
        if not ready:
            self.failed.append(f"socket closed before its first results: {group.errors[-1:]}")
            self._one_ready()

    async def _read_raw(self, ws: Any, group: Group) -> None:
        ready = False
        try:
            async for text in ws:
                arrival = time.time()
                if not ready:
                    ready = True
                    self._one_ready()
                    continue
                msg = orjson.loads(text)
                group.record(msg["seq"], msg["stamp"], None, None, arrival, len(text))
        except Exception as exc:
            group.errors.append(f"socket closed: {exc!r}")
        if not ready:
            self.failed.append("raw socket closed before its hello")
            self._one_ready()

    async def _open_listener(self) -> None:
        import asyncpg

        group = self.groups[0]
        conn = await asyncpg.connect(self.spec["dsn"])
        self.pg.append(conn)

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            arrival = time.time()
            seq, stamp = payload.split(":")
            group.record(float(seq), float(stamp), None, None, arrival, len(payload))

        await conn.add_listener(self.spec["channel"], notified)

    async def _open_mutators(self) -> None:
        from websockets.asyncio.client import connect

        for i in range(int(self.spec["clients"])):
            ws = await connect(
                self.spec["url"],
                compression=self.compression,
                max_size=None,
                ping_interval=None,
                open_timeout=OPEN_TIMEOUT_S,
                close_timeout=1,
            )
            await ws.send(
                orjson.dumps(
                    {
                        "type": "Connect",
                        "sessionId": str(uuid.uuid4()),
                        "connectionCount": 0,
                        "lastCloseReason": "InitialConnect",
                        "clientTs": 0,
                    }
                ).decode()
            )
            m = Mutator(ws, f"r{int(self.spec['row_start']) + i}")
            self.mutators.append(m)
            self.sockets.append(ws)
            self._spawn(m.read())

    async def _open_raw_mutators(self) -> None:
        import asyncpg

        channel = None
        if self.spec.get("like_ripple"):
            channel = "ripple_commits"
        elif self.spec.get("notify"):
            channel = "bench_floor"
        if channel is not None:
            listener = await asyncpg.connect(self.spec["dsn"])
            self.pg.append(listener)

            def notified(*_: Any) -> None:
                self.notified += 1

            await listener.add_listener(channel, notified)
        for i in range(int(self.spec["clients"])):
            conn = await asyncpg.connect(self.spec["dsn"])
            self.pg.append(conn)
            self.mutators.append(
                RawMutator(
                    conn,
                    self.spec["table"],
                    f"r{int(self.spec['row_start']) + i}",
                    like_ripple=bool(self.spec.get("like_ripple")),
                    notify=bool(self.spec.get("notify")),
                )
            )

    # Commands.

    async def go(self) -> None:
        """Run every mutator for warm-up + duration; report what completed inside the measured window."""
        warm = float(self.spec.get("warmup_s", 1.0))
        duration = float(self.spec["duration_s"])
        t0 = time.perf_counter()
        start, end = t0 + warm, t0 + warm + duration
        cpu0: float | None = None
        busy0: float | None = None

        async def mark() -> None:
            nonlocal cpu0, busy0
            await asyncio.sleep(warm)
            cpu0, busy0 = cpu_s(), machine_busy_s()

        marker = asyncio.create_task(mark())
        await asyncio.gather(*(m.run(end) for m in self.mutators))
        await marker
        done = [lat for m in self.mutators for (t, lat) in m.done if start <= t <= end]
        emit(
            {
                "event": "result",
                "count": len(done),
                "window_s": duration,
                "latencies": done,
                "errors": sum(m.errors for m in self.mutators),
                "retries": sum(m.retries for m in self.mutators),
                "notified": self.notified,
                "cover": [c for m in self.mutators for c in getattr(m, "cover", [])],
                "first_error": next((m.first_error for m in self.mutators if m.first_error), None),
                "cpu_s": cpu_s() - (cpu0 or 0.0),
                "machine_cpu_s": machine_busy_s() - (busy0 or 0.0),
            }
        )

    async def close_sockets(self) -> None:
        """Every other WebSocket closes with a close handshake (code 1000), as a client that leaves does; the rest
        are dropped (the TCP connection closed with no close frame), as a lost network or a killed process does.
        A server may tear a session down differently in the two cases, so a churn run covers both."""
        t0 = time.perf_counter()
        sockets, self.sockets = self.sockets, []
        for ws in sockets[1::2]:
            ws.transport.abort()
        results = await asyncio.gather(*(ws.close() for ws in sockets[::2]), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        emit(
            {
                "event": "closed",
                "sockets": len(sockets),
                "failed": len(failed),
                "first_error": repr(failed[0]) if failed else None,
                "close_s": time.perf_counter() - t0,
            }
        )

    async def serve(self, reader: asyncio.StreamReader) -> None:
        try:
            await self.setup()
        except Exception as exc:
            emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
            return
        while True:
            line = await reader.readline()
            if not line:
                return
            cmd = line.decode().strip()
            if cmd == "stats":
                emit({"event": "stats", "groups": [g.stats() for g in self.groups], "cpu_s": cpu_s()})
            elif cmd == "go":
                await self.go()
            elif cmd == "close":
                await self.close_sockets()
            elif cmd == "quit":
                return


async def _main() -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if not line:
        return
    spec = orjson.loads(line)
    max_s = float(spec.get("max_s", 900))
    try:
        await asyncio.wait_for(Runner(spec).serve(reader), max_s)
    except TimeoutError:
        emit({"event": "error", "message": f"client process gave up after {max_s} s"})


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())
    sys.stdout.flush()
    # Sockets close with the process; thousands of closing handshakes would only slow the exit down.
    os._exit(0)


if __name__ == "__main__":
    main()
