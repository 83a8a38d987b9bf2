"""Functions used only by the core tests, registered under the `testing:` module."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel

from server import ConvexError, Id, action, internal_action, internal_mutation, internal_query, mutation, query


@mutation(name="testing:insert")
async def insert(ctx: Any, table: str, doc: dict[str, Any]) -> str:
    return await ctx.db.insert(table, doc)


@mutation(name="testing:patch")
async def patch(ctx: Any, id: str, fields: dict[str, Any]) -> None:
    await ctx.db.patch(id, fields)


@mutation(name="testing:insertKeyed")
async def insert_keyed(ctx: Any, key: str, value: str = "v") -> str:
    """A document whose nested field name or text the function itself builds (arguments are checked on arrival)."""
    fields = {"stageProgress": {key.replace("<dollar>", "$"): 1}, "title": value.replace("<nul>", "\x00")}
    return await ctx.db.insert("videos", {"twitchId": "k", "status": "Queued", **fields})  # type: ignore[no-any-return]


@query(name="testing:get")
async def get(ctx: Any, id: str) -> Any:
    return await ctx.db.get(id)


@query(name="testing:videosByStatus")
async def videos_by_status(ctx: Any, status: str) -> Any:
    return await ctx.db.query("videos").with_index("by_status", lambda q: q.eq("status", status)).collect()


@query(name="testing:videosPage")
async def videos_page(ctx: Any, pagination_opts: dict[str, Any], status: str | None = None) -> Any:
    q = ctx.db.query("videos")
    if status is not None:
        q = q.with_index("by_status", lambda r: r.eq("status", status))
    return await q.paginate(pagination_opts)


@query(name="testing:whoami")
async def whoami(ctx: Any) -> Any:
    return await ctx.auth.get_user_identity()


@query(name="testing:count")
async def count(ctx: Any, twitch_id: str) -> float:
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    return doc.get("progressPercentage", 0) if doc else -1


@query(name="testing:counts")
async def counts(ctx: Any, twitch_ids: list[str]) -> list[float]:
    """`testing:count` of each id, one after the other (so a failing lookup comes after the reads before it). A
    "<nul>" in an id becomes NUL here, past argument validation, so PostgreSQL fails that lookup's statement."""
    docs = []
    for twitch_id in twitch_ids:
        key = twitch_id.replace("<nul>", "\x00")
        docs.append(
            await ctx.db.query("videos").with_index("by_twitch_id", lambda q, k=key: q.eq("twitchId", k)).unique()
        )
    return [doc.get("progressPercentage", 0) if doc else -1 for doc in docs]


@query(name="testing:countThenFirst")
async def count_then_first(ctx: Any, twitch_id: str, table: str) -> list[Any]:
    """A row's count, then the first document of another table (which a test may hold locked)."""
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    return [doc.get("progressPercentage", 0) if doc else -1, await ctx.db.query(table).first()]


@mutation(name="testing:increment")
async def increment(ctx: Any, twitch_id: str) -> float:
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    value = (doc.get("progressPercentage") or 0) + 1
    await ctx.db.patch(doc["_id"], {"progressPercentage": value})
    return value


@mutation(name="testing:fail")
async def fail(ctx: Any, data: Any = None) -> None:
    await ctx.db.insert("videos", {"twitchId": "ghost", "title": "never committed", "status": "Queued"})
    if data is not None:
        raise ConvexError(data)
    raise RuntimeError("boom")


class Planner(BaseModel):
    kind: Literal["planner"]
    plan: str


class Coder(BaseModel):
    kind: Literal["coder"]
    code: str
    language: str


@query(name="testing:typed")
async def typed(ctx: Any, video_id: Id("videos"), session: Planner | Coder, note: str | None = None) -> Any:
    return {"videoId": video_id, "kind": session.kind, "note": note}


@internal_query(name="testing:secret")
async def secret(ctx: Any) -> str:
    return "internal"


@internal_mutation(name="testing:internalInsert")
async def internal_insert(ctx: Any, twitch_id: str) -> str:
    return await ctx.db.insert("videos", {"twitchId": twitch_id, "title": "t", "status": "Queued"})


@action(name="testing:viaAction")
async def via_action(ctx: Any, twitch_id: str) -> Any:
    video_id = await ctx.run_mutation(internal_insert, {"twitchId": twitch_id})
    return {"id": video_id, "secret": await ctx.run_query("testing:secret")}


@query(name="testing:boom")
async def boom(ctx: Any, data: Any = None) -> None:
    if data is not None:
        raise ConvexError(data)
    raise RuntimeError("query failed")


@query(name="testing:padded")
async def padded(ctx: Any, twitch_id: str, size: int) -> Any:
    """A large result, for backpressure tests."""
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    return {"progress": doc.get("progressPercentage") if doc else None, "padding": "x" * size}


@query(name="testing:myVideos")
async def my_videos(ctx: Any) -> Any:
    identity = await ctx.auth.get_user_identity()
    if identity is None:
        return None
    return await ctx.db.query("videos").with_index("by_status", lambda q: q.eq("status", identity["subject"])).collect()


@mutation(name="testing:setProgress")
async def set_progress(ctx: Any, twitch_id: str, progress: float) -> None:
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    if doc is None:
        await ctx.db.insert(
            "videos", {"twitchId": twitch_id, "title": twitch_id, "status": "Queued", "progressPercentage": progress}
        )
    else:
        await ctx.db.patch(doc["_id"], {"progressPercentage": progress})


# Set by a test: `testing:sometimes` then reads nothing (a re-run the hub started from announced changes that makes
# no statement, so the round's head must be read on its own).
READ_NOTHING = [False]


@query(name="testing:sometimes")
async def sometimes(ctx: Any, twitch_id: str) -> float:
    if READ_NOTHING[0]:
        return -2
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    return doc.get("progressPercentage", 0) if doc else -1


# Set by a test: `testing:gated` waits until GATES[name] is set (a mutation held in flight on purpose).
GATES: dict[str, asyncio.Event] = {}


@mutation(name="testing:gated")
async def gated(ctx: Any, name: str) -> None:
    await GATES[name].wait()


@mutation(name="testing:whoamiMutation")
async def whoami_mutation(ctx: Any) -> str | None:
    """The subject the mutation ran as (reads nothing, writes nothing)."""
    identity = await ctx.auth.get_user_identity()
    return identity["subject"] if identity else None


@query(name="testing:slowCount")
async def slow_count(ctx: Any, twitch_id: str, delay_s: float) -> float:
    """`testing:count` after a pause: a hub round that re-runs it stays open that long."""
    await asyncio.sleep(delay_s)
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    return doc.get("progressPercentage", 0) if doc else -1


@action(name="testing:viaWhoami")
async def via_whoami(ctx: Any) -> str | None:
    """The subject the action ran as."""
    identity = await ctx.auth.get_user_identity()
    return identity["subject"] if identity else None


# Function logs (tests/test_function_logs.py). The logger has its own level, so its lines are captured whatever
# level the test run's root logger has.
app_log = logging.getLogger("tests.testing_app")
app_log.setLevel(logging.INFO)


@query(name="testing:chattyCount")
async def chatty_count(ctx: Any, twitch_id: str, tag: str = "") -> float:
    """`testing:count` that prints and logs what it read, tagged (so concurrent callers can tell lines apart)."""
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    value = doc.get("progressPercentage", 0) if doc else -1
    print(f"{tag} read {twitch_id}:", value)
    app_log.info("%s counted %s", tag, value)
    return value  # type: ignore[no-any-return]


@mutation(name="testing:chattySet")
async def chatty_set(ctx: Any, twitch_id: str, progress: float, tag: str = "", delay_s: float = 0.0) -> None:
    """Sets a row's progress, printing before and after a pause (so concurrent calls interleave their lines)."""
    print(f"{tag} start")
    await asyncio.sleep(delay_s)
    app_log.warning("%s setting %s to %s", tag, twitch_id, progress)
    doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    if doc is None:
        await ctx.db.insert("videos", {"twitchId": twitch_id, "title": "t", "status": "Queued"})
        doc = await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).unique()
    await ctx.db.patch(doc["_id"], {"progressPercentage": progress})
    print(f"{tag} done")


@mutation(name="testing:buggy")
async def buggy(ctx: Any, key: str) -> Any:
    """An app bug: an uncaught KeyError, after a printed line."""
    print("looking up", key)
    return {}[key]


@query(name="testing:buggyQuery")
async def buggy_query(ctx: Any, key: str) -> Any:
    return {}[key]


@query(name="testing:badStatement")
async def bad_statement(ctx: Any, text: str) -> Any:
    """A NUL built past argument validation: PostgreSQL refuses the statement (the driver's error is internal)."""
    return await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", text + "\x00")).unique()


@query(name="testing:floodLog")
async def flood_log(ctx: Any, lines: int, width: int = 10) -> int:
    for n in range(lines):
        print(str(n) * width)
    return lines


# The scheduler (tests/test_scheduler.py).


@internal_mutation(name="testing:scheduledInsert")
async def scheduled_insert(ctx: Any, twitch_id: str, title: str = "t") -> str:
    """Records one run as a video; also says whether it ran with an identity (it must not)."""
    who = await ctx.auth.get_user_identity()
    return await ctx.db.insert(  # type: ignore[no-any-return]
        "videos", {"twitchId": twitch_id, "title": title, "status": "anonymous" if who is None else "signed in"}
    )


@mutation(name="testing:schedule")
async def schedule(ctx: Any, delay_ms: float, twitch_id: str, fail: bool = False) -> str:
    job = await ctx.scheduler.run_after(delay_ms, scheduled_insert, {"twitchId": twitch_id})
    if fail:
        raise ConvexError("the scheduling mutation failed")
    return job  # type: ignore[no-any-return]


@mutation(name="testing:scheduleBacklog")
async def schedule_backlog(ctx: Any, twitch_id: str, count: int) -> list[str]:
    """`count` jobs due in the past, created in the reverse of their scheduled order."""
    now = time.time() * 1000
    return [
        await ctx.scheduler.run_at(now - 1000 + i, "testing:scheduledInsert", {"twitchId": twitch_id, "title": str(i)})
        for i in reversed(range(count))
    ]


@mutation(name="testing:scheduleMany")
async def schedule_many(ctx: Any, count: int, twitch_id: str) -> None:
    for _ in range(count):
        await ctx.scheduler.run_after(60_000, scheduled_insert, {"twitchId": twitch_id})


@mutation(name="testing:scheduleHuge")
async def schedule_huge(ctx: Any, size: int) -> None:
    await ctx.scheduler.run_after(0, scheduled_insert, {"twitchId": "huge", "title": "x" * size})


@mutation(name="testing:cancel")
async def cancel(ctx: Any, id: str) -> None:
    await ctx.scheduler.cancel(id)


@mutation(name="testing:writeSystem")
async def write_system(ctx: Any, id: str) -> None:
    await ctx.db.patch(id, {"name": "testing:fail"})


@query(name="testing:job")
async def job(ctx: Any, id: Id("_scheduled_functions")) -> Any:  # type: ignore[valid-type]
    return await ctx.db.system.get(id)


@query(name="testing:jobs")
async def jobs(ctx: Any) -> Any:
    return await ctx.db.system.query("_scheduled_functions").collect()


@query(name="testing:publicJobs")
async def public_jobs(ctx: Any) -> Any:
    return await ctx.db.query("_scheduled_functions").collect()


@query(name="testing:videosOf")
async def videos_of(ctx: Any, twitch_id: str) -> Any:
    return await ctx.db.query("videos").with_index("by_twitch_id", lambda q: q.eq("twitchId", twitch_id)).collect()


@internal_action(name="testing:scheduledAction")
async def scheduled_action(ctx: Any, twitch_id: str, fail: bool = False) -> str:
    if fail:
        raise ConvexError("the scheduled action failed")
    return await ctx.run_mutation(scheduled_insert, {"twitchId": twitch_id})  # type: ignore[no-any-return]


@action(name="testing:scheduleFromAction")
async def schedule_from_action(ctx: Any, twitch_id: str, fail: bool = False) -> str:
    return await ctx.scheduler.run_after(  # type: ignore[no-any-return]
        0, scheduled_action, {"twitchId": twitch_id, "fail": fail}
    )


# File storage (tests/test_storage.py).


@mutation(name="testing:uploadUrl")
async def upload_url(ctx: Any, fail: bool = False) -> str:
    url = await ctx.storage.generate_upload_url()
    if fail:
        raise ConvexError("the mutation that made the upload URL failed")
    return url  # type: ignore[no-any-return]


@query(name="testing:files")
async def files(ctx: Any) -> Any:
    return await ctx.db.system.query("_storage").collect()


@query(name="testing:file")
async def file(ctx: Any, id: Id("_storage")) -> Any:
    return {"doc": await ctx.db.system.get(id), "url": await ctx.storage.get_url(id)}


@mutation(name="testing:deleteFile")
async def delete_file(ctx: Any, id: Id("_storage"), fail: bool = False) -> None:
    await ctx.storage.delete(id)
    if fail:
        raise ConvexError("the deleting mutation failed")


@action(name="testing:storeAndRead")
async def store_and_read(ctx: Any, text: str, content_type: str | None = None) -> Any:
    storage_id = await ctx.storage.store(text.encode(), content_type)
    data = await ctx.storage.get(storage_id)
    url = await ctx.storage.get_url(storage_id)
    await ctx.storage.delete(storage_id)
    return {
        "id": storage_id,
        "text": data.decode() if data is not None else None,
        "url": url,
        "after": await ctx.storage.get(storage_id),
        "urlAfter": await ctx.storage.get_url(storage_id),
    }
