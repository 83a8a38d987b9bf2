"""End to end through a real server: a write made after its transaction's ts was drawn reaches subscribers, however
the ts came to be drawn early (the announcement must not have claimed to be the whole commit)."""

from __future__ import annotations

import asyncpg

from server.database.writers import ANNOUNCE_SQL, OPEN_SQL
from tests.support import testing_app  # noqa: F401  (registers the testing: functions)
from tests.support.server import RippleServer
from tests.support.ws import SyncClient

# Inserting a row here updates the watched video at COMMIT, after a Ripple-style writer drew its ts.
_LATE_UPDATE = """
CREATE TABLE late_update (twitch_id text, progress float8);
CREATE FUNCTION late_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE videos SET progress_percentage = NEW.progress WHERE twitch_id = NEW.twitch_id;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER late_update AFTER INSERT ON late_update DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION late_update();
"""
_UNWATCHED = "INSERT INTO workflows (task, status, current_step) VALUES ('unwatched', 'pending', 'planner')"


async def test_writes_after_an_early_draw_reach_subscribers(ripple: RippleServer) -> None:
    client = await SyncClient.connect(ripple.ws_url)
    writer = await SyncClient.connect(ripple.ws_url)
    conn = await asyncpg.connect(ripple.settings.database_url)
    try:
        await conn.execute(_LATE_UPDATE)
        await writer.mutation("testing:setProgress", {"twitchId": "w", "progress": 1})
        qid = await client.subscribe("testing:count", {"twitchId": "w"})
        assert client.results[qid] == 1

        async def expect(progress: float) -> None:
            await client.expect(lambda m: m["type"] == "Transition" and client.results[qid] == progress, timeout_s=5)

        # Plain SQL, the ts drawn explicitly between an unwatched write and the watched one.
        await conn.execute(
            f"BEGIN; {_UNWATCHED}; SELECT _ripple_commit_ts();"
            " UPDATE videos SET progress_percentage = 2 WHERE twitch_id = 'w'; COMMIT"
        )
        await expect(2)
        # Plain SQL with immediate constraints: the ts is drawn at the first write.
        await conn.execute(
            f"BEGIN; SET CONSTRAINTS ALL IMMEDIATE; {_UNWATCHED};"
            " UPDATE videos SET progress_percentage = 3 WHERE twitch_id = 'w'; COMMIT"
        )
        await expect(3)
        # A Ripple-style writer whose own deferred trigger writes the watched row after the draw at COMMIT.
        await conn.execute(f"{OPEN_SQL}; {_UNWATCHED}; INSERT INTO late_update VALUES ('w', 4); COMMIT; {ANNOUNCE_SQL}")
        await expect(4)
        # The watched row stays right afterwards: a later Ripple mutation builds on it.
        await writer.mutation("testing:increment", {"twitchId": "w"})
        await expect(5)
    finally:
        await conn.close()
        await client.close()
        await writer.close()
