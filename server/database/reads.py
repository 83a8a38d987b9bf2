"""What a function read, as intervals of index keys, so a commit can be matched against it. Pure.

An `IndexRange` is an equality prefix on an index plus optional bounds on the rest of the key. Keys compare
as Convex orders them: an absent value (None) before anything else, then the value itself. Bounds are key
prefixes: `lower=((5,), True)` admits every key whose suffix starts at or above 5.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Bound", "IndexRange", "ReadSet", "key_of", "sort_key"]

Bound = tuple[tuple[Any, ...], bool]  # (key prefix, inclusive)


def sort_key(values: Iterable[Any]) -> tuple[tuple[int, Any], ...]:
    """Convex's order for index keys: None first, then by value."""
    return tuple((0, 0) if v is None else (1, v) for v in values)


def key_of(fields: Sequence[str], doc_keys: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(doc_keys.get(f) for f in fields)


@dataclass(frozen=True, slots=True)
class IndexRange:
    table: str
    index: str
    # The index's full key: declared fields, then `_creation_time, _id` (just `_id` for `by_id`).
    key_fields: tuple[str, ...]
    eq: tuple[Any, ...] = ()
    lower: Bound | None = None
    upper: Bound | None = None

    def contains(self, key: tuple[Any, ...]) -> bool:
        """Whether a document whose index key is `key` lies in this range."""
        n = len(self.eq)
        if sort_key(key[:n]) != sort_key(self.eq):
            return False
        rest = sort_key(key[n:])
        if self.lower is not None:
            prefix, inclusive = self.lower
            head = rest[: len(prefix)]
            bound = sort_key(prefix)
            if head < bound or (head == bound and not inclusive):
                return False
        if self.upper is not None:
            prefix, inclusive = self.upper
            head = rest[: len(prefix)]
            bound = sort_key(prefix)
            if head > bound or (head == bound and not inclusive):
                return False
        return True

    def matches(self, doc_keys: Mapping[str, Any] | None) -> bool:
        return doc_keys is not None and self.contains(key_of(self.key_fields, doc_keys))


@dataclass(slots=True)
class ReadSet:
    """Everything one function execution read; the hub indexes these to find what a commit invalidates."""

    ranges: list[IndexRange] = field(default_factory=list)

    def add(self, read: IndexRange) -> None:
        self.ranges.append(read)

    def matches(self, table: str, old_keys: Mapping[str, Any] | None, new_keys: Mapping[str, Any] | None) -> bool:
        return any(r.table == table and (r.matches(old_keys) or r.matches(new_keys)) for r in self.ranges)
