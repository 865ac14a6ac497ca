"""The browser tests' title: the demo's ABR ladder maker at small sizes, described with fill.mp4.

`oca.demo.make_ladder` encodes one title in one ffmpeg run (three H.264
rungs at low resolution, one AAC encode; each one fragmented MP4 with a
sidx in front, 2 s fragments) and caches it by its parameters, so a second
run on the machine encodes nothing. The manifest entries carry the media
fields as `oca-fill manifest build` writes them, read by the same parser
(`fill.mp4.media_info`).
"""

from __future__ import annotations

from pathlib import Path

import xxhash

from fill.mp4 import media_info
from oca.demo import FRAGMENT_S, SMALL_RUNGS, make_ladder

__all__ = ["FRAGMENT_S", "make_title", "manifest_entries", "RUNGS"]
RUNGS = SMALL_RUNGS


def make_title(cache: Path, directory: Path, title: str, seconds: int) -> dict[str, Path]:
    """content id → file, every encode of the ladder (video rungs, then audio)."""
    return {p.name: p for p in make_ladder(directory, title, seconds, RUNGS, cache=cache)}


def manifest_entries(files: dict[str, Path], title: str, origin_base: str) -> list[dict]:
    entries = []
    for cid, path in files.items():
        data = path.read_bytes()
        m = media_info(data[: 1 << 20], len(data))
        entry = {"id": cid, "size": len(data), "xxh128": xxhash.xxh3_128_hexdigest(data), "mtime": int(path.stat().st_mtime),
                 "popularity": 1.0, "sources": [f"{origin_base}/{cid}"], "title": title, "kind": m.kind, "codecs": m.codecs,
                 "bandwidth": m.bandwidth, "duration_s": m.duration_s, "init_range": list(m.init_range),
                 "index_range": list(m.index_range), "segments": [[s.first, s.last, s.duration_s] for s in m.segments]}
        if m.kind == "video":
            entry["width"], entry["height"] = m.width, m.height
        entries.append(entry)
    return entries
