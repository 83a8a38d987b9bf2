"""The mutation phase's load: `Mutator` sends `bench:bump` over the sync protocol, `RawMutator` runs the same
read-modify-write straight on asyncpg (the floor), each one at a time, for `bench.clients`."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from server.database.writers import ANNOUNCE_SQL, OPEN_SQL
from server.sync.protocol import decode_ts

__all__ = ["Mutator", "RawMutator"]


class Mutator:
    """One sync socket sending `bench:bump`, the next only after the previous MutationResponse."""

    def __init__(self, ws: Any, row: str) -> None:
        self.ws = ws
        self.row = row
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[bool]] = {}
        self.done: list[tuple[float, float]] = []
        self.errors = 0
        self.retries = 0
        self.first_error: str | None = None
        self.cover_ts: int | None = None
        self.cover_sent = 0.0
        self.cover: list[float] = []

    async def read(self) -> None:
        try:
            async for text in self.ws:
                msg = orjson.loads(text)
                kind = msg.get("type")
                if kind == "MutationResponse":
                    fut = self.waiting.pop(msg["requestId"], None)
                    if msg.get("success") and "ts" in msg:
                        self.cover_ts, self.cover_sent = decode_ts(msg["ts"]), time.perf_counter()
                    if fut is not None and not fut.done():
                        fut.set_result(bool(msg.get("success")))
                        if not msg.get("success") and self.first_error is None:
                            self.first_error = str(msg.get("result"))
                elif kind == "Transition" and self.cover_ts is not None:
                    if decode_ts(msg["endVersion"]["ts"]) >= self.cover_ts:
                        # MutationResponse → the Transition covering it (read-your-writes for the official client)
                        self.cover.append(time.perf_counter() - self.cover_sent)
                        self.cover_ts = None
        except Exception:
            pass
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_result(False)

    async def run(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        while time.perf_counter() < end:
            self.next_id += 1
            fut: asyncio.Future[bool] = loop.create_future()
            self.waiting[self.next_id] = fut
            t = time.perf_counter()
            await self.ws.send(
                orjson.dumps(
                    {
                        "type": "Mutation",
                        "requestId": self.next_id,
                        "udfPath": "bench:bump",
                        "args": [{"twitchId": self.row}],
                    }
                ).decode()
            )
            try:
                ok = await asyncio.wait_for(fut, 30)
            except TimeoutError:
                ok = False
                self.first_error = self.first_error or "no MutationResponse within 30 s"
            now = time.perf_counter()
            if ok:
                self.done.append((now, now - t))
            else:
                self.errors += 1
                if self.ws.state.name != "OPEN":
                    return


class RawMutator:
    """The floor: the same read-modify-write as `bench:bump`, as a SERIALIZABLE asyncpg transaction; with `notify`,
    a NOTIFY in that transaction too (the issue's "raw commit + NOTIFY", as in the latency phase's floor).

    `like_ripple` sends the statements a Ripple mutation sends, in the same messages (the transaction opened in
    the message that ends the previous one, the dedupe row, COMMIT and NOTIFY in one): Ripple's SQL without
    Ripple's Python.
    """

    def __init__(self, conn: Any, table: str, row: str, *, like_ripple: bool = False, notify: bool = False) -> None:
        self.conn = conn
        self.notify = notify
        self.row = row
        self.like_ripple = like_ripple
        # The statement ctx.db's `.with_index("by_twitch_id", eq).unique()` issues, so only Ripple's own work differs.
        self.select = (
            f"SELECT * FROM {table} WHERE twitch_id = $1 "
            "ORDER BY twitch_id ASC NULLS FIRST, _creation_time ASC NULLS FIRST, _id ASC NULLS FIRST LIMIT 2"
        )
        self.update = f"UPDATE {table} SET progress_percentage = $2 WHERE _id = $1"
        self.done: list[tuple[float, float]] = []
        self.errors = 0
        self.retries = 0
        self.first_error: str | None = None
        self.session = uuid.uuid4().hex
        self.request = 0

    async def _once(self) -> None:
        if not self.like_ripple:
            async with self.conn.transaction(isolation="serializable"):
                row = await self.conn.fetchrow(self.select, self.row)
                await self.conn.execute(self.update, row["_id"], (row["progress_percentage"] or 0) + 1)
                if self.notify:
                    await self.conn.execute("NOTIFY bench_floor, '1'")
            return
        if not self.conn.is_in_transaction():
            await self.conn.execute(OPEN_SQL)
        try:
            row = await self.conn.fetchrow(self.select, self.row)
            xid = await self.conn.fetchval(
                self.update + " RETURNING txid_current()", row["_id"], (row["progress_percentage"] or 0) + 1
            )
            self.request += 1
            await self.conn.execute(
                "INSERT INTO _ripple_mutations (session_id, request_id, result, xid) VALUES "
                f"('{self.session}', {self.request}, '{{\"value\": 1}}'::jsonb, {xid}); COMMIT; "
                + ANNOUNCE_SQL
                + "; "
                + OPEN_SQL
            )
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise

    async def run(self, end: float) -> None:
        import asyncpg

        while time.perf_counter() < end:
            t = time.perf_counter()
            while True:
                try:
                    await self._once()
                    break
                except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
                    self.retries += 1
            now = time.perf_counter()
            self.done.append((now, now - t))
