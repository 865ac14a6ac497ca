"""oca.store.demand: the request counters' records, marks and eviction (pure), and a worker's Tally bound."""

from __future__ import annotations

import pytest

from oca.server.popularity import Tally
from oca.store.demand import Demand, Mark, added, evictions

M1 = Mark(1, 100.0)
M2 = Mark(2, 200.0)


def test_records_round_trip_and_grow():
    d = added(None, 3, 300, 150.0, M1)
    assert d == Demand(3, 300, 3, 300, 150.0, 150.0, 1)
    assert Demand.unpack(d.pack()) == d
    d = added(d, 1, 10, 160.0, M1)
    assert d == Demand(4, 310, 4, 310, 150.0, 160.0, 1)
    with pytest.raises(ValueError):
        added(d, -1, 0, 170.0, M1)


def test_a_new_mark_zeroes_the_since_mark_counts_lazily():
    d = added(None, 5, 500, 150.0, M1)
    assert d.seen(M2) == Demand(5, 500, 0, 0, 150.0, 150.0, 2)
    assert added(d, 2, 20, 250.0, M2) == Demand(7, 520, 2, 20, 150.0, 250.0, 2)
    assert Mark.unpack(M2.pack()) == M2 and M1.next(200.0) == M2
    assert Mark.unpack(None) == Mark() and Mark.unpack(b"short") == Mark()


# (case, records as (id, requests since the mark, requests, last seen), max_ids, evicted)
EVICTION_CASES = [
    ("within the bound", [("a", 0, 1, 1.0), ("b", 0, 1, 1.0)], 2, []),
    ("fewest since the mark first, down to 90%", [("a", 5, 5, 1.0), ("b", 0, 50, 1.0), ("c", 1, 1, 1.0)] + [(f"z{i}", 3, 3, 1.0) for i in range(8)], 10, ["b", "c"]),
    ("then fewest in total, then oldest, then id", [("a", 0, 2, 5.0), ("b", 0, 1, 9.0), ("c", 0, 2, 1.0), ("d", 0, 2, 1.0)] + [(f"z{i}", 9, 9, 1.0) for i in range(8)], 10, ["b", "c", "d"]),
]


@pytest.mark.parametrize("case,records,max_ids,evicted", EVICTION_CASES, ids=[c[0] for c in EVICTION_CASES])
def test_evictions(case, records, max_ids, evicted):
    recs = [(cid, Demand(total, 0, since, 0, 0.0, last, M1.number)) for cid, since, total, last in records]
    out = evictions(recs, max_ids, M1)
    assert out == evicted
    assert len(records) - len(out) <= max_ids


def test_since_mark_counts_of_an_old_mark_do_not_protect_a_record():
    recs = [("old", Demand(9, 0, 9, 0, 0.0, 1.0, 1)), ("new", Demand(1, 0, 1, 0, 0.0, 1.0, 2))] + [(f"z{i}", Demand(5, 0, 5, 0, 0.0, 1.0, 2)) for i in range(9)]
    assert evictions(recs, 10, M2) == ["old", "new"]


def test_tally_is_bounded_and_takes_what_it_counted():
    t = Tally(max_ids=2)
    for cid in ("a", "b", "c", "a"):
        c = t.counts.get(cid) or t.slot(cid)
        if c is not None:
            c[0] += 1
            c[1] += 10
    assert t.dropped == 1  # "c" found the tally full
    deltas = t.take()
    assert deltas == {"a": (2, 20), "b": (1, 10)} and t.counts == {}
    t.counts["a"] = [1, 1]
    t.put_back(deltas)
    assert t.take() == {"a": (3, 21), "b": (1, 10)}
