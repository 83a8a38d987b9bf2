"""A database made by an older schema.sql: a server started on it brings the schema up to date and keeps the data.

`first_schema.sql` is schema.sql as first committed (before the commit log had `at`, the dedupe rows `xid`, the
announcements and the per-table capture functions). What it left behind must stay readable, its ids valid, and
every write after the upgrade, Ripple's or plain SQL, must reach subscribers through the current capture.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from tests.support import testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import run_server
from tests.support.ws import SyncClient

FIRST_SCHEMA = Path(__file__).with_name("first_schema.sql")


async def test_a_database_of_the_first_schema_is_upgraded_in_place(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await conn.execute(FIRST_SCHEMA.read_text())
        old_id = await conn.fetchval(
            "INSERT INTO videos (twitch_id, title, status) VALUES ('old', 'from before', 'Queued') RETURNING _id"
        )
        first_ts = await conn.fetchval("SELECT ts FROM _ripple_commits")
    finally:
        await conn.close()

    async with run_server(fresh_dsn) as ripple:
        client = await SyncClient.connect(ripple.ws_url)
        writer = await SyncClient.connect(ripple.ws_url)
        qid = await client.subscribe("testing:videosByStatus", {"status": "Queued"})
        assert [(v["_id"], v["title"]) for v in client.results[qid]] == [(old_id, "from before")]

        # Plain SQL after the upgrade goes through the new capture triggers and reaches the subscriber.
        conn = await asyncpg.connect(fresh_dsn)
        try:
            await conn.execute("INSERT INTO videos (twitch_id, title, status) VALUES ('new', 'after', 'Queued')")
            await client.expect(lambda m: m["type"] == "Transition" and len(client.results[qid]) == 2)
            # A mutation on the old document: its id (table number and check) is still valid.
            await writer.mutation("testing:setProgress", {"twitchId": "old", "progress": 7})
            count = await client.subscribe("testing:count", {"twitchId": "old"})
            assert client.results[count] == 7
            await writer.mutation("testing:setProgress", {"twitchId": "old", "progress": 8})
            await client.expect(lambda m: m["type"] == "Transition" and client.results[count] == 8)
            # The commit clock went on from where the old schema left it (which drew nanoseconds since the epoch):
            # never backwards, and from then on one number per commit.
            ts = [r["ts"] for r in await conn.fetch("SELECT ts FROM _ripple_commits ORDER BY ts")]
            assert ts[0] == first_ts and len(ts) >= 4
            assert ts[1:] == list(range(first_ts + 1, first_ts + len(ts)))
            # The dedupe rows gained what a resend must repeat (added in place), and the mutations filled it in.
            rows = await conn.fetch("SELECT caller, path, args_digest FROM _ripple_mutations")
            assert rows and all(r["path"] == "testing:setProgress" and len(r["args_digest"]) == 64 for r in rows)
        finally:
            await conn.close()
        await client.close()
        await writer.close()
