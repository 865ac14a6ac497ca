"""Fetching the manifest and peers' inventories: bounded, and validated by one parser each.

Rules kept here:
- A body larger than `fill.max_response_mb` is refused, whether its
  Content-Length says so or it simply keeps coming; nothing larger is ever
  held in memory.
- What comes back is handed to exactly one validating function
  (`parse_manifest`, `parse_inventory`); a failed fetch of the manifest is a
  `ManifestError` (the run changes nothing), a failed peer is an
  `InventoryError` (that peer is not a source this run).
- Redirects are followed at most `MAX_REDIRECTS` times, and only to http(s).
  A redirect from https to http is refused (`no_downgrade`, a trace hook on
  every session of the agent): it is a `DowngradeRedirect`, a bad redirect
  of that source, never followed, so bytes asked for over verified TLS are
  never fetched in clear text.
- HTTPS is verified by the session's one context (`fill.ca_file`); a
  certificate or handshake failure is described by `tls_reason`, one line
  naming why, so the log says "certificate verify failed: ..." rather than a
  connector's repr.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from fill.config import FillConfig
from fill.errors import FillError, InventoryError, ManifestError
from fill.inventory import parse_inventory
from fill.manifest import Manifest, parse_manifest

MAX_REDIRECTS = 5  # for every request of the agent: a redirect loop fails the source after this many hops
READ_CHUNK = 256 << 10


class BodyTooLarge(FillError):
    pass


class DowngradeRedirect(aiohttp.InvalidUrlRedirectClientError):
    """An https URL answered with a redirect to http (refused, never followed)."""


async def _refuse_downgrade(session, ctx, params: aiohttp.TraceRequestRedirectParams) -> None:
    if params.url.scheme != "https":
        return
    location = params.response.headers.get("Location") or params.response.headers.get("URI")
    if not location:
        return
    try:
        target = params.url.join(URL(location, encoded=True))
    except ValueError:
        return  # aiohttp refuses the malformed URL itself
    if target.scheme == "http":
        params.response.close()
        raise DowngradeRedirect(target, f"refused a redirect from https to http ({params.url} -> {target})")


def no_downgrade() -> aiohttp.TraceConfig:
    """A trace hook for a ClientSession: a redirect from https to http raises `DowngradeRedirect`."""
    tc = aiohttp.TraceConfig()
    tc.on_request_redirect.append(_refuse_downgrade)
    return tc


def tls_reason(exc: BaseException) -> str | None:
    """The one-line reason of a TLS failure, or None when `exc` is not one."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        why = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or str(cert)
        return f"certificate verify failed: {why} (fill.ca_file)"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed: {str(exc)[:200]}"
    return None


def describe(exc: BaseException) -> str:
    """A failed request in one line: the TLS reason, or the error's type and text."""
    return tls_reason(exc) or f"{type(exc).__name__}: {str(exc)[:200]}"


async def read_bounded(resp: aiohttp.ClientResponse, limit_bytes: int) -> bytes:
    """The whole body, or BodyTooLarge once it passes `limit_bytes`."""
    if resp.content_length is not None and resp.content_length > limit_bytes:
        raise BodyTooLarge(f"answer of {resp.content_length} bytes is over the {limit_bytes}-byte limit (fill.max_response_mb)")
    out = bytearray()
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        out += chunk
        if len(out) > limit_bytes:
            raise BodyTooLarge(f"answer is over the {limit_bytes}-byte limit (fill.max_response_mb)")
    return bytes(out)


async def _get(session: aiohttp.ClientSession, url: str, limit_bytes: int, timeout: aiohttp.ClientTimeout,
               headers: dict[str, str] | None = None) -> bytes:
    async with session.get(url, timeout=timeout, max_redirects=MAX_REDIRECTS, headers=headers) as resp:
        if resp.status != 200:
            raise FillError(f"HTTP {resp.status}")
        return await read_bounded(resp, limit_bytes)


async def fetch_manifest(session: aiohttp.ClientSession, fc: FillConfig, keys: dict[str, bytes]) -> Manifest:
    url = fc.manifest_url
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=fc.connect_timeout_s, sock_read=fc.read_timeout_s)
    try:
        body = await _get(session, url, fc.max_response_bytes, timeout)
    except FillError as exc:
        raise ManifestError(f"manifest {url}: {exc}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise ManifestError(f"manifest {url}: {describe(exc)}") from None
    return parse_manifest(body, keys=keys, require_signature=fc.requires_signature)


async def fetch_inventory(session: aiohttp.ClientSession, fc: FillConfig, url: str, appliance_id: str,
                          control_token: str = "") -> frozenset[str]:
    """A peer's validated inventory. `/inventory` is a control endpoint: the site's
    appliances share `[server] control_token`, so ours is what the peer asks for."""
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=fc.connect_timeout_s, sock_read=fc.read_timeout_s)
    headers = {"Authorization": f"Bearer {control_token}"} if control_token else None
    try:
        body = await _get(session, url + "/inventory", fc.max_response_bytes, timeout, headers)
    except FillError as exc:
        raise InventoryError(str(exc)) from None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise InventoryError(describe(exc)) from None
    return parse_inventory(body, appliance_id)
