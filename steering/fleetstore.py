"""The fleet view a poller writes and its decision workers read, changed in place: mapped files and one LMDB.

Rules kept here:
- A store is a directory `<snapshot_file>.store/s<id>/`, named by the
  symlink `<snapshot_file>.store/current`. A store belongs to one registry
  (its appliances' ids, in order: an appliance's index is its position);
  another registry, or a catalogue wider than `WIDTH_FILES`, makes a new
  store beside it and swaps the link. Readers follow the link.
- Files of a store:
  - `head`: `HEAD_SLOTS` int64 counters (`H_*`), what is valid in the rest.
  - `appliances`: the registry's ids, one a line.
  - `states`: one byte per appliance (`SERVES | OVERLOADED | UP | DRAINING`).
  - `gens`: per appliance, int64 inventory generation, routes generation,
    number of files held.
  - `catalogue`: the 64-bit hash (`oca.inventory_wire.id_hash`) of every
    content id seen, in order of first sight, `<u8`: a file's index is its
    position. Append-only; `H_FILES` says how many are valid, and grows
    only after the hashes are written.
  - `holdings`: one bitmap row of `WIDTH_FILES` bits per appliance (bit f
    of row a: appliance a holds file f). The poller writes rows with
    `pwrite` (page cache, not its own memory); readers map the file.
  - `versions`: per file, a uint32 bumped when an appliance's holding of it
    changes by a delta; `H_HOLD_EPOCH` is bumped when a whole row is
    replaced. A reader's cached holder list is good while both are equal.
  - `routes/`: LMDB; db `p` (dupsort, dupfixed): family byte, length byte,
    network (4 or 16 bytes) → the 4-byte big-endian indexes of the
    appliances announcing it; db `r`: appliance index → its admitted
    routes, one a line (read back when the poller restarts).
- Route changes are one write transaction per appliance with only the
  prefixes that changed; a reader uses one read transaction per decision
  and probes the prefix lengths ever written (`H_LEN4`, `H_LEN6`): longest
  prefix matching with no table to build.
- The mapped parts are not transactional: a reader sees each byte as it
  lands. A state or a bitmap byte is whole; a row being replaced may be
  half old, half new for an instant, and a decision reads one file's bit of
  it, so it sees that file held or not, never a wrong appliance.
- A reader trusts nothing it cannot check: magic, version, sizes. A store
  that does not check is not used (the poller makes a new one; a worker
  answers from nothing until it can open one).
- With the poller killed, everything written stays (the page cache is the
  kernel's): a restarted poller reopens the store, its workers answer from
  it at once, marked stale (`H_ROUNDS` is 0 until the first round ends).
"""

from __future__ import annotations

import mmap
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import lmdb
import numpy as np

from oca.inventory_wire import id_hash
from steering.lpm import format_prefix, parse_prefix

MAGIC = 0x4F434146_4C454554  # "OCAFLEET"
VERSION = 1
HEAD_SLOTS = 64
H_MAGIC, H_VERSION, H_APPLIANCES, H_WIDTH, H_FILES, H_ROUNDS, H_LAST_ROUND_US, H_STATES_EPOCH = range(8)
H_HOLD_EPOCH, H_PREFIXES, H_LEN4, H_LEN6, H_RESTORED_US, H_ROUTES_EPOCH = 8, 9, 10, 11, 14, 15  # H_LEN6: 3 slots
# 2^19 files: 64 KB a row, 1.3 GB of file at 20,000 appliances, sparse past the catalogue's end.
WIDTH_FILES = 1 << 19
MAP_BYTES = 1 << 34  # the routes LMDB's address space (pages are used as written)
SERVES, OVERLOADED, UP, DRAINING = 1, 2, 4, 8


class StoreError(Exception):
    """A store that cannot be used; the text says why."""


def state_byte(up: bool, draining: bool, overloaded: bool, serves: bool) -> int:
    return (SERVES if serves else 0) | (OVERLOADED if overloaded else 0) | (UP if up else 0) | (DRAINING if draining else 0)


def prefix_key(cidr: str) -> bytes:
    version, value, length = parse_prefix(cidr)
    return bytes((version, length)) + value.to_bytes(4 if version == 4 else 16, "big")


def _map(path: Path, dtype, shape, writable: bool):
    return np.memmap(path, dtype=dtype, mode="r+" if writable else "r", shape=shape)


@dataclass(frozen=True, slots=True)
class RestoredAppliance:
    state: int  # state byte
    inventory_generation: int
    routes_generation: int
    count: int
    routes: tuple[str, ...]


class FleetStoreWriter:
    """The poller's side. Methods that write may be called from several threads: one lock orders them."""

    def __init__(self, root: str, registry_ids: Sequence[str]):
        self.root = Path(root)
        self.ids = list(registry_ids)
        self.n = len(self.ids)
        self.lock = threading.RLock()
        self.restored: dict[int, RestoredAppliance] = {}
        self.why_new = ""
        self._keys: dict[tuple, list[bytes]] = {}
        self._pending: list[tuple] = []
        current = self.root / "current"
        try:
            self._open(current.resolve(strict=True))
            self.restored = self._read_back()
        except (OSError, StoreError, lmdb.Error, ValueError) as exc:
            self.why_new = f"{exc}"[:200]
            self._create()

    # ---------------------------------------------------------------- opening

    def _create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        d = self.root / f"s{secrets.token_hex(6)}"
        d.mkdir()
        (d / "appliances").write_text("".join(f"{a}\n" for a in self.ids))
        for name, size in (("head", 8 * HEAD_SLOTS), ("states", max(1, self.n)), ("gens", 24 * max(1, self.n)),
                           ("catalogue", 8 * WIDTH_FILES), ("versions", 4 * WIDTH_FILES), ("holdings", max(1, self.n) * WIDTH_FILES // 8)):
            with open(d / name, "wb") as fh:
                fh.truncate(size)
        head = _map(d / "head", np.int64, (HEAD_SLOTS,), True)
        head[H_VERSION], head[H_APPLIANCES], head[H_WIDTH] = VERSION, self.n, WIDTH_FILES
        head[H_MAGIC] = MAGIC  # last: a store is whole once its magic is there
        head.flush()
        del head
        link = self.root / f"current.{os.getpid()}"
        if link.is_symlink():
            link.unlink()
        os.symlink(d.name, link)
        os.replace(link, self.root / "current")
        self._open(d)

    def _open(self, d: Path) -> None:
        ids = (d / "appliances").read_text().splitlines()
        if ids != self.ids:
            raise StoreError("the store's appliances are not the registry's")
        head = _map(d / "head", np.int64, (HEAD_SLOTS,), True)
        if head[H_MAGIC] != MAGIC or head[H_VERSION] != VERSION or head[H_WIDTH] != WIDTH_FILES or head[H_APPLIANCES] != self.n:
            raise StoreError("not a fleet store of this version and size")
        n = max(1, self.n)
        self.dir = d
        self.head = head
        self.states = _map(d / "states", np.uint8, (n,), True)
        self.gens = _map(d / "gens", np.int64, (n, 3), True)
        self.versions = _map(d / "versions", np.uint32, (WIDTH_FILES,), True)
        self._cat_fd = os.open(d / "catalogue", os.O_RDWR)
        self._hold_fd = os.open(d / "holdings", os.O_RDWR)
        self.env = lmdb.open(str(d / "routes"), map_size=MAP_BYTES, max_dbs=3, sync=False, metasync=False, readahead=False)
        self.pdb = self.env.open_db(b"p", dupsort=True, dupfixed=True)
        self.gdb = self.env.open_db(b"g", dupsort=True, dupfixed=True)
        self.rdb = self.env.open_db(b"r")
        self._group_of: dict[tuple, int] = {}  # a route list → its group
        self._members: dict[int, int] = {}  # group → how many appliances announce it
        self._group_at: dict[int, tuple[int, tuple]] = {}  # appliance → (group, its list)
        self._next_group = 0
        files = int(head[H_FILES])
        hashes = np.frombuffer(os.pread(self._cat_fd, 8 * files, 0), dtype="<u8") if files else np.zeros(0, "<u8")
        if len(hashes) != files:
            raise StoreError("catalogue shorter than its count")
        self.hash_index: dict[int, int] = dict(zip(hashes.tolist(), range(files)))
        # A hash table over the catalogue, at most half full: a full inventory is looked up in one pass of numpy.
        self._tkeys = np.zeros(2 * WIDTH_FILES, dtype=np.uint64)
        self._tvals = np.full(2 * WIDTH_FILES, -1, dtype=np.int32)
        for i, h in enumerate(hashes.tolist()):
            self._insert(h, i)

    def _read_back(self) -> dict[int, RestoredAppliance]:
        out = {}
        with self.env.begin(db=self.rdb) as txn:
            for i in range(self.n):
                g = self.gens[i]
                rec = txn.get(i.to_bytes(4, "big"))
                routes = tuple(rec[4:].decode("ascii").split("\n")) if rec and len(rec) > 4 else ()
                if routes:
                    gid = int.from_bytes(rec[:4], "big")
                    if self._group_of.setdefault(routes, gid) != gid:
                        raise StoreError(f"appliance {i}: its route group disagrees with another's")
                    self._next_group = max(self._next_group, gid + 1)
                    self._members[gid] = self._members.get(gid, 0) + 1
                    self._group_at[i] = (gid, routes)
                out[i] = RestoredAppliance(int(self.states[i]), int(g[0]), int(g[1]), int(g[2]), routes)
        return out

    def close(self) -> None:
        for fd in (self._cat_fd, self._hold_fd):
            os.close(fd)
        self.env.close()

    # ---------------------------------------------------------------- the catalogue

    def _insert(self, h: int, i: int) -> None:
        mask = len(self._tkeys) - 1
        slot = h & mask
        while self._tvals[slot] >= 0:
            slot = (slot + 1) & mask
        self._tkeys[slot] = h
        self._tvals[slot] = i

    def _append(self, new: list[int]) -> None:
        """New hashes get the next indexes: written to the file, then counted in the head."""
        start = len(self.hash_index)
        if start + len(new) > WIDTH_FILES:
            raise StoreError(f"the catalogue would pass {WIDTH_FILES} files")
        os.pwrite(self._cat_fd, np.array(new, dtype="<u8").tobytes(), 8 * start)
        for k, h in enumerate(new):
            self.hash_index[h] = start + k
            self._insert(h, start + k)
        self.head[H_FILES] = start + len(new)

    def _lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Catalogue index per hash, -1 when unseen: open addressing (linear probing) over the whole array at once."""
        mask = np.uint64(len(self._tkeys) - 1)
        slot = (hashes & mask).astype(np.int64)
        out = np.full(len(hashes), -1, dtype=np.int64)
        pending = np.arange(len(hashes))
        while len(pending):
            at = slot[pending]
            vals = self._tvals[at]
            hit = (self._tkeys[at] == hashes[pending]) & (vals >= 0)
            out[pending[hit]] = vals[hit]
            pending = pending[~hit & (vals >= 0)]  # an empty slot ends the probe: unseen
            slot[pending] = (slot[pending] + 1) & int(mask)
        return out

    def indexes_of_hashes(self, hashes: np.ndarray, intern: bool = True) -> np.ndarray:
        """The catalogue indexes of `hashes` (numpy uint64); unseen ones are added (or left out if not `intern`)."""
        with self.lock:
            out = self._lookup(hashes)
            miss = np.flatnonzero(out < 0)
            if len(miss) and intern:
                self._append(list(dict.fromkeys(hashes[miss].tolist())))
                out[miss] = self._lookup(hashes[miss])
            return out[out >= 0]

    def indexes_of_ids(self, ids: Iterable[str], intern: bool = True) -> np.ndarray:
        return self.indexes_of_hashes(np.array([id_hash(c) for c in ids], dtype=np.uint64), intern)

    # ---------------------------------------------------------------- holdings

    def replace_row(self, a: int, files: np.ndarray, generation: int) -> None:
        """Appliance `a` holds exactly `files` (catalogue indexes) at `generation`."""
        with self.lock:
            width = (int(self.head[H_FILES]) + 63) // 64 * 64
            bits = np.zeros(width, dtype=bool)
            bits[files] = True
            os.pwrite(self._hold_fd, np.packbits(bits, bitorder="little").tobytes(), a * (WIDTH_FILES // 8))
            self.gens[a] = (generation, self.gens[a][1], len(files))
            self.head[H_HOLD_EPOCH] += 1

    def change_row(self, a: int, added: np.ndarray, removed: np.ndarray, generation: int) -> None:
        """A delta: `added` set, then `removed` cleared (removed wins for a file in both)."""
        with self.lock:
            row = a * (WIDTH_FILES // 8)
            count = int(self.gens[a][2])
            for files, on in ((added, True), (removed, False)):
                for f in files.tolist():
                    at = row + (f >> 3)
                    old = os.pread(self._hold_fd, 1, at)[0]
                    new = old | (1 << (f & 7)) if on else old & ~(1 << (f & 7)) & 0xFF
                    if new != old:
                        os.pwrite(self._hold_fd, bytes((new,)), at)
                        count += 1 if on else -1
                        self.versions[f] += 1
            self.gens[a] = (generation, self.gens[a][1], count)

    # ---------------------------------------------------------------- routes and states

    def _keys_of(self, routes: tuple) -> list[bytes]:
        keys = self._keys.get(routes)
        if keys is None:
            if len(self._keys) > 2 * self.n + 16:
                self._keys.clear()
            keys = self._keys[routes] = [prefix_key(p) for p in routes]
        return keys

    def queue_routes(self, a: int, old: tuple, new: tuple, generation: int) -> None:
        """Appliance `a` announces `new` (it announced `old`); written by the next `flush_routes`."""
        with self.lock:
            self._pending.append((a, old, new, generation))

    def set_routes(self, a: int, old: tuple, new: tuple, generation: int) -> None:
        self.queue_routes(a, old, new, generation)
        self.flush_routes()

    def flush_routes(self) -> int:
        """Every queued route change in one transaction, with only what changed; returns how many.

        Appliances announcing the same list (a site's) share one route group:
        a prefix is written once per group, not once per appliance (4.5 M
        prefix entries become 1 M for a fleet's 1 M prefixes). One transaction
        for many appliances: each commit copies every B-tree page it touched,
        and a list's prefixes are spread over the whole tree.
        """
        with self.lock:
            pending, self._pending = self._pending, []
            if not pending:
                return 0
            masks = [int(self.head[H_LEN4])] + [int(self.head[H_LEN6 + k]) for k in range(3)]
            count = 0
            with self.env.begin(write=True) as txn:
                pcur = txn.cursor(db=self.pdb)
                gcur = txn.cursor(db=self.gdb)
                for a, old, new, generation in pending:
                    value = a.to_bytes(4, "big")
                    was = self._group_at.pop(a, None)
                    if was is not None:
                        gid, routes = was
                        if gcur.set_key_dup(gid.to_bytes(4, "big"), value):
                            gcur.delete()
                        self._members[gid] -= 1
                        if self._members[gid] == 0:  # nobody announces this list any more: its prefixes go
                            del self._members[gid]
                            del self._group_of[routes]
                            g = gid.to_bytes(4, "big")
                            for key in self._keys_of(routes):
                                if pcur.set_key_dup(key, g):
                                    pcur.delete()
                                    if not pcur.set_key(key):
                                        count -= 1
                    if new:
                        gid = self._group_of.get(new)
                        if gid is None:
                            gid = self._group_of[new] = self._next_group
                            self._next_group += 1
                            self._members[gid] = 0
                            g = gid.to_bytes(4, "big")
                            for key in self._keys_of(new):
                                if not pcur.set_key(key):
                                    count += 1
                                    length = key[1]
                                    if key[0] == 4:
                                        masks[0] |= 1 << length
                                    else:
                                        masks[1 + length // 62] |= 1 << (length % 62)
                                pcur.put(key, g, dupdata=True)
                        self._members[gid] += 1
                        self._group_at[a] = (gid, new)
                        gcur.put(gid.to_bytes(4, "big"), value, dupdata=True)
                    at = self._group_at.get(a)
                    txn.put(value, (at[0] if at else 0).to_bytes(4, "big") + "\n".join(new).encode("ascii"), db=self.rdb)
                    self.gens[a] = (self.gens[a][0], generation, self.gens[a][2])
            self.head[H_LEN4] = masks[0]
            for k in range(3):
                self.head[H_LEN6 + k] = masks[1 + k]
            self.head[H_PREFIXES] += count
            self.head[H_ROUTES_EPOCH] += 1
            return len(pending)

    def write_states(self, states: Sequence[int], rounds: int, now_s: float) -> None:
        with self.lock:
            self.states[: len(states)] = np.array(states, dtype=np.uint8)
            self.head[H_ROUNDS] = rounds
            self.head[H_LAST_ROUND_US] = int(now_s * 1e6)
            self.head[H_STATES_EPOCH] += 1

    def mark_restarted(self, restored_s: float | None) -> None:
        """At the poller's start: rounds from 0 again; `restored_s` when the old store's contents are answered from."""
        with self.lock:
            self.head[H_ROUNDS] = 0
            self.head[H_RESTORED_US] = int(restored_s * 1e6) if restored_s is not None else 0
            self.head[H_STATES_EPOCH] += 1


class FleetStoreReader:
    """A worker's side: maps a store and answers what a decision needs from it."""

    def __init__(self, root: str):
        self.root = Path(root)
        d = (self.root / "current").resolve(strict=True)
        self.dir = d
        self.ids = (d / "appliances").read_text().splitlines()
        self.n = len(self.ids)
        # Plain mapped memoryviews: an index into one costs a tenth of a numpy memmap's, and a decision makes dozens.
        self._maps = [self._mapped(d / name) for name in ("head", "states", "versions", "gens")]
        self.head = self._maps[0].cast("q")
        if len(self.head) != HEAD_SLOTS or self.head[H_MAGIC] != MAGIC or self.head[H_VERSION] != VERSION or self.head[H_WIDTH] != WIDTH_FILES or self.head[H_APPLIANCES] != self.n:
            raise StoreError(f"{d}: not a fleet store of this version and size")
        n = max(1, self.n)
        self.states = self._maps[1]
        self.versions = self._maps[2].cast("I")
        if len(self.states) < n or len(self.versions) != WIDTH_FILES:
            raise StoreError(f"{d}: files of the wrong size")
        with open(d / "holdings", "rb") as fh:
            self._hold = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        self._matrix = np.frombuffer(self._hold, dtype=np.uint8).reshape(n, WIDTH_FILES // 8)
        self._cat_fd = os.open(d / "catalogue", os.O_RDONLY)
        self.hash_index: dict[int, int] = {}
        self.env = lmdb.open(str(d / "routes"), map_size=MAP_BYTES, max_dbs=3, readonly=True, lock=True, readahead=False)
        self.pdb = self.env.open_db(b"p", create=False, dupsort=True, dupfixed=True)
        self.gdb = self.env.open_db(b"g", create=False, dupsort=True, dupfixed=True)
        self._masks: tuple = ()
        self._lengths: dict[int, list[int]] = {4: [], 6: []}

    @staticmethod
    def _mapped(path: Path) -> memoryview:
        with open(path, "rb") as fh:
            return memoryview(mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ))

    def current(self) -> bool:
        """Whether the link still names this store."""
        try:
            return (self.root / "current").resolve(strict=True) == self.dir
        except OSError:
            return False

    def close(self) -> None:
        os.close(self._cat_fd)
        self.env.close()

    def file_index(self, content_id: str) -> int | None:
        files = self.head[H_FILES]
        known = len(self.hash_index)
        if files > known:
            new = np.frombuffer(os.pread(self._cat_fd, 8 * (files - known), 8 * known), dtype="<u8").tolist()
            self.hash_index.update(zip(new, range(known, known + len(new))))
        return self.hash_index.get(id_hash(content_id))

    def gens_count(self, a: int) -> int:
        """The number of files appliance `a` holds."""
        return int.from_bytes(self._maps[3][24 * a + 16 : 24 * a + 24], "little", signed=True)

    def holds(self, a: int, f: int) -> bool:
        return (self._hold[a * (WIDTH_FILES // 8) + (f >> 3)] >> (f & 7)) & 1 == 1

    def column(self, f: int) -> np.ndarray:
        """Per appliance, nonzero when it holds file f."""
        return self._matrix[:, f >> 3] & (1 << (f & 7))

    def holders(self, f: int) -> np.ndarray:
        """Indexes of the appliances holding file f."""
        return np.flatnonzero(self._matrix[:, f >> 3] & (1 << (f & 7)))

    def file_version(self, f: int) -> tuple[int, int]:
        return self.head[H_HOLD_EPOCH], self.versions[f]

    def lengths(self, version: int) -> list[int]:
        head = self.head
        masks = (head[H_LEN4], head[H_LEN6], head[H_LEN6 + 1], head[H_LEN6 + 2])
        if masks != self._masks:
            self._masks = masks
            self._lengths[4] = [n for n in range(32, -1, -1) if masks[0] >> n & 1]
            self._lengths[6] = [n for n in range(128, -1, -1) if masks[1 + n // 62] >> (n % 62) & 1]
        return self._lengths[version]

    def route_matches(self, version: int, addr: int) -> list[tuple[str, int, list[int]]]:
        """(cidr, length, appliance indexes) of every announced prefix containing `addr`, longest first."""
        bits, size = (32, 4) if version == 4 else (128, 16)
        out = []
        lengths = self.lengths(version)
        if not lengths:
            return out
        with self.env.begin(db=self.pdb, buffers=True) as txn:
            cur = txn.cursor()
            gcur = txn.cursor(db=self.gdb)
            for length in lengths:
                net = addr >> (bits - length) << (bits - length) if length else 0
                if cur.set_key(bytes((version, length)) + net.to_bytes(size, "big")):
                    members = []
                    for g in [bytes(v) for v in cur.iternext_dup(keys=False)]:
                        if gcur.set_key(g):
                            members.extend(int.from_bytes(v, "big") for v in gcur.iternext_dup(keys=False))
                    if members:
                        out.append((format_prefix(version, net, length), length, sorted(members)))
        return out
