#!/usr/bin/env python3
"""Offload benchmark: the share of viewing bytes a site of appliances serves.

Run: ``.venv/bin/python benchmarks/offload.py [--seed N | --seeds A..B] [--all]
[--forecast oracle-noise:SD,none,history] [--passes 4] [--reserve 0.7]
[--keep-bonus 0] [--pass-sees site|held] [--pass-min-requests 2] [--pass-margin 0.5]
[--planner before|after|both] [--capacity 0.2] [--zipf 0.8] [--appliances 4]
[--files 3000] [--days 21] [--warmup 7] [--requests 100000] [--budget 1.0]
[--serve-headroom 1.0] [--jobs 2] [--per-day] [--png FILE]``.
The headline of issue 14: ``--seeds 2..6 --all --forecast oracle-noise:0.5,history,none``
(seed 1 tuned the night's planner, seed 7 the passes).

Without ``--all`` it runs one representative configuration (20% of the
catalogue, Zipf 0.8, 4 appliances) and prints it day by day; ``--all`` runs
the 18 configurations (storage 5/20/50% of the catalogue x Zipf 0.6/0.8/1.0 x
1 and 4 appliances) and prints their totals. ``--planner before`` runs the
planner as it was before tuning (see `BEFORE`), ``after`` as fill/plan.py's
defaults run it now, ``both`` both on the same demand.

For an ISP, Open Connect is worth its offload: the share of viewing bytes its
embedded appliances serve instead of its peering and transit links. This
simulates a site day by day and night by night and measures that offload for
three placements fed the same catalogue, demand and capacities:

- **ours**: the real planner (`fill.plan.plan_fill` on a real
  `fill.manifest.Manifest`), run for every appliance every night exactly as
  oca-fill runs it (see `apply_night`), with popularity predicted from the
  previous days' demand only, then ``--passes`` - 1 intra-day passes
  (`fill.plan.plan_pass`, the function the agent is to run) at their hours
  in the fill window;
- **lru**: an LRU pull-through cache (nginx proxy_cache, Varnish) of the same
  storage per appliance, each request hashed (rendezvous, top choice) to one
  appliance of the site; a miss is fetched from outside and kept. Printed
  beside it (``lru-ovf``, not used for "closed"): the same LRU where a request
  whose first appliance is saturated in that hour goes to its second, which
  shows what LRU loses to routing each file to one appliance;
- **bound**: an upper bound on any static placement of that day knowing that
  day's demand exactly, with the same storage and serving capacity and no
  fill budget (see `offline_bound`: a fractional relaxation, provably >= the
  best placement). ``bound-B`` is on the realised requests (the target's
  denominator); ``bound-E`` the same bound on the day's expected demand
  (what a perfect forecast could aim at; the realised bound also profits
  from the day's sampling noise).

Rules kept here:
- Reproducible: everything random comes from ``--seed`` (catalogue, demand,
  forecast noise); the same seed gives the same table. Every run is bounded:
  a fixed number of days, requests and files.
- Generation (`make_catalogue`, `Catalogue.day_requests`) is separate from
  accounting. The accounting functions (`site_served`, `account_site`,
  `Lru`, `serve_lru_day`, `fractional_knapsack`, `offline_bound`,
  `apply_night`, `predict_mean`) are pure and checked by hand in
  tests/unit/test_offload.py.
- The site (`make_site`): storage = ``capacity`` x the catalogue's bytes,
  split evenly over the appliances; the site's nightly fill budget =
  ``--budget`` x the mean bytes of new releases per day (all encodes), split
  evenly too, so a site cannot take in everything released plus copies and
  churn; serving capacity = ``--serve-headroom`` x the whole catalogue's
  expected peak-hour demand, split evenly. The catalogue (`make_catalogue`):
  shows ranked by a Zipf law (movies, and series of 4-12 episodes watched
  less and less), each title in 4-5 encodes (0.6 to 16 Mb/s, with a share
  of its plays each), a quarter of the shows released during the run with a
  spike (about 8x their long-run weight, decaying over 2-7 days), every
  title drifting day to day (a mean-reverting log random walk).
- Units: bytes, and for serving capacity bytes per hour (printed in Gb/s).
  A request is one play of one file, fetched whole; its bytes are the file's
  size. A day has 24 hours with a fixed evening-peak profile (`HOURS`); each
  file's demand follows that profile, so serving is checked hour by hour.
- Serving (ours): perfect steering. A request goes to any holder of its file
  in the site with spare serving capacity; what the holders cannot serve in an
  hour (computed exactly as a max-flow from holder sets to appliances, see
  `site_served`) is a **health miss**. A request for a file with no holder is
  a **fill-budget miss** when some appliance's plan chose the file last night
  (wanted but not filled: budget or room) and a **content miss** otherwise.
  Health misses are spread over the held requests in proportion to bytes, so
  missed request counts can be fractional.
- Serving (lru): a hit is served by the appliance the request hashes to, up to
  that appliance's serving capacity in each hour (the excess is a health
  miss); a miss is a content miss. Pull-through misses are assumed not to use
  serving capacity (in LRU's favour).
- The night (ours): for every appliance, `plan_fill` on the night's manifest,
  then the agent's order: refuse the plan if it would delete more than half of
  what is held (`max_delete_share`), delete `delete_now`, add in plan order
  under the nightly budget (a file that does not fit in what is left is
  skipped unless it is the first, which is filled whole; with passes, the
  next day's budget repays that overshoot, as the agent does),
  making room from `delete_if_needed` (least popular first) when storage is
  full. The first night is the install fill, without budget.
- Prediction: the manifest's popularity (predicted bytes per day) for night d
  uses demand of days < d only. Files released tomorrow (and, on the first
  night, every file: no history yet) use ``--forecast`` (see `Forecast`):
  ``oracle-noise:SD`` the catalogue's expectation times log-normal noise of
  log-sd SD (0.5 is the earlier model, on the same draws); ``none`` zero
  until seen (the first night: the back catalogue's requests of the day
  before the run); ``history`` the mean first-day requests of earlier
  releases of the same kind (series or movie) and encode, never the day's
  drift or spike.
- Passes inside the day: the night's pass runs before the day (the window
  opens at 02:00, and little is watched before); ``--passes`` - 1 more at
  `pass_hours` (03:00, 06:00, 09:00 for 4). Requests are in arrival order,
  cut into hours by the profile (`hour_bounds`); a pass at hour h sees only
  the requests of hours < h, adds per `plan_pass` (requested and missing
  from the site, and what the night's plan chose but left to the passes),
  within what is left of the appliance's daily budget and of the window
  (budget x hours left / 12), and what it adds serves from hour h + 1; its
  first addition may end past what is left, as the night's first may, and
  with passes each appliance's budget for a day is the budget less what
  it spent beyond it the day before (`fill.plan.day_budget`, as the agent
  keeps it), so no appliance fills more than the budget over two days. A
  pass counts every request of the site's clients, those for files the site
  lacks included: the appliances never see those (steering sends them
  elsewhere), so the product needs steering's count of them;
  ``--pass-sees held`` shows what the passes are worth without it. The
  night holds back up to ``--reserve`` of the budget for the passes, in
  proportion to the new bytes without a forecast (`fill.plan.night_budget`).
  A ``history`` forecast is one number per kind of release, so it carries
  its uncertainty as the manifest's ``"forecast": "class"`` does for the
  agent: its releases count as without a forecast for that reserve, and the
  passes value them by the requests seen alone; the night still orders them
  by it (``--history-certain`` takes it as a forecast of the title instead).
  With passes, the planner's day is no longer one static placement, so the
  bound no longer bounds it in principle (as for the LRU).
- Warm-up days (``--warmup``) run the same way but are not reported; the LRU
  starts empty on the first warm-up day, the planner's site on the install
  fill before it.
- Targets (printed PASS/MISS per configuration): byte offload >= 0.95 x bound;
  (ours - lru) / (bound - lru) >= 0.6. Then each target of issue 14 the run
  can judge (`target_lines`): with ``history``, both in >= 16 of the 18
  configurations on every seed (``--all``); on the default configuration,
  ``history`` >= 0.95 / 0.6 and ``none`` >= 0.93 / 0.5; ``oracle-noise:0.5``
  no worse than ``today`` (one pass, fill/plan.py's defaults: the planner
  before this change), run on the same demand. The exit status is 0 either way.
- The totals row keeps its shape: the last line starting ``cap N%`` is the
  planner's totals (over several seeds, their mean), and the first two
  numbers after the bound-B percentage are ours/bound and closed, then
  ``|``; new columns come after it.
  The bound holds for any placement fixed for the day (the planner's days
  are checked against it in the tests); the LRU changes its placement within
  a day and so is not bounded by it in principle.

What tuning found (seed 1, ``--all --planner both``; fill/plan.py's defaults
now follow it): ordering by predicted bytes per stored byte instead of bytes
per day is most of the gain (4K encodes carry many bytes for few plays);
copies in proportion to a file's share of the site's load instead of a head
of 5% on every appliance and 20% on half of them (which filled a 20% site
with copies); first copies before extra copies under the budget; popularity
as an exponentially weighted mean (alpha 0.5) of the last 14 days instead of
a 7-day mean. A keep bonus and the grace period (72 h, 168 h, unlimited)
changed the offload by less than 0.3 points and were left as they were. The
configurations still missing a target miss it by the fill budget (budget
misses; with twice the budget they pass), which the bound ignores and the
pull-through LRU does not have.

What the budget rules found (history forecasts, ``--all``, tuning seeds 8
and 9, the headline seeds 2-6 held out): a pass's first file may end past
what is left, with every overshoot repaid the next day against that day's
own budget (`fill.plan.day_budget`, so over any run of days the fill
exceeds the budget by at most one file): 12 of the 23 configurations
compared pass instead of 10, mean ours/bound +0.0006; it helps 4
appliances (whose budget is 2-4 whole files a day here) and costs 50%
storage with 1 appliance (closed 0.50 -> 0.39 on seed 8), where
tomorrow's budget is worth more than today's big file. Forgiving the
overshoot when the day's budget was already lowered did better (12 of
23, +0.003) but lets the fill average more than the budget, so it was
rejected. Also measured and not adopted: an additive hysteresis (a held
file's value raised by 1 or 2 x the plan's cutoff value, so a newcomer
must beat it by that step: +0.001 mean ours/bound, one more configuration
passing per seed, within noise); pooling the site's budget over its
appliances (worse: 0.913 vs 0.933 on seed 8's default configuration);
a reserve of 0.5 or 0.85 and a pass margin of 0.25 (no better); at 50%
storage, a keep bonus of 0.5 or an unlimited grace period (unchosen files
kept until room is needed) raise closed by 0.01-0.07, far from 0.6. What the
4-appliance configurations miss is mostly the simulator's scale (these
last figures measured before the budget rules above): with
``--files 9000`` (a 3 x larger catalogue, so budgets of 3 x more files)
seed 8's default configuration gives 0.970 / 0.80 with 4 appliances and
0.973 / 0.82 with 1. Even a perfect forecast (``oracle-noise:0``) gives
0.945 / 0.66 there with 3000 files, and 0.979 / 0.60 at 50% storage with
1 appliance: the fill budget (one day of releases, which the bound
ignores) is what is missing; with twice the budget these give 0.964 /
0.78 and 0.991 / 0.82.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oca.store.layout import StoreRoom  # noqa: E402
from fill.manifest import Manifest, ManifestFile, SiteAppliance  # noqa: E402
from fill.plan import (  # noqa: E402
    POPULARITY_ALPHA,
    POPULARITY_WINDOW_DAYS,
    CopyPolicy,
    Held,
    DeleteBudget,
    PassPolicy,
    Plan,
    day_budget,
    place,
    plan_fill,
    night_budget,
    plan_pass,
    predict_popularity,
    rank_appliances,
)

DAY_S = 86400.0
T0 = 1_795_677_000.0  # unix seconds of the first simulated night
SITE = "site-sim"
MAX_DELETE_SHARE = 0.5  # FillConfig.max_delete_share default
WINDOW_START_H, WINDOW_END_H = 2, 14  # the fill window, local time (Open Connect's default, 2 AM to 2 PM)


def pass_hours(passes: int) -> list[int]:
    """Hours of the day at which the passes after the night's run, evenly spaced from the hour after the window opens.

    The night's pass is the window's start (modelled before the day's first
    request, as demand between midnight and 2 AM is small). The first later
    pass comes an hour after it, so what the night left to the passes is not
    held back long; the others every `(window - 1) // (passes - 1)` hours:
    2 passes: 03:00; 3: 03:00 and 08:00; 4: 03:00, 06:00 and 09:00. A pass at
    hour h sees the requests of hours < h, and what it adds serves from hour
    h + 1 on (an hour to transfer). Spreading 4 passes evenly over the window
    (05:00, 08:00, 11:00) did worse with every forecast on seeds 1 and 7.
    """
    if passes <= 1:
        return []
    step = (WINDOW_END_H - WINDOW_START_H - 1) // (passes - 1)
    return [WINDOW_START_H + 1 + step * k for k in range(passes - 1)]


def _profile() -> tuple[float, ...]:
    # Evening peak around 21:00, a low at 05:00; normalised to sum to 1.
    raw = [0.25 + math.exp(-(((h - 21) % 24 if h >= 9 else h + 3) / 2.6) ** 2) + 0.35 * math.exp(-((h - 14) / 4.0) ** 2) for h in range(24)]
    total = sum(raw)
    return tuple(w / total for w in raw)


HOURS = _profile()
NOISE_SD = 0.5  # log-sd of the oracle forecast's noise in the catalogue's draws (the earlier fixed model)

# Encodes of a title: (bitrate Mb/s, share of the title's plays, name). The 4K
# encode exists for some titles only; elsewhere its share goes to 1080p.
ENCODES = ((0.6, 0.08, "sd235"), (1.75, 0.17, "sd560"), (3.0, 0.30, "hd720"), (5.8, 0.35, "hd1080"), (16.0, 0.10, "uhd"))


# --- catalogue and demand (generation) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class File:
    cid: str
    size: int
    title: int
    share: float  # share of the title's plays


@dataclass(frozen=True, slots=True)
class Title:
    name: str
    release: int  # first day it can be watched (<= 0: back catalogue)
    base: float  # long-run Zipf weight
    spike: float  # extra weight on release day, as a multiple of base
    decay_days: float  # e-folding time of the spike
    forecast_noise: float  # the studio forecast's multiplicative error at log-sd 0.5 (NOISE_SD)
    series: bool = False  # an episode of a series (else a movie): what `history` forecasts know of a title


@dataclass
class Catalogue:
    files: list[File]
    titles: list[Title]
    drift: list[list[float]]  # per title, per day: slow multiplicative drift
    days: int
    requests_per_day: int
    seed: int
    files_of: list[list[int]] = field(default_factory=list)
    pre_drift: list[float] = field(default_factory=list)  # per title: the drift of the day before day 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def title_weight(self, t: int, day: int) -> float:
        ti = self.titles[t]
        age = day - ti.release
        if age < 0:
            return 0.0
        w = ti.base * self.drift[t][day]
        if ti.spike:
            w *= 1.0 + ti.spike * math.exp(-age / ti.decay_days)
        return w

    def file_weights(self, day: int) -> list[float]:
        tw = [self.title_weight(t, day) for t in range(len(self.titles))]
        return [tw[f.title] * f.share for f in self.files]

    def available(self, day: int) -> list[int]:
        """Indices of files at the origin on the night before `day` (released by `day`)."""
        return [i for i, f in enumerate(self.files) if self.titles[f.title].release <= day]

    def expected_requests(self, day: int) -> list[float]:
        w = self.file_weights(day)
        total = sum(w)
        return [self.requests_per_day * x / total for x in w] if total else [0.0] * len(w)

    def announced_bytes(self, day: int, noise_sd: float = 0.5) -> dict[str, float]:
        """The oracle forecast of each available file's bytes on `day`: expectation times the title's noise.

        The noise is log-normal of log-sd `noise_sd`: the title's draw at NOISE_SD
        rescaled (exp(sd * z) = noise ** (sd / NOISE_SD)), so every level uses
        the same draws and 0.5 is exactly the earlier model.
        """
        exp = self.expected_requests(day)
        scale = noise_sd / NOISE_SD
        out = {}
        for i, f in enumerate(self.files):
            if exp[i] > 0:
                out[f.cid] = exp[i] * f.size * self.titles[f.title].forecast_noise ** scale
        return out

    def pre_run_counts(self) -> Counter:
        """Requests per content id on the day before day 0: what the fleet saw of the back catalogue before the run."""
        rng = random.Random(f"{self.seed}:demand:pre-run")
        w = [0.0 if t.release > 0 else t.base * self.pre_drift[k] for k, t in enumerate(self.titles)]
        fw = [w[f.title] * f.share for f in self.files]
        idx = rng.choices(range(len(self.files)), weights=fw, k=self.requests_per_day)
        return Counter(self.files[i].cid for i in idx)

    def day_requests(self, day: int) -> list[str]:
        """The requests of `day` in arrival order: content ids, sampled from the day's popularity."""
        rng = random.Random(f"{self.seed}:demand:{day}")
        w = self.file_weights(day)
        idx = rng.choices(range(len(self.files)), weights=w, k=self.requests_per_day)
        files = self.files
        return [files[i].cid for i in idx]


def make_catalogue(
    seed: int,
    n_files: int = 3000,
    days: int = 28,
    zipf: float = 0.8,
    requests_per_day: int = 100_000,
    new_share: float = 0.25,
    series_share: float = 0.5,
) -> Catalogue:
    """Shows (movies and series of episodes), each title in several encodes, some released during the run."""
    rng = random.Random(f"{seed}:catalogue")
    mean_files_per_title = 4.3
    titles_wanted = max(1, round(n_files / mean_files_per_title))
    # Shows: a movie is one title, a series 4-12 episodes.
    shows: list[list[int]] = []  # show -> title indices
    title_specs: list[tuple[int, int, float]] = []  # (show, episode, minutes)
    while len(title_specs) < titles_wanted:
        s = len(shows)
        if rng.random() < series_share:
            eps = rng.randint(4, 12)
            minutes = rng.uniform(22, 60)
            shows.append(list(range(len(title_specs), len(title_specs) + eps)))
            title_specs += [(s, e, minutes * rng.uniform(0.9, 1.1)) for e in range(eps)]
        else:
            shows.append([len(title_specs)])
            title_specs.append((s, 0, rng.uniform(85, 150)))
    # Zipf weight by show rank (ranks in random order); new releases spread over the days.
    ranks = list(range(1, len(shows) + 1))
    rng.shuffle(ranks)
    show_release = []
    show_spike = []
    for _s in range(len(shows)):
        if rng.random() < new_share:
            show_release.append(rng.randint(1, max(1, days - 1)))
            show_spike.append((rng.lognormvariate(math.log(8.0), 0.8), rng.uniform(2.0, 7.0)))
        else:
            show_release.append(-rng.randint(30, 3000))
            show_spike.append((0.0, 1.0))
    if all(r > 0 for r in show_release):  # a tiny catalogue: keep something to watch on day 0
        show_release[0], show_spike[0] = -30, (0.0, 1.0)
    titles: list[Title] = []
    files: list[File] = []
    for t, (s, e, minutes) in enumerate(title_specs):
        base = ranks[s] ** -zipf * (0.8**e)  # later episodes are watched less
        spike, decay = show_spike[s]
        name = f"s{s:05d}e{e:02d}"
        titles.append(Title(name, show_release[s], base, spike, decay, rng.lognormvariate(0.0, NOISE_SD), len(shows[s]) > 1))
        has_uhd = rng.random() < 0.3
        for mbps, share, tag in ENCODES:
            if tag == "uhd" and not has_uhd:
                continue
            if tag == "hd1080" and not has_uhd:
                share += ENCODES[-1][1]
            size = int(mbps * 1e6 / 8 * minutes * 60)
            files.append(File(f"{name}.{tag}.mp4", size, t, share))
    # Drift: a mean-reverting log random walk per title.
    drift = []
    pre_drift = []
    for _t in titles:
        x = rng.gauss(0.0, 0.2)
        pre_drift.append(math.exp(x))
        row = []
        for _d in range(days):
            x = 0.85 * x + rng.gauss(0.0, 0.12)
            row.append(math.exp(x))
        drift.append(row)
    cat = Catalogue(files, titles, drift, days, requests_per_day, seed, pre_drift=pre_drift)
    cat.files_of = [[] for _ in titles]
    for i, f in enumerate(files):
        cat.files_of[f.title].append(i)
    return cat


def make_stationary_catalogue(seed: int, n_files: int = 20_000, days: int = 2, zipf: float = 0.8, requests_per_day: int = 200_000, size: int = 1_000_000) -> Catalogue:
    """The stationary self-check's catalogue: one file per title, equal sizes, Zipf over files, no drift, no releases.

    Independent requests from fixed popularity (the independent reference
    model), where Che's approximation of LRU is known to be accurate and the
    best static placement is the most popular files that fit.
    """
    titles = [Title(f"f{r:06d}", -30, r ** -zipf, 0.0, 1.0, 1.0) for r in range(1, n_files + 1)]
    files = [File(f"{t.name}.mp4", size, k, 1.0) for k, t in enumerate(titles)]
    cat = Catalogue(files, titles, [[1.0] * days for _ in titles], days, requests_per_day, seed, pre_drift=[1.0] * n_files)
    cat.files_of = [[k] for k in range(n_files)]
    return cat


def che_hit_ratio(probs: Sequence[float], capacity_files: float) -> float:
    """Che's approximation of an LRU cache's hit ratio under independent requests of equal-size files.

    The characteristic time T solves sum_i (1 - exp(-p_i T)) = C; file i is a
    hit with probability 1 - exp(-p_i T). (Che, Tung, Wang 2002; Fricker,
    Robert, Roberts 2012 on its accuracy.)
    """
    total = sum(probs)
    p = [x / total for x in probs if x > 0]
    if capacity_files >= len(p):
        return 1.0
    lo, hi = 0.0, 1.0
    while sum(1 - math.exp(-x * hi) for x in p) < capacity_files:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(1 - math.exp(-x * mid) for x in p) < capacity_files:
            lo = mid
        else:
            hi = mid
    t = (lo + hi) / 2
    return sum(x * (1 - math.exp(-x * t)) for x in p)


def hour_bounds(n_requests: int, hours: Sequence[float] = HOURS) -> list[int]:
    """Where each hour starts in a day's request list (and where the day ends): the list is in arrival order.

    Requests are drawn independently, so cutting the list into blocks of the
    profile's sizes gives each file the day's profile, as the accounting assumes.
    """
    out = [0]
    acc = 0.0
    for w in hours:
        acc += w
        out.append(min(n_requests, round(acc * n_requests)))
    out[-1] = n_requests
    return out


# --- accounting (pure) --------------------------------------------------------------


@dataclass
class DayStats:
    """What one placement did with one day's requests (bytes, and requests, possibly fractional)."""

    requests: float = 0.0
    bytes: float = 0.0
    hit_requests: float = 0.0
    hit_bytes: float = 0.0
    content_miss_requests: float = 0.0
    content_miss_bytes: float = 0.0
    budget_miss_requests: float = 0.0
    budget_miss_bytes: float = 0.0
    health_miss_requests: float = 0.0
    health_miss_bytes: float = 0.0

    def add(self, other: "DayStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def byte_offload(self) -> float:
        return self.hit_bytes / self.bytes if self.bytes else 0.0

    @property
    def request_offload(self) -> float:
        return self.hit_requests / self.requests if self.requests else 0.0


def site_served(groups: Mapping[int, float], caps: Sequence[float], hours: Sequence[float] = HOURS) -> float:
    """Bytes a site serves in a day: a max-flow per hour from holder sets to appliances.

    `groups`: bitmask of holders (bit i = appliance i) -> bytes demanded that day
    of files held by exactly that set. `caps`: bytes per hour each appliance can
    serve. Demand in hour h is `hours[h]` times the day's. By max-flow/min-cut,
    what can be served in an hour is min over appliance sets T of
    cap(T) + demand of the groups not contained in T.
    """
    n = len(caps)
    size = 1 << n
    inside = [0.0] * size  # demand of groups whose holders all lie in T
    for mask, d in groups.items():
        if not 0 < mask < size:
            raise ValueError(f"holder mask {mask} is not a non-empty subset of {n} appliances")
        inside[mask] += d
    for i in range(n):
        bit = 1 << i
        for t in range(size):
            if t & bit:
                inside[t] += inside[t ^ bit]
    cap_of = [0.0] * size
    for t in range(1, size):
        low = t & -t
        cap_of[t] = cap_of[t ^ low] + caps[low.bit_length() - 1]
    total = inside[size - 1]
    outside = [total - x for x in inside]
    served = 0.0
    for w in hours:
        served += min(c + w * o for c, o in zip(cap_of, outside))
    return min(served, total)


def account_site(
    counts: Mapping[str, int],
    sizes: Mapping[str, int],
    holders: Mapping[str, int],
    wanted: Iterable[str],
    caps: Sequence[float],
    hours: Sequence[float] = HOURS,
) -> DayStats:
    """One day of a placed site: hits, content / fill-budget / health misses.

    `counts`: requests per content id; `holders`: content id -> bitmask of the
    appliances holding it at the start of the day; `wanted`: ids some plan
    chose last night (a request for one that nobody holds is a fill-budget miss).
    """
    wanted = set(wanted)
    st = DayStats()
    groups: dict[int, float] = {}
    held_req = 0.0
    for cid, n in counts.items():
        b = n * sizes[cid]
        st.requests += n
        st.bytes += b
        mask = holders.get(cid, 0)
        if mask:
            groups[mask] = groups.get(mask, 0.0) + b
            held_req += n
        elif cid in wanted:
            st.budget_miss_requests += n
            st.budget_miss_bytes += b
        else:
            st.content_miss_requests += n
            st.content_miss_bytes += b
    held_bytes = sum(groups.values())
    served = site_served(groups, caps, hours) if groups else 0.0
    st.hit_bytes = served
    st.health_miss_bytes = held_bytes - served
    share = served / held_bytes if held_bytes else 0.0
    st.hit_requests = held_req * share
    st.health_miss_requests = held_req - st.hit_requests
    return st


class Lru:
    """One appliance's pull-through LRU cache of `capacity` bytes (whole files)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: OrderedDict[str, int] = OrderedDict()
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def request(self, cid: str, size: int) -> bool:
        """True on a hit. A miss is fetched and kept (evicting least recently used) if it fits at all."""
        items = self.items
        if cid in items:
            items.move_to_end(cid)
            self.hits += 1
            return True
        self.misses += 1
        if size <= self.capacity:
            while self.used + size > self.capacity:
                _old, old_size = items.popitem(last=False)
                self.used -= old_size
                self.evictions += 1
            items[cid] = size
            self.used += size
        return False


def serve_lru_day(
    caches: Sequence[Lru],
    route: Mapping[str, int],
    requests: Iterable[str],
    sizes: Mapping[str, int],
    caps: Sequence[float],
    hours: Sequence[float] = HOURS,
) -> DayStats:
    """One day of the LRU site: each request goes to appliance `route[cid]`."""
    n = len(caches)
    hit_b = [0.0] * n
    hit_r = [0] * n
    st = DayStats()
    ask = [c.request for c in caches]
    n_req = 0
    all_b = 0
    for cid in requests:
        a = route[cid]
        size = sizes[cid]
        n_req += 1
        all_b += size
        if ask[a](cid, size):
            hit_b[a] += size
            hit_r[a] += 1
    st.requests = float(n_req)
    st.bytes = float(all_b)
    st.content_miss_requests = float(n_req - sum(hit_r))
    st.content_miss_bytes = float(all_b - sum(hit_b))
    for a in range(n):
        if not hit_b[a]:
            continue
        served = site_served({1: hit_b[a]}, [caps[a]], hours)
        share = served / hit_b[a]
        st.hit_bytes += served
        st.hit_requests += hit_r[a] * share
        st.health_miss_bytes += hit_b[a] - served
        st.health_miss_requests += hit_r[a] * (1 - share)
    return st


def serve_lru_overflow_day(
    caches: Sequence[Lru],
    routes: Mapping[str, tuple[int, ...]],
    requests: Sequence[str],
    sizes: Mapping[str, int],
    caps: Sequence[float],
    hours: Sequence[float] = HOURS,
) -> DayStats:
    """One day of the LRU site when a request may overflow to the file's second appliance.

    `routes[cid]`: appliances in rendezvous order. Hour by hour (the request
    list cut by `hour_bounds`), a request goes to its first appliance unless
    that one's hits this hour already fill its serving capacity, then to the
    second (which caches the file too). A hit beyond the chosen appliance's
    capacity is a health miss. With one appliance it is the plain LRU
    served request by request instead of by the day's profile.
    """
    n = len(caches)
    st = DayStats()
    ask = [c.request for c in caches]
    bounds = hour_bounds(len(requests), hours)
    for h in range(len(hours)):
        load = [0.0] * n
        for cid in requests[bounds[h]:bounds[h + 1]]:
            size = sizes[cid]
            route = routes[cid]
            a = route[0]
            if n > 1 and load[a] + size > caps[a]:
                a = route[1]
            st.requests += 1
            st.bytes += size
            if not ask[a](cid, size):
                st.content_miss_requests += 1
                st.content_miss_bytes += size
            elif load[a] + size <= caps[a]:
                load[a] += size
                st.hit_requests += 1
                st.hit_bytes += size
            else:
                st.health_miss_requests += 1
                st.health_miss_bytes += size
    return st


def fractional_knapsack(items: Iterable[tuple[float, float]], capacity: float) -> float:
    """Most value that fits in `capacity`, items being (value, size) and divisible."""
    total = 0.0
    free = capacity
    for value, size in sorted(items, key=lambda it: -(it[0] / it[1]) if it[1] > 0 else -math.inf):
        if value <= 0:
            continue
        if size <= free:
            total += value
            free -= size
        else:
            total += value * free / size
            break
    return total


def offline_bound(
    counts: Mapping[str, int],
    sizes: Mapping[str, int],
    storage: Sequence[float],
    caps: Sequence[float],
    hours: Sequence[float] = HOURS,
) -> float:
    """An upper bound on the bytes any static placement serves on a day whose demand is known.

    Any placement stores each file f on some k_f appliances (sum of k_f * size
    <= total storage, k_f <= n) and serves of f in hour h at most
    min(w_h d_f, the k_f largest serving capacities together), and of all files
    in hour h at most min(total capacity, w_h * demand of the stored files).
    Relaxing k_f to a real number (the per-copy gains are decreasing, so the
    relaxation is a fractional knapsack over copy increments) gives bound 1;
    relaxing copies away (one copy each, a fractional knapsack of demand bytes
    per stored byte, then capped by total capacity hour by hour) gives
    bound 2. Both are >= the best placement, so their minimum is.
    """
    top = sorted(caps, reverse=True)
    prefix = [0.0]
    for c in top:
        prefix.append(prefix[-1] + c)
    total_storage = float(sum(storage))
    w_max = max(hours)
    increments: list[tuple[float, float]] = []
    single: list[tuple[float, float]] = []
    for cid, n in counts.items():
        d = float(n * sizes[cid])
        s = sizes[cid]
        single.append((d, s))
        if w_max * d <= prefix[1]:
            increments.append((d, s))
            continue
        prev = 0.0
        for k in range(1, len(top) + 1):
            v = sum(min(w * d, prefix[k]) for w in hours)
            if v - prev <= 0:
                break
            increments.append((v - prev, s))
            prev = v
    bound1 = fractional_knapsack(increments, total_storage)
    k2 = fractional_knapsack(single, total_storage)
    bound2 = sum(min(prefix[-1], w * k2) for w in hours)
    return min(bound1, bound2)


@dataclass
class Night:
    held: dict[str, Held]
    filled_bytes: int = 0
    added: int = 0
    deleted: int = 0
    skipped_budget: int = 0
    skipped_room: int = 0
    refused: bool = False


def apply_night(plan: Plan, held: Mapping[str, Held], capacity: int, budget: int | None) -> Night:
    """What oca-fill does with `plan` in one night (whole files; see fill/agent.py)."""
    out = Night(dict(held))
    if plan.delete_share > MAX_DELETE_SHARE:
        out.refused = True
        return out
    h = out.held
    # One deletion budget for the night, every path counted, as oca-fill keeps it.
    deletions = DeleteBudget.of_share(MAX_DELETE_SHARE, len(h), sum(x.size for x in h.values()))
    for cid in plan.delete_now:
        if cid in h and deletions.allows(1, h[cid].size):
            deletions = deletions.spend(1, h.pop(cid).size)
            out.deleted += 1
    if_needed = [c for c in plan.delete_if_needed if c in h]
    used = sum(x.size for x in h.values())
    stopped = False
    for f in plan.adds:
        if stopped:
            out.skipped_budget += 1
            continue
        if budget is not None and out.filled_bytes + f.size > budget and (out.filled_bytes > 0 or budget <= 0):
            out.skipped_budget += 1
            continue
        old = h.get(f.content_id)
        free = capacity - used + (old.size if old else 0)
        if f.size > free:
            where = {c: ("store", h[c].size) for c in if_needed}
            decision = place(f.size, [StoreRoom("store", True, free, 0)], {}, if_needed, where, deletions)
            if decision.store_uuid is None:
                out.skipped_room += 1
                continue
            for c in decision.evictions:
                size = h.pop(c).size
                deletions = deletions.spend(1, size)
                used -= size
                if_needed.remove(c)
                out.deleted += 1
        if old is not None:
            used -= old.size
        h[f.content_id] = Held(f.content_id, f.size, f.checksum, f.popularity)
        used += f.size
        out.added += 1
        out.filled_bytes += f.size
        if budget is not None and out.filled_bytes >= budget:
            stopped = True
    return out


def predict_mean(history: Sequence[Mapping[str, int]], sizes: Mapping[str, int], release: Mapping[str, int], ids: Iterable[str], today: int, window: int = 7) -> dict[str, float]:
    """Mean bytes per day of each id over the last `window` days it could be watched (ids without such a day are left out).

    `history[d]`: requests per id on day d (d < today); `release[cid]`: first day it could be watched.
    """
    out = {}
    first_day = max(0, today - window)
    for cid in ids:
        start = max(first_day, release[cid], 0)
        n_days = today - start
        if n_days <= 0:
            continue
        total = sum(history[d].get(cid, 0) for d in range(start, today))
        out[cid] = total * sizes[cid] / n_days
    return out


# --- forecasts of new releases ----------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """What the planner is told of a title the night before its release (and of everything on the first night).

    - ``oracle-noise:SD``: the title's true expected demand times log-normal
      noise of log-sd SD (a studio's forecast; 0.5 is the earlier model);
      the first night, every file's expectation so.
    - ``none``: nothing; a title predicts 0 until it has been seen.
    - ``history``: what could be known the night before: the title's kind
      (series or movie), its announced release, and the mean first-day
      requests of earlier releases of that kind in the same encode; not the
      day's drift nor the spike's size. With no earlier release, 0.
    For ``none`` and ``history`` the first night (the install fill) uses
    what the fleet saw of the back catalogue the day before the run
    (`Catalogue.pre_run_counts`), not an expectation.
    """

    kind: str  # "oracle-noise", "none", "history"
    noise_sd: float = 0.5

    @property
    def name(self) -> str:
        return f"oracle-noise:{self.noise_sd:g}" if self.kind == "oracle-noise" else self.kind


def parse_forecast(text: str) -> Forecast:
    if text in ("none", "history"):
        return Forecast(text)
    kind, _, sd = text.partition(":")
    if kind == "oracle-noise":
        try:
            value = float(sd)
        except ValueError:
            value = -1.0
        if value >= 0 and math.isfinite(value):
            return Forecast(kind, value)
    raise ValueError(f"forecast must be oracle-noise:SD (SD >= 0), none or history, not {text!r}")


def encode_of(cid: str) -> str:
    """The encode tag of a simulated content id (``s00012e03.hd720.mp4`` -> ``hd720``)."""
    return cid.split(".")[-2]


class ReleaseHistory:
    """Mean first-day requests of the releases seen so far, per (series?, encode): the `history` forecast.

    Fed one finished day at a time (`observe`), so a forecast for the night
    before day d uses days < d only.
    """

    def __init__(self) -> None:
        self.total: dict[tuple[bool, str], float] = {}
        self.n: dict[tuple[bool, str], int] = {}

    def observe(self, cat: Catalogue, day: int, counts: Mapping[str, int]) -> None:
        for t, title in enumerate(cat.titles):
            if title.release == day and day > 0:
                for i in cat.files_of[t]:
                    cid = cat.files[i].cid
                    key = (title.series, encode_of(cid))
                    self.total[key] = self.total.get(key, 0.0) + counts.get(cid, 0)
                    self.n[key] = self.n.get(key, 0) + 1

    def forecast_bytes(self, series: bool, cid: str, size: int) -> float:
        key = (series, encode_of(cid))
        n = self.n.get(key, 0)
        return self.total[key] / n * size if n else 0.0


# --- the planner under test ---------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """How the planner is run: its policy, the grace period, how popularity is predicted."""

    name: str
    policy: CopyPolicy
    grace_h: float
    window: int = 7  # days of history the prediction uses
    predictor: str = "mean"  # "mean": mean of the last `window` days; "ewma": fill.plan.predict_popularity with `alpha`
    alpha: float = POPULARITY_ALPHA
    forecast: Forecast = Forecast("oracle-noise", 0.5)
    passes: int = 1  # fill passes a day: the night's, then passes - 1 inside the window (see `pass_hours`)
    reserve: float = 0.0  # at most this share of the day's budget is left to the later passes (fill.plan.night_budget)
    pass_policy: PassPolicy = PassPolicy()
    pass_sees: str = "site"  # "site": a pass sees every request of the site's clients; "held": only those for files the site holds
    history_uncertain: bool = True  # the night's reserve counts history-forecast releases as without a forecast


# Before tuning: the planner's earlier defaults (copies by rank, order by popularity, extra copies not
# deferred), the agent's default grace period, popularity = mean bytes of the last 7 days.
BEFORE = Setup(
    "before",
    CopyPolicy(head_share=0.05, mid_share=0.20, mid_copies_share=0.5, load_headroom=0.0, order="popularity", keep_bonus=0.0, extra_copy_weight=1.0),
    grace_h=72.0,
    window=7,
)
# After: fill/plan.py's defaults as oca-fill runs them, popularity from fill.plan.predict_popularity.
AFTER = Setup("after", CopyPolicy(), grace_h=72.0, window=POPULARITY_WINDOW_DAYS, predictor="ewma")
# Today: AFTER as it ran before intra-day passes (one pass, the oracle forecast at noise 0.5): the reference
# the oracle-noise:0.5 target is checked against, on the same demand.
TODAY = replace(AFTER, name="today")
# With intra-day passes (tuned on seed 7, default configuration; the headline seeds are 2-6): the night
# leaves up to 70% of the day's budget to the passes, in proportion to the new bytes that come without a
# forecast (fill.plan.night_budget: with a forecast for every new file, nothing is held back). Rejected:
# a fixed reserve of half the budget (cost the oracle 0.6 points of offload on seed 7: the night's last
# additions wait for 03:00); CopyPolicy.keep_bonus 0.5 or 1.0 (helped `none` by up to 2 points with a fixed
# reserve, nothing once the reserve followed the forecast, and cost the oracle up to 1.4 points at 5%).
DEFAULT_PASSES = 4
DEFAULT_RESERVE = 0.7
DEFAULT_KEEP_BONUS = 0.0


@dataclass(frozen=True)
class Config:
    capacity: float = 0.20  # site storage as a share of the catalogue's bytes
    zipf: float = 0.8
    appliances: int = 4
    files: int = 3000
    days: int = 21
    warmup: int = 7
    requests: int = 100_000
    budget: float = 1.0  # the site's nightly fill budget, in days of new releases (all encodes); split over the appliances
    serve_headroom: float = 1.0  # site serving capacity / expected whole-site peak-hour demand

    def label(self) -> str:
        return f"cap {self.capacity:.0%} zipf {self.zipf} n={self.appliances}"


@dataclass(frozen=True)
class Site:
    appliances: tuple[SiteAppliance, ...]
    storage: int  # bytes per appliance
    budget: int  # bytes per appliance per night
    caps: tuple[float, ...]  # bytes per hour per appliance

    @property
    def gbps(self) -> float:
        return self.caps[0] * 8 / 3600 / 1e9


def make_site(config: Config, cat: Catalogue) -> Site:
    n = config.appliances
    appliances = tuple(SiteAppliance(f"oca-{i}", f"http://10.0.0.{i + 1}", 1.0) for i in range(n))
    storage = int(config.capacity * cat.total_bytes / n)
    new_per_day = sum(f.size for f in cat.files if cat.titles[f.title].release > 0) / max(1, cat.days - 1)
    budget = int(config.budget * new_per_day / n)
    mean_request = sum(x * f.size for x, f in zip(cat.expected_requests(cat.days - 1), cat.files)) / cat.requests_per_day
    site_peak = cat.requests_per_day * mean_request * max(HOURS)
    return Site(appliances, storage, budget, tuple([config.serve_headroom * site_peak / n] * n))


@dataclass
class Baselines:
    lru: list[DayStats]
    bound: list[float]
    hits: int
    evictions: int
    lru_overflow: list[DayStats] = field(default_factory=list)
    bound_expected: list[float] = field(default_factory=list)  # the bound on the day's expected demand
    expected_bytes: list[float] = field(default_factory=list)  # the day's expected demand, bytes


def run_baselines(config: Config, cat: Catalogue, demand: Sequence[Sequence[str]]) -> Baselines:
    """The LRU site and the offline bound, day by day (warm-up days included)."""
    site = make_site(config, cat)
    sizes = {f.cid: f.size for f in cat.files}
    index_of = {a.appliance_id: i for i, a in enumerate(site.appliances)}
    route = {cid: index_of[rank_appliances(cid, site.appliances)[0]] for cid in sizes}
    routes = {cid: tuple(index_of[a] for a in rank_appliances(cid, site.appliances)) for cid in sizes}
    caches = [Lru(site.storage) for _ in site.appliances]
    overflow = [Lru(site.storage) for _ in site.appliances]
    out = Baselines([], [], 0, 0)
    storage = [site.storage] * len(caches)
    for day, requests in enumerate(demand):
        counts = Counter(requests)
        out.lru.append(serve_lru_day(caches, route, requests, sizes, site.caps))
        out.lru_overflow.append(serve_lru_overflow_day(overflow, routes, requests, sizes, site.caps))
        out.bound.append(offline_bound(counts, sizes, storage, site.caps))
        expected = {f.cid: x for f, x in zip(cat.files, cat.expected_requests(day)) if x > 0}
        out.bound_expected.append(offline_bound(expected, sizes, storage, site.caps))
        out.expected_bytes.append(sum(x * sizes[cid] for cid, x in expected.items()))
    out.hits = sum(c.hits for c in caches)
    out.evictions = sum(c.evictions for c in caches)
    return out


def predict(setup: Setup, history: Sequence[Mapping[str, int]], sizes: Mapping[str, int], release: Mapping[str, int], ids: Sequence[str], today: int) -> dict[str, float]:
    if setup.predictor == "mean":
        return predict_mean(history, sizes, release, ids, today, setup.window)
    if setup.predictor == "ewma":
        out = {}
        first = max(0, today - setup.window)
        for cid in ids:
            start = max(first, release[cid])
            if start < today:
                size = sizes[cid]
                out[cid] = predict_popularity([history[d].get(cid, 0) * size for d in range(start, today)], setup.alpha)
        return out
    raise ValueError(f"unknown predictor {setup.predictor!r}")


@dataclass
class PlannerRun:
    days: list[DayStats]
    filled: list[list[int]]  # per night, per appliance
    refused: int = 0


def run_planner(config: Config, setup: Setup, cat: Catalogue, demand: Sequence[Sequence[str]]) -> PlannerRun:
    """The real planner, night by night and pass by pass, and the days it serves (warm-up days included)."""
    site = make_site(config, cat)
    n = len(site.appliances)
    ids = [a.appliance_id for a in site.appliances]
    sizes = {f.cid: f.size for f in cat.files}
    release = {f.cid: cat.titles[f.title].release for f in cat.files}
    series = {f.cid: cat.titles[f.title].series for f in cat.files}
    held: list[dict[str, Held]] = [{} for _ in range(n)]
    unchosen: list[dict[str, float]] = [{} for _ in range(n)]
    history: list[Counter] = []
    releases = ReleaseHistory()
    fc = setup.forecast
    extra_hours = pass_hours(setup.passes)
    cum = [0.0]
    for w in HOURS:
        cum.append(cum[-1] + w)
    out = PlannerRun([], [])
    budgets = [site.budget] * n
    for day, requests in enumerate(demand):
        # The night before `day`: predict, plan, fill.
        avail = cat.available(day)
        avail_ids = [cat.files[i].cid for i in avail]
        if day == 0:
            if fc.kind == "oracle-noise":
                pop = cat.announced_bytes(0, fc.noise_sd)
            else:
                pop = {cid: n_req * sizes[cid] for cid, n_req in cat.pre_run_counts().items()}
        else:
            pop = predict(setup, history, sizes, release, avail_ids, day)
            missing = [cid for cid in avail_ids if cid not in pop]  # released tomorrow
            if fc.kind == "oracle-noise":
                announced = cat.announced_bytes(day, fc.noise_sd)
                for cid in missing:
                    pop[cid] = announced.get(cid, 0.0)
            elif fc.kind == "history":
                for cid in missing:
                    pop[cid] = releases.forecast_bytes(series[cid], cid, sizes[cid])
        manifest = build_manifest(cat, avail, pop, site.appliances)
        wanted: set[str] = set()
        filled = [0] * n
        new_files = [f for f in manifest.files if release[f.content_id] == day] if day > 0 else []
        # A history forecast is one number per kind of release: it says nothing of the title, so the
        # night leaves the passes the same share as without a forecast (it still orders the night by it).
        uncertain = {f.content_id for f in new_files} if fc.kind == "history" and setup.history_uncertain else set()
        # With passes, the day's budget repays what the last day spent beyond it (`day_budget`: a pass's first
        # file, like a run's, may end past what is left).
        budgets = [site.budget if day <= 1 or setup.passes <= 1 else day_budget(site.budget, budgets[a], out.filled[-1][a]) for a in range(n)]
        pending: list[list] = [[] for _ in range(n)]  # the night plan's additions not made: the passes may still make them
        for a, aid in enumerate(ids):
            plan = plan_fill(manifest, aid, SITE, held[a], site.storage, T0 + day * DAY_S, setup.grace_h * 3600, unchosen[a], setup.policy)
            wanted.update(plan.keep)
            wanted.update(f.content_id for f in plan.adds)
            budget_tonight = None if day == 0 else budgets[a] if setup.passes <= 1 else night_budget(budgets[a], new_files, setup.reserve, uncertain)
            night = apply_night(plan, held[a], site.storage, budget_tonight)
            if night.refused:
                out.refused += 1
            else:
                unchosen[a] = dict(plan.unchosen_since)
            held[a] = night.held
            filled[a] = night.filled_bytes
            pending[a] = [f for f in plan.adds if f.content_id not in night.held or night.held[f.content_id].checksum != f.checksum]
        # The day, cut at the passes inside the window.
        bounds = hour_bounds(len(requests))
        stats = DayStats()
        start = 0
        for h in extra_hours + [24]:
            end = min(24, h + 1)  # a pass at h serves from h + 1 on
            holders: dict[str, int] = {}
            for a in range(n):
                bit = 1 << a
                for cid in held[a]:
                    holders[cid] = holders.get(cid, 0) | bit
            if end > start:
                share = cum[end] - cum[start]
                weights = [w / share for w in HOURS[start:end]]
                stats.add(account_site(Counter(requests[bounds[start]:bounds[end]]), sizes, holders, wanted, site.caps, weights))
                start = end
            if h >= 24:
                break
            # The pass at hour h: requests of hours < h, what is left of the budget and of the window.
            observed = Counter(requests[:bounds[h]])
            if setup.pass_sees == "held":  # an appliance's own counter: steering never sends it a file the site lacks
                observed = Counter({cid: k for cid, k in observed.items() if cid in holders})
            window_left = site.budget * (WINDOW_END_H - h) / (WINDOW_END_H - WINDOW_START_H)
            for a, aid in enumerate(ids):
                left = int(min(budgets[a] - filled[a], window_left))
                if left <= 0 or cum[h] <= 0:
                    continue
                planned = [f for f in pending[a] if f.content_id not in held[a]]
                pp = plan_pass(manifest, aid, SITE, held[a], holders.keys(), observed, cum[h], site.storage, left, setup.pass_policy, planned,
                               uncertain)
                for cid in pp.deletes:
                    del held[a][cid]
                for f in pp.adds:
                    held[a][f.content_id] = Held(f.content_id, f.size, f.checksum, f.popularity)
                    wanted.add(f.content_id)
                filled[a] += pp.add_bytes
                for f in pp.adds:
                    holders[f.content_id] = holders.get(f.content_id, 0) | (1 << a)
        out.days.append(stats)
        out.filled.append(filled)
        counts = Counter(requests)
        history.append(counts)
        releases.observe(cat, day, counts)
    return out


@dataclass
class Result:
    config: Config
    setup: str
    days: list[dict]  # per reported day
    ours: DayStats
    lru: DayStats
    bound_bytes: float
    filled: list[int]  # bytes filled per appliance over the reported nights
    lru_hits: int = 0
    lru_evictions: int = 0
    refused_nights: int = 0
    seconds: float = 0.0
    seed: int = 0
    forecast: str = ""
    lru_overflow: DayStats = field(default_factory=DayStats)
    bound_expected_bytes: float = 0.0  # the bound on expected demand, summed over the reported days
    expected_bytes: float = 0.0  # expected demand, bytes, over the reported days

    @property
    def bound_offload(self) -> float:
        return self.bound_bytes / self.ours.bytes if self.ours.bytes else 0.0

    @property
    def bound_expected_offload(self) -> float:
        return self.bound_expected_bytes / self.expected_bytes if self.expected_bytes else 0.0

    @property
    def ratio(self) -> float:
        return self.ours.byte_offload / self.bound_offload if self.bound_offload else 0.0

    @property
    def closed(self) -> float:
        gap = self.bound_offload - self.lru.byte_offload
        return (self.ours.byte_offload - self.lru.byte_offload) / gap if gap > 0 else float("nan")


def build_manifest(cat: Catalogue, ids: Sequence[int], popularity: Mapping[str, float], appliances: Sequence[SiteAppliance]) -> Manifest:
    files = []
    for i in ids:
        f = cat.files[i]
        files.append(ManifestFile(f.cid, f.size, f"{i:032x}", 0, float(popularity.get(f.cid, 0.0)), (f"https://origin.example/{f.cid}",)))
    return Manifest(1, tuple(files), {SITE: tuple(appliances)})


def run(
    config: Config, setup: Setup, seed: int, cat: Catalogue | None = None, demand: Sequence[Sequence[str]] | None = None,
    baselines: Baselines | None = None,
) -> Result:
    """One configuration, one planner setup: totals and per-day figures over the reported days."""
    started = time.perf_counter()
    total_days = config.warmup + config.days
    if cat is None:
        cat = make_catalogue(seed, config.files, total_days, config.zipf, config.requests)
    if demand is None:
        demand = [cat.day_requests(d) for d in range(total_days)]
    if baselines is None:
        baselines = run_baselines(config, cat, demand)
    pr = run_planner(config, setup, cat, demand)
    n = config.appliances
    ours_total, lru_total, overflow_total = DayStats(), DayStats(), DayStats()
    bound_total = bound_expected = expected = 0.0
    filled = [0] * n
    per_day = []
    for day in range(config.warmup, total_days):
        ours, lru, bound = pr.days[day], baselines.lru[day], baselines.bound[day]
        ours_total.add(ours)
        lru_total.add(lru)
        overflow_total.add(baselines.lru_overflow[day])
        bound_total += bound
        bound_expected += baselines.bound_expected[day]
        expected += baselines.expected_bytes[day]
        for a in range(n):
            filled[a] += pr.filled[day][a]
        per_day.append({"day": day - config.warmup + 1, "ours": ours, "lru": lru, "bound": bound, "filled": pr.filled[day]})
    return Result(
        config, setup.name, per_day, ours_total, lru_total, bound_total, filled,
        baselines.hits, baselines.evictions, pr.refused, time.perf_counter() - started,
        seed, setup.forecast.name, overflow_total, bound_expected, expected,
    )


# --- report ----------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def print_days(r: Result, out=sys.stdout) -> None:
    n = r.config.appliances
    print(f"\nper day: {r.config.label()} planner={r.setup}", file=out)
    print(" day  ours-B  ours-R   lru-B   lru-R  bound-B  ours/bnd | ours misses: content  budget  health | filled GB per appliance", file=out)
    for d in r.days:
        o, l, b = d["ours"], d["lru"], d["bound"]
        bo = b / o.bytes
        fills = " ".join(f"{x / 1e9:6.0f}" for x in d["filled"][:n])
        print(
            f" {d['day']:3d}  {pct(o.byte_offload)} {pct(o.request_offload)}  {pct(l.byte_offload)} {pct(l.request_offload)}  {pct(bo)}  "
            f"{o.byte_offload / bo if bo else 0:7.3f}  |  {pct(o.content_miss_bytes / o.bytes)}  {pct(o.budget_miss_bytes / o.bytes)}  "
            f"{pct(o.health_miss_bytes / o.bytes)}  | {fills}",
            file=out,
        )


HEADER = (
    "config                          planner                       ours-B  ours-R   lru-B   lru-R  bound-B  ours/bnd  closed | "
    "bound-E  lru-ovf-B | ours misses: content  budget  health | lru misses: content  health | fill GB/app/night  targets"
)
MIN_HEADER = "min over seeds: ours/bnd  closed | "


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def row(rs: Sequence[Result]) -> str:
    """The totals row of one configuration and setup; over several seeds, the mean of each figure, and the minima after the first `|`."""
    r = rs[0]

    def m(f) -> float:
        return mean([f(x) for x in rs])

    ratio, closed = m(lambda x: x.ratio), m(lambda x: x.closed)
    nights = max(1, len(r.days))
    fill = m(lambda x: sum(x.filled) / x.config.appliances / nights / 1e9)
    ok1 = min(x.ratio for x in rs) >= 0.95
    ok2 = min(x.closed for x in rs) >= 0.6
    targets = ("PASS" if ok1 else "MISS") + "/" + ("PASS" if ok2 else "MISS")
    mins = f"min {min(x.ratio for x in rs):7.3f}  {min(x.closed for x in rs):6.2f} | " if len(rs) > 1 else ""
    return (
        f"{r.config.label():31s} {r.setup:28s}  {pct(m(lambda x: x.ours.byte_offload))} {pct(m(lambda x: x.ours.request_offload))}  "
        f"{pct(m(lambda x: x.lru.byte_offload))} {pct(m(lambda x: x.lru.request_offload))}  "
        f"{pct(m(lambda x: x.bound_offload))}  {ratio:7.3f}  {closed:6.2f} | {mins}"
        f"{pct(m(lambda x: x.bound_expected_offload))}     {pct(m(lambda x: x.lru_overflow.byte_offload))} |"
        f"              {pct(m(lambda x: x.ours.content_miss_bytes / x.ours.bytes))}  "
        f"{pct(m(lambda x: x.ours.budget_miss_bytes / x.ours.bytes))}  {pct(m(lambda x: x.ours.health_miss_bytes / x.ours.bytes))} |"
        f"              {pct(m(lambda x: x.lru.content_miss_bytes / x.lru.bytes))}  "
        f"{pct(m(lambda x: x.lru.health_miss_bytes / x.lru.bytes))} | {fill:17.1f}  {targets}"
    )


# --- targets (issue 14) ----------------------------------------------------------------------

MATRIX_TARGET = (0.95, 0.6)  # ours/bound and closed, with `history`, in >= MATRIX_MIN_PASSING of the 18 configurations
MATRIX_MIN_PASSING = 16
DEFAULT_TARGETS = {"history": (0.95, 0.6), "none": (0.93, 0.5)}  # the default configuration, on any seed
REFERENCE = "today"  # the setup before intra-day passes, run on the same demand when the targets need it


def is_default(cfg: Config) -> bool:
    return (cfg.capacity, cfg.zipf, cfg.appliances) == (0.20, 0.8, 4)


def target_lines(results: Sequence[Result], full_matrix: bool) -> list[str]:
    """Each target of issue 14 the run can judge, PASS or MISS, with the measured figures."""
    out = []
    seeds = sorted({r.seed for r in results})
    setups = list(dict.fromkeys(r.setup for r in results))
    lo1, lo2 = MATRIX_TARGET
    for setup in setups:
        rs = [r for r in results if r.setup == setup]
        fc = rs[0].forecast
        if full_matrix and fc == "history":
            for seed in seeds:
                mine = [r for r in rs if r.seed == seed]
                bad = [r for r in mine if not (r.ratio >= lo1 and r.closed >= lo2)]
                ok = len(mine) - len(bad)
                verdict = "PASS" if ok >= MATRIX_MIN_PASSING else "MISS"
                names = "; ".join(f"{r.config.label()} {r.ratio:.3f}/{r.closed:.2f}" for r in bad)
                out.append(
                    f"target {setup}, seed {seed}: ours/bnd>={lo1} and closed>={lo2} in {ok} of {len(mine)} configurations "
                    f"(>= {MATRIX_MIN_PASSING} needed): {verdict}" + (f"; misses: {names}" if names else "")
                )
        if fc in DEFAULT_TARGETS:
            t1, t2 = DEFAULT_TARGETS[fc]
            for r in rs:
                if is_default(r.config):
                    verdict = "PASS" if r.ratio >= t1 and r.closed >= t2 else "MISS"
                    out.append(
                        f"target {setup}, default config, seed {r.seed}: ours/bnd {r.ratio:.3f} (>= {t1}), closed {r.closed:.2f} (>= {t2}): {verdict}"
                    )
        if fc == "oracle-noise:0.5" and setup != REFERENCE:
            ref = {(r.config, r.seed): r for r in results if r.setup == REFERENCE}
            for seed in seeds:
                pairs = [(r, ref[(r.config, r.seed)]) for r in rs if r.seed == seed and (r.config, r.seed) in ref]
                if not pairs:
                    continue
                # No worse: the same demand, so the offload itself is compared (a rounding-level tolerance).
                worse = [(r, t) for r, t in pairs if r.ours.hit_bytes < t.ours.hit_bytes * (1 - 1e-4)]
                verdict = "PASS" if not worse else "MISS"
                diff = mean([r.ratio - t.ratio for r, t in pairs])
                names = "; ".join(f"{r.config.label()} {r.ratio:.3f} vs {t.ratio:.3f}" for r, t in worse)
                out.append(
                    f"target {setup} no worse than {REFERENCE} (byte offload on the same demand), seed {seed}: "
                    f"{len(pairs) - len(worse)} of {len(pairs)} configurations no worse, mean ours/bnd change {diff:+.4f}: {verdict}"
                    + (f"; worse: {names}" if names else "")
                )
    return out


def plot(results: list[Result], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if len({(r.config) for r in results}) == 1:
        fig, ax = plt.subplots(figsize=(9, 5))
        r0 = results[0]
        days = [d["day"] for d in r0.days]
        ax.plot(days, [d["bound"] / d["ours"].bytes for d in r0.days], "k--", label="offline bound")
        ax.plot(days, [d["lru"].byte_offload for d in r0.days], label="LRU pull-through")
        for r in results:
            ax.plot(days, [d["ours"].byte_offload for d in r.days], label=f"planner ({r.setup})")
        ax.set_xlabel("day")
        ax.set_ylabel("byte offload")
        ax.set_title(r0.config.label())
        ax.legend()
    else:
        fig, ax = plt.subplots(figsize=(14, 6))
        labels = []
        series: dict[str, list[float]] = {}
        seen = []
        for r in results:
            if r.config not in seen:
                seen.append(r.config)
                labels.append(r.config.label().replace(" ", "\n", 2))
                series.setdefault("bound", []).append(r.bound_offload)
                series.setdefault("lru", []).append(r.lru.byte_offload)
            series.setdefault(f"ours ({r.setup})", []).append(r.ours.byte_offload)
        width = 0.8 / len(series)
        for k, (name, vals) in enumerate(series.items()):
            ax.bar([i + k * width for i in range(len(vals))], vals, width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("byte offload")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_config(job: tuple[Config, Sequence[Setup], int]) -> tuple[str, list[Result]]:
    """One configuration and seed for every setup (same catalogue, demand, LRU and bounds)."""
    cfg, setups, seed = job
    cat = make_catalogue(seed, cfg.files, cfg.warmup + cfg.days, cfg.zipf, cfg.requests)
    demand = [cat.day_requests(d) for d in range(cfg.warmup + cfg.days)]
    site = make_site(cfg, cat)
    released = sum(1 for t in cat.titles if t.release > 0)
    info = (
        f"seed {seed} {cfg.label()}: catalogue {len(cat.files)} files, {cat.total_bytes / 1e12:.2f} TB ({released} of {len(cat.titles)} titles "
        f"released during the run); per appliance {site.storage / 1e12:.3f} TB storage, {site.budget / 1e9:.1f} GB/night fill budget, "
        f"{site.gbps:.0f} Gb/s serving at peak"
    )
    baselines = run_baselines(cfg, cat, demand)
    return info, [run(cfg, s, seed, cat, demand, baselines) for s in setups]


def parse_seeds(text: str) -> list[int]:
    """``7`` or ``2..6`` (inclusive)."""
    first, sep, last = text.partition("..")
    try:
        a, b = int(first), int(last) if sep else int(first)
    except ValueError:
        raise ValueError(f"seeds must be N or A..B, not {text!r}") from None
    if b < a:
        raise ValueError(f"seeds {text!r}: the range is empty")
    return list(range(a, b + 1))


def make_setups(
    planner: str, forecasts: Sequence[Forecast], passes: int, reserve: float, policy: PassPolicy, keep_bonus: float = DEFAULT_KEEP_BONUS,
    pass_sees: str = "site", history_uncertain: bool = True,
) -> list[Setup]:
    """The planner setups to run: each planner x forecast, with `passes` passes a day; `today`, the setup
    before intra-day passes, first when oracle-noise:0.5 is asked for with any change, to check it is no worse."""
    base = {"before": [BEFORE], "after": [AFTER], "both": [BEFORE, AFTER]}[planner]
    out = []
    for b in base:
        for fc in forecasts:
            prefix = "before " if b is BEFORE else ""
            name = (
                f"{prefix}{fc.name} p{passes}" + (f" r{reserve:g}" if passes > 1 else "") + (f" k{keep_bonus:g}" if b is AFTER and keep_bonus else "")
                + (" held" if passes > 1 and pass_sees == "held" else "")
                + (" certain" if fc.kind == "history" and passes > 1 and not history_uncertain else "")
            )
            cp = replace(b.policy, keep_bonus=keep_bonus) if b is AFTER else b.policy
            out.append(
                replace(b, name=name, policy=cp, forecast=fc, passes=passes, reserve=reserve if passes > 1 else 0.0, pass_policy=policy, pass_sees=pass_sees,
                        history_uncertain=history_uncertain)
            )
    if planner != "before" and any(s.forecast == TODAY.forecast and (s.policy, s.passes, s.reserve) != (TODAY.policy, 1, 0.0) for s in out):
        out.insert(0, TODAY)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", default=None, help="A..B: run every seed from A to B and print the mean and the minimum of each figure (overrides --seed)")
    p.add_argument("--all", action="store_true", help="the whole matrix: capacity 5/20/50%%, zipf 0.6/0.8/1.0, 1 and 4 appliances")
    p.add_argument("--planner", choices=("before", "after", "both"), default="after")
    p.add_argument(
        "--forecast", default="oracle-noise:0.5",
        help="what the planner knows of a title before its release: oracle-noise:SD, none or history; several, comma-separated, run on the same demand",
    )
    p.add_argument("--passes", type=int, default=DEFAULT_PASSES, help="fill passes a day: the night's, then the others inside the fill window")
    p.add_argument(
        "--reserve", type=float, default=DEFAULT_RESERVE,
        help="the night's pass leaves this share of the day's fill budget to the later passes, times the share of new bytes that come without a forecast",
    )
    p.add_argument("--keep-bonus", type=float, default=DEFAULT_KEEP_BONUS, help="CopyPolicy.keep_bonus of the planner run with passes")
    p.add_argument(
        "--pass-sees", choices=("site", "held"), default="site",
        help="what the passes count: every request of the site's clients (default; needs steering's count of requests it could not "
        "send to the site), or only requests for files the site holds (the appliances' own counters)",
    )
    p.add_argument(
        "--history-certain", action="store_true",
        help="take a history forecast as if it were about the title: no reserve for the passes, and the passes weigh it "
        "(the default counts it as no forecast for both, while the night still orders by it)",
    )
    p.add_argument("--pass-min-requests", type=int, default=PassPolicy().min_requests)
    p.add_argument("--pass-margin", type=float, default=PassPolicy().margin)
    p.add_argument("--capacity", type=float, default=0.20)
    p.add_argument("--zipf", type=float, default=0.8)
    p.add_argument("--appliances", type=int, default=4)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--days", type=int, default=21)
    p.add_argument("--warmup", type=int, default=7)
    p.add_argument("--requests", type=int, default=100_000, help="requests per day")
    p.add_argument("--budget", type=float, default=1.0, help="the site's nightly fill budget in days of new releases (mean bytes released per day, all encodes), split evenly over its appliances")
    p.add_argument("--serve-headroom", type=float, default=1.0, help="site serving capacity / expected peak-hour demand")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="configurations run in parallel (processes)")
    p.add_argument("--per-day", action="store_true", help="per-day tables for every configuration (default: only for a single one)")
    p.add_argument("--png", default=None, help="plot file (default: offload-<seed>[-all].png in the temp directory; only when matplotlib is installed)")
    args = p.parse_args(argv)
    if not 1 <= args.appliances <= 16:
        p.error("--appliances must be 1 to 16")
    if not 1 <= args.passes <= WINDOW_END_H - WINDOW_START_H:
        p.error(f"--passes must be 1 to {WINDOW_END_H - WINDOW_START_H}")
    if not 0 <= args.reserve < 1:
        p.error("--reserve must be in [0, 1)")
    try:
        forecasts = [parse_forecast(x.strip()) for x in args.forecast.split(",")]
        seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
        policy = PassPolicy(args.pass_min_requests, args.pass_margin)
    except ValueError as e:
        p.error(str(e))
    setups = make_setups(args.planner, forecasts, args.passes, args.reserve, policy, args.keep_bonus, args.pass_sees,
                         not args.history_certain)
    base = Config(args.capacity, args.zipf, args.appliances, args.files, args.days, args.warmup, args.requests, args.budget, args.serve_headroom)
    if args.all:
        configs = [
            Config(c, z, n, args.files, args.days, args.warmup, args.requests, args.budget, args.serve_headroom)
            for c in (0.05, 0.20, 0.50) for z in (0.6, 0.8, 1.0) for n in (1, 4)
        ]
    else:
        configs = [base]
    started = time.perf_counter()
    seed_text = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    print(
        f"offload benchmark: {seed_text}, {args.files} files, {args.warmup}+{args.days} days, {args.requests} requests/day, "
        f"site fill budget {args.budget:g} x new-release bytes per day per night, site serving capacity {args.serve_headroom:g} x expected peak; "
        f"fill passes at {', '.join(f'{h:02d}:00' for h in [WINDOW_START_H] + pass_hours(args.passes))}"
    )
    jobs = [(cfg, setups, seed) for seed in seeds for cfg in configs]
    results: list[Result] = []
    n_jobs = max(1, min(args.jobs, len(jobs)))

    def take(info: str, rs: list[Result]) -> None:
        results.extend(rs)
        for r in rs:
            print(f"  ran seed {r.seed} {r.config.label()} planner={r.setup} in {r.seconds:.1f}s", file=sys.stderr)
        print(info)

    if n_jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(n_jobs) as pool:
            for info, rs in pool.imap(run_config, jobs):
                take(info, rs)
    else:
        for job in jobs:
            take(*run_config(job))
    if (not args.all and len(seeds) == 1) or args.per_day:
        for r in results:
            print_days(r)
    legend = (
        "B = byte offload, R = request offload; closed = (ours-lru)/(bound-lru) with the plain LRU and the bound on realised demand; "
        "bound-E = the bound on expected demand; lru-ovf = LRU that overflows to a file's second appliance when the first is saturated"
    )
    for seed in seeds:
        print()
        print(f"totals over the reported days, seed {seed} ({legend}; targets: ours/bnd>=0.95, closed>=0.6)")
        print(HEADER)
        for r in results:
            if r.seed == seed:
                print(row([r]))
    if len(seeds) > 1:
        print()
        print(f"mean over {seed_text} (min over the seeds after the first |; targets: PASS only if every seed passes)")
        print(HEADER.replace(" | ", " | " + MIN_HEADER, 1))
        for cfg in configs:
            for s in setups:
                print(row([r for r in results if r.config == cfg and r.setup == s.name]))
    for r in results:
        if r.refused_nights:
            print(f"note: seed {r.seed} {r.config.label()} {r.setup}: {r.refused_nights} appliance-nights refused by max_delete_share")
    lru_line = ", ".join(f"{r.config.label()}: {r.lru_hits} hits {r.lru_evictions} evictions" for r in results if r.setup == setups[0].name and r.seed == seeds[0])
    print(f"lru (seed {seeds[0]}): {lru_line}")
    print()
    for line in target_lines(results, args.all):
        print(line)
    path = args.png or os.path.join(tempfile.gettempdir(), f"offload-{args.seed}{'-all' if args.all else ''}.png")
    got = plot([r for r in results if r.seed == seeds[0]], path)
    print(f"plot: {got}" if got else "plot: matplotlib not installed, no PNG")
    print(f"total {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
