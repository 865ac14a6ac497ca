"""The fill package's errors: one root, split by whose fault a failure is.

- `FillError`: the root; the command line reports any of them as one line.
- `ManifestError`: the manifest is malformed, unsigned, badly signed or stale
  (the control plane's fault, or an attacker's); the run changes nothing.
- `InventoryError`: a peer's `/inventory` answer is malformed; that peer is
  not a source this run.
- `SourceError` (and `ChecksumMismatch`): one source failed for one file; the
  agent retries it or moves to the next source.
- `DiskFullError`: this appliance's store filled up under a download.
- `RunLocked`: another fill run holds this appliance's lock.
"""

from __future__ import annotations

from oca.errors import OcaError


class FillError(OcaError):
    """Root of every error the fill package raises on purpose."""


class ManifestError(FillError):
    """The manifest is malformed, unsigned when it must be, badly signed, or stale."""


class InventoryError(FillError):
    """A peer's /inventory answer is malformed; the message names the field."""


class SourceError(FillError):
    """A source failed for this file. `retry` says whether trying it again may help."""

    def __init__(self, source: str, cause: str, *, retry: bool = True):
        super().__init__(f"{source}: {cause}")
        self.source = source
        self.cause = cause
        self.retry = retry


class ChecksumMismatch(SourceError):
    """The bytes a source sent do not hash to the manifest's checksum."""


class DiskFullError(FillError):
    """The store hit ENOSPC or EDQUOT while a download was written."""


class RunLocked(FillError):
    """Another fill run holds this appliance's lock (exit code 75, EX_TEMPFAIL)."""
