"""A decision worker's view of the fleet: the ranking's inputs read from a fleet store, per decision.

Rules kept here:
- A decision reads only what it needs: the prefixes containing the client
  (one LMDB read transaction, `FleetStoreReader.route_matches`), the state
  byte of each matched appliance, one holdings bit per matched appliance,
  and, when the ranking asks for the content's holders, one column of the
  holdings. Nothing is built per change: the poller writes, the worker
  reads what is there.
- The content's holders, in `ranking.holder_order` (computed as arrays by
  `steering.hrwvec`: a popular file has every appliance as a holder), are
  kept per file while the store says they have not changed
  (`file_version`), at most `HOLDERS_CACHE` files.
- Coverage zones come from the worker's own config (a small `PrefixTable`
  it builds at start and on SIGHUP), appliance routes from the store; an
  appliance the worker's registry does not know is left out.
- The answer is `ranking.decide`'s over these inputs, so a worker decides
  as the single process does over the same knowledge (the fleet test
  compares both with a brute-force oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from steering.fleetstore import DRAINING, OVERLOADED, SERVES, UP, FleetStoreReader
from steering.health import Availability
from steering.lpm import PrefixTable
from steering.hrwvec import Registry
from steering.ranking import TIER_ORDER, Appliance, Decision, Live, RegistryIndex, decide, holder_order, index_registry

VECTOR_FROM = 400  # holders; fewer are ordered one `hrw_score` each (numpy's fixed cost is about 200 µs)
HOLDERS_CACHE = 4096  # files; a popular file's list is up to the whole registry (8 bytes an appliance)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    cidr: str
    length: int
    tags: tuple


class _LiveOf(dict):
    """aid → Live, made for the appliances a decision looks at.

    The decision asks `holds` about its own content only, so `holds` is that
    id's one-element set when the appliance's bit is set, else empty.
    """

    def __init__(self, view: "FleetView", cid: str, f: int | None):
        super().__init__()
        self.view, self.f = view, f
        self.yes, self.no = frozenset((cid,)), frozenset()

    def __missing__(self, aid: str) -> Live:
        view = self.view
        i = view.index_of.get(aid)
        if i is None:
            raise KeyError(aid)
        st = view.reader.states[i]
        f = self.f
        lv = Live(st & SERVES != 0, st & OVERLOADED != 0, self.yes if f is not None and view.reader.holds(i, f) else self.no)
        self[aid] = lv
        return lv

    def get(self, aid, default=None):  # type: ignore[override]
        try:
            return self[aid]
        except KeyError:
            return default


class FleetView:
    def __init__(self, reader: FleetStoreReader, registry: Sequence[Appliance]):
        self.reader = reader
        self.registry = list(registry)
        by_id = {a.appliance_id: a for a in registry}
        self.by_index: list[Appliance | None] = [by_id.get(aid) for aid in reader.ids]
        self.index_of = {aid: i for i, aid in enumerate(reader.ids) if aid in by_id}
        known = self.by_index
        self.hrw = Registry(reader.ids, [TIER_ORDER.get(a.tier, 2) if a else 2 for a in known], [a.weight if a else 1.0 for a in known])
        self._holders: dict[int, tuple] = {}  # file → ((epoch, version), holders in order)
        self.index: RegistryIndex = index_registry(self.registry, self.holders_of)

    def holders_of(self, content_id: str) -> list[Appliance]:
        f = self.reader.file_index(content_id)
        if f is None:
            return []
        version = self.reader.file_version(f)
        cached = self._holders.get(f)
        if cached is not None and cached[0] == version:
            return cached[1]
        by_index = self.by_index
        which = self.reader.holders(f)
        if len(which) <= VECTOR_FROM:
            holders = holder_order(content_id, [a for a in (by_index[i] for i in which.tolist()) if a is not None])
        else:
            holders = [by_index[i] for i in self.hrw.holder_order(which, content_id).tolist() if by_index[i] is not None]
        if len(self._holders) >= HOLDERS_CACHE:
            del self._holders[next(iter(self._holders))]
        self._holders[f] = (version, holders)
        return holders

    def decide(self, content_id: str, version: int, addr: int, coverage: PrefixTable, max_urls: int,
               fallback_sites: Sequence[str]) -> Decision:
        ids = self.reader.ids
        matches: list = [RouteEntry(cidr, length, tuple(("route", ids[i]) for i in members))
                         for cidr, length, members in self.reader.route_matches(version, addr)]
        matches.extend(coverage.matches_int(version, addr))
        f = self.reader.file_index(content_id)
        return decide(content_id, matches, self.registry, _LiveOf(self, content_id, f), max_urls=max_urls,
                      fallback_sites=fallback_sites, index=self.index)

    def states(self) -> dict[str, Availability]:
        """Each registered appliance's state as the store has it (for /health and the status page)."""
        out = {}
        states = bytes(self.reader.states)
        for aid, i in self.index_of.items():
            st = states[i]
            up = bool(st & UP)
            out[aid] = Availability(up=up, reason="", status="draining" if st & DRAINING else "ok" if up else "down",
                                    draining=bool(st & DRAINING), overloaded=bool(st & OVERLOADED))
        return out
