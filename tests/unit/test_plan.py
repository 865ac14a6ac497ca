"""Fill planning (fill/plan.py): rendezvous placement, copy counts, choice, the plan.

Pure: no I/O, no clock; `now_s` is passed in.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from fill.manifest import Manifest, ManifestFile, SiteAppliance
from oca.store.layout import StoreRoom
from fill.plan import (
    CopyPolicy,
    Held,
    by_popularity,
    choose,
    holders_with,
    hrw_score,
    DeleteBudget,
    place,
    placement,
    plan_fill,
    rank_appliances,
    site_of,
)

N_IDS = 20_000
IDS = tuple(f"title-{i:05d}.1080p.mp4" for i in range(N_IDS))
SUM_A = "a" * 32
SUM_B = "b" * 32
T0 = 1_795_677_000.0  # a fixed "now" (unix seconds)
GRACE_S = 3 * 86400.0


def mf(cid: str, size: int = 1, pop: float = 0.0, checksum: str = SUM_A) -> ManifestFile:
    return ManifestFile(cid, size, checksum, 0, float(pop), (f"https://origin.example/{cid}",))


def manifest(files, sites=None) -> Manifest:
    return Manifest(1, tuple(files), dict(sites or {}))


def appliances(n: int, prefix: str = "oca-") -> list[SiteAppliance]:
    return [SiteAppliance(f"{prefix}{i}", f"http://10.0.0.{i + 1}", 1.0) for i in range(n)]


def held_of(*files: ManifestFile, checksum: str | None = None) -> dict[str, Held]:
    return {f.content_id: Held(f.content_id, f.size, checksum or f.checksum, f.popularity) for f in files}


# --- placement: weighted rendezvous hashing -------------------------------------------


def top_one(site) -> dict[str, str]:
    return {cid: rank_appliances(cid, site)[0] for cid in IDS}


@pytest.mark.parametrize("n", [5, 9])
def test_join_moves_about_one_nth_and_only_to_the_newcomer(n):
    before = top_one(appliances(n))
    grown = appliances(n + 1)
    after = top_one(grown)
    moved = [cid for cid in IDS if before[cid] != after[cid]]
    share = len(moved) / N_IDS
    n_after = n + 1
    assert 0.8 / n_after <= share <= 1.2 / n_after
    assert {after[cid] for cid in moved} == {grown[-1].appliance_id}


@pytest.mark.parametrize("n", [6, 10])
def test_leave_moves_about_one_nth_and_only_from_the_departed(n):
    full = appliances(n)
    before = top_one(full)
    gone = full[2]
    after = top_one([a for a in full if a is not gone])
    moved = [cid for cid in IDS if before[cid] != after[cid]]
    share = len(moved) / N_IDS
    assert 0.8 / n <= share <= 1.2 / n
    assert {before[cid] for cid in moved} == {gone.appliance_id}
    # Every file the departed appliance held went somewhere else; nothing else moved.
    assert set(moved) == {cid for cid in IDS if before[cid] == gone.appliance_id}


def test_placement_of_single_copies_is_as_stable_as_rendezvous():
    # Zero popularity means one copy, so `placement` moves exactly as the top choice does.
    m = manifest(mf(cid) for cid in IDS)
    five, six = appliances(5), appliances(6)
    p5, p6 = placement(m, five), placement(m, six)
    assert all(len(p5[cid]) == 1 and len(p6[cid]) == 1 for cid in IDS)
    moved = [cid for cid in IDS if p5[cid] != p6[cid]]
    assert 0.8 / 6 <= len(moved) / N_IDS <= 1.2 / 6
    assert {p6[cid][0] for cid in moved} == {"oca-5"}
    # ...and back again when it leaves.
    assert placement(m, five) == p5


def test_each_appliance_gets_about_its_share_with_equal_weights():
    counts = Counter(top_one(appliances(5)).values())
    assert len(counts) == 5
    for c in counts.values():
        assert 0.9 * N_IDS / 5 <= c <= 1.1 * N_IDS / 5


@pytest.mark.parametrize(
    "weights",
    [
        (2.0, 1.0, 1.0, 1.0),
        (1.0, 2.0),
        (3.0, 1.0, 1.0),
        (0.5, 1.0, 1.0, 1.0, 1.0),
    ],
)
def test_files_are_shared_in_proportion_to_weight(weights):
    site = [SiteAppliance(f"oca-{i}", "", w) for i, w in enumerate(weights)]
    counts = Counter(top_one(site).values())
    total_w = sum(weights)
    for i, w in enumerate(weights):
        expected = N_IDS * w / total_w
        assert 0.9 * expected <= counts[f"oca-{i}"] <= 1.1 * expected


def test_weight_two_gets_about_twice_a_weight_one():
    site = [SiteAppliance("big", "", 2.0), SiteAppliance("s1", "", 1.0), SiteAppliance("s2", "", 1.0)]
    counts = Counter(top_one(site).values())
    ratio = counts["big"] / ((counts["s1"] + counts["s2"]) / 2)
    assert 1.8 <= ratio <= 2.2


def test_score_scales_with_weight_and_stays_finite():
    for cid in IDS[:200]:
        s1 = hrw_score("oca-1", cid, 1.0)
        assert 0 < s1 < math.inf
        assert hrw_score("oca-1", cid, 2.0) == pytest.approx(2 * s1)
        assert hrw_score("oca-1", cid, 1.0) == s1  # deterministic


def test_answer_does_not_depend_on_the_order_appliances_are_listed():
    site = appliances(7) + [SiteAppliance("heavy", "http://10.0.1.1", 2.5)]
    m = manifest(mf(cid, pop=float(N_IDS - i)) for i, cid in enumerate(IDS[:2000]))
    expected = placement(m, site)
    rng = random.Random(1234)
    for _ in range(5):
        shuffled = site[:]
        rng.shuffle(shuffled)
        assert placement(m, shuffled) == expected
        for cid in IDS[:200]:
            assert rank_appliances(cid, shuffled) == rank_appliances(cid, site)


def test_rank_lists_every_appliance_once():
    site = appliances(6)
    for cid in IDS[:100]:
        assert sorted(rank_appliances(cid, site)) == sorted(a.appliance_id for a in site)


def test_by_popularity_breaks_ties_by_id():
    files = [mf("c", pop=1), mf("a", pop=1), mf("b", pop=5), mf("d", pop=0)]
    assert [f.content_id for f in by_popularity(files)] == ["b", "a", "c", "d"]
    assert [f.content_id for f in by_popularity(reversed(files))] == ["b", "a", "c", "d"]


# --- copy counts by popularity --------------------------------------------------------

# The rank rule, which was the default before benchmarks/offload.py tuned CopyPolicy
# (defaults now: copies by load share, order by density; see test_offload.py).
RANK_POLICY = CopyPolicy(head_share=0.05, mid_share=0.20, mid_copies_share=0.5, load_headroom=0.0, order="popularity", extra_copy_weight=1.0)

# (rank, total, n, popularity, copies) with RANK_POLICY:
# head 5% on every appliance, next 20% on ceil(n * 0.5), the rest on one.
COPY_CASES = [
    ("head first", 0, 100, 5, 1.0, 5),
    ("head last", 4, 100, 5, 1.0, 5),
    ("mid first", 5, 100, 5, 1.0, 3),
    ("mid last", 24, 100, 5, 1.0, 3),
    ("tail first", 25, 100, 5, 1.0, 1),
    ("tail last", 99, 100, 5, 1.0, 1),
    ("mid of 4 is 2", 10, 100, 4, 1.0, 2),
    ("mid of 3 rounds up", 10, 100, 3, 1.0, 2),
    ("mid of 2 is 1", 10, 100, 2, 1.0, 1),
    ("head of 10", 0, 1000, 10, 9.0, 10),
    ("zero popularity head", 0, 100, 5, 0.0, 1),
    ("zero popularity mid", 10, 100, 5, 0.0, 1),
    ("one appliance head", 0, 100, 1, 1.0, 1),
    ("one appliance mid", 10, 100, 1, 1.0, 1),
    ("empty catalogue", 0, 0, 5, 1.0, 1),
]


@pytest.mark.parametrize("rank,total,n,pop,copies", [c[1:] for c in COPY_CASES], ids=[c[0] for c in COPY_CASES])
def test_copy_counts(rank, total, n, pop, copies):
    assert RANK_POLICY.copies(rank, total, n, pop) == copies


@pytest.mark.parametrize(
    "policy,n,copies",
    [
        (CopyPolicy(head_share=0.05, mid_share=0.20, mid_copies_share=1.0), 6, 6),
        (CopyPolicy(head_share=0.05, mid_share=0.20, mid_copies_share=0.01), 6, 1),
        (CopyPolicy(head_share=0.05, mid_share=0.20, mid_copies_share=0.34), 6, 3),
    ],
)
def test_mid_copies_share_is_bounded_by_one_and_n(policy, n, copies):
    assert policy.copies(10, 100, n, 1.0) == copies


def test_popular_files_are_on_more_appliances_than_tail_files():
    site = appliances(6)
    files = [mf(f"f{i:03d}", pop=float(1000 - i)) for i in range(100)] + [mf("unwatched", pop=0.0)]
    p = placement(manifest(files), site, RANK_POLICY)
    ordered = by_popularity(files)
    counts = [len(p[f.content_id]) for f in ordered]
    assert counts == sorted(counts, reverse=True)  # never fewer copies for a more popular file
    total = len(files)
    for rank, f in enumerate(ordered):
        holders = p[f.content_id]
        assert len(holders) == RANK_POLICY.copies(rank, total, 6, f.popularity)
        # The copies go to the best-ranked appliances, so joins/leaves stay stable.
        assert list(holders) == rank_appliances(f.content_id, site)[: len(holders)]
    assert len(p["f000"]) == 6
    assert len(p["f010"]) == 3
    assert len(p["f099"]) == 1
    assert len(p["unwatched"]) == 1


# --- choice under capacity ------------------------------------------------------------

# (capacity, files as (id, size, popularity), chosen ids in order)
CHOOSE_CASES = [
    ("all fit", 100, [("a", 10, 3), ("b", 20, 2), ("c", 30, 1)], ["a", "b", "c"]),
    ("exact fit", 60, [("a", 10, 3), ("b", 20, 2), ("c", 30, 1)], ["a", "b", "c"]),
    ("last dropped", 59, [("a", 10, 3), ("b", 20, 2), ("c", 30, 1)], ["a", "b"]),
    ("skip and continue", 10, [("a", 5, 10), ("b", 8, 9), ("c", 3, 8), ("d", 2, 7)], ["a", "c", "d"]),
    ("too big first is skipped", 10, [("huge", 11, 99), ("a", 4, 2), ("b", 6, 1)], ["a", "b"]),
    ("popularity not input order", 10, [("low", 10, 1), ("high", 10, 2)], ["high"]),
    ("ties by id", 10, [("b", 10, 5), ("a", 10, 5)], ["a"]),
    ("zero capacity keeps empty files", 0, [("a", 1, 2), ("empty", 0, 1)], ["empty"]),
    ("nothing", 100, [], []),
]


@pytest.mark.parametrize("capacity,files,chosen", [c[1:] for c in CHOOSE_CASES], ids=[c[0] for c in CHOOSE_CASES])
def test_choose(capacity, files, chosen):
    got = choose([mf(cid, size, pop) for cid, size, pop in files], capacity)
    assert [f.content_id for f in got] == chosen
    assert sum(f.size for f in got) <= capacity


def test_chosen_bytes_never_exceed_capacity_and_the_most_popular_that_fits_is_kept():
    rng = random.Random(7)
    for _ in range(200):
        files = [mf(f"f{i}", rng.randint(0, 1000), rng.choice([0, 1, 2, 5, 10, 1000])) for i in range(rng.randint(0, 40))]
        capacity = rng.randint(0, 10_000)
        got = choose(files, capacity)
        assert sum(f.size for f in got) <= capacity
        assert got == [f for f in by_popularity(files) if f in got]  # popularity order
        # Greedy: any file left out did not fit beside the more popular ones chosen before it.
        chosen_ids = {f.content_id for f in got}
        used = 0
        for f in by_popularity(files):
            if f.content_id in chosen_ids:
                used += f.size
            else:
                assert used + f.size > capacity


# --- site membership ------------------------------------------------------------------

SITE_A = (SiteAppliance("oca-1", "http://10.0.0.1", 1.0), SiteAppliance("oca-2", "http://10.0.0.2", 1.0))


@pytest.mark.parametrize(
    "sites,me,my_site,expected",
    [
        ({}, "oca-1", "site-a", (SiteAppliance("oca-1", "", 1.0),)),
        ({"site-a": SITE_A}, "oca-1", "site-a", SITE_A),
        ({"site-a": SITE_A}, "oca-9", "site-a", (SiteAppliance("oca-9", "", 1.0),)),
        ({"site-a": SITE_A}, "oca-1", "site-b", (SiteAppliance("oca-1", "", 1.0),)),
        ({"site-a": SITE_A}, "oca-1", "", (SiteAppliance("oca-1", "", 1.0),)),
    ],
    ids=["no site list", "member", "not in its site's list", "site not listed", "no site name"],
)
def test_site_of(sites, me, my_site, expected):
    assert site_of(manifest([], sites), me, my_site) == expected


# --- the plan ------------------------------------------------------------------------


def test_site_of_one_places_everything_here_and_adds_most_popular_first():
    files = [mf("mid", 10, 2.0), mf("top", 10, 3.0), mf("low", 10, 1.0), mf("cold", 10, 0.0)]
    plan = plan_fill(manifest(files), "oca-1", "site-a", {}, 1000, T0, GRACE_S)
    assert [f.content_id for f in plan.adds] == ["top", "mid", "low", "cold"]
    assert plan.site_size == 1
    assert plan.placed_here == 4
    assert plan.add_bytes == plan.chosen_bytes == 40
    assert plan.capacity_bytes == 1000
    assert plan.held_bytes == 0
    assert plan.delete_now == plan.delete_if_needed == plan.keep == ()
    assert plan.delete_share == 0.0


def test_appliance_missing_from_its_site_list_is_a_site_of_one():
    files = [mf(cid, 1, 1.0) for cid in IDS[:300]]
    m = manifest(files, {"site-a": tuple(appliances(4))})
    outsider = plan_fill(m, "oca-99", "site-a", {}, 10**9, T0, GRACE_S)
    assert outsider.site_size == 1
    assert outsider.placed_here == 300
    member = plan_fill(m, "oca-1", "site-a", {}, 10**9, T0, GRACE_S)
    assert member.site_size == 4
    assert member.placed_here < 300
    # It adds exactly what placement puts on it.
    p = placement(m, appliances(4))
    assert {f.content_id for f in member.adds} == {cid for cid, holders in p.items() if "oca-1" in holders}


def test_held_files_not_in_the_manifest_are_deleted_at_once():
    files = [mf("keep-me", 10, 5.0)]
    held = held_of(mf("keep-me", 10, 5.0), mf("gone-1", 30), mf("gone-0", 20))
    plan = plan_fill(manifest(files), "oca-1", "s", held, 1000, T0, GRACE_S)
    assert plan.delete_now == ("gone-0", "gone-1")
    assert plan.delete_now_bytes == 50
    assert plan.keep == ("keep-me",)
    assert plan.adds == ()
    assert plan.delete_if_needed == ()
    assert plan.held_bytes == 60


def unchosen_setup():
    # Capacity 30 holds the three most popular; four less popular held files are unchosen.
    files = [mf(f"p{p}", 10, float(p)) for p in (7, 6, 5, 4, 3, 2, 1)]
    held = held_of(*(f for f in files if f.content_id in {"p7", "p4", "p3", "p2", "p1"}))
    return manifest(files), held


def test_unchosen_but_listed_are_deleted_only_if_needed_least_popular_first():
    m, held = unchosen_setup()
    plan = plan_fill(m, "oca-1", "s", held, 30, T0, GRACE_S)
    assert [f.content_id for f in plan.adds] == ["p6", "p5"]
    assert plan.keep == ("p7",)
    assert plan.delete_now == ()
    assert plan.delete_if_needed == ("p1", "p2", "p3", "p4")
    assert dict(plan.unchosen_since) == {c: T0 for c in ("p1", "p2", "p3", "p4")}
    assert plan.chosen_bytes == 30
    assert plan.delete_share == 0.0


def test_unchosen_since_is_carried_and_the_grace_period_moves_files_to_delete_now():
    m, held = unchosen_setup()
    since = {"p1": T0 - GRACE_S, "p2": T0 - GRACE_S + 1, "p3": T0 - 10 * GRACE_S, "p7": T0 - 5}
    plan = plan_fill(m, "oca-1", "s", held, 30, T0, GRACE_S, since)
    # p1 reached the grace period exactly (>=), p3 long ago; p2 one second short.
    assert plan.delete_now == ("p1", "p3")
    assert plan.delete_if_needed == ("p2", "p4")
    assert dict(plan.unchosen_since) == {"p2": T0 - GRACE_S + 1, "p4": T0}
    # p7 is chosen again, so its old mark is dropped.
    assert "p7" not in plan.unchosen_since
    assert plan.delete_now_bytes == 20


def test_grace_period_runs_out_across_successive_plans():
    m, held = unchosen_setup()
    first = plan_fill(m, "oca-1", "s", held, 30, T0, GRACE_S)
    later = plan_fill(m, "oca-1", "s", held, 30, T0 + GRACE_S - 1, GRACE_S, first.unchosen_since)
    assert later.delete_now == ()
    assert later.unchosen_since == first.unchosen_since
    last = plan_fill(m, "oca-1", "s", held, 30, T0 + GRACE_S, GRACE_S, later.unchosen_since)
    assert last.delete_now == ("p1", "p2", "p3", "p4")
    assert last.delete_if_needed == ()
    assert dict(last.unchosen_since) == {}


def test_zero_grace_deletes_unchosen_at_once():
    m, held = unchosen_setup()
    plan = plan_fill(m, "oca-1", "s", held, 30, T0, 0.0)
    assert plan.delete_now == ("p1", "p2", "p3", "p4")
    assert plan.delete_if_needed == ()


def test_a_held_file_with_a_different_checksum_is_an_addition():
    files = [mf("changed", 10, 2.0, SUM_B), mf("same", 10, 1.0, SUM_A)]
    held = {"changed": Held("changed", 10, SUM_A, 2.0), "same": Held("same", 10, SUM_A, 1.0)}
    plan = plan_fill(manifest(files), "oca-1", "s", held, 100, T0, GRACE_S)
    assert [f.content_id for f in plan.adds] == ["changed"]
    assert plan.adds[0].checksum == SUM_B
    assert plan.add_bytes == 10
    assert "same" in plan.keep
    assert "changed" not in plan.delete_now + plan.delete_if_needed


def test_plan_adds_follow_popularity_across_a_site():
    files = [mf(cid, 1, float(i % 97)) for i, cid in enumerate(IDS[:3000])]
    m = manifest(files, {"site-a": tuple(appliances(5))})
    plan = plan_fill(m, "oca-3", "site-a", {}, 10**9, T0, GRACE_S, policy=RANK_POLICY)
    pops = [f.popularity for f in plan.adds]
    assert pops == sorted(pops, reverse=True)
    # The head is on every appliance, so on this one.
    head = by_popularity(files)[: int(0.05 * 3000)]
    assert {f.content_id for f in head} <= {f.content_id for f in plan.adds}


# delete_share: the larger of the byte share and the count share of delete_now.
@pytest.mark.parametrize(
    "held_sizes,listed,share",
    [
        ({"big": 90, "small": 10}, {"small"}, 0.9),  # by bytes
        ({"big": 1000, **{f"s{i}": 1 for i in range(9)}}, {"big"}, 0.9),  # by count
        ({"a": 50, "b": 50}, {"a", "b"}, 0.0),
        ({"a": 50, "b": 50}, set(), 1.0),
        ({}, set(), 0.0),
        # Zero-byte files: the count still says all of them go.
        ({"e1": 0, "e2": 0}, set(), 1.0),
    ],
    ids=["by bytes", "by count", "nothing deleted", "everything deleted", "nothing held", "zero-byte files"],
)
def test_delete_share(held_sizes, listed, share):
    files = [mf(cid, size, 1.0) for cid, size in held_sizes.items() if cid in listed]
    held = {cid: Held(cid, size, SUM_A) for cid, size in held_sizes.items()}
    plan = plan_fill(manifest(files), "oca-1", "s", held, 10**6, T0, GRACE_S)
    assert plan.delete_share == pytest.approx(share)


# --- making room, peers --------------------------------------------------------------

def room(uuid: str, free: int, reserve: int = 0, working: bool = True) -> StoreRoom:
    return StoreRoom(uuid, working, free, reserve)


UNLIMITED = DeleteBudget(None, None)
# Held files: id -> (store uuid, size). "a".."c" on store s1, "d" on s2.
HELD_AT = {"a": ("s1", 10), "b": ("s1", 20), "c": ("s1", 30), "d": ("s2", 25)}

# (case, need, rooms, claimed, candidates, budget, only, expected store, expected evictions, words in the reason)
PLACE_CASES = [
    ("fits without deleting: most room wins", 10, [room("s1", 50), room("s2", 80)], {}, ["a"], UNLIMITED, None, "s2", (), ""),
    ("ties go to the lowest uuid", 10, [room("s2", 50), room("s1", 50)], {}, [], UNLIMITED, None, "s1", (), ""),
    ("the reserve is never used", 45, [room("s1", 50, reserve=10)], {}, [], UNLIMITED, None, None, (), "no store has room"),
    ("downloads in progress claim room", 40, [room("s1", 50), room("s2", 45)], {"s1": 20, "s2": 10}, [], UNLIMITED, None,
     None, (), "no store has room"),
    ("claimed room on one store, the other fits", 40, [room("s1", 50), room("s2", 45)], {"s1": 20}, [], UNLIMITED, None, "s2", (), ""),
    ("a failed store is not used", 10, [room("s1", 50, working=False)], {}, ["a"], UNLIMITED, None, None, (), "no working store"),
    ("evictions in the candidates' order", 35, [room("s1", 10)], {}, ["a", "b", "c"], UNLIMITED, None, "s1", ("a", "b"), ""),
    ("order respected", 35, [room("s1", 10)], {}, ["c", "a"], UNLIMITED, None, "s1", ("c",), ""),
    ("only files on that store free its room", 30, [room("s1", 0), room("s2", 10)], {}, ["d", "a"], UNLIMITED, None,
     "s2", ("d",), ""),
    ("fewest deletions wins", 30, [room("s1", 0), room("s2", 10)], {}, ["a", "b", "d"], UNLIMITED, None, "s2", ("d",), ""),
    ("impossible even after every candidate", 100, [room("s1", 10)], {}, ["a", "b", "c"], UNLIMITED, None, None, (),
     "even after deleting every file"),
    ("unknown candidates free nothing", 15, [room("s1", 10)], {}, ["zz"], UNLIMITED, None, None, (), "even after"),
    ("the deletion budget by count", 35, [room("s1", 10)], {}, ["a", "b"], DeleteBudget(1, 10**9), None, None, (),
     "deletion budget"),
    ("the deletion budget by bytes", 35, [room("s1", 10)], {}, ["a", "b"], DeleteBudget(5, 29), None, None, (), "deletion budget"),
    ("within the budget exactly", 35, [room("s1", 10)], {}, ["a", "b"], DeleteBudget(2, 30), None, "s1", ("a", "b"), ""),
    ("a spent budget still places what fits", 5, [room("s1", 10)], {}, ["a"], DeleteBudget(0, 0), None, "s1", (), ""),
    ("only: a resumed download's store", 10, [room("s1", 20), room("s2", 80)], {}, [], UNLIMITED, "s1", "s1", (), ""),
    ("only: room made on that store", 30, [room("s1", 5), room("s2", 80)], {}, ["d", "c"], UNLIMITED, "s1", "s1", ("c",), ""),
    ("only: that store failed", 10, [room("s1", 20, working=False)], {}, [], UNLIMITED, "s1", None, (), "not working"),
    ("zero bytes always fit a working store", 0, [room("s1", 0)], {}, [], UNLIMITED, None, "s1", (), ""),
]


@pytest.mark.parametrize("need,rooms,claimed,candidates,budget,only,store,evictions,words",
                         [c[1:] for c in PLACE_CASES], ids=[c[0] for c in PLACE_CASES])
def test_place(need, rooms, claimed, candidates, budget, only, store, evictions, words):
    got = place(need, rooms, claimed, candidates, HELD_AT, budget, only=only)
    assert (got.store_uuid, got.evictions) == (store, evictions)
    assert words in got.reason
    assert (got.reason == "") == (store is not None)


# (case, share, held files, held bytes, unlimited, expected budget)
BUDGET_CASES = [
    ("half of four files", 0.5, 4, 400, False, DeleteBudget(2, 200)),
    ("rounds down", 0.5, 5, 501, False, DeleteBudget(2, 250)),
    ("nothing held", 0.5, 0, 0, False, DeleteBudget(0, 0)),
    ("share 1", 1.0, 3, 30, False, DeleteBudget(3, 30)),
    ("share 0", 0.0, 3, 30, False, DeleteBudget(0, 0)),
    ("--force", 0.5, 4, 400, True, DeleteBudget(None, None)),
    ("float noise does not lose a file", 0.3, 10, 100, False, DeleteBudget(3, 30)),
]


@pytest.mark.parametrize("share,n,nbytes,unlimited,expected", [c[1:] for c in BUDGET_CASES], ids=[c[0] for c in BUDGET_CASES])
def test_delete_budget_of_share(share, n, nbytes, unlimited, expected):
    assert DeleteBudget.of_share(share, n, nbytes, unlimited=unlimited) == expected


def test_delete_budget_is_spent_by_every_deletion():
    b = DeleteBudget(2, 100)
    assert b.allows(2, 100) and not b.allows(3, 1) and not b.allows(1, 101)
    b = b.spend(1, 60)
    assert b == DeleteBudget(1, 40)
    assert b.allows(1, 40) and not b.allows(1, 41)
    assert not b.spend(1, 40).allows(1, 0)
    assert UNLIMITED.spend(5, 10**12).allows(10**6, 10**15)


def test_place_with_the_plans_candidates_removes_least_popular_first():
    m, held = unchosen_setup()
    plan = plan_fill(m, "oca-1", "s", held, 30, T0, GRACE_S)
    held_at = {cid: ("s1", h.size) for cid, h in held.items()}
    got = place(25, [room("s1", 0)], {}, plan.delete_if_needed, held_at, UNLIMITED)
    assert got.evictions == ("p1", "p2", "p3")


def test_holders_with_lists_only_peers_holding_it_in_rendezvous_order():
    site = appliances(6)
    for cid in IDS[:50]:
        order = rank_appliances(cid, site)
        inventories = {a: {cid, "other"} for a in order[::2]}  # every other appliance holds it
        inventories[order[1]] = {"other"}
        me = order[0]  # I hold it too; never listed
        got = holders_with(cid, site, inventories, me)
        assert [a.appliance_id for a in got] == [a for a in order[2::2]]
        assert all(isinstance(a, SiteAppliance) for a in got)
        assert me not in [a.appliance_id for a in got]


@pytest.mark.parametrize(
    "inventories,expected",
    [
        ({}, []),
        ({"oca-1": {"x"}}, []),  # only me
        ({"oca-2": {"y"}}, []),  # a peer without it
        ({"oca-2": {"x"}, "oca-3": {"x"}, "ghost": {"x"}}, ["oca-2", "oca-3"]),  # ghost is not in the site
    ],
)
def test_holders_with_cases(inventories, expected):
    site = [SiteAppliance(f"oca-{i}", "", 1.0) for i in (1, 2, 3)]
    got = [a.appliance_id for a in holders_with("x", site, inventories, "oca-1")]
    assert sorted(got) == expected
    assert got == [a for a in rank_appliances("x", site) if a in expected]
