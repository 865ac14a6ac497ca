"""Weighted rendezvous (highest-random-weight) hashing, shared by fill and steering.

Nothing here performs I/O. Score = -weight / ln(u), with u uniform in (0, 1)
from xxh3-64 of "<appliance id>\\0<content id>" (the weighted form of
Schindelhauer and Schomaker): every process computes the same order alone,
an appliance of weight 2 wins twice as often as one of weight 1, and when
one appliance joins or leaves only the files it wins or held move.
"""

from __future__ import annotations

import math

import xxhash

_U64 = float(1 << 64)


def hrw_score(appliance_id: str, content_id: str, weight: float) -> float:
    h = xxhash.xxh3_64_intdigest(f"{appliance_id}\0{content_id}".encode("ascii"))
    u = (h + 0.5) / _U64  # strictly inside (0, 1)
    return -weight / math.log(u)
