"""Which disk a store directory holds, and whether it may serve: the decision, without the I/O.

Nothing here performs I/O. `oca.store.disks.attach` reads the index's record
for the path, the directory's marker and (for a path the index does not
know) whether the directory is empty, calls `classify_store`, and carries out
the action it returns. Rules kept here:
- A path the index knows serves only while its marker carries the recorded
  UUID in a known format, and the index does not record it as failed. A
  missing marker (an empty mount point is what a dead disk looks like) or
  another UUID (a disk swapped into another slot) fails it; it is never
  re-initialised. A failure found here is recorded in the index (by a
  writer), so it survives a restart until `oca-admin enable-store`.
- A path the index has never seen is initialised only when its directory is
  empty and a writer is attaching. A marker there fails the store, naming
  the slot it belongs in when the index knows its UUID elsewhere; so do a
  non-empty directory and a directory that cannot be listed.
- A failed state recorded in the index keeps its reason and says since when.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import NamedTuple

from oca.store.layout import FORMAT_VERSION

STATE_OK = "ok"
STATE_FAILED = "failed"

# What `attach` does after the decision.
ACTION_NONE = "none"
ACTION_ENSURE_DIRS = "ensure-dirs"  # a working store: recreate any missing store directory
ACTION_RECORD_FAILURE = "record-failure"  # write the failed state and reason to the index
ACTION_INITIALISE = "initialise"  # write a new marker and register the store

LISTING_EMPTY = "empty"
LISTING_USED = "not empty"
LISTING_NOT_NEEDED = "not listed"  # the directory's marker or record already decides


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """What the index records about one store."""

    uuid: str
    path: str
    state: str
    reason: str = ""
    since_s: float = 0.0

    def pack(self) -> bytes:
        return json.dumps(
            {"path": self.path, "state": self.state, "reason": self.reason, "since": self.since_s}
        ).encode()

    @classmethod
    def unpack(cls, uuid: str, raw: bytes) -> "StoreRecord":
        d = json.loads(bytes(raw))
        return cls(uuid, d["path"], d["state"], d.get("reason", ""), float(d.get("since", 0.0)))


@dataclass(frozen=True, slots=True)
class MarkerSeen:
    """What looking at a store directory and its marker found."""

    problem: str | None = None  # the directory or its marker cannot be used; the rest is then unknown
    uuid: str | None = None  # None: there is no marker
    format: int = FORMAT_VERSION


class Classification(NamedTuple):
    state: str
    reason: str
    action: str
    uuid: str | None  # the store's identity, when it has one yet


def classify_store(
    record: StoreRecord | None,
    marker: MarkerSeen,
    listing: str,
    *,
    owner: StoreRecord | None = None,
    writable: bool = True,
) -> Classification:
    """Decide one store directory's state (see the module's rules).

    `record` is the index's record for this path; `owner` the index's record
    for the marker's UUID when that is another path; `listing` is
    `LISTING_EMPTY`, `LISTING_USED` or why the directory could not be listed
    (looked at only for a path the index does not know).
    """
    if record is not None:
        problem = marker.problem
        if problem is None:
            if marker.uuid is None:
                problem = "marker missing: empty mount point or dead disk; never re-initialised"
            elif marker.uuid != record.uuid:
                problem = f"another disk is mounted here (uuid {marker.uuid}, expected {record.uuid})"
            elif marker.format != FORMAT_VERSION:
                problem = f"unknown store format {marker.format}"
        if problem is not None:
            return Classification(STATE_FAILED, problem, ACTION_RECORD_FAILURE if writable else ACTION_NONE, record.uuid)
        if record.state != STATE_OK:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.since_s))
            reason = f"{record.reason or 'failed'} (failed since {since}; run oca-admin enable-store)"
            return Classification(STATE_FAILED, reason, ACTION_NONE, record.uuid)
        return Classification(STATE_OK, "", ACTION_ENSURE_DIRS if writable else ACTION_NONE, record.uuid)
    # A path the index has never seen.
    if marker.problem is not None:
        return Classification(STATE_FAILED, marker.problem, ACTION_NONE, None)
    if marker.uuid is not None:
        if owner is not None:
            problem = f"this disk belongs in {owner.path} (uuid {marker.uuid}); disk swapped between slots?"
        elif marker.format != FORMAT_VERSION:
            problem = f"unknown store format {marker.format}"
        else:
            problem = "store has a marker but is not in the index; run oca-admin rebuild-index"
        return Classification(STATE_FAILED, problem, ACTION_NONE, marker.uuid)
    if listing == LISTING_USED:
        return Classification(STATE_FAILED, "directory is not empty and has no store marker; refusing to initialise it", ACTION_NONE, None)
    if listing != LISTING_EMPTY:
        return Classification(STATE_FAILED, listing, ACTION_NONE, None)
    if not writable:
        return Classification(STATE_FAILED, "new store not initialised yet (start a writer: oca-admin check)", ACTION_NONE, None)
    return Classification(STATE_OK, "", ACTION_INITIALISE, None)
