"""`classify_store`: every row of the store-identity rule table, with no disk and no index."""

from __future__ import annotations

import time

import pytest

from oca.store.identity import (
    ACTION_ENSURE_DIRS,
    ACTION_INITIALISE,
    ACTION_NONE,
    ACTION_RECORD_FAILURE,
    LISTING_EMPTY,
    LISTING_NOT_NEEDED,
    LISTING_USED,
    STATE_FAILED,
    STATE_OK,
    Classification,
    MarkerSeen,
    StoreRecord,
    classify_store,
)
from oca.store.layout import FORMAT_VERSION

A, B = "a" * 32, "b" * 32
OK_A = StoreRecord(A, "/srv/a", STATE_OK, "initialised", 1.0)
FAILED_A = StoreRecord(A, "/srv/a", STATE_FAILED, "operator pulled it", 1_700_000_000.0)
FAILED_A_NO_REASON = StoreRecord(A, "/srv/a", STATE_FAILED, "", 1_700_000_000.0)
OWNER_B = StoreRecord(B, "/srv/b", STATE_OK)
SINCE = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000.0))
MISSING = "marker missing: empty mount point or dead disk; never re-initialised"
EIO = "cannot reach the store: Input/output error"

CASES = [
    # (name, record, marker, listing, owner, writable, expected)
    ("known, its own marker", OK_A, MarkerSeen(uuid=A), LISTING_NOT_NEEDED, None, True,
     (STATE_OK, "", ACTION_ENSURE_DIRS, A)),
    ("known, its own marker, read-only", OK_A, MarkerSeen(uuid=A), LISTING_NOT_NEEDED, None, False,
     (STATE_OK, "", ACTION_NONE, A)),
    ("known, listing is never looked at", OK_A, MarkerSeen(uuid=A), LISTING_USED, None, True,
     (STATE_OK, "", ACTION_ENSURE_DIRS, A)),
    ("known, directory unreachable", OK_A, MarkerSeen(problem=EIO), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, EIO, ACTION_RECORD_FAILURE, A)),
    ("known, directory unreachable, read-only", OK_A, MarkerSeen(problem=EIO), LISTING_NOT_NEEDED, None, False,
     (STATE_FAILED, EIO, ACTION_NONE, A)),
    ("known, marker missing (empty mount point)", OK_A, MarkerSeen(), LISTING_EMPTY, None, True,
     (STATE_FAILED, MISSING, ACTION_RECORD_FAILURE, A)),
    ("known, another disk's marker", OK_A, MarkerSeen(uuid=B), LISTING_NOT_NEEDED, OWNER_B, True,
     (STATE_FAILED, f"another disk is mounted here (uuid {B}, expected {A})", ACTION_RECORD_FAILURE, A)),
    ("known, unknown format", OK_A, MarkerSeen(uuid=A, format=FORMAT_VERSION + 1), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, f"unknown store format {FORMAT_VERSION + 1}", ACTION_RECORD_FAILURE, A)),
    ("known, recorded failed, marker sound", FAILED_A, MarkerSeen(uuid=A), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, f"operator pulled it (failed since {SINCE}; run oca-admin enable-store)", ACTION_NONE, A)),
    ("known, recorded failed without a reason", FAILED_A_NO_REASON, MarkerSeen(uuid=A), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, f"failed (failed since {SINCE}; run oca-admin enable-store)", ACTION_NONE, A)),
    ("known, recorded failed, and now the marker is gone", FAILED_A, MarkerSeen(), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, MISSING, ACTION_RECORD_FAILURE, A)),
    ("new path, unreachable", None, MarkerSeen(problem=EIO), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, EIO, ACTION_NONE, None)),
    ("new path, not a directory", None, MarkerSeen(problem="not a directory"), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, "not a directory", ACTION_NONE, None)),
    ("new path, a disk the index keeps elsewhere", None, MarkerSeen(uuid=B), LISTING_NOT_NEEDED, OWNER_B, True,
     (STATE_FAILED, f"this disk belongs in /srv/b (uuid {B}); disk swapped between slots?", ACTION_NONE, B)),
    ("new path, swapped disk wins over its format", None, MarkerSeen(uuid=B, format=9), LISTING_NOT_NEEDED, OWNER_B, True,
     (STATE_FAILED, f"this disk belongs in /srv/b (uuid {B}); disk swapped between slots?", ACTION_NONE, B)),
    ("new path, marker of an unknown format", None, MarkerSeen(uuid=B, format=9), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, "unknown store format 9", ACTION_NONE, B)),
    ("new path, a marker the index does not know", None, MarkerSeen(uuid=B), LISTING_NOT_NEEDED, None, True,
     (STATE_FAILED, "store has a marker but is not in the index; run oca-admin rebuild-index", ACTION_NONE, B)),
    ("new path, empty: initialised", None, MarkerSeen(), LISTING_EMPTY, None, True,
     (STATE_OK, "", ACTION_INITIALISE, None)),
    ("new path, empty, read-only", None, MarkerSeen(), LISTING_EMPTY, None, False,
     (STATE_FAILED, "new store not initialised yet (start a writer: oca-admin check)", ACTION_NONE, None)),
    ("new path, not empty, no marker", None, MarkerSeen(), LISTING_USED, None, True,
     (STATE_FAILED, "directory is not empty and has no store marker; refusing to initialise it", ACTION_NONE, None)),
    ("new path, cannot be listed", None, MarkerSeen(), "cannot list directory: Permission denied", None, True,
     (STATE_FAILED, "cannot list directory: Permission denied", ACTION_NONE, None)),
]


@pytest.mark.parametrize("record,marker,listing,owner,writable,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_store(record, marker, listing, owner, writable, expected):
    got = classify_store(record, marker, listing, owner=owner, writable=writable)
    assert isinstance(got, Classification)
    assert tuple(got) == expected


def test_only_an_empty_new_directory_is_ever_initialised():
    markers = [MarkerSeen(), MarkerSeen(uuid=A), MarkerSeen(uuid=B, format=9), MarkerSeen(problem=EIO)]
    listings = [LISTING_EMPTY, LISTING_USED, LISTING_NOT_NEEDED, "cannot list directory: x"]
    for record in (None, OK_A, FAILED_A):
        for marker in markers:
            for listing in listings:
                for writable in (True, False):
                    action = classify_store(record, marker, listing, writable=writable).action
                    if action == ACTION_INITIALISE:
                        assert (record, marker, listing, writable) == (None, MarkerSeen(), LISTING_EMPTY, True)
