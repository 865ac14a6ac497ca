"""`fill.config`: the [fill] table, its cross-checks against [signing], and its documentation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fill.config import FillConfig, documented_keys, load_fill_config, parse_fill
from oca.config import load_config, parse_config
from oca.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "configs" / "oca.toml"
KEYS = '[signing]\nkeys = { k1 = "0123456789abcdef-secret" }\n'


def write(tmp_path: Path, fill: str, extra: str = "") -> Path:
    (tmp_path / "s0").mkdir(exist_ok=True)
    p = tmp_path / "oca.toml"
    p.write_text(
        f'[appliance]\nid = "a"\n[server]\nlisten = ["127.0.0.1:1"]\n[index]\npath = "{tmp_path / "index"}"\n'
        f'[[stores]]\npath = "{tmp_path / "s0"}"\n{extra}[fill]\n{fill}'
    )
    return p


# (case, [fill] body, extra tables, words in the error or None, requires_signature, warns)
CASES = [
    ("https, unset: not required", 'manifest_url = "https://c/m.json"\n', "", None, False, False),
    ("http, unset, keys: required", 'manifest_url = "http://c/m.json"\n', KEYS, None, True, False),
    ("http, unset, no keys: refused", 'manifest_url = "http://c/m.json"\n', "",
     "fill.require_signed_manifest: unset, so required for the http manifest_url", None, None),
    ("http, explicit false: accepted with a warning", 'manifest_url = "http://c/m.json"\nrequire_signed_manifest = false\n', "",
     None, False, True),
    ("https, explicit true, keys", 'manifest_url = "https://c/m.json"\nrequire_signed_manifest = true\n', KEYS, None, True, False),
    ("explicit true, no keys", 'manifest_url = "https://c/m.json"\nrequire_signed_manifest = true\n', "",
     "fill.require_signed_manifest: needs at least one key", None, None),
    ("https, explicit false: no warning", 'manifest_url = "https://c/m.json"\nrequire_signed_manifest = false\n', "", None, False, False),
    ("unknown signing key", 'manifest_url = "https://c/m.json"\nsigning_key_id = "k9"\n', KEYS, "fill.signing_key_id: 'k9'", None, None),
    ("bad window", 'manifest_url = "https://c/m.json"\nwindow = "25:00-01:00"\n', "", "fill.window:", None, None),
    ("unknown key", 'manifest_url = "https://c/m.json"\nstaging = 1\n', "", "fill.staging: unknown key", None, None),
    ("max_manifest_age_h zero", 'manifest_url = "https://c/m.json"\nmax_manifest_age_h = 0\n', "", "fill.max_manifest_age_h:", None, None),
    ("max_response_mb negative", 'manifest_url = "https://c/m.json"\nmax_response_mb = -1\n', "", "fill.max_response_mb:", None, None),
    ("require_signed_manifest a string", 'manifest_url = "https://c/m.json"\nrequire_signed_manifest = "yes"\n', "",
     "fill.require_signed_manifest: must be true or false", None, None),
    ("manifest_url missing", "concurrency = 2\n", "", "fill.manifest_url: required key is missing", None, None),
    ("passes inside the window", 'manifest_url = "https://c/m.json"\nwindow = "22:00-06:00"\npasses = ["23:30", "03:00"]\n', "",
     None, False, False),
    ("pass outside the window", 'manifest_url = "https://c/m.json"\nwindow = "02:00-14:00"\npasses = ["03:00", "15:00"]\n', "",
     "fill.passes[1]: 15:00 is not inside the window 02:00-14:00", None, None),
    ("pass at the window's start", 'manifest_url = "https://c/m.json"\nwindow = "02:00-14:00"\npasses = ["02:00"]\n', "",
     "fill.passes[0]:", None, None),
    ("pass not a time", 'manifest_url = "https://c/m.json"\npasses = ["9am"]\n', "", "fill.passes:", None, None),
    ("pass given twice", 'manifest_url = "https://c/m.json"\npasses = ["09:00", "09:00"]\n', "", "fill.passes: a pass time is given twice", None, None),
    ("pass_reserve above 1", 'manifest_url = "https://c/m.json"\npass_reserve = 1.5\n', "", "fill.pass_reserve:", None, None),
    ("pass_min_requests 0", 'manifest_url = "https://c/m.json"\npass_min_requests = 0\n', "", "fill.pass_min_requests:", None, None),
    ("pass_margin negative", 'manifest_url = "https://c/m.json"\npass_margin = -0.1\n', "", "fill.pass_margin:", None, None),
]


@pytest.mark.parametrize("body,extra,words,requires,warns", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fill_table(tmp_path, body, extra, words, requires, warns):
    path = write(tmp_path, body, extra)
    load_config(str(path))  # the appliance's loader lets any [fill] table through
    if words is not None:
        with pytest.raises(ConfigError) as info:
            load_fill_config(str(path))
        assert str(info.value).startswith(f"{path}: fill.")
        assert words in str(info.value)
        return
    _cfg, fc = load_fill_config(str(path))
    assert fc.requires_signature is requires
    assert (fc.unsigned_http_warning is not None) is warns


def test_no_fill_table(tmp_path):
    path = write(tmp_path, "")
    path.write_text(path.read_text().replace("[fill]\n", ""))
    with pytest.raises(ConfigError, match="no \\[fill\\] table"):
        load_fill_config(str(path))


def test_defaults():
    fc = FillConfig(manifest_url="https://c/m.json")
    assert (fc.max_manifest_age_h, fc.max_response_mb, fc.require_signed_manifest, fc.max_delete_share) == (72, 64, None, 0.5)
    assert fc.max_response_bytes == 64_000_000


def test_sample_config_documents_every_fill_key_and_validates(tmp_path):
    text = SAMPLE.read_text()
    section, mentioned = "", set()
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip()
        header = re.fullmatch(r"\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"([A-Za-z0-9_]+)\s*=", line)
        if key and section == "fill":
            mentioned.add(f"fill.{key.group(1)}")
    missing = [k for k, _d, _doc in documented_keys() if k not in mentioned]
    assert not missing, f"{SAMPLE} does not show: {', '.join(missing)}"
    doc = tomllib.loads(text)
    doc["index"]["path"] = str(tmp_path / "index")
    for i, store in enumerate(doc["stores"]):
        (tmp_path / f"store{i}").mkdir()
        store["path"] = str(tmp_path / f"store{i}")
    cfg = parse_config(doc)
    assert not hasattr(cfg, "fill")
    assert parse_fill(doc["fill"], cfg).window == "02:00-14:00"


def test_ca_file(tmp_path):
    """fill.ca_file: absolute, readable, and a PEM bundle with a certificate; the context it makes always verifies."""
    import ssl

    from fill.config import client_ssl_context
    from tests.tlscerts import make_ca

    ca = make_ca(tmp_path / "pki")
    fc = load_fill_config(str(write(tmp_path, f'manifest_url = "https://c/m.json"\nca_file = "{ca.path}"\n')))[1]
    assert fc.ca_file == str(ca.path)
    ctx = client_ssl_context(fc.ca_file)
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert len(ctx.get_ca_certs()) == 1
    assert FillConfig(manifest_url="https://c/m.json").ca_file is None  # default: the system store
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for value, words in [("ca.pem", "fill.ca_file: 'ca.pem' must be an absolute path"),
                         (str(tmp_path / "missing.pem"), "fill.ca_file: cannot load"),
                         (str(junk), "fill.ca_file: cannot load")]:
        path = write(tmp_path, f'manifest_url = "https://c/m.json"\nca_file = "{value}"\n')
        with pytest.raises(ConfigError) as info:
            load_fill_config(str(path))
        assert str(info.value).startswith(f"{path}: fill.ca_file"), info.value
        assert words in str(info.value)
