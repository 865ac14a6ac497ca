"""Data disks: identity markers, attaching stores to the index, failure.

Rules kept here:
- Each store directory carries a marker (`.oca-store`: a UUID and a format
  version). The index records which UUID belongs to which path.
- An empty directory the index has never seen is initialised on first use.
  Nothing else is ever initialised silently: a path the index knows whose
  marker is missing (an empty mount point is what a dead disk looks like) or
  carries another UUID (a disk swapped into another slot), a marker of an
  unknown format, or a non-empty directory without a marker is a failed
  store, and its content leaves lookups and the inventory.
- A failed state is written to the index, so it survives a restart until an
  operator runs `oca-admin enable-store`.
- I/O errors that mean the disk is gone or broken (EIO, ENODEV, ENXIO,
  ENOTCONN, ESTALE, EROFS...) fail the store; ENOSPC never does.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import uuid as uuidlib
from dataclasses import dataclass

from oca.errors import OcaError
from oca.store.index import STATE_FAILED, STATE_OK, Index, StoreRecord
from oca.store.layout import FORMAT_VERSION, IGNORABLE_IN_EMPTY, MARKER_NAME, STORE_DIRS

# errnos after which a disk cannot be trusted: it is taken out of service.
DISK_FAILURE_ERRNOS = frozenset(
    {errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOTCONN, errno.ESTALE, errno.EROFS, errno.EUCLEAN, errno.EBADMSG}
)


class StoreError(OcaError):
    """A store could not do what was asked."""


class StoreFullError(StoreError):
    """No store has room (or the chosen one hit ENOSPC). The store stays working."""


class StoreFailedError(StoreError):
    """The store's disk failed; it has been taken out of service."""


class StoreUnreadableError(StoreError):
    """A directory of the store cannot be listed: its files are unknown, not missing."""


def is_disk_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FAILURE_ERRNOS


@dataclass(frozen=True, slots=True)
class Capacity:
    total_bytes: int
    used_bytes: int
    free_bytes: int
    reserve_bytes: int

    def as_dict(self) -> dict[str, int]:
        return {
            "total_bytes": self.total_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
            "reserve_bytes": self.reserve_bytes,
        }


class Disk:
    """One store directory as this process sees it."""

    def __init__(self, path: str, reserve_percent: float):
        self.path = path
        self.reserve_percent = reserve_percent
        self.uuid: str | None = None
        self.state = STATE_FAILED
        self.reason = "not attached"

    @property
    def working(self) -> bool:
        return self.state == STATE_OK

    def join(self, relpath: str) -> str:
        return f"{self.path}/{relpath}"

    def capacity(self) -> Capacity:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return Capacity(0, 0, 0, 0)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        reserve = int(total * self.reserve_percent / 100)
        return Capacity(total, used, free, reserve)

    def read_marker(self) -> tuple[str, int] | None:
        """(uuid, format) from the marker; None when there is none. Raises OSError/StoreError."""
        try:
            with open(os.path.join(self.path, MARKER_NAME), "rb") as fh:
                raw = fh.read(4096)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            return str(uuidlib.UUID(doc["uuid"]).hex), int(doc["format"])
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{self.path}: marker {MARKER_NAME} is unreadable") from None

    def is_empty(self) -> bool:
        return not (set(os.listdir(self.path)) - IGNORABLE_IN_EMPTY)

    def initialise(self) -> str:
        """Write a new marker (atomically) and the store's directories."""
        new_uuid = uuidlib.uuid4().hex
        for name in STORE_DIRS:
            os.makedirs(os.path.join(self.path, name), exist_ok=True)
        tmp = os.path.join(self.path, MARKER_NAME + ".new")
        with open(tmp, "w") as fh:
            json.dump({"uuid": str(uuidlib.UUID(new_uuid)), "format": FORMAT_VERSION}, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, os.path.join(self.path, MARKER_NAME))
        fsync_dir(self.path)
        return new_uuid

    def ensure_dirs(self) -> None:
        for name in STORE_DIRS:
            os.makedirs(os.path.join(self.path, name), exist_ok=True)

    def health_problem(self) -> str | None:
        """Why this disk cannot be used right now, or None if it looks sound."""
        try:
            marker = self.read_marker()
        except OSError as exc:
            return f"cannot read marker: {os.strerror(exc.errno or 0)}"
        except StoreError as exc:
            return str(exc)
        if marker is None:
            return "marker missing (disk vanished or unmounted?)"
        if marker[0] != self.uuid:
            return f"marker uuid {marker[0]} is not this store's {self.uuid}"
        return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def attach(disks: list[Disk], index: Index, *, now_s: float | None = None, writable: bool = True) -> None:
    """Give every disk its identity and state, following the module's rules.

    With `writable`, new empty stores are initialised and registered, and
    newly found failures are recorded in the index. Read-only callers (the
    server's workers) only classify.
    """
    now_s = time.time() if now_s is None else now_s
    known = index.stores()
    by_path = {rec.path: rec for rec in known.values()}
    for disk in disks:
        record = by_path.get(disk.path)
        problem, marker = _inspect(disk)
        if record is not None:
            disk.uuid = record.uuid
            if problem is None:
                if marker is None:
                    problem = "marker missing: empty mount point or dead disk; never re-initialised"
                elif marker[0] != record.uuid:
                    problem = f"another disk is mounted here (uuid {marker[0]}, expected {record.uuid})"
                elif marker[1] != FORMAT_VERSION:
                    problem = f"unknown store format {marker[1]}"
            if problem is None and record.state != STATE_OK:
                problem = f"{record.reason or 'failed'} (failed since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.since_s))}; run oca-admin enable-store)"
                _set(disk, STATE_FAILED, problem)
                continue
            if problem is None:
                _set(disk, STATE_OK, "")
                if writable:
                    disk.ensure_dirs()
            else:
                _set(disk, STATE_FAILED, problem)
                if writable:
                    index.put_store(StoreRecord(record.uuid, disk.path, STATE_FAILED, problem, now_s))
            continue
        # A path the index has never seen.
        if problem is not None:
            _set(disk, STATE_FAILED, problem)
            continue
        if marker is not None:
            owner = known.get(marker[0])
            if owner is not None:
                problem = f"this disk belongs in {owner.path} (uuid {marker[0]}); disk swapped between slots?"
            elif marker[1] != FORMAT_VERSION:
                problem = f"unknown store format {marker[1]}"
            else:
                problem = "store has a marker but is not in the index; run oca-admin rebuild-index"
            disk.uuid = marker[0]
            _set(disk, STATE_FAILED, problem)
            continue
        try:
            empty = disk.is_empty()
        except OSError as exc:
            _set(disk, STATE_FAILED, f"cannot list directory: {os.strerror(exc.errno or 0)}")
            continue
        if not empty:
            _set(disk, STATE_FAILED, "directory is not empty and has no store marker; refusing to initialise it")
            continue
        if not writable:
            _set(disk, STATE_FAILED, "new store not initialised yet (start a writer: oca-admin check)")
            continue
        disk.uuid = disk.initialise()
        index.put_store(StoreRecord(disk.uuid, disk.path, STATE_OK, "initialised", now_s))
        _set(disk, STATE_OK, "")


def _inspect(disk: Disk) -> tuple[str | None, tuple[str, int] | None]:
    try:
        mode = os.stat(disk.path).st_mode
    except FileNotFoundError:
        return "directory does not exist", None
    except OSError as exc:  # EIO, ENOTCONN...: a dead disk, not a missing directory
        return f"cannot reach the store: {os.strerror(exc.errno or 0)}", None
    if not stat.S_ISDIR(mode):
        return "not a directory", None
    try:
        return None, disk.read_marker()
    except OSError as exc:
        return f"cannot read marker: {os.strerror(exc.errno or 0)}", None
    except StoreError as exc:
        return str(exc), None


def _set(disk: Disk, state: str, reason: str) -> None:
    disk.state = state
    disk.reason = reason
