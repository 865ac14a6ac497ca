"""Per-file request counters: the records and the rules that bound them (pure).

What the appliance's clients asked for, per content id, kept across restarts
and `rebuild-index` (`oca.store.counters` stores these records; the
workers' tallies feed them, `oca.server.popularity`). Rules kept here:
- Nothing here performs I/O or reads the clock: `now_s` is an argument.
- A record counts requests (every content GET or HEAD for the id that the
  signing rules let through, answered or not: a 404 is a client that wanted
  a file this appliance lacks) and body bytes sent for them, in total and
  since the current mark. The fill agent sets the mark at the night's run,
  so "since the mark" is the demand an intra-day pass has not yet seen
  planned. Setting a mark is O(1): a record whose `mark` is older than the
  current one reads as 0 since the mark, and is reset when next added to.
- Counts only grow (int64 would take 2.9 million years at 100k requests/s);
  a record leaves only by eviction.
- Bounded: when more than `max_ids` ids are counted, the smallest are
  evicted down to `EVICT_TO_SHARE` of `max_ids` (so eviction, a walk of
  every record, runs once per many new ids, not on every add). Smallest
  means fewest requests since the mark, then fewest in total, then seen
  longest ago, then by id: today's demand is kept first, a flood of
  one-off ids (a scanner, hostile clients) only churns the tail.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

EVICT_TO_SHARE = 0.9
# requests, bytes, requests since the mark, bytes since the mark, first seen, last seen, mark number
_RECORD = struct.Struct("<QQQQddQ")
_MARK = struct.Struct("<Qd")  # mark number, set at


@dataclass(frozen=True, slots=True)
class Mark:
    """The current counting period: number `number`, started at `since_s` (0, 0.0: never set)."""

    number: int = 0
    since_s: float = 0.0

    def pack(self) -> bytes:
        return _MARK.pack(self.number, self.since_s)

    @classmethod
    def unpack(cls, raw: bytes | None) -> "Mark":
        if raw is None or len(raw) != _MARK.size:
            return cls()
        return cls(*_MARK.unpack(raw))

    def next(self, now_s: float) -> "Mark":
        return Mark(self.number + 1, now_s)


@dataclass(frozen=True, slots=True)
class Demand:
    """One content id's counts."""

    requests: int = 0
    bytes: int = 0
    requests_since_mark: int = 0
    bytes_since_mark: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    mark: int = 0  # the mark the since-mark counts belong to

    def pack(self) -> bytes:
        return _RECORD.pack(self.requests, self.bytes, self.requests_since_mark, self.bytes_since_mark,
                            self.first_s, self.last_s, self.mark)

    @classmethod
    def unpack(cls, raw: bytes) -> "Demand":
        return cls(*_RECORD.unpack(raw))

    def seen(self, mark: Mark) -> "Demand":
        """This record as read under `mark`: since-mark counts of an older mark are 0."""
        if self.mark == mark.number:
            return self
        return Demand(self.requests, self.bytes, 0, 0, self.first_s, self.last_s, mark.number)

    def plus(self, requests: int, nbytes: int, now_s: float, mark: Mark) -> "Demand":
        cur = self.seen(mark)
        return Demand(
            cur.requests + requests, cur.bytes + nbytes, cur.requests_since_mark + requests, cur.bytes_since_mark + nbytes,
            cur.first_s or now_s, max(cur.last_s, now_s), mark.number,
        )


def added(old: Demand | None, requests: int, nbytes: int, now_s: float, mark: Mark) -> Demand:
    """The record after a worker's tally of `requests` and `nbytes` for it."""
    if requests < 0 or nbytes < 0:
        raise ValueError(f"counts only grow: {requests} requests, {nbytes} bytes")
    return (old or Demand()).plus(requests, nbytes, now_s, mark)


def evictions(records: Iterable[tuple[str, Demand]], max_ids: int, mark: Mark) -> list[str]:
    """Ids to drop so that at most `max_ids` remain; [] while within the bound.

    Over the bound, the smallest (see the module's rules) go, down to
    `EVICT_TO_SHARE` of `max_ids`.
    """
    items = list(records)
    if len(items) <= max_ids:
        return []
    keep = int(max_ids * EVICT_TO_SHARE)

    def size(item: tuple[str, Demand]) -> tuple[int, int, float, str]:
        cid, d = item
        d = d.seen(mark)
        return (d.requests_since_mark, d.requests, d.last_s, cid)

    items.sort(key=size)
    return [cid for cid, _d in items[: len(items) - keep]]


@dataclass(frozen=True, slots=True)
class DemandSnapshot:
    """Every counted id's record, as of one read; since-mark counts belong to `mark`."""

    mark: Mark
    created_s: float  # when counting started on this appliance (the records' period in total)
    records: Mapping[str, Demand]

    def total_requests(self, since_mark: bool = False) -> int:
        return sum(d.requests_since_mark if since_mark else d.requests for d in self.records.values())
