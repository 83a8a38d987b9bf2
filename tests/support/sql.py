"""Helpers for the tests of schema.sql against a real PostgreSQL: connections, a LISTEN of the commit
announcements, and readers of the commit log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from server.database.catalog import schema_script

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schema_script((ROOT / "schema.sql").read_text())  # Ripple's SQL, the seed apps' tables, the per-start part

GEN_KEYS = ["batch_id", "parent_generation_id", "status", "created_at", "user_id", "_creation_time"]

INSERT_GENERATION = (
    "INSERT INTO generations (user_id, prompt, status, created_at) VALUES ($1, 'p', $2, $3) "
    "RETURNING _id, _creation_time"
)
INSERT_WORKFLOW = "INSERT INTO workflows (task, status, current_step) VALUES ($1, 'pending', 'planner') RETURNING _id"


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


class Listener:
    """LISTEN ripple_commits on its own connection; the ts of each announcement, in delivery order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue()

    def _on(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.queue.put_nowait(int(payload.partition(" ")[0]))

    async def next(self, timeout: float = 5.0) -> int:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def drain(self, quiet: float = 0.15) -> list[int]:
        """Everything that arrives until nothing has arrived for `quiet` seconds."""
        out: list[int] = []
        while True:
            try:
                out.append(await asyncio.wait_for(self.queue.get(), quiet))
            except TimeoutError:
                return out


@asynccontextmanager
async def listening(dsn: str) -> AsyncIterator[Listener]:
    listener = Listener()
    async with connect(dsn) as conn:
        await conn.add_listener("ripple_commits", listener._on)
        yield listener


async def commits(conn: asyncpg.Connection) -> list[tuple[int, int]]:
    return [(r["ts"], r["xid"]) for r in await conn.fetch("SELECT ts, xid FROM _ripple_commits ORDER BY ts")]


async def changes_of(conn: asyncpg.Connection, xid: int) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT table_name, doc_id, old_keys, new_keys FROM _ripple_changes WHERE xid = $1", xid)
    return [
        {
            "table": r["table_name"],
            "doc": r["doc_id"],
            "old": None if r["old_keys"] is None else json.loads(r["old_keys"]),
            "new": None if r["new_keys"] is None else json.loads(r["new_keys"]),
        }
        for r in rows
    ]
