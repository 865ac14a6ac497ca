"""Signed content URLs, shared by the appliance, fill and steering.

A URL for content ``<id>`` carries ``e`` (expiry, unix seconds), ``k`` (key
id, for rotation) and ``t`` (token)::

    /content/<id>?e=<expiry>&k=<key id>&t=<token>
    token = base64url_nopad(HMAC-SHA256(secret[k], f"{id}\\n{expiry}"))

Rules this module keeps:

- Nothing here performs I/O or reads the clock: the verifier is given
  ``now_s`` and the key table.
- The signature is checked before the expiry: a 410 is only ever sent for
  a URL this system issued, so a forger learns nothing beyond 403.
  Rejected alternative: expiry first, which saves an HMAC on stale URLs
  but answers forged ones with 410.
- The MAC covers the expiry exactly as it appears in the URL, so ``e`` has
  one spelling per instant (``0123`` does not verify for a token made for
  ``123``), and the token is compared in its text form with
  ``hmac.compare_digest``, so it too has one spelling (no padding, no
  alternative final characters).
- A URL has expired when ``now_s > e + clock_skew_s`` (410); the skew
  covers clocks that disagree between the signer and the appliance.
- ``verify`` never raises, whatever the query values hold; signing with
  bad arguments is the caller's bug and raises ``ValueError``.
- ``VerifiedTokens`` remembers the MAC check of a signed query, keyed on
  the exact content id and query text, so a player's URL reused for every
  range costs one HMAC, not one per request. Its answer is the answer
  ``verify`` would give at ``now_s``: only queries whose MAC verified are
  kept, the expiry is compared with ``now_s`` on every hit, and an entry
  counts only while its key id still maps to the same secret (a reload
  that removes or changes a key forgets its tokens). It holds at most
  ``max_entries`` (oldest first out), and only tokens this system signed
  can enter it, so a client cannot fill it with junk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

__all__ = ["Verdict", "VerifiedTokens", "make_token", "sign_query", "signed_path", "verify"]

# Distinct signed URLs a worker serves within their lifetime are a few per
# playing session (one per encode); 4096 covers thousands of sessions and
# costs well under 1 MiB.
TOKEN_CACHE_ENTRIES = 4096

# Key ids travel unescaped in the query string: URL-unreserved characters.
_KEY_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}", re.ASCII)
# Unix seconds fit in 19 digits until long after anyone cares; bounding the
# length also keeps int() away from CPython's 4300-digit limit.
_EXPIRY = re.compile(r"[0-9]{1,19}", re.ASCII)
# 32 bytes of HMAC-SHA256 are 43 base64url characters without padding.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a signed request may be served, and the status if not."""

    ok: bool
    status: int  # 200 when ok, 403 bad/missing/unknown key, 410 expired
    reason: str  # one line, for logs


def make_token(content_id: str, expiry_s: int, secret: bytes) -> str:
    """The token for ``content_id`` valid until ``expiry_s`` (unix seconds)."""
    if isinstance(expiry_s, bool) or not isinstance(expiry_s, int) or expiry_s < 0:
        raise ValueError(f"expiry must be a non-negative int, got {expiry_s!r}")
    return _token(content_id, str(expiry_s), secret)


def sign_query(content_id: str, expiry_s: int, key_id: str, secret: bytes) -> str:
    """The query string ``e=<expiry>&k=<key id>&t=<token>``."""
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"key id must be 1-64 URL-unreserved characters, got {key_id!r}")
    return f"e={expiry_s}&k={key_id}&t={make_token(content_id, expiry_s, secret)}"


def signed_path(content_id: str, expiry_s: int, key_id: str, secret: bytes) -> str:
    """The path and query ``/content/<id>?e=..&k=..&t=..``.

    The id is percent-encoded as one path segment; the server decodes it
    before calling :func:`verify`, so the MAC is over the decoded id.
    """
    query = sign_query(content_id, expiry_s, key_id, secret)
    return f"/content/{quote(content_id, safe='')}?{query}"


def verify(
    content_id: str,
    e: str | None,
    k: str | None,
    t: str | None,
    keys: Mapping[str, bytes],
    now_s: float,
    clock_skew_s: float,
) -> Verdict:
    """Check the ``e``, ``k`` and ``t`` query values of a request for ``content_id``."""
    if t is None:
        return Verdict(False, 403, "missing token")
    if e is None:
        return Verdict(False, 403, "missing expiry")
    if k is None:
        return Verdict(False, 403, "missing key id")
    if not _EXPIRY.fullmatch(e):
        return Verdict(False, 403, "malformed expiry")
    secret = keys.get(k)
    if secret is None:
        return Verdict(False, 403, f"unknown key id {_short(k)}")
    if not _TOKEN.fullmatch(t):
        return Verdict(False, 403, "malformed token")
    expected = _token(content_id, e, secret)
    if not hmac.compare_digest(expected.encode("ascii"), t.encode("ascii")):
        return Verdict(False, 403, "bad token")
    # Only now, with a genuine URL, does the expiry matter.
    expiry_s = int(e)
    if now_s > expiry_s + clock_skew_s:
        return Verdict(False, 410, f"expired {now_s - expiry_s:.0f} s ago")
    return OK


OK = Verdict(True, 200, "ok")


class VerifiedTokens:
    """Signed queries whose MAC verified: (content id, query) → (expiry, key id, secret). See the module rules."""

    __slots__ = ("max_entries", "_entries")

    def __init__(self, max_entries: int = TOKEN_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[int, str, bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def verify_query(self, content_id: str, query: str, keys: Mapping[str, bytes], now_s: float, clock_skew_s: float) -> Verdict:
        """`verify` of the `e`, `k`, `t` values in `query` (the last of each wins), remembering genuine tokens."""
        key = (content_id, query)
        hit = self._entries.get(key)
        if hit is not None:
            expiry_s, key_id, secret = hit
            if keys.get(key_id) == secret:
                if now_s > expiry_s + clock_skew_s:
                    return Verdict(False, 410, f"expired {now_s - expiry_s:.0f} s ago")
                return OK
            del self._entries[key]  # the key was removed or changed: check again, from scratch
        params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        e, k = params.get("e"), params.get("k")
        verdict = verify(content_id, e, k, params.get("t"), keys, now_s, clock_skew_s)
        if verdict.status != 403 and e is not None and k is not None:  # ok or expired: the MAC verified
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (int(e), k, keys[k])
        return verdict

    def expiry_of(self, content_id: str, query: str) -> int | None:
        """The expiry (unix s) of the remembered genuine token of this query, or None."""
        hit = self._entries.get((content_id, query))
        return None if hit is None else hit[0]

    def keys_changed(self, keys: Mapping[str, bytes]) -> None:
        """Forget the tokens of keys that `keys` no longer holds, or holds with another secret."""
        self._entries = {key: v for key, v in self._entries.items() if keys.get(v[1]) == v[2]}


def _token(content_id: str, expiry_text: str, secret: bytes) -> str:
    # surrogatepass: ids decoded with surrogateescape still sign, never raise.
    message = f"{content_id}\n{expiry_text}".encode("utf-8", "surrogatepass")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _short(text: str) -> str:
    """``repr`` of untrusted text, cut to keep log lines short."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
