"""A small ABR ladder for the browser tests: real fMP4 files with a sidx, made with ffmpeg.

Each encode is one fragmented MP4 (ftyp, moov, one global sidx, then
moof+mdat pairs of `FRAGMENT_S` each), the layout Open Connect stores and
the on-demand DASH profile plays. The manifest entries carry the media
fields of the schema (`fill.manifest`), with the byte ranges read from the
files' own top-level boxes and sidx here, so the tests do not depend on
the fill side's parser.

Files are cached under the given directory, keyed by the generation
parameters, so a second run in the same directory encodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import xxhash

FRAGMENT_S = 2
FPS = 24


@dataclass(frozen=True)
class Encode:
    suffix: str  # file name after the title: "<title>.<suffix>"
    kind: str
    width: int = 0
    height: int = 0
    kbps: int = 0


LADDER = (
    Encode("144p.mp4", "video", 256, 144, 120),
    Encode("360p.mp4", "video", 640, 360, 700),
    Encode("720p.mp4", "video", 1280, 720, 2200),
    Encode("aac.mp4", "audio", kbps=64),
)


def _ffmpeg(e: Encode, seconds: int, index: int, out: Path) -> None:
    common = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y"]
    frag = ["-f", "mp4", "-movflags", "+frag_keyframe+empty_moov+default_base_moof+global_sidx"]
    if e.kind == "video":
        gop = str(FRAGMENT_S * FPS)
        args = common + ["-f", "lavfi", "-i", f"testsrc2=size={e.width}x{e.height}:rate={FPS}:duration={seconds}",
                         "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "main", "-pix_fmt", "yuv420p",
                         "-b:v", f"{e.kbps}k", "-maxrate", f"{e.kbps}k", "-bufsize", f"{e.kbps}k",
                         "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-an"] + frag + [str(out)]
    else:
        args = common + ["-f", "lavfi", "-i", f"sine=frequency={440 + 110 * index}:sample_rate=48000:duration={seconds}",
                         "-c:a", "aac", "-b:a", f"{e.kbps}k", "-ac", "2", "-frag_duration", str(FRAGMENT_S * 1_000_000)] + frag + [str(out)]
    subprocess.run(args, check=True, timeout=300)


def boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level (type, offset, size) of an MP4 file."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif size == 0:
            size = len(data) - pos
        out.append((kind, pos, size))
        pos += size
    return out


def media_fields(data: bytes, e: Encode) -> dict:
    top = boxes(data)
    kinds = [k for k, _, _ in top]
    moov = top[kinds.index(b"moov")]
    sidx_kind, sidx_at, sidx_size = top[kinds.index(b"sidx")]
    version = data[sidx_at + 8]
    p = sidx_at + 12 + 4  # box header, version+flags, reference_ID
    timescale = struct.unpack_from(">I", data, p)[0]
    p += 4
    if version == 0:
        _, first_offset = struct.unpack_from(">II", data, p)
        p += 8
    else:
        _, first_offset = struct.unpack_from(">QQ", data, p)
        p += 16
    count = struct.unpack_from(">H", data, p + 2)[0]
    p += 4
    segs, pos = [], sidx_at + sidx_size + first_offset
    for _ in range(count):
        ref, dur, _sap = struct.unpack_from(">III", data, p)
        p += 12
        size = ref & 0x7FFFFFFF
        segs.append([pos, pos + size - 1, round(dur / timescale, 6)])
        pos += size
    duration = round(sum(s[2] for s in segs), 6)
    peak = max(int((s[1] - s[0] + 1) * 8 / s[2]) for s in segs)
    out = {"kind": e.kind, "codecs": "avc1.4d401f" if e.kind == "video" else "mp4a.40.2", "bandwidth": peak,
           "duration_s": duration, "init_range": [0, moov[1] + moov[2] - 1], "index_range": [sidx_at, sidx_at + sidx_size - 1],
           "segments": segs}
    if e.kind == "video":
        out["width"], out["height"] = e.width, e.height
    return out


def make_title(cache: Path, title: str, seconds: int, index: int = 0) -> dict[str, Path]:
    """content id → file, every encode of LADDER for `title` (encoded once per parameter set)."""
    key = hashlib.sha256(json.dumps([title, seconds, index, FRAGMENT_S, FPS, [e.__dict__ for e in LADDER]]).encode()).hexdigest()[:12]
    folder = cache / f"{title}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for e in LADDER:
        path = folder / f"{title}.{e.suffix}"
        if not path.exists():
            tmp = path.with_suffix(".part.mp4")
            _ffmpeg(e, seconds, index, tmp)
            tmp.rename(path)
        out[path.name] = path
    return out


def manifest_entries(files: dict[str, Path], title: str, origin_base: str) -> list[dict]:
    by_suffix = {e.suffix: e for e in LADDER}
    entries = []
    for cid, path in files.items():
        data = path.read_bytes()
        e = by_suffix[cid[len(title) + 1:]]
        entry = {"id": cid, "size": len(data), "xxh128": xxhash.xxh3_128_hexdigest(data), "mtime": int(path.stat().st_mtime),
                 "popularity": 1.0, "sources": [f"{origin_base}/{cid}"], "title": title}
        entry.update(media_fields(data, e))
        entries.append(entry)
    return entries
