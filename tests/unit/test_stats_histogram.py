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


STATUS_CASES = [  # (status, class counter or None, code counter or None)
    (206, S.C_STATUS + 1, S.C_CODES + S.COUNTED_CODES.index(206)),
    (200, S.C_STATUS + 1, S.C_CODES + S.COUNTED_CODES.index(200)),
    (404, S.C_STATUS + 3, S.C_CODES + S.COUNTED_CODES.index(404)),
    (503, S.C_STATUS + 4, S.C_CODES + S.COUNTED_CODES.index(503)),
    (499, S.C_STATUS + 3, None),  # a client that went away: its class, no code counter
    (418, S.C_STATUS + 3, None),
    (101, S.C_STATUS + 0, None),
    (99, None, None),
    (600, None, None),
]


@pytest.mark.parametrize("status,cls,code", STATUS_CASES)
def test_observe_counts_status_exactly_in_its_own_slot(status, cls, code):
    stats = S.SharedStats.create(3)
    try:
        stats.slot, stats.base = 1, S.SLOT_COUNTERS
        stats.observe(status, 0.001, 1234)
        stats.observe(status, 0.001, 1)
        want = {S.C_BYTES: 1235, S.C_HIST_COUNT: 2, S.C_HIST_SUM_US: 2000, S.C_HIST + 1: 2}
        if cls is not None:
            want[cls] = 2
        if code is not None:
            want[code] = 2
        named = {i: v for i, v in enumerate(stats.totals()) if v and i != S.C_SCRATCH}
        assert named == want
        assert not any(stats.counters[: S.SLOT_COUNTERS].tolist()) and not any(stats.counters[2 * S.SLOT_COUNTERS :].tolist())
    finally:
        stats.close()
