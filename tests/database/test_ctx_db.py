"""`ctx.db` against a real PostgreSQL: every operation, the read set each one records, limits and id checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server import values
from server.database.catalog import apply_schema, load_catalog
from server.database.database import Database, MutationKey
from server.database.ids import new_id, table_number_of
from server.database.pool import create_pool
from server.database.query import END_CURSOR
from server.database.reads import IndexRange
from server.database.transaction import DatabaseReader, DatabaseWriter, Limits, Transaction
from server.database.writers import Writers
from server.errors import ArgumentError, IdError, LimitExceeded, SchemaError
from tests.conftest import SCHEMA_SQL


@pytest.fixture
async def db(fresh_dsn: str) -> AsyncIterator[Database]:
    pool = await create_pool(fresh_dsn, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await apply_schema(conn, SCHEMA_SQL)
        catalog = await load_catalog(conn)
    writers = Writers(fresh_dsn, 6)
    try:
        yield Database(pool, writers, catalog, limits=Limits(max_documents_read=50, max_documents_written=20))
    finally:
        await writers.close()
        await pool.close()


async def write(db: Database, fn: Any) -> Any:
    return (await db.mutate(lambda tx: fn(DatabaseWriter(tx)))).value


async def read(db: Database, fn: Any) -> tuple[Any, Transaction]:
    return await db.read(lambda tx: fn(DatabaseReader(tx)))


async def video(w: DatabaseWriter, twitch_id: str, status: str = "Queued", **extra: Any) -> str:
    return await w.insert("videos", {"twitchId": twitch_id, "title": f"video {twitch_id}", "status": status, **extra})


async def test_catalog_reads_tables_and_indexes_back_from_postgres(db: Database) -> None:
    videos = db.catalog.table("videos")
    assert db.catalog.table("agentSessions").name == "agent_sessions"
    assert videos.index("by_twitch_id").key_fields == ("twitch_id", "_creation_time", "_id")
    assert videos.index("by_id").key_fields == ("_id",)
    assert {"by_status", "by_job_id", "by_created_at", "by_creation_time"} <= set(videos.indexes)
    assert videos.columns["title"].required and not videos.columns["job_id"].required
    with pytest.raises(SchemaError, match='no table named "nope"'):
        db.catalog.table("nope")
    with pytest.raises(SchemaError, match='has no index "by_nothing"'):
        videos.index("by_nothing")


async def test_insert_get_patch_replace_delete_round_trip(db: Database) -> None:
    vid = await write(db, lambda w: video(w, "a", stageProgress={"download": 50}, isRetryable=False))
    assert table_number_of(vid) == db.catalog.table("videos").number
    doc, tx = await read(db, lambda r: r.get(vid))
    assert doc["_id"] == vid and doc["twitchId"] == "a" and doc["stageProgress"] == {"download": 50}
    assert doc["isRetryable"] is False and isinstance(doc["_creationTime"], float)
    assert "jobId" not in doc  # absent fields are absent, not null
    assert tx.read_set.ranges == [IndexRange("videos", "by_id", ("_id",), (vid,))]

    await write(db, lambda w: w.patch(vid, {"progressPercentage": 40, "stageProgress": None, "status": "Downloading"}))
    doc, _ = await read(db, lambda r: r.get(vid))
    assert doc["progressPercentage"] == 40.0 and doc["status"] == "Downloading" and "stageProgress" not in doc

    await write(db, lambda w: w.replace(vid, {"twitchId": "a", "title": "fresh", "status": "Queued"}))
    doc, _ = await read(db, lambda r: r.get(vid))
    assert doc["title"] == "fresh" and "progressPercentage" not in doc and "stageProgress" not in doc

    await write(db, lambda w: w.delete(vid))
    doc, _ = await read(db, lambda r: r.get(vid))
    assert doc is None


async def test_writes_are_checked_against_the_schema(db: Database) -> None:
    with pytest.raises(ArgumentError, match='unknown field "colour"'):
        await write(db, lambda w: w.insert("videos", {"twitchId": "a", "title": "t", "status": "Q", "colour": "red"}))
    with pytest.raises(ArgumentError, match="missing required field.*title"):
        await write(db, lambda w: w.insert("videos", {"twitchId": "a", "status": "Q"}))
    with pytest.raises(ArgumentError, match='"progressPercentage" must be a number, got str'):
        await write(
            db, lambda w: w.insert("videos", {"twitchId": "a", "title": "t", "status": "Q", "progressPercentage": "50"})
        )
    with pytest.raises(ArgumentError, match='system field "_id" cannot be written'):
        await write(db, lambda w: w.insert("videos", {"_id": "x", "twitchId": "a", "title": "t", "status": "Q"}))
    with pytest.raises(SchemaError, match='no table named "movies"'):
        await write(db, lambda w: w.insert("movies", {}))
    vid = await write(db, lambda w: video(w, "b"))
    with pytest.raises(ArgumentError, match='field "title" is required'):
        await write(db, lambda w: w.patch(vid, {"title": None}))


async def test_ids_are_bound_to_their_table(db: Database) -> None:
    vid = await write(db, lambda w: video(w, "a"))
    with pytest.raises(IdError, match="is not a valid document id"):
        await read(db, lambda r: r.get("not-an-id"))
    tampered = vid[:-1] + ("0" if vid[-1] != "0" else "1")
    with pytest.raises(IdError, match="is not a valid document id"):
        await read(db, lambda r: r.get(tampered))
    unknown_table = new_id(999)
    with pytest.raises(IdError):
        await read(db, lambda r: r.get(unknown_table))
    # A well-formed id of another table reads that table: Convex's ctx.db.get infers the table from the id.
    workflow_id = new_id(db.catalog.table("workflows").number)
    doc, tx = await read(db, lambda r: r.get(workflow_id))
    assert doc is None and tx.read_set.ranges[0].table == "workflows"
    with pytest.raises(ArgumentError, match="does not exist"):
        await write(db, lambda w: w.patch(workflow_id, {"task": "x"}))


async def test_index_ranges_order_and_read_sets(db: Database) -> None:
    async def seed(w: DatabaseWriter) -> None:
        for i, status in enumerate(["Queued", "Failed", "Queued", "Completed", "Queued"]):
            await video(w, f"v{i}", status, createdAt=float(100 + i))

    await write(db, seed)
    by_status = lambda q: q.eq("status", "Queued")  # noqa: E731
    docs, tx = await read(db, lambda r: r.query("videos").with_index("by_status", by_status).collect())
    assert [d["twitchId"] for d in docs] == ["v0", "v2", "v4"]  # creation order within equal keys
    (rng,) = tx.read_set.ranges
    assert (rng.index, rng.eq, rng.lower, rng.upper) == ("by_status", ("Queued",), None, None)

    docs, _ = await read(db, lambda r: r.query("videos").with_index("by_status", by_status).order("desc").collect())
    assert [d["twitchId"] for d in docs] == ["v4", "v2", "v0"]

    docs, tx = await read(
        db,
        lambda r: (
            r.query("videos")
            .with_index("by_created_at", lambda q: q.gt("createdAt", 100).lte("createdAt", 103))
            .collect()
        ),
    )
    assert [d["twitchId"] for d in docs] == ["v1", "v2", "v3"]
    (rng,) = tx.read_set.ranges
    assert rng.lower == ((100.0,), False) and rng.upper == ((103.0,), True)

    # take(n) depends only on the rows up to the last one it returned.
    docs, tx = await read(db, lambda r: r.query("videos").with_index("by_created_at").take(2))
    assert [d["twitchId"] for d in docs] == ["v0", "v1"]
    (rng,) = tx.read_set.ranges
    assert rng.contains((101.0, docs[1]["_creationTime"], docs[1]["_id"]))
    assert not rng.contains((102.0, 0.0, "x"))

    first, _ = await read(db, lambda r: r.query("videos").with_index("by_status", by_status).first())
    assert first["twitchId"] == "v0"
    one, _ = await read(
        db, lambda r: r.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", "v3")).unique()
    )
    assert one["status"] == "Completed"
    with pytest.raises(ArgumentError, match="unique\\(\\) found more than one"):
        await read(db, lambda r: r.query("videos").with_index("by_status", by_status).unique())

    # A full scan reads the whole table.
    docs, tx = await read(db, lambda r: r.query("videos").collect())
    assert len(docs) == 5 and tx.read_set.ranges[0].index == "by_creation_time"
    assert tx.read_set.matches("videos", None, {"_creation_time": 1.0, "_id": "z"})


async def test_filter_is_evaluated_in_sql_and_range_errors_are_clear(db: Database) -> None:
    async def seed(w: DatabaseWriter) -> None:
        await video(w, "a", "Queued", progressPercentage=10)
        await video(w, "b", "Queued", progressPercentage=70)
        await video(w, "c", "Failed")

    await write(db, seed)
    docs, _ = await read(
        db,
        lambda r: (
            r.query("videos")
            .filter(lambda q: q.and_(q.eq(q.field("status"), "Queued"), q.gt(q.field("progressPercentage"), 50)))
            .collect()
        ),
    )
    assert [d["twitchId"] for d in docs] == ["b"]
    docs, _ = await read(
        db,
        lambda r: (
            r.query("videos")
            .filter(lambda q: q.or_(q.eq(q.field("progressPercentage"), None), q.lt(q.field("progressPercentage"), 20)))
            .collect()
        ),
    )
    assert [d["twitchId"] for d in docs] == ["a", "c"]
    docs, _ = await read(
        db, lambda r: r.query("videos").filter(lambda q: q.not_(q.eq(q.field("status"), "Queued"))).collect()
    )
    assert [d["twitchId"] for d in docs] == ["c"]
    with pytest.raises(ArgumentError, match="must name them in order"):
        await read(
            db,
            lambda r: (
                r.query("agentSessions")
                .with_index("by_workflow_and_status", lambda q: q.eq("status", "running"))
                .collect()
            ),
        )
    with pytest.raises(SchemaError, match='has no field "nope"'):
        await read(db, lambda r: r.query("videos").filter(lambda q: q.eq(q.field("nope"), 1)).collect())


async def test_paginate_walks_every_row_once_and_keeps_its_end(db: Database) -> None:
    async def seed(w: DatabaseWriter) -> None:
        for i in range(7):
            await video(w, f"v{i}", "Queued")

    await write(db, seed)
    q = lambda r, opts: r.query("videos").with_index("by_status", lambda x: x.eq("status", "Queued")).paginate(opts)  # noqa: E731
    seen, cursor, journals = [], None, []
    while True:
        page, tx = await read(db, lambda r, cursor=cursor: q(r, {"numItems": 3, "cursor": cursor}))
        seen += [d["twitchId"] for d in page["page"]]
        journals.append(tx.journal)
        assert isinstance(page["continueCursor"], str)
        if page["isDone"]:
            break
        cursor = page["continueCursor"]
    assert seen == [f"v{i}" for i in range(7)]
    assert journals[-1] == END_CURSOR

    # A re-run with the first page's journal keeps its end, even after an insert inside the page.
    first, tx = await read(db, lambda r: q(r, {"numItems": 3, "cursor": None}))
    end = tx.journal
    await write(db, lambda w: video(w, "late", "Queued"))
    rerun, _ = await db.read(lambda tx: q(DatabaseReader(tx), {"numItems": 3, "cursor": None}), journal=end)
    assert [d["twitchId"] for d in rerun["page"]] == ["v0", "v1", "v2"]
    last, _ = await db.read(lambda tx: q(DatabaseReader(tx), {"numItems": 3, "cursor": cursor}), journal=END_CURSOR)
    assert [d["twitchId"] for d in last["page"]] == ["v6", "late"] and last["isDone"]
    with pytest.raises(ArgumentError, match="InvalidCursor"):
        await read(db, lambda r: q(r, {"numItems": 3, "cursor": "garbage"}))
    with pytest.raises(ArgumentError, match="numItems"):
        await read(db, lambda r: q(r, {"numItems": -1, "cursor": None}))


async def test_limits_on_documents_read_and_written(db: Database) -> None:
    async def many(w: DatabaseWriter) -> None:
        for i in range(15):
            await video(w, f"v{i}")

    await write(db, many)
    await write(db, many)
    await write(db, many)
    await write(db, many)
    with pytest.raises(LimitExceeded, match="read more than 50 documents"):
        await read(db, lambda r: r.query("videos").collect())

    async def too_many(w: DatabaseWriter) -> None:
        for i in range(21):
            await video(w, f"w{i}")

    with pytest.raises(LimitExceeded, match="wrote more than 20 documents"):
        await write(db, too_many)
    with pytest.raises(LimitExceeded, match="the document is too large"):
        await write(db, lambda w: video(w, "huge", title="x" * (1 << 20)))
    rows = await db.pool.fetchval("SELECT count(*) FROM videos WHERE twitch_id LIKE 'w%'")
    assert rows == 0  # the failed mutation left nothing


async def test_queries_cannot_write(db: Database) -> None:
    vid = await write(db, lambda w: video(w, "a"))
    with pytest.raises(ArgumentError, match="read-only"):
        await db.read(lambda tx: DatabaseWriter(tx).patch(vid, {"title": "x"}))


async def test_concurrent_increments_lose_nothing(db: Database) -> None:
    """Serializable transactions plus retries: N concurrent read-modify-writes of one row all count."""
    vid = await write(db, lambda w: video(w, "counter", progressPercentage=0))

    async def bump(w: DatabaseWriter) -> None:
        doc = await w.get(vid)
        await asyncio.sleep(0.001)  # widen the race
        await w.patch(vid, {"progressPercentage": doc["progressPercentage"] + 1})

    outcomes = await asyncio.gather(*(db.mutate(lambda tx: bump(DatabaseWriter(tx))) for _ in range(40)))
    doc, _ = await read(db, lambda r: r.get(vid))
    assert doc["progressPercentage"] == 40
    assert sum(o.retries for o in outcomes) > 0  # the conflicts really happened and were retried
    assert len({o.ts for o in outcomes}) == 40  # every commit has its own ts


async def test_mutation_ts_is_the_commit_ts_and_resends_apply_once(db: Database, fresh_dsn: str) -> None:
    key = MutationKey("session-1", 7, "caller", "videos:add", "digest")
    outcome = await db.mutate(lambda tx: video(DatabaseWriter(tx), "a"), dedupe=key)
    assert outcome.ts == await db.latest_ts()
    again = await db.mutate(lambda tx: video(DatabaseWriter(tx), "a"), dedupe=key)
    assert again.deduplicated and again.value == outcome.value and again.ts == outcome.ts
    conn = await asyncpg.connect(fresh_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM videos") == 1
    finally:
        await conn.close()


# Strings, numbers and JSON that a literal could get wrong: quotes, backslashes, escapes, non-ASCII, $-marks,
# doubles that only repr round-trips, signed zero and infinities, and a JSON string (not text) in a jsonb column.
_AWKWARD: dict[str, Any] = {
    "title": "it's a \\'quote\\' $1 \"x\" \\n \t é 漢字 🎬 E'' $$",
    "progressPercentage": 0.1 + 0.2,
    "estimatedCompletionSeconds": -0.0,
    "retryCount": 1e-300,
    "createdAt": float("inf"),
    "updatedAt": float("-inf"),
    "isRetryable": True,
    "stageProgress": {"a'b": [1.5, None, "\\", {"x$1": "it's"}], "n": 2**53},
}


async def test_awkward_values_are_stored_and_replayed_exactly(db: Database) -> None:
    """Writes travel with parameters; the dedupe row travels as literals (`sql.literal`) in the COMMIT message, so
    a resend's stored result must come back exactly as the live value."""
    vid = await write(db, lambda w: video(w, "awkward", **_AWKWARD))
    doc, _ = await read(db, lambda r: r.get(vid))
    assert {k: doc[k] for k in _AWKWARD} == _AWKWARD
    assert str(doc["estimatedCompletionSeconds"]) == "-0.0"

    async def returns(w: DatabaseWriter) -> Any:
        await w.patch(vid, {"retryCount": 2.0})
        # as the runner stores it: the wire encoding ({"$float": ...} for -0.0, inf, NaN)
        return values.encode({k: v for k, v in _AWKWARD.items() if k != "stageProgress"} | {"nan": float("nan")})

    key = MutationKey("s-awkward", 1, "c", "p", "d")
    live = await db.mutate(lambda tx: returns(DatabaseWriter(tx)), dedupe=key)
    stored = await db.mutate(lambda tx: returns(DatabaseWriter(tx)), dedupe=key)
    assert stored.deduplicated and stored.value == live.value and stored.ts == live.ts

    async def nan_and_json_string(w: DatabaseWriter) -> None:
        await w.patch(vid, {"retryCount": float("nan"), "stageProgress": "just a string"})

    await write(db, nan_and_json_string)
    doc, _ = await read(db, lambda r: r.get(vid))
    assert doc["retryCount"] != doc["retryCount"] and doc["stageProgress"] == "just a string"


async def test_writes_are_read_back_in_their_mutation_and_commit_together(db: Database) -> None:
    async def body(w: DatabaseWriter) -> Any:
        ids = [await video(w, f"h{i}", status="Queued") for i in range(3)]
        first = await w.get(ids[0])
        await w.patch(ids[1], {"status": "Done"})
        await w.delete(ids[2])
        after = await w.query("videos").with_index("by_status", lambda q: q.eq("status", "Done")).collect()
        gone = await w.get(ids[2])
        return first["twitchId"], [d["twitchId"] for d in after], gone

    assert await write(db, body) == ("h0", ["h1"], None)
    with pytest.raises(ArgumentError, match="does not exist"):
        # deleted in this mutation, so no longer known to exist: checked, and the call raises where it was made
        await write(db, lambda w: _delete_then_patch(w))


async def _delete_then_patch(w: DatabaseWriter) -> None:
    vid = await video(w, "x")
    await w.delete(vid)
    await w.patch(vid, {"status": "Done"})


async def test_a_value_postgres_cannot_store_is_refused_at_the_call(db: Database) -> None:
    """text and jsonb refuse NUL, and a "$" field name could be stored but never read back as a Convex value: each
    is refused where it is written, naming the field, and nothing of the mutation is stored."""
    with pytest.raises(ArgumentError, match=r'field "stageProgress": strings may not contain NUL .*\(at x\)'):
        await write(db, lambda w: video(w, "bad", stageProgress={"x": "\x00"}))
    with pytest.raises(ArgumentError, match=r'"\$bytes" may not start with "\$"'):
        await write(db, lambda w: video(w, "bad", stageProgress={"$bytes": "AA=="}))
    with pytest.raises(ArgumentError, match="NUL"):
        await write(db, lambda w: video(w, "nul\x00"))
    vid = await write(db, lambda w: video(w, "good"))
    docs, _ = await read(db, lambda r: r.query("videos").collect())
    assert [d["_id"] for d in docs] == [vid]


async def logged(db: Database, fn: Any) -> tuple[Any, list[str]]:
    """`fn`'s value and every message its mutation sent PostgreSQL (its writer connection's queries)."""
    sent: list[str] = []
    conns: list[asyncpg.Connection] = []

    def log(query: Any) -> None:
        sent.append(query.query)

    async def body(tx: Transaction) -> Any:
        if not conns:
            conns.append(tx.conn)
            tx.conn.add_query_logger(log)
        return await fn(DatabaseWriter(tx))

    try:
        value = (await db.mutate(body)).value
        await asyncio.sleep(0.01)  # asyncpg calls query loggers soon after, not at once
        return value, sent
    finally:
        conns[0].remove_query_logger(log)


async def test_every_write_is_sent_when_made_and_the_commit_is_one_message(db: Database) -> None:
    """Read, write, return: the read, the write (with parameters), then one message with the dedupe row, COMMIT,
    the NOTIFY and the next BEGIN."""
    vid = await write(db, lambda w: video(w, "n", progressPercentage=1))

    async def bump(w: DatabaseWriter) -> None:
        doc = await w.get(vid)
        await w.patch(vid, {"progressPercentage": doc["progressPercentage"] + 1})

    _, sent = await logged(db, bump)
    assert len(sent) == 3 and sent[0].startswith("SELECT") and sent[1].startswith("UPDATE")
    assert "$1" in sent[1] and not sent[1].endswith("RETURNING 1")  # read first: known to exist, no check
    assert sent[2].startswith("INSERT INTO _ripple_mutations") and "COMMIT" in sent[2]
    _, sent = await logged(db, lambda w: w.patch(vid, {"status": "Done"}))  # not read first: checked at once
    assert len(sent) == 2 and sent[0].endswith("RETURNING 1") and "COMMIT" in sent[1]
    doc, _ = await read(db, lambda r: r.get(vid))
    assert doc["progressPercentage"] == 2 and doc["status"] == "Done"


async def test_many_large_writes_each_go_in_their_own_message(db: Database) -> None:
    big = "x" * 60_000

    async def body(w: DatabaseWriter) -> list[str]:
        return [await video(w, f"big{i}", errorDetails=big) for i in range(12)]

    ids, sent = await logged(db, body)
    assert len(sent) == 13 and all(q.startswith("INSERT INTO") and len(q) < 2_000 for q in sent)
    docs, _ = await read(db, lambda r: r.query("videos").collect())
    assert sorted(d["_id"] for d in docs) == sorted(ids) and all(d["errorDetails"] == big for d in docs)
