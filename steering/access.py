"""Who the client is, and who may use what: steering's pure access rules.

Nothing here performs I/O. Rules kept here:
- The client's address is the connection's peer. `?client=` is believed
  only from a peer inside `[trust] callers`. `X-Forwarded-For` is believed
  only from a peer inside `[trust] proxies`: every header line is one list
  (RFC 9110 section 5.3: lines of one field join with commas, in order),
  walked right to left, skipping trusted proxies; the first hop that is not
  one is the client. A hop that is not an address stops the walk and the
  peer stands (nothing to its left can be trusted). When every hop is a
  trusted proxy, the leftmost is the client.
- Addresses are compared and returned in one form: IPv4-mapped IPv6
  (``::ffff:192.0.2.1``) is IPv4, a zone (``%eth0``) is dropped. So a proxy
  hop written either way is recognised, and no client gets two identities.
- Public clients get only the player's paths (`PUBLIC_EXACT`,
  `PUBLIC_PREFIXES`): /steer, /content/<id>, and the playback paths
  (/play/*, /watch/*). Everything else is control: loopback peers always,
  plus `[server] control_allow`; `0.0.0.0/0` and `::/0` open it to everyone.
  When `[server] control_token` is set, a control request must also carry
  ``Authorization: Bearer <token>``, loopback included; the comparison takes
  the same time whatever the bytes.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Iterable, Sequence

from steering.messages import MessageError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PUBLIC_EXACT = frozenset({"/steer", "/watch"})
PUBLIC_PREFIXES = ("/content/", "/play/", "/watch/")
MAX_FORWARDED_HOPS = 64  # more than any real chain of proxies; the walk stops there


def parse_address(text: str) -> Address:
    """An address in normal form (IPv4-mapped → IPv4, no zone). Raises ValueError."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError(f"{str(text)[:60]!r} is not an IP address")
    addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _inside(addr: Address, nets: Sequence[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(peer: str, query: str | None, forwarded_lines: Sequence[str],
                   trusted_proxies: Sequence[Network], trusted_callers: Sequence[Network]) -> tuple[str, str]:
    """(client address, where it came from: "peer", "query" or "x-forwarded-for").

    Raises MessageError (naming "peer" or "client") when the address that
    would be used is not an IP address.
    """
    try:
        peer_addr = parse_address(peer)
    except ValueError:
        raise MessageError(f"peer: {str(peer)[:60]!r} is not an IP address") from None
    if query is not None and _inside(peer_addr, trusted_callers):
        try:
            return str(parse_address(query)), "query"
        except ValueError:
            raise MessageError(f"client: {query[:60]!r} is not an IP address") from None
    if forwarded_lines and _inside(peer_addr, trusted_proxies):
        hops = [h.strip() for line in forwarded_lines for h in line.split(",")]
        hops = [h for h in hops if h]
        leftmost = None
        for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
            try:
                addr = parse_address(hop)
            except ValueError:
                return str(peer_addr), "peer"
            if not _inside(addr, trusted_proxies):
                return str(addr), "x-forwarded-for"
            leftmost = addr
        if leftmost is not None and len(hops) <= MAX_FORWARDED_HOPS:
            return str(leftmost), "x-forwarded-for"
    return str(peer_addr), "peer"


def is_public_path(path: str) -> bool:
    """True for the paths every client may use; the rest is control."""
    return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)


def control_refusal(peer: str, authorization: str | None, allow: Sequence[Network], token: str | None) -> str | None:
    """None when this peer may use the control endpoints, else the reason it may not."""
    try:
        addr = parse_address(peer)
    except ValueError:
        return "control endpoints: the peer is not an IP address"
    if not (addr.is_loopback or _inside(addr, allow)):
        return f"control endpoints are not open to {addr} (see [server] control_allow)"
    if token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode()):
            return "control endpoints need 'Authorization: Bearer <[server] control_token>'"
    return None
