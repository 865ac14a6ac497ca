"""Which request-head parser connections use: the compiled fast path or pure Python.

Rules kept here:
- The compiled module `oca.http._head` (oca/http/_head.c, built in place by
  `pip install -e .`) is a fast path only: it accepts a plain GET or HEAD
  head complete in one read, or declines, and whatever it declines goes to
  httptools exactly as on the pure path. The pure path is httptools for
  every head. Both give the same requests (tests/unit/test_fast_head.py).
- OCA_PURE=1 (any value but "" and "0") forces the pure path: CI runs the
  connection and server tests both ways. A missing or unloadable build
  falls back to it too, and `HOT_PATH_REASON` says why.
- `HOT_PATH` ("compiled" or "pure") is shown by /health and /metrics.
- The choice is made once, when this module is first imported: a process
  never mixes the two.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

PURE_ENV = "OCA_PURE"


def choose(environ: Mapping[str, str]) -> tuple[Callable[..., Any] | None, str, str]:
    """(parse_head or None, "compiled" or "pure", why pure)."""
    forced = environ.get(PURE_ENV, "")
    if forced not in ("", "0"):
        return None, "pure", f"{PURE_ENV}={forced}"
    try:
        from oca.http._head import parse_head
    except ImportError as exc:
        return None, "pure", f"compiled module not built ({exc})"
    return parse_head, "compiled", ""


parse_head, HOT_PATH, HOT_PATH_REASON = choose(os.environ)
