"""The content store: the public face that the server, the fill agent and
`oca-admin` use (lookup, publish, remove, inventory, capacity, failures).

Rules kept here:
- Publishing is atomic: bytes go to a temporary file in the target store,
  are fsynced, renamed into place, the directory is fsynced, and only then is
  the index committed. A crash at any point leaves either nothing visible or
  the whole file; `check` cleans up the leftovers. When the commit fails (the
  index cannot grow, its disk fails) the renamed file is removed again: no
  file stays in `objects/` without its entry.
- Removal deletes the index entry first, then the file. A transfer still
  reading a removed file keeps its open descriptor and finishes normally.
- A publish or remove holds the maintenance lock shared; `check` and
  `rebuild-index` hold it exclusively, so they never see a file renamed into
  place whose index entry is not yet committed.
- ENOSPC fails that one write cleanly (the temporary file is removed) and
  leaves the store working; I/O errors that mean a dead disk fail the store.
- Only working stores' content is visible to lookups and the inventory.
- An ingest writes behind: every `WRITE_BEHIND_BYTES` it asks the kernel
  (`posix_fadvise(DONTNEED)`) to start writing back what it wrote and to drop
  what is already on disk. This only moves work earlier; durability still
  comes from the fsync before the rename. It keeps the final fsync short and
  keeps a large fill from pushing served content out of the page cache.
  (`sync_file_range` would say the same thing but `os` lacks it; copying with
  `copy_file_range` needs a second pass to hash; 32 MiB buffers and
  `posix_fallocate` measured no faster. benchmarks/store.py measures ingest
  against cp.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import threading
import time
from typing import Iterator, Mapping, NamedTuple, NoReturn

import xxhash

from oca.config import Config
from oca.ids import check_id
from oca.store.disks import (
    Capacity,
    Disk,
    StoreError,
    StoreFailedError,
    StoreFullError,
    attach,
    fsync_dir,
    is_disk_failure,
)
from oca.store import flags
from oca.store.counters import RequestCounters, counters_path
from oca.store.demand import DemandSnapshot, Mark
from oca.store.index import STATE_FAILED, STATE_OK, Changes, Entry, Index, IndexError_, StoreRecord
from oca.store.layout import (
    MARKER_NAME,
    PARTIAL_DIR,
    TMP_DIR,
    StoreRoom,
    choose_store,
    object_relpath,
    tmp_name,
)

COPY_CHUNK_BYTES = 8 << 20
# Write-behind step: large enough that the advice costs nothing next to the
# copy, small enough that writeback overlaps the copy instead of waiting for
# the final fsync (1 GiB ingest here: fsync wait about 0.3 s -> 0.03 s).
WRITE_BEHIND_BYTES = 8 << 20
LOCK_NAME = "oca-maintenance.lock"


class Located(NamedTuple):
    """Everything the server needs to send a file."""

    path: str
    size: int
    checksum: str
    mtime_s: int
    store_uuid: str


class ContentStore:
    """The stores and the index of one appliance, opened in this process."""

    def __init__(self, index: Index, disks: list[Disk], *, partial_max_age_s: float = 7 * 86400, counters_max_ids: int = 100_000):
        self.index = index
        self.disks = disks
        self.partial_max_age_s = partial_max_age_s
        self.counters_max_ids = counters_max_ids
        self._counters: RequestCounters | None = None  # opened on first use, once per process (LMDB's rule)
        self._counters_lock = threading.Lock()
        self._lock_path = os.path.join(index.path, LOCK_NAME)

    @classmethod
    def open(cls, cfg: Config, *, writable: bool = True, index: Index | None = None) -> "ContentStore":
        """Open the index (or use `index`, already open in this process) and attach the configured stores (call after fork)."""
        if index is None:
            index = Index(
                cfg.index.path,
                map_size_bytes=int(cfg.index.map_size_gb * (1 << 30)),
                max_readers=cfg.index.max_readers,
            )
        disks = [Disk(s.path, s.reserve_percent) for s in cfg.stores]
        attach(disks, index, writable=writable)
        if writable:
            configured = {d.path for d in disks}
            for rec in index.stores().values():
                if rec.path not in configured and rec.state == STATE_OK:
                    index.put_store(StoreRecord(rec.uuid, rec.path, STATE_FAILED, "store removed from config", time.time()))
        return cls(index, disks, partial_max_age_s=cfg.check.partial_max_age_h * 3600, counters_max_ids=cfg.popularity.max_ids)

    def close(self) -> None:
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        self.index.close()

    # ------------------------------------------------------------ request counters (oca.store.counters)

    def _request_counters(self) -> RequestCounters:
        with self._counters_lock:  # a worker's flush and a /popularity answer may both be first, in two threads
            if self._counters is None:
                self._counters = RequestCounters(counters_path(self.index.path), max_ids=self.counters_max_ids, now_s=time.time())
            return self._counters

    def open_counters(self) -> None:
        """Open the request counters now (a server before it serves: its descriptors stay the same afterwards)."""
        self._request_counters()

    def add_requests(self, deltas: Mapping[str, tuple[int, int]], now_s: float) -> int:
        """Add the (requests, bytes) a worker counted per id; returns the ids evicted. An LMDB write: never on a serving loop."""
        return self._request_counters().add(deltas, now_s)

    def demand(self) -> DemandSnapshot:
        """Every id's request counts (a walk: off any serving loop)."""
        return self._request_counters().snapshot()

    def mark_demand(self, now_s: float) -> Mark:
        """Start a new period of since-mark counts (the night's fill run)."""
        return self._request_counters().set_mark(now_s)

    # ------------------------------------------------------------ shared records (oca.store.flags)

    def drain(self) -> flags.Drain | None:
        return flags.read_drain(self.index)

    def set_drain(self, drain: flags.Drain | None) -> None:
        flags.write_drain(self.index, drain)

    def routes(self) -> flags.Routes:
        return flags.read_routes(self.index)

    def fill_status(self) -> flags.FillStatus:
        return flags.read_fill_status(self.index)

    def set_fill_status(self, status: flags.FillStatus) -> None:
        flags.write_fill_status(self.index, status)

    def unchosen(self) -> flags.Unchosen:
        return flags.read_unchosen(self.index)

    def set_unchosen(self, unchosen: flags.Unchosen) -> None:
        flags.write_unchosen(self.index, unchosen)

    def listed(self) -> flags.Listed:
        return flags.read_listed(self.index)

    def set_listed(self, listed: flags.Listed) -> None:
        flags.write_listed(self.index, listed)

    def generation(self) -> int:
        return self.index.generation()

    # ------------------------------------------------------------ lookups

    def entries(self) -> Iterator[Entry]:
        """Every indexed entry, servable or not (on failed stores too): for planning and reports."""
        return self.index.entries()

    def changes_since(self, since: int, limit: int | None = None) -> Changes:
        """The journal's changes after generation `since` (at most `limit` records). Walks LMDB: call off the serving loop."""
        return self.index.changes_since(since, limit)

    def store_records(self) -> dict[str, StoreRecord]:
        """What the index records of each store (state, reason), by UUID."""
        return self.index.stores()

    def disk(self, uuid: str) -> Disk | None:
        for d in self.disks:
            if d.uuid == uuid:
                return d
        return None

    def disk_by_path(self, path: str) -> Disk | None:
        path = os.path.normpath(path)
        for d in self.disks:
            if d.path == path:
                return d
        return None

    def lookup(self, content_id: str) -> Located | None:
        """Where a servable id lives, or None. Costs one LMDB read transaction, no file I/O.

        Answers are remembered until the next committed write to the index
        (`Index.locate_cached`).
        """
        return self.index.locate_cached(content_id, Located._make)

    def inventory(self) -> tuple[int, list[str]]:
        return self.index.inventory()

    def capacities(self) -> list[tuple[Disk, Capacity]]:
        return [(d, d.capacity()) for d in self.disks]

    def rooms(self) -> list[StoreRoom]:
        out = []
        for d in self.disks:
            cap = d.capacity()
            out.append(StoreRoom(d.uuid or "", d.working, cap.free_bytes, cap.reserve_bytes))
        return out

    # ------------------------------------------------------------ failures

    def refresh_states(self) -> None:
        """Adopt failures that other processes recorded in the index."""
        records = self.index.stores()
        for d in self.disks:
            rec = records.get(d.uuid or "")
            if rec is not None and rec.state != STATE_OK and d.working:
                d.state, d.reason = rec.state, rec.reason

    def mark_failed(self, disk: Disk, reason: str) -> None:
        """Take a disk out of service, here and for every other process."""
        disk.state, disk.reason = STATE_FAILED, reason
        if disk.uuid is not None:
            self.index.put_store(StoreRecord(disk.uuid, disk.path, STATE_FAILED, reason, time.time()))

    def report_io_error(self, disk: Disk, exc: OSError, doing: str) -> bool:
        """Fail `disk` if `exc` means a dead disk. True when it did."""
        if is_disk_failure(exc):
            self.mark_failed(disk, f"{doing}: {os.strerror(exc.errno or 0)}")
            return True
        if isinstance(exc, FileNotFoundError):
            problem = disk.health_problem()
            if problem is not None:
                self.mark_failed(disk, problem)
                return True
        return False

    def enable_store(self, path: str, *, new_disk: bool = False) -> str:
        """Put a failed store back in service; returns a one-line account."""
        disk = self.disk_by_path(path)
        if disk is None:
            raise StoreError(f"{path}: not a configured store")
        known = {rec.path: rec for rec in self.index.stores().values()}
        record = known.get(disk.path)
        if not os.path.isdir(disk.path):
            raise StoreError(f"{disk.path}: directory does not exist")
        marker = disk.read_marker()
        if record is None:
            raise StoreError(f"{disk.path}: the index does not know this store; run oca-admin rebuild-index")
        if marker is None or marker[0] != record.uuid:
            if not new_disk:
                what = "has no marker" if marker is None else f"holds another disk (uuid {marker[0]})"
                raise StoreError(
                    f"{disk.path}: {what}; if a new disk was put in, run enable-store --new-disk {disk.path}"
                )
            if marker is not None or not disk.is_empty():
                raise StoreError(f"{disk.path}: --new-disk needs an empty directory")
            dropped = self.index.delete_store_entries(record.uuid)
            self.index.delete_store(record.uuid)
            disk.uuid = disk.initialise()
            self.index.put_store(StoreRecord(disk.uuid, disk.path, STATE_OK, "new disk", time.time()))
            disk.state, disk.reason = STATE_OK, ""
            return f"{disk.path}: new disk initialised (uuid {disk.uuid}); {dropped} entries of the old disk forgotten"
        disk.uuid = record.uuid
        self.index.put_store(StoreRecord(record.uuid, disk.path, STATE_OK, "enabled by operator", time.time()))
        disk.ensure_dirs()
        disk.state, disk.reason = STATE_OK, ""
        return f"{disk.path}: enabled"

    # ------------------------------------------------------------ locking

    @contextlib.contextmanager
    def maintenance_lock(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ publishing

    def choose_disk(self, size_bytes: int) -> Disk:
        uuid = choose_store(self.rooms(), size_bytes)
        if uuid is None:
            if not any(d.working for d in self.disks):
                raise StoreFailedError("no working store")
            raise StoreFullError(f"no store has {size_bytes} bytes free above its reserve")
        disk = self.disk(uuid)
        assert disk is not None
        return disk

    def begin_ingest(self, content_id: str, size_bytes: int, *, disk: Disk | None = None) -> "Ingest":
        """Start writing a new file; `Ingest.commit` publishes it."""
        check_id(content_id)
        disk = disk or self.choose_disk(size_bytes)
        path = disk.join(f"{TMP_DIR}/{tmp_name(content_id, os.getpid(), secrets.token_hex(4))}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._raise_for(disk, exc, "creating a temporary file")
        return Ingest(self, content_id, disk, path, fd, size_bytes)

    def publish_file(self, src_path: str, content_id: str, *, mtime_s: int | None = None, popularity: float = 0.0) -> Entry:
        """Copy `src_path` into a store, hashing as it goes, and publish it."""
        check_id(content_id)
        with open(src_path, "rb") as src:
            st = os.fstat(src.fileno())
            ingest = self.begin_ingest(content_id, st.st_size)
            try:
                buf = bytearray(COPY_CHUNK_BYTES)
                view = memoryview(buf)
                while True:
                    n = src.readinto(buf)
                    if not n:
                        break
                    ingest.write(view[:n])
                return ingest.commit(mtime_s=int(st.st_mtime) if mtime_s is None else mtime_s, popularity=popularity)
            except BaseException:
                ingest.abort()
                raise

    def partial_dir(self, disk: Disk) -> str:
        """The directory where the fill agent keeps `disk`'s resumable downloads (left alone by check)."""
        return disk.join(PARTIAL_DIR)

    def partial_path(self, disk: Disk, name: str) -> str:
        """Where the fill agent keeps a resumable download (left alone by check)."""
        return disk.join(f"{PARTIAL_DIR}/{name}")

    def publish_prepared(
        self, disk: Disk, path: str, content_id: str, *, checksum: str, mtime_s: int, popularity: float = 0.0
    ) -> Entry:
        """Publish a complete, verified file that already lies in `disk`'s tmp or partial dir.

        The caller computed `checksum` while writing; this fsyncs, renames and
        commits exactly as an ingest does.
        """
        check_id(content_id)
        real = os.path.realpath(path)
        allowed = (os.path.realpath(disk.join(TMP_DIR)) + "/", os.path.realpath(disk.join(PARTIAL_DIR)) + "/")
        if not real.startswith(allowed):
            raise StoreError(f"{path}: not inside {disk.path}'s tmp or partial directory")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as exc:
            self._raise_for(disk, exc, "syncing a prepared file")
        return self._commit(disk, path, content_id, size, checksum, mtime_s, popularity)

    def _commit(self, disk: Disk, tmp_path: str, content_id: str, size: int, checksum: str, mtime_s: int, popularity: float) -> Entry:
        relpath = object_relpath(content_id, checksum, mtime_s)
        final = disk.join(relpath)
        fan_dir = os.path.dirname(final)
        assert disk.uuid is not None
        entry = Entry(content_id, disk.uuid, relpath, size, checksum, int(mtime_s), time.time(), float(popularity))
        with self.maintenance_lock(exclusive=False):
            try:
                if not os.path.isdir(fan_dir):
                    os.makedirs(fan_dir, exist_ok=True)
                    fsync_dir(os.path.dirname(fan_dir))
                    fsync_dir(os.path.dirname(os.path.dirname(fan_dir)))
                # The same name means the same id, checksum and mtime: the same bytes,
                # already indexed. Such a file must survive a failed commit below.
                existed = os.path.lexists(final)
                os.rename(tmp_path, final)
                fsync_dir(fan_dir)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_path)
                self._raise_for(disk, exc, "publishing")
            try:
                old = self.index.put(entry)
            except IndexError_ as exc:
                # No file renamed into place stays without its index entry.
                if not existed:
                    with contextlib.suppress(OSError):
                        os.unlink(final)
                raise StoreError(f"{content_id}: not published: {exc}") from exc
        if old is not None and (old.store_uuid, old.relpath) != (entry.store_uuid, entry.relpath):
            self._unlink_entry_file(old)
        return entry

    # ------------------------------------------------------------ removal

    def remove(self, content_id: str) -> Entry | None:
        """Delete the index entry, then the file. Returns what was removed."""
        check_id(content_id)
        with self.maintenance_lock(exclusive=False):
            old = self.index.delete(content_id)
            if old is not None:
                self._unlink_entry_file(old)
        return old

    def withdraw(self, content_id: str, path: str) -> bool:
        """Take `content_id` out of service while the index still maps it to `path`.

        For a server that found the file gone, of another size, or a link:
        the entry is deleted (so /inventory stops listing it), the file is
        left for `check`. A republished entry (another path) is kept. True
        when an entry was deleted.
        """
        entry = self.index.get(content_id)
        if entry is None:
            return False
        disk = self.disk(entry.store_uuid)
        if disk is None or disk.join(entry.relpath) != path:
            return False
        return self.index.delete(content_id, only_if=entry) is not None

    def _unlink_entry_file(self, entry: Entry) -> None:
        disk = self.disk(entry.store_uuid)
        if disk is None:
            return
        try:
            os.unlink(disk.join(entry.relpath))
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.report_io_error(disk, exc, "deleting")

    def _raise_for(self, disk: Disk, exc: OSError, doing: str) -> NoReturn:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"{disk.path}: disk full while {doing}") from exc
        if self.report_io_error(disk, exc, doing):
            raise StoreFailedError(f"{disk.path}: store failed while {doing}: {disk.reason}") from exc
        raise StoreError(f"{disk.path}: {doing}: {exc.strerror or exc}") from exc


class Ingest:
    """A file being written into a store; nothing is visible until `commit`."""

    def __init__(self, cs: ContentStore, content_id: str, disk: Disk, path: str, fd: int, size_hint: int):
        self.cs = cs
        self.content_id = content_id
        self.disk = disk
        self.path = path
        self._fd: int | None = fd
        self._hasher = xxhash.xxh3_128()
        self.size = 0
        self.size_hint = size_hint
        self._behind_mark = 0  # size at the last write-behind advice
        self._behind_from = 0  # start of the range the next advice covers

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None, "ingest already finished"
        self._hasher.update(data)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self.size += n
        except OSError as exc:
            self.abort()
            self.cs._raise_for(self.disk, exc, "writing")
        if self.size - self._behind_mark >= WRITE_BEHIND_BYTES:
            self._write_behind()

    def _write_behind(self) -> None:
        """Start writeback of the newest bytes; drop the previous step's, now clean.

        Each byte is advised twice: once to start its writeback, once a step
        later to drop it from the page cache if it has reached the disk by
        then. Errors are left to the fsync in `commit`, which reports them.
        """
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._fd, self._behind_from, self.size - self._behind_from, os.POSIX_FADV_DONTNEED)
        self._behind_from, self._behind_mark = self._behind_mark, self.size

    def commit(self, *, mtime_s: int, popularity: float = 0.0, expected_checksum: str | None = None, expected_size: int | None = None) -> Entry:
        assert self._fd is not None, "ingest already finished"
        checksum = self._hasher.hexdigest()
        if expected_size is not None and expected_size != self.size:
            self.abort()
            raise StoreError(f"{self.content_id}: got {self.size} bytes, expected {expected_size}")
        if expected_checksum is not None and expected_checksum != checksum:
            self.abort()
            raise StoreError(f"{self.content_id}: checksum {checksum} does not match expected {expected_checksum}")
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.cs._raise_for(self.disk, exc, "syncing")
        os.close(fd)
        return self.cs._commit(self.disk, self.path, self.content_id, self.size, checksum, mtime_s, popularity)

    def abort(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def __enter__(self) -> "Ingest":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


__all__ = ["ContentStore", "Ingest", "Located", "MARKER_NAME", "STATE_OK", "STATE_FAILED"]
