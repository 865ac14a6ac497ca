"""The per-file request counters on disk: a small LMDB environment beside the index.

Rules kept here:
- It lives at `<index path>.counters` (a sibling of the index directory,
  like its `.holders` lock), not inside the index: `oca-admin rebuild-index`
  moves the index aside and makes a new one from the stores alone, and
  leaves these counters as they are, so the demand observed on the
  appliance survives a rebuild as well as a restart. (Keeping them in the
  index and copying them over at rebuild was rejected: a rebuild is for a
  corrupt index, whose counters could not be read.)
- One environment per process, opened after `fork()`, never used in
  another process (the pid is checked). Workers add their tallies from a
  thread, never from the serving loop; LMDB serialises writers across
  processes. Each add is one write transaction: a worker killed with -9
  loses only what it had not yet flushed.
- Bounded: `add` evicts per `oca.store.demand.evictions` when the number of
  ids passes `max_ids`. The map is sized for that bound up front.
- The records and their rules are `oca.store.demand` (pure).
"""

from __future__ import annotations

import os
from typing import Mapping

import lmdb

from oca.errors import StoreError
from oca.store.demand import Demand, DemandSnapshot, Mark, added, evictions

_META = b"meta"
_IDS = b"ids"
_K_MARK = b"mark"
_K_CREATED = b"created_s"
# Room per id in the map: a record (56 bytes), its key and LMDB's page overhead, with margin.
MAP_BYTES_PER_ID = 2048
MIN_MAP_BYTES = 64 << 20


class CountersError(StoreError):
    """The request counters cannot be opened, read or written."""


def counters_path(index_path: str) -> str:
    return os.path.normpath(index_path) + ".counters"


class RequestCounters:
    """The appliance's per-file request counters, open in this process."""

    def __init__(self, path: str, *, max_ids: int, now_s: float):
        self.path = path
        self.max_ids = max_ids
        self._pid = os.getpid()
        try:
            os.makedirs(path, exist_ok=True)
            self.env = lmdb.open(
                path, map_size=max(MIN_MAP_BYTES, max_ids * MAP_BYTES_PER_ID), max_dbs=2, subdir=True,
                readahead=False, lock=True, sync=True, metasync=True,
            )
            self.env.reader_check()
            with self.env.begin(write=True) as txn:
                self._meta = self.env.open_db(_META, txn=txn)
                self._ids = self.env.open_db(_IDS, txn=txn)
                if txn.get(_K_CREATED, db=self._meta) is None:
                    txn.put(_K_CREATED, repr(float(now_s)).encode(), db=self._meta)
        except (OSError, lmdb.Error) as exc:
            raise CountersError(f"{path}: cannot open the request counters: {exc}") from None

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            raise CountersError("the request counters must not be used across fork(); open them in the child")

    def add(self, deltas: Mapping[str, tuple[int, int]], now_s: float) -> int:
        """Add (requests, bytes) per id in one transaction; returns how many ids were evicted."""
        self._check_pid()
        evicted = 0
        try:
            with self.env.begin(write=True) as txn:
                mark = Mark.unpack(txn.get(_K_MARK, db=self._meta))
                for cid, (requests, nbytes) in deltas.items():
                    key = cid.encode("ascii")
                    raw = txn.get(key, db=self._ids)
                    txn.put(key, added(None if raw is None else Demand.unpack(raw), requests, nbytes, now_s, mark).pack(), db=self._ids)
                if txn.stat(self._ids)["entries"] > self.max_ids:
                    records = ((bytes(k).decode("ascii"), Demand.unpack(v)) for k, v in txn.cursor(db=self._ids))
                    for cid in evictions(records, self.max_ids, mark):
                        txn.delete(cid.encode("ascii"), db=self._ids)
                        evicted += 1
        except lmdb.Error as exc:
            raise CountersError(f"{self.path}: request counters not written: {exc}") from exc
        return evicted

    def set_mark(self, now_s: float) -> Mark:
        """Start a new counting period at `now_s` (the night's fill run); O(1)."""
        self._check_pid()
        try:
            with self.env.begin(write=True) as txn:
                mark = Mark.unpack(txn.get(_K_MARK, db=self._meta)).next(now_s)
                txn.put(_K_MARK, mark.pack(), db=self._meta)
        except lmdb.Error as exc:
            raise CountersError(f"{self.path}: mark not written: {exc}") from exc
        return mark

    def snapshot(self) -> DemandSnapshot:
        """Every record, as of one read transaction (a walk: call it off any serving loop)."""
        self._check_pid()
        try:
            with self.env.begin() as txn:
                mark = Mark.unpack(txn.get(_K_MARK, db=self._meta))
                raw_created = txn.get(_K_CREATED, db=self._meta)
                records = {bytes(k).decode("ascii"): Demand.unpack(v).seen(mark) for k, v in txn.cursor(db=self._ids)}
        except lmdb.Error as exc:
            raise CountersError(f"{self.path}: request counters not read: {exc}") from exc
        try:
            created = float(raw_created) if raw_created is not None else 0.0
        except ValueError:
            created = 0.0
        return DemandSnapshot(mark, created, records)

    def close(self) -> None:
        if os.getpid() == self._pid:
            self.env.close()
