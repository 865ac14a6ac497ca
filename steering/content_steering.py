"""Content Steering: the session a manifest opens, the player's query, the JSON answer.

Nothing here performs I/O or reads the clock. Rules kept here:
- The answer is the one JSON object both standards read (DASH-IF Content
  Steering, Apple's HLS Content Steering): ``VERSION`` 1, ``TTL`` whole
  seconds, ``RELOAD-URI`` (absolute; the player adds its own parameters),
  ``PATHWAY-PRIORITY`` (appliance ids, best first). dash.js 5.2 reads
  PATHWAY-PRIORITY and ignores SERVICE-LOCATION-PRIORITY, so only the
  former is sent.
- A manifest opens a session: its steering URL carries the title, the
  client address the manifest was made for, and, when a signing key is
  configured, ``session`` = HMAC-SHA256 over (title, client) with that key.
  The steering endpoint believes the URL's client only with a valid
  session (so a player cannot steer as someone else); without one, the
  `steering.access` rules apply as for /steer.
- The player's query is parsed by `parse_player_query`, the one function
  that reads it: `_DASH_pathway`/`_HLS_pathway` (an appliance id as the
  player echoes it; dash.js 5.2 sends a comma-separated list in double
  quotes, one per media type), `_DASH_throughput`/`_HLS_throughput`
  (bits/s, integers, comma-separated, empty for not measured), `client` and `session`; each known key at most
  once, other keys ignored (players add cache-busters). `MessageError`
  names the field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import quote, urlencode

from oca.ids import is_valid_id
from steering.messages import MessageError

MAX_THROUGHPUT_BPS = 10**12  # 1 Tb/s: more than any player measures; bigger is a forged value
MAX_LISTED = 16  # pathways or throughputs in one request: one per media type in practice
SESSION_CHARS = 43  # base64url of 32 bytes, unpadded
_KEYS = ("_DASH_pathway", "_HLS_pathway", "_DASH_throughput", "_HLS_throughput", "client", "session")


@dataclass(frozen=True, slots=True)
class PlayerQuery:
    standard: str | None  # "dash", "hls" or None (neither player's parameters)
    pathways: tuple[str, ...]  # the pathways the player is on now (dash.js: one per media type)
    throughput_bps: tuple[int | None, ...]  # its throughput measures, in the same order (None: not measured yet)
    client: str | None
    session: str | None


def session_token(title: str, client: str, secret: bytes) -> str:
    mac = hmac.new(secret, f"oca-steering-session\n{title}\n{client}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def session_valid(title: str, client: str, token: str, secret: bytes) -> bool:
    return hmac.compare_digest(session_token(title, client, secret).encode(), token.encode("ascii", "replace"))


def steering_url(base: str, title: str, client: str, secret: bytes | None) -> str:
    """The absolute URL of the steering answer for one manifest's session."""
    params = {"client": client}
    if secret is not None:
        params["session"] = session_token(title, client, secret)
    return f"{base}/play/{quote(title)}/steering.json?{urlencode(params)}"


def parse_player_query(pairs: Iterable[tuple[str, str]]) -> PlayerQuery:
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in _KEYS:
            if key in seen:
                raise MessageError(f"{key}: given more than once")
            seen[key] = value
    dash = "_DASH_pathway" in seen or "_DASH_throughput" in seen
    hls = "_HLS_pathway" in seen or "_HLS_throughput" in seen
    if dash and hls:
        raise MessageError("_HLS_pathway: DASH and HLS parameters in one request")
    prefix = "_DASH_" if dash else "_HLS_"
    pathway = seen.get(prefix + "pathway") or ""
    if len(pathway) >= 2 and pathway[0] == pathway[-1] == '"':
        pathway = pathway[1:-1]  # dash.js 5.2 sends a quoted list: "a1,a2"
    pathways = tuple(p for p in pathway.split(",")) if pathway else ()
    if len(pathways) > MAX_LISTED or not all(is_valid_id(p) for p in pathways):
        raise MessageError(f"{prefix}pathway: not a list of appliance ids")
    throughput = seen.get(prefix + "throughput") or ""
    items = throughput.split(",") if throughput else []
    # Digits only: int() would take "1_000", " 7" and other spellings.
    # An empty item is a pathway not measured yet (dash.js 5.2 sends "51700000,").
    if len(items) > MAX_LISTED or not all(t == "" or (t.isascii() and t.isdigit() and len(t) <= 13 and int(t) <= MAX_THROUGHPUT_BPS)
                                          for t in items):
        raise MessageError(f"{prefix}throughput: must be integers from 0 to {MAX_THROUGHPUT_BPS} (bits/s), comma-separated")
    bps = tuple(int(t) if t else None for t in items)
    client = seen.get("client")
    if client is not None and (len(client) > 64 or not client.isascii() or not client.isprintable()):
        raise MessageError("client: not an IP address")
    session = seen.get("session")
    if session is not None and (len(session) != SESSION_CHARS or not session.isascii()):
        raise MessageError("session: malformed")
    return PlayerQuery("dash" if dash else "hls" if hls else None, pathways, bps, client, session)


def steering_answer(pathways: Sequence[str], ttl_s: float, reload_uri: str) -> dict:
    """The JSON object both players read."""
    return {"VERSION": 1, "TTL": max(1, int(round(ttl_s))), "RELOAD-URI": reload_uri, "PATHWAY-PRIORITY": list(pathways)}
