"""Building a manifest from a directory of files (`oca-fill manifest build`).

The shell beside `fill.manifest`, which stays pure: this module reads the
directory, hashes every file and reads popularity files. Rules kept here:
- Only regular files directly in the directory are listed (no links, no
  subdirectories); a file name that is not a valid content id is refused.
- What it writes is what `parse_manifest` accepts: popularity must be a
  finite number >= 0, and popularity for a file that is not there is refused.
- Media fields: a file that `fill.mp4` reads as one fragmented MP4 encode
  gains its media fields and a `title` (from `--titles`, else its name up to
  the first dot). Only its head (ftyp, moov, sidx) and the first bytes of
  each fragment are read for that. A file that does not parse keeps the plain
  fields and is reported through `on_skip` with the reason; it has a title
  only when `--titles` names one for it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping
from urllib.parse import quote

from fill.errors import ManifestError
from fill.manifest import FORMAT, VERSION, MediaInfo, check_url, is_number, json_object, media_fields
from fill.mp4 import MAX_HEAD_BYTES, Mp4Error, Mp4Truncated, check_fragments, media_info
from oca.checksum import hash_file
from oca.ids import is_valid_id


def read_popularity(path: str) -> dict[str, float]:
    """A JSON object {id: popularity}, or lines "id popularity" ('#' comments)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"{path}: not valid JSON: {exc}") from None
        out = {}
        for k, v in doc.items():
            # NaN and infinity refused here too (parse_manifest refuses them, so
            # build_manifest would otherwise emit a manifest no agent accepts).
            if not is_number(v) or not 0 <= v < float("inf"):
                raise ManifestError(f"{path}: popularity of {k!r} must be a finite number >= 0")
            out[k] = float(v)
        return out
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ManifestError(f"{path}:{lineno}: expected 'id popularity'")
        try:
            value = float(parts[1])
        except ValueError:
            raise ManifestError(f"{path}:{lineno}: {parts[1]!r} is not a number") from None
        if not 0 <= value < float("inf"):  # also NaN and inf, as parse_manifest does
            raise ManifestError(f"{path}:{lineno}: popularity must be a finite number >= 0")
        out[parts[0]] = value
    return out


# The first read of a file's head: ftyp+moov+sidx of any encode here is a few KB
# (a 2 h title of 2 s fragments has a 43 KB sidx); larger heads cost one more read.
HEAD_BYTES = 256 << 10


def read_titles(path: str) -> dict[str, str]:
    """A JSON object {id: title}; every title a content id."""
    with open(path, "rb") as fh:
        doc = json_object(fh.read(), path, ManifestError)
    for cid, title in doc.items():
        if not is_valid_id(title):
            raise ManifestError(f"{path}: title of {cid!r}: {str(title)[:60]!r} is not a valid title (content id syntax)")
    return doc


def default_title(name: str) -> str:
    """The file name up to its first dot: `sintel.1080p.mp4` -> `sintel`."""
    return name.split(".", 1)[0]


def probe_media(path: str) -> MediaInfo:
    """Media fields of one file, reading its head and each fragment's first bytes; `Mp4Error` says why not."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(HEAD_BYTES)
        while True:
            try:
                info = media_info(head, size)
                break
            except Mp4Truncated as exc:
                if len(head) >= size or exc.need_bytes <= len(head) or exc.need_bytes > MAX_HEAD_BYTES:
                    raise Mp4Error(f"{exc} (file of {size} bytes)") from None
                head += fh.read(exc.need_bytes - len(head))
        starts = [seg.first for seg in info.segments] + [info.segments[-1].last + 1]
        heads = {at: os.pread(fh.fileno(), 8, at) for at in starts if at < size}
    check_fragments(info, heads, size)
    return info


def build_manifest(
    directory: str,
    base_url: str,
    popularity: Mapping[str, float] | None = None,
    *,
    now_s: int | None = None,
    titles: Mapping[str, str] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> dict:
    """A manifest document for the files directly in `directory`.

    Files that parse as fMP4 encodes gain media fields and a title; the
    others are passed to `on_skip(name, reason)`.
    """
    if not os.path.isdir(directory):
        raise ManifestError(f"{directory}: not a directory")
    check_url(base_url, "--base-url")
    base = base_url if base_url.endswith("/") else base_url + "/"
    popularity = dict(popularity or {})
    titles = dict(titles or {})
    files = []
    names = sorted(os.listdir(directory))
    present = set()
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue  # subdirectories are not descended
        if not is_valid_id(name):
            raise ManifestError(f"{path}: file name {name!r} is not a valid content id")
        present.add(name)
        checksum, size = hash_file(path)
        files.append({
            "id": name,
            "size": size,
            "xxh128": checksum,
            "mtime": int(os.stat(path).st_mtime),
            "popularity": popularity.get(name, 0.0),
            "sources": [base + quote(name)],
        })
        try:
            media = media_fields(probe_media(path))
        except Mp4Error as exc:
            media = {}
            if on_skip is not None:
                on_skip(name, str(exc))
        if media or name in titles:
            files[-1]["title"] = titles.get(name) or default_title(name)
        files[-1].update(media)
    unknown = sorted(set(popularity) - present)
    if unknown:
        raise ManifestError(f"popularity given for files not in {directory}: {', '.join(unknown[:5])}")
    unknown = sorted(set(titles) - present)
    if unknown:
        raise ManifestError(f"--titles names files not in {directory}: {', '.join(unknown[:5])}")
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "files": files}
    if now_s is not None:
        doc["generated_s"] = now_s
    return doc
