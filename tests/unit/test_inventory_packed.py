"""The packed and hashed `/inventory` forms: the appliance's builders (`oca.inventory_wire`) and steering's parser.

Pure: bodies are built and read in memory. A table of good bodies (each
made by the builders the appliance uses, and read back the same as the JSON
form) and a table of hostile ones, each refused with the field named.
"""

from __future__ import annotations

import json
import zlib

import pytest

import numpy as np
import xxhash

from oca.inventory_wire import (HASHED_TYPE, JSON_TYPE, PACKED_TYPE, hashed_full, id_hash, inventory_delta, inventory_full,
                                inventory_unchanged)
from steering.holdings import Catalogue, Holdings
from steering.messages import MessageError, parse_inventory, parse_inventory_answer, parse_inventory_hashed, parse_inventory_packed

LIMIT = 1_000_000


def z(text: str | bytes) -> bytes:
    return zlib.compress(text.encode() if isinstance(text, str) else text)


HEAD_FULL = '{"appliance":"a","generation":7,"kind":"full","count":2}\n'
HEAD_DELTA = '{"appliance":"a","generation":9,"since":7,"kind":"delta"}\n'

GOOD = [
    ("full", inventory_full, ("a", 7, ["b.mp4", "a-1", "Z_9"]), 0),
    ("empty full", inventory_full, ("a", 7, []), 0),
    ("delta", inventory_delta, ("a", 9, 7, ["n1"], ["x1", "x2"]), 7),
    ("empty delta", inventory_delta, ("a", 9, 7, [], []), 7),
    ("paged delta", lambda *a, **k: inventory_delta("a", 9, 7, ["n1"], [], 12, True, **k), (), 7),
    ("unchanged", inventory_unchanged, ("a", 7, 7), 7),
]


@pytest.mark.parametrize("name,build,args,since", GOOD, ids=[g[0] for g in GOOD])
def test_packed_reads_as_the_json_form_does(name, build, args, since):
    packed = build(*args, form="packed")
    plain = build(*args, form="json")
    assert parse_inventory_answer(packed, PACKED_TYPE, since, LIMIT) == parse_inventory(plain, since)
    assert parse_inventory_answer(plain, JSON_TYPE + "; charset=utf-8", since, LIMIT) == parse_inventory(plain, since)


def test_packed_is_smaller_than_json_for_a_large_inventory():
    ids = [f"title-{i:07d}.mp4" for i in range(0, 600_000, 10)]
    assert len(inventory_full("a", 1, ids, "packed")) * 4 < len(inventory_full("a", 1, ids, "json"))


BAD = [
    ("not zlib", b"{}\n", 0, "body: not zlib"),
    ("truncated stream", z(HEAD_FULL + "a\nb\n")[:-3], 0, "body:"),
    ("bytes after the stream", z(HEAD_FULL + "a\nb\n") + b"x", 0, "body: zlib stream"),
    ("bomb", z(b"a" * (LIMIT + 10)), 0, "body: inflates to more than"),
    ("no head line", z('{"kind":"full","generation":1}'), 0, "body: no head line"),
    ("head not json", z("kind=full\n"), 0, "body: not JSON"),
    ("head a list", z("[1]\n"), 0, "body: must be a JSON object"),
    ("bad kind", z('{"kind":"all","generation":1}\n'), 0, "kind:"),
    ("bad generation", z('{"kind":"full","generation":-1}\n'), 0, "generation:"),
    ("generation a string", z('{"kind":"full","generation":"1"}\n'), 0, "generation:"),
    ("last line open", z(HEAD_FULL + "a\nb"), 0, "body: the last line has no newline"),
    ("bad id", z(HEAD_FULL + "a\n../etc\n"), 0, "ids: line 3"),
    ("empty line", z(HEAD_FULL + "a\n\n"), 0, "ids: line 3"),
    ("NUL in id", z(HEAD_FULL + "a\0b\nc\n"), 0, "ids: line 2"),
    ("non-ascii id", z(HEAD_FULL + "a\ncafé\n"), 0, "ids: line 3"),
    ("id of 129 chars", z(HEAD_FULL + "a\n" + "x" * 129 + "\n"), 0, "ids: line 3"),
    ("count disagrees", z(HEAD_FULL + "a\nb\nc\n"), 0, "count: says 2, but 3 ids follow"),
    ("delta line without sign", z(HEAD_DELTA + "+a\nb\n"), 7, "ids: line 3"),
    ("delta removed before added", z(HEAD_DELTA + "-a\n+b\n"), 7, "ids: line 2: lines out of order"),
    ("delta about another generation", z(HEAD_DELTA + "+a\n"), 6, "since: answers about generation 7"),
    ("delta older than asked", z('{"generation":5,"since":7,"kind":"delta"}\n'), 7, "generation: 5 is older"),
    ("unchanged with ids", z('{"generation":7,"since":7,"kind":"unchanged"}\na\n'), 7, "ids: an unchanged answer lists no ids"),
]


@pytest.mark.parametrize("name,body,since,where", BAD, ids=[b[0] for b in BAD])
def test_packed_refuses(name, body, since, where):
    with pytest.raises(MessageError) as exc:
        parse_inventory_packed(body, since, LIMIT)
    assert str(exc.value).startswith(where), str(exc.value)


def test_packed_over_the_id_limit_is_refused():
    body = z('{"kind":"full","generation":1}\n' + "".join(f"i{n}\n" for n in range(11)))
    with pytest.raises(MessageError, match="ids: 11 lines, more than the limit of 10"):
        parse_inventory_packed(body, 0, LIMIT, max_ids=10)


def test_holdings_follow_full_and_delta():
    cat = Catalogue()
    h = Holdings.of(cat, ["a", "b", "c"])
    assert len(h) == 3 and "b" in h and "zz" not in h and sorted(h) == ["a", "b", "c"]
    h2 = h.changed(["d", "e"], ["a", "never-seen"])
    assert sorted(h2) == ["b", "c", "d", "e"] and len(h2) == 4
    assert sorted(h) == ["a", "b", "c"], "a delta makes a new value; the old one is unchanged"
    other = Holdings.of(cat, ["e"])
    assert "e" in other and "b" not in other and len(cat) == 5
    assert sorted(h2.changed(["x"], ["x"])) == ["b", "c", "d", "e"], "removed wins for an id in both"


def test_json_form_is_unchanged():
    doc = json.loads(inventory_delta("a", 9, 7, ["n"], ["o"], 12, False))
    assert doc == {"appliance": "a", "generation": 9, "since": 7, "kind": "delta", "added": ["n"], "removed": ["o"], "latest": 12, "more": False}


# ---------------------------------------------------------------- the hashed form


@pytest.mark.parametrize("name,build,args,since", GOOD, ids=[g[0] for g in GOOD])
def test_hashed_reads_as_the_json_form_does(name, build, args, since):
    """Deltas and unchanged read as the JSON form; a full inventory as the hashes of its ids."""
    plain = parse_inventory(build(*args, form="json"), since)
    hashed = parse_inventory_answer(build(*args, form="hashed"), HASHED_TYPE, since, LIMIT)
    if plain.kind == "full":
        assert hashed.kind == "full" and hashed.generation == plain.generation and hashed.ids == frozenset()
        assert hashed.hashes.tolist() == sorted(xxhash.xxh3_64_intdigest(c.encode()) for c in plain.ids)
    else:
        assert hashed == plain


def test_hashed_full_from_sorted_hashes_is_the_appliance_answer():
    """The simulator builds full answers from precomputed hashes; they equal the appliance's, made from ids."""
    ids = [f"c{i:08x}" for i in range(0, 5000, 7)]
    hashes = np.array(sorted(id_hash(c) for c in ids), dtype="<u8")
    assert hashed_full("a", 3, hashes.tobytes(), len(ids)) == inventory_full("a", 3, ids, "hashed")


def h(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


HASHED_HEAD = b'{"appliance":"a","generation":7,"kind":"full","count":2}\n'
HASHED_BAD = [
    ("no head line", b'{"kind":"full","generation":1}', 0, "body: no head line"),
    ("head not json", b"kind=full\n", 0, "body: not JSON"),
    ("bad kind", b'{"kind":"all","generation":1}\n', 0, "kind:"),
    ("bad generation", b'{"kind":"full","generation":-1}\n' + h(1), 0, "generation:"),
    ("a torn hash", HASHED_HEAD + h(1, 2)[:-1], 0, "hashes: 15 bytes"),
    ("count disagrees", HASHED_HEAD + h(1, 2, 3), 0, "count: says 2, but 3 hashes follow"),
    ("count missing", b'{"kind":"full","generation":1}\n' + h(1), 0, "count: says None"),
    ("count a boolean", b'{"kind":"full","generation":1,"count":true}\n' + h(1), 0, "count: says True"),
    ("not sorted", HASHED_HEAD + h(2, 1), 0, "hashes: not sorted"),
    ("a repeat", HASHED_HEAD + h(5, 5), 0, "hashes: not sorted"),
    ("delta line without sign", b'{"generation":9,"since":7,"kind":"delta"}\n+a\nb\n', 7, "ids: line 3"),
    ("delta about another generation", b'{"generation":9,"since":7,"kind":"delta"}\n+a\n', 6, "since: answers about generation 7"),
    ("delta last line open", b'{"generation":9,"since":7,"kind":"delta"}\n+a', 7, "body: the last line has no newline"),
    ("unchanged with ids", b'{"generation":7,"since":7,"kind":"unchanged"}\na\n', 7, "ids: an unchanged answer lists no ids"),
]


@pytest.mark.parametrize("name,body,since,where", HASHED_BAD, ids=[b[0] for b in HASHED_BAD])
def test_hashed_refuses(name, body, since, where):
    with pytest.raises(MessageError) as exc:
        parse_inventory_hashed(body, since)
    assert str(exc.value).startswith(where), str(exc.value)


def test_hashed_over_the_id_limit_is_refused():
    body = b'{"kind":"full","generation":1,"count":11}\n' + h(*range(1, 12))
    with pytest.raises(MessageError, match="hashes: 11, more than the limit of 10"):
        parse_inventory_hashed(body, 0, max_ids=10)
