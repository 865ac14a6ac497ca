"""`ranking.decide` with a `RegistryIndex` gives the same answer as the walk over the whole registry.

Pure; random small fleets (seeded) with tiers, weights, overloaded,
draining and down appliances, routes and coverage zones, so every step of
the ranking (second site, fallback sites, the best holder anywhere) is hit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from steering.ranking import Appliance, Live, decide, holder_order, index_registry


@dataclass(frozen=True)
class Entry:
    cidr: str
    length: int
    tags: tuple


def fleet(rng: random.Random):
    registry = []
    for s in range(rng.randint(1, 6)):
        for j in range(rng.randint(1, 5)):
            registry.append(Appliance(f"s{s}a{j}", "", f"s{s}", rng.choice(("embedded", "embedded", "ixp")), rng.choice((1.0, 1.0, 2.0))))
    contents = [f"c{i}" for i in range(12)]
    live = {a.appliance_id: Live(rng.random() < 0.8, rng.random() < 0.2, frozenset(c for c in contents if rng.random() < 0.4))
            for a in registry if rng.random() < 0.95}
    return registry, contents, live


def matches(rng: random.Random, registry):
    out = []
    for length in sorted(rng.sample(range(0, 33), rng.randint(0, 3)), reverse=True):
        tags = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.7:
                tags.append(("route", rng.choice(registry).appliance_id))
            else:
                tags.append(("cz", rng.choice(registry).site))
        out.append(Entry(f"10.0.0.0/{length}", length, tuple(dict.fromkeys(tags))))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_index_gives_the_walks_answer(seed):
    rng = random.Random(seed)
    registry, contents, live = fleet(rng)

    def holders(cid):
        return holder_order(cid, [a for a in registry if a.appliance_id in live and cid in live[a.appliance_id].holds])

    index = index_registry(registry, holders)
    sites = sorted({a.site for a in registry})
    for _ in range(50):
        m = matches(rng, registry)
        cid = rng.choice(contents)
        fallback = rng.sample(sites, rng.randint(0, min(2, len(sites))))
        max_urls = rng.randint(1, 6)
        walked = decide(cid, m, registry, live, max_urls=max_urls, fallback_sites=fallback)
        indexed = decide(cid, m, registry, live, max_urls=max_urls, fallback_sites=fallback, index=index)
        assert indexed == walked, (cid, m, fallback, max_urls)
