"""The LMDB index: content id → store, file, size, checksum, times, popularity.

Rules kept here:
- One environment per process, opened after `fork()` and never used in
  another process (`Index` remembers its pid and refuses). Stale reader slots
  left by killed processes are cleared at open (`reader_check`).
- Many reader processes, one writer at a time (LMDB's own lock). Readers
  never block the writer. A map size is set large up front (sparse on disk),
  and a reader that sees another process grow the map adopts the new size.
- The schema version is recorded in `meta`. An older index is migrated at
  open by a writer; a newer one is refused, never touched.
- Every change to the set of servable ids (publish, remove, a store failing
  or coming back) bumps the generation in the same transaction and appends
  to a bounded journal, so pollers can ask what changed since a generation.
- `locate_cached` (the serving path's lookup) remembers answers per id only
  while LMDB's last committed transaction id is unchanged; every write,
  by any process, commits and so empties it. At most LOCATED_MAX ids.
- The index holds no file data: the store layer writes and fsyncs files
  before committing here, and deletes the entry here before the file.
- A write that finds the map full doubles the map and runs once more (the
  failed transaction was aborted, so nothing is applied twice); if it is
  still full, or LMDB fails otherwise, it raises `IndexWriteError` and the
  index is as it was before the write.
- Every open `Index` holds a shared `flock` on `<index path>.holders` (a
  sibling of the directory, so it survives the directory being moved aside)
  for as long as it is open. `rebuild-index` takes it exclusively and
  without waiting: it refuses while a server, a fill run or another
  `oca-admin` has the index open, and an open during a rebuild is refused.
  (Making running servers notice a rebuilt index and reopen it was
  rejected: every worker would need a second code path on the serving loop
  for an offline repair that the operator runs with the server stopped.)

Records are packed with `struct` rather than JSON: a lookup is one `get` and
one unpack (about a microsecond), which is the serving path's budget.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import lmdb

from oca.errors import StoreError
from oca.store.identity import STATE_FAILED, STATE_OK, StoreRecord

SCHEMA_VERSION = 2
# Version history:
#   1: meta, objects and stores databases; no generation journal.
#   2: adds the `journal` database and the `generation` counter.

JOURNAL_KEEP = 100_000
_META = b"meta"
_OBJECTS = b"objects"
_STORES = b"stores"
_JOURNAL = b"journal"
_K_SCHEMA = b"schema_version"
_K_GENERATION = b"generation"
_K_STORES_VERSION = b"stores_version"
_U64 = struct.Struct(">Q")
# store uuid (16 raw), checksum (16 raw), size, origin mtime, added, popularity, then relpath
_RECORD = struct.Struct("<16s16sQqdd")
_LOCATE = struct.Struct("<16s16sQq")  # the prefix of _RECORD that serving needs
# `locate_cached` keeps at most this many answers; a full cache is emptied.
LOCATED_MAX = 4096
_MISS = object()
_T = TypeVar("_T")

# The current pid, kept up to date across fork() so the per-lookup guard
# costs a list index rather than a getpid() system call.
_current_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _current_pid.__setitem__(0, os.getpid()))



class IndexError_(StoreError):
    """The index cannot be opened or used."""


class IndexBusyError(IndexError_):
    """Another process holds the index open (or is rebuilding it)."""


class IndexWriteError(IndexError_):
    """A write was not committed (map full even after growing, or the index's disk failed)."""


class IndexCorruptError(IndexError_):
    """The LMDB files are damaged; `oca-admin rebuild-index` recovers."""


class SchemaError(IndexError_):
    """The index was written by a newer version of this software."""


def holders_path(index_path: str) -> str:
    """The lock file every open index holds shared (see the module docstring)."""
    return os.path.normpath(index_path) + ".holders"


def lock_holder_pids(path: str) -> list[int]:
    """Pids holding a `flock` on `path`, read from /proc/locks (best effort: [] if unknown)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = set()
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        try:
            kind, pid, dev = fields[1], int(fields[4]), fields[5].split(":")
            found = (int(dev[0], 16), int(dev[1], 16), int(dev[2]))
        except (IndexError, ValueError):
            continue
        if kind == "FLOCK" and found == want and pid != os.getpid():
            pids.add(pid)
    return sorted(pids)


def hold_index(index_path: str, *, exclusive: bool) -> int:
    """Take the holders lock without waiting; returns its fd. Raises `IndexBusyError`."""
    lock_path = holders_path(index_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        try:  # a reader that may not write beside the index can still lock an existing file
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise IndexError_(f"{lock_path}: cannot open the index's lock file: {exc.strerror}") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise IndexError_(f"{lock_path}: cannot lock: {exc.strerror}") from None
        pids = lock_holder_pids(lock_path)
        who = f" (pids {', '.join(map(str, pids))})" if pids else ""
        if exclusive:
            raise IndexBusyError(
                f"{index_path}: the index is open in other processes{who}; stop oca-server and "
                "any fill run or oca-admin command first"
            ) from None
        raise IndexBusyError(f"{index_path}: the index is being rebuilt{who}; try again when oca-admin rebuild-index ends") from None
    return fd


def _writer(method):
    """Run an `Index` write method; on a full map grow the map and run it once more."""

    @functools.wraps(method)
    def run(self: "Index", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except lmdb.MapFullError:
            self._grow_map()
        except lmdb.Error as exc:
            raise IndexWriteError(f"{self.path}: index write failed: {exc}") from exc
        try:
            return method(self, *args, **kwargs)
        except lmdb.MapFullError:
            raise IndexWriteError(
                f"{self.path}: index map is full at {self.env.info()['map_size']} bytes; raise [index] map_size_gb"
            ) from None
        except lmdb.Error as exc:
            raise IndexWriteError(f"{self.path}: index write failed: {exc}") from exc

    return run


@dataclass(frozen=True, slots=True)
class Entry:
    content_id: str
    store_uuid: str
    relpath: str
    size: int
    checksum: str  # xxh3-128, 32 lowercase hex digits
    mtime_s: int  # the origin's modification time
    added_s: float
    popularity: float

    def pack(self) -> bytes:
        return _RECORD.pack(
            bytes.fromhex(self.store_uuid),
            bytes.fromhex(self.checksum),
            self.size,
            self.mtime_s,
            self.added_s,
            self.popularity,
        ) + self.relpath.encode("utf-8")

    @classmethod
    def unpack(cls, content_id: str, raw: bytes) -> "Entry":
        store, checksum, size, mtime, added, popularity = _RECORD.unpack_from(raw)
        return cls(
            content_id,
            store.hex(),
            bytes(raw[_RECORD.size :]).decode("utf-8"),
            size,
            checksum.hex(),
            mtime,
            added,
            popularity,
        )


@dataclass(frozen=True, slots=True)
class Changes:
    """What `changes_since` found: kind is "unchanged", "delta" or "full"."""

    kind: str
    generation: int  # the generation this answer brings its reader to
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    latest: int = field(default=0, compare=False)  # the index's generation when read (> generation: more pages follow)

    @property
    def more(self) -> bool:
        return self.latest > self.generation


def _migrate_1_to_2(txn: lmdb.Transaction, env: lmdb.Environment) -> None:
    env.open_db(_JOURNAL, txn=txn)
    meta = env.open_db(_META, txn=txn)
    if txn.get(_K_GENERATION, db=meta) is None:
        txn.put(_K_GENERATION, _U64.pack(1), db=meta)


_MIGRATIONS = {1: _migrate_1_to_2}


class Index:
    """An open LMDB index, usable only in the process that opened it."""

    def __init__(self, path: str, *, map_size_bytes: int = 16 << 30, max_readers: int = 2048, readonly: bool = False,
                 hold: bool = True):
        """Open the index. `hold=False` only for `rebuild-index`, which holds the lock exclusively itself."""
        self.path = path
        self.readonly = readonly
        self._pid = os.getpid()
        if not readonly:
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            raise IndexError_(f"{path}: index does not exist")
        self._hold_fd = hold_index(path, exclusive=False) if hold else None
        try:
            self._open_env(path, map_size_bytes, max_readers, readonly)
        except BaseException:
            self._release()
            raise
        self._stores_version: object = -1
        self._stores_cache: dict[str, StoreRecord] = {}
        self._working: dict[bytes, tuple[str, str]] = {}
        # locate_cached: answers valid while LMDB's last committed transaction
        # id is still _located_at (any committed write moves it, in any process).
        self._located: dict[str, Any] = {}
        self._located_at = -1

    def _open_env(self, path: str, map_size_bytes: int, max_readers: int, readonly: bool) -> None:
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size_bytes,
                max_dbs=8,
                max_readers=max_readers,
                subdir=True,
                readonly=readonly,
                lock=True,
                readahead=False,
                metasync=True,
                sync=True,
            )
        except lmdb.InvalidError as exc:
            raise IndexCorruptError(f"{path}: index is corrupt ({exc}); run oca-admin rebuild-index") from None
        except lmdb.Error as exc:
            raise IndexError_(f"{path}: cannot open index: {exc}") from None
        try:
            self.env.reader_check()
            self._open_dbs()
        except lmdb.CorruptedError as exc:
            self.env.close()
            raise IndexCorruptError(f"{path}: index is corrupt ({exc}); run oca-admin rebuild-index") from None
        except IndexError_:
            self.env.close()  # a refused index must not stay open in this process
            raise

    def _release(self) -> None:
        fd, self._hold_fd = self._hold_fd, None
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------ set-up

    def _open_dbs(self) -> None:
        env = self.env
        if self.readonly:
            # Handles are opened without a txn: a handle opened inside a
            # read-only transaction dies with it (LMDB 0.9 publishes new
            # handles only on a write commit), and every later read would
            # fail with "mdb_get: Invalid argument". py-lmdb's own internal
            # transaction keeps them.
            try:
                self._meta = env.open_db(_META, create=False)
                with env.begin() as txn:
                    version = self._schema(txn)
                self._check_version(version, writable=False)
                self._objects = env.open_db(_OBJECTS, create=False)
                self._stores = env.open_db(_STORES, create=False)
                self._journal = env.open_db(_JOURNAL, create=False)
            except lmdb.NotFoundError:
                self.env.close()
                raise IndexError_(f"{self.path}: not an oca index (a database is missing)") from None
            return
        with env.begin(write=True) as txn:
            self._meta = env.open_db(_META, txn=txn)
            self._objects = env.open_db(_OBJECTS, txn=txn)
            self._stores = env.open_db(_STORES, txn=txn)
            version = self._schema(txn)
            if version is None:  # a new index
                txn.put(_K_SCHEMA, str(SCHEMA_VERSION).encode(), db=self._meta)
                txn.put(_K_GENERATION, _U64.pack(1), db=self._meta)
                txn.put(_K_STORES_VERSION, _U64.pack(1), db=self._meta)
                version = SCHEMA_VERSION
            self._check_version(version, writable=True)
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](txn, env)
                version += 1
                txn.put(_K_SCHEMA, str(version).encode(), db=self._meta)
            self._journal = env.open_db(_JOURNAL, txn=txn)

    def _schema(self, txn: lmdb.Transaction) -> int | None:
        raw = txn.get(_K_SCHEMA, db=self._meta)
        if raw is None:
            return None
        try:
            return int(bytes(raw))
        except ValueError:
            raise IndexCorruptError(f"{self.path}: schema version {bytes(raw)!r} is unreadable") from None

    def _check_version(self, version: int | None, writable: bool) -> None:
        if version is None:
            raise IndexError_(f"{self.path}: not an oca index (no schema version)")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path}: index schema version {version} is newer than this software's "
                f"{SCHEMA_VERSION}; upgrade oca or rebuild the index"
            )
        if version < SCHEMA_VERSION and not writable:
            raise SchemaError(f"{self.path}: index schema {version} needs migrating; start a writer first")

    def _guard(self) -> None:
        if os.getpid() != self._pid:
            raise IndexError_("an LMDB index must not be used across fork(); open it in the child")

    def _begin(self, write: bool) -> lmdb.Transaction:
        """A transaction; a map another process grew is adopted first."""
        self._guard()
        if write and self.readonly:
            raise IndexError_(f"{self.path}: index was opened read-only")
        try:
            return self.env.begin(write=write, buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(write=write, buffers=False)

    def _read(self) -> lmdb.Transaction:
        return self._begin(write=False)

    def _write(self) -> lmdb.Transaction:
        return self._begin(write=True)

    def _grow_map(self) -> None:
        """Double the map (sparse on disk); other processes adopt it at their next transaction."""
        size = self.env.info()["map_size"]
        try:
            self.env.set_mapsize(size * 2)
        except lmdb.Error as exc:
            raise IndexWriteError(f"{self.path}: index map is full at {size} bytes and cannot grow: {exc}") from exc

    def close(self) -> None:
        if os.getpid() == self._pid:
            self.env.close()
            self._release()

    # ------------------------------------------------------------ reads

    def schema_version(self) -> int:
        with self._read() as txn:
            return self._schema(txn) or 0

    def get(self, content_id: str) -> Entry | None:
        with self._read() as txn:
            raw = txn.get(content_id.encode("ascii"), db=self._objects)
        return None if raw is None else Entry.unpack(content_id, raw)

    def lookup(self, content_id: str) -> tuple[Entry, StoreRecord] | None:
        """The entry and its store, only when that store is working."""
        found = self.locate(content_id)
        if found is None:
            return None
        entry = self.get(content_id)
        if entry is None:
            return None
        return entry, self._stores_cache[entry.store_uuid]

    def locate(self, content_id: str) -> tuple[str, int, str, int, str] | None:
        """The serving path's lookup: (absolute path, size, checksum hex, origin mtime, store uuid).

        None when the id is unknown or its store is not working. One read
        transaction with two gets (the entry and the stores' version), and
        no `Entry` object.
        """
        txn = self._begin_read()
        try:
            return self._locate_in(txn, content_id)
        finally:
            txn.abort()

    def locate_cached(self, content_id: str, make: Callable[[tuple[str, int, str, int, str]], _T]) -> _T | None:
        """`make(found)` for `found = locate(content_id)` (None stays None), remembered per id.

        This runs once per request. A remembered answer is given only while
        the index's last committed transaction id (read in a fresh read
        transaction, so a commit by any process is seen) is the one it was
        read under: a publish, remove, replace or store state change commits a
        write, which empties the cache, so a deleted or replaced file is never
        answered from it. A hit costs one read transaction and no get.
        """
        txn = self._begin_read()
        try:
            txnid = txn.id()
            if txnid == self._located_at:
                hit = self._located.get(content_id, _MISS)
                if hit is not _MISS:
                    return hit
            else:
                self._located.clear()
                self._located_at = txnid
            found = self._locate_in(txn, content_id)
        finally:
            txn.abort()
        value = None if found is None else make(found)
        located = self._located
        if len(located) >= LOCATED_MAX:
            located.clear()
        located[content_id] = value
        return value

    def _begin_read(self) -> lmdb.Transaction:
        if self._pid != _current_pid[0]:
            self._guard()
        try:
            return self.env.begin(buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(buffers=False)

    def _locate_in(self, txn: lmdb.Transaction, content_id: str) -> tuple[str, int, str, int, str] | None:
        raw = txn.get(content_id.encode("ascii"), db=self._objects)
        if raw is None:
            return None
        version = txn.get(_K_STORES_VERSION, db=self._meta)
        if version != self._stores_version:
            self._load_stores(txn, version)
        store_raw, checksum_raw, size, mtime = _LOCATE.unpack_from(raw)
        store = self._working.get(store_raw)
        if store is None:
            return None
        return f"{store[0]}/{raw[_RECORD.size:].decode()}", size, checksum_raw.hex(), mtime, store[1]

    def _load_stores(self, txn: lmdb.Transaction, version: object) -> None:
        cache = {}
        working = {}
        for key, raw in txn.cursor(db=self._stores):
            uuid = bytes(key).decode()
            rec = StoreRecord.unpack(uuid, raw)
            cache[uuid] = rec
            if rec.state == STATE_OK:
                working[bytes.fromhex(uuid)] = (rec.path, uuid)
        self._stores_cache = cache
        self._working = working
        self._stores_version = version  # type: ignore[assignment]

    def entries(self) -> Iterator[Entry]:
        """Every entry, servable or not, in id order (a consistent snapshot)."""
        with self._read() as txn:
            for key, raw in txn.cursor(db=self._objects):
                yield Entry.unpack(bytes(key).decode("ascii"), raw)

    def count(self) -> int:
        with self._read() as txn:
            return txn.stat(self._objects)["entries"]

    def stores(self) -> dict[str, StoreRecord]:
        with self._read() as txn:
            out = {}
            for key, raw in txn.cursor(db=self._stores):
                uuid = bytes(key).decode()
                out[uuid] = StoreRecord.unpack(uuid, raw)
            return out

    def generation(self) -> int:
        with self._read() as txn:
            return _U64.unpack(txn.get(_K_GENERATION, db=self._meta))[0]

    def inventory(self) -> tuple[int, list[str]]:
        """(generation, ids whose store is working), from one snapshot."""
        with self._read() as txn:
            generation = _U64.unpack(txn.get(_K_GENERATION, db=self._meta))[0]
            working = set()
            for key, raw in txn.cursor(db=self._stores):
                if StoreRecord.unpack(bytes(key).decode(), raw).state == STATE_OK:
                    working.add(bytes.fromhex(bytes(key).decode()))
            ids = [
                bytes(key).decode("ascii")
                for key, raw in txn.cursor(db=self._objects)
                if bytes(raw[:16]) in working
            ]
        return generation, ids

    def changes_since(self, since: int, limit: int | None = None) -> Changes:
        """What changed in the servable set after generation `since`.

        "full" when the journal no longer reaches back that far, or when a
        store changed state in between (too many ids moved to list). With
        `limit`, at most that many journal records are read: the answer's
        `generation` is the last one read, and `latest` says how far the
        journal goes, so a reader continues with `since=generation`.
        The walk is a Python loop over a cursor (about 2 µs a record): call
        it from a thread, never from a serving event loop.
        """
        with self._read() as txn:
            generation = _U64.unpack(txn.get(_K_GENERATION, db=self._meta))[0]
            if since == generation:
                return Changes("unchanged", generation, latest=generation)
            if since > generation or since < 1:
                return Changes("full", generation, latest=generation)
            cursor = txn.cursor(db=self._journal)
            if not cursor.first() or _U64.unpack(cursor.key())[0] > since + 1:
                return Changes("full", generation, latest=generation)
            if not cursor.set_range(_U64.pack(since + 1)):
                return Changes("full", generation, latest=generation)
            state: dict[str, bool] = {}
            reached = since
            budget = limit if limit is not None else -1
            for key, raw in cursor:
                if budget == 0:
                    break
                budget -= 1
                op, name = raw[:1], bytes(raw[1:]).decode("ascii")
                if op == b"*":
                    return Changes("full", generation, latest=generation)
                state[name] = op == b"+"
                reached = _U64.unpack(key)[0]
            if limit is None:
                reached = generation
        added = tuple(sorted(k for k, v in state.items() if v))
        removed = tuple(sorted(k for k, v in state.items() if not v))
        return Changes("delta", reached, added, removed, latest=generation)

    def get_flag(self, name: str) -> str | None:
        with self._read() as txn:
            raw = txn.get(b"flag:" + name.encode(), db=self._meta)
        return None if raw is None else raw.decode()

    # ------------------------------------------------------------ writes

    def _bump(self, txn: lmdb.Transaction, op: bytes, name: str = "") -> int:
        generation = _U64.unpack(txn.get(_K_GENERATION, db=self._meta))[0] + 1
        txn.put(_K_GENERATION, _U64.pack(generation), db=self._meta)
        txn.put(_U64.pack(generation), op + name.encode("ascii"), db=self._journal)
        if generation % 1024 == 0:
            self._trim_journal(txn, generation)
        return generation

    def _trim_journal(self, txn: lmdb.Transaction, generation: int) -> None:
        cutoff = _U64.pack(max(0, generation - JOURNAL_KEEP))
        cursor = txn.cursor(db=self._journal)
        if cursor.first():
            while cursor.key() < cutoff:
                if not cursor.delete():
                    break

    @_writer
    def put(self, entry: Entry) -> Entry | None:
        """Insert or replace an entry; returns the entry it replaced."""
        key = entry.content_id.encode("ascii")
        with self._write() as txn:
            old = txn.get(key, db=self._objects)
            txn.put(key, entry.pack(), db=self._objects)
            self._bump(txn, b"+", entry.content_id)
        return None if old is None else Entry.unpack(entry.content_id, old)

    @_writer
    def put_many(self, entries: list[Entry]) -> None:
        """Insert many entries in one transaction (rebuild-index)."""
        with self._write() as txn:
            for entry in entries:
                txn.put(entry.content_id.encode("ascii"), entry.pack(), db=self._objects)
                self._bump(txn, b"+", entry.content_id)

    @_writer
    def set_popularity(self, content_id: str, popularity: float) -> bool:
        key = content_id.encode("ascii")
        with self._write() as txn:
            raw = txn.get(key, db=self._objects)
            if raw is None:
                return False
            e = Entry.unpack(content_id, raw)
            txn.put(key, Entry(e.content_id, e.store_uuid, e.relpath, e.size, e.checksum, e.mtime_s, e.added_s, popularity).pack(), db=self._objects)
        return True

    @_writer
    def delete(self, content_id: str, *, only_if: Entry | None = None) -> Entry | None:
        """Delete an entry; returns it. With `only_if`, only when it is still that entry."""
        key = content_id.encode("ascii")
        with self._write() as txn:
            raw = txn.get(key, db=self._objects)
            if raw is None:
                return None
            old = Entry.unpack(content_id, raw)
            if only_if is not None and old != only_if:
                return None
            txn.delete(key, db=self._objects)
            self._bump(txn, b"-", content_id)
        return old

    @_writer
    def delete_store_entries(self, store_uuid: str) -> int:
        """Forget every entry of one store (a disk replaced by a new one)."""
        raw_uuid = bytes.fromhex(store_uuid)
        n = 0
        with self._write() as txn:
            cursor = txn.cursor(db=self._objects)
            keys = [bytes(k) for k, v in cursor if bytes(v[:16]) == raw_uuid]
            for key in keys:
                txn.delete(key, db=self._objects)
                n += 1
            self._bump(txn, b"*")
        return n

    def _bump_stores_version(self, txn: lmdb.Transaction) -> None:
        """Tell every process's `locate` cache that the stores changed."""
        version = _U64.unpack(txn.get(_K_STORES_VERSION, db=self._meta) or _U64.pack(0))[0]
        txn.put(_K_STORES_VERSION, _U64.pack(version + 1), db=self._meta)

    @_writer
    def put_store(self, record: StoreRecord) -> None:
        """Record a store; a change of working state bumps the generation."""
        key = record.uuid.encode()
        with self._write() as txn:
            old = txn.get(key, db=self._stores)
            old_state = None if old is None else StoreRecord.unpack(record.uuid, old).state
            txn.put(key, record.pack(), db=self._stores)
            self._bump_stores_version(txn)
            if old_state != record.state and (old_state == STATE_OK or record.state == STATE_OK):
                self._bump(txn, b"*")

    @_writer
    def delete_store(self, uuid: str) -> None:
        with self._write() as txn:
            txn.delete(uuid.encode(), db=self._stores)
            self._bump_stores_version(txn)
            self._bump(txn, b"*")

    @_writer
    def set_flag(self, name: str, value: str | None) -> None:
        with self._write() as txn:
            key = b"flag:" + name.encode()
            if value is None:
                txn.delete(key, db=self._meta)
            else:
                txn.put(key, value.encode(), db=self._meta)


def create_v1_index_for_tests(path: str, entries: list[Entry], stores: list[StoreRecord]) -> None:
    """Write a schema-1 index (no journal, no generation): the migration's input."""
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(path, map_size=64 << 20, max_dbs=8, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(_META, txn=txn)
        objects = env.open_db(_OBJECTS, txn=txn)
        stores_db = env.open_db(_STORES, txn=txn)
        txn.put(_K_SCHEMA, b"1", db=meta)
        txn.put(_K_STORES_VERSION, _U64.pack(1), db=meta)
        for e in entries:
            txn.put(e.content_id.encode(), e.pack(), db=objects)
        for s in stores:
            txn.put(s.uuid.encode(), s.pack(), db=stores_db)
    env.close()
