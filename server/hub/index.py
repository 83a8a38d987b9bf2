"""`ReadSetIndex`: which query instances a document change invalidates. Pure, no I/O.

Each recorded `IndexRange` goes in a bucket keyed by (table, index, equality prefix). A change looks up, for
every index of its table and every prefix length in use there, the one bucket its key falls in, and checks
only the ranges inside it: the cost of a change does not grow with subscriptions on unrelated keys. Ranges
with no equality prefix (a whole-table scan, a bare time range) share one bucket per index and are checked
directly; they are rare and each is relevant to every change of its table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import orjson

from server.database.reads import IndexRange, key_of

__all__ = ["ReadSetIndex"]

InstanceId = int
_BucketKey = tuple[str, str, int, tuple[Hashable, ...]]


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for an index value; floats and ints that are equal hash alike, as they compare."""
    if isinstance(value, (dict, list)):
        return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    return value  # type: ignore[no-any-return]


class ReadSetIndex:
    def __init__(self) -> None:
        self._buckets: dict[_BucketKey, dict[InstanceId, list[IndexRange]]] = {}
        # (table, index) → prefix lengths in use, with how many ranges use each.
        self._prefixes: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        self._by_instance: dict[InstanceId, list[tuple[_BucketKey, IndexRange]]] = {}
        self._by_table: dict[str, set[InstanceId]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._by_instance)

    def put(self, instance: InstanceId, ranges: Iterable[IndexRange]) -> None:
        """Replace what `instance` depends on with `ranges` (after each of its runs)."""
        self.remove(instance)
        entries = []
        for r in ranges:
            key: _BucketKey = (r.table, r.index, len(r.eq), tuple(_freeze(v) for v in r.eq))
            self._buckets.setdefault(key, {}).setdefault(instance, []).append(r)
            lengths = self._prefixes[(r.table, r.index)]
            lengths[len(r.eq)] = lengths.get(len(r.eq), 0) + 1
            self._by_table[r.table].add(instance)
            entries.append((key, r))
        self._by_instance[instance] = entries

    def remove(self, instance: InstanceId) -> None:
        for key, r in self._by_instance.pop(instance, ()):
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.pop(instance, None)
                if not bucket:
                    del self._buckets[key]
            lengths = self._prefixes[(r.table, r.index)]
            lengths[len(r.eq)] -= 1
            if not lengths[len(r.eq)]:
                del lengths[len(r.eq)]
            if not lengths:
                del self._prefixes[(r.table, r.index)]
            self._by_table[r.table].discard(instance)
            if not self._by_table[r.table]:
                del self._by_table[r.table]

    def instances_reading(self, table: str) -> set[InstanceId]:
        return set(self._by_table.get(table, ()))

    def match(
        self,
        table: str,
        indexes: Mapping[str, tuple[str, ...]],
        old_keys: Mapping[str, Any] | None,
        new_keys: Mapping[str, Any] | None,
        into: set[InstanceId],
    ) -> None:
        """Add to `into` every instance whose ranges contain the old or the new version of a changed document.

        `indexes` maps each index name of `table` to its full key fields; the key objects hold the document's
        indexed values (and `_id`) before and after the change, None for the side that does not exist.
        """
        if table not in self._by_table:
            return
        for index_name, fields in indexes.items():
            lengths = self._prefixes.get((table, index_name))
            if not lengths:
                continue
            for doc_keys in (old_keys, new_keys):
                if doc_keys is None:
                    continue
                key = key_of(fields, doc_keys)
                for n in lengths:
                    bucket = self._buckets.get((table, index_name, n, tuple(_freeze(v) for v in key[:n])))
                    if not bucket:
                        continue
                    for instance, ranges in bucket.items():
                        if instance not in into and any(r.contains(key) for r in ranges):
                            into.add(instance)
