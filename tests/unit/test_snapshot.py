"""`steering.snapshot`: what steering knows, as bytes and back; a damaged file is refused with the field named.

Pure: bytes in memory, no file. A round trip, and a table of damaged
snapshots (cut short, another version, a bitmap outside the file, a bad
route), each a `SnapshotError` (steering then starts cold).
"""

from __future__ import annotations

import json

import pytest

from steering.health import Availability
from steering.holdings import Catalogue, Holdings
from steering.snapshot import MAGIC, SnapshotError, decode, encode


def sample() -> bytes:
    cat = Catalogue()
    a = Holdings.of(cat, ["f1", "f2", "f3"])
    b = Holdings.of(cat, ["f3", "f4"])
    items = {
        "a1": (Availability(up=True, status="ok", reason="ok"), a, 7, ("10.0.0.0/8",), 3),
        "a2": (Availability(up=True, draining=True, status="draining", reason="drained"), b, 9, ("2001:db8::/32",), 1),
        "a3": (Availability(), frozenset(), 0, (), 0),
    }
    return encode(1000.0, list(cat.ids), items, rounds=4)


def test_round_trip():
    snap = decode(sample(), {"a1", "a2", "a3", "new"})
    assert snap.taken_s == 1000.0 and snap.rounds == 4 and set(snap.appliances) == {"a1", "a2", "a3"}
    a1, a2, a3 = snap.appliances["a1"], snap.appliances["a2"], snap.appliances["a3"]
    assert sorted(a1.inventory) == ["f1", "f2", "f3"] and "f4" not in a1.inventory and a1.inventory_generation == 7
    assert sorted(a2.inventory) == ["f3", "f4"] and a2.state.draining and not a2.state.serves_new_clients
    assert a1.routes == ("10.0.0.0/8",) and a1.routes_generation == 3 and a1.state.up
    assert len(a3.inventory) == 0 and a3.inventory_generation == 0 and not a3.state.up


def test_appliances_no_longer_registered_are_left_out():
    assert set(decode(sample(), {"a2"}).appliances) == {"a2"}


def _edit(edit) -> bytes:
    data = sample()
    size = int.from_bytes(data[8:16], "big")
    head = json.loads(data[16 : 16 + size])
    edit(head)
    raw = json.dumps(head).encode()
    return MAGIC + len(raw).to_bytes(8, "big") + raw + data[16 + size :]


BAD = [
    ("empty", b"", "magic:"),
    ("another version", b"OCASNAP2" + sample()[8:], "magic:"),
    ("cut in the head", sample()[:40], "head: says"),
    ("head not json", MAGIC + (3).to_bytes(8, "big") + b"{x}", "head: body: not JSON"),
    ("taken_s a string", _edit(lambda h: h.update(taken_s="now")), "taken_s:"),
    ("catalogue with a bad id", _edit(lambda h: h.update(catalogue=["../x"])), "catalogue:"),
    ("catalogue with a repeat", _edit(lambda h: h.update(catalogue=["f1", "f1"])), "catalogue:"),
    ("bitmap outside the file", _edit(lambda h: h["appliances"]["a1"].update(bits=[0, 10**6])), "appliances.a1.bits:"),
    ("bitmap wider than the catalogue", _edit(lambda h: h.update(catalogue=[])), "appliances.a1.bits:"),
    ("count beyond the bits", _edit(lambda h: h["appliances"]["a1"].update(count=99)), "appliances.a1.count:"),
    ("bad route", _edit(lambda h: h["routes"][0].__setitem__(0, "10.0.0.0/40")), "routes[0][0]:"),
    ("route list index outside", _edit(lambda h: h["appliances"]["a1"].update(routes=7)), "appliances.a1.routes:"),
    ("route lists not lists", _edit(lambda h: h.update(routes={})), "routes:"),
    ("up not a boolean", _edit(lambda h: h["appliances"]["a1"].update(up=1)), "appliances.a1.up:"),
    ("negative generation", _edit(lambda h: h["appliances"]["a1"].update(generation=-1)), "appliances.a1.generation:"),
    ("rounds negative", _edit(lambda h: h.update(rounds=-1)), "rounds:"),
]


@pytest.mark.parametrize("name,data,where", BAD, ids=[b[0] for b in BAD])
def test_damaged_snapshot_is_refused(name, data, where):
    with pytest.raises(SnapshotError) as exc:
        decode(data, {"a1", "a2", "a3"})
    assert str(exc.value).startswith(where), str(exc.value)
