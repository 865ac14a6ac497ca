"""Where things live inside a store, and which store a new file goes to.

Nothing here performs I/O. Rules kept here:
- A store directory holds a marker file, `objects/` (published files spread
  over two levels of 256 fan-out directories), `tmp/` (ingests in progress,
  removed by `check`), `partial/` (the fill agent's resumable downloads, kept
  by `check` until they are old) and `quarantine/` (files `check` and `verify`
  took out of service).
- A published file's name carries its own metadata,
  ``<content id>@<xxh3-128 hex>@<origin mtime, unix s>``, so one `rename` makes
  the file and its metadata appear together and `rebuild-index` needs nothing
  but the directory tree. ``@`` never occurs in a content id. (Extended
  attributes were rejected: tmpfs and FUSE stores do not all keep them, and
  setting them is a second, non-atomic step.)
- The fan-out directory comes from a hash of the id, never from the id's own
  characters, so any id spreads evenly and a client's path never becomes a
  file path.
- A new file goes to the working store with the most room left above its
  reserve; a store whose reserve would be touched is never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

from oca.ids import check_id, is_valid_id

MARKER_NAME = ".oca-store"
FORMAT_VERSION = 1
OBJECTS_DIR = "objects"
TMP_DIR = "tmp"
PARTIAL_DIR = "partial"
QUARANTINE_DIR = "quarantine"
STORE_DIRS = (OBJECTS_DIR, TMP_DIR, PARTIAL_DIR, QUARANTINE_DIR)
# Entries a fresh file system may already hold that do not make a directory
# "used" (mkfs.ext4 creates lost+found).
IGNORABLE_IN_EMPTY = frozenset({"lost+found"})
CHECKSUM_HEX_LENGTH = 32


def fanout(content_id: str) -> str:
    """The two-level fan-out directory for an id, e.g. ``"3f/a2"``."""
    digest = xxhash.xxh3_64_hexdigest(content_id.encode("ascii"))
    return f"{digest[:2]}/{digest[2:4]}"


def object_name(content_id: str, checksum_hex: str, mtime_s: int) -> str:
    check_id(content_id)
    if len(checksum_hex) != CHECKSUM_HEX_LENGTH or not _is_hex(checksum_hex):
        raise ValueError(f"checksum must be {CHECKSUM_HEX_LENGTH} lowercase hex digits")
    return f"{content_id}@{checksum_hex}@{int(mtime_s)}"


def object_relpath(content_id: str, checksum_hex: str, mtime_s: int) -> str:
    return f"{OBJECTS_DIR}/{fanout(content_id)}/{object_name(content_id, checksum_hex, mtime_s)}"


def parse_object_name(name: str) -> tuple[str, str, int] | None:
    """``id@checksum@mtime`` → (id, checksum, mtime), or None if not ours."""
    parts = name.split("@")
    if len(parts) != 3:
        return None
    content_id, checksum_hex, mtime_text = parts
    if not is_valid_id(content_id):
        return None
    if len(checksum_hex) != CHECKSUM_HEX_LENGTH or not _is_hex(checksum_hex):
        return None
    # ASCII digits with at most one leading minus, so that int() cannot raise
    # on any name found on disk ("--5" and "\u00b2" are not ours).
    if not _is_decimal(mtime_text.removeprefix("-")):
        return None
    return content_id, checksum_hex, int(mtime_text)


def tmp_name(content_id: str, pid: int, token: str) -> str:
    """Name of an ingest's temporary file: the pid lets `check` spare live ones."""
    return f"{content_id}.{pid}.{token}.tmp"


def parse_tmp_pid(name: str) -> int | None:
    parts = name.rsplit(".", 3)
    if len(parts) != 4 or parts[3] != "tmp" or not _is_decimal(parts[1]):
        return None
    return int(parts[1])


def _is_decimal(text: str) -> bool:
    """One or more ASCII digits (str.isdigit() also takes "\u00b2", which int() refuses)."""
    return text.isascii() and text.isdigit()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True, slots=True)
class StoreRoom:
    """What placement needs to know about one store."""

    uuid: str
    working: bool
    free_bytes: int
    reserve_bytes: int

    @property
    def usable_bytes(self) -> int:
        return max(0, self.free_bytes - self.reserve_bytes)


def choose_store(rooms: list[StoreRoom] | tuple[StoreRoom, ...], size_bytes: int) -> str | None:
    """The uuid of the store a new file of `size_bytes` goes to, or None.

    The working store with the most usable room wins; ties go to the lowest
    uuid so the choice is deterministic. A store that would dip into its
    reserve is never chosen.
    """
    best: StoreRoom | None = None
    for room in rooms:
        if not room.working or room.usable_bytes < size_bytes:
            continue
        if best is None or (room.usable_bytes, _neg(room.uuid)) > (best.usable_bytes, _neg(best.uuid)):
            best = room
    return best.uuid if best else None


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)
