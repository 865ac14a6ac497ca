"""The fill agent's `[fill]` table: declared here, validated against `[signing]`.

Rules kept here:
- `oca.config.Config` knows nothing of `[fill]`: the appliance's loader lets
  the table through unvalidated, and `load_fill_config` validates it (with
  `oca.settings.load_section`, so errors name the key path) together with
  its cross-checks against `[signing]`.
- `require_signed_manifest` is tri-state: unset means "required unless the
  manifest URL is https" (`requires_signature`); an explicit `false` over
  plain http is allowed and reported by `unsigned_http_warning`.
- `ca_file` is the one trust anchor of every HTTPS fetch of the agent
  (manifest, origins, peers); `client_ssl_context` builds the one
  `ssl.SSLContext` from it, always verifying (never CERT_NONE). The loader
  builds it once so an unreadable or malformed bundle is a config error.
- Nothing here performs I/O beyond reading the config file and `ca_file`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from oca.config import Config, load_config
from oca.errors import ConfigError
from oca.settings import (
    check_fraction,
    check_http_url,
    check_non_negative,
    check_positive,
    check_timezone,
    in_range,
    load_section,
    setting,
)
from oca.tomlfile import read_toml
from oca.settings import check_abs_path, documented_keys as _documented_keys


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The agent's one TLS client context: verifies the chain and the host name, against `ca_file` or the system store.

    Raises OSError (unreadable) or ssl.SSLError (no certificate in it).
    """
    ctx = ssl.create_default_context(cafile=ca_file)
    # create_default_context already verifies; say it here so no later edit can quietly drop it.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def check_window(value: str) -> str:
    from fill.window import parse_window

    parse_window(value)  # raises ValueError with a precise message
    return value


def check_pass_times(value: tuple[str, ...]) -> tuple[str, ...]:
    from fill.window import parse_time

    minutes = [parse_time(v) for v in value]  # raises ValueError with a precise message
    if len(set(minutes)) != len(minutes):
        raise ValueError("a pass time is given twice")
    return value


@dataclass(frozen=True, slots=True)
class FillConfig:
    manifest_url: str = setting(doc="Where the manifest is published (http or https).", check=check_http_url)
    window: str | None = setting(None, doc="Local fill window 'HH:MM-HH:MM' (may cross midnight). Unset: no window limit.", check=check_window)
    timezone: str | None = setting(None, doc="IANA time zone of the window. Unset: the machine's local time.", check=check_timezone)
    rate_limit_mbps: float | None = setting(None, doc="Rate cap for all downloads together, in 10^6 bit/s. Unset: no cap.", check=check_positive)
    nightly_budget_gb: float | None = setting(
        None,
        doc="Bytes (10^9) downloaded per day at most, by the night's run and its passes. A file starts only if it fits in "
            "what is left, except a run's first, which may end past it; the next day's budget is lowered by that overshoot. "
            "Unset: no budget.",
        check=check_positive,
    )
    concurrency: int = setting(4, doc="Downloads at once.", check=lambda v: in_range(v, 1, 256))
    signing_key_id: str | None = setting(None, doc="Key (from [signing] keys) used to sign peer-fill URLs. Unset: [signing] key_id.")
    delete_grace_h: float = setting(
        72, doc="A file still listed but no longer chosen is deleted after this many hours, or sooner when space is needed.", check=check_non_negative
    )
    max_delete_share: float = setting(
        0.5,
        doc="Share of what the appliance holds (by bytes or count) that one run may delete, by every path together; "
            "a manifest deleting more at once is refused, unless --force.",
        check=check_fraction,
    )
    require_signed_manifest: bool | None = setting(
        None,
        doc="Refuse manifests without a valid HMAC signature made with a [signing] key. "
            "Unset: required unless manifest_url is https.",
    )
    max_manifest_age_h: float = setting(
        72, doc="Refuse a manifest whose generated_s is older than this many hours (replay guard).", check=check_positive
    )
    max_response_mb: float = setting(
        64, doc="Largest manifest or peer /inventory answer accepted, in 10^6 bytes.", check=check_positive
    )
    retries: int = setting(3, doc="Attempts per source before the next source is tried.", check=lambda v: in_range(v, 1, 100))
    backoff_s: float = setting(2, doc="First retry delay; doubles with each retry.", check=check_non_negative)
    connect_timeout_s: float = setting(10, doc="TCP connect timeout per request.", check=check_positive)
    read_timeout_s: float = setting(30, doc="A source that sends nothing for this long has failed (stall guard).", check=check_positive)
    peer_fill: bool = setting(True, doc="Fetch from appliances of the same site that hold the file before the origin.")
    passes: tuple[str, ...] = setting(
        (),
        doc="Local times 'HH:MM' inside the window of the intra-day passes after the night's run: each re-plans on the "
            "requests this appliance counted since the night's run and adds what is requested but missing from the site, "
            "within what is left of the budget and the window. Empty: the night's run only.",
        check=check_pass_times,
    )
    pass_reserve: float = setting(
        0.7,
        doc="With passes, the night's run leaves up to this share of nightly_budget_gb to them, times the share (by bytes) "
            "of the newly listed files that come without a forecast (popularity 0).",
        check=check_fraction,
    )
    pass_min_requests: int = setting(
        2, doc="A missing file needs at least this many requests since the night before a pass adds it.",
        check=lambda v: in_range(v, 1, 1_000_000),
    )
    pass_margin: float = setting(
        0.5, doc="A pass deletes a held file for room only when the addition is worth (1 + margin) times more plays a day.",
        check=check_non_negative,
    )
    ca_file: str | None = setting(
        None,
        doc="PEM bundle of the CAs trusted for every HTTPS fetch (manifest, origins, peers). Unset: the system store. "
            "Certificates are always verified; there is no way to turn that off.",
        check=check_abs_path,
    )

    @property
    def requires_signature(self) -> bool:
        """Whether an unsigned manifest is refused (unset: unless the URL is https)."""
        if self.require_signed_manifest is not None:
            return self.require_signed_manifest
        return urlsplit(self.manifest_url).scheme != "https"

    @property
    def unsigned_http_warning(self) -> str | None:
        """The warning an explicit `require_signed_manifest = false` over plain http earns, or None."""
        if self.require_signed_manifest is False and urlsplit(self.manifest_url).scheme != "https":
            return ("fill.require_signed_manifest = false with an http manifest_url: anyone on the path "
                    "can change what this appliance holds")
        return None

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1e6)


def parse_fill(data: object, cfg: Config) -> FillConfig:
    """Validate the `[fill]` table of an already-parsed document, with its cross-checks against `cfg.signing`."""
    fill = load_section(FillConfig, data, "fill")
    if fill.ca_file is not None:
        try:
            client_ssl_context(fill.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"fill.ca_file: cannot load {fill.ca_file!r}: {reason}") from None
    if fill.window is not None:
        from fill.window import minute_in_window, parse_time, parse_window

        window = parse_window(fill.window)
        for i, text in enumerate(fill.passes):
            if not minute_in_window(window, parse_time(text)):
                raise ConfigError(f"fill.passes[{i}]: {text} is not inside the window {fill.window} (after its start, before its end)")
    kid = fill.signing_key_id
    if kid is not None and kid not in cfg.signing.keys:
        raise ConfigError(f"fill.signing_key_id: {kid!r} is not one of signing.keys")
    if fill.requires_signature and not cfg.signing.keys:
        if fill.require_signed_manifest:
            raise ConfigError("fill.require_signed_manifest: needs at least one key in signing.keys")
        raise ConfigError(
            "fill.require_signed_manifest: unset, so required for the http manifest_url, and signing.keys is empty; "
            "add a key, use https, or set require_signed_manifest = false"
        )
    return fill


def load_fill_config(path: str) -> tuple[Config, FillConfig]:
    """The appliance's config and its validated `[fill]` table. Raises ConfigError naming the key path."""
    cfg = load_config(path)
    data = read_toml(path)
    if "fill" not in data:
        raise ConfigError(f"{path}: no [fill] table; oca-fill needs at least fill.manifest_url")
    try:
        return cfg, parse_fill(data["fill"], cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def documented_keys() -> list[tuple[str, object, str]]:
    """Every `fill.*` key with its default and doc (configs/oca.toml must show each)."""
    return _documented_keys(FillConfig, "fill.")
