"""Data disks: identity markers, attaching stores to the index, failure.

Rules kept here:
- Each store directory carries a marker (`.oca-store`: a UUID and a format
  version). The index records which UUID belongs to which path.
- Which directories may serve, which are initialised and which failures are
  recorded is decided by `oca.store.identity.classify_store` (pure, with its
  rule table); `attach` gathers its inputs and carries out its action.
  Nothing but an empty directory the index has never seen is initialised.
  A failed store's content leaves lookups and the inventory.
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

from oca.errors import StoreError
from oca.store.identity import (
    ACTION_ENSURE_DIRS,
    ACTION_INITIALISE,
    ACTION_RECORD_FAILURE,
    LISTING_EMPTY,
    LISTING_NOT_NEEDED,
    LISTING_USED,
    STATE_FAILED,
    STATE_OK,
    MarkerSeen,
    StoreRecord,
    classify_store,
)
from oca.store.index import Index
from oca.store.layout import FORMAT_VERSION, IGNORABLE_IN_EMPTY, MARKER_NAME, STORE_DIRS

# errnos after which a disk cannot be trusted: it is taken out of service.
DISK_FAILURE_ERRNOS = frozenset(
    {errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOTCONN, errno.ESTALE, errno.EROFS, errno.EUCLEAN, errno.EBADMSG}
)


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

    def inspect(self) -> MarkerSeen:
        """What the directory and its marker look like now (never raises)."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return MarkerSeen(problem="directory does not exist")
        except OSError as exc:  # EIO, ENOTCONN...: a dead disk, not a missing directory
            return MarkerSeen(problem=f"cannot reach the store: {os.strerror(exc.errno or 0)}")
        if not stat.S_ISDIR(mode):
            return MarkerSeen(problem="not a directory")
        try:
            marker = self.read_marker()
        except OSError as exc:
            return MarkerSeen(problem=f"cannot read marker: {os.strerror(exc.errno or 0)}")
        except StoreError as exc:
            return MarkerSeen(problem=str(exc))
        return MarkerSeen() if marker is None else MarkerSeen(uuid=marker[0], format=marker[1])

    def health_problem(self) -> str | None:
        """Why this disk cannot be used right now, or None if it looks sound."""
        seen = self.inspect()
        if seen.problem is not None:
            return seen.problem
        if seen.uuid is None:
            return "marker missing (disk vanished or unmounted?)"
        if seen.uuid != self.uuid:
            return f"marker uuid {seen.uuid} is not this store's {self.uuid}"
        return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def attach(disks: list[Disk], index: Index, *, now_s: float | None = None, writable: bool = True) -> None:
    """Give every disk its identity and state: gather, `classify_store`, carry out its action.

    With `writable`, new empty stores are initialised and registered, and
    newly found failures are recorded in the index. Read-only callers (the
    server's workers) only classify.
    """
    now_s = time.time() if now_s is None else now_s
    known = index.stores()
    by_path = {rec.path: rec for rec in known.values()}
    for disk in disks:
        record = by_path.get(disk.path)
        marker = disk.inspect()
        owner = known.get(marker.uuid) if marker.uuid is not None else None
        listing = _listing(disk) if record is None and marker.problem is None and marker.uuid is None else LISTING_NOT_NEEDED
        state, reason, action, uuid = classify_store(record, marker, listing, owner=owner, writable=writable)
        disk.uuid = uuid
        if action == ACTION_ENSURE_DIRS:
            disk.ensure_dirs()
        elif action == ACTION_RECORD_FAILURE:
            assert uuid is not None
            index.put_store(StoreRecord(uuid, disk.path, STATE_FAILED, reason, now_s))
        elif action == ACTION_INITIALISE:
            disk.uuid = disk.initialise()
            index.put_store(StoreRecord(disk.uuid, disk.path, STATE_OK, "initialised", now_s))
        disk.state, disk.reason = state, reason


def _listing(disk: Disk) -> str:
    try:
        return LISTING_EMPTY if disk.is_empty() else LISTING_USED
    except OSError as exc:
        return f"cannot list directory: {os.strerror(exc.errno or 0)}"
