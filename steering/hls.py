"""The HLS playlists of one title (RFC 8216, with Apple's Content Steering).

Nothing here performs I/O. Rules kept here:
- The multivariant playlist names the steering answer
  (`#EXT-X-CONTENT-STEERING:SERVER-URI=...,PATHWAY-ID=<first pathway>`) and
  lists, for each pathway (appliance) in the order given, one variant per
  video encode (ascending bandwidth) tagged `PATHWAY-ID`, and the audio
  renditions in a group of that pathway's own (`GROUP-ID="audio-<id>"`):
  a player that leaves a pathway leaves its audio too.
- A variant's BANDWIDTH is its video's plus the highest audio bandwidth
  (the peak of what the variant can need); CODECS lists both.
- A media playlist addresses one file on one appliance: `#EXT-X-MAP` with
  the init segment's BYTERANGE, then one `#EXTINF` + `#EXT-X-BYTERANGE`
  per fragment, every URI the file's signed URL. VOD, so `#EXT-X-ENDLIST`.
- URIs given in and written out are never altered; quoted attribute values
  must not contain a double quote or a line break (RFC 8216 4.2), which
  is checked rather than escaped.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from steering.catalog import Title

VERSION = 7  # EXT-X-MAP in a playlist without I-frames-only needs 6; 7 is what players expect with fMP4


def _quoted(value: str, what: str) -> str:
    if '"' in value or "\n" in value or "\r" in value:
        raise ValueError(f"{what}: {value[:60]!r} cannot be a quoted-string (RFC 8216 4.2)")
    return f'"{value}"'


def _byterange(first: int, last: int) -> str:
    return f"{last - first + 1}@{first}"


def render_multivariant(title: Title, pathways: Sequence[str], media_uri: Mapping[str, Mapping[str, str]], steering_url: str) -> str:
    """`pathways`: appliance ids, best first; `media_uri[appliance][content_id]`: that media playlist's URI."""
    if not pathways:
        raise ValueError("pathways: at least one appliance is needed")
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS",
             f"#EXT-X-CONTENT-STEERING:SERVER-URI={_quoted(steering_url, 'SERVER-URI')},PATHWAY-ID={_quoted(pathways[0], 'PATHWAY-ID')}"]
    audio_bw = max((f.media.bandwidth for f in title.audio), default=0)
    audio_codecs = title.audio[-1].media.codecs if title.audio else None
    for aid in pathways:
        group = f"audio-{aid}"
        for i, a in enumerate(title.audio):
            lines.append(
                f"#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID={_quoted(group, 'GROUP-ID')},NAME={_quoted(a.content_id, 'NAME')},"
                f"DEFAULT={'YES' if i == len(title.audio) - 1 else 'NO'},AUTOSELECT=YES,"
                f"URI={_quoted(media_uri[aid][a.content_id], 'URI')}")
        for v in title.video:
            m = v.media
            codecs = m.codecs + (f",{audio_codecs}" if audio_codecs else "")
            attrs = [f"BANDWIDTH={m.bandwidth + audio_bw}", f"CODECS={_quoted(codecs, 'CODECS')}",
                     f"RESOLUTION={m.width}x{m.height}"]
            if title.audio:
                attrs.append(f"AUDIO={_quoted(group, 'AUDIO')}")
            attrs.append(f"PATHWAY-ID={_quoted(aid, 'PATHWAY-ID')}")
            lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
            lines.append(media_uri[aid][v.content_id])
    return "\n".join(lines) + "\n"


def render_media(title: Title, content_id: str, url: str) -> str:
    """The media playlist of one encode, every URI `url` (the file's signed URL on one appliance)."""
    f = title.encode(content_id)
    if f is None:
        raise KeyError(content_id)
    m = f.media
    target = max(1, math.ceil(max((s.duration_s for s in m.segments), default=1.0)))
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}", f"#EXT-X-TARGETDURATION:{target}", "#EXT-X-PLAYLIST-TYPE:VOD",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-INDEPENDENT-SEGMENTS",
             f"#EXT-X-MAP:URI={_quoted(url, 'URI')},BYTERANGE=\"{_byterange(*m.init_range)}\""]
    for s in m.segments:
        lines.append(f"#EXTINF:{s.duration_s:.3f},")
        lines.append(f"#EXT-X-BYTERANGE:{_byterange(s.first, s.last)}")
        lines.append(url)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
