"""Rendezvous hashes as arrays (`steering.hrwvec`) equal `xxhash` and `ranking.holder_order`, for every XXH3 length class."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash

from steering.hrwvec import Registry, xxh3_many
from steering.ranking import TIER_ORDER, Appliance, holder_order

ALPHABET = "abcdefXYZ0123456789._-"


@pytest.mark.parametrize("prefix_chars", [1, 6, 21])
def test_xxh3_many_equals_xxhash_for_every_length(prefix_chars):
    rng = random.Random(prefix_chars)
    for total in range(prefix_chars + 2, 260):
        cid = "".join(rng.choice(ALPHABET) for _ in range(total - prefix_chars - 1))
        prefixes = [("".join(rng.choice(ALPHABET) for _ in range(prefix_chars)) + "\0").encode() for _ in range(3)]
        want = [xxhash.xxh3_64_intdigest(p + cid.encode()) for p in prefixes]
        assert xxh3_many(prefixes, cid).tolist() == want, f"input of {total} bytes"


def _fleet(rng: random.Random, n: int, weighted: bool) -> list[Appliance]:
    out = []
    for i in range(n):
        aid = f"a{i:05d}" if i % 5 else f"site-{i}-appliance"  # ids of several lengths
        out.append(Appliance(aid, "", "s", rng.choice(["embedded", "ixp", "other"]), rng.choice([0.5, 1.0, 2.0]) if weighted else 1.0))
    return out


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cid", ["c0011aabb", "z", "a-much-longer-content-id-than-sixteen-bytes.mp4", "x" * 128])
def test_registry_orders_holders_as_the_ranking_does(weighted, cid):
    rng = random.Random(hash((weighted, cid)) & 0xFFFF)
    fleet = _fleet(rng, 3000, weighted)
    reg = Registry([a.appliance_id for a in fleet], [TIER_ORDER.get(a.tier, 2) for a in fleet], [a.weight for a in fleet])
    which = np.array(sorted(rng.sample(range(len(fleet)), 2000)))
    got = [fleet[i] for i in reg.holder_order(which, cid).tolist()]
    assert got == holder_order(cid, [fleet[i] for i in which.tolist()])


def test_no_holders():
    reg = Registry(["a"], [0], [1.0])
    assert reg.holder_order(np.zeros(0, dtype=np.int64), "c").tolist() == []
