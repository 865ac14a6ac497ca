"""The response-time histogram puts each duration in the first bucket whose bound is >= it (Prometheus `le`)."""

from __future__ import annotations

import pytest

from oca.server import stats as S

CASES = [  # (seconds, index of the bucket counted, or None: only +Inf, via the count)
    (0.0, 0),
    (0.0005, 0),  # on a bound: that bucket (le)
    (0.00050001, 1),
    (0.003, 3),
    (1.0, 10),
    (29.9, 14),
    (30.0, 14),
    (30.5, None),
    (1e9, None),
]


@pytest.mark.parametrize("seconds,bucket", CASES)
def test_observe_counts_one_bucket(seconds, bucket):
    stats = S.SharedStats.create(2)
    try:
        stats.slot, stats.base = 0, 0
        stats.observe(200, seconds, 10)
        counted = [i for i in range(len(S.HIST_BOUNDS_S)) if stats.counters[S.C_HIST + i]]
        assert counted == ([] if bucket is None else [bucket])
        assert stats.counters[S.C_HIST_COUNT] == 1
    finally:
        stats.close()
