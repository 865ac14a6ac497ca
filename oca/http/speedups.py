"""Which hot path serves: the compiled fast paths or pure Python.

Rules kept here:
- The compiled module `oca.http._head` (oca/http/_head.c, built in place by
  `pip install -e .`) holds fast paths only, each of which answers the
  common case or declines:
  - `parse_head` takes a plain GET or HEAD head complete in one read;
    whatever it declines goes to httptools exactly as on the pure path
    (tests/unit/test_fast_head.py holds the two to the same requests);
  - `file_head` builds the head of a plain 200 or single-range 206; what it
    declines goes to `ranges.decide` (tests/unit/test_app.py holds the two
    to the same responses).
- OCA_PURE=1 (any value but "" and "0") forces the pure path: CI runs the
  connection and server tests both ways. A missing or unloadable build
  falls back to it too, and `HOT_PATH_REASON` says why.
- `HOT_PATH` ("compiled" or "pure") is shown by /health and /metrics.
- The choice is made once, when this module is first imported: a process
  never mixes the two.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

PURE_ENV = "OCA_PURE"


class HotPath(NamedTuple):
    parse_head: Callable[..., Any] | None
    file_head: Callable[..., Any] | None
    kind: str  # "compiled" or "pure"
    reason: str  # why pure; "" when compiled


def choose(environ: Mapping[str, str]) -> HotPath:
    forced = environ.get(PURE_ENV, "")
    if forced not in ("", "0"):
        return HotPath(None, None, "pure", f"{PURE_ENV}={forced}")
    try:
        from oca.http._head import file_head, parse_head
    except ImportError as exc:
        return HotPath(None, None, "pure", f"compiled module not built ({exc})")
    return HotPath(parse_head, file_head, "compiled", "")


parse_head, file_head, HOT_PATH, HOT_PATH_REASON = choose(os.environ)
