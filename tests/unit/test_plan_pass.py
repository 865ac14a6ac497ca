"""fill.plan.plan_pass: an intra-day pass adds what was requested since the night and is missing from the site.

Pure: a table of cases, each a site, what is held, what was observed, and the expected plan.
"""

from __future__ import annotations

import pytest

from fill.manifest import Manifest, ManifestFile, SiteAppliance
from fill.plan import Held, PassPolicy, day_budget, night_budget, plan_pass, rank_appliances

SITE = (SiteAppliance("oca-0", "", 1.0), SiteAppliance("oca-1", "", 1.0))


def mf(cid: str, size: int, pop: float = 0.0) -> ManifestFile:
    return ManifestFile(cid, size, "0" * 32, 0, float(pop), (f"https://origin.example/{cid}",))


def first_on(me: str, prefix: str) -> str:
    """A content id whose first rendezvous holder in SITE is `me`."""
    return next(f"{prefix}{i}" for i in range(1000) if rank_appliances(f"{prefix}{i}", SITE)[0] == me)


MINE = first_on("oca-0", "m")
THEIRS = first_on("oca-1", "t")
# Sizes 10; the manifest's popularity is bytes per day, so value = pop / 10 plays per day.
FILES = {
    "new": mf("new", 10),  # not predicted (a release without forecast)
    "hot": mf("hot", 10),
    "big": mf("big", 50),
    "cold": mf("cold", 10, pop=10.0),  # 1 play a day
    "warm": mf("warm", 10, pop=100.0),  # 10 plays a day
}


def held(*cids: str) -> dict[str, Held]:
    return {c: Held(c, FILES[c].size, "0" * 32, FILES[c].popularity) for c in cids}


# (case, held, site_held beyond held, observed, observed_share, capacity, budget, policy, adds, deletes)
CASES = [
    ("free room: requested and missing is added", (), (), {"new": 3}, 0.5, 100, 100, PassPolicy(), ["new"], []),
    ("most valuable first", (), (), {"new": 3, "hot": 9}, 0.5, 100, 100, PassPolicy(), ["hot", "new"], []),
    ("too few requests", (), (), {"new": 1}, 0.5, 100, 100, PassPolicy(min_requests=2), [], []),
    ("held elsewhere in the site: not missing", (), ("new",), {"new": 5}, 0.5, 100, 100, PassPolicy(), [], []),
    ("already held here", ("new",), (), {"new": 5}, 0.5, 100, 100, PassPolicy(), [], []),
    ("not in the manifest", (), (), {"gone": 5}, 0.5, 100, 100, PassPolicy(), [], []),
    ("budget: a big file after the first is skipped, a smaller one still fits", (), (), {"hot": 90, "big": 50, "new": 3}, 0.5, 100, 20,
     PassPolicy(), ["hot", "new"], []),
    # A run's first file may end past what is left (the next day repays it, see day_budget); nothing after it may.
    ("budget: the first addition may end past what is left", (), (), {"big": 50, "new": 3}, 0.5, 100, 20, PassPolicy(), ["big"], []),
    ("budget: a little left, one file", (), (), {"new": 3}, 0.5, 100, 5, PassPolicy(), ["new"], []),
    ("budget: nothing left, nothing added", (), (), {"new": 3}, 0.5, 100, 0, PassPolicy(), [], []),
    # Full storage: "cold" (1 play a day) makes room for "new" (3 / 0.5 = 6 a day > 1.5).
    ("full: a cold file makes room", ("cold", "warm"), (), {"new": 3}, 0.5, 20, 100, PassPolicy(), ["new"], ["cold"]),
    # "warm" (10 a day) is worth more than "new" (6): it is not deleted, "new" is not added.
    ("full: a warm file stays", ("warm",), (), {"new": 3}, 0.5, 10, 100, PassPolicy(), [], []),
    # The margin: "new" at 6 a day against "cold" at 1: passes with margin 4 (1 * 5 < 6), not with 5 (6 !< 6).
    ("margin 4", ("cold",), (), {"new": 3}, 0.5, 10, 100, PassPolicy(margin=4.0), ["new"], ["cold"]),
    ("margin 5", ("cold",), (), {"new": 3}, 0.5, 10, 100, PassPolicy(margin=5.0), [], []),
    # A held file requested today counts at its observed rate: "cold" seen 4 times in half a day is 8 a day.
    ("held but busy today", ("cold",), (), {"new": 3, "cold": 4}, 0.5, 10, 100, PassPolicy(), [], []),
    # Observation over a smaller share of the day means a higher rate: 3 in 0.1 of a day is 30 a day.
    ("early pass: higher rate", ("warm",), (), {"new": 3}, 0.1, 10, 100, PassPolicy(), ["new"], ["warm"]),
]


@pytest.mark.parametrize("case,held_ids,elsewhere,observed,share,capacity,budget,policy,adds,deletes", CASES, ids=[c[0] for c in CASES])
def test_plan_pass_cases(case, held_ids, elsewhere, observed, share, capacity, budget, policy, adds, deletes):
    m = Manifest(1, tuple(FILES.values()), {})  # no site list: a site of one
    h = held(*held_ids)
    plan = plan_pass(m, "oca-0", "s", h, set(h) | set(elsewhere), observed, share, capacity, budget, policy)
    assert [f.content_id for f in plan.adds] == adds
    assert list(plan.deletes) == deletes
    assert plan.add_bytes == sum(FILES[c].size for c in adds)
    assert plan.add_bytes <= budget or len(adds) == 1
    after = sum(x.size for c, x in h.items() if c not in plan.deletes) + plan.add_bytes
    assert after <= capacity or not adds


def test_only_the_first_rendezvous_holder_adds():
    m = Manifest(1, (mf(MINE, 10), mf(THEIRS, 10)), {"s": SITE})
    observed = {MINE: 5, THEIRS: 5}
    mine = plan_pass(m, "oca-0", "s", {}, set(), observed, 0.5, 100, 100)
    theirs = plan_pass(m, "oca-1", "s", {}, set(), observed, 0.5, 100, 100)
    assert [f.content_id for f in mine.adds] == [MINE]
    assert [f.content_id for f in theirs.adds] == [THEIRS]


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_observed_share_must_be_a_share_of_the_day(share):
    with pytest.raises(ValueError):
        plan_pass(Manifest(1, (), {}), "oca-0", "s", {}, set(), {}, share, 10, 10)


@pytest.mark.parametrize("kwargs", [{"min_requests": 0}, {"margin": -1.0}, {"margin": float("nan")}])
def test_bad_pass_policy_is_refused(kwargs):
    with pytest.raises(ValueError):
        PassPolicy(**kwargs)


def test_the_nights_left_over_additions_compete_on_value():
    # "warm" (10 a day) was chosen by the night but left to the passes; "new" is requested at 6 a day.
    m = Manifest(1, tuple(FILES.values()), {})
    plan = plan_pass(m, "oca-0", "s", {}, set(), {"new": 3}, 0.5, 100, 100, planned=[FILES["warm"]])
    assert [f.content_id for f in plan.adds] == ["warm", "new"]
    # Only one fits the budget: the more valuable.
    plan = plan_pass(m, "oca-0", "s", {}, set(), {"new": 3}, 0.5, 100, 10, planned=[FILES["warm"]])
    assert [f.content_id for f in plan.adds] == ["warm"]
    # Already held (filled since): not added again.
    plan = plan_pass(m, "oca-0", "s", held("warm"), {"warm"}, {}, 0.5, 100, 100, planned=[FILES["warm"]])
    assert plan.adds == ()


@pytest.mark.parametrize(
    "new,max_reserve,budget",
    [
        ([], 0.5, 100),  # nothing new: the night may spend it all
        ([mf("a", 10, pop=5.0)], 0.5, 100),  # new with a forecast: planned at night
        ([mf("a", 10)], 0.5, 50),  # new without a forecast: half held back
        ([mf("a", 10), mf("b", 30, pop=1.0)], 0.8, 80),  # a quarter of the new bytes unforecast: 0.8 * 0.25 held back
        ([mf("a", 10)], 0.0, 100),
        ([mf("a", 10)], 1.0, 0),
    ],
)
def test_night_budget_holds_back_for_unforecast_new_files(new, max_reserve, budget):
    assert night_budget(100, new, max_reserve) == budget


def test_night_budget_refuses_a_bad_share():
    with pytest.raises(ValueError):
        night_budget(100, [], 1.5)



# ---------------------------------------------------------------- observed plays and the share of a day

from fill.plan import DAY_S, MIN_OBSERVED_SHARE, observed_plays, observed_share  # noqa: E402
from oca.store.demand import Demand, DemandSnapshot, Mark  # noqa: E402


def snap(mark_s: float, created_s: float, **records: tuple[int, int, int, int]) -> DemandSnapshot:
    return DemandSnapshot(Mark(1, mark_s), created_s, {cid: Demand(r, b, rs, bs, 0.0, 0.0, 1) for cid, (r, b, rs, bs) in records.items()})


def test_observed_plays_are_bytes_over_size_when_held_and_requests_when_not():
    s = snap(0.0, 0.0, held=(90, 9000, 30, 25), missing=(5, 0, 3, 0), idle=(7, 70, 0, 0))
    h = {"held": Held("held", 10, "0" * 32), "idle": Held("idle", 10, "0" * 32)}
    # 30 range requests that moved 25 bytes of a 10-byte file: 2.5 plays, not 30.
    assert observed_plays(s, h) == {"held": 2.5, "missing": 3.0}


@pytest.mark.parametrize("case,mark_s,created_s,records,now,share", [
    ("under a day of counting: elapsed time", 1000.0, 0.0, {"x": (10, 0, 5, 0)}, 1000.0 + DAY_S / 4, 0.25),
    ("no mark yet: since counting began", 0.0, 500.0, {"x": (10, 0, 10, 0)}, 500.0 + DAY_S / 2, 0.5),
    ("two days counted: the mark's requests over the daily mean", 2 * DAY_S, 0.0, {"x": (400, 0, 50, 0)}, 2 * DAY_S + 3600, 50 / (400 / (2 + 1 / 24))),
    ("never below the floor", 1000.0, 0.0, {"x": (1, 0, 1, 0)}, 1001.0, MIN_OBSERVED_SHARE),
    ("never above a day", 0.0, 0.0, {"x": (10, 0, 10, 0)}, 3 * DAY_S, 1.0),
])
def test_observed_share(case, mark_s, created_s, records, now, share):
    assert observed_share(snap(mark_s, created_s, **records), now) == pytest.approx(share)



def test_a_forecast_marked_uncertain_reserves_like_none_and_passes_weigh_only_requests():
    new = [mf("u1", 60, pop=600.0), mf("u2", 40, pop=400.0)]
    assert night_budget(1000, new, 0.5) == 1000  # forecast: nothing held back
    assert night_budget(1000, new, 0.5, uncertain={"u1"}) == 1000 - 300  # 60% of the new bytes count as unforecast
    m = Manifest(1, (mf("u1", 10, pop=100.0), mf("u2", 10, pop=50.0)), {})
    planned = list(m.files)
    # Both planned, budget for one: the forecast picks u1; marked uncertain, the requests pick u2.
    assert [f.content_id for f in plan_pass(m, "oca-0", "s", {}, set(), {"u2": 2}, 0.5, 100, 10, PassPolicy(), planned).adds] == ["u1"]
    got = plan_pass(m, "oca-0", "s", {}, set(), {"u2": 2}, 0.5, 100, 10, PassPolicy(), planned, uncertain={"u1", "u2"})
    assert [f.content_id for f in got.adds] == ["u2"]


DAY_BUDGET_CASES = [
    # (budget, the last day's budget, spent on the last day, the day's budget)
    (100, 100, 0, 100),
    (100, 100, 100, 100),
    (100, 100, 130, 70),  # 30 over: repaid
    (100, 70, 100, 70),  # the day after: its budget was 70, so 30 over again
    (100, 100, 250, 0),  # more over than a whole day: nothing today, never negative
    (100, 0, 0, 100),  # a day with nothing to repay
    (0, 0, 10, 0),
]


@pytest.mark.parametrize("budget,last_budget,spent,expected", DAY_BUDGET_CASES)
def test_day_budget_repays_the_last_days_overshoot(budget, last_budget, spent, expected):
    assert day_budget(budget, last_budget, spent) == expected


def test_day_budget_keeps_the_mean_within_the_budget_plus_one_file():
    """A file of 40 every day against a budget of 30: the first file of a day may end past it, the next day repays."""
    budget, last, spent_total, days = 30, 30, 0, 100
    spent = 0
    for _ in range(days):
        today = day_budget(budget, last, spent)
        spent = 40 if today > 0 else 0  # the run's first file starts whenever anything is left
        spent_total += spent
        last = today
    assert spent_total <= budget * days + 40
