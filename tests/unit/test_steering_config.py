"""Steering config and coverage-zone file (steering/config.py): documents and the message each gets.

Documents are built in memory and validated with `parse_steering`; the
coverage-file cases write small files under tmp_path. The shipped sample
(`configs/steering.toml` with `configs/coverage-zones.json`) must load and
must show every key.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest

from oca.settings import REQUIRED, documented_keys
from oca.errors import ConfigError, OcaError
from steering import cli
from steering.config import SteeringConfig, coverage_path, load_coverage, load_steering_config, parse_steering

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "configs" / "steering.toml"
SAMPLE_COVERAGE = ROOT / "configs" / "coverage-zones.json"


class _Delete:
    """The marker `apply` reads as "remove this key"; its repr keeps test ids the same in every process."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


def base() -> dict:
    return {
        "server": {"listen": ["127.0.0.1:8090"]},
        "appliances": [
            {"id": "oca-1", "url": "http://192.0.2.1", "site": "a"},
            {"id": "oca-2", "url": "http://192.0.2.2:8080", "site": "a", "tier": "ixp", "weight": 2},
            {"id": "oca-3", "url": "https://[2001:db8::3]", "site": "b"},
        ],
    }


def apply(doc: dict, dotted: str, value) -> dict:
    """A copy of `doc` with `dotted` (e.g. "appliances[1].colour") set; DELETE removes it."""
    doc = copy.deepcopy(doc)
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
    node = doc
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    key = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return doc


def test_minimal_document_loads_with_defaults():
    cfg = parse_steering(base())
    assert isinstance(cfg, SteeringConfig)
    assert cfg.server.listen == ("127.0.0.1:8090",)
    assert cfg.server.decision_log == "" and cfg.server.decision_log_sample == 1.0
    assert [a.id for a in cfg.appliances] == ["oca-1", "oca-2", "oca-3"]
    assert cfg.appliances[0].tier == "embedded" and cfg.appliances[0].weight == 1.0
    assert cfg.appliances[1].tier == "ixp" and cfg.appliances[1].weight == 2.0
    assert cfg.max_urls == 4 and cfg.fallback_sites == ()
    assert cfg.coverage.file is None
    h = cfg.health
    assert (h.interval_s, h.timeout_s, h.fail_after, h.recover_after, h.overload_percent) == (2.0, 1.5, 3, 2, 85.0)
    assert dict(cfg.signing.keys) == {} and cfg.signing.key_id is None and cfg.signing.ttl_s == 21600
    assert cfg.trust.proxies == () and cfg.trust.callers == ()


def test_config_is_frozen():
    cfg = parse_steering(base())
    with pytest.raises(AttributeError):
        cfg.max_urls = 9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.appliances[0].site = "x"  # type: ignore[misc]


# ---------------------------------------------------------------- refusals

REFUSED = [
    # (dotted key, value, message start)
    ("colour", "blue", "colour: unknown key"),
    ("server.colour", 1, "server.colour: unknown key"),
    ("appliances[1].colour", 1, "appliances[1].colour: unknown key"),
    ("health.interval", 1, "health.interval: unknown key"),
    ("signing.required", True, "signing.required: unknown key"),
    ("trust.clients", [], "trust.clients: unknown key"),
    ("coverage.path", "x.json", "coverage.path: unknown key"),
    ("server", DELETE, "server: required key is missing"),
    ("server.listen", DELETE, "server.listen: required key is missing"),
    ("appliances", DELETE, "appliances: required key is missing"),
    ("appliances", [], "appliances: at least one [[appliances]] table is required"),
    ("appliances[0].id", DELETE, "appliances[0].id: required key is missing"),
    ("appliances[1].url", DELETE, "appliances[1].url: required key is missing"),
    ("appliances[2].site", DELETE, "appliances[2].site: required key is missing"),
    ("appliances[0].id", "bad id", "appliances[0].id: 'bad id' is not a valid name"),
    ("appliances[0].url", "ftp://192.0.2.1", "appliances[0].url: 'ftp://192.0.2.1' must be an http:// or https:// URL"),
    ("appliances[0].tier", "edge", "appliances[0].tier: must be one of 'embedded', 'ixp'"),
    ("appliances[0].weight", 0, "appliances[0].weight: must be greater than 0"),
    ("appliances[0].weight", True, "appliances[0].weight: must be a number, not true"),
    ("appliances[1].id", "oca-1", "appliances[1].id: 'oca-1' is already appliances[0]"),
    ("server.listen", [], "server.listen: must list at least one 'host:port' (or set [tls] listen"),
    ("server.listen", ["nohost"], "server.listen: 'nohost' must be 'host:port'"),
    ("server.decision_log_sample", 1.5, "server.decision_log_sample: must be a fraction from 0 to 1"),
    ("max_urls", 0, "max_urls: must be from 1 to 64"),
    ("max_urls", 65, "max_urls: must be from 1 to 64"),
    ("max_urls", "4", "max_urls: must be an integer"),
    ("fallback_sites", ["a", "nowhere"], "fallback_sites[1]: 'nowhere' is not the site of any appliance"),
    ("fallback_sites", "a", "fallback_sites: must be a list"),
    ("health.interval_s", 0, "health.interval_s: must be greater than 0"),
    ("health.timeout_s", -1, "health.timeout_s: must be greater than 0"),
    ("health.fail_after", 0, "health.fail_after: must be from 1 to 1000"),
    ("health.recover_after", 1.5, "health.recover_after: must be an integer"),
    ("health.overload_percent", 0, "health.overload_percent: must be from 1 to 100"),
    ("health.overload_percent", 101, "health.overload_percent: must be from 1 to 100"),
    ("signing.keys", {"k1": "short"}, "signing.keys: secret of key 'k1' must be at least 16 characters"),
    ("signing.key_id", "k9", "signing.key_id: 'k9' is not one of signing.keys"),
    ("signing.ttl_s", 0, "signing.ttl_s: must be greater than 0"),
    ("trust.proxies", ["10.0.0.0/8", "not-a-net"], "trust.proxies: 'not-a-net' is not an IPv4 or IPv6 network"),
    ("trust.callers", ["10.0.0.0/33"], "trust.callers: '10.0.0.0/33' is not an IPv4 or IPv6 network"),
]


@pytest.mark.parametrize("dotted,value,message", REFUSED, ids=[f"{c[0]}={c[1]!r}" for c in REFUSED])
def test_refused(dotted, value, message):
    with pytest.raises(ConfigError) as info:
        parse_steering(apply(base(), dotted, value))
    assert str(info.value).startswith(message), str(info.value)
    assert isinstance(info.value, OcaError)


def test_key_id_in_keys_is_accepted():
    doc = apply(base(), "signing", {"keys": {"k1": "0123456789abcdef"}, "key_id": "k1"})
    cfg = parse_steering(doc)
    assert cfg.signing.secrets() == {"k1": b"0123456789abcdef"}


def test_coverage_file_must_exist(tmp_path):
    doc = apply(base(), "coverage.file", "zones.json")
    with pytest.raises(ConfigError, match=r"^coverage.file: .*zones.json does not exist"):
        parse_steering(doc, base_dir=str(tmp_path))
    (tmp_path / "zones.json").write_text('{"coverageZones": {}}')
    cfg = parse_steering(doc, base_dir=str(tmp_path))
    assert coverage_path(cfg, str(tmp_path / "steering.toml")) == str(tmp_path / "zones.json")


def test_absolute_coverage_path_is_kept(tmp_path):
    zones = tmp_path / "z.json"
    zones.write_text('{"coverageZones": {}}')
    cfg = parse_steering(apply(base(), "coverage.file", str(zones)), base_dir="/nonexistent")
    assert coverage_path(cfg, "/elsewhere/steering.toml") == str(zones)


def test_file_errors_start_with_the_file_name(tmp_path):
    path = tmp_path / "steering.toml"
    path.write_text('[server]\nlisten = ["127.0.0.1:1"]\n[[appliances]]\nid = "x"\nurl = "http://h"\nsite = "s"\ncolour = 1\n')
    with pytest.raises(ConfigError) as info:
        load_steering_config(str(path))
    assert str(info.value).startswith(f"{path}: appliances[0].colour: unknown key")
    path.write_text("not toml = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_steering_config(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_steering_config(str(tmp_path / "missing.toml"))


# ---------------------------------------------------------------- coverage zone file

COVERAGE_REFUSED = [
    # (file text, message after the path)
    ("{not json", "cannot read coverage zones"),
    ("[]", "coverageZones: must be an object of site → networks"),
    ('{"zones": {}}', "coverageZones: must be an object of site → networks"),
    ('{"coverageZones": []}', "coverageZones: must be an object of site → networks"),
    ('{"coverageZones": {"ams": []}}', "coverageZones.ams: must be an object"),
    ('{"coverageZones": {"ams": {"network": "10.0.0.0/8"}}}', "coverageZones.ams.network: must be a list"),
    ('{"coverageZones": {"ams": {"network6": {}}}}', "coverageZones.ams.network6: must be a list"),
    ('{"coverageZones": {"ams": {"network": ["10.0.0.0/8", "10.0.0.0/33"]}}}', "coverageZones.ams.network[1]: '10.0.0.0/33' is not a prefix"),
    ('{"coverageZones": {"ams": {"network": ["10.0.0.0/8"]}, "fra": {"network": [7]}}}', "coverageZones.fra.network[0]: 7 is not a prefix"),
    ('{"coverageZones": {"ams": {"network": ["2001:db8::/32"]}}}', "coverageZones.ams.network[0]: 2001:db8::/32 is IPv6"),
    ('{"coverageZones": {"ams": {"network6": ["::/0", "10.0.0.0/8"]}}}', "coverageZones.ams.network6[1]: 10.0.0.0/8 is IPv4"),
]


@pytest.mark.parametrize("text,message", COVERAGE_REFUSED, ids=[c[1][:40] for c in COVERAGE_REFUSED])
def test_coverage_refused(tmp_path, text, message):
    path = tmp_path / "zones.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_coverage(str(path))
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_coverage_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read coverage zones"):
        load_coverage(str(tmp_path / "none.json"))


def test_coverage_loads_both_families_and_clears_host_bits(tmp_path):
    path = tmp_path / "zones.json"
    path.write_text(json.dumps({"coverageZones": {
        "ams": {"network": ["10.1.2.3/16", "192.0.2.0/24"], "network6": ["2001:db8::1/32"]},
        "fra": {"network6": ["::/0"]},
        "empty": {},
    }}))
    assert load_coverage(str(path)) == {"ams": ["10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32"], "fra": ["::/0"], "empty": []}


# ---------------------------------------------------------------- the shipped sample


def _mentioned_keys(text: str) -> set[str]:
    """Key paths written (or shown commented out) in a sample TOML file."""
    found: set[str] = set()
    section = ""
    for raw in text.splitlines():
        uncommented = raw.strip().lstrip("#").strip()
        header = re.fullmatch(r"\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", uncommented)
        if header:
            section = header.group(1)
            found.add(section)
            continue
        key = re.match(r"([A-Za-z0-9_]+)\s*=", uncommented)
        if key:
            found.add(f"{section}.{key.group(1)}" if section else key.group(1))
    return found


def test_documented_keys_have_docs():
    keys = documented_keys(SteeringConfig)
    for name, _default, doc in keys:
        assert doc.strip(), f"{name} has no doc"
    required = {k for k, d, _doc in keys if d is REQUIRED}
    # tls.* are required only inside the optional [tls] table.
    assert required == {"server.listen", "appliances.id", "appliances.url", "appliances.site",
                        "tls.listen", "tls.cert_file", "tls.key_file"}


def test_sample_mentions_every_key():
    mentioned = _mentioned_keys(SAMPLE.read_text())
    missing = [k for k, _d, _doc in documented_keys(SteeringConfig) if k not in mentioned]
    assert not missing, f"{SAMPLE} does not show: {', '.join(missing)}"


def test_sample_shows_the_defaults():
    """Every key the sample sets to a scalar without a comment saying otherwise has its default value."""
    doc = tomllib.loads(SAMPLE.read_text())
    defaults = {k: d for k, d, _ in documented_keys(SteeringConfig)}
    for section in ("server", "health"):
        for key, value in doc[section].items():
            if defaults[f"{section}.{key}"] is not REQUIRED:
                assert value == defaults[f"{section}.{key}"], f"{section}.{key}"
    assert doc["max_urls"] == defaults["max_urls"]
    assert doc["signing"]["ttl_s"] == defaults["signing.ttl_s"]


def test_sample_loads_with_its_coverage_file():
    cfg = load_steering_config(str(SAMPLE))
    path = coverage_path(cfg, str(SAMPLE))
    assert path is not None and Path(path).resolve() == SAMPLE_COVERAGE.resolve()
    zones = load_coverage(path)
    sites = {a.site for a in cfg.appliances}
    assert zones and set(zones) <= sites, "every coverage zone names a site of the sample's appliances"
    assert any(":" in p for nets in zones.values() for p in nets) and any("." in p for nets in zones.values() for p in nets)
    assert cfg.signing.key_id in cfg.signing.keys
    assert len(cfg.appliances) >= 3 and len(sites) >= 2


@pytest.mark.parametrize("argv_extra,code", [([], 0)])
def test_cli_check_config(capsys, argv_extra, code):
    with pytest.raises(SystemExit) as info:
        cli.main(["--config", str(SAMPLE), "--check-config", *argv_extra])
    assert info.value.code == code
    assert capsys.readouterr().out.strip() == f"{SAMPLE}: ok"


def test_cli_check_config_reports_one_line(tmp_path, capsys):
    text = SAMPLE.read_text().replace('file = "coverage-zones.json"', f'file = "{tmp_path / "zones.json"}"')
    (tmp_path / "zones.json").write_text('{"coverageZones": {"ams-isp1": {"network": ["300.0.0.0/8"]}}}')
    cfgfile = tmp_path / "steering.toml"
    cfgfile.write_text(text)
    with pytest.raises(SystemExit) as info:
        cli.main(["--config", str(cfgfile), "--check-config"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "coverageZones.ams-isp1.network[0]: '300.0.0.0/8' is not a prefix" in err


TLS = {"listen": ["127.0.0.1:8443"], "cert_file": "/etc/oca/s.crt", "key_file": "/etc/oca/s.key"}


def test_tls_table_defaults_and_ca_file():
    cfg = parse_steering(apply(apply(base(), "tls", TLS), "health.ca_file", "/etc/oca/ca.pem"))
    assert cfg.tls is not None and cfg.tls.listen == ("127.0.0.1:8443",)
    assert (cfg.tls.min_version, cfg.tls.ciphers, cfg.tls.expiry_warn_days) == ("TLSv1.2", "", 14)
    assert cfg.health.ca_file == "/etc/oca/ca.pem"
    assert parse_steering(base()).tls is None and parse_steering(base()).health.ca_file is None


def test_https_only_steering_has_an_empty_plain_listen():
    cfg = parse_steering(apply(apply(base(), "tls", TLS), "server.listen", []))
    assert cfg.server.listen == () and cfg.tls is not None and cfg.tls.listen == ("127.0.0.1:8443",)


@pytest.mark.parametrize("dotted, value, message", [
    ("tls.listen", ["127.0.0.1:8090"], "tls.listen[0]: '127.0.0.1:8090' is also in server.listen"),
    ("tls.cert_file", "s.crt", "tls.cert_file"),
    ("tls.min_version", "TLSv1.1", "tls.min_version"),
    ("tls.key_file", DELETE, "tls.key_file"),
    ("health.ca_file", "ca.pem", "health.ca_file"),
])
def test_tls_errors_name_the_key(dotted, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_steering(apply(apply(base(), "tls", TLS), dotted, value))
