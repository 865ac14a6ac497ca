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


KEY_MODES = [
    # (mode, owner uid, running uid, None or fragments expected)
    (0o100600, 1000, 1000, None),
    (0o100400, 1000, 1000, None),
    (0o100640, 1000, 1000, ("mode 0640", "the group")),
    (0o100604, 1000, 1000, ("mode 0604", "others")),
    (0o100644, 1000, 1000, ("mode 0644", "group and others")),
    (0o100600, 0, 1000, ("owned by uid 0", "server's uid 1000")),
    (0o100666, 0, 1000, ("mode 0666", "owned by uid 0")),
]


@pytest.mark.parametrize("mode,owner,running,expected", KEY_MODES)
def test_key_file_warning(mode, owner, running, expected):
    from oca.tls import key_file_warning

    got = key_file_warning("/etc/oca/tls/key.pem", mode, owner, running)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.startswith("/etc/oca/tls/key.pem: ") and "chmod 0600" in got
        for frag in expected:
            assert frag in got, got


def test_the_deployment_example_config_loads(tmp_path):
    """configs/deploy/oca-https.toml is a valid config once its directories exist (here: under tmp_path)."""
    import subprocess
    import tomllib

    from oca.config import parse_config
    from tests.support import ROOT

    text = (ROOT / "configs" / "deploy" / "oca-https.toml").read_text()
    for d in ("/var/lib/oca", "/srv/oca/disk0", "/srv/oca/disk1"):
        (tmp_path / d.lstrip("/")).mkdir(parents=True)
    text = text.replace("/var/lib/oca", f"{tmp_path}/var/lib/oca").replace("/srv/oca", f"{tmp_path}/srv/oca")
    cfg = parse_config(tomllib.loads(text))
    assert cfg.tls is not None and cfg.tls.listen == ("0.0.0.0:443", "[::]:443") and cfg.tls.redirect_http
    assert cfg.server.listen == ("0.0.0.0:80", "[::]:80") and cfg.tls.ticket_key_file == "/etc/oca/tls/ticket.key"
    hook = ROOT / "configs" / "deploy" / "certbot-deploy-hook.sh"
    assert subprocess.run(["sh", "-n", str(hook)], timeout=10).returncode == 0 and "systemctl reload oca-server" in hook.read_text()
