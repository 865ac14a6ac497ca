"""Who may use the control endpoints, and what their query parameters mean.

Rules kept here:
- Nothing here performs I/O: values in, values out.
- Control endpoints are `/health`, `/inventory`, `/routes`, `/metrics` and
  `/popularity`.
  Loopback peers (127.0.0.0/8, ::1) may always use them; any other peer
  only when a `[server] control_allow` network contains it (`0.0.0.0/0`
  and `::/0` open them to everyone). An IPv4-mapped IPv6 peer is judged as
  its IPv4 address, and a scoped IPv6 address without its zone.
- When `[server] control_token` is set, every caller, loopback included,
  must also send `Authorization: Bearer <token>`. The comparison takes
  constant time, and a refusal never says which part was wrong beyond
  "address" or "token".
- `/inventory?form=` is `json` (the default), `packed` or `hashed`; anything else is
  a `QueryError`.
- Query numbers (`since`, `limit`, `top`) are plain ASCII decimal with at most 19
  digits; anything else (``²``, signs, spaces, 5,000 digits, a repeated
  parameter) is a `QueryError` naming the parameter, answered with 400.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qsl

from oca.inventory_wire import FORMS

CONTROL_PATHS = frozenset(("/health", "/inventory", "/metrics", "/routes", "/popularity"))
MAX_DIGITS = 19  # below 2**63: the index's generations are unsigned 64-bit, never that large
# A delta page reads at most this many journal records unless `limit` says
# otherwise (about 2 µs a record in a thread: 20 ms a page). The answer's
# `generation` is where the page ends, so a reader that continues with
# `since=<generation>` gets the rest, paged or not. Only a client that gave
# `limit` gets the `latest` and `more` fields, so the answer's shape is
# unchanged for clients that do not page.
DELTA_PAGE_DEFAULT = 10_000
DELTA_PAGE_MAX = 100_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ControlPolicy:
    networks: tuple[Network, ...] = ()
    token: bytes | None = None

    @classmethod
    def from_config(cls, control_allow: tuple[str, ...], control_token: str | None) -> "ControlPolicy":
        nets = tuple(ipaddress.ip_network(c, strict=False) for c in control_allow)
        return cls(nets, control_token.encode() if control_token else None)


def _peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def control_refusal(peer: str, authorization: str | None, policy: ControlPolicy) -> str | None:
    """Why `peer` may not use the control endpoints, or None when it may."""
    addr = _peer_address(peer)
    if addr is None:
        return "control endpoints are not open to this address"
    if not addr.is_loopback and not any(addr.version == net.version and addr in net for net in policy.networks):
        return "control endpoints are not open to this address"
    if policy.token is not None:
        given = b""
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = value.strip().encode("latin-1")
        if not hmac.compare_digest(given, policy.token):
            return "control endpoints need a valid bearer token"
    return None


class QueryError(ValueError):
    """A control query parameter that is not acceptable; the message names it."""


def parse_query(query: str) -> dict[str, str]:
    """The query's parameters; a parameter given twice is refused."""
    out: dict[str, str] = {}
    if not query:
        return out
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in out:
            raise QueryError(f"{name}: given more than once")
        out[name] = value
    return out


def parse_count(params: dict[str, str], name: str, low: int = 0, high: int | None = None) -> int | None:
    """Parameter `name` as a decimal integer in [low, high], or None when absent."""
    text = params.get(name)
    if text is None:
        return None
    if not text or len(text) > MAX_DIGITS or not text.isascii() or not text.isdigit():
        raise QueryError(f"{name}: must be a decimal number of 1 to {MAX_DIGITS} digits")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise QueryError(f"{name}: must be between {low} and {high}" if high is not None else f"{name}: must be at least {low}")
    return value


@dataclass(frozen=True, slots=True)
class InventoryQuery:
    since: int | None  # None: the full inventory
    limit: int  # journal records read at most for a delta
    paged: bool = False  # the client gave `limit`: the answer says `latest` and `more`
    form: str = "json"  # `form=packed`: the compact form of `oca.inventory_wire`


def parse_inventory_query(query: str) -> InventoryQuery:
    params = parse_query(query)
    since = parse_count(params, "since")
    limit = parse_count(params, "limit", 1, DELTA_PAGE_MAX)
    form = params.get("form", "json")
    if form not in FORMS:
        raise QueryError(f"form: must be one of {', '.join(FORMS)}")
    return InventoryQuery(since, DELTA_PAGE_DEFAULT if limit is None else limit, limit is not None, form)


def parse_routes_query(query: str) -> int | None:
    """`/routes?since=G`: the generation the caller holds, or None."""
    return parse_count(parse_query(query), "since")


def parse_popularity_query(query: str) -> int | None:
    """`/popularity?top=N`: the N most requested ids since the mark only (None: every id)."""
    return parse_count(parse_query(query), "top", 1)
