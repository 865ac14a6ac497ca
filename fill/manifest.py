"""The manifest: what a content provider or control plane says to hold.

This module is the one definition of the schema (README shows it). Nothing
here performs I/O: `fill.manifest_build` reads directories and hashes files.

    {
      "format": "oca-manifest",
      "version": 1,
      "generated_s": 1795677000,                      optional, unix seconds
      "files": [
        {"id": "title.1080p.mp4",                     a content id
         "size": 123456789,                           bytes
         "xxh128": "0123...cdef",                     xxh3-128, 32 lowercase hex digits
         "mtime": 1795600000,                         origin modification time, unix seconds
         "popularity": 4.2e9,                         predicted bytes served per day, >= 0
         "forecast": "title",                         optional: "title" (default), the popularity
                                                      is about this file; "kind": the mean of earlier
                                                      releases of its kind, which says little of it
         "sources": ["https://origin/title.1080p.mp4"]}   one or more http(s) URLs
      ],
      "sites": {                                      optional: the appliances of each site
        "site-a": [{"id": "oca-1", "url": "http://10.0.0.1", "weight": 1.0}]
      },
      "signature": {"key_id": "k1", "hmac": "..."}    optional
    }

Rules kept here:
- A malformed manifest is refused whole: `ManifestError` names the entry
  and field (``files[3].xxh128: must be 32 lowercase hex digits``). Unknown
  fields are refused too, so a typo never silently drops data.
- Content ids are unique; appliance ids are unique in each site.
- The signature is HMAC-SHA256 (base64url, no padding) over the canonical
  JSON of the document without its `signature` field (sorted keys, no
  spaces, ASCII), made with a key of the `[signing]` table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from fill.errors import FillError, ManifestError
from oca.ids import is_valid_id

FORMAT = "oca-manifest"
VERSION = 1
_FILE_KEYS = {"id", "size", "xxh128", "mtime", "popularity", "sources"}
_OPTIONAL_FILE_KEYS = {"forecast"}
FORECASTS = ("title", "kind")
_TOP_KEYS = {"format", "version", "generated_s", "files", "sites", "signature"}
_APPLIANCE_KEYS = {"id", "url", "weight"}


# Bounds that no real file reaches and that keep arithmetic on them exact.
MAX_FILE_BYTES = 1 << 50  # 1 PiB
MAX_UNIX_S = 1 << 40  # year 36812
# A manifest dated this far past our clock is refused: accepted, it would make
# every honest manifest look older than it until the clock caught up.
MAX_FUTURE_S = 3600


@dataclass(frozen=True, slots=True)
class ManifestFile:
    content_id: str
    size: int
    checksum: str
    mtime_s: int
    popularity: float
    sources: tuple[str, ...]
    forecast: str = "title"  # "kind": the popularity is a class mean (the agent reserves budget for the passes)


@dataclass(frozen=True, slots=True)
class SiteAppliance:
    appliance_id: str
    url: str
    weight: float


@dataclass(frozen=True, slots=True)
class Manifest:
    version: int
    files: tuple[ManifestFile, ...]
    sites: Mapping[str, tuple[SiteAppliance, ...]]
    generated_s: int | None = None
    signed_by: str | None = None

    def by_id(self) -> dict[str, ManifestFile]:
        return {f.content_id: f for f in self.files}


def canonical_bytes(doc: Mapping[str, Any]) -> bytes:
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signature_for(doc: Mapping[str, Any], secret: bytes) -> str:
    mac = hmac.new(secret, canonical_bytes(doc), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def sign(doc: dict, key_id: str, secret: bytes) -> dict:
    out = {k: v for k, v in doc.items() if k != "signature"}
    out["signature"] = {"key_id": key_id, "hmac": signature_for(out, secret)}
    return out


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_url(url: Any, where: str) -> str:
    if not isinstance(url, str):
        raise ManifestError(f"{where}: must be a URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ManifestError(f"{where}: {url[:80]!r} is not an http(s) URL")
    return url


def json_object(raw: bytes | str, what: str, error: type[FillError]) -> dict:
    """A JSON object from another machine, or `error` naming `what` (also for deep nesting and bad UTF-8)."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise error(f"{what} is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{what}: must be a JSON object")
    return doc


def parse_manifest(raw: bytes | str, *, keys: Mapping[str, bytes] | None = None, require_signature: bool = False) -> Manifest:
    """Validate a manifest document; raise `ManifestError` naming the bad field."""
    doc = json_object(raw, "manifest", ManifestError)
    for key in doc:
        if key not in _TOP_KEYS:
            raise ManifestError(f"{key}: unknown field (known: {', '.join(sorted(_TOP_KEYS))})")
    if doc.get("format") != FORMAT:
        raise ManifestError(f"format: must be {FORMAT!r}")
    version = doc.get("version")
    if not is_int(version):
        raise ManifestError("version: must be an integer")
    if version > VERSION or version < 1:
        raise ManifestError(f"version: {version} is not supported (this agent reads version {VERSION})")
    generated = doc.get("generated_s")
    if generated is not None and (not is_int(generated) or not 0 <= generated <= MAX_UNIX_S):
        raise ManifestError("generated_s: must be a non-negative integer (unix seconds)")
    signed_by = _check_signature(doc, keys or {}, require_signature)
    files_raw = doc.get("files")
    if not isinstance(files_raw, list):
        raise ManifestError("files: must be a list")
    files = []
    seen: set[str] = set()
    for i, item in enumerate(files_raw):
        files.append(_parse_file(item, f"files[{i}]", seen))
    sites: dict[str, tuple[SiteAppliance, ...]] = {}
    sites_raw = doc.get("sites", {})
    if not isinstance(sites_raw, dict):
        raise ManifestError("sites: must be an object of site name → list of appliances")
    for site, members in sites_raw.items():
        where = f"sites.{site}"
        if not is_valid_id(site):
            raise ManifestError(f"{where}: {site!r} is not a valid site name")
        if not isinstance(members, list) or not members:
            raise ManifestError(f"{where}: must be a non-empty list of appliances")
        ids: set[str] = set()
        out = []
        for j, m in enumerate(members):
            w = f"{where}[{j}]"
            if not isinstance(m, dict):
                raise ManifestError(f"{w}: must be an object")
            for key in m:
                if key not in _APPLIANCE_KEYS:
                    raise ManifestError(f"{w}.{key}: unknown field")
            aid = m.get("id")
            if not is_valid_id(aid):
                raise ManifestError(f"{w}.id: must be a valid appliance id")
            if aid in ids:
                raise ManifestError(f"{w}.id: {aid!r} is listed twice in the site")
            ids.add(aid)
            url = check_url(m.get("url"), f"{w}.url")
            weight = m.get("weight", 1.0)
            # Finite too: an infinite weight (JSON "Infinity") would take every file.
            if not is_number(weight) or not 0 < weight < float("inf"):
                raise ManifestError(f"{w}.weight: must be a number greater than 0")
            out.append(SiteAppliance(aid, url.rstrip("/"), float(weight)))
        sites[site] = tuple(out)
    return Manifest(version, tuple(files), sites, generated, signed_by)


def _parse_file(item: Any, where: str, seen: set[str]) -> ManifestFile:
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: must be an object")
    for key in item:
        if key not in _FILE_KEYS and key not in _OPTIONAL_FILE_KEYS:
            raise ManifestError(f"{where}.{key}: unknown field")
    for key in sorted(_FILE_KEYS):
        if key not in item:
            raise ManifestError(f"{where}.{key}: required field is missing")
    cid = item["id"]
    if not is_valid_id(cid):
        raise ManifestError(f"{where}.id: {str(cid)[:60]!r} is not a valid content id")
    if cid in seen:
        raise ManifestError(f"{where}.id: {cid!r} is listed twice")
    seen.add(cid)
    where = f"{where} ({cid})"
    size = item["size"]
    if not is_int(size) or not 0 <= size <= MAX_FILE_BYTES:
        raise ManifestError(f"{where}.size: must be an integer from 0 to {MAX_FILE_BYTES}")
    checksum = item["xxh128"]
    if not isinstance(checksum, str) or len(checksum) != 32 or any(c not in "0123456789abcdef" for c in checksum):
        raise ManifestError(f"{where}.xxh128: must be 32 lowercase hex digits")
    mtime = item["mtime"]
    if not is_int(mtime) or not 0 <= mtime <= MAX_UNIX_S:
        raise ManifestError(f"{where}.mtime: must be a non-negative integer (unix seconds)")
    pop = item["popularity"]
    if not is_number(pop) or pop < 0 or pop != pop or pop == float("inf"):
        raise ManifestError(f"{where}.popularity: must be a finite number >= 0")
    sources = item["sources"]
    if not isinstance(sources, list) or not sources:
        raise ManifestError(f"{where}.sources: must be a non-empty list of URLs")
    urls = tuple(check_url(u, f"{where}.sources[{k}]") for k, u in enumerate(sources))
    forecast = item.get("forecast", "title")
    if forecast not in FORECASTS:
        raise ManifestError(f"{where}.forecast: must be one of {', '.join(map(repr, FORECASTS))}")
    return ManifestFile(cid, size, checksum, mtime, float(pop), urls, forecast)


def check_fresh(generated_s: int | None, newest_accepted_s: int | None, now_s: float, max_age_s: float) -> None:
    """Refuse a replayed or stale manifest; `ManifestError` names `generated_s`.

    A manifest must carry `generated_s`; it may be as old as the newest one
    accepted before (the same manifest fetched again) but not older (a
    rollback), no older than `max_age_s`, and no more than MAX_FUTURE_S ahead
    of `now_s`.
    """
    if generated_s is None:
        raise ManifestError("generated_s: required, so that an old manifest cannot be replayed")
    age_s = now_s - generated_s
    if age_s > max_age_s:
        raise ManifestError(f"generated_s: the manifest is {age_s / 3600:.1f} h old (limit {max_age_s / 3600:g} h)")
    if newest_accepted_s is not None and generated_s < newest_accepted_s:
        raise ManifestError(
            f"generated_s: {generated_s} is older than the newest manifest accepted ({newest_accepted_s}); replayed?"
        )
    if -age_s > MAX_FUTURE_S:
        raise ManifestError(f"generated_s: {generated_s} is {-age_s:.0f} s in the future (limit {MAX_FUTURE_S} s)")


def _check_signature(doc: dict, keys: Mapping[str, bytes], required: bool) -> str | None:
    sig = doc.get("signature")
    if sig is None:
        if required:
            raise ManifestError("signature: the manifest is not signed, and fill.require_signed_manifest is in force")
        return None
    if not isinstance(sig, dict) or set(sig) != {"key_id", "hmac"} or not all(isinstance(v, str) for v in sig.values()):
        raise ManifestError("signature: must be {\"key_id\": ..., \"hmac\": ...}")
    secret = keys.get(sig["key_id"])
    if secret is None:
        if required:
            raise ManifestError(f"signature.key_id: {sig['key_id']!r} is not one of signing.keys")
        return None
    if not hmac.compare_digest(signature_for(doc, secret), sig["hmac"]):
        raise ManifestError(f"signature.hmac: does not match the manifest (key {sig['key_id']!r}); altered or truncated?")
    return sig["key_id"]
