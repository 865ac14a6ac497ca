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

The loader itself is `oca.settings`; this module declares the appliance's
sections.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Mapping

from oca.errors import ConfigError
from oca.settings import (
    REQUIRED,
    check_abs_path,
    check_cidrs,
    check_keys,
    check_listen,
    check_name,
    check_non_negative,
    check_percent,
    check_positive,
    documented_keys as _documented_keys,
    in_range,
    load_section,
    mapping_setting,
    one_of,
    parse_host_port,
    setting,
)
from oca.tls import TlsServingConfig
from oca.tomlfile import read_toml

DEFAULT_CONFIG_PATH = "/etc/oca/oca.toml"
# Tables of this file that other programs read and validate (`fill.config`).
OTHER_PROGRAMS_TABLES = ("fill",)


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


def check_control_token(value: str) -> str:
    if not 16 <= len(value) <= 256 or not value.isascii() or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError("must be 16 to 256 printable ASCII characters without spaces")
    return value


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
    listen: tuple[str, ...] = setting(
        doc="Plain-HTTP addresses to serve on, 'host:port' or '[v6]:port'; may be empty when [tls] listen is set.",
        check=lambda v: check_listen(v) if v else v,
    )
    workers: int = setting(2, doc="Worker processes, each with its own SO_REUSEPORT socket per address.", check=lambda v: in_range(v, 1, 256))
    event_loop: str = setting(
        "uvloop", doc="'uvloop' (fast) or 'asyncio' (stock loop, for comparison and tests).", check=lambda v: one_of(v, ("uvloop", "asyncio"))
    )
    backlog: int = setting(4096, doc="Listen backlog of each socket (the kernel caps it at net.core.somaxconn).", check=lambda v: in_range(v, 16, 65535))
    max_connections: int = setting(
        16384, doc="Open connections per worker; more are closed at once.", check=lambda v: in_range(v, 16, 1 << 20)
    )
    header_timeout_s: float = setting(
        10, doc="Time allowed from a request's first byte to the end of its headers (slowloris guard).", check=check_positive
    )
    keepalive_timeout_s: float = setting(75, doc="Idle time before a keep-alive connection is closed (nginx: 75 s).", check=check_positive)
    send_timeout_s: float = setting(
        60, doc="Time a response may make no progress because the client stopped reading (nginx: 60 s).", check=check_positive
    )
    max_request_line_bytes: int = setting(8192, doc="Longest request line; longer → 414.", check=lambda v: in_range(v, 256, 1 << 20))
    max_header_bytes: int = setting(16384, doc="Total request header bytes; more → 431.", check=lambda v: in_range(v, 512, 1 << 20))
    max_headers: int = setting(100, doc="Request header fields; more → 431.", check=lambda v: in_range(v, 8, 10000))
    max_pipelined: int = setting(32, doc="Requests queued on one connection before reading pauses.", check=lambda v: in_range(v, 1, 4096))
    max_ranges: int = setting(16, doc="Ranges in one request; more → 200 with the whole file (nginx max_ranges).", check=lambda v: in_range(v, 0, 1024))
    shutdown_timeout_s: float = setting(30, doc="On SIGTERM or reload, time in-flight responses get to finish.", check=check_positive)
    cache_control: str = setting("no-store", doc="Cache-Control of content responses (errors always send no-store).")
    control_allow: tuple[str, ...] = setting(
        (), doc="CIDRs allowed to use /health, /inventory, /routes and /metrics besides loopback (always allowed); "
        "empty: loopback only; 0.0.0.0/0 and ::/0: everyone.", check=lambda v: check_cidrs(v)
    )
    control_token: str | None = setting(
        None, doc="When set, control endpoints also need 'Authorization: Bearer <token>' (16 to 256 printable ASCII characters).",
        check=lambda v: check_control_token(v),
    )
    access_log: str = setting("", doc="Access log: '' off, '-' stdout, or a file path (reopened on SIGUSR1).")
    access_log_format: str = setting("combined", doc="'combined' (nginx's) or 'json'.", check=lambda v: one_of(v, ("combined", "json")))
    fd_cache_size: int = setting(1000, doc="Open file descriptors kept per worker (nginx open_file_cache max).", check=lambda v: in_range(v, 0, 1 << 20))
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
        check=lambda v: in_range(v, 16, 1 << 20),
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
        check=lambda v: in_range(v, 1, (1 << 32) - 1),
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
class PopularityConfig:
    max_ids: int = setting(
        100_000, doc="Content ids whose requests are counted at most; past it the least requested are forgotten.",
        check=lambda v: in_range(v, 100, 10_000_000),
    )
    flush_s: float = setting(
        5, doc="Seconds between a worker's writes of its request counts (a worker killed with -9 loses at most these).",
        check=lambda v: in_range(v, 0.05, 3600),
    )


@dataclass(frozen=True, slots=True)
class SigningConfig:
    required: bool = setting(False, doc="Refuse content requests without a valid signed URL.")
    keys: Mapping[str, str] = mapping_setting(
        doc="Key id → secret (at least 16 characters, used as UTF-8 bytes).", check=lambda v: check_keys(v)
    )
    key_id: str | None = setting(None, doc="The key this program signs with; must be in `keys`.")
    clock_skew_s: float = setting(30, doc="Seconds of clock skew tolerated when checking expiry.", check=check_non_negative)

    def secrets(self) -> dict[str, bytes]:
        return {k: v.encode("utf-8") for k, v in self.keys.items()}


@dataclass(frozen=True, slots=True)
class TlsConfig(TlsServingConfig):
    redirect_http: bool = setting(
        False, doc="Answer content requests on the plain [server] listen addresses with 308 to HTTPS; control endpoints stay plain."
    )
    ticket_key_file: str = setting(
        "", doc="80-byte session-ticket key (nginx's ssl_session_ticket_key layout) shared by boxes behind one name; "
        "'' : a random key made at start, shared by the workers, kept across SIGHUP. Re-read on SIGHUP.",
        check=lambda v: v and check_abs_path(v),
    )
    previous_ticket_key_files: tuple[str, ...] = setting(
        (), doc="Older 80-byte ticket keys that still decrypt (never encrypt) tickets, as nginx's second and later "
        "ssl_session_ticket_key files; a ticket they open is renewed under ticket_key_file. Re-read on SIGHUP.",
        check=lambda v: tuple(check_abs_path(x) for x in v),
    )


@dataclass(frozen=True, slots=True)
class Config:
    appliance: ApplianceConfig = setting(doc="Identity of this appliance.")
    server: ServerConfig = setting(doc="The HTTP server.")
    index: IndexConfig = setting(doc="The LMDB index.")
    stores: tuple[StoreConfig, ...] = setting(doc="One [[stores]] table per data disk.")
    check: CheckConfig = setting(CheckConfig(), doc="Start-up reconciliation.")
    signing: SigningConfig = setting(SigningConfig(), doc="Signed URLs.")
    popularity: PopularityConfig = setting(PopularityConfig(), doc="Per-file request counters (the fill agent's intra-day passes read them).")
    routes: RoutesConfig = setting(RoutesConfig(), doc="Client prefixes reported on /routes.")
    tls: TlsConfig | None = setting(None, doc="HTTPS serving; unset: plain HTTP only.")


def _validate_config(cfg: Config) -> None:
    tls_listen = cfg.tls.listen if cfg.tls is not None else ()
    if not cfg.server.listen and not tls_listen:
        raise ConfigError("server.listen: must list at least one 'host:port' (or set [tls] listen)")
    plain = {parse_host_port(x) for x in cfg.server.listen}
    for i, item in enumerate(tls_listen):
        if parse_host_port(item) in plain:
            raise ConfigError(f"tls.listen[{i}]: {item!r} is also in server.listen")
    if cfg.tls is not None and cfg.tls.previous_ticket_key_files:
        if not cfg.tls.ticket_key_file:
            raise ConfigError("tls.previous_ticket_key_files: needs tls.ticket_key_file (the key that encrypts)")
        files = (cfg.tls.ticket_key_file, *cfg.tls.previous_ticket_key_files)
        for i, path in enumerate(cfg.tls.previous_ticket_key_files):
            if path in files[:i + 1]:
                raise ConfigError(f"tls.previous_ticket_key_files[{i}]: {path!r} is listed twice (or is tls.ticket_key_file)")
    if cfg.tls is not None and cfg.tls.redirect_http and not tls_listen:
        raise ConfigError("tls.redirect_http: needs tls.listen")
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
    if cfg.signing.required and not cfg.signing.keys:
        raise ConfigError("signing.keys: required = true needs at least one key")


# ---------------------------------------------------------------- the loader


def parse_config(data: dict) -> Config:
    """Validate an already-parsed TOML document into a `Config`.

    A `[fill]` table is let through unvalidated: it belongs to the fill agent
    (`fill.config`), which shares this file.
    """
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in OTHER_PROGRAMS_TABLES}
    cfg = load_section(Config, data, "")
    if not cfg.stores:
        raise ConfigError("stores: at least one [[stores]] table is required")
    _validate_config(cfg)
    return cfg


def load_config(path: str) -> Config:
    """Read, parse and validate the appliance's config file."""
    try:
        return parse_config(read_toml(path))
    except ConfigError as exc:
        if str(exc).startswith(path):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def documented_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every key path of the appliance's config with its default and doc."""
    return _documented_keys(cls, prefix)
