"""Configuration: one TOML file loaded into frozen dataclasses.

Rules kept here:
- Every section is a frozen dataclass; every field carries its documentation
  and, when not required, its default (see `setting`). `configs/oca.toml`
  shows every key; a test checks that the two agree.
- Unknown keys, wrong types and bad values are refused with `ConfigError`,
  whose message starts with the full key path, for example
  ``stores[1].path: directory does not exist``.
- Where a fraction or a quantity makes sense, integers and floats are both
  accepted (``reserve_percent = 5`` and ``= 5.0``). Booleans are never taken
  for numbers.
- Loading has no side effects: nothing is created, opened or started.

The loader is generic (`load_section` walks dataclass fields), so later
components add a section by declaring a dataclass; `fill` and `steering`
reuse it for their own files.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import os
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from oca.errors import ConfigError
from oca.ids import is_valid_id

REQUIRED: Any = dataclasses.MISSING
DEFAULT_CONFIG_PATH = "/etc/oca/oca.toml"


def setting(default: Any = REQUIRED, *, doc: str, check: Callable[[Any], Any] | None = None) -> Any:
    """Declare a config field: its default (or REQUIRED), its doc and a validator.

    `check(value)` returns the (possibly normalised) value or raises
    ValueError with a message that the loader prefixes with the key path.
    """
    metadata = {"doc": doc, "check": check}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a mapping factory for mutable defaults")
    return field(default=default, metadata=metadata)


def mapping_setting(*, doc: str, check: Callable[[Any], Any] | None = None) -> Any:
    """A table-valued field (key → value) that defaults to empty."""
    return field(default_factory=lambda: types.MappingProxyType({}), metadata={"doc": doc, "check": check})


# ---------------------------------------------------------------- validators


def check_positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0, not {value}")
    return value


def check_non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must not be negative, not {value}")
    return value


def check_percent(value: float) -> float:
    if not 0 <= value < 100:
        raise ValueError(f"must be a percentage from 0 to below 100, not {value}")
    return value


def check_name(value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"{value!r} is not a valid name: use [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
    return value


def check_existing_dir(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if not os.path.isabs(value):
        raise ValueError(f"{value!r} must be an absolute path")
    try:
        is_dir = stat.S_ISDIR(os.stat(value).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = False
    except OSError:
        # There, but unreadable (EIO from a dying disk, ENOTCONN from a dead
        # FUSE server): a store failure for the store layer to record, not a
        # config error. os.path.isdir() said False here, so one bad disk made
        # every process refuse the whole config and took the other stores down.
        is_dir = True
    if not is_dir:
        raise ValueError("directory does not exist")
    return os.path.normpath(value)


def check_index_path(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if not os.path.isabs(value):
        raise ValueError(f"{value!r} must be an absolute path")
    parent = os.path.dirname(os.path.normpath(value))
    if not os.path.isdir(parent):
        raise ValueError(f"parent directory {parent!r} does not exist")
    return os.path.normpath(value)


def parse_host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port). Raises ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be 'host:port'")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r} must be '[v6 address]:port'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} must be 'host:port'")
        if ":" in host:
            raise ValueError(f"{value!r}: write IPv6 addresses as '[addr]:port'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def check_listen(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("must list at least one 'host:port'")
    seen = set()
    for item in value:
        parsed = parse_host_port(item)
        if parsed in seen:
            raise ValueError(f"{item!r} is listed twice")
        seen.add(parsed)
    return value


def check_cidrs(value: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 network") from None
    return tuple(out)


# ---------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class ApplianceConfig:
    id: str = setting(doc="This appliance's id, unique in the fleet.", check=check_name)
    site: str = setting("default", doc="The site (cluster) this appliance belongs to.", check=check_name)
    nic_capacity_mbps: float | None = setting(
        None,
        doc="Link speed in 10^6 bit/s; overrides what psutil reports. Unset: use psutil, or null.",
        check=check_positive,
    )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: tuple[str, ...] = setting(doc="Addresses to serve on, 'host:port' or '[v6]:port'.", check=check_listen)
    workers: int = setting(2, doc="Worker processes sharing the listening sockets.", check=lambda v: _in_range(v, 1, 256))
    event_loop: str = setting(
        "uvloop", doc="'uvloop' (fast) or 'asyncio' (stock loop, for comparison and tests).", check=lambda v: _one_of(v, ("uvloop", "asyncio"))
    )
    backlog: int = setting(4096, doc="Listen backlog of each socket (the kernel caps it at net.core.somaxconn).", check=lambda v: _in_range(v, 16, 65535))
    max_connections: int = setting(
        16384, doc="Open connections per worker; more are closed at once.", check=lambda v: _in_range(v, 16, 1 << 20)
    )
    header_timeout_s: float = setting(
        10, doc="Time allowed from a request's first byte to the end of its headers (slowloris guard).", check=check_positive
    )
    keepalive_timeout_s: float = setting(75, doc="Idle time before a keep-alive connection is closed (nginx: 75 s).", check=check_positive)
    send_timeout_s: float = setting(
        60, doc="Time a response may make no progress because the client stopped reading (nginx: 60 s).", check=check_positive
    )
    max_request_line_bytes: int = setting(8192, doc="Longest request line; longer → 414.", check=lambda v: _in_range(v, 256, 1 << 20))
    max_header_bytes: int = setting(16384, doc="Total request header bytes; more → 431.", check=lambda v: _in_range(v, 512, 1 << 20))
    max_headers: int = setting(100, doc="Request header fields; more → 431.", check=lambda v: _in_range(v, 8, 10000))
    max_pipelined: int = setting(32, doc="Requests queued on one connection before reading pauses.", check=lambda v: _in_range(v, 1, 4096))
    max_ranges: int = setting(16, doc="Ranges in one request; more → 200 with the whole file (nginx max_ranges).", check=lambda v: _in_range(v, 0, 1024))
    shutdown_timeout_s: float = setting(30, doc="On SIGTERM or reload, time in-flight responses get to finish.", check=check_positive)
    cache_control: str = setting("no-store", doc="Cache-Control of content responses (errors always send no-store).")
    control_allow: tuple[str, ...] = setting((), doc="CIDRs allowed to use /health, /inventory, /routes and /metrics; empty: everyone.", check=lambda v: check_cidrs(v))
    access_log: str = setting("", doc="Access log: '' off, '-' stdout, or a file path (reopened on SIGUSR1).")
    access_log_format: str = setting("combined", doc="'combined' (nginx's) or 'json'.", check=lambda v: _one_of(v, ("combined", "json")))
    fd_cache_size: int = setting(1000, doc="Open file descriptors kept per worker (nginx open_file_cache max).", check=lambda v: _in_range(v, 0, 1 << 20))
    fd_cache_inactive_s: float = setting(20, doc="Cached descriptors unused this long are closed.", check=check_positive)
    pid_file: str = setting("", doc="Write the parent's pid here ('' for none).")


@dataclass(frozen=True, slots=True)
class IndexConfig:
    path: str = setting(doc="Directory of the LMDB index (created if missing; its parent must exist).", check=check_index_path)
    map_size_gb: float = setting(
        16,
        doc="LMDB map size in GiB. Sparse: only what is used takes disk. 16 GiB holds tens of millions of entries.",
        check=check_positive,
    )
    max_readers: int = setting(
        2048,
        doc="LMDB reader slots shared by all processes (one per thread that reads).",
        check=lambda v: _in_range(v, 16, 1 << 20),
    )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str = setting(doc="The store's directory, normally the mount point of one drive.", check=check_existing_dir)
    reserve_percent: float = setting(
        5.0, doc="Share of the drive that new files never use (percent, 0 to below 100).", check=check_percent
    )


def check_protocols(value: tuple[int, ...]) -> tuple[int, ...]:
    for v in value:
        if not 0 <= v <= 255:
            raise ValueError(f"route protocol numbers are 0..255, not {v}")
    return value


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    static: tuple[str, ...] = setting((), doc="Client prefixes (IPv4/IPv6 CIDRs) this appliance always serves.", check=lambda v: check_cidrs(v))
    kernel_table: int | None = setting(
        None, doc="Kernel routing table a routing daemon installs BGP routes into. Unset: the kernel is not read.",
        check=lambda v: _in_range(v, 1, (1 << 32) - 1),
    )
    kernel_protocols: tuple[int, ...] = setting(
        (12, 186), doc="Route protocol numbers to take from that table (BIRD installs with 12, FRR with 186).", check=check_protocols
    )


@dataclass(frozen=True, slots=True)
class CheckConfig:
    partial_max_age_h: float = setting(
        168,
        doc="`check` removes the fill agent's partial downloads older than this many hours.",
        check=check_positive,
    )


@dataclass(frozen=True, slots=True)
class SigningConfig:
    required: bool = setting(False, doc="Refuse content requests without a valid signed URL.")
    keys: Mapping[str, str] = mapping_setting(
        doc="Key id → secret (at least 16 characters, used as UTF-8 bytes).", check=lambda v: _check_keys(v)
    )
    key_id: str | None = setting(None, doc="The key this program signs with; must be in `keys`.")
    clock_skew_s: float = setting(30, doc="Seconds of clock skew tolerated when checking expiry.", check=check_non_negative)

    def secrets(self) -> dict[str, bytes]:
        return {k: v.encode("utf-8") for k, v in self.keys.items()}


def check_window(value: str) -> str:
    from fill.window import parse_window

    parse_window(value)  # raises ValueError with a precise message
    return value


def check_timezone(value: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone name") from None
    return value


def check_http_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} must be an http:// or https:// URL")
    return value


def check_fraction(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"must be a fraction from 0 to 1, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class FillConfig:
    manifest_url: str = setting(doc="Where the manifest is published (http or https).", check=check_http_url)
    window: str | None = setting(None, doc="Local fill window 'HH:MM-HH:MM' (may cross midnight). Unset: no window limit.", check=check_window)
    timezone: str | None = setting(None, doc="IANA time zone of the window. Unset: the machine's local time.", check=check_timezone)
    rate_limit_mbps: float | None = setting(None, doc="Rate cap for all downloads together, in 10^6 bit/s. Unset: no cap.", check=check_positive)
    nightly_budget_gb: float | None = setting(None, doc="Bytes (10^9) downloaded per run at most. Unset: no budget.", check=check_positive)
    concurrency: int = setting(4, doc="Downloads at once.", check=lambda v: _in_range(v, 1, 256))
    signing_key_id: str | None = setting(None, doc="Key (from [signing] keys) used to sign peer-fill URLs. Unset: [signing] key_id.")
    delete_grace_h: float = setting(
        72, doc="A file still listed but no longer chosen is deleted after this many hours, or sooner when space is needed.", check=check_non_negative
    )
    max_delete_share: float = setting(
        0.5, doc="Refuse a manifest that would delete more than this share of what the appliance holds, unless --force.", check=check_fraction
    )
    require_signed_manifest: bool = setting(False, doc="Refuse manifests without a valid HMAC signature made with a [signing] key.")
    retries: int = setting(3, doc="Attempts per source before the next source is tried.", check=lambda v: _in_range(v, 1, 100))
    backoff_s: float = setting(2, doc="First retry delay; doubles with each retry.", check=check_non_negative)
    connect_timeout_s: float = setting(10, doc="TCP connect timeout per request.", check=check_positive)
    read_timeout_s: float = setting(30, doc="A source that sends nothing for this long has failed (stall guard).", check=check_positive)
    peer_fill: bool = setting(True, doc="Fetch from appliances of the same site that hold the file before the origin.")


@dataclass(frozen=True, slots=True)
class Config:
    appliance: ApplianceConfig = setting(doc="Identity of this appliance.")
    server: ServerConfig = setting(doc="The HTTP server.")
    index: IndexConfig = setting(doc="The LMDB index.")
    stores: tuple[StoreConfig, ...] = setting(doc="One [[stores]] table per data disk.")
    check: CheckConfig = setting(CheckConfig(), doc="Start-up reconciliation.")
    signing: SigningConfig = setting(SigningConfig(), doc="Signed URLs.")
    routes: RoutesConfig = setting(RoutesConfig(), doc="Client prefixes reported on /routes.")
    fill: FillConfig | None = setting(None, doc="The nightly fill agent (oca-fill); optional for the server.")


def _in_range(value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"must be from {low} to {high}, not {value}")
    return value


def _one_of(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return value


def _check_keys(keys: Mapping[str, str]) -> Mapping[str, str]:
    for key_id, secret in keys.items():
        if not is_valid_id(key_id):
            raise ValueError(f"key id {key_id!r} is not a valid name")
        if len(secret) < 16:
            raise ValueError(f"secret of key {key_id!r} must be at least 16 characters")
    return types.MappingProxyType(dict(keys))


def _validate_config(cfg: Config) -> None:
    paths = [s.path for s in cfg.stores]
    for i, path in enumerate(paths):
        for j, other in enumerate(paths[:i]):
            if path == other:
                raise ConfigError(f"stores[{i}].path: same directory as stores[{j}]")
            if path.startswith(other.rstrip("/") + "/") or other.startswith(path.rstrip("/") + "/"):
                raise ConfigError(f"stores[{i}].path: nested with stores[{j}].path")
        if cfg.index.path == path or cfg.index.path.startswith(path.rstrip("/") + "/"):
            raise ConfigError(f"index.path: must not be inside stores[{i}].path")
    if cfg.signing.key_id is not None and cfg.signing.key_id not in cfg.signing.keys:
        raise ConfigError(f"signing.key_id: {cfg.signing.key_id!r} is not one of signing.keys")
    if cfg.fill is not None:
        kid = cfg.fill.signing_key_id
        if kid is not None and kid not in cfg.signing.keys:
            raise ConfigError(f"fill.signing_key_id: {kid!r} is not one of signing.keys")
        if cfg.fill.require_signed_manifest and not cfg.signing.keys:
            raise ConfigError("fill.require_signed_manifest: needs at least one key in signing.keys")
    if cfg.signing.required and not cfg.signing.keys:
        raise ConfigError("signing.keys: required = true needs at least one key")


# ---------------------------------------------------------------- the loader


def load_section(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a TOML table, naming `path` in every error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key (known keys: {known})")
    values = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is REQUIRED and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ConfigError(f"{where}: required key is missing")
            continue
        value = _convert(hints[name], data[name], where)
        check = f.metadata.get("check")
        if check is not None:
            try:
                value = check(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        values[name] = value
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            raise TypeError(f"unsupported config type {hint}")
        return _convert(non_none[0], value, where)
    if dataclasses.is_dataclass(hint):
        return load_section(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, not {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, not {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, not {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, not {_show(value)}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, not {_show(value)}")
        return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a table, not {_show(value)}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {hint}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_config(data: dict) -> Config:
    """Validate an already-parsed TOML document into a `Config`."""
    cfg = load_section(Config, data, "")
    if not cfg.stores:
        raise ConfigError("stores: at least one [[stores]] table is required")
    _validate_config(cfg)
    return cfg


def read_toml(path: str) -> dict:
    """Read and parse a TOML file, turning every failure into `ConfigError`."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_config(path: str) -> Config:
    """Read, parse and validate the appliance's config file."""
    try:
        return parse_config(read_toml(path))
    except ConfigError as exc:
        if str(exc).startswith(path):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def documented_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every key path with its default (REQUIRED if none) and doc: for docs and tests."""
    out: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
        if typing.get_origin(inner) in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(inner) if a is not type(None)]
            inner = non_none[0] if len(non_none) == 1 else inner
        if dataclasses.is_dataclass(inner):
            out.extend(documented_keys(inner, name + "."))
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        out.append((name, default, f.metadata.get("doc", "")))
    return out
