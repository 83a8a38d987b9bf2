"""`ReadSetIndex` against a brute-force oracle: the same instances must match, whatever the mix of ranges."""

from __future__ import annotations

import random

from server.database.reads import IndexRange
from server.hub.index import ReadSetIndex

FIELDS = {
    "by_status": ("status", "_creation_time", "_id"),
    "by_workflow_and_status": ("workflow_id", "status", "_creation_time", "_id"),
    "by_created_at": ("created_at", "_creation_time", "_id"),
    "by_id": ("_id",),
    "by_creation_time": ("_creation_time", "_id"),
}
STATUSES = [None, "idle", "running", "done"]
WORKFLOWS = [None, "w1", "w2", "w3"]


def random_range(rng: random.Random) -> IndexRange:
    index = rng.choice(list(FIELDS))
    fields = FIELDS[index]
    if index == "by_id":
        return IndexRange("t", index, fields, (f"id{rng.randrange(20)}",))
    if index == "by_creation_time":
        return IndexRange("t", index, fields)
    if index == "by_created_at":
        lo, hi = sorted(rng.sample(range(100), 2))
        lower = ((float(lo),), rng.random() < 0.5) if rng.random() < 0.7 else None
        upper = ((float(hi),), rng.random() < 0.5) if rng.random() < 0.7 else None
        return IndexRange("t", index, fields, (), lower, upper)
    if index == "by_status":
        return IndexRange("t", index, fields, (rng.choice(STATUSES),))
    eq = (rng.choice(WORKFLOWS),) if rng.random() < 0.5 else (rng.choice(WORKFLOWS), rng.choice(STATUSES))
    return IndexRange("t", index, fields, eq)


def random_doc(rng: random.Random) -> dict:
    return {
        "_id": f"id{rng.randrange(20)}",
        "_creation_time": float(rng.randrange(1000)),
        "status": rng.choice(STATUSES),
        "workflow_id": rng.choice(WORKFLOWS),
        "created_at": float(rng.randrange(100)) if rng.random() < 0.9 else None,
    }


def test_index_matches_exactly_what_a_scan_of_all_ranges_matches() -> None:
    rng = random.Random(7)
    index = ReadSetIndex()
    instances: dict[int, list[IndexRange]] = {}
    for instance in range(300):
        ranges = [random_range(rng) for _ in range(rng.randint(1, 3))]
        instances[instance] = ranges
        index.put(instance, ranges)
    for instance in rng.sample(sorted(instances), 60):  # re-runs change read sets; some instances go away
        if rng.random() < 0.5:
            index.remove(instance)
            del instances[instance]
        else:
            instances[instance] = [random_range(rng)]
            index.put(instance, instances[instance])
    for _ in range(1000):
        old = random_doc(rng) if rng.random() < 0.8 else None
        new = random_doc(rng) if rng.random() < 0.8 else None
        matched: set[int] = set()
        index.match("t", FIELDS, old, new, matched)
        expected = {i for i, ranges in instances.items() if any(r.matches(old) or r.matches(new) for r in ranges)}
        assert matched == expected


def test_changes_to_other_tables_and_keys_touch_nothing() -> None:
    index = ReadSetIndex()
    for i in range(10_000):
        index.put(i, [IndexRange("t", "by_status", FIELDS["by_status"], (f"s{i}",))])
    matched: set[int] = set()
    index.match("other", FIELDS, None, {"status": "s1", "_creation_time": 1.0, "_id": "x"}, matched)
    assert matched == set()
    index.match("t", FIELDS, None, {"status": "s42", "_creation_time": 1.0, "_id": "x"}, matched)
    assert matched == {42}
    assert len(index) == 10_000
    for i in range(10_000):
        index.remove(i)
    assert len(index) == 0 and index.instances_reading("t") == set()
