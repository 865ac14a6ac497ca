"""Fill planning: which files this appliance should hold, what to add and delete.

Nothing here performs I/O or reads the clock; `now_s` is an argument.
Rules kept here:
- Placement is weighted rendezvous (highest-random-weight) hashing of each
  content id over the site's appliances: every appliance computes the same
  answer alone, and when one joins or leaves only about 1/N of the files
  move. Score = -weight / ln(u), u uniform in (0, 1) from xxh3-64 of
  "<appliance id>\\0<content id>" (Schindelhauer and Schomaker's weighted
  form, so an appliance of weight 2 gets twice the files).
- The number of copies grows with popularity (`CopyPolicy`): by default a
  file carrying share s of the site's predicted bytes gets ceil(4 n s)
  copies (so one file never loads an appliance past a quarter of its even
  share), at least one, at most n; a rank rule (head of the catalogue on
  every appliance) can be added.
- Of what is placed here, the most valuable files that fit in the capacity
  are chosen, greedily: by default by predicted bytes per day per stored
  byte (`order="density"`, the knapsack order), else by popularity; a file
  that does not fit is skipped and smaller ones after it may still fit.
- The plan: additions most valuable first, first copies before extra ones
  (`extra_copy_weight`), since the nightly budget may stop the run early; a
  held file the manifest no longer lists is deleted at once; a held file
  still listed but no longer chosen is deleted least valuable first only
  when space is needed, or once it has been unchosen for the grace period.
  A held file whose checksum differs from the manifest's is replaced (it is
  an addition).
- `predict_popularity` is the recommended way to turn a file's past daily
  bytes into the manifest's popularity (an exponentially weighted mean).
- Without a site list, or when this appliance is not in its site's list,
  the site is this appliance alone.
- Placement of one addition is one decision (`place`): the target store
  together with the deletions it needs, within the run's one deletion
  budget (`DeleteBudget`), which every deletion of a run is counted against.
- A pass reads the appliance's request counters since the night's mark
  (`observed_plays`: body bytes / size for a file held here, requests for
  one it lacks, where each request is a client sent away) and turns them
  into a share of a day (`observed_share`): the mark's requests against the
  counters' daily mean once they cover a day, else elapsed time over 24 h.
- An intra-day pass (`plan_pass`) only adds what was requested since the
  night and is missing from the whole site, on the file's first rendezvous
  holder, and what the night's plan chose but left to the passes, within
  what is left of the budget (its first addition may end past it, as a
  run's first file may; `day_budget` takes any overshoot from the next
  day's budget); it deletes only to make room,
  and only files worth less than the addition by a margin. The night's plan
  stays the one that shapes the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Sequence

from fill.manifest import Manifest, ManifestFile, SiteAppliance
from oca.rendezvous import hrw_score
from oca.store.demand import DemandSnapshot
from oca.store.layout import StoreRoom, choose_store


@dataclass(frozen=True, slots=True)
class CopyPolicy:
    """How many copies a file gets in a site of n appliances, and in which order files are taken.

    Copies, the larger of two rules:
    - by rank: the top `head_share` of files (by popularity) go on every
      appliance, the next `mid_share` on `ceil(n * mid_copies_share)`, the
      rest on one;
    - by load: a file whose share of the site's predicted bytes is `share`
      gets `ceil(n * share * load_headroom)` copies (0 turns this off), so no
      appliance has to carry more than `1 / load_headroom` of its even share
      of the site's load because of one file.
    Copies are bounded by 1 and n; files of zero popularity get one.

    Order (`order`): "popularity" takes files by predicted bytes per day;
    "density" by predicted bytes per day per stored byte (plays per day), the
    greedy order of a knapsack, so storage and the fill budget go where they
    serve the most bytes. `keep_bonus`: a file already held counts
    (1 + keep_bonus) times as valuable when choosing, so noise in the
    prediction does not swap files in and out at the cost of the nightly
    budget. `extra_copy_weight`: when ordering the additions (the nightly
    budget may not cover them all), an extra copy (this appliance is not the
    file's first rendezvous holder) counts this many times its value: 1 keeps
    the choice order, 0 adds every first copy before any extra one.
    """

    # Defaults tuned with benchmarks/offload.py (the rank rule, order "popularity"
    # and extra_copy_weight 1 were the earlier defaults; see that file's report).
    head_share: float = 0.0
    mid_share: float = 0.0
    mid_copies_share: float = 0.5
    load_headroom: float = 4.0
    order: str = "density"
    keep_bonus: float = 0.0
    extra_copy_weight: float = 0.25

    def __post_init__(self) -> None:
        if self.order not in ("popularity", "density"):
            raise ValueError(f"order must be 'popularity' or 'density', not {self.order!r}")

    def copies(self, rank: int, total: int, n: int, popularity: float, share: float | None = None) -> int:
        if n <= 1 or popularity <= 0 or total <= 0:
            return 1
        k = 1
        position = rank / total
        if position < self.head_share:
            k = n
        elif position < self.head_share + self.mid_share:
            k = max(1, min(n, math.ceil(n * self.mid_copies_share)))
        if share is not None and self.load_headroom > 0:
            k = max(k, min(n, math.ceil(n * share * self.load_headroom - 1e-9)))
        return k


@dataclass(frozen=True, slots=True)
class Held:
    """A file this appliance holds now."""

    content_id: str
    size: int
    checksum: str
    popularity: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    adds: tuple[ManifestFile, ...]
    delete_now: tuple[str, ...]  # not in the manifest, or unchosen past the grace period
    delete_if_needed: tuple[str, ...]  # unchosen, least popular first
    keep: tuple[str, ...]
    add_bytes: int
    delete_now_bytes: int
    chosen_bytes: int
    capacity_bytes: int
    held_bytes: int
    unchosen_since: Mapping[str, float] = field(default_factory=dict)
    placed_here: int = 0
    site_size: int = 1

    @property
    def delete_share(self) -> float:
        """Share of what is held (by bytes or by count, the larger) that delete_now removes."""
        # The count share counts even when held_bytes is 0, so deleting
        # every (zero-byte) file is never a share of 0.
        n_held = len(self.keep) + len(self.delete_now) + len(self.delete_if_needed)
        by_bytes = self.delete_now_bytes / self.held_bytes if self.held_bytes > 0 else 0.0
        by_count = len(self.delete_now) / n_held if n_held else 0.0
        return max(by_bytes, by_count)


def rank_appliances(content_id: str, appliances: Sequence[SiteAppliance]) -> list[str]:
    """Appliance ids, best first, for `content_id` (ties broken by id)."""
    scored = sorted(((hrw_score(a.appliance_id, content_id, a.weight), a.appliance_id) for a in appliances), key=lambda t: (-t[0], t[1]))
    return [aid for _s, aid in scored]


def by_popularity(files: Iterable[ManifestFile]) -> list[ManifestFile]:
    """Most popular first; ties by id so every appliance agrees."""
    return sorted(files, key=lambda f: (-f.popularity, f.content_id))


def site_of(manifest: Manifest, me: str, my_site: str) -> tuple[SiteAppliance, ...]:
    members = manifest.sites.get(my_site)
    if members and any(a.appliance_id == me for a in members):
        return members
    return (SiteAppliance(me, "", 1.0),)


def placement(manifest: Manifest, appliances: Sequence[SiteAppliance], policy: CopyPolicy = CopyPolicy()) -> dict[str, tuple[str, ...]]:
    """content id → the appliances of the site that should hold it."""
    ordered = by_popularity(manifest.files)
    total = len(ordered)
    total_pop = sum(f.popularity for f in ordered)
    n = len(appliances)
    out = {}
    for rank, f in enumerate(ordered):
        share = f.popularity / total_pop if total_pop > 0 else 0.0
        k = policy.copies(rank, total, n, f.popularity, share)
        out[f.content_id] = tuple(rank_appliances(f.content_id, appliances)[:k])
    return out


def value_order(files: Iterable[ManifestFile], policy: CopyPolicy = CopyPolicy(), held: Mapping[str, "Held"] | None = None) -> list[ManifestFile]:
    """Most valuable first under `policy.order` (and its `keep_bonus` for files in `held`); ties by id."""
    held = held or {}
    return sorted(files, key=lambda f: (-_value(f, policy, held), f.content_id))


def _value(f: ManifestFile, policy: CopyPolicy, held: Mapping[str, "Held"]) -> float:
    v = f.popularity
    if policy.order == "density":
        v = v / f.size if f.size > 0 else (math.inf if v > 0 else 0.0)
    h = held.get(f.content_id)
    if policy.keep_bonus and h is not None and h.checksum == f.checksum:
        v *= 1.0 + policy.keep_bonus
    return v


def _fill_greedy(ordered: Iterable[ManifestFile], capacity_bytes: int) -> list[ManifestFile]:
    chosen = []
    used = 0
    for f in ordered:
        if used + f.size <= capacity_bytes:
            chosen.append(f)
            used += f.size
    return chosen


def choose(files: Sequence[ManifestFile], capacity_bytes: int) -> list[ManifestFile]:
    """The most popular files that fit, in popularity order."""
    return _fill_greedy(by_popularity(files), capacity_bytes)


def plan_fill(
    manifest: Manifest,
    me: str,
    my_site: str,
    held: Mapping[str, Held],
    capacity_bytes: int,
    now_s: float,
    grace_s: float,
    unchosen_since: Mapping[str, float] | None = None,
    policy: CopyPolicy = CopyPolicy(),
) -> Plan:
    """Compare what should be here with what is here."""
    unchosen_since = dict(unchosen_since or {})
    appliances = site_of(manifest, me, my_site)
    placed = placement(manifest, appliances, policy)
    listed = manifest.by_id()
    mine = [f for f in manifest.files if me in placed[f.content_id]]
    if policy.order == "popularity" and not policy.keep_bonus:
        chosen = choose(mine, capacity_bytes)
    else:
        chosen = _fill_greedy(value_order(mine, policy, held), capacity_bytes)
    chosen_ids = {f.content_id for f in chosen}
    adds = tuple(f for f in chosen if f.content_id not in held or held[f.content_id].checksum != f.checksum)
    if policy.extra_copy_weight != 1.0:
        rank = {f.content_id: i for i, f in enumerate(value_order(adds, policy))}
        w = policy.extra_copy_weight

        def key(f: ManifestFile) -> tuple[float, int]:
            v = _value(f, policy, {})
            return (-(v if placed[f.content_id][0] == me else v * w), rank[f.content_id])

        adds = tuple(sorted(adds, key=key))
    delete_now: list[str] = []
    if_needed: list[Held] = []
    keep: list[str] = []
    new_since: dict[str, float] = {}
    for cid, h in held.items():
        f = listed.get(cid)
        if f is None:
            delete_now.append(cid)
        elif cid in chosen_ids:
            keep.append(cid)
        else:
            since = unchosen_since.get(cid, now_s)
            if now_s - since >= grace_s:
                delete_now.append(cid)
            else:
                new_since[cid] = since
                if_needed.append(Held(cid, h.size, h.checksum, f.popularity))
    if policy.order == "density":
        if_needed.sort(key=lambda h: (h.popularity / h.size if h.size > 0 else math.inf, h.content_id))
    else:
        if_needed.sort(key=lambda h: (h.popularity, h.content_id))
    held_bytes = sum(h.size for h in held.values())
    return Plan(
        adds=adds,
        delete_now=tuple(sorted(delete_now)),
        delete_if_needed=tuple(h.content_id for h in if_needed),
        keep=tuple(sorted(keep)),
        add_bytes=sum(f.size for f in adds),
        delete_now_bytes=sum(held[c].size for c in delete_now),
        chosen_bytes=sum(f.size for f in chosen),
        capacity_bytes=capacity_bytes,
        held_bytes=held_bytes,
        unchosen_since=new_since,
        placed_here=len(mine),
        site_size=len(appliances),
    )


POPULARITY_ALPHA = 0.5  # tuned with benchmarks/offload.py
POPULARITY_WINDOW_DAYS = 14


def predict_popularity(daily_bytes: Sequence[float], alpha: float = POPULARITY_ALPHA) -> float:
    """Predicted bytes per day from the bytes served on the past days the file was available, oldest first.

    An exponentially weighted mean seeded with the oldest day: weight `alpha`
    on the newest day, so a release's spike and decay are followed within a
    day or two while the tail's day-to-day noise is damped. Callers pass at
    most `POPULARITY_WINDOW_DAYS` days; with none it is 0.0 (use a forecast).
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], not {alpha}")
    est = 0.0
    for i, b in enumerate(daily_bytes):
        est = float(b) if i == 0 else est + alpha * (b - est)
    return est


@dataclass(frozen=True, slots=True)
class DeleteBudget:
    """Deletions a run may still make, by count and by bytes (None: no limit, `--force`).

    One budget for every deletion a run makes, whatever the path (files the
    manifest dropped, room for an addition): each is checked before it is made.
    """

    files: int | None
    bytes: int | None

    @classmethod
    def of_share(cls, share: float, held_files: int, held_bytes: int, *, unlimited: bool = False) -> "DeleteBudget":
        if unlimited:
            return cls(None, None)
        return cls(int(math.floor(share * held_files + 1e-9)), int(math.floor(share * held_bytes + 1e-9)))

    def allows(self, n_files: int, n_bytes: int) -> bool:
        return (self.files is None or n_files <= self.files) and (self.bytes is None or n_bytes <= self.bytes)

    def spend(self, n_files: int, n_bytes: int) -> "DeleteBudget":
        return DeleteBudget(
            None if self.files is None else self.files - n_files,
            None if self.bytes is None else self.bytes - n_bytes,
        )

    def describe(self) -> str:
        if self.files is None:
            return "unlimited"
        return f"{max(0, self.files)} files, {max(0, self.bytes or 0)} bytes"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an addition goes and what must be deleted first; `store_uuid` None: refused, with `reason`."""

    store_uuid: str | None
    evictions: tuple[str, ...] = ()
    reason: str = ""


def place(
    need_bytes: int,
    rooms: Sequence[StoreRoom],
    claimed: Mapping[str, int],
    candidates: Sequence[str],
    held_at: Mapping[str, tuple[str, int]],
    budget: DeleteBudget,
    *,
    only: str | None = None,
) -> Placement:
    """The store for `need_bytes` more bytes, with the deletions that make room for them.

    `rooms` are the stores' free space; `claimed` (store uuid → bytes) what
    downloads in progress will still write there. Without deletions, the
    working store with the most room left wins (`oca.store.layout.choose_store`).
    Otherwise, per store, `candidates` (the plan's delete-if-needed list,
    least valuable first) that live there (`held_at`: id → (store uuid,
    size)) are taken in order until the bytes fit; the store needing the
    fewest deletions (then the fewest bytes, then the lowest uuid) wins, and
    only if `budget` allows them. `only` restricts the choice to one store
    (a resumed download's).
    """
    adjusted = [
        StoreRoom(r.uuid, r.working, r.free_bytes - claimed.get(r.uuid, 0), r.reserve_bytes)
        for r in rooms
        if r.working and (only is None or r.uuid == only)
    ]
    if not adjusted:
        return Placement(None, reason="no working store" if only is None else "its store is not working")
    uuid = choose_store(adjusted, need_bytes)
    if uuid is not None:
        return Placement(uuid)
    best: tuple[int, int, str, tuple[str, ...]] | None = None
    for room in adjusted:
        free = room.free_bytes - room.reserve_bytes
        victims: list[str] = []
        freed = 0
        for cid in candidates:
            where = held_at.get(cid)
            if where is None or where[0] != room.uuid:
                continue
            victims.append(cid)
            freed += where[1]
            if free + freed >= need_bytes:
                break
        if free + freed >= need_bytes:
            option = (len(victims), freed, room.uuid, tuple(victims))
            if best is None or option[:3] < best[:3]:
                best = option
    if best is None:
        return Placement(None, reason=f"no store has room for {need_bytes} bytes, even after deleting every file no longer chosen")
    n, freed, uuid, victims = best
    if not budget.allows(n, freed):
        return Placement(
            None,
            reason=f"making room needs {n} deletions ({freed} bytes), more than the run's deletion budget left ({budget.describe()})",
        )
    return Placement(uuid, victims)


def holders_with(content_id: str, appliances: Sequence[SiteAppliance], inventories: Mapping[str, set[str]], me: str) -> list[SiteAppliance]:
    """Peers of the site that report holding `content_id`, in rendezvous order."""
    order = rank_appliances(content_id, appliances)
    by_id = {a.appliance_id: a for a in appliances}
    return [by_id[a] for a in order if a != me and content_id in inventories.get(a, set())]


# --- intra-day passes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassPolicy:
    """How an intra-day fill pass turns the requests seen since the night into additions.

    A file's value is plays per day: the larger of the manifest's prediction
    (popularity / size) and the rate observed since the night (requests /
    `observed_share`). `min_requests`: a missing file needs at least this many
    requests before it is worth a transfer (one or two plays in the morning
    are noise). `margin`: a held file is deleted to make room only when the
    addition is worth more than (1 + margin) times it, so a pass does not swap
    files of about equal value at the cost of the budget.
    """

    min_requests: int = 2
    margin: float = 0.5

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, not {self.min_requests}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, not {self.margin}")


def night_budget(budget_bytes: int, new_files: Iterable[ManifestFile], max_reserve: float, uncertain: Collection[str] = ()) -> int:
    """The part of the day's fill budget the night's pass may spend; the rest waits for the intra-day passes.

    Held back: `max_reserve` of the budget times the share, by bytes, of the
    new files (listed for the first time) that come without a forecast
    (popularity 0): the passes will learn from requests which of them
    matter. New files that come with a forecast are planned at night like
    any other, so a good forecast loses nothing to the passes; no new files,
    nothing held back. `uncertain`: ids of new files whose forecast says
    little about the title itself (the mean of earlier releases of its
    kind): they count as without a forecast here, while the night still
    orders them by it.
    """
    if not 0 <= max_reserve <= 1:
        raise ValueError(f"max_reserve must be in [0, 1], not {max_reserve}")
    total = unforecast = 0
    for f in new_files:
        total += f.size
        if f.popularity <= 0 or f.content_id in uncertain:
            unforecast += f.size
    if total <= 0:
        return budget_bytes
    return budget_bytes - int(budget_bytes * max_reserve * unforecast / total)


def day_budget(budget_bytes: int, last_day_budget_bytes: int, spent_last_day_bytes: int) -> int:
    """The day's fill budget: `budget_bytes` less what the last day spent beyond its own day's budget.

    A run's (and a pass's) first file may end past what is left, whole, or
    a file bigger than the budget would never be filled; the overshoot is
    repaid the next day, so over any run of days the fill exceeds the
    budget by at most one file. Never below 0.
    """
    return max(0, budget_bytes - max(0, spent_last_day_bytes - last_day_budget_bytes))


@dataclass(frozen=True, slots=True)
class PassPlan:
    """An intra-day pass: delete `deletes` (to make room), then add `adds`, most valuable first."""

    adds: tuple[ManifestFile, ...]
    deletes: tuple[str, ...]
    add_bytes: int
    delete_bytes: int


def plan_pass(
    manifest: Manifest,
    me: str,
    my_site: str,
    held: Mapping[str, Held],
    site_held: Collection[str],
    observed: Mapping[str, float],
    observed_share: float,
    capacity_bytes: int,
    budget_bytes: int,
    policy: PassPolicy = PassPolicy(),
    planned: Sequence[ManifestFile] = (),
    uncertain: Collection[str] = (),
) -> PassPlan:
    """What a pass inside the fill window adds: files requested since the night that no appliance of the site holds.

    `site_held`: content ids some appliance of the site holds (the site's
    inventories, this one's included); `observed`: requests per content id
    since the night; `observed_share`: the share of a day's requests the
    observation period is expected to hold (from the daily profile), so
    counts become plays per day. Only files whose first rendezvous holder in
    the site is this appliance are added here, so the appliances of a site
    never fetch the same file in the same pass. Additions are taken most
    valuable first while they fit in `budget_bytes` (what is left of the
    night's budget and window; a file that does not fit is skipped and a
    smaller one may still fit), except the first, which may end past
    `budget_bytes` when anything is left at all: a whole file bigger than
    what is left would otherwise never be filled by a pass, and the
    overshoot is taken from the next day's budget (`day_budget`). Room is
    made from held files worth less than the addition by `policy.margin`,
    least valuable first. The plan never exceeds `capacity_bytes`.
    `planned`: the night plan's
    additions for this appliance that the night left to the passes (its
    budget held back for them); they compete with the requested files on
    the same value, so budget the day does not need still fills them (they
    make room without the margin: the night's plan already chose them over
    what they displace). `uncertain`: ids whose forecast says little about
    the title (see `night_budget`): a pass values them by the requests it
    saw alone.
    """
    if not 0 < observed_share <= 1:
        raise ValueError(f"observed_share must be in (0, 1], not {observed_share}")
    appliances = site_of(manifest, me, my_site)
    listed = manifest.by_id()

    def value(cid: str, size: int) -> float:
        f = listed.get(cid)
        predicted = f.popularity / size if f is not None and size > 0 and cid not in uncertain else 0.0
        return max(predicted, observed.get(cid, 0.0) / observed_share)

    candidates = []
    for cid, n in observed.items():
        f = listed.get(cid)
        if f is None or n < policy.min_requests or cid in site_held or cid in held or f.size <= 0:
            continue
        if rank_appliances(cid, appliances)[0] != me:
            continue
        candidates.append((value(cid, f.size), f, policy.margin))
    seen = {f.content_id for _v, f, _m in candidates}
    for f in planned:
        if f.content_id not in held and f.content_id not in seen and f.size > 0:
            seen.add(f.content_id)
            candidates.append((value(f.content_id, f.size), f, 0.0))  # the night already weighed it against what is held
    candidates.sort(key=lambda t: (-t[0], t[1].content_id))
    victims = sorted(((value(cid, h.size), cid, h.size) for cid, h in held.items()), key=lambda t: (t[0], t[1]))
    free = capacity_bytes - sum(h.size for h in held.values())
    next_victim = 0
    adds: list[ManifestFile] = []
    deletes: list[str] = []
    add_bytes = delete_bytes = 0
    for v, f, margin in candidates:
        if add_bytes + f.size > budget_bytes and (adds or budget_bytes <= 0):
            continue  # the first addition may end past what is left, as a run's first file may (repaid: `day_budget`)
        room, take = free, next_victim
        while room < f.size and take < len(victims) and victims[take][0] * (1 + margin) < v:
            room += victims[take][2]
            take += 1
        if room < f.size:
            continue
        for _v, cid, size in victims[next_victim:take]:
            deletes.append(cid)
            delete_bytes += size
        next_victim = take
        free = room - f.size
        adds.append(f)
        add_bytes += f.size
    return PassPlan(tuple(adds), tuple(deletes), add_bytes, delete_bytes)


MIN_OBSERVED_SHARE = 0.01  # an observation this short says too little to scale up further
DAY_S = 86400.0


def observed_plays(snapshot: DemandSnapshot, held: Mapping[str, Held]) -> dict[str, float]:
    """Plays per content id since the mark: bytes sent / size for held files, requests (404s) for the others."""
    out: dict[str, float] = {}
    for cid, d in snapshot.records.items():
        h = held.get(cid)
        if h is not None and h.size > 0:
            plays = d.bytes_since_mark / h.size
        else:
            plays = float(d.requests_since_mark)
        if plays > 0:
            out[cid] = plays
    return out


def observed_share(snapshot: DemandSnapshot, now_s: float) -> float:
    """The share of a day's requests the observation since the mark holds, for `plan_pass`.

    Once the counters cover a day or more: the requests since the mark over
    the mean requests per day (so the day's shape, quiet nights and busy
    evenings, is the appliance's own). Before that: the time since the mark
    over 24 h. Kept within [MIN_OBSERVED_SHARE, 1].
    """
    since_s = snapshot.mark.since_s or snapshot.created_s
    elapsed = max(0.0, now_s - since_s)
    counted = max(0.0, now_s - snapshot.created_s)
    share = elapsed / DAY_S
    total = snapshot.total_requests()
    recent = snapshot.total_requests(since_mark=True)
    if counted >= DAY_S and total > 0 and recent > 0:
        share = recent / (total * DAY_S / counted)
    return min(1.0, max(MIN_OBSERVED_SHARE, share))
