"""Open file descriptors of recently served files (nginx's open_file_cache).

Rules kept here:
- Keyed by the file's path, which names its content (id, checksum, origin
  mtime: see `oca.store.layout`). A republished file with other bytes has
  another path, so a cached descriptor can never serve stale bytes, and the
  index lookup that precedes every use means a removed file is never served
  from the cache to a new request. A transfer already under way keeps its
  descriptor and finishes.
- After `open` the file is re-`fstat`ed: a size that differs from the index
  is refused, never served.
- At most `max_entries` stay open, and one unused for `inactive_s` is closed
  by the sweep, so deleted files do not hold disk space for long. With
  `max_entries == 0` nothing is cached: every entry is closed as soon as
  no response uses it, whether the response held it (`release`) or not
  (`unused`: HEAD, 304, 412, 416, empty files).
- Files are opened with O_NOFOLLOW: a symbolic link under `objects/` is
  never followed (ELOOP), so a link planted in a store cannot serve
  another file's bytes.
- Retired entries (evicted while a response still uses them) are kept in a
  set: releasing one costs O(1), however many are retired.
- Each entry carries the pre-built header lines that depend only on the
  file (type, ETag, Last-Modified, CORS...), so a hit costs no formatting.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable


def _close(fd: int) -> None:
    """Close `fd`, ignoring the error close() may return.

    Linux releases the descriptor whatever close() returns (EIO from a FUSE
    or NFS flush included), so there is nothing to retry, and raising here
    would interrupt the error path that aborts the client and fails the
    store; the I/O error itself is seen and reported where the file is read.
    """
    try:
        os.close(fd)
    except OSError:
        pass


class CachedFile:
    __slots__ = ("fd", "size", "block", "etag", "last_modified", "last_modified_s", "store_uuid", "used", "refs", "content_type", "retired")

    def __init__(self, fd: int, size: int, block: bytes, etag: str, last_modified: str, last_modified_s: int, store_uuid: str, content_type: str):
        self.fd = fd
        self.size = size
        self.block = block
        self.etag = etag
        self.last_modified = last_modified
        self.last_modified_s = last_modified_s
        self.store_uuid = store_uuid
        self.content_type = content_type
        self.used = 0.0
        self.refs = 0  # responses in flight using the fd
        self.retired = False  # no longer in the cache: closed when refs reaches 0


class SizeMismatch(Exception):
    """The file on disk is not the size the index says (gone files raise FileNotFoundError)."""


class FdCache:
    def __init__(self, max_entries: int, inactive_s: float):
        self.max_entries = max_entries
        self.inactive_s = inactive_s
        self._entries: "OrderedDict[str, CachedFile]" = OrderedDict()
        self._retired: set[CachedFile] = set()
        self._flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> CachedFile | None:
        entry = self._entries.get(path)
        if entry is not None:
            self._entries.move_to_end(path)
        return entry

    def open(self, path: str, expected_size: int, make: Callable[[int, int], CachedFile]) -> CachedFile:
        """Open `path` (raising OSError), check its size, cache and return it."""
        fd = os.open(path, self._flags)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            _close(fd)
            raise
        if size != expected_size:
            _close(fd)
            raise SizeMismatch(f"{path}: {size} bytes on disk, index says {expected_size}")
        entry = make(fd, size)
        if self.max_entries == 0:
            entry.retired = True  # closed by `release` or `unused`
            self._retired.add(entry)
        else:
            self._entries[path] = entry
            while len(self._entries) > self.max_entries:
                _path, old = self._entries.popitem(last=False)
                self._retire(old)
        return entry

    def release(self, entry: CachedFile) -> None:
        """A response using `entry` is done; close it if it was evicted meanwhile."""
        entry.refs -= 1
        self.unused(entry)

    def unused(self, entry: CachedFile) -> None:
        """A response decided without holding `entry` (no body): close it if uncached."""
        if entry.refs <= 0 and entry.retired and entry in self._retired:
            self._retired.discard(entry)
            _close(entry.fd)

    @property
    def retired_count(self) -> int:
        return len(self._retired)

    def _retire(self, entry: CachedFile) -> None:
        entry.retired = True
        if entry.refs > 0:
            self._retired.add(entry)
        else:
            _close(entry.fd)

    def sweep(self, now: float) -> None:
        stale = [p for p, e in self._entries.items() if now - e.used > self.inactive_s]
        for p in stale:
            self._retire(self._entries.pop(p))

    def drop_store(self, store_uuid: str) -> None:
        for p in [p for p, e in self._entries.items() if e.store_uuid == store_uuid]:
            self._retire(self._entries.pop(p))

    def clear(self) -> None:
        for p in list(self._entries):
            self._retire(self._entries.pop(p))
