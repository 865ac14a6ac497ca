"""Steering's copy of the origin's manifest: fetched, verified, refreshed.

Rules kept here:
- The manifest is the one the appliances fill from, checked the same way:
  `fill.manifest.parse_manifest` (schema and HMAC signature with a
  `[signing]` key, required unless `[content] require_signed` says
  otherwise or the URL is https) and `fill.manifest.check_fresh` (no
  replay of an older manifest, no manifest older than
  `max_manifest_age_h`). A refused or failed fetch keeps the titles of the
  last good one and is shown on /health (`content.error`).
- The body is read up to `max_manifest_mb`; parsing runs in a thread so
  the serving loop never stalls on a large manifest.
- The keeper runs under the Supervisor; it fetches every `refresh_s`, and
  at once when `wake()` is called (SIGHUP).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp

from fill.errors import ManifestError
from fill.manifest import Manifest, check_fresh, parse_manifest
from steering.catalog import Title, titles_of
from steering.config import ContentConfig
from steering.poller import client_context


class ContentKeeper:
    def __init__(self, cfg: ContentConfig, keys: Callable[[], dict[str, bytes]], log: Callable[[str], None]):
        self.cfg = cfg
        self._keys = keys
        self._log = log
        self._wake = asyncio.Event()
        self.titles: dict[str, Title] = {}
        self.generated_s: int | None = None  # of the manifest in use: the replay guard
        self.last_ok_s: float | None = None
        self.last_try_s: float | None = None
        self.error = ""
        self.fetches = 0
        self.failures = 0

    def reconfigure(self, cfg: ContentConfig) -> None:
        self.cfg = cfg
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def doc(self) -> dict:
        return {"manifest_url": self.cfg.manifest_url or "", "titles": len(self.titles), "generated": self.generated_s,
                "last_ok": self.last_ok_s, "last_try": self.last_try_s, "fetches": self.fetches, "failures": self.failures,
                "error": self.error}

    async def fetch_once(self) -> None:
        cfg = self.cfg
        if not cfg.manifest_url:
            return
        self.last_try_s = time.time()
        self.fetches += 1
        try:
            body = await self._get(cfg)
            loop = asyncio.get_running_loop()
            manifest: Manifest = await loop.run_in_executor(
                None, lambda: parse_manifest(body, keys=self._keys(), require_signature=cfg.requires_signature()))
            check_fresh(manifest.generated_s, self.generated_s, time.time(), cfg.max_manifest_age_h * 3600)
        except ManifestError as exc:
            self._failed(f"manifest {cfg.manifest_url} refused: {exc}")
            return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            self._failed(f"manifest {cfg.manifest_url}: {type(exc).__name__}: {str(exc)[:200]}")
            return
        titles = titles_of(manifest)
        changed = set(titles) != set(self.titles) or manifest.generated_s != self.generated_s
        self.titles = titles
        self.generated_s = manifest.generated_s
        self.last_ok_s = time.time()
        if self.error or changed:
            self._log(f"manifest {cfg.manifest_url}: {len(manifest.files)} files, {len(titles)} titles: {', '.join(sorted(titles))[:300]}")
        self.error = ""

    def _failed(self, why: str) -> None:
        self.failures += 1
        if why != self.error:
            self._log(why + (" (the last good manifest stays)" if self.titles else ""))
        self.error = why[:500]

    async def _get(self, cfg: ContentConfig) -> bytes:
        limit = int(cfg.max_manifest_mb * 1_000_000)
        ssl_ctx = client_context(cfg.ca_file) if cfg.manifest_url.startswith("https://") else None
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(cfg.manifest_url, ssl=ssl_ctx if ssl_ctx is not None else True, max_redirects=3) as resp:
                if resp.status != 200:
                    raise ManifestError(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise ManifestError(f"{resp.content_length} bytes is over content.max_manifest_mb")
                out = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    out += chunk
                    if len(out) > limit:
                        raise ManifestError("over content.max_manifest_mb")
                return bytes(out)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.fetch_once()
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.refresh_s)
            except asyncio.TimeoutError:
                pass
