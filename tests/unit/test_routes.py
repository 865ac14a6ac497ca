"""`/routes` publishing: the debounce deadline and the publish rule, as case tables."""

from __future__ import annotations

import pytest

from oca.routes import DEBOUNCE_S, MAX_BATCH_S, publish_due, publish_routes
from oca.store import flags
from tests.unit.test_flags import Mem

DUE = [  # (first change, last change, quiet, max batch, due)
    (10.0, 10.0, 0.2, 5.0, 10.2),  # one change: published after the quiet time
    (10.0, 10.15, 0.2, 5.0, 10.35),  # a second change inside the window pushes it on
    (10.0, 14.9, 0.2, 5.0, 15.0),  # events that never stop: published at the cap
    (10.0, 30.0, 0.2, 5.0, 15.0),  # ...and never later than the cap
    (0.0, 0.0, 0.0, 5.0, 0.0),  # no debounce at all
]


@pytest.mark.parametrize("first,last,quiet,most,due", DUE)
def test_publish_due(first, last, quiet, most, due):
    assert publish_due(first, last, quiet, most) == pytest.approx(due)


def test_defaults_are_a_short_quiet_time_and_a_bounded_wait():
    assert 0 < DEBOUNCE_S < 1 and DEBOUNCE_S < MAX_BATCH_S <= 10


PUBLISH = [  # (stored before, prefixes, down, expected generation, expected stored prefixes, down stored)
    (None, [], "", 0, None, None),  # nothing to say: nothing written
    (None, ["10.0.0.0/8"], "", 1, ("10.0.0.0/8",), ""),
    (flags.Routes(4, ("10.0.0.0/8",), 1.0), ["10.0.0.0/8", "10.0.0.0/8"], "", 4, None, None),  # unchanged set: no write
    (flags.Routes(4, ("10.0.0.0/8",), 1.0), ["2001:db8::/32", "10.0.0.0/8"], "", 5, ("10.0.0.0/8", "2001:db8::/32"), ""),
    (flags.Routes(4, ("10.0.0.0/8",), 1.0), ["10.0.0.0/8"], "kernel-routes: OSError", 4, ("10.0.0.0/8",), "kernel-routes: OSError"),
    (flags.Routes(4, ("10.0.0.0/8",), 1.0, "kernel-routes: x"), ["10.0.0.0/8"], "", 4, ("10.0.0.0/8",), ""),
]


@pytest.mark.parametrize("before,prefixes,down,generation,stored,stored_down", PUBLISH)
def test_publish_routes(before, prefixes, down, generation, stored, stored_down):
    m = Mem()
    if before is not None:
        flags.write_routes(m, before)
    raw_before = m.get_flag("routes")
    assert publish_routes(m, prefixes, down=down, now_s=50.0) == generation
    if stored is None:
        assert m.get_flag("routes") == raw_before  # the generation moves only when the set does
        return
    after = flags.read_routes(m)
    assert (after.generation, after.prefixes, after.down, after.updated_s) == (generation, stored, stored_down, 50.0)


HOSTILE_DOWN = [  # (stored "down" value, read back)
    ("kernel-routes: OSError: [Errno 105]", "kernel-routes: OSError: [Errno 105]"),
    (17, ""),
    (None, ""),
    (["a"], ""),
    ("x" * 100_000, "x" * 1000),
    ("é\u2028", "é\u2028"),
]


@pytest.mark.parametrize("stored,read", HOSTILE_DOWN)
def test_routes_down_reads_as_a_bounded_string(stored, read):
    import json

    m = Mem()
    m.set_flag("routes", json.dumps({"generation": 2, "prefixes": ["10.0.0.0/8"], "updated_s": 1.0, "down": stored}))
    got = flags.read_routes(m)
    assert got.down == read and got.prefixes == ("10.0.0.0/8",) and got.generation == 2
