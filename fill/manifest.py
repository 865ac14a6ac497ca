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
         "sources": ["https://origin/title.1080p.mp4"],   one or more http(s) URLs
         "forecast": "title",                         optional: "title" (default), the popularity is
                                                      about this file; "class": the mean of earlier
                                                      releases of its class, which says little of it
         "title": "title",                            optional: which files form one title (a content id)
         "kind": "video",                             optional media fields, all or none:
         "codecs": "avc1.64001f",                       RFC 6381 codecs string
         "bandwidth": 2400000,                          peak bits/s over any one fragment
         "width": 1920, "height": 1080,                 video only, required for video
         "duration_s": 60.0,                            seconds, > 0
         "init_range": [0, 1234],                       inclusive bytes of ftyp+moov
         "index_range": [1235, 1398],                   inclusive bytes of the sidx box
         "segments": [[1399, 90122, 2.0], ...]}         per fragment (moof+mdat): first, last, seconds
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
- Media fields (`kind` .. `segments`) come all together or not at all:
  kind, codecs, bandwidth, duration_s, init_range, index_range and segments
  are required once any is present, width and height exactly when the kind
  is video. Byte ranges are inclusive (as in HTTP Range) and inside the
  file; init, index and segments do not overlap; segments are in order,
  contiguous, and come after the init segment and the index. `title` may
  stand alone. A manifest without them parses as before (title and media
  None). `codecs` is refused if it holds anything beyond RFC 6381's
  characters, since players' manifests quote it into XML and HLS attributes.
- The signature is HMAC-SHA256 (base64url, no padding) over the canonical
  JSON of the document without its `signature` field (sorted keys, no
  spaces, ASCII), made with a key of the `[signing]` table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from fill.errors import FillError, ManifestError
from oca.ids import is_valid_id

FORMAT = "oca-manifest"
VERSION = 1
_FILE_KEYS = {"id", "size", "xxh128", "mtime", "popularity", "sources"}
_MEDIA_KEYS = ("kind", "codecs", "bandwidth", "width", "height", "duration_s", "init_range", "index_range", "segments")
_OPTIONAL_FILE_KEYS = {"title", "forecast", *_MEDIA_KEYS}
KINDS = ("video", "audio")
FORECASTS = ("title", "class")
_TOP_KEYS = {"format", "version", "generated_s", "files", "sites", "signature"}
_APPLIANCE_KEYS = {"id", "url", "weight"}


# Bounds that no real file reaches and that keep arithmetic on them exact.
MAX_FILE_BYTES = 1 << 50  # 1 PiB
MAX_UNIX_S = 1 << 40  # year 36812
# Media bounds: far past any real encode, small enough that a hostile
# manifest cannot make steering build a huge playlist. 2**20 fragments is
# 24 days of 2 s fragments; 16 bits is what tkhd's 16.16 width/height hold.
MAX_SEGMENTS = 1 << 20
MAX_DIMENSION = 65535
MAX_BANDWIDTH_BPS = 1 << 40
MAX_DURATION_S = 1e9
MAX_CODECS_CHARS = 128
# RFC 6381 section 3.2: a comma-separated list of dotted codec ids (letters, digits, '.', '-', '_', '+').
_CODECS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(, ?[A-Za-z0-9][A-Za-z0-9._+-]*)*")
# A manifest dated this far past our clock is refused: accepted, it would make
# every honest manifest look older than it until the clock caught up.
MAX_FUTURE_S = 3600


@dataclass(frozen=True, slots=True)
class Segment:
    """One fragment (moof+mdat): inclusive byte range and its duration."""

    first: int
    last: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What a player's manifest needs to know of one encode (one fMP4 file with a sidx)."""

    kind: str  # "video" or "audio"
    codecs: str  # RFC 6381, e.g. "avc1.64001f", "mp4a.40.2"
    bandwidth: int  # bits/s, peak over any one fragment
    width: int | None  # video only
    height: int | None
    duration_s: float
    init_range: tuple[int, int]  # inclusive, ftyp+moov
    index_range: tuple[int, int]  # inclusive, the sidx box
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class ManifestFile:
    content_id: str
    size: int
    checksum: str
    mtime_s: int
    popularity: float
    sources: tuple[str, ...]
    title: str | None = None
    media: MediaInfo | None = None
    forecast: str = "title"  # "class": the popularity is a class mean (the agent reserves budget for the passes)


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
    title = item.get("title")
    if title is not None and not is_valid_id(title):
        raise ManifestError(f"{where}.title: {str(title)[:60]!r} is not a valid title (content id syntax)")
    media = _parse_media(item, where, size) if any(k in item for k in _MEDIA_KEYS) else None
    forecast = item.get("forecast", "title")
    if forecast not in FORECASTS:
        raise ManifestError(f"{where}.forecast: must be one of {', '.join(map(repr, FORECASTS))}")
    return ManifestFile(cid, size, checksum, mtime, float(pop), urls, title, media, forecast)


def _parse_media(item: Mapping[str, Any], where: str, size: int) -> MediaInfo:
    kind = item.get("kind")
    if kind not in KINDS:
        raise ManifestError(f"{where}.kind: must be one of {', '.join(KINDS)} when media fields are given")
    for key in ("codecs", "bandwidth", "duration_s", "init_range", "index_range", "segments"):
        if key not in item:
            raise ManifestError(f"{where}.{key}: required with the other media fields")
    codecs = item["codecs"]
    if not isinstance(codecs, str) or len(codecs) > MAX_CODECS_CHARS or not _CODECS_RE.fullmatch(codecs):
        raise ManifestError(f"{where}.codecs: must be an RFC 6381 codecs string such as 'avc1.64001f'")
    bandwidth = item["bandwidth"]
    if not is_int(bandwidth) or not 0 < bandwidth <= MAX_BANDWIDTH_BPS:
        raise ManifestError(f"{where}.bandwidth: must be an integer of bits/s from 1 to {MAX_BANDWIDTH_BPS}")
    width = height = None
    if kind == "video":
        width = _dimension(item, "width", where)
        height = _dimension(item, "height", where)
    else:
        for key in ("width", "height"):
            if key in item:
                raise ManifestError(f"{where}.{key}: only video has a {key}")
    duration = _seconds(item["duration_s"], f"{where}.duration_s")
    init = _byte_range(item["init_range"], f"{where}.init_range", size)
    index = _byte_range(item["index_range"], f"{where}.index_range", size)
    if init[0] <= index[1] and index[0] <= init[1]:
        raise ManifestError(f"{where}.index_range: overlaps init_range")
    raw = item["segments"]
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{where}.segments: must be a non-empty list of [first, last, duration_s]")
    if len(raw) > MAX_SEGMENTS:
        raise ManifestError(f"{where}.segments: {len(raw)} fragments; the limit is {MAX_SEGMENTS}")
    segments = []
    expect = max(init[1], index[1]) + 1  # the first fragment starts at or after this byte; each next one exactly here
    for k, seg in enumerate(raw):
        # The common case in one expression (a long title has thousands of
        # fragments, and steering re-reads the manifest); anything it does not
        # accept goes through the checks below, which name the fault.
        if (
            k
            and type(seg) is list
            and len(seg) == 3
            and type(seg[0]) is int
            and type(seg[1]) is int
            and seg[0] == expect
            and seg[0] <= seg[1] < size
            and type(seg[2]) in (int, float)
            and 0 < seg[2] <= MAX_DURATION_S
        ):
            segments.append(Segment(seg[0], seg[1], float(seg[2])))
            expect = seg[1] + 1
            continue
        w = f"{where}.segments[{k}]"
        if not isinstance(seg, list) or len(seg) != 3:
            raise ManifestError(f"{w}: must be [first, last, duration_s]")
        first, last = _byte_range(seg[:2], w, size)
        if k == 0:
            if first < expect:
                raise ManifestError(f"{w}: starts at byte {first}, inside the init segment or the index")
        elif first != expect:
            raise ManifestError(f"{w}: starts at byte {first}; fragments are contiguous, so it must start at {expect}")
        expect = last + 1
        segments.append(Segment(first, last, _seconds(seg[2], f"{w}[2] (duration_s)")))
    return MediaInfo(kind, codecs, bandwidth, width, height, duration, init, index, tuple(segments))


def _dimension(item: Mapping[str, Any], key: str, where: str) -> int:
    value = item.get(key)
    if value is None:
        raise ManifestError(f"{where}.{key}: required for video")
    if not is_int(value) or not 0 < value <= MAX_DIMENSION:
        raise ManifestError(f"{where}.{key}: must be an integer of pixels from 1 to {MAX_DIMENSION}")
    return value


def _seconds(value: Any, where: str) -> float:
    if not is_number(value) or not 0 < value <= MAX_DURATION_S:  # also NaN and inf
        raise ManifestError(f"{where}: must be a number of seconds > 0")
    return float(value)


def _byte_range(value: Any, where: str, size: int) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(is_int(v) for v in value):
        raise ManifestError(f"{where}: must be [first, last], inclusive byte offsets")
    first, last = value
    if not 0 <= first <= last < size:
        raise ManifestError(f"{where}: [{first}, {last}] is not a byte range inside the file's {size} bytes")
    return first, last


def media_fields(media: MediaInfo) -> dict[str, Any]:
    """The manifest's JSON fields for `media`, as `_parse_media` reads them back."""
    out: dict[str, Any] = {"kind": media.kind, "codecs": media.codecs, "bandwidth": media.bandwidth}
    if media.width is not None:
        out["width"] = media.width
        out["height"] = media.height
    out["duration_s"] = media.duration_s
    out["init_range"] = list(media.init_range)
    out["index_range"] = list(media.index_range)
    out["segments"] = [[s.first, s.last, s.duration_s] for s in media.segments]
    return out


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
