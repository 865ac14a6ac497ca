"""The steering decision (steering/ranking.py): tables of cases, one rule each.

Pure: `decide` gets prefix matches, the registry and each appliance's live
state as values. Matches are real `PrefixEntry` values from a real
`PrefixTable`, so the tags and the longest-first order are what the
service passes.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter

import pytest

from oca.rendezvous import hrw_score
from steering.lpm import PrefixTable
from steering.ranking import BGP, COVERAGE_ZONE, FALLBACK, NO_CANDIDATES, Appliance, Live, decide

CONTENT = "title-00042.1080p.mp4"
ALL = frozenset({CONTENT, "other.mp4"})

# Site A: a1, a2 embedded, a3 at an exchange. Site B: b1 embedded, b2 ixp. Site C: c1, c2.
REGISTRY = (
    Appliance("a1", "http://10.0.0.1", "A"),
    Appliance("a2", "http://10.0.0.2", "A"),
    Appliance("a3", "http://10.0.0.3", "A", "ixp"),
    Appliance("b1", "http://10.0.1.1", "B"),
    Appliance("b2", "http://10.0.1.2", "B", "ixp"),
    Appliance("c1", "http://10.0.2.1", "C"),
    Appliance("c2", "http://10.0.2.2", "C"),
)
IDS = tuple(a.appliance_id for a in REGISTRY)
CLIENT = "198.51.100.7"


def live(*, down=(), overloaded=(), lacking=(), holds=ALL) -> dict[str, Live]:
    """Every appliance up and holding `holds`, except as named."""
    return {aid: Live(aid not in down, aid in overloaded, frozenset() if aid in lacking else holds) for aid in IDS}


def matches_for(routes=(), zones=(), client=CLIENT):
    """Real matches: `routes` are (cidr, appliance id), `zones` (cidr, site)."""
    return _matches(tuple(routes), tuple(zones), client)


@functools.lru_cache(maxsize=None)
def _matches(routes: tuple, zones: tuple, client: str):
    # A table costs ~0.1 s to build (its 2^24-slot IPv4 array); the cases reuse a few.
    items = [(cidr, ("route", aid)) for cidr, aid in routes] + [(cidr, ("cz", site)) for cidr, site in zones]
    addr = ipaddress.ip_address(client)
    return PrefixTable.build(items).matches(addr)


def order(d) -> list[str]:
    return [p.appliance.appliance_id for p in d.picks]


def hrw_order(ids, content=CONTENT) -> list[str]:
    by_id = {a.appliance_id: a for a in REGISTRY}
    return sorted(ids, key=lambda i: (-hrw_score(i, content, by_id[i].weight), i))


def run(routes=(), zones=(), *, lv=None, max_urls=8, fallback=(), registry=REGISTRY, content=CONTENT):
    return decide(content, matches_for(routes, zones), registry, lv if lv is not None else live(), max_urls=max_urls, fallback_sites=fallback)


# ---------------------------------------------------------------- sort keys, one at a time

SORT_CASES = [
    # (name, routes, zones, live kwargs, expected first ids in order)
    ("longest prefix first", [("198.51.100.0/24", "b1"), ("198.51.0.0/16", "a1")], [], {}, ["b1", "a1"]),
    ("longest prefix beats tier", [("198.51.100.0/24", "b2"), ("198.51.0.0/16", "a1")], [], {}, ["b2", "a1"]),
    ("longest prefix beats overload", [("198.51.100.0/24", "b1"), ("198.51.0.0/16", "a1")], [], {"overloaded": ("b1",)}, ["b1", "a1"]),
    ("a /32 host route beats its /24", [("198.51.100.7/32", "a2"), ("198.51.100.0/24", "a1")], [], {}, ["a2", "a1"]),
    ("embedded before ixp", [("198.51.100.0/24", "a3"), ("198.51.100.0/24", "b1")], [], {}, ["b1", "a3"]),
    ("embedded before ixp beats overload", [("198.51.100.0/24", "a3"), ("198.51.100.0/24", "b1")], [], {"overloaded": ("b1",)}, ["b1", "a3"]),
    ("not overloaded before overloaded", [("198.51.100.0/24", "a1"), ("198.51.100.0/24", "b1")], [], {"overloaded": ("a1",)}, ["b1", "a1"]),
    ("not overloaded before overloaded (other way)", [("198.51.100.0/24", "a1"), ("198.51.100.0/24", "b1")], [], {"overloaded": ("b1",)}, ["a1", "b1"]),
]


@pytest.mark.parametrize("name,routes,zones,lv,expected", SORT_CASES, ids=[c[0] for c in SORT_CASES])
def test_sort_keys(name, routes, zones, lv, expected):
    d = run(routes, zones, lv=live(**lv))
    assert order(d)[: len(expected)] == expected


def test_equal_matches_follow_rendezvous_order():
    """Same prefix, tier and load: the weighted rendezvous order of the content id."""
    zone = [("198.51.0.0/16", "A"), ("198.51.0.0/16", "B"), ("198.51.0.0/16", "C")]
    embedded = ["a1", "a2", "b1", "c1", "c2"]
    seen_first = Counter()
    for i in range(300):
        content = f"title-{i:05d}.mp4"
        lv = live(holds=frozenset({content}))
        d = decide(content, matches_for(zones=zone), REGISTRY, lv, max_urls=8, fallback_sites=())
        ids = order(d)
        assert ids[:5] == hrw_order(embedded, content)  # embedded ones, by rendezvous score
        assert ids[5:] == hrw_order(["a3", "b2"], content)  # then the ixp ones, by rendezvous score
        seen_first[ids[0]] += 1
    assert set(seen_first) == set(embedded)  # every embedded appliance wins some files


def test_rendezvous_is_stable_across_calls_and_registry_order():
    zone = [("198.51.0.0/16", "A"), ("198.51.0.0/16", "B")]
    for i in range(100):
        content = f"f{i}"
        lv = live(holds=frozenset({content}))
        first = decide(content, matches_for(zones=zone), REGISTRY, lv, max_urls=8, fallback_sites=())
        again = decide(content, matches_for(zones=zone), tuple(reversed(REGISTRY)), lv, max_urls=8, fallback_sites=())
        assert order(first) == order(again)


def test_rendezvous_moves_only_what_the_leaving_appliance_won():
    zone = [("198.51.0.0/16", "A"), ("198.51.0.0/16", "B"), ("198.51.0.0/16", "C")]
    moved = 0
    for i in range(400):
        content = f"g{i}"
        before = order(decide(content, matches_for(zones=zone), REGISTRY, live(holds=frozenset({content})), max_urls=1, fallback_sites=()))[0]
        after = order(decide(content, matches_for(zones=zone), REGISTRY, live(down=("c1",), holds=frozenset({content})), max_urls=1, fallback_sites=()))[0]
        if before != "c1":
            assert after == before, content
        else:
            moved += 1
            assert after != "c1"
    assert moved > 0


def test_weight_shifts_the_rendezvous_share():
    zone = [("198.51.0.0/16", "A")]
    registry = (Appliance("a1", "http://x1", "A", weight=3.0), Appliance("a2", "http://x2", "A", weight=1.0))
    wins = Counter()
    for i in range(2000):
        content = f"w{i}"
        lv = {"a1": Live(True, False, frozenset({content})), "a2": Live(True, False, frozenset({content}))}
        wins[order(decide(content, matches_for(zones=zone), registry, lv, max_urls=1, fallback_sites=()))[0]] += 1
    assert 2.4 < wins["a1"] / wins["a2"] < 3.8  # about 3 : 1


def test_route_wins_a_tie_with_a_zone_of_the_same_length():
    d = run([("198.51.100.0/24", "a1")], [("198.51.100.0/24", "A")])
    assert d.result == BGP
    first = d.picks[0]
    assert first.appliance.appliance_id == "a1" and first.kind == "route" and first.prefix == "198.51.100.0/24"
    # a2 and a3 come by the zone only
    assert {p.appliance.appliance_id: p.kind for p in d.picks if p.appliance.site == "A"} == {"a1": "route", "a2": "cz", "a3": "cz"}


def test_a_longer_zone_beats_a_shorter_route():
    d = run([("198.51.0.0/16", "a1")], [("198.51.100.0/24", "B")])
    assert d.result == COVERAGE_ZONE
    assert order(d)[:2] == ["b1", "b2"]
    assert d.prefix == "198.51.100.0/24"


def test_each_appliance_takes_its_longest_match():
    d = run([("198.51.100.0/24", "a1"), ("198.51.0.0/16", "a1")], [("198.0.0.0/8", "A")])
    pick = {p.appliance.appliance_id: p for p in d.picks}
    assert pick["a1"].prefix == "198.51.100.0/24" and pick["a1"].kind == "route"
    assert pick["a2"].prefix == "198.0.0.0/8" and pick["a2"].kind == "cz"


def test_routes_of_appliances_not_in_the_registry_are_ignored():
    d = run([("198.51.100.0/24", "gone"), ("198.51.0.0/16", "b1")])
    assert order(d)[0] == "b1"
    assert d.result == BGP and d.prefix == "198.51.0.0/16"


# ---------------------------------------------------------------- second site, fallback, limits


def test_second_site_added_when_the_matches_cover_one_site():
    d = run([("198.51.100.0/24", "a1")], fallback=())
    ids = order(d)
    assert ids[0] == "a1"
    assert len(ids) == 2, "one appliance of one other site, no more"
    other = d.picks[1]
    assert other.appliance.site != "A" and other.kind == "fallback" and other.prefix is None
    # the best of the others: embedded first, then rendezvous
    assert other.appliance.appliance_id == hrw_order(["b1", "c1", "c2"])[0]


def test_second_site_comes_before_the_fallback_sites():
    d = run([("198.51.100.0/24", "a1")], fallback=("C",))
    ids = order(d)
    assert ids[0] == "a1"
    second = hrw_order(["b1", "c1", "c2"])[0]
    assert ids[1] == second
    assert ids[2:] == [i for i in hrw_order(["c1", "c2"]) if i != second]


def test_no_second_site_when_two_sites_matched():
    d = run([("198.51.100.0/24", "a1"), ("198.51.0.0/16", "b1")], fallback=())
    assert order(d) == ["a1", "b1"]


def test_no_second_site_when_the_registry_has_one_site():
    registry = REGISTRY[:3]
    d = run([("198.51.100.0/24", "a1")], registry=registry)
    assert order(d) == ["a1"]


def test_second_site_skips_appliances_that_cannot_serve():
    lv = live(down=("b1",), lacking=("c1", "c2"))
    d = run([("198.51.100.0/24", "a1")], lv=lv)
    assert order(d) == ["a1", "b2"]  # b1 down, c1/c2 lack the file: b2 (ixp) is the only one


def test_second_site_keeps_a_place_when_one_site_fills_max_urls():
    """Site A alone has more matched appliances than max_urls: the last place goes to another site."""
    d = run([], [("198.51.100.0/24", "A")], max_urls=2)
    sites = [p.appliance.site for p in d.picks]
    assert len(d.picks) == 2
    assert sites[0] == "A" and sites[1] != "A"
    assert d.result == COVERAGE_ZONE


def test_fallback_sites_in_their_order_after_the_matches():
    d = run([("198.51.100.0/24", "a1"), ("198.51.0.0/16", "b1")], fallback=("C", "B", "A"))
    ids = order(d)
    assert ids[:2] == ["a1", "b1"]
    rest = ids[2:]
    assert rest == hrw_order(["c1", "c2"]) + ["b2"] + hrw_order(["a2"]) + ["a3"]
    assert all(p.kind == "fallback" and p.prefix is None for p in d.picks[2:])


def test_no_match_gives_the_fallback_sites_only():
    d = run([], [], fallback=("B",))
    assert d.result == FALLBACK
    assert order(d) == ["b1", "b2"]  # no second-site rule without a match
    assert d.prefix is None


def test_no_match_and_no_fallback_is_no_candidates():
    d = run([], [], fallback=())
    assert d.result == NO_CANDIDATES and d.picks == () and d.prefix is None


def test_matched_appliances_that_cannot_serve_leave_the_fallback():
    lv = live(down=("a1",), lacking=("a2", "a3"))
    d = run([], [("198.51.100.0/24", "A")], lv=lv, fallback=("C",))
    assert d.result == FALLBACK
    assert order(d) == hrw_order(["c1", "c2"])  # the fallback site only; no second-site rule without a candidate


def test_matched_client_gets_a_holder_elsewhere_when_its_sites_and_fallbacks_lack_the_file():
    # Site A matched but cannot serve, and the fallback site C lacks the file too;
    # b1 holds it, so the answer is b1 rather than a 503.
    lv = live(down=("a1",), lacking=("a2", "a3", "c1", "c2"))
    d = run([], [("198.51.100.0/24", "A")], lv=lv, fallback=("C",))
    assert d.result == FALLBACK
    assert [p.appliance.appliance_id for p in d.picks][0] == "b1"
    assert all(p.appliance.site == "B" for p in d.picks)


def test_nothing_holds_the_file_is_no_candidates():
    d = run([("198.51.100.0/24", "a1")], [("198.51.0.0/16", "B")], lv=live(holds=frozenset({"something-else"})), fallback=("C",))
    assert d.result == NO_CANDIDATES and d.picks == ()


@pytest.mark.parametrize("max_urls", [1, 2, 3, 5, 7])
def test_max_urls_caps_the_list(max_urls):
    d = run([], [("198.51.0.0/16", "A"), ("198.51.0.0/16", "B"), ("198.51.0.0/16", "C")], max_urls=max_urls, fallback=("A", "B", "C"))
    assert len(d.picks) == min(max_urls, len(REGISTRY))
    assert len(set(order(d))) == len(d.picks)  # never the same appliance twice


# ---------------------------------------------------------------- exclusions

EXCLUDED = [
    # (name, live kwargs, appliance never listed)
    ("down", {"down": ("a1",)}, "a1"),
    ("draining (serves=False)", {"down": ("b1",)}, "b1"),
    ("lacks the file", {"lacking": ("a1",)}, "a1"),
    ("lacks the file, fallback site", {"lacking": ("c1",)}, "c1"),
    ("down, fallback site", {"down": ("c2",)}, "c2"),
]


@pytest.mark.parametrize("name,lv,never", EXCLUDED, ids=[c[0] for c in EXCLUDED])
def test_excluded_appliances_are_never_listed(name, lv, never):
    routes = [("198.51.100.0/24", aid) for aid in IDS]
    for fallback in ((), ("A", "B", "C"), ("C",)):
        for max_urls in (1, 3, 8):
            d = run(routes, [("198.51.0.0/16", "A"), ("198.51.0.0/16", "C")], lv=live(**lv), fallback=fallback, max_urls=max_urls)
            assert never not in order(d)


def test_appliance_missing_from_live_is_not_listed():
    lv = live()
    del lv["a1"]  # never polled: no live state at all
    d = run([("198.51.100.0/24", "a1")], lv=lv, fallback=("A",))
    assert "a1" not in order(d)


# ---------------------------------------------------------------- result types

RESULT_CASES = [
    ("route first", [("198.51.100.0/24", "a1")], [], {}, ("A",), BGP, "198.51.100.0/24"),
    ("zone first", [], [("198.51.100.0/24", "A")], {}, (), COVERAGE_ZONE, "198.51.100.0/24"),
    ("longer zone over route", [("198.51.0.0/16", "a1")], [("198.51.100.0/24", "A")], {}, (), COVERAGE_ZONE, "198.51.100.0/24"),
    ("no match, fallback", [], [], {}, ("C",), FALLBACK, None),
    ("match lacks file, fallback", [("198.51.100.0/24", "a1")], [], {"lacking": ("a1",)}, ("C",), FALLBACK, None),
    ("match down, fallback", [("198.51.100.0/24", "a1")], [], {"down": ("a1",)}, ("C",), FALLBACK, None),
    ("nothing", [], [], {}, (), NO_CANDIDATES, None),
    ("all down", [("198.51.100.0/24", "a1")], [], {"down": IDS}, ("A", "B", "C"), NO_CANDIDATES, None),
]


@pytest.mark.parametrize("name,routes,zones,lv,fallback,result,prefix", RESULT_CASES, ids=[c[0] for c in RESULT_CASES])
def test_result_types(name, routes, zones, lv, fallback, result, prefix):
    d = run(routes, zones, lv=live(**lv), fallback=fallback)
    assert d.result == result
    assert d.prefix == prefix


def test_ipv6_client_is_matched_by_ipv6_prefixes():
    items = [("2001:db8:1::/48", ("route", "b1")), ("2001:db8::/32", ("cz", "A")), ("198.51.0.0/16", ("cz", "C"))]
    table = PrefixTable.build(items)
    d = decide(CONTENT, table.matches(ipaddress.ip_address("2001:db8:1::5")), REGISTRY, live(), max_urls=8, fallback_sites=())
    assert order(d)[0] == "b1" and d.result == BGP and d.prefix == "2001:db8:1::/48"
    assert {p.appliance.site for p in d.picks} == {"A", "B"}
