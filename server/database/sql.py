"""SQL text: quoted identifiers and literals, for statements that travel without parameters.

Why literals at all: the message that ends a mutation (its dedupe row, COMMIT, the NOTIFY, the next BEGIN) is one
simple-protocol query, which takes no parameters; every other statement is sent with parameters. Values are only
those `ctx.db` accepts (text, numbers, booleans, JSON), each written so PostgreSQL reads back exactly the value
asyncpg would send.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

__all__ = ["literal", "quote_ident"]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(text: str) -> str:
    # E'' so the literal means the same whatever standard_conforming_strings says. A NUL would end the message's
    # text early (and PostgreSQL text cannot hold one), so it is refused as the extended protocol refuses it.
    if "\x00" in text:
        raise ValueError("a NUL character cannot be sent to PostgreSQL as text")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def literal(value: Any, *, json: bool = False) -> str:
    """`value` (None, bool, int, float or str; any JSON value when `json`, for a jsonb column) as an SQL literal."""
    if value is None:
        return "NULL"
    if json:
        return _text(orjson.dumps(value).decode()) + "::jsonb"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return f"{value!r}::float8"  # repr round-trips a double exactly
        return "'NaN'::float8" if math.isnan(value) else f"'{'-' if value < 0 else ''}Infinity'::float8"
    if isinstance(value, str):
        return _text(value)
    raise TypeError(f"no SQL literal for a {type(value).__name__}")
