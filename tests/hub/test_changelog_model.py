"""A model test of changelog.py's answer under random commit timing, on the real PostgreSQL.

Writers (plain SQL on `videos`) write, some draw their ts early (`SELECT _ripple_commit_ts()`) and write more,
some abort after the draw; they commit in an order unrelated to their draw order, while a reader asks
`read_since` from its processed ts (or, lagging, from an older one) and the log is pruned now and then. The model
is what each writer did and the ts it got. Checked against it: S covers exactly the commits visible in the
reader's snapshot; the changes returned are exactly those of the commits in (P, S] (or their tables, or
everything when pruned past P); `quiet_advance` over announcements (each whole or ts alone) proves only commits
that happened, with exactly their changes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.database.announce import Change
from server.hub.changelog import BEGIN_SNAPSHOT, NEXT_SNAPSHOT, Changes, quiet_advance, read_since, settled_head

_examples = itertools.count()

op = st.sampled_from(["insert", "update", "delete"])
writer_plan = st.fixed_dictionaries(
    {
        "before": st.lists(op, min_size=0, max_size=2),
        "early": st.booleans(),
        "after": st.lists(op, min_size=0, max_size=2),
        "abort": st.booleans(),
        "whole": st.booleans(),  # announced with its changes (as Ripple's writers do) or by its ts alone
    }
)
scenario = st.fixed_dictionaries(
    {
        "writers": st.lists(writer_plan, min_size=2, max_size=6),
        "commit_order": st.randoms(use_true_random=False),
        "reads": st.lists(st.tuples(st.booleans(), st.integers(0, 10)), min_size=1, max_size=6),
        "prune_at": st.one_of(st.none(), st.integers(0, 5)),
        "limit": st.sampled_from([2, 1000]),
    }
)


@dataclass
class Writer:
    n: int
    plan: dict[str, Any]
    conn: asyncpg.Connection
    marker: str  # twitch_id of its first insert: visible in a snapshot iff its commit is
    base_id: str  # its own row from before the scenario (no two writers touch one row)
    changes: list[tuple[str, bool, bool]] = field(default_factory=list)  # (_id, insert, delete)
    xid: int = 0
    drawn: int | None = None
    base_alive: bool = True

    async def do(self, kind: str, k: int) -> None:
        if kind != "insert" and not self.base_alive:
            kind = "insert"
        if kind == "insert":
            twitch_id = self.marker if not self.changes else f"{self.marker}-{k}"
            doc = await self.conn.fetchval(
                "INSERT INTO videos (twitch_id, title, status) VALUES ($1, 't', 'Queued') RETURNING _id", twitch_id
            )
            self.changes.append((doc, True, False))
        elif kind == "update":
            await self.conn.execute("UPDATE videos SET status = $2 WHERE _id = $1", self.base_id, f"s{k}")
            self.changes.append((self.base_id, False, False))
        else:
            await self.conn.execute("DELETE FROM videos WHERE _id = $1", self.base_id)
            self.changes.append((self.base_id, False, True))
            self.base_alive = False


@dataclass
class Read:
    after: int
    found: Changes
    visible: set[int]  # writers whose commit the snapshot holds


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scenario)
async def test_the_changelog_answer_matches_the_model(schema_dsn: str, case: dict[str, Any]) -> None:
    example = next(_examples)
    admin = await asyncpg.connect(schema_dsn)
    reader = await asyncpg.connect(schema_dsn)
    writers: list[Writer] = []
    try:
        await reader.execute(BEGIN_SNAPSHOT)
        for n, plan in enumerate(case["writers"]):
            base = await admin.fetchval(
                "INSERT INTO videos (twitch_id, title, status) VALUES ($1, 'base', 'Queued') RETURNING _id",
                f"e{example}-base{n}",
            )
            writers.append(Writer(n, plan, await asyncpg.connect(schema_dsn), f"e{example}-w{n}", base))
        start = await settled_head(reader)

        # Writers open their transactions and write; the early ones draw their ts here, in this (random) order.
        for w in writers:
            await w.conn.execute("BEGIN")
            await w.do("insert", 0)
            for k, kind in enumerate(w.plan["before"], 1):
                await w.do(kind, k)
            w.xid = int(await w.conn.fetchval("SELECT txid_current()"))
            if w.plan["early"]:
                w.drawn = int(await w.conn.fetchval("SELECT _ripple_commit_ts()"))
                for k, kind in enumerate(w.plan["after"], 10):
                    await w.do(kind, k)

        xid_ts: dict[int, int] = {}
        pruned: list[int] = []  # horizons after each prune
        reads: list[Read] = []
        processed = [start]

        async def read(lag: bool, pick: int) -> None:
            after = processed[pick % len(processed)] if lag else processed[-1]
            found = await read_since(reader, after, case["limit"])
            markers = [w.marker for w in writers]
            rows = await reader.fetch("SELECT twitch_id FROM videos WHERE twitch_id = ANY($1)", markers)
            visible = {markers.index(r["twitch_id"]) for r in rows}
            await reader.execute(NEXT_SNAPSHOT)
            reads.append(Read(after, found, visible))
            if not lag:
                processed.append(found.upto)

        async def read_meanwhile() -> None:
            for lag, pick in case["reads"]:
                await read(lag, pick)
                await asyncio.sleep(0.01)

        async def finish(w: Writer) -> None:
            await w.conn.execute("ROLLBACK" if w.plan["abort"] else "COMMIT")

        reading = asyncio.create_task(read_meanwhile())
        order = list(writers)
        case["commit_order"].shuffle(order)
        finishing = []
        for step, w in enumerate(order):
            # Do not wait long for one commit: it may queue behind the reader's settle, which waits for an early
            # writer this loop commits later.
            finishing.append(asyncio.create_task(finish(w)))
            await asyncio.wait(finishing[-1:], timeout=0.05)
            if step == case["prune_at"]:
                async with admin.transaction(isolation="repeatable_read"):
                    rows = await admin.fetch("SELECT ts, xid FROM _ripple_commits WHERE ts > $1", start)
                    xid_ts.update({int(r["xid"]): int(r["ts"]) for r in rows})
                    await admin.execute("SELECT _ripple_prune(0)")
                pruned.append(int(await admin.fetchval("SELECT ts FROM _ripple_horizon")))
        await asyncio.gather(*finishing)
        await reading
        await read(False, 0)  # and one once every writer is done

        rows = await admin.fetch("SELECT ts, xid FROM _ripple_commits WHERE ts > $1", start)
        xid_ts.update({int(r["xid"]): int(r["ts"]) for r in rows})
        ts_of = {w.n: xid_ts[w.xid] for w in writers if not w.plan["abort"]}
        for w in writers:
            assert w.plan["abort"] or w.drawn is None or ts_of[w.n] == w.drawn
        assert reads[-1].found.upto == max(ts_of.values(), default=start)

        def expected(after: int, upto: int) -> Counter[tuple[int, str, bool, bool]]:
            return Counter(
                (ts_of[w.n], doc, ins, dele)
                for w in writers
                if w.n in ts_of and after < ts_of[w.n] <= upto
                for doc, ins, dele in w.changes
            )

        for r in reads:
            upto = r.found.upto
            assert r.visible == {n for n, ts in ts_of.items() if ts <= upto}, (r.after, upto, ts_of)
            if r.found.everything:
                assert any(h > r.after for h in pruned)
            elif r.found.tables is not None:
                assert r.found.tables == ({"videos"} if expected(r.after, upto) else set())
            else:
                got = Counter((c.ts, c.doc_id, c.old_keys is None, c.new_keys is None) for c in r.found.changes)
                assert got == expected(r.after, upto), (r.after, upto)

        # Quiet advances: from every P a reader had, over announcements each whole or ts alone.
        announced = {
            ts_of[w.n]: [
                Change(ts_of[w.n], "videos", doc, None if ins else {}, None if dele else {})
                for doc, ins, dele in w.changes
            ]
            for w in writers
            if w.n in ts_of and w.plan["whole"]
        }
        for after in {start, *processed}:
            upto, changes = quiet_advance(after, announced)
            assert all(ts in announced for ts in range(after + 1, upto + 1))
            assert upto + 1 not in announced
            got = Counter((c.ts, c.doc_id, c.old_keys is None, c.new_keys is None) for c in changes)
            assert got == expected(after, upto)
    finally:
        for w in writers:
            await w.conn.close()
        await reader.close()
        await admin.close()
