"""Config loading and validation: tables of documents and the message each gets.

Store and index paths must exist, so each case builds its document around
a temporary directory; nothing else touches the file system.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest

from oca.config import (
    REQUIRED,
    Config,
    documented_keys,
    load_config,
    parse_config,
    parse_host_port,
)
from oca.errors import ConfigError, OcaError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CONFIG = ROOT / "configs" / "oca.toml"


@pytest.fixture
def base(tmp_path: Path) -> dict:
    """A minimal valid document with two stores under tmp_path."""
    for name in ("s0", "s1", "s2"):
        (tmp_path / name).mkdir()
    return {
        "appliance": {"id": "oca-1"},
        "server": {"listen": ["127.0.0.1:8080"]},
        "index": {"path": str(tmp_path / "index")},
        "stores": [{"path": str(tmp_path / "s0")}, {"path": str(tmp_path / "s1")}],
    }


def apply(doc: dict, dotted: str, value) -> dict:
    """A copy of `doc` with `dotted` (e.g. "stores[1].colour") set; DELETE removes it."""
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


DELETE = object()


def test_minimal_document_loads_with_defaults(base):
    cfg = parse_config(base)
    assert isinstance(cfg, Config)
    assert cfg.appliance.id == "oca-1"
    assert cfg.appliance.site == "default"
    assert cfg.appliance.nic_capacity_mbps is None
    assert cfg.server.listen == ("127.0.0.1:8080",)
    assert cfg.server.workers == 2
    assert cfg.index.map_size_gb == 16
    assert [s.reserve_percent for s in cfg.stores] == [5.0, 5.0]
    assert cfg.signing.required is False
    assert dict(cfg.signing.keys) == {}


def test_config_is_frozen(base):
    cfg = parse_config(base)
    with pytest.raises(AttributeError):
        cfg.appliance.id = "x"  # type: ignore[misc]
    keyed = parse_config(apply(base, "signing", {"keys": {"k1": "s" * 16}}))
    with pytest.raises(TypeError):
        keyed.signing.keys["k2"] = "x" * 16  # type: ignore[index]


# ---------------------------------------------------------------- unknown keys

UNKNOWN_KEY_CASES = ["colour", "appliance.colour", "server.colour", "index.colour", "stores[0].colour",
                     "stores[1].colour", "check.colour", "signing.colour"]


@pytest.mark.parametrize("where", UNKNOWN_KEY_CASES)
def test_unknown_key_named_with_full_path(base, where):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, where, 1))
    assert str(info.value).startswith(f"{where}: unknown key")
    assert "known keys:" in str(info.value)


# ---------------------------------------------------------------- types

TYPE_CASES = [
    # (key path, value, message after "<path>: ")
    ("appliance", "oca-1", "must be a table"),
    ("appliance.id", 5, "must be a string, not 5"),
    ("appliance.id", ["a"], "must be a string, not a list"),
    ("appliance.site", {"a": 1}, "must be a string, not a table"),
    ("appliance.nic_capacity_mbps", "fast", "must be a number, not 'fast'"),
    ("server.listen", "127.0.0.1:80", "must be a list, not '127.0.0.1:80'"),
    ("server.listen[0]", 8080, "must be a string, not 8080"),
    ("server.workers", "2", "must be an integer, not '2'"),
    ("server.workers", 2.0, "must be an integer, not 2.0"),
    ("index", [], "must be a table"),
    ("index.path", 7, "must be a string, not 7"),
    ("index.map_size_gb", "16", "must be a number, not '16'"),
    ("index.max_readers", 100.5, "must be an integer, not 100.5"),
    ("stores", {"path": "/"}, "must be a list, not a table"),
    ("stores[0]", "/srv", "must be a table"),
    ("stores[1].reserve_percent", "5%", "must be a number, not '5%'"),
    ("check.partial_max_age_h", "1d", "must be a number, not '1d'"),
    ("signing.required", 1, "must be true or false, not 1"),
    ("signing.required", "yes", "must be true or false, not 'yes'"),
    ("signing.keys", "k1", "must be a table, not 'k1'"),
    ("signing.keys.k1", 12345678901234567, "must be a string, not 12345678901234567"),
    ("signing.key_id", 1, "must be a string, not 1"),
    ("signing.clock_skew_s", "30s", "must be a number, not '30s'"),
]


@pytest.mark.parametrize("where,value,message", TYPE_CASES, ids=[f"{w}={v!r}" for w, v, _m in TYPE_CASES])
def test_wrong_types(base, where, value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, where, value))
    assert str(info.value) == f"{where}: {message}"


BOOLEAN_FOR_NUMBER = [
    "appliance.nic_capacity_mbps",
    "server.workers",
    "index.map_size_gb",
    "index.max_readers",
    "stores[0].reserve_percent",
    "check.partial_max_age_h",
    "signing.clock_skew_s",
]


@pytest.mark.parametrize("where", BOOLEAN_FOR_NUMBER)
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_numbers(base, where, value):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, where, value))
    assert re.fullmatch(rf"{re.escape(where)}: must be an? (integer|number), not {str(value).lower()}", str(info.value))


@pytest.mark.parametrize("where", ["stores[0].reserve_percent", "stores[1].reserve_percent", "index.map_size_gb"])
@pytest.mark.parametrize("value", [5, 5.0, 1, 0.5])
def test_int_and_float_both_accepted(base, where, value):
    cfg = parse_config(apply(base, where, value))
    got = {
        "stores[0].reserve_percent": cfg.stores[0].reserve_percent,
        "stores[1].reserve_percent": cfg.stores[1].reserve_percent,
        "index.map_size_gb": cfg.index.map_size_gb,
    }[where]
    assert got == value
    assert type(got) is float


# ---------------------------------------------------------------- missing keys

MISSING_CASES = [
    ("appliance", "appliance: required key is missing"),
    ("appliance.id", "appliance.id: required key is missing"),
    ("server", "server: required key is missing"),
    ("server.listen", "server.listen: required key is missing"),
    ("index", "index: required key is missing"),
    ("index.path", "index.path: required key is missing"),
    ("stores", "stores: required key is missing"),
    ("stores[1].path", "stores[1].path: required key is missing"),
]


@pytest.mark.parametrize("where,message", MISSING_CASES)
def test_required_keys_missing(base, where, message):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, where, DELETE))
    assert str(info.value) == message


def test_no_stores(base):
    with pytest.raises(ConfigError, match=r"^stores: at least one \[\[stores\]\] table is required$"):
        parse_config(apply(base, "stores", []))


def test_optional_sections_may_be_missing(base):
    doc = copy.deepcopy(base)
    doc.pop("check", None)
    doc.pop("signing", None)
    cfg = parse_config(doc)
    assert cfg.check.partial_max_age_h == 168


# ---------------------------------------------------------------- values

VALUE_CASES = [
    ("appliance.id", "bad id", "is not a valid name"),
    ("appliance.id", "", "is not a valid name"),
    ("appliance.id", "-lead", "is not a valid name"),
    ("appliance.site", "a/b", "is not a valid name"),
    ("appliance.nic_capacity_mbps", 0, "must be greater than 0"),
    ("server.workers", 0, "must be from 1 to 256, not 0"),
    ("server.workers", 257, "must be from 1 to 256, not 257"),
    ("index.map_size_gb", 0, "must be greater than 0"),
    ("index.map_size_gb", -1.5, "must be greater than 0"),
    ("index.max_readers", 15, "must be from 16 to"),
    ("index.path", "", "must not be empty"),
    ("index.path", "relative/index", "must be an absolute path"),
    ("index.path", "/nonexistent-parent-oca/index", "parent directory '/nonexistent-parent-oca' does not exist"),
    ("stores[0].path", "", "must not be empty"),
    ("stores[0].path", "relative/store", "must be an absolute path"),
    ("stores[1].path", "/nonexistent-oca-store", "directory does not exist"),
    ("stores[0].reserve_percent", 100, "must be a percentage from 0 to below 100, not 100"),
    ("stores[0].reserve_percent", -0.1, "must be a percentage from 0 to below 100"),
    ("check.partial_max_age_h", 0, "must be greater than 0"),
    ("signing.clock_skew_s", -1, "must not be negative"),
]


@pytest.mark.parametrize("where,value,message", VALUE_CASES, ids=[f"{w}={v!r}" for w, v, _m in VALUE_CASES])
def test_bad_values(base, where, value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, where, value))
    assert str(info.value).startswith(f"{where}: ")
    assert message in str(info.value)


def test_store_path_that_is_a_file(base, tmp_path):
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(ConfigError, match=r"^stores\[1\]\.path: directory does not exist$"):
        parse_config(apply(base, "stores[1].path", str(f)))


@pytest.mark.parametrize("value", [0, 0.0, 99.9, 50])
def test_reserve_percent_bounds_accepted(base, value):
    assert parse_config(apply(base, "stores[0].reserve_percent", value)).stores[0].reserve_percent == value


# ---------------------------------------------------------------- listen addresses

GOOD_LISTEN = ["127.0.0.1:8080", "0.0.0.0:80", "localhost:1", "example.net:65535", "[::]:8080", "[::1]:443",
               "[2001:db8::1]:80"]
BAD_LISTEN = [
    ("", "must be 'host:port'"),
    ("localhost", "must be 'host:port'"),
    (":80", "must be 'host:port'"),
    ("host:", "port must be a number from 1 to 65535"),
    ("host:0", "port must be a number from 1 to 65535"),
    ("host:65536", "port must be a number from 1 to 65535"),
    ("host:http", "port must be a number from 1 to 65535"),
    ("host:-1", "port must be a number from 1 to 65535"),
    ("::1:80", "write IPv6 addresses as '[addr]:port'"),
    ("[::1]80", "must be '[v6 address]:port'"),
    ("[::1]", "must be '[v6 address]:port'"),
    ("[::1:80", "must be '[v6 address]:port'"),
    ("[nothex]:80", "is not an IPv6 address"),
    ("[127.0.0.1]:80", "is not an IPv6 address"),
]


@pytest.mark.parametrize("value", GOOD_LISTEN)
def test_good_listen(base, value):
    assert parse_config(apply(base, "server.listen", [value])).server.listen == (value,)


@pytest.mark.parametrize("value,message", BAD_LISTEN, ids=[repr(v) for v, _m in BAD_LISTEN])
def test_bad_listen(base, value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, "server.listen", ["127.0.0.1:9000", value]))
    assert str(info.value).startswith("server.listen: ")
    assert message in str(info.value)


def test_listen_empty_and_duplicates(base):
    with pytest.raises(ConfigError, match=r"^server\.listen: must list at least one"):
        parse_config(apply(base, "server.listen", []))
    with pytest.raises(ConfigError, match=r"^server\.listen: '\[::1\]:80' is listed twice"):
        parse_config(apply(base, "server.listen", ["[::1]:80", "[::1]:80"]))


def test_parse_host_port():
    assert parse_host_port("[2001:db8::1]:80") == ("2001:db8::1", 80)
    assert parse_host_port("a.example:443") == ("a.example", 443)
    with pytest.raises(ValueError):
        parse_host_port(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- store paths


def test_duplicate_store_paths(base, tmp_path):
    doc = apply(base, "stores[1].path", str(tmp_path / "s0"))
    with pytest.raises(ConfigError, match=r"^stores\[1\]\.path: same directory as stores\[0\]$"):
        parse_config(doc)
    # The same directory spelt differently is still the same directory.
    doc = apply(base, "stores[1].path", str(tmp_path / "s0") + "/")
    with pytest.raises(ConfigError, match=r"^stores\[1\]\.path: same directory as stores\[0\]$"):
        parse_config(doc)
    doc = apply(base, "stores[1].path", str(tmp_path / "s1" / ".." / "s0"))
    with pytest.raises(ConfigError, match=r"same directory as stores\[0\]"):
        parse_config(doc)


@pytest.mark.parametrize("outer_first", [True, False])
def test_nested_store_paths(base, tmp_path, outer_first):
    inner = tmp_path / "s0" / "inner"
    inner.mkdir()
    paths = [str(tmp_path / "s0"), str(inner)]
    if not outer_first:
        paths.reverse()
    doc = apply(base, "stores", [{"path": p} for p in paths])
    with pytest.raises(ConfigError, match=r"^stores\[1\]\.path: nested with stores\[0\]\.path$"):
        parse_config(doc)


def test_sibling_with_common_prefix_is_not_nested(base, tmp_path):
    (tmp_path / "s0x").mkdir()
    cfg = parse_config(apply(base, "stores[1].path", str(tmp_path / "s0x")))
    assert len(cfg.stores) == 2


def test_index_inside_a_store(base, tmp_path):
    with pytest.raises(ConfigError, match=r"^index\.path: must not be inside stores\[1\]\.path$"):
        parse_config(apply(base, "index.path", str(tmp_path / "s1" / "index")))
    with pytest.raises(ConfigError, match=r"^index\.path: must not be inside stores\[0\]\.path$"):
        parse_config(apply(base, "index.path", str(tmp_path / "s0")))


def test_three_stores(base, tmp_path):
    doc = apply(base, "stores", [{"path": str(tmp_path / n), "reserve_percent": i} for i, n in enumerate(("s0", "s1", "s2"))])
    assert [s.reserve_percent for s in parse_config(doc).stores] == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------- signing

SECRET = "s" * 16


def test_signing_accepts_keys(base):
    doc = apply(base, "signing", {"required": True, "keys": {"k1": SECRET, "k2": "t" * 40}, "key_id": "k2"})
    cfg = parse_config(doc)
    assert cfg.signing.key_id == "k2"
    assert cfg.signing.secrets() == {"k1": SECRET.encode(), "k2": b"t" * 40}


SIGNING_CASES = [
    ({"keys": {"k1": "s" * 15}}, "signing.keys: secret of key 'k1' must be at least 16 characters"),
    ({"keys": {"k1": ""}}, "signing.keys: secret of key 'k1' must be at least 16 characters"),
    ({"keys": {"bad/id": SECRET}}, "signing.keys: key id 'bad/id' is not a valid name"),
    ({"keys": {"k1": SECRET}, "key_id": "k2"}, "signing.key_id: 'k2' is not one of signing.keys"),
    ({"key_id": "k1"}, "signing.key_id: 'k1' is not one of signing.keys"),
    ({"required": True}, "signing.keys: required = true needs at least one key"),
]


@pytest.mark.parametrize("signing,message", SIGNING_CASES, ids=[m for _s, m in SIGNING_CASES])
def test_signing_refusals(base, signing, message):
    with pytest.raises(ConfigError) as info:
        parse_config(apply(base, "signing", signing))
    assert str(info.value) == message


# ---------------------------------------------------------------- files


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def toml_for(base: dict) -> str:
    lines = ["[appliance]", f'id = "{base["appliance"]["id"]}"', "[server]", 'listen = ["127.0.0.1:8080"]',
             "[index]", f'path = "{base["index"]["path"]}"']
    for s in base["stores"]:
        lines += ["[[stores]]", f'path = "{s["path"]}"']
    return "\n".join(lines) + "\n"


def test_load_config_file(base, tmp_path):
    cfg = load_config(str(write(tmp_path / "oca.toml", toml_for(base) + "reserve_percent = 2\n")))
    assert cfg.stores[1].reserve_percent == 2.0
    assert cfg.stores[0].reserve_percent == 5.0


def test_load_config_has_no_side_effects(base, tmp_path):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    load_config(str(write(tmp_path / "oca.toml", toml_for(base))))
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert after == sorted(before + ["oca.toml"])
    assert not (tmp_path / "index").exists()


FILE_CASES = [
    ("missing", None, "config file does not exist"),
    ("bad toml", "[appliance\nid = 1\n", "not valid TOML"),
    ("duplicate key", "[appliance]\nid = 'a'\nid = 'b'\n", "not valid TOML"),
    ("not utf-8", b"[appliance]\nid = '\xff'\n", "cannot read config"),
    ("unknown key", "EXTRA", "colour: unknown key"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_load_config_errors_name_the_file(base, tmp_path, text, message):
    path = tmp_path / "oca.toml"
    if text == "EXTRA":
        path.write_text("colour = 'red'\n" + toml_for(base))
    elif isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip() or message == "not valid TOML"
    assert isinstance(info.value, OcaError)


def test_load_config_of_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path))


# ---------------------------------------------------------------- documentation


def test_documented_keys_have_docs():
    keys = documented_keys()
    names = [k for k, _d, _doc in keys]
    assert len(names) == len(set(names))
    for name, _default, doc in keys:
        assert doc.strip(), f"{name} has no doc"
    required = {k for k, d, _doc in keys if d is REQUIRED}
    assert {"appliance.id", "server.listen", "index.path", "stores.path"} <= required


def _mentioned_keys(text: str) -> set[str]:
    """Key paths written (or shown commented out) in a sample TOML file."""
    found: set[str] = set()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        uncommented = line.lstrip("#").strip()
        header = re.fullmatch(r"\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", uncommented)
        if header:
            section = header.group(1)
            found.add(section)
            continue
        key = re.match(r"([A-Za-z0-9_]+)\s*=", uncommented)
        if key:
            found.add(f"{section}.{key.group(1)}" if section else key.group(1))
    return found


def test_sample_config_mentions_every_key():
    if not SAMPLE_CONFIG.exists():
        pytest.skip(f"{SAMPLE_CONFIG} is not written yet")
    mentioned = _mentioned_keys(SAMPLE_CONFIG.read_text())
    missing = [k for k, _d, _doc in documented_keys() if k not in mentioned]
    assert not missing, f"{SAMPLE_CONFIG} does not show: {', '.join(missing)}"


def test_sample_config_loads(tmp_path):
    """The sample parses and validates once its paths point at directories that exist here."""
    if not SAMPLE_CONFIG.exists():
        pytest.skip(f"{SAMPLE_CONFIG} is not written yet")
    doc = tomllib.loads(SAMPLE_CONFIG.read_text())
    assert doc["stores"], "the sample should show at least one [[stores]] table"
    doc["index"]["path"] = str(tmp_path / "index")
    for i, store in enumerate(doc["stores"]):
        (tmp_path / f"store{i}").mkdir()
        store["path"] = str(tmp_path / f"store{i}")
    cfg = parse_config(doc)
    assert cfg.appliance.id


def _with_tls(base, **tls):
    doc = dict(base)
    doc["tls"] = {"listen": ["127.0.0.1:8443"], "cert_file": "/etc/oca/c.pem", "key_file": "/etc/oca/k.pem", **tls}
    return doc


def test_tls_table_defaults(base):
    cfg = parse_config(_with_tls(base))
    assert cfg.tls.min_version == "TLSv1.2" and cfg.tls.expiry_warn_days == 14 and cfg.tls.redirect_http is False
    assert parse_config(base).tls is None


@pytest.mark.parametrize("change,message", [
    ({"min_version": "TLSv1.1"}, r"^tls\.min_version: "),
    ({"min_version": "TLSv1"}, r"^tls\.min_version: "),
    ({"cert_file": "relative.pem"}, r"^tls\.cert_file: 'relative\.pem' must be an absolute path"),
    ({"listen": []}, r"^tls\.listen: must list at least one"),
    ({"expiry_warn_days": 0}, r"^tls\.expiry_warn_days: "),
    ({"bogus": 1}, r"^tls\.bogus: unknown key"),
    ({"previous_ticket_key_files": ["/etc/oca/old.key"]}, r"^tls\.previous_ticket_key_files: needs tls\.ticket_key_file"),
    ({"ticket_key_file": "/k/a", "previous_ticket_key_files": ["rel.key"]}, r"^tls\.previous_ticket_key_files: 'rel\.key' must be an absolute"),
    ({"ticket_key_file": "/k/a", "previous_ticket_key_files": ["/k/b", "/k/b"]}, r"^tls\.previous_ticket_key_files\[1\]: '/k/b' is listed twice"),
    ({"ticket_key_file": "/k/a", "previous_ticket_key_files": ["/k/a"]}, r"^tls\.previous_ticket_key_files\[0\]: .*tls\.ticket_key_file"),
    ({"ticket_key_file": "/k/a", "previous_ticket_key_files": "/k/b"}, r"^tls\.previous_ticket_key_files: must be a list"),
])
def test_tls_table_refusals(base, change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_with_tls(base, **change))


def test_https_only_appliance_may_leave_server_listen_empty(base):
    doc = _with_tls(apply(base, "server.listen", []))
    assert parse_config(doc).server.listen == ()


def test_tls_listen_must_not_repeat_server_listen(base):
    listen = parse_config(base).server.listen[0]
    with pytest.raises(ConfigError, match=r"^tls\.listen\[0\]: .* is also in server\.listen"):
        parse_config(_with_tls(base, listen=[listen]))
