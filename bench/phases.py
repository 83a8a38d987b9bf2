"""The benchmark's phases: latency, fan-out, tick and mutations here; memory and churn in memory.py; the
scheduler's in scheduler.py. Each measures Ripple and, but for churn, its floor."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from bench.memory import MemoryPhases
from bench.procs import ClientProc, Profiler, RawServer
from bench.report import (
    backends,
    delta,
    fx,
    gc_note,
    join_values,
    log,
    median,
    ms,
    pct,
    per_mutation,
    ratio,
    round_mean_ms,
    rounds,
)
from bench.scheduler import SchedulerPhase


class Bench(MemoryPhases, SchedulerPhase):
    """The seven phases, each measuring Ripple (and, but for churn, its floor) in the same run."""

    # 1. Latency.

    async def phase_latency(self) -> None:
        cfg = self.cfg
        subs = cfg.lat_sockets * cfg.lat_per_socket
        n = int(cfg.lat_rate * cfg.lat_duration_s)
        order = list(range(subs))
        random.Random(7).shuffle(order)

        log(f"latency floor: commit+NOTIFY → LISTENer, {n} commits at {cfg.lat_rate:.0f}/s")
        client, _ = await self.clients(
            {"mode": "listen", "dsn": self.dsn, "channel": "bench_floor", "groups": [{"sockets": 1}]}, "listen"
        )
        try:
            lag_f = await self.steady(self.write_floor, order, cfg.lat_rate, n)
            await asyncio.sleep(self.cfg.settle_s)
            floor = (await client.stats())["groups"][0]
        finally:
            await client.close()
        f_lat = [r[4] * 1000 - r[1] for r in floor["records"]]

        log(f"latency Ripple: {subs} subscriptions on {cfg.lat_sockets} sockets, {n} commits at {cfg.lat_rate:.0f}/s")
        srv = await self.server("latency")
        prof = None
        try:
            client, ready = await self.clients(
                {
                    "mode": "convex",
                    "url": srv.ws_url,
                    "groups": [
                        {
                            "sockets": cfg.lat_sockets,
                            "per_socket": cfg.lat_per_socket,
                            "row_start": 0,
                            "row_count": subs,
                        }
                    ],
                },
                "latency",
            )
            log(f"  {subs} subscriptions ready in {ready['ready_s']:.1f} s")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                prof = await Profiler.start(self.profile, srv.pid, "latency")
                cpu0, m0, gc0 = srv.cpu_s(), await srv.metrics(), await srv.gc_stats(self.gc_freeze)
                lag_r = await self.steady(self.write_row, order, cfg.lat_rate, n)
                await asyncio.sleep(self.cfg.settle_s + 0.5)
                cpu1, m1, gc1 = srv.cpu_s(), await srv.metrics(), await srv.gc_stats()
                ripple = (await client.stats())["groups"][0]
            finally:
                await client.close()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)
        recs = ripple["records"]
        r_lat = [r[4] * 1000 - r[1] for r in recs]
        hub = [r[3] / 1e6 - r[1] for r in recs]
        wire = [r[4] * 1000 - r[3] / 1e6 for r in recs]

        f50, f99, r50, r99 = pct(f_lat, 50), pct(f_lat, 99), pct(r_lat, 50), pct(r_lat, 99)
        self.add(
            f"1. commit→client p50 ({subs} subs, {cfg.lat_rate:.0f} commits/s)",
            ms(r50),
            ms(f50),
            fx(ratio(r50, f50)),
            "≤ 3x floor",
            ratio(r50, f50) <= 3,
        )
        self.add("1. commit→client p99", ms(r99), ms(f99), fx(ratio(r99, f99)), "≤ 15 ms", r99 <= 15)
        self.note(
            f"1. received {len(r_lat)}/{n} updates (floor {len(f_lat)}/{n}); max {ms(max(r_lat, default=math.nan))} "
            f"(floor {ms(max(f_lat, default=math.nan))}); breakdown p50: write→serverTs (commit, NOTIFY, hub round, "
            f"queue) {ms(median(hub))}, serverTs→client {ms(median(wire))}; "
            f"p99: {ms(pct(hub, 99))} / {ms(pct(wire, 99))}; server CPU "
            f"{(cpu1 - cpu0) / max(1, len(r_lat)) * 1e3:.2f} ms per commit; server round (NOTIFY → Transitions "
            f"queued) mean {ms(round_mean_ms(m0, m1))} over {rounds(m0, m1):.0f} rounds "
            f"({delta(m0, m1, 'ripple_hub_settles_total'):.0f} settled); "
            f"writer max lag {lag_r * 1e3:.1f} ms "
            f"(floor {lag_f * 1e3:.1f} ms); {gc_note(gc0, gc1)}"
        )
        self.report.data["latency"] = {
            "ripple_ms": r_lat,
            "floor_ms": f_lat,
            "hub_ms": hub,
            "wire_ms": wire,
        }
        if ripple["error_count"]:
            self.report.errors.append(f"latency: {ripple['error_count']} client errors: {ripple['errors'][:3]}")

    # 2. Fan-out.

    async def _fan_trials(self, client: ClientProc, trigger: Any, cpu: Any) -> list[dict[str, float]]:
        out = []
        for _ in range(self.cfg.fan_trials):
            await asyncio.sleep(0.5)
            c0 = cpu()
            seq, stamp = await trigger()
            ev = await client.event("complete", 60, match=lambda e, s=seq: e["seq"] == s)
            await asyncio.sleep(0.05)
            out.append(
                {"last": ev["last"] * 1000 - stamp, "first": ev["first"] * 1000 - stamp, "cpu_ms": (cpu() - c0) * 1000}
            )
        return out

    async def phase_fanout(self) -> None:
        cfg = self.cfg
        n = cfg.fan_subs
        group = {
            "sockets": n,
            "per_socket": 1,
            "row_start": cfg.fan_row,
            "row_count": 1,
            "record_all": False,
            "notify_complete": True,
        }

        log(f"fan-out Ripple: {n} sockets subscribed to one query, {cfg.fan_trials} changes")
        srv = await self.server("fanout")
        prof = None
        try:
            client, ready = await self.clients({"mode": "convex", "url": srv.ws_url, "groups": [group]}, "fanout")
            log(f"  {n} sockets ready in {ready['ready_s']:.1f} s")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                idle = await self.idle_cpu(srv.cpu_s)
                prof = await Profiler.start(self.profile, srv.pid, "fanout")
                m0, gc0 = await srv.metrics(), await srv.gc_stats(self.gc_freeze)
                ripple = await self._fan_trials(client, lambda: self.write_row(cfg.fan_row), srv.cpu_s)
                round_ms, gc1 = round_mean_ms(m0, await srv.metrics()), await srv.gc_stats()
                size = (await client.stats())["groups"][0]["msg_bytes"]
            finally:
                await client.close()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)

        log(
            f"fan-out floor: bare websockets broadcast of {size} bytes to {n} sockets (server idle CPU with "
            f"{n} sockets was {idle:.1f}%)"
        )
        raw = await RawServer.start(self.workdir)
        try:
            client, ready = await self.clients({"mode": "raw", "url": raw.ws_url, "groups": [group]}, "fanout-raw")
            try:
                from websockets.asyncio.client import connect

                async with connect(raw.control_url, compression=None, ping_interval=None) as control:
                    await asyncio.sleep(self.cfg.settle_s)

                    async def trigger() -> tuple[int, float]:
                        seq = self.next_seq()
                        stamp = time.time() * 1000.0
                        await control.send(f"go {seq} {stamp!r} {size}")
                        return seq, stamp

                    floor = await self._fan_trials(client, trigger, raw.cpu_s)
                    await control.recv()
            finally:
                await client.close()
        finally:
            await raw.stop()

        r_last, f_last = median([t["last"] for t in ripple]), median([t["last"] for t in floor])
        self.add(
            f"2. fan-out to {n} subscribers (commit→last, median of {cfg.fan_trials})",
            ms(r_last),
            ms(f_last),
            fx(ratio(r_last, f_last)),
            "≤ 1.5x floor",
            ratio(r_last, f_last) <= 1.5,
        )
        r_cpu, f_cpu = median([t["cpu_ms"] for t in ripple]), median([t["cpu_ms"] for t in floor])
        self.note(
            f"2. per trial, Ripple last: {join_values(t['last'] for t in ripple)} ms, first "
            f"{median([t['first'] for t in ripple]):.1f} ms; floor last: "
            f"{join_values(t['last'] for t in floor)} ms, first {median([t['first'] for t in floor]):.1f} ms; "
            f"server CPU per change {r_cpu:.0f} ms = {r_cpu * 1000 / n:.0f} µs/subscriber (floor {f_cpu:.0f} ms = "
            f"{f_cpu * 1000 / n:.0f} µs); server round (NOTIFY → all {n} Transitions queued, /metrics mean) "
            f"{ms(round_ms)}; message {size} bytes; idle server CPU with {n} sockets {idle:.1f}%; during the "
            f"{cfg.fan_trials} changes: {gc_note(gc0, gc1)}"
        )
        self.report.data["fanout"] = {"ripple": ripple, "floor": floor, "msg_bytes": size}

    # 3. Tick cost.

    async def _tick_case(self, unrelated: int) -> dict[str, Any]:
        cfg = self.cfg
        per = min(100, unrelated)
        groups = [
            {
                "sockets": math.ceil(unrelated / per),
                "per_socket": per,
                "row_start": 0,
                "row_count": unrelated,
                "record_all": False,
            },
            {"sockets": 1, "per_socket": 1, "row_start": cfg.tracker_row, "row_count": 1},
        ]
        srv = await self.server(f"tick{unrelated}")
        prof = None
        try:
            client, ready = await self.clients(
                {"mode": "convex", "url": srv.ws_url, "groups": groups}, f"tick{unrelated}"
            )
            log(f"  {unrelated} unrelated subscriptions + 1 tracker ready in {ready['ready_s']:.1f} s")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                prof = await Profiler.start(self.profile, srv.pid, f"tick{unrelated}")
                m0, c0, gc0 = await srv.metrics(), srv.cpu_s(), await srv.gc_stats(self.gc_freeze)
                await self.steady(self.write_row, [cfg.unread_row], cfg.tick_rate, cfg.tick_writes)
                await asyncio.sleep(self.cfg.settle_s)
                m1, c1, gc1 = await srv.metrics(), srv.cpu_s(), await srv.gc_stats()
                await self.steady(self.write_row, [cfg.tracker_row], cfg.tick_rate, cfg.tick_writes)
                await asyncio.sleep(self.cfg.settle_s)
                stats = await client.stats()
                rss = srv.rss_kb()
            finally:
                await client.close()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)
        tick_ms, n_rounds = round_mean_ms(m0, m1), rounds(m0, m1)
        tracker = stats["groups"][1]["records"]
        lat = [r[4] * 1000 - r[1] for r in tracker]
        hub = [r[3] / 1e6 - r[1] for r in tracker]
        return {
            "tick_ms": tick_ms,
            "rounds": n_rounds,
            "cpu_ms": (c1 - c0) * 1000 / cfg.tick_writes,
            "tracker_p50": pct(lat, 50),
            "tracker_p90": pct(lat, 90),
            "tracker_hub_p50": pct(hub, 50),
            "received": len(lat),
            "rss_kb": rss,
            "ready_s": ready["ready_s"],
            "gc": gc_note(gc0, gc1),
        }

    async def phase_tick(self) -> None:
        cfg = self.cfg
        log(f"tick: {cfg.tick_small} unrelated subscriptions, {cfg.tick_writes} commits to an unread row")
        small = await self._tick_case(cfg.tick_small)
        log(f"tick: {cfg.tick_unrelated} unrelated subscriptions, {cfg.tick_writes} commits to an unread row")
        big = await self._tick_case(cfg.tick_unrelated)
        r = ratio(big["tick_ms"], small["tick_ms"])
        self.add(
            f"3. tick, unread-row commit, {cfg.tick_unrelated} vs {cfg.tick_small} subs (server mean)",
            ms(big["tick_ms"]),
            ms(small["tick_ms"]),
            fx(r),
            "≤ 1.1x",
            r <= 1.1,
        )
        rc = ratio(big["cpu_ms"], small["cpu_ms"])
        self.add("3. server CPU per unread-row commit (info)", ms(big["cpu_ms"]), ms(small["cpu_ms"]), fx(rc), "", None)
        rt = ratio(big["tracker_p50"], small["tracker_p50"])
        self.add(
            "3. tracker commit→client p50 (info)", ms(big["tracker_p50"]), ms(small["tracker_p50"]), fx(rt), "", None
        )
        self.note(
            f"3. rounds seen {big['rounds']:.0f}/{small['rounds']:.0f} of {cfg.tick_writes} commits; tracker p90 "
            f"{ms(big['tracker_p90'])} vs {ms(small['tracker_p90'])}; tracker write→serverTs p50 "
            f"{ms(big['tracker_hub_p50'])} vs {ms(small['tracker_hub_p50'])}; server RSS {big['rss_kb'] / 1024:.0f} "
            f"vs {small['rss_kb'] / 1024:.0f} MiB; subscribe-to-ready {big['ready_s']:.1f} s vs "
            f"{small['ready_s']:.1f} s; unread-row commits with {cfg.tick_unrelated}: {big['gc']}; with "
            f"{cfg.tick_small}: {small['gc']}"
        )
        self.report.data["tick"] = {"small": small, "big": big}

    # 4. Mutations.

    async def _sample_backends(self, stop: asyncio.Event) -> dict[str, float]:
        """Average number of this database's client backends in each state while mutations run (100 Hz)."""
        query = """
            SELECT coalesce(state, '') AS state, coalesce(wait_event_type, '') AS wtype,
                   coalesce(wait_event, '') AS wevent, count(*) AS n
            FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
            GROUP BY 1, 2, 3
        """
        counts: dict[str, float] = {}
        samples = 0
        while not stop.is_set():
            for r in await self.conn.fetch(query):
                if r["state"] == "idle":
                    continue
                if r["state"].startswith("idle in transaction"):
                    label = "idle in transaction (waiting for the app)"
                elif r["wtype"] == "Lock" and r["wevent"] == "advisory":
                    label = "waiting for the commit-clock key"
                elif r["wtype"]:
                    label = f"active, waiting on {r['wtype']}:{r['wevent']}"
                else:
                    label = "active on CPU"
                counts[label] = counts.get(label, 0) + r["n"]
            samples += 1
            await asyncio.sleep(0.01)
        return {k: v / max(1, samples) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}

    async def _mutate(self, spec: dict[str, Any], label: str, table: str = "public.videos") -> dict[str, Any]:
        cfg = self.cfg
        spec.update(
            clients=cfg.mut_clients, row_start=cfg.mut_row, duration_s=cfg.mut_duration_s, warmup_s=cfg.mut_warmup_s
        )
        hot = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = $1::regclass"
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        h0 = await self.conn.fetchrow(hot, table)
        client, _ = await self.clients(spec, label)
        stop = asyncio.Event()
        try:
            client.send("go")
            sampler = asyncio.create_task(self._sample_backends(stop))
            res = await client.event("result", cfg.mut_warmup_s + cfg.mut_duration_s + 60)
        finally:
            stop.set()
            await client.close()
        res["backends"] = await sampler
        await asyncio.sleep(0.6)  # cumulative statistics are flushed about every 0.5 s
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        h1 = await self.conn.fetchrow(hot, table)
        res["rate"] = res["count"] / res["window_s"]
        upd = h1["n_tup_upd"] - h0["n_tup_upd"]
        res["hot_pct"] = (h1["n_tup_hot_upd"] - h0["n_tup_hot_upd"]) / upd * 100 if upd else math.nan
        return res

    async def phase_mutations(self) -> None:

        cfg = self.cfg
        log(f"mutations Ripple: {cfg.mut_clients} sockets, each one mutation at a time, {cfg.mut_duration_s} s")
        srv = await self.server("mutations")
        prof = None
        try:
            prof = await Profiler.start(self.profile, srv.pid, "mutations")
            c0, m0, gc0 = srv.cpu_s(), await srv.metrics(), await srv.gc_stats()
            ripple = await self._mutate({"mode": "mutate", "url": srv.ws_url}, "mutate")
            s_cpu, m1, gc1 = srv.cpu_s() - c0, await srv.metrics(), await srv.gc_stats()
        finally:
            if prof:
                await prof.stop()
            await self.release(srv)
        log("mutations floor: asyncpg SERIALIZABLE read-modify-write + NOTIFY to a LISTENer, same concurrency")
        spec = {"mode": "rawmutate", "dsn": self.dsn, "table": "bench_raw.videos"}
        raw = await self._mutate({**spec, "notify": True}, "rawmutate", "bench_raw.videos")
        bare = await self._mutate(dict(spec), "rawmutate", "bench_raw.videos")
        trig = await self._mutate(
            {"mode": "rawmutate", "dsn": self.dsn, "table": "public.videos", "like_ripple": True}, "rawmutate2"
        )
        r = ratio(ripple["rate"], raw["rate"])
        self.add(
            f"4. mutations/s over the protocol ({cfg.mut_clients} sockets, serial each)",
            f"{ripple['rate']:.0f}/s",
            f"{raw['rate']:.0f}/s",
            f"{r * 100:.0f}%",
            "≥ 50% of raw",
            r >= 0.5,
        )
        rt = ratio(trig["rate"], raw["rate"])
        self.add(
            "4. raw asyncpg sending Ripple's SQL (triggers, dedupe row, NOTIFY), no server, against that floor (info)",
            f"{trig['rate']:.0f}/s",
            f"{raw['rate']:.0f}/s",
            f"{rt * 100:.0f}%",
            "",
            None,
        )
        runs = (ripple, trig, raw, bare)
        self.note(
            "4. (Ripple | raw Ripple SQL | raw + NOTIFY | raw without NOTIFY) round trip p50: "
            + " | ".join(ms(pct(x["latencies"], 50) * 1e3) for x in runs)
            + f"; Ripple p99 {ms(pct(ripple['latencies'], 99) * 1e3)}; server CPU "
            f"{s_cpu / max(1, ripple['count']) * 1e3:.2f} ms per mutation (whole run incl. warm-up); CPU per mutation, "
            "every process of the machine, measured window: "
            + " | ".join(per_mutation(x) for x in runs)
            + " ms, of which the load's clients "
            + " | ".join(per_mutation(x, "cpu_s") for x in runs)
            + " ms; Postgres backends on average: "
            + " | ".join(backends(x) for x in runs)
            + f"; MutationResponse → covering Transition p50 {ms(pct(ripple['cover'], 50) * 1e3)}; HOT updates: "
            + " | ".join(f"{x['hot_pct']:.0f}%" for x in runs)
            + f"; raw without NOTIFY {bare['rate']:.0f}/s; NOTIFYs the floors' LISTENer received (incl. warm-up): "
            + " | ".join(str(x["notified"]) for x in (trig, raw))
            + "; serialization retries: "
            + f"{delta(m0, m1, 'ripple_mutation_retries_total'):.0f} (server /metrics) | "
            + " | ".join(str(x["retries"]) for x in runs[1:])
            + f"; hub rounds {rounds(m0, m1):.0f} ({delta(m0, m1, 'ripple_hub_quiet_rounds_total'):.0f} without a "
            f"query, {delta(m0, m1, 'ripple_hub_settles_total'):.0f} settled); "
            f"Ripple failed mutations {ripple['errors']}"
            + (f" (first: {ripple['first_error'].splitlines()[0]})" if ripple["first_error"] else "")
            + f"; {gc_note(gc0, gc1)}"
        )
        self.report.data["mutations"] = {
            k: {x: v[x] for x in ("rate", "count", "errors", "retries")}
            for k, v in (("ripple", ripple), ("raw", raw), ("raw_without_notify", bare), ("raw_triggers", trig))
        }
