"""The offload simulator's accounting (benchmarks/offload.py), checked against hand-computed tiny cases,
and the tuned planner rules it led to (fill/plan.py: copies by load share, density order, first copies first,
predict_popularity).

Pure: no I/O, no clock. The benchmark script is loaded by path.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

from fill.manifest import Manifest, ManifestFile, SiteAppliance
from fill.plan import CopyPolicy, Held, Plan, plan_fill, predict_popularity, rank_appliances

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "offload.py"
_spec = importlib.util.spec_from_file_location("offload_bench", _PATH)
ob = importlib.util.module_from_spec(_spec)
sys.modules["offload_bench"] = ob  # dataclasses look their module up while the class is built
_spec.loader.exec_module(ob)

# Three files and their sizes; a day's requests: a three times, b once, c twice.
SIZES = {"a": 10, "b": 20, "c": 40}
COUNTS = {"a": 3, "b": 1, "c": 2}  # bytes: a 30, b 20, c 80; 130 in all, 6 requests
ONE_HOUR = (1.0,)
TWO_HOURS = (0.5, 0.5)


# --- serving: max-flow from holder sets to appliances ---------------------------------


@pytest.mark.parametrize(
    "groups,caps,hours,served",
    [
        ({1: 100.0}, [30.0], TWO_HOURS, 60.0),  # 50 asked each hour, 30 served each hour
        ({1: 100.0}, [60.0], TWO_HOURS, 100.0),
        # Appliance 0 alone holds 60 of demand, both hold 40: 0 serves 40 of its 60, 1 serves the shared 40.
        ({0b01: 60.0, 0b11: 40.0}, [40.0, 40.0], ONE_HOUR, 80.0),
        # With 70 on appliance 0 everything is served (0 takes its 60, 1 the shared 40).
        ({0b01: 60.0, 0b11: 40.0}, [70.0, 40.0], ONE_HOUR, 100.0),
        # Only shared demand: the two appliances pool their capacity.
        ({0b11: 100.0}, [30.0, 30.0], ONE_HOUR, 60.0),
        # Disjoint holders do not help each other: 1 idles while 0 is saturated.
        ({0b01: 100.0, 0b10: 10.0}, [50.0, 50.0], ONE_HOUR, 60.0),
    ],
)
def test_site_served_is_the_max_flow(groups, caps, hours, served):
    assert ob.site_served(groups, caps, hours) == pytest.approx(served)


def test_site_served_refuses_a_mask_outside_the_site():
    with pytest.raises(ValueError):
        ob.site_served({0b100: 1.0}, [1.0, 1.0], ONE_HOUR)


def test_profile_sums_to_one_and_peaks_in_the_evening():
    assert sum(ob.HOURS) == pytest.approx(1.0)
    assert max(range(24), key=lambda h: ob.HOURS[h]) in (20, 21, 22)


# --- the planned site's day -------------------------------------------------------------


def test_account_site_splits_hits_and_each_kind_of_miss():
    # a held on appliance 0; b wanted by last night's plan but not filled; c neither.
    st = ob.account_site(COUNTS, SIZES, {"a": 1}, {"b"}, [1000.0], ONE_HOUR)
    assert (st.requests, st.bytes) == (6, 130)
    assert (st.hit_requests, st.hit_bytes) == (3, 30)
    assert (st.budget_miss_requests, st.budget_miss_bytes) == (1, 20)
    assert (st.content_miss_requests, st.content_miss_bytes) == (2, 80)
    assert (st.health_miss_requests, st.health_miss_bytes) == (0, 0)
    assert st.byte_offload == pytest.approx(30 / 130)
    assert st.request_offload == pytest.approx(3 / 6)


def test_account_site_health_misses_when_holders_are_saturated():
    # a's 30 bytes: 15 asked in each of two hours, 12 served in each: 24 served, 6 missed;
    # the 3 requests are shed in proportion: 2.4 served, 0.6 missed.
    st = ob.account_site(COUNTS, SIZES, {"a": 1}, set(), [12.0], TWO_HOURS)
    assert st.hit_bytes == pytest.approx(24)
    assert st.health_miss_bytes == pytest.approx(6)
    assert st.hit_requests == pytest.approx(2.4)
    assert st.health_miss_requests == pytest.approx(0.6)
    assert st.content_miss_bytes == 100 and st.budget_miss_bytes == 0
    total = st.hit_bytes + st.content_miss_bytes + st.budget_miss_bytes + st.health_miss_bytes
    assert total == pytest.approx(st.bytes)


def test_account_site_with_copies_pools_the_holders():
    # c on both appliances (80 bytes), a on appliance 0 only (30): caps 50 each in one hour:
    # appliance 0 serves a's 30 and 20 of c, appliance 1 the other 50 of c... 80 + 30 = 110 > 100: 10 missed.
    st = ob.account_site(COUNTS, SIZES, {"a": 0b01, "c": 0b11}, set(), [50.0, 50.0], ONE_HOUR)
    assert st.hit_bytes == pytest.approx(100)
    assert st.health_miss_bytes == pytest.approx(10)
    assert st.content_miss_bytes == 20  # b


# --- the LRU site ----------------------------------------------------------------------


def test_lru_hits_misses_and_evictions_by_hand():
    cache = ob.Lru(60)
    got = [cache.request(cid, SIZES[cid]) for cid in "abcaba"]
    # a miss [a]; b miss [a b]; c miss, evicts a [b c]; a miss, evicts b [c a];
    # b miss, evicts c [a b]; a hit [b a].
    assert got == [False, False, False, False, False, True]
    assert (cache.hits, cache.misses, cache.evictions) == (1, 5, 3)
    assert list(cache.items) == ["b", "a"]
    assert cache.used == 30


def test_lru_never_keeps_a_file_larger_than_itself():
    cache = ob.Lru(30)
    assert cache.request("a", 10) is False
    assert cache.request("c", 40) is False  # too big: fetched for the client, not kept, nothing evicted
    assert (cache.evictions, cache.used, list(cache.items)) == (0, 10, ["a"])
    assert cache.request("a", 10) is True


def test_serve_lru_day_one_appliance():
    caches = [ob.Lru(60)]
    st = ob.serve_lru_day(caches, {"a": 0, "b": 0, "c": 0}, list("abcaba"), SIZES, [1000.0], ONE_HOUR)
    assert (st.requests, st.bytes) == (6, 110)
    assert (st.hit_requests, st.hit_bytes) == (1, 10)
    assert (st.content_miss_requests, st.content_miss_bytes) == (5, 100)
    assert st.health_miss_bytes == 0 and st.budget_miss_bytes == 0
    assert st.request_offload == pytest.approx(1 / 6)


def test_serve_lru_day_routes_each_file_to_one_appliance_and_caps_it():
    # a and c hash to appliance 0, b to 1. Appliance 0: a miss, c miss, a hit, a hit (20 bytes hit);
    # appliance 1: b miss, b hit (20 bytes). Each can serve 5 bytes an hour for two hours: 10 of each 20.
    caches = [ob.Lru(60), ob.Lru(60)]
    route = {"a": 0, "b": 1, "c": 0}
    st = ob.serve_lru_day(caches, route, list("abcaba"), SIZES, [5.0, 5.0], TWO_HOURS)
    assert [c.hits for c in caches] == [2, 1]
    assert st.hit_bytes == pytest.approx(20)
    assert st.health_miss_bytes == pytest.approx(20)
    assert st.hit_requests == pytest.approx(1.5)  # appliance 0: 2 hits, half served; appliance 1: 1 hit, half
    assert st.health_miss_requests == pytest.approx(1.5)
    assert st.content_miss_bytes == 10 + 20 + 40 and st.content_miss_requests == 3


# --- the offline bound -----------------------------------------------------------------


def test_fractional_knapsack_by_hand():
    # Densities: a 3, c 2, b 1. Capacity 45: all of a (10 -> 30), then 35 of c's 40 (-> 70).
    items = [(30.0, 10), (20.0, 20), (80.0, 40)]
    assert ob.fractional_knapsack(items, 45) == pytest.approx(100)
    assert ob.fractional_knapsack(items, 0) == 0
    assert ob.fractional_knapsack(items, 1000) == pytest.approx(130)


@pytest.mark.parametrize(
    "counts,storage,caps,hours,bound",
    [
        (COUNTS, [45], [1000.0], ONE_HOUR, 100.0),  # storage binds: the knapsack above
        (COUNTS, [45], [40.0], TWO_HOURS, 80.0),  # serving binds: 50 an hour asked, 40 served
        # c asked 4 times (160 bytes), 50 an hour per appliance: two copies serve 100.
        ({"c": 4}, [40, 40], [50.0, 50.0], ONE_HOUR, 100.0),
        # Only 60 bytes of storage in all: one copy and half of a second, relaxed: 50 + 25.
        ({"c": 4}, [40, 20], [50.0, 50.0], ONE_HOUR, 75.0),
        # One copy only: one appliance's capacity caps the file.
        ({"c": 4}, [40], [50.0], ONE_HOUR, 50.0),
    ],
)
def test_offline_bound_by_hand(counts, storage, caps, hours, bound):
    assert ob.offline_bound(counts, SIZES, storage, caps, hours) == pytest.approx(bound)


# --- the night ---------------------------------------------------------------------------


def mf(cid: str, size: int, pop: float = 1.0) -> ManifestFile:
    return ManifestFile(cid, size, "0" * 32, 0, float(pop), (f"https://origin.example/{cid}",))


def held(*files: tuple[str, int]) -> dict[str, Held]:
    return {cid: Held(cid, size, "0" * 32, 1.0) for cid, size in files}


def plan_of(adds=(), delete_now=(), if_needed=(), keep=(), held_bytes=0) -> Plan:
    return Plan(
        adds=tuple(adds), delete_now=tuple(delete_now), delete_if_needed=tuple(if_needed), keep=tuple(keep),
        add_bytes=sum(f.size for f in adds), delete_now_bytes=0, chosen_bytes=0, capacity_bytes=0, held_bytes=held_bytes,
    )


def test_night_skips_what_no_longer_fits_the_budget_and_goes_on():
    night = ob.apply_night(plan_of([mf("x", 10), mf("y", 30), mf("z", 5)]), {}, 1000, 20)
    assert set(night.held) == {"x", "z"}  # y (10 + 30 > 20) is skipped, z still fits
    assert (night.filled_bytes, night.added, night.skipped_budget) == (15, 2, 1)


def test_night_lets_the_first_file_exceed_the_budget_then_stops():
    night = ob.apply_night(plan_of([mf("big", 50), mf("small", 1)]), {}, 1000, 20)
    assert set(night.held) == {"big"}
    assert (night.filled_bytes, night.skipped_budget) == (50, 1)


def test_night_without_budget_fills_everything_that_fits():
    night = ob.apply_night(plan_of([mf("x", 10), mf("y", 30)]), {}, 1000, None)
    assert night.filled_bytes == 40 and set(night.held) == {"x", "y"}


def test_night_deletes_then_makes_room_least_valuable_first():
    before = held(("gone", 5), ("old1", 15), ("old2", 15), ("kept", 40), ("k1", 1), ("k2", 1))
    plan = plan_of([mf("new", 20)], delete_now=["gone"], if_needed=["old1", "old2"], keep=["kept", "k1", "k2"], held_bytes=77)
    night = ob.apply_night(plan, before, 72, None)
    # After "gone": 72 used of 72. "new" needs 20: old1 (15) is not enough, old1 + old2 is;
    # three deletions of six files (35 of 77 bytes) fit the night's deletion budget (half).
    assert set(night.held) == {"kept", "k1", "k2", "new"}
    assert (night.deleted, night.added, night.skipped_room) == (3, 1, 0)
    assert before.keys() == {"gone", "old1", "old2", "kept", "k1", "k2"}  # the input is not changed


def test_night_makes_room_only_within_the_deletion_budget():
    before = held(("gone", 5), ("old1", 15), ("old2", 15), ("kept", 10))
    plan = plan_of([mf("new", 20)], delete_now=["gone"], if_needed=["old1", "old2"], keep=["kept"], held_bytes=45)
    night = ob.apply_night(plan, before, 40, None)
    # "gone" spends one of the two deletions half of four files allow; "new" would need two more.
    assert set(night.held) == {"old1", "old2", "kept"}
    assert (night.deleted, night.added, night.skipped_room) == (1, 0, 1)


def test_night_skips_an_add_that_no_room_can_be_made_for():
    night = ob.apply_night(plan_of([mf("new", 50)], keep=["kept"], held_bytes=10), held(("kept", 10)), 40, None)
    assert set(night.held) == {"kept"} and night.skipped_room == 1


def test_night_refuses_a_plan_deleting_more_than_half():
    before = held(("a", 10), ("b", 10), ("c", 10))
    night = ob.apply_night(plan_of([mf("x", 1)], delete_now=["a", "b"], keep=["c"], held_bytes=30), before, 100, None)
    assert night.refused and night.held == before and night.added == 0


# --- prediction ------------------------------------------------------------------------------


def test_predict_mean_uses_only_days_the_file_could_be_watched():
    history = [{"a": 1}, {"a": 3}, {"a": 2, "b": 4}]
    release = {"a": 0, "b": 2, "c": 3}
    got = ob.predict_mean(history, {"a": 10, "b": 20, "c": 40}, release, ["a", "b", "c"], today=3, window=2)
    assert got == {"a": pytest.approx((3 + 2) / 2 * 10), "b": pytest.approx(4 * 20)}  # c: released tomorrow, no history


def test_predict_popularity_is_an_ewma_seeded_with_the_oldest_day():
    assert predict_popularity([10, 20, 40], 0.5) == pytest.approx(27.5)  # 10 -> 15 -> 27.5
    assert predict_popularity([10, 20, 40], 1.0) == 40
    assert predict_popularity([7]) == 7
    assert predict_popularity([]) == 0.0
    with pytest.raises(ValueError):
        predict_popularity([1.0], 0.0)


def test_the_forecast_is_for_released_files_only_and_demand_is_reproducible():
    cat = ob.make_catalogue(5, n_files=80, days=6, zipf=0.8, requests_per_day=300)
    assert len(cat.files) >= 60
    for day in range(6):
        announced = cat.announced_bytes(day)
        released = {cat.files[i].cid for i in cat.available(day)}
        assert set(announced) <= released
        requests = cat.day_requests(day)
        assert len(requests) == 300 and set(requests) <= released
        assert requests == cat.day_requests(day)


# --- a whole tiny run ---------------------------------------------------------------------------


TINY = ob.Config(capacity=0.2, zipf=0.8, appliances=2, files=80, days=3, warmup=2, requests=400)


def test_a_tiny_run_is_reproducible_and_its_books_balance():
    r1 = ob.run(TINY, ob.AFTER, seed=3)
    r2 = ob.run(TINY, ob.AFTER, seed=3)
    assert (r1.ours, r1.lru, r1.bound_bytes, r1.filled) == (r2.ours, r2.lru, r2.bound_bytes, r2.filled)
    assert len(r1.days) == TINY.days
    for d in r1.days:
        o, lru = d["ours"], d["lru"]
        for st in (o, lru):
            parts = st.hit_bytes + st.content_miss_bytes + st.budget_miss_bytes + st.health_miss_bytes
            assert parts == pytest.approx(st.bytes)
            reqs = st.hit_requests + st.content_miss_requests + st.budget_miss_requests + st.health_miss_requests
            assert reqs == pytest.approx(st.requests)
        assert o.requests == lru.requests == TINY.requests and o.bytes == lru.bytes
        # The planned site is one static placement for the day, within the same storage and serving
        # capacity: it can never beat the bound.
        assert o.hit_bytes <= d["bound"] * (1 + 1e-9)
        assert lru.budget_miss_bytes == 0


def test_the_planners_nights_respect_storage_and_budget():
    cat = ob.make_catalogue(4, TINY.files, TINY.warmup + TINY.days, TINY.zipf, TINY.requests)
    demand = [cat.day_requests(d) for d in range(TINY.warmup + TINY.days)]
    site = ob.make_site(TINY, cat)
    pr = ob.run_planner(TINY, ob.AFTER, cat, demand)
    for night, filled in enumerate(pr.filled):
        for b in filled:
            if night > 0:  # the first night is the install fill
                largest = max(f.size for f in cat.files)
                assert b <= site.budget + largest  # only the night's first file may cross the budget
    assert pr.refused == 0


# --- the tuned planner rules (fill/plan.py defaults) ------------------------------------------


@pytest.mark.parametrize(
    "share,n,copies",
    [(0.30, 4, 4), (0.10, 4, 2), (0.0625, 4, 1), (0.07, 4, 2), (0.01, 4, 1), (0.5, 1, 1), (None, 4, 1)],
)
def test_default_copies_follow_the_load_share(share, n, copies):
    # ceil(n * share * 4), between 1 and n; the rank rule is off by default.
    assert CopyPolicy().copies(0, 100, n, 1.0, share) == copies


def test_default_choice_is_by_density():
    files = [mf("big", 100, pop=50.0), mf("small", 10, pop=20.0)]  # 0.5 vs 2 bytes a day per stored byte
    m = Manifest(1, tuple(files), {})
    assert [f.content_id for f in plan_fill(m, "oca-0", "s", {}, 100, 0.0, 0.0).adds] == ["small"]
    by_pop = CopyPolicy(order="popularity")
    assert [f.content_id for f in plan_fill(m, "oca-0", "s", {}, 100, 0.0, 0.0, policy=by_pop).adds] == ["big"]


def test_first_copies_are_added_before_extra_ones():
    site = (SiteAppliance("oca-0", "", 1.0), SiteAppliance("oca-1", "", 1.0))
    # Find ids where oca-0 is second for the denser file x and first for y.
    x = next(f"x{i}" for i in range(1000) if rank_appliances(f"x{i}", site)[0] == "oca-1")
    y = next(f"y{i}" for i in range(1000) if rank_appliances(f"y{i}", site)[0] == "oca-0")
    files = [mf(x, 10, pop=100.0), mf(y, 10, pop=50.0)]  # shares 2/3 and 1/3: two copies each
    m = Manifest(1, tuple(files), {"s": site})
    plan = plan_fill(m, "oca-0", "s", {}, 1000, 0.0, 0.0)
    assert [f.content_id for f in plan.adds] == [y, x]  # x's value 10 * 0.25 < y's 5
    flat = CopyPolicy(extra_copy_weight=1.0)
    assert [f.content_id for f in plan_fill(m, "oca-0", "s", {}, 1000, 0.0, 0.0, policy=flat).adds] == [x, y]


def test_keep_bonus_keeps_a_held_file_against_a_slightly_better_one():
    files = [mf("held", 10, pop=10.0), mf("new", 10, pop=11.0)]
    m = Manifest(1, tuple(files), {})
    h = held(("held", 10))
    assert [f.content_id for f in plan_fill(m, "oca-0", "s", h, 10, 0.0, 0.0).adds] == ["new"]
    sticky = CopyPolicy(keep_bonus=0.2)
    plan = plan_fill(m, "oca-0", "s", h, 10, 0.0, 0.0, policy=sticky)
    assert plan.adds == () and plan.keep == ("held",)


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError):
        CopyPolicy(order="random")
    assert math.isfinite(CopyPolicy().load_headroom)


# --- the stationary self-check ------------------------------------------------------------------
# Equal sizes, no drift, no releases, no budget, unlimited serving, 20,000 files: the simulator's LRU
# must match Che's approximation, and its bound on realised demand the best static placement (the most
# popular files that fit), each within 0.01.

STATIONARY = [(z, c) for z in (0.6, 0.8, 1.0) for c in (0.05, 0.20)]
UNLIMITED = [math.inf]


@pytest.mark.parametrize("zipf,capacity", STATIONARY)
def test_stationary_lru_matches_ches_approximation(zipf, capacity):
    cat = ob.make_stationary_catalogue(11, n_files=20_000, days=2, zipf=zipf, requests_per_day=200_000)
    sizes = {f.cid: f.size for f in cat.files}
    slots = int(capacity * len(cat.files))
    caches = [ob.Lru(slots * cat.files[0].size)]
    route = dict.fromkeys(sizes, 0)
    ob.serve_lru_day(caches, route, cat.day_requests(0), sizes, UNLIMITED)  # warm-up: the cache turns over several times
    st = ob.serve_lru_day(caches, route, cat.day_requests(1), sizes, UNLIMITED)
    che = ob.che_hit_ratio([t.base for t in cat.titles], slots)
    assert st.health_miss_bytes == pytest.approx(0, abs=1e-6 * st.bytes)  # unlimited serving (float rounding aside)
    assert st.byte_offload == pytest.approx(che, abs=0.01)


@pytest.mark.parametrize("zipf,capacity", STATIONARY)
def test_stationary_bound_matches_the_static_optimum(zipf, capacity):
    # The bound on realised demand knows the day's sample, so it exceeds the optimum by the sampling noise:
    # up to 0.018 with 200,000 requests a day over 20,000 files, under 0.004 with 1,000,000.
    cat = ob.make_stationary_catalogue(12, n_files=20_000, days=1, zipf=zipf, requests_per_day=1_000_000)
    sizes = {f.cid: f.size for f in cat.files}
    slots = int(capacity * len(cat.files))
    storage = [slots * cat.files[0].size]
    expected = cat.expected_requests(0)
    optimum = sum(sorted(expected, reverse=True)[:slots]) / sum(expected)
    requests = cat.day_requests(0)
    realised = ob.offline_bound(Counter(requests), sizes, storage, UNLIMITED) / (len(requests) * cat.files[0].size)
    assert realised == pytest.approx(optimum, abs=0.01)
    assert realised >= optimum - 0.002  # above it but for sampling noise
    # On expected demand the bound is the optimum exactly.
    by_cid = {f.cid: e for f, e in zip(cat.files, expected)}
    assert ob.offline_bound(by_cid, sizes, storage, UNLIMITED) / sum(e * s for e, s in zip(expected, sizes.values())) == pytest.approx(optimum, abs=1e-9)


@pytest.mark.parametrize(
    "probs,slots,ratio",
    [
        ([1.0] * 10, 10, 1.0),  # everything fits
        ([1.0] * 10, 0, 0.0),
        # Two equal files, one slot: T solves 2 (1 - exp(-T/2)) = 1, T = 2 ln 2; hit = 1 - exp(-ln 2) = 1/2.
        ([1.0, 1.0], 1, 0.5),
    ],
)
def test_che_by_hand(probs, slots, ratio):
    assert ob.che_hit_ratio(probs, slots) == pytest.approx(ratio, abs=1e-9)


def test_hour_bounds_cut_the_day_by_the_profile():
    b = ob.hour_bounds(1000)
    assert len(b) == 25 and b[0] == 0 and b[-1] == 1000 and b == sorted(b)
    assert b[21] - b[20] == pytest.approx(1000 * ob.HOURS[20], abs=1)
    assert ob.hour_bounds(0) == [0] * 25


# --- forecasts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,kind,sd",
    [("oracle-noise:0.5", "oracle-noise", 0.5), ("oracle-noise:0", "oracle-noise", 0.0), ("oracle-noise:1.25", "oracle-noise", 1.25),
     ("none", "none", 0.5), ("history", "history", 0.5)],
)
def test_parse_forecast(text, kind, sd):
    fc = ob.parse_forecast(text)
    assert (fc.kind, fc.noise_sd) == (kind, sd)
    assert ob.parse_forecast(fc.name) == fc


@pytest.mark.parametrize("text", ["oracle", "oracle-noise:", "oracle-noise:-1", "oracle-noise:nan", "oracle-noise:x", "History", ""])
def test_parse_forecast_refuses(text):
    with pytest.raises(ValueError):
        ob.parse_forecast(text)


def test_oracle_noise_rescales_the_same_draws():
    cat = ob.make_catalogue(5, n_files=80, days=6, zipf=0.8, requests_per_day=300)
    day = next(d for d in range(1, 6) if any(t.release == d for t in cat.titles))
    exact = cat.announced_bytes(day, 0.0)
    half = cat.announced_bytes(day, 0.5)
    double = cat.announced_bytes(day, 1.0)
    expected = cat.expected_requests(day)
    for i, f in enumerate(cat.files):
        if expected[i] > 0:
            assert exact[f.cid] == pytest.approx(expected[i] * f.size)
            noise = cat.titles[f.title].forecast_noise
            assert half[f.cid] == pytest.approx(exact[f.cid] * noise)
            assert double[f.cid] == pytest.approx(exact[f.cid] * noise**2)


def test_history_forecast_is_the_mean_first_day_of_earlier_releases_of_that_kind_and_encode():
    # Two series episodes released on day 1 (hd720 asked 4 and 2 times on day 1), a movie on day 2.
    titles = [ob.Title("s0e0", 1, 1.0, 5.0, 2.0, 1.0, True), ob.Title("s0e1", 1, 1.0, 5.0, 2.0, 1.0, True), ob.Title("m1", 2, 1.0, 5.0, 2.0, 1.0, False)]
    files = [ob.File("s0e0.hd720.mp4", 100, 0, 1.0), ob.File("s0e1.hd720.mp4", 100, 1, 1.0), ob.File("m1.hd720.mp4", 300, 2, 1.0)]
    cat = ob.Catalogue(files, titles, [[1.0] * 4] * 3, 4, 10, 0, files_of=[[0], [1], [2]])
    rh = ob.ReleaseHistory()
    assert rh.forecast_bytes(True, "s9e0.hd720.mp4", 50) == 0.0  # nothing released yet
    rh.observe(cat, 0, {"s0e0.hd720.mp4": 9})  # day 0: no release that day, nothing learnt
    assert rh.forecast_bytes(True, "s9e0.hd720.mp4", 50) == 0.0
    rh.observe(cat, 1, {"s0e0.hd720.mp4": 4, "s0e1.hd720.mp4": 2, "m1.hd720.mp4": 0})
    assert rh.forecast_bytes(True, "s9e0.hd720.mp4", 50) == pytest.approx(3 * 50)  # mean of 4 and 2, times its size
    assert rh.forecast_bytes(False, "m9.hd720.mp4", 50) == 0.0  # no movie released yet
    assert rh.forecast_bytes(True, "s9e0.uhd.mp4", 50) == 0.0  # no earlier release in that encode
    rh.observe(cat, 2, {"m1.hd720.mp4": 7, "s0e0.hd720.mp4": 100})  # day 2: only the movie's first day counts
    assert rh.forecast_bytes(False, "m9.hd720.mp4", 10) == pytest.approx(70)
    assert rh.forecast_bytes(True, "s9e0.hd720.mp4", 50) == pytest.approx(150)


def test_pre_run_counts_see_only_the_back_catalogue():
    cat = ob.make_catalogue(5, n_files=200, days=6, zipf=0.8, requests_per_day=500)
    counts = cat.pre_run_counts()
    assert sum(counts.values()) == 500 and counts == cat.pre_run_counts()
    release = {f.cid: cat.titles[f.title].release for f in cat.files}
    assert all(release[cid] <= 0 for cid in counts)


# --- passes and the overflow LRU ----------------------------------------------------------------


@pytest.mark.parametrize("passes,hours", [(1, []), (2, [3]), (3, [3, 8]), (4, [3, 6, 9]), (12, list(range(3, 14)))])
def test_pass_hours_spread_over_the_window(passes, hours):
    assert ob.pass_hours(passes) == hours


def test_overflow_lru_sends_a_saturated_appliances_request_to_the_second():
    # a on appliance 0 first, 1 second. Capacity 25 bytes an hour each; one hour.
    # a(10) miss on 0; a hit on 0 (load 10); a hit on 0 (20); a: 0 would go to 30 > 25, so appliance 1: miss, kept;
    # a hit on 1 (10).
    caches = [ob.Lru(100), ob.Lru(100)]
    st = ob.serve_lru_overflow_day(caches, {"a": (0, 1)}, list("aaaaa"), SIZES, [25.0, 25.0], ONE_HOUR)
    assert (st.hit_requests, st.hit_bytes) == (3, 30)
    assert (st.content_miss_requests, st.content_miss_bytes) == (2, 20)
    assert st.health_miss_bytes == 0
    assert "a" in caches[1].items


def test_overflow_lru_with_one_appliance_is_the_plain_lru_with_health_misses_per_request():
    caches = [ob.Lru(60)]
    st = ob.serve_lru_overflow_day(caches, {"a": (0,), "b": (0,), "c": (0,)}, list("abcaba"), SIZES, [1000.0], ONE_HOUR)
    assert (st.hit_requests, st.hit_bytes, st.content_miss_bytes) == (1, 10, 100)
    caches = [ob.Lru(60)]
    st = ob.serve_lru_overflow_day(caches, {"a": (0,)}, list("aaaa"), SIZES, [15.0], ONE_HOUR)
    assert (st.hit_bytes, st.health_miss_bytes, st.content_miss_bytes) == (10, 20, 10)  # second hit would pass 15


@pytest.mark.parametrize("forecast", ["oracle-noise:0.5", "none", "history"])
@pytest.mark.parametrize("passes", [1, 3])
def test_runs_with_passes_balance_their_books_and_respect_the_budget(forecast, passes):
    setup = ob.replace(ob.AFTER, forecast=ob.parse_forecast(forecast), passes=passes, reserve=0.3 if passes > 1 else 0.0)
    cat = ob.make_catalogue(3, TINY.files, TINY.warmup + TINY.days, TINY.zipf, TINY.requests)
    demand = [cat.day_requests(d) for d in range(TINY.warmup + TINY.days)]
    site = ob.make_site(TINY, cat)
    pr = ob.run_planner(TINY, setup, cat, demand)
    largest = max(f.size for f in cat.files)
    for day, (st, filled) in enumerate(zip(pr.days, pr.filled)):
        parts = st.hit_bytes + st.content_miss_bytes + st.budget_miss_bytes + st.health_miss_bytes
        assert parts == pytest.approx(st.bytes) and st.requests == TINY.requests
        if day > 0:
            assert all(b <= site.budget + largest for b in filled)  # the night's first file may cross; passes never do
    r = ob.run(TINY, setup, seed=3, cat=cat, demand=demand)
    assert r.bound_expected_offload > 0 and r.lru_overflow.bytes == r.lru.bytes


def test_one_pass_never_beats_the_static_bound():
    # One pass a day is one static placement a day: never above the bound on realised demand (passes inside the day may be).
    r = ob.run(TINY, ob.TODAY, seed=3)
    assert r.ratio <= 1 + 1e-9
    for d in r.days:
        assert d["ours"].hit_bytes <= d["bound"] * (1 + 1e-9)


@pytest.mark.parametrize("text,seeds", [("7", [7]), ("2..6", [2, 3, 4, 5, 6]), ("3..3", [3])])
def test_parse_seeds(text, seeds):
    assert ob.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["6..2", "a..b", "2..", ""])
def test_parse_seeds_refuses(text):
    with pytest.raises(ValueError):
        ob.parse_seeds(text)


@pytest.mark.parametrize("sees", ["held", "site"])
def test_what_a_pass_counts(sees, monkeypatch):
    # "held": the appliances' own counters, so a pass never counts a file the site does not hold (steering sends
    # those requests elsewhere); "site": every request of the site's clients, missing files included.
    calls = []
    real = ob.plan_pass

    def spy(manifest, me, site, held, site_held, observed, share, *rest):
        calls.append((set(site_held), dict(observed)))
        return real(manifest, me, site, held, site_held, observed, share, *rest)

    monkeypatch.setattr(ob, "plan_pass", spy)
    cat = ob.make_catalogue(3, TINY.files, TINY.warmup + TINY.days, TINY.zipf, TINY.requests)
    demand = [cat.day_requests(d) for d in range(TINY.warmup + TINY.days)]
    setup = ob.replace(ob.AFTER, forecast=ob.parse_forecast("none"), passes=3, reserve=0.7, pass_sees=sees)
    ob.run_planner(TINY, setup, cat, demand)
    assert calls
    unseen = sum(1 for site_held, observed in calls for cid in observed if cid not in site_held)
    assert (unseen == 0) == (sees == "held")
