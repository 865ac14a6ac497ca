"""Building a manifest from a directory of files (`oca-fill manifest build`).

The shell beside `fill.manifest`, which stays pure: this module reads the
directory, hashes every file and reads popularity files. Rules kept here:
- Only regular files directly in the directory are listed (no links, no
  subdirectories); a file name that is not a valid content id is refused.
- What it writes is what `parse_manifest` accepts: popularity must be a
  finite number >= 0, and popularity for a file that is not there is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping
from urllib.parse import quote

from fill.errors import ManifestError
from fill.manifest import FORMAT, VERSION, check_url, is_number
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


def build_manifest(directory: str, base_url: str, popularity: Mapping[str, float] | None = None, *, now_s: int | None = None) -> dict:
    """A manifest document for the files directly in `directory`."""
    if not os.path.isdir(directory):
        raise ManifestError(f"{directory}: not a directory")
    check_url(base_url, "--base-url")
    base = base_url if base_url.endswith("/") else base_url + "/"
    popularity = dict(popularity or {})
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
    unknown = sorted(set(popularity) - present)
    if unknown:
        raise ManifestError(f"popularity given for files not in {directory}: {', '.join(unknown[:5])}")
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "files": files}
    if now_s is not None:
        doc["generated_s"] = now_s
    return doc
