"""Content ids: opaque names of downloadables.

Rules kept here:
- A content id matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``: at most 128
  characters, ASCII only, never starting with a dot or dash, never containing
  a slash, NUL or ``@``. Anything else is refused with `ContentIdError`.
- A client's path never becomes a file path: stores derive file names from a
  validated id (see `oca.store.layout`), never from request bytes directly.
"""

from __future__ import annotations

import re

from oca.errors import ContentIdError

MAX_ID_LENGTH = 128
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_valid_id(candidate: object) -> bool:
    """True when `candidate` is a str that is a valid content id."""
    return isinstance(candidate, str) and _ID_RE.fullmatch(candidate) is not None


def check_id(candidate: object) -> str:
    """Return `candidate` unchanged if valid, else raise `ContentIdError`."""
    if is_valid_id(candidate):
        return candidate  # type: ignore[return-value]
    if not isinstance(candidate, str):
        raise ContentIdError(f"content id must be a string, not {type(candidate).__name__}")
    if not candidate:
        raise ContentIdError("content id is empty")
    if len(candidate) > MAX_ID_LENGTH:
        raise ContentIdError(f"content id is {len(candidate)} characters long; the limit is {MAX_ID_LENGTH}")
    shown = candidate if len(candidate) <= 40 else candidate[:40] + "..."
    raise ContentIdError(
        f"content id {shown!r} is invalid: it must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"
    )
