"""Fill planning: which files this appliance should hold, what to add and delete.

Nothing here performs I/O or reads the clock; `now_s` is an argument.
Rules kept here:
- Placement is weighted rendezvous (highest-random-weight) hashing of each
  content id over the site's appliances: every appliance computes the same
  answer alone, and when one joins or leaves only about 1/N of the files
  move. Score = -weight / ln(u), u uniform in (0, 1) from xxh3-64 of
  "<appliance id>\\0<content id>" (Schindelhauer and Schomaker's weighted
  form, so an appliance of weight 2 gets twice the files).
- The number of copies grows with popularity (`CopyPolicy`): the head of
  the catalogue is on every appliance of the site, the tail on one.
- Of what is placed here, the most popular files that fit in the capacity
  are chosen (greedy by popularity; a file that does not fit is skipped and
  smaller ones after it may still fit).
- The plan: additions most popular first; a held file the manifest no
  longer lists is deleted at once; a held file still listed but no longer
  chosen is deleted least popular first only when space is needed, or once
  it has been unchosen for the grace period. A held file whose checksum
  differs from the manifest's is replaced (it is an addition).
- Without a site list, or when this appliance is not in its site's list,
  the site is this appliance alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from fill.manifest import Manifest, ManifestFile, SiteAppliance
from oca.rendezvous import hrw_score

@dataclass(frozen=True, slots=True)
class CopyPolicy:
    """How many copies a file gets in a site of n appliances, by popularity rank.

    The top `head_share` of files (by popularity) go on every appliance, the
    next `mid_share` on `ceil(n * mid_copies_share)`, the rest on one.
    Files of zero popularity always get one copy.
    """

    head_share: float = 0.05
    mid_share: float = 0.20
    mid_copies_share: float = 0.5

    def copies(self, rank: int, total: int, n: int, popularity: float) -> int:
        if n <= 1 or popularity <= 0 or total <= 0:
            return 1
        position = rank / total
        if position < self.head_share:
            return n
        if position < self.head_share + self.mid_share:
            return max(1, min(n, math.ceil(n * self.mid_copies_share)))
        return 1


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
        # The count share is computed even when held_bytes is 0: returning 0.0
        # then let a plan deleting every (zero-byte) file pass max_delete_share.
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
    n = len(appliances)
    out = {}
    for rank, f in enumerate(ordered):
        k = policy.copies(rank, total, n, f.popularity)
        out[f.content_id] = tuple(rank_appliances(f.content_id, appliances)[:k])
    return out


def choose(files: Sequence[ManifestFile], capacity_bytes: int) -> list[ManifestFile]:
    """The most popular files that fit, in popularity order."""
    chosen = []
    used = 0
    for f in by_popularity(files):
        if used + f.size <= capacity_bytes:
            chosen.append(f)
            used += f.size
    return chosen


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
    chosen = choose(mine, capacity_bytes)
    chosen_ids = {f.content_id for f in chosen}
    adds = tuple(f for f in chosen if f.content_id not in held or held[f.content_id].checksum != f.checksum)
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


def make_room(need_bytes: int, free_bytes: int, candidates: Sequence[str], sizes: Mapping[str, int]) -> list[str]:
    """Which of `candidates` (in order) to delete so `need_bytes` fit; [] if impossible."""
    if need_bytes <= free_bytes:
        return []
    out = []
    for cid in candidates:
        out.append(cid)
        free_bytes += sizes.get(cid, 0)
        if need_bytes <= free_bytes:
            return out
    return []


def holders_with(content_id: str, appliances: Sequence[SiteAppliance], inventories: Mapping[str, set[str]], me: str) -> list[SiteAppliance]:
    """Peers of the site that report holding `content_id`, in rendezvous order."""
    order = rank_appliances(content_id, appliances)
    by_id = {a.appliance_id: a for a in appliances}
    return [by_id[a] for a in order if a != me and content_id in inventories.get(a, set())]
