"""`fill.inventory.parse_inventory`: a peer's /inventory answer, validated. Pure; a table of hostile cases."""

from __future__ import annotations

import json

import pytest

from fill.errors import FillError, InventoryError
from fill.inventory import parse_inventory

PEER = "oca-2"


def doc(**over) -> bytes:
    d = {"appliance": PEER, "generation": 7, "kind": "full", "count": 2, "ids": ["a.mp4", "b.mp4"]}
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()


def test_a_valid_answer():
    assert parse_inventory(doc(), PEER) == frozenset({"a.mp4", "b.mp4"})
    assert parse_inventory(doc(count=..., kind=...), PEER) == frozenset({"a.mp4", "b.mp4"})
    assert parse_inventory(doc(ids=[], count=0), PEER) == frozenset()
    assert parse_inventory(doc(next=5, limit=10), PEER) == frozenset({"a.mp4", "b.mp4"})  # extra fields ignored


def test_sixty_thousand_ids():
    ids = [f"title-{i:05d}.mp4" for i in range(60_000)]
    assert len(parse_inventory(doc(ids=ids, count=len(ids)), PEER)) == 60_000


# (case, raw answer, words in the error)
CASES = [
    ("not JSON", b"<html>", "inventory is not valid JSON"),
    ("empty", b"", "inventory is not valid JSON"),
    ("not UTF-8", b"\xff\xfe", "not valid JSON"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("a list", b"[]", "inventory: must be a JSON object"),
    ("a number", b"5", "must be a JSON object"),
    ("another peer's answer", doc(appliance="oca-9"), "appliance: 'oca-9' is not the peer asked"),
    ("appliance missing", doc(appliance=...), "appliance: 'None'"),
    ("appliance a number", doc(appliance=2), "appliance:"),
    ("a delta, not a full list", doc(kind="delta"), "kind: must be 'full'"),
    ("kind a number", doc(kind=1), "kind:"),
    ("generation missing", doc(generation=...), "generation: must be a non-negative integer"),
    ("generation negative", doc(generation=-1), "generation:"),
    ("generation float", doc(generation=1.5), "generation:"),
    ("generation bool", doc(generation=True), "generation:"),
    ("generation NaN", json.dumps({"appliance": PEER, "generation": float("nan"), "ids": []}).encode(), "generation:"),
    ("ids missing", doc(ids=...), "ids: must be a list"),
    ("ids an object", doc(ids={"a.mp4": 1}), "ids: must be a list"),
    ("ids a string", doc(ids="a.mp4"), "ids: must be a list"),
    ("an id a number", doc(ids=["a.mp4", 5]), "ids[1]: '5' is not a valid content id"),
    ("an id null", doc(ids=[None]), "ids[0]:"),
    ("an id a list", doc(ids=[["a"]]), "ids[0]:"),
    ("an id with a slash", doc(ids=["../x"]), "ids[0]: '../x'"),
    ("a non-ASCII id", doc(ids=["tïtle"]), "ids[0]: 'tïtle'"),
    ("a huge id", doc(ids=["a" * 10_000]), "ids[0]:"),
    ("count disagrees", doc(count=3), "count: 3 does not match the 2 ids"),
    ("count negative", doc(count=-1), "count:"),
    ("count a string", doc(count="2"), "count:"),
]


@pytest.mark.parametrize("raw,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_answers_are_refused_naming_the_field(raw, words):
    with pytest.raises(InventoryError) as info:
        parse_inventory(raw, PEER)
    assert words in str(info.value)
    assert isinstance(info.value, FillError)
    assert "\n" not in str(info.value)
