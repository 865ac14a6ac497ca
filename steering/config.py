"""The steering service's configuration and coverage-zone file.

Same rules as the appliance's config (`oca.settings`): frozen dataclasses,
unknown keys refused, every error names the key path, every key that is not
required has a documented default. Required: `[server] listen` and at least
one `[[appliances]]`.

The coverage-zone file is Apache Traffic Control's Coverage Zone File JSON:
``{"coverageZones": {"<site>": {"network": [v4 CIDRs], "network6": [v6 CIDRs]}}}``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Mapping

from oca.settings import (
    check_abs_path,
    ConfigError,
    in_range,
    one_of,
    check_cidrs,
    check_fraction,
    check_http_url,
    check_listen,
    check_name,
    check_non_negative,
    check_positive,
    load_section,
    mapping_setting,
    setting,
    check_keys,
)
from oca.tls import TlsServingConfig
from oca.tomlfile import read_toml

DEFAULT_STEERING_CONFIG = "/etc/oca/steering.toml"


def check_token(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("must be printable ASCII without spaces")
    return value


@dataclass(frozen=True, slots=True)
class SteeringServerConfig:
    listen: tuple[str, ...] = setting(
        doc="Plain-HTTP addresses to serve on, 'host:port' or '[v6]:port'; may be empty when [tls] listen is set.",
        check=lambda v: check_listen(v) if v else v,
    )
    workers: int = setting(
        1, doc="Processes answering clients on the same addresses (SO_REUSEPORT). Above 1, one more process polls and writes "
               "the fleet store <[health] snapshot_file>.store, which the workers decide from; snapshot_file must be set.", check=lambda v: in_range(v, 1, 64))
    decision_log: str = setting("", doc="Where each decision is logged as one JSON line: '' off, '-' stdout, or a file.")
    decision_log_sample: float = setting(1.0, doc="Share of decisions logged (0..1).", check=check_fraction)
    control_allow: tuple[str, ...] = setting(
        (), doc="CIDRs, besides loopback, allowed to use the control endpoints (/, /health, /metrics); '0.0.0.0/0' and '::/0' open them to everyone.",
        check=lambda v: check_cidrs(v))
    control_token: str | None = setting(
        None, doc="When set, control endpoints also require 'Authorization: Bearer <token>' (at least 16 characters).", check=lambda v: check_token(v))


@dataclass(frozen=True, slots=True)
class ApplianceConfig:
    id: str = setting(doc="The appliance's id (its [appliance] id).", check=check_name)
    url: str = setting(doc="Base URL players and steering use, e.g. 'http://192.0.2.10'.", check=check_http_url)
    site: str = setting(doc="Its site.", check=check_name)
    tier: str = setting("embedded", doc="'embedded' (inside the ISP) or 'ixp' (at an exchange).", check=lambda v: one_of(v, ("embedded", "ixp")))
    weight: float = setting(1.0, doc="Relative capacity for rendezvous hashing.", check=check_positive)
    allowed_prefixes: tuple[str, ...] | None = setting(
        None, doc="CIDRs this appliance may claim on /routes; a route outside them is dropped and counted. Unset: any.",
        check=lambda v: check_cidrs(v))


@dataclass(frozen=True, slots=True)
class CoverageConfig:
    file: str | None = setting(None, doc="Coverage Zone File (Traffic Control JSON). Unset: none.")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval_s: float = setting(2.0, doc="Seconds between polling rounds.", check=check_positive)
    timeout_s: float = setting(1.5, doc="Seconds one appliance's poll may take.", check=check_positive)
    fail_after: int = setting(3, doc="Failed polls in a row before an appliance is down.", check=lambda v: in_range(v, 1, 1000))
    recover_after: int = setting(2, doc="Good polls in a row before it is up again.", check=lambda v: in_range(v, 1, 1000))
    overload_percent: float = setting(85.0, doc="NIC use (percent) at which an appliance is overloaded.", check=lambda v: in_range(v, 1, 100))
    max_concurrent_polls: int = setting(
        256, doc="Appliances polled at once; the others wait their turn, and an appliance's timeout_s starts when its poll does.",
        check=lambda v: in_range(v, 1, 100_000))
    snapshot_file: str | None = setting(
        None, doc="Where what steering knows is written after polling rounds, and read at start (answers at once, marked stale "
                  "until the first full round). Unset: no snapshot, a cold start.", check=check_abs_path)
    snapshot_interval_s: float = setting(60.0, doc="Seconds between snapshot writes, at least.", check=lambda v: in_range(v, 0.1, 86400))
    max_prefixes_per_appliance: int = setting(
        100_000, doc="Prefixes one appliance may claim on /routes; over it, its routes are refused whole.", check=lambda v: in_range(v, 1, 10_000_000))
    max_response_mb: float = setting(
        64.0, doc="Largest answer (MB) read from an appliance; a bigger one is a failed poll.", check=lambda v: in_range(v, 0.001, 4096))
    appliance_token: str | None = setting(
        None, doc="Sent to every appliance as 'Authorization: Bearer <token>' (their [server] control_token). Unset: no header.",
        check=lambda v: check_token(v))
    ca_file: str | None = setting(
        None, doc="CA certificates (PEM) that https appliance URLs are verified against. Unset: the system store. Never unverified.",
        check=check_abs_path)


@dataclass(frozen=True, slots=True)
class SteeringSigningConfig:
    keys: Mapping[str, str] = mapping_setting(doc="Key id → secret, the same form as the appliances'.", check=lambda v: check_keys(v))
    key_id: str | None = setting(None, doc="The key URLs are signed with. Unset: URLs are not signed.")
    ttl_s: float = setting(21600, doc="Lifetime of a signed URL, seconds.", check=check_positive)

    def secrets(self) -> dict[str, bytes]:
        return {k: v.encode("utf-8") for k, v in self.keys.items()}


@dataclass(frozen=True, slots=True)
class TrustConfig:
    proxies: tuple[str, ...] = setting((), doc="CIDRs whose X-Forwarded-For is believed.", check=lambda v: check_cidrs(v))
    callers: tuple[str, ...] = setting((), doc="CIDRs allowed to name the client with ?client=.", check=lambda v: check_cidrs(v))


@dataclass(frozen=True, slots=True)
class ContentConfig:
    manifest_url: str | None = setting(
        None, doc="The origin's content manifest (the one the appliances fill from): titles and their media fields. Unset: no titles to play.",
        check=check_http_url)
    require_signed: bool | None = setting(
        None, doc="Refuse a manifest without a valid HMAC signature made with a [signing] key. Unset: required unless manifest_url is https.")
    refresh_s: float = setting(60.0, doc="Seconds between fetches of the manifest (SIGHUP fetches at once).", check=check_positive)
    timeout_s: float = setting(15.0, doc="Seconds one fetch may take.", check=check_positive)
    max_manifest_mb: float = setting(64.0, doc="Largest manifest read (MB).", check=lambda v: in_range(v, 0.001, 4096))
    max_manifest_age_h: float = setting(
        72.0, doc="Refuse a manifest whose generated_s is older than this many hours (replay guard, as the fill agent).", check=check_positive)
    ca_file: str | None = setting(
        None, doc="CA certificates (PEM) an https manifest_url is verified against. Unset: the system store.", check=check_abs_path)

    def requires_signature(self) -> bool:
        if self.require_signed is not None:
            return self.require_signed
        return not (self.manifest_url or "").startswith("https://")


@dataclass(frozen=True, slots=True)
class PlayConfig:
    steering_ttl_s: float = setting(
        10.0, doc="TTL of a Content Steering answer: how often players ask again, so how soon a drained or dead appliance is left.",
        check=lambda v: in_range(v, 1, 3600))
    url_margin_s: float = setting(
        3600.0, doc="Signed URLs in a manifest live the title's duration plus this (pauses, seeks back).", check=check_positive)


@dataclass(frozen=True, slots=True)
class SteeringConfig:
    server: SteeringServerConfig = setting(doc="The HTTP service.")
    appliances: tuple[ApplianceConfig, ...] = setting(doc="One [[appliances]] table per appliance.")
    max_urls: int = setting(4, doc="URLs in an answer at most (a top-level key).", check=lambda v: in_range(v, 1, 64))
    fallback_sites: tuple[str, ...] = setting((), doc="Sites tried, in order, after the matched ones (a top-level key).")
    coverage: CoverageConfig = setting(CoverageConfig(), doc="Coverage zones.")
    health: HealthConfig = setting(HealthConfig(), doc="Polling and hysteresis.")
    signing: SteeringSigningConfig = setting(SteeringSigningConfig(), doc="URL signing.")
    trust: TrustConfig = setting(TrustConfig(), doc="Whose word about the client address is believed.")
    tls: TlsServingConfig | None = setting(None, doc="HTTPS serving; unset: plain HTTP only.")
    content: ContentConfig = setting(ContentConfig(), doc="The origin's manifest: titles for /play and /watch.")
    play: PlayConfig = setting(PlayConfig(), doc="DASH/HLS manifests and Content Steering answers.")


def parse_steering(data: dict, *, base_dir: str = "/") -> SteeringConfig:
    cfg = load_section(SteeringConfig, data, "")
    if not cfg.appliances:
        raise ConfigError("appliances: at least one [[appliances]] table is required")
    seen: dict[str, int] = {}
    for i, a in enumerate(cfg.appliances):
        if a.id in seen:
            raise ConfigError(f"appliances[{i}].id: {a.id!r} is already appliances[{seen[a.id]}]")
        seen[a.id] = i
    sites = {a.site for a in cfg.appliances}
    for i, site in enumerate(cfg.fallback_sites):
        if site not in sites:
            raise ConfigError(f"fallback_sites[{i}]: {site!r} is not the site of any appliance")
    if cfg.server.workers > 1 and not cfg.health.snapshot_file:
        raise ConfigError("server.workers: above 1 needs [health] snapshot_file, through which the poller shares what it knows")
    if cfg.signing.key_id is not None and cfg.signing.key_id not in cfg.signing.keys:
        raise ConfigError(f"signing.key_id: {cfg.signing.key_id!r} is not one of signing.keys")
    if not cfg.server.listen and cfg.tls is None:
        raise ConfigError("server.listen: must list at least one 'host:port' (or set [tls] listen for HTTPS only)")
    if cfg.tls is not None:
        for i, item in enumerate(cfg.tls.listen):
            if item in cfg.server.listen:
                raise ConfigError(f"tls.listen[{i}]: {item!r} is also in server.listen")
    if cfg.coverage.file is not None:
        path = cfg.coverage.file if os.path.isabs(cfg.coverage.file) else os.path.join(base_dir, cfg.coverage.file)
        if not os.path.isfile(path):
            raise ConfigError(f"coverage.file: {path} does not exist")
    return cfg


def load_steering_config(path: str) -> SteeringConfig:
    try:
        return parse_steering(read_toml(path), base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as exc:
        if str(exc).startswith(path):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def coverage_path(cfg: SteeringConfig, config_path: str) -> str | None:
    f = cfg.coverage.file
    if f is None:
        return None
    return f if os.path.isabs(f) else os.path.join(os.path.dirname(os.path.abspath(config_path)), f)


def load_coverage(path: str) -> dict[str, list[str]]:
    """site → CIDRs from a Coverage Zone File; errors name the site and entry."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read coverage zones: {exc}") from None
    zones = doc.get("coverageZones") if isinstance(doc, dict) else None
    if not isinstance(zones, dict):
        raise ConfigError(f"{path}: coverageZones: must be an object of site → networks")
    out: dict[str, list[str]] = {}
    for site, spec in zones.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: coverageZones.{site}: must be an object")
        nets = []
        for key, version in (("network", 4), ("network6", 6)):
            items = spec.get(key, [])
            if not isinstance(items, list):
                raise ConfigError(f"{path}: coverageZones.{site}.{key}: must be a list")
            for j, cidr in enumerate(items):
                try:
                    # Only strings: ip_network() would take a JSON number (7) as 0.0.0.7/32.
                    if not isinstance(cidr, str):
                        raise TypeError(cidr)
                    net = ipaddress.ip_network(cidr, strict=False)
                except (ValueError, TypeError):
                    raise ConfigError(f"{path}: coverageZones.{site}.{key}[{j}]: {cidr!r} is not a prefix") from None
                if net.version != version:
                    raise ConfigError(f"{path}: coverageZones.{site}.{key}[{j}]: {cidr} is IPv{net.version}")
                nets.append(str(net))
        out[site] = nets
    return out


__all__ = ["SteeringConfig", "load_steering_config", "load_coverage", "parse_steering", "coverage_path", "check_non_negative"]
