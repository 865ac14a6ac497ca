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
  (`file_version`), at most `HOLDERS_CACHE` files. For a popular file the
  whole registry's order is kept too (`FLEET_ORDER_CACHE` files; no delta
  changes it), so a change of its holders costs a read of its column, not
  20,000 hashes.
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

import numpy as np

from steering.fleetstore import DRAINING, OVERLOADED, SERVES, UP, FleetStoreReader
from steering.health import Availability
from steering.lpm import PrefixTable
from steering.hrwvec import Registry
from steering.ranking import TIER_ORDER, Appliance, Decision, Live, RegistryIndex, decide, holder_order, index_registry

VECTOR_FROM = 400  # holders; fewer are ordered one `hrw_score` each (numpy's fixed cost is about 200 µs)
HOLDERS_CACHE = 4096
FLEET_ORDER_CACHE = 1024  # popular files; 40 KB each at 20,000 appliances  # files; a popular file's list is up to the whole registry (8 bytes an appliance)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    cidr: str
    length: int
    tags: tuple


_NONE = np.zeros(0, dtype=np.int64)


class Holders:
    """A file's holders in `ranking.holder_order`, as appliance indexes: the cache holds arrays, which the
    garbage collector does not walk (lists of 20,000 appliances, thousands of them, made its full passes 100 ms long)."""

    __slots__ = ("by_index", "order")

    def __init__(self, by_index: list, order: np.ndarray):
        self.by_index, self.order = by_index, order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        by_index = self.by_index
        for i in self.order.tolist() if len(self.order) <= 64 else _chunks(self.order):
            yield by_index[i]

    def __getitem__(self, k: int) -> Appliance:
        return self.by_index[int(self.order[k])]


def _chunks(order: np.ndarray):
    """Indexes a few at a time: the ranking usually stops at the first holders."""
    for start in range(0, len(order), 64):
        yield from order[start : start + 64].tolist()


class HeldNow:
    """A popular file's holders: the registry in the file's holder order, each yielded if its bit is set when reached."""

    __slots__ = ("by_index", "order", "reader", "f")

    def __init__(self, by_index: list, order: np.ndarray, reader: FleetStoreReader, f: int):
        self.by_index, self.order, self.reader, self.f = by_index, order, reader, f

    def __iter__(self):
        by_index, holds, f = self.by_index, self.reader.holds, self.f
        for i in _chunks(self.order):
            if holds(i, f):
                yield by_index[i]


class StoreHoldings:
    """One appliance's holdings as the store has them now: `content_id in` it (what `catalog.titles_held` asks)."""

    __slots__ = ("reader", "a")

    def __init__(self, reader: FleetStoreReader, a: int):
        self.reader, self.a = reader, a

    def __contains__(self, content_id: object) -> bool:
        f = self.reader.file_index(content_id) if isinstance(content_id, str) else None
        return f is not None and self.reader.holds(self.a, f)

    def __len__(self) -> int:
        return int(self.reader.gens_count(self.a))

    def __iter__(self):
        raise TypeError("a store's holdings are asked with `in`, not listed")


class _Everything:
    """`in` is always true: the `holds` of an appliance holding the one content a decision asks about."""

    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        return True


HOLDS = _Everything()
HOLDS_NOT = frozenset()


class _LiveOf(dict):
    """aid → Live, made for the appliances a decision looks at.

    The ranking asks `holds` about the decision's own content only, so it is
    HOLDS or HOLDS_NOT by the appliance's bit for that file, and the Live
    values are shared between decisions (`FleetView.lives`), not made anew.
    """

    def __init__(self, view: "FleetView", f: int | None):
        super().__init__()
        self.view, self.f = view, f

    def __missing__(self, aid: str) -> Live:
        view = self.view
        i = view.index_of.get(aid)
        if i is None:
            raise KeyError(aid)
        f = self.f
        key = (i, view.reader.states[i], f is not None and view.reader.holds(i, f))
        lv = view.lives.get(key)
        if lv is None:
            st = key[1]
            lv = view.lives[key] = Live(st & SERVES != 0, st & OVERLOADED != 0, HOLDS if key[2] else HOLDS_NOT)
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
        self._registered = np.array([a is not None for a in known] or [False], dtype=bool)
        self.hrw = Registry(reader.ids, [TIER_ORDER.get(a.tier, 2) if a else 2 for a in known], [a.weight if a else 1.0 for a in known])
        self._holders: dict[int, tuple] = {}  # file → ((epoch, version), holders in order)
        self._all = np.flatnonzero(self._registered[: len(self.by_index)])
        self._order_type = np.uint16 if len(self.by_index) < 1 << 16 else np.uint32
        self._fleet_order: dict[int, np.ndarray] = {}  # file → every registered appliance in its holder order
        self.lives: dict[tuple, Live] = {}  # (appliance index, state byte, holds): at most four per appliance
        self.index: RegistryIndex = index_registry(self.registry, self.holders_of)

    def holders_of(self, content_id: str) -> "Holders | HeldNow":
        f = self.reader.file_index(content_id)
        if f is None:
            return Holders(self.by_index, _NONE)
        full = self._fleet_order.get(f)
        if full is not None:
            # A popular file: the whole registry in its order, each appliance's bit read as the ranking walks it
            # (it stops at the first few): always current, and no column of 20,000 rows read again after a delta.
            return HeldNow(self.by_index, full, self.reader, f)
        version = self.reader.file_version(f)
        cached = self._holders.get(f)
        if cached is not None and cached[0] == version:
            return Holders(self.by_index, cached[1])
        column = self.reader.column(f)
        which = np.flatnonzero(column)
        which = which[self._registered[which]]
        if len(which) <= VECTOR_FROM:
            order = np.array([self.index_of[a.appliance_id] for a in holder_order(content_id, [self.by_index[i] for i in which.tolist()])],
                             dtype=np.int64)
        else:
            # A popular file: its holders change by a delta now and then (churn touches hundreds of files a second),
            # so the whole registry's order for it is kept, which no delta changes, and filtered by the holders.
            full = self._fleet_order.get(f)
            if full is None:
                full = self.hrw.holder_order(self._all, content_id).astype(self._order_type)
                if len(self._fleet_order) >= FLEET_ORDER_CACHE:
                    del self._fleet_order[next(iter(self._fleet_order))]
                self._fleet_order[f] = full
            order = full[column[full] != 0].astype(np.int64)
        if len(self._holders) >= HOLDERS_CACHE:
            del self._holders[next(iter(self._holders))]
        self._holders[f] = (version, order)
        return Holders(self.by_index, order)

    def matches(self, version: int, addr: int, coverage: PrefixTable) -> list:
        """Every prefix containing the address: appliance routes from the store, coverage zones from `coverage`."""
        ids = self.reader.ids
        matches: list = [RouteEntry(cidr, length, tuple(("route", ids[i]) for i in members))
                         for cidr, length, members in self.reader.route_matches(version, addr)]
        matches.extend(coverage.matches_int(version, addr))
        return matches

    def holdings(self, appliance_id: str) -> "StoreHoldings | None":
        i = self.index_of.get(appliance_id)
        return None if i is None else StoreHoldings(self.reader, i)

    def decide(self, content_id: str, version: int, addr: int, coverage: PrefixTable, max_urls: int,
               fallback_sites: Sequence[str]) -> Decision:
        matches = self.matches(version, addr, coverage)
        f = self.reader.file_index(content_id)
        return decide(content_id, matches, self.registry, _LiveOf(self, f), max_urls=max_urls,
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
