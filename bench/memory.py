"""Phases 5 and 6, memory and churn: what an idle connection costs against a bare websockets server, and whether
the server's RSS stays flat over cycles of sockets that connect, subscribe and close."""

from __future__ import annotations

import asyncio
import math

from bench.harness import Harness
from bench.procs import RawServer, RippleServer
from bench.report import fx, log, ratio

__all__ = ["MemoryPhases"]

# Churn is flat when RSS after the last cycle is within this much of RSS after the first: a server that keeps
# something per closed session grows by about the same amount every cycle, one that does not only in the first.
CHURN_FLAT_MIB = 5.0
CHURN_FLAT_SHARE = 0.10


class MemoryPhases(Harness):
    # 5. Memory.

    async def phase_memory(self) -> None:
        cfg = self.cfg
        n = cfg.mem_sockets
        warm = {"sockets": 20, "per_socket": 1, "row_start": 0, "row_count": 20}
        group = {"sockets": n, "per_socket": 1, "row_start": 0, "row_count": n, "record_all": False}

        log(f"memory Ripple: {n} idle sockets with one subscription each")
        srv = await self.server("memory")
        try:
            client, _ = await self.clients({"mode": "convex", "url": srv.ws_url, "groups": [warm]}, "mem-warm")
            await client.close()
            await asyncio.sleep(self.cfg.settle_s)
            rss0 = srv.rss_kb()
            client, ready = await self.clients({"mode": "convex", "url": srv.ws_url, "groups": [group]}, "memory")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                rss1 = srv.rss_kb()
                r_idle = await self.idle_cpu(srv.cpu_s)
                objects = (await srv.gc_stats())["oldest"]
            finally:
                await client.close()
        finally:
            await self.release(srv)

        log(f"memory floor: {n} idle sockets on a bare websockets server")
        raw = await RawServer.start(self.workdir)
        try:
            client, _ = await self.clients({"mode": "raw", "url": raw.ws_url, "groups": [warm]}, "mem-warm-raw")
            await client.close()
            await asyncio.sleep(self.cfg.settle_s)
            f0 = raw.rss_kb()
            client, _ = await self.clients({"mode": "raw", "url": raw.ws_url, "groups": [group]}, "memory-raw")
            try:
                await asyncio.sleep(self.cfg.settle_s)
                f1 = raw.rss_kb()
                f_idle = await self.idle_cpu(raw.cpu_s)
            finally:
                await client.close()
        finally:
            await raw.stop()
        per, fper = (rss1 - rss0) / n, (f1 - f0) / n
        self.add(
            f"5. memory per idle connection ({n} sockets, 1 sub each)",
            f"{per:.1f} KiB",
            f"{fper:.1f} KiB",
            fx(ratio(per, fper)),
            "(none)",
            None,
        )
        self.add(f"5. idle server CPU with {n} sockets (info)", f"{r_idle:.1f}%", f"{f_idle:.1f}%", "", "", None)
        self.note(
            f"5. server RSS {rss0 / 1024:.0f} → {rss1 / 1024:.0f} MiB (bare websockets {f0 / 1024:.0f} → "
            f"{f1 / 1024:.0f} MiB); {n} sockets subscribed in {ready['ready_s']:.1f} s; "
            f"{objects / 1e6:.2f} M objects in the server's oldest GC generation"
        )
        self.report.data["memory"] = {
            "ripple_kib": per,
            "floor_kib": fper,
            "idle_cpu_pct": r_idle,
            "floor_idle_cpu_pct": f_idle,
        }

    # 6. Churn.

    async def _settled_rss(self, srv: RippleServer) -> tuple[int, str]:
        """The server's RSS once every socket it had is torn down (`ripple_connections` is 0) and `settle_s` more
        have passed; with it, what the server still holds (sockets gone, subscriptions, query instances, objects
        the garbage collector tracks), for the notes."""
        waited = await srv.wait_connections(0, self.cfg.churn_settle_timeout_s)
        await asyncio.sleep(self.cfg.settle_s)
        m = await srv.metrics()
        gc = await srv.gc_stats()
        held = (
            f"{m.get('ripple_subscriptions', 0):.0f} subscriptions, {m.get('ripple_query_instances', 0):.0f} "
            f"instances, {gc.get('tracked', math.nan) / 1e3:.0f} k objects the collector tracks"
            + (f", 0 sockets after {waited:.1f} s" if waited is not None else ", no ripple_connections gauge")
        )
        return srv.rss_kb(), held

    async def phase_churn(self) -> None:
        """Whether a closed socket gives back what it took: a server that keeps anything per closed session
        grows by the same amount every cycle, where a sound one grows in the first (allocator arenas, caches)
        and then stays flat."""
        cfg = self.cfg
        n, cycles = cfg.churn_sockets, cfg.churn_cycles
        group = {"sockets": n, "per_socket": 1, "row_start": 0, "row_count": n, "record_all": False}
        log(f"churn Ripple: {cycles} cycles of {n} sockets that connect, subscribe, get a first result and close")
        srv = await self.server("churn")
        try:
            rss0, held0 = await self._settled_rss(srv)
            rss, held, ready_s = [rss0], [held0], []
            for cycle in range(1, cycles + 1):
                client, ready = await self.clients(
                    {"mode": "convex", "url": srv.ws_url, "groups": [group]}, f"churn{cycle}"
                )
                try:
                    client.send("close")
                    closed = await client.event("closed", 60)
                finally:
                    await client.close()
                if closed["failed"]:
                    log(f"  cycle {cycle}: {closed['failed']} close handshakes failed: {closed['first_error']}")
                r, h = await self._settled_rss(srv)
                rss.append(r)
                held.append(h)
                ready_s.append(ready["ready_s"])
                log(f"  cycle {cycle}: {n} sockets ready in {ready['ready_s']:.1f} s; server RSS {r / 1024:.0f} MiB")
        finally:
            await self.release(srv)

        mib = [x / 1024 for x in rss]
        growth = [b - a for a, b in zip(mib, mib[1:], strict=False)]
        drift = mib[-1] - mib[1]
        allowed = max(CHURN_FLAT_MIB, CHURN_FLAT_SHARE * growth[0])
        self.add(
            f"6. churn: server RSS before, after each of {cycles} cycles of {n} sockets (info)",
            " / ".join(f"{x:.0f}" for x in mib) + " MiB",
            "",
            "",
            "",
            None,
        )
        self.add(
            "6. churn: RSS growth per cycle (info)", " / ".join(f"{g:+.1f}" for g in growth) + " MiB", "", "", "", None
        )
        self.add(
            f"6. churn: RSS after cycle {cycles} minus after cycle 1",
            f"{drift:+.1f} MiB",
            "",
            f"{ratio(drift, growth[0]) * 100:.0f}% of cycle 1" if growth[0] > 0 else "",
            f"≤ {CHURN_FLAT_SHARE:.0%} of cycle 1's growth or ≤ {CHURN_FLAT_MIB:.0f} MiB",
            drift <= allowed,
        )
        self.note(
            f"6. churn: each cycle opens {n} sync sockets, one `bench:counter` subscription each (distinct rows), "
            "waits for every first result, then closes half of them with a close handshake and drops the other half "
            "(TCP closed with no close frame, as a lost network does); every RSS reading waits "
            f"for ripple_connections to reach 0 and {cfg.settle_s:.1f} s more. Flat means cycle {cycles} adds at "
            f"most {allowed:.1f} MiB to cycle 1's RSS. Subscribe-to-ready per cycle "
            + ", ".join(f"{x:.1f} s" for x in ready_s)
            + "; the server held, before and after each cycle: "
            + " | ".join(held)
        )
        self.report.data["churn"] = {"sockets": n, "rss_mib": mib, "growth_mib": growth, "flat": drift <= allowed}
