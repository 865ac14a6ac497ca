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
    assert cfg.tls.previous_ticket_key_files == ("/etc/oca/tls/ticket.key.prev",)
    hook = ROOT / "configs" / "deploy" / "certbot-deploy-hook.sh"
    assert subprocess.run(["sh", "-n", str(hook)], timeout=10).returncode == 0 and "systemctl reload oca-server" in hook.read_text()


# ------------------------------------------------------------ cert_validity (the workers' reader, no cryptography)

def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | 2]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + content


def _cert(validity: bytes, version: bool = True) -> bytes:
    tbs = (_der(0xA0, _der(0x02, b"\x02")) if version else b"") + _der(0x02, b"\x01") + _der(0x30, b"") + _der(0x30, b"") + validity
    return _der(0x30, _der(0x30, tbs) + _der(0x30, b"") + _der(0x03, b"\x00"))


VALID = _der(0x30, _der(0x17, b"260101000000Z") + _der(0x18, b"20510101000000Z"))
VALIDITY_CASES = [
    # (DER, expected (not_before_s, not_after_s) or None for ValueError)
    (_cert(VALID), (1767225600.0, 2556144000.0)),
    (_cert(VALID, version=False), (1767225600.0, 2556144000.0)),
    (_cert(_der(0x30, _der(0x17, b"500101000000Z") + _der(0x17, b"491231235959Z"))), (-631152000.0, 2524607999.0)),  # RFC 5280 §4.1.2.5.1 pivot
    (b"", None),
    (b"\x30", None),
    (b"\x31\x00", None),  # not a SEQUENCE
    (b"\x30\x05\x30\x03", None),  # inner item longer than its parent
    (b"\x30\x84\xff\xff\xff\xff", None),  # length beyond the data
    (b"\x30\x85" + b"\x00" * 5, None),  # five length bytes
    (b"\x30\x80", None),  # indefinite length (BER, not DER)
    (_cert(_der(0x30, _der(0x17, b"2601010000Z") + _der(0x17, b"260101000000Z"))), None),  # no seconds
    (_cert(_der(0x30, _der(0x17, b"261301000000Z") + _der(0x17, b"260101000000Z"))), None),  # month 13
    (_cert(_der(0x30, _der(0x17, b"260101000000+0100") + _der(0x17, b"260101000000Z"))), None),  # not Z
    (_cert(_der(0x30, _der(0x04, b"260101000000Z") + _der(0x17, b"260101000000Z"))), None),  # OCTET STRING
    (_cert(_der(0x30, _der(0x17, b"260101000000Z"))), None),  # notAfter missing
    (_cert(_der(0x31, b"")), None),  # validity not a SEQUENCE
    (_der(0x30, _der(0x30, _der(0x02, b"\x01"))), None),  # tbsCertificate ends early
]


@pytest.mark.parametrize("der,expected", VALIDITY_CASES)
def test_cert_validity(der, expected):
    from oca.tls import cert_validity

    if expected is None:
        with pytest.raises(ValueError):
            cert_validity(der)
    else:
        assert cert_validity(der) == expected


def test_read_pair_ssl_agrees_with_read_pair(tmp_path):
    """The workers' reader finds what the parent's finds, on real pairs (it reads two small files)."""
    from oca.tls import read_pair, read_pair_ssl
    from tests.tlscerts import make_ca, make_leaf

    ca = make_ca(tmp_path)
    ec_crt, ec_key = make_leaf(ca, tmp_path, "ec", "ecdsa", days=30, start_days=-2)
    rsa_crt, rsa_key = make_leaf(ca, tmp_path, "rsa", "rsa")
    ec2_crt, ec2_key = make_leaf(ca, tmp_path, "ec2", "ecdsa")
    for crt, key in [(ec_crt, ec_key), (rsa_crt, rsa_key), (ec_crt, ec2_key), (ec_crt, rsa_key), (rsa_crt, ec_key)]:
        assert read_pair_ssl(str(crt), str(key)) == read_pair(str(crt), str(key)), (crt, key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for crt, key in [(tmp_path / "none.pem", ec_key), (garbage, ec_key), (ec_crt, tmp_path / "none.key"), (ec_crt, ec_crt)]:
        mine, theirs = read_pair_ssl(str(crt), str(key)), read_pair(str(crt), str(key))
        assert judge_pair(mine, NOW) is not None and judge_pair(theirs, NOW) is not None
        assert (mine.cert_error is None) == (theirs.cert_error is None) and (mine.key_error is None) == (theirs.key_error is None)
        if "none" in str(crt) or "none" in str(key):
            assert mine == theirs  # the same "cannot read: ..." reason


def test_worker_never_imports_cryptography():
    """~10 MiB of RSS per worker: the worker and what it imports must not pull the package in."""
    import subprocess
    import sys

    code = "import sys, oca.server.worker; sys.exit(1 if 'cryptography' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
