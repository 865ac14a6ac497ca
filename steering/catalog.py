"""Titles: which files of the origin's manifest form one playable title.

Nothing here performs I/O. Rules kept here:
- A title is the set of manifest files that name it (`title`) and carry
  media fields (`media`); files without either are not playable and are
  left out (they stay fetchable through /steer).
- A title plays when it has at least one video encode; audio is optional
  (a muxed or silent title). Encodes of one kind are listed by ascending
  bandwidth, then content id, so renderers are deterministic.
- A title's duration is its longest encode's.
- An appliance can serve a title when it holds every one of its files: a
  player switches encodes at will, and each switch must find its file on
  the same pathway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container, Iterable, Mapping

from fill.manifest import Manifest, ManifestFile


@dataclass(frozen=True, slots=True)
class Title:
    name: str
    duration_s: float
    video: tuple[ManifestFile, ...]  # ascending bandwidth
    audio: tuple[ManifestFile, ...]

    @property
    def files(self) -> tuple[ManifestFile, ...]:
        return self.video + self.audio

    def content_ids(self) -> frozenset[str]:
        return frozenset(f.content_id for f in self.files)

    def encode(self, content_id: str) -> ManifestFile | None:
        for f in self.files:
            if f.content_id == content_id:
                return f
        return None


def _by_bandwidth(f: ManifestFile) -> tuple:
    assert f.media is not None
    return (f.media.bandwidth, f.content_id)


def titles_of(manifest: Manifest) -> dict[str, Title]:
    """Title name → Title, for every title with at least one video encode."""
    grouped: dict[str, list[ManifestFile]] = {}
    for f in manifest.files:
        if f.title is not None and f.media is not None:
            grouped.setdefault(f.title, []).append(f)
    out = {}
    for name, files in sorted(grouped.items()):
        video = tuple(sorted((f for f in files if f.media.kind == "video"), key=_by_bandwidth))
        audio = tuple(sorted((f for f in files if f.media.kind == "audio"), key=_by_bandwidth))
        if not video:
            continue
        out[name] = Title(name, max(f.media.duration_s for f in files), video, audio)
    return out


def titles_held(titles: Mapping[str, Title], holdings: Iterable[str]) -> frozenset[str]:
    """The titles whose every file is in `holdings` (an appliance's inventory)."""
    # A set, or steering's bitmap holdings (`steering.holdings.Holdings`): anything that answers `in` is asked as it is.
    held = holdings if isinstance(holdings, Container) else frozenset(holdings)
    return frozenset(name for name, t in titles.items() if all(f.content_id in held for f in t.files))
