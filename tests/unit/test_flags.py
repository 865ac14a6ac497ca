"""Typed cross-process records: round trips, and hostile stored values read as empty."""

from __future__ import annotations

import pytest

from oca.store import flags


class Mem:
    def __init__(self):
        self.d: dict[str, str] = {}

    def get_flag(self, name):
        return self.d.get(name)

    def set_flag(self, name, value):
        if value is None:
            self.d.pop(name, None)
        else:
            self.d[name] = value


def test_round_trips():
    m = Mem()
    assert flags.read_drain(m) is None
    flags.write_drain(m, flags.Drain(12.5))
    assert flags.read_drain(m) == flags.Drain(12.5)
    flags.write_drain(m, None)
    assert flags.read_drain(m) is None
    r = flags.Routes(3, ("10.0.0.0/8", "2001:db8::/32"), 99.0)
    flags.write_routes(m, r)
    assert flags.read_routes(m) == r
    flags.write_fill_status(m, flags.FillStatus(last={"files_added": 2}, current=None))
    st = flags.read_fill_status(m)
    assert st.last == {"files_added": 2} and st.current is None
    flags.write_unchosen(m, flags.Unchosen({"a": 1.0}))
    assert dict(flags.read_unchosen(m).since_s) == {"a": 1.0}
    flags.write_listed(m, flags.Listed(frozenset({"b", "a"})))
    assert flags.read_listed(m) == flags.Listed(frozenset({"a", "b"}))


HOSTILE = ["", "not json", "[]", "1", "null", '"x"', '{"generation": "7", "prefixes": [1, "10.0.0.0/8"]}',
           '{"generation": -1, "prefixes": "10.0.0.0/8"}', '{"generation": true}', '{"last": 5, "current": []}',
           '{"a": "x", "b": NaN, "c": 2}']


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_values_read_as_empty_records(raw):
    m = Mem()
    for name in ("routes", "fill_status", "fill_unchosen", "fill_listed"):
        m.d[name] = raw
    routes = flags.read_routes(m)
    assert routes.generation >= 0 and all(isinstance(p, str) for p in routes.prefixes)
    st = flags.read_fill_status(m)
    assert st.last is None or isinstance(st.last.get("files_added", 0), object)
    assert all(isinstance(v, float) for v in flags.read_unchosen(m).since_s.values())
    assert all(isinstance(v, str) for v in flags.read_listed(m).ids)


def test_drain_written_by_an_old_admin_still_reads_as_drained():
    m = Mem()
    m.d["drain"] = "garbage"
    assert flags.read_drain(m) == flags.Drain(0.0)
