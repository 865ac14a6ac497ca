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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["Verdict", "make_token", "sign_query", "signed_path", "verify"]

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
    return Verdict(True, 200, "ok")


def _token(content_id: str, expiry_text: str, secret: bytes) -> str:
    # surrogatepass: ids decoded with surrogateescape still sign, never raise.
    message = f"{content_id}\n{expiry_text}".encode("utf-8", "surrogatepass")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _short(text: str) -> str:
    """``repr`` of untrusted text, cut to keep log lines short."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
