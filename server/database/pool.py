"""The asyncpg pool every layer shares, with jsonb decoded to Python values and encoded without bare NaN."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from server.database.connect import pooler_options

__all__ = ["create_pool", "init_connection"]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """Ripple keeps no session state on pool connections (no LISTEN, SET, cursors or session advisory locks
    outlive a checkout), so a returned connection needs no reset query: one round trip less per checkout.
    asyncpg still rolls back any open transaction."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, pooled: bool = False) -> asyncpg.Pool:
    """`pooled`: `dsn` goes through a transaction pooler (database/connect.py says what that changes)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        connection_class=_Connection,
        **pooler_options(pooled),
    )
    assert pool is not None
    return pool
