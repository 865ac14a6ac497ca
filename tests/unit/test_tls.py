"""The key pair decision and the expiry warning: tables of cases, no I/O."""

from __future__ import annotations

import pytest

from oca.tls import PairFacts, expiry_condition, judge_pair

NOW = 1_800_000_000.0
DAY = 86400.0
GOOD = dict(cert_file="/c.pem", key_file="/k.pem", not_before_s=NOW - DAY, not_after_s=NOW + 90 * DAY)

JUDGE_CASES = [
    # (facts, expected refusal substring, or None when servable)
    (PairFacts(**GOOD), None),
    (PairFacts(**{**GOOD, "cert_error": "cannot read: Permission denied"}), "/c.pem: cannot read: Permission denied"),
    (PairFacts(**{**GOOD, "key_error": "cannot read: No such file or directory"}), "/k.pem: cannot read: No such file"),
    (PairFacts(**{**GOOD, "matches": False}), "/k.pem: the key does not match the certificate in /c.pem"),
    (PairFacts(**{**GOOD, "not_after_s": NOW}), "/c.pem: the certificate expired at"),
    (PairFacts(**{**GOOD, "not_after_s": NOW - DAY}), "/c.pem: the certificate expired at"),
    (PairFacts(**{**GOOD, "not_before_s": NOW + 60}), "/c.pem: the certificate is not valid before"),
    # the certificate's own error is reported before the key's
    (PairFacts(**{**GOOD, "cert_error": "cannot parse: x", "key_error": "cannot parse: y"}), "/c.pem: cannot parse: x"),
]


@pytest.mark.parametrize("facts,expected", JUDGE_CASES)
def test_judge_pair(facts, expected):
    got = judge_pair(facts, NOW)
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got


EXPIRY_CASES = [
    # (days left, warn days, degraded?)
    (90, 14, False),
    (14.01, 14, False),
    (13.99, 14, True),
    (0.5, 14, True),
    (-1, 14, True),
    (20, 30, True),
]


@pytest.mark.parametrize("days_left,warn,degraded", EXPIRY_CASES)
def test_expiry_condition(days_left, warn, degraded):
    reason = expiry_condition(NOW + days_left * DAY, NOW, warn)
    assert (reason is not None) == degraded
    if days_left <= 0:
        assert "expired" in reason
