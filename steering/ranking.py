"""The steering decision: which appliances, in which order, for a client and a file.

Nothing here performs I/O. Rules kept here (one numbered step each):
1. Every prefix containing the client's address is considered, IPv4 and
   IPv6, from appliance routes and coverage zones. A route reported by an
   appliance matches that appliance; a coverage-zone prefix matches every
   appliance of its site.
2. Candidates are the appliances that serve new clients (up, not draining),
   hold the content and are matched by at least one prefix. They are sorted
   by: the length of the longest prefix that matches the appliance (longest
   first); `embedded` before `ixp`; not overloaded before overloaded;
   weighted rendezvous hashing of the content id (so one file keeps going to
   the same appliance, whose page cache stays hot).
3. The list is filled up to `max_urls`: when the candidates cover only one
   site, the best appliance of another site that holds the content is
   added (taking the last place if one site filled the list), so that two
   sites appear when the registry has them; then the
   fallback sites' appliances, in `fallback_sites` order. When no prefix
   matched at all, the list is the fallback sites' appliances alone. When
   prefixes matched but neither the matched appliances nor the fallback
   sites can serve the file, the best available holder anywhere is listed.
   With a `RegistryIndex` the same answer is found from the content's
   holders instead of by walking the registry.
4. The result type: `BGP` when the first appliance's match is an appliance
   route, `COVERAGE_ZONE` when it is a coverage-zone prefix, `FALLBACK` when
   the first appliance was not matched by any prefix, `NO_CANDIDATES` when
   nothing available holds the content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from oca.rendezvous import hrw_score

BGP = "BGP"
COVERAGE_ZONE = "COVERAGE_ZONE"
FALLBACK = "FALLBACK"
NO_CANDIDATES = "NO_CANDIDATES"
TIER_ORDER = {"embedded": 0, "ixp": 1}


@dataclass(frozen=True, slots=True)
class Appliance:
    appliance_id: str
    url: str
    site: str
    tier: str = "embedded"
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Live:
    """What the decision needs from the poller about one appliance."""

    serves: bool  # up and not draining
    overloaded: bool
    holds: frozenset | set


@dataclass(frozen=True, slots=True)
class Pick:
    appliance: Appliance
    prefix: str | None  # the longest prefix matching it, if any
    kind: str  # "route", "cz" or "fallback"


@dataclass(frozen=True, slots=True)
class Decision:
    result: str
    prefix: str | None
    picks: tuple[Pick, ...]


@dataclass(frozen=True, slots=True)
class RegistryIndex:
    """The registry made once for many decisions, so a decision costs what its answer needs, not the fleet's size.

    `holders(content_id)` returns every appliance holding the content (usable
    or not), in `holder_order`; the decision filters them. Without an index,
    `decide` walks the whole registry, with the same result.
    """

    by_id: Mapping[str, Appliance]
    by_site: Mapping[str, Sequence[Appliance]]
    holders: Callable[[str], Sequence[Appliance]]


def index_registry(registry: Sequence[Appliance], holders: Callable[[str], Sequence[Appliance]]) -> RegistryIndex:
    by_site: dict[str, list[Appliance]] = {}
    for a in registry:
        by_site.setdefault(a.site, []).append(a)
    return RegistryIndex({a.appliance_id: a for a in registry}, by_site, holders)


def holder_order(content_id: str, holders: Sequence[Appliance]) -> list[Appliance]:
    """Holders by tier, then rendezvous score, then id: `_order_key` for unmatched appliances, less the load."""
    return sorted(holders, key=lambda a: (TIER_ORDER.get(a.tier, 2), -hrw_score(a.appliance_id, content_id, a.weight), a.appliance_id))


def _best_unmatched(ordered: Sequence[Appliance], keep: Callable[[Appliance], bool], live: Mapping[str, "Live"]) -> Appliance | None:
    """The first of `ordered` (in `holder_order`) that `keep` accepts, not overloaded before overloaded within its tier."""
    first: Appliance | None = None
    for a in ordered:
        if first is not None and TIER_ORDER.get(a.tier, 2) != TIER_ORDER.get(first.tier, 2):
            break
        if not keep(a):
            continue
        lv = live.get(a.appliance_id)
        if lv is not None and not lv.overloaded:
            return a
        if first is None:
            first = a
    return first


def _order_key(a: Appliance, content_id: str, live: Mapping[str, Live], match_len: int) -> tuple:
    lv = live.get(a.appliance_id)
    return (-match_len, TIER_ORDER.get(a.tier, 2), 1 if lv is not None and lv.overloaded else 0, -hrw_score(a.appliance_id, content_id, a.weight), a.appliance_id)


def decide(
    content_id: str,
    matches: Sequence,  # PrefixEntry-like: .cidr, .length, .tags (("route", id) | ("cz", site)), longest first
    registry: Sequence[Appliance],
    live: Mapping[str, Live],
    *,
    max_urls: int,
    fallback_sites: Sequence[str],
    index: RegistryIndex | None = None,
) -> Decision:
    if index is not None:
        by_id, by_site = index.by_id, index.by_site
    else:
        by_id = {a.appliance_id: a for a in registry}
        by_site = {}
        for a in registry:
            by_site.setdefault(a.site, []).append(a)

    def usable(a: Appliance) -> bool:
        lv = live.get(a.appliance_id)
        return lv is not None and lv.serves and content_id in lv.holds

    # Step 1: the longest matching prefix per appliance (a route wins a tie with a zone).
    best: dict[str, tuple[int, int, str]] = {}  # id -> (length, kind rank, cidr)
    for entry in matches:
        for tag in entry.tags:
            kind, target = tag
            if kind == "route":
                targets = [target] if target in by_id else []
                rank = 1
            elif kind == "cz":
                targets = [a.appliance_id for a in by_site.get(target, ())]
                rank = 0
            else:
                continue
            for aid in targets:
                cur = best.get(aid)
                if cur is None or (entry.length, rank) > (cur[0], cur[1]):
                    best[aid] = (entry.length, rank, entry.cidr)
    any_match = bool(matches)

    # Step 2: candidates, sorted.
    candidates = [by_id[aid] for aid in best if usable(by_id[aid])]
    candidates.sort(key=lambda a: _order_key(a, content_id, live, best[a.appliance_id][0]))
    picks: list[Pick] = []
    chosen: set[str] = set()

    def add(a: Appliance, kind: str, prefix: str | None) -> None:
        if len(picks) < max_urls and a.appliance_id not in chosen:
            picks.append(Pick(a, prefix, kind))
            chosen.add(a.appliance_id)

    for a in candidates:
        length, rank, cidr = best[a.appliance_id]
        add(a, "route" if rank == 1 else "cz", cidr)

    # Step 3: a second site, then the fallback sites.
    if any_match:
        sites = {p.appliance.site for p in picks}
        if len(sites) == 1 and len(by_site) > 1:
            if index is None:
                others = [a for a in registry if a.site not in sites and usable(a) and a.appliance_id not in chosen]
                others.sort(key=lambda a: _order_key(a, content_id, live, best.get(a.appliance_id, (0, 0, ""))[0]))
            else:
                # Matched appliances of other sites (few), and the best unmatched holder elsewhere.
                others = [by_id[aid] for aid in best if by_id[aid].site not in sites and usable(by_id[aid]) and aid not in chosen]
                far = _best_unmatched(index.holders(content_id),
                                      lambda a: a.appliance_id not in best and a.site not in sites and usable(a) and a.appliance_id not in chosen, live)
                if far is not None:
                    others.append(far)
                others.sort(key=lambda a: _order_key(a, content_id, live, best.get(a.appliance_id, (0, 0, ""))[0]))
            if others:
                a = others[0]
                # A second site is listed even when one site's candidates fill
                # max_urls: it takes the last place (a site usually has more
                # appliances than max_urls).
                if len(picks) >= max_urls >= 2:
                    chosen.discard(picks.pop().appliance.appliance_id)
                m = best.get(a.appliance_id)
                add(a, ("route" if m[1] == 1 else "cz") if m else "fallback", m[2] if m else None)
    for site in fallback_sites:
        members = [a for a in by_site.get(site, ()) if usable(a) and a.appliance_id not in chosen]
        members.sort(key=lambda a: _order_key(a, content_id, live, 0))
        for a in members:
            add(a, "fallback", None)

    # A matched client whose appliances and fallback sites all lack the file
    # still gets the best holder anywhere: NO_CANDIDATES means that nothing
    # available holds the content, not that nothing near holds it.
    if not picks and any_match:
        holders = [a for a in (registry if index is None else index.holders(content_id)) if usable(a)]
        holders.sort(key=lambda a: _order_key(a, content_id, live, 0))
        for a in holders:
            add(a, "fallback", None)

    # Step 4: the result type.
    if not picks:
        return Decision(NO_CANDIDATES, None, ())
    first = picks[0]
    result = {"route": BGP, "cz": COVERAGE_ZONE}.get(first.kind, FALLBACK)
    return Decision(result, first.prefix, tuple(picks))
