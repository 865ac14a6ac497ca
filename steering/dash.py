"""The DASH MPD of one title, for one client (ISO/IEC 23009-1, on-demand profile).

Nothing here performs I/O. Rules kept here:
- A static MPD: one Period, one AdaptationSet per kind (video, then audio),
  one Representation per encode, ascending bandwidth. Each Representation
  addresses its one file with `SegmentBase` (`indexRange` = the sidx box,
  `Initialization` = ftyp+moov), as the on-demand profile has it: the
  player reads the sidx and fetches fragments by byte range.
- Per Representation, one `BaseURL` per pathway (appliance) in the order
  given, each the file's signed URL on that appliance, with
  `serviceLocation` = the appliance id: the names the steering answer's
  PATHWAY-PRIORITY uses.
- `<ContentSteering>` carries the absolute URL of the steering answer for
  this session, `defaultServiceLocation` = the first pathway, and
  `queryBeforeStart="true"`: dash.js 5.2 never fails over its sidx request,
  so it must ask before the first request which pathways are alive now
  rather than trust the MPD's order.
- `SegmentBase` rather than `SegmentList`: the players tested (dash.js
  5.2.1) fail over fragment requests under either, and SegmentBase keeps
  the MPD a few hundred bytes per encode where a list would grow with the
  title's length.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Mapping, Sequence

from steering.catalog import Title

MPD_NS = "urn:mpeg:dash:schema:mpd:2011"
PROFILE = "urn:mpeg:dash:profile:isoff-on-demand:2011"
MIN_BUFFER_S = 2.0  # the longest fragment the demo's encoder writes; players buffer more (see the player page)


def iso_duration(seconds: float) -> str:
    """xs:duration for a non-negative number of seconds, millisecond precision (PT1M2.500S)."""
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    out = "PT"
    if hours:
        out += f"{hours}H"
    if minutes:
        out += f"{minutes}M"
    return out + f"{ms / 1000:.3f}S"


def _range(r: tuple[int, int]) -> str:
    return f"{r[0]}-{r[1]}"


def render_mpd(title: Title, pathways: Sequence[str], urls: Mapping[str, Mapping[str, str]], steering_url: str) -> str:
    """The MPD text. `pathways`: appliance ids, best first (at least one);
    `urls[appliance][content_id]`: the signed URL of that file there."""
    if not pathways:
        raise ValueError("pathways: at least one appliance is needed")
    mpd = ET.Element("MPD", {
        "xmlns": MPD_NS, "profiles": PROFILE, "type": "static",
        "mediaPresentationDuration": iso_duration(title.duration_s), "minBufferTime": iso_duration(MIN_BUFFER_S),
    })
    steering = ET.SubElement(mpd, "ContentSteering", {"defaultServiceLocation": pathways[0], "queryBeforeStart": "true"})
    steering.text = steering_url
    period = ET.SubElement(mpd, "Period", {"id": "0", "start": "PT0S", "duration": iso_duration(title.duration_s)})
    for set_id, (kind, encodes) in enumerate((("video", title.video), ("audio", title.audio))):
        if not encodes:
            continue
        attrs = {"id": str(set_id), "contentType": kind, "mimeType": f"{kind}/mp4", "segmentAlignment": "true",
                 "subsegmentAlignment": "true", "subsegmentStartsWithSAP": "1", "startWithSAP": "1"}
        if kind == "video":
            attrs["maxWidth"] = str(max(f.media.width or 0 for f in encodes))
            attrs["maxHeight"] = str(max(f.media.height or 0 for f in encodes))
        else:
            attrs["lang"] = "und"
        aset = ET.SubElement(period, "AdaptationSet", attrs)
        for f in encodes:
            m = f.media
            rep_attrs = {"id": f.content_id, "bandwidth": str(m.bandwidth), "codecs": m.codecs}
            if kind == "video":
                rep_attrs["width"] = str(m.width)
                rep_attrs["height"] = str(m.height)
            rep = ET.SubElement(aset, "Representation", rep_attrs)
            for aid in pathways:
                base = ET.SubElement(rep, "BaseURL", {"serviceLocation": aid})
                base.text = urls[aid][f.content_id]
            seg = ET.SubElement(rep, "SegmentBase", {"indexRange": _range(m.index_range), "indexRangeExact": "true"})
            ET.SubElement(seg, "Initialization", {"range": _range(m.init_range)})
    # Tags are written unqualified under a default namespace declared as a
    # plain attribute: the form every player and the schema expect.
    body = ET.tostring(mpd, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
