"""A worker's per-file request tally, and the loop that flushes it to the store's counters.

Rules kept here:
- On the serving loop a content request costs one dict lookup and two
  integer additions (`App.content`: requests and body bytes per content id,
  in `Tally.counts`); nothing else about counting runs there.
- Every `[popularity] flush_s` the supervised `flush` loop swaps the tally
  for an empty one and adds what it held to the store's counters
  (`ContentStore.add_requests`, an LMDB write) in a thread. A write that
  fails puts the counts back, so they are added by the next flush, and
  raises: the supervisor logs, counts and restarts the loop, and `/health`
  names it while it is down.
- At a clean stop the worker flushes once more after serving ends, so a
  restart loses nothing; kill -9 loses at most one interval's counts.
- The tally is bounded like the store: past `max_ids` distinct ids between
  two flushes, new ids are not counted until the next flush (the counts of
  ids already in the tally still are), so a flood of distinct ids cannot
  grow a worker's memory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from oca.store.content import ContentStore


class Tally:
    """Requests and body bytes per content id since the last flush (one worker's)."""

    __slots__ = ("counts", "max_ids", "dropped")

    def __init__(self, max_ids: int):
        self.counts: dict[str, list[int]] = {}  # content id -> [requests, bytes]
        self.max_ids = max_ids
        self.dropped = 0  # requests not counted because the tally was full

    def slot(self, content_id: str) -> list[int] | None:
        """The [requests, bytes] of a content id not yet in the tally; None when the tally is full."""
        if len(self.counts) >= self.max_ids:
            self.dropped += 1
            return None
        c = self.counts[content_id] = [0, 0]
        return c

    def take(self) -> dict[str, tuple[int, int]]:
        """What was counted since the last take; the tally starts again empty."""
        counts, self.counts = self.counts, {}
        return {cid: (c[0], c[1]) for cid, c in counts.items()}

    def put_back(self, deltas: dict[str, tuple[int, int]]) -> None:
        """Counts a failed flush did not write: added to what was counted since."""
        for cid, (requests, nbytes) in deltas.items():
            c = self.counts.get(cid)
            if c is None:
                self.counts[cid] = [requests, nbytes]
            else:
                c[0] += requests
                c[1] += nbytes


def flush_now(tally: Tally, store: ContentStore, now: Callable[[], float] = time.time) -> int:
    """Write the tally to the store (in the calling thread); returns the ids counted. Counts stay on failure."""
    deltas = tally.take()
    if not deltas:
        return 0
    try:
        store.add_requests(deltas, now())
    except BaseException:
        tally.put_back(deltas)
        raise
    return len(deltas)


async def flush(tally: Tally, store: ContentStore, interval_s: float) -> None:
    """The supervised loop: every `interval_s`, the tally goes to the store in a thread."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        deltas = tally.take()
        if not deltas:
            continue
        try:
            await loop.run_in_executor(None, store.add_requests, deltas, time.time())
        except BaseException:
            tally.put_back(deltas)
            raise
