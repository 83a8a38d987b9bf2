"""Document ids that name their table, so `Id("videos")` is checked without a query.

Shape (36 lowercase hex characters, the same as schema.sql's `_ripple_new_id`):
28 random, 4 for the table number, 4 check digits (the first 4 hex of md5 over the 32 before them).
"""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = ["ID_LENGTH", "looks_like_id", "new_id", "table_number_of"]

ID_LENGTH = 36
_SHAPE = re.compile(r"[0-9a-f]{36}")


def _check(body: str) -> str:
    return hashlib.md5(body.encode("ascii")).hexdigest()[:4]


def new_id(table_number: int) -> str:
    body = secrets.token_hex(14) + f"{table_number:04x}"
    return body + _check(body)


def looks_like_id(value: object) -> bool:
    return isinstance(value, str) and table_number_of(value) is not None


def table_number_of(value: str) -> int | None:
    """The table number an id encodes, or None when the string is not a well-formed id."""
    if len(value) != ID_LENGTH or not _SHAPE.fullmatch(value):
        return None
    body = value[:32]
    if _check(body) != value[32:]:
        return None
    return int(body[28:32], 16)
