"""A small MP4 (ISO/IEC 14496-12) box parser: what a player's manifest needs of one encode.

Bytes in, values out; nothing here performs I/O. `fill.manifest_build` reads
the head of a file (ftyp, moov, sidx) and hands it here, then reads the first
bytes of every fragment the sidx names and hands them to `check_fragments`.

Rules kept here:
- One encode is one fragmented MP4 with one track and one `sidx` in front of
  its fragments: ftyp, moov (with mvex), sidx, then moof+mdat pairs (an mfra
  or free box may follow). Anything else raises `Mp4Error` saying why: a
  progressive (faststart) MP4 is "not fragmented", a fragmented one without
  a sidx has "no sidx".
- Every size is checked before it is used: a box is at least its header,
  never runs past its parent (or the file), 64-bit sizes (size 1) are read,
  size 0 ("to the end of the file") is refused since no encode here uses it,
  and counts are checked against the bytes that hold them, so a hostile file
  costs at most one pass over the bytes given.
- When the head given is too short to hold the boxes it must hold,
  `Mp4Truncated` (an `Mp4Error`) says how many bytes from the start would do;
  the caller may read that much and ask again.
- `bandwidth` is the PEAK over fragments of bytes * 8 / duration (rounded
  up), as DASH @bandwidth and HLS BANDWIDTH mean it (the rate that plays
  every fragment without stalling), not the average.
- `width` and `height` are the track's display size (tkhd), what DASH
  @width/@height and HLS RESOLUTION mean.
- `duration_s` is the sum of the sidx's subsegment durations: what a player
  can fetch and play (empty_moov files carry no duration in moov).
- Codec strings follow RFC 6381: `avc1.PPCCLL` from the avcC box (profile,
  compatibility flags, level, in hex), `mp4a.OO.A` from the esds (object type
  in hex, audio object type in decimal).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from fill.errors import FillError
from fill.manifest import MediaInfo, Segment

# Containers walked into, and the children that matter in each.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"edts", b"dinf"}
# Past any real encode's moov+sidx (a 24 h title of 2 s fragments has a 520 KB
# sidx); a file asking for more is refused rather than read into memory.
MAX_HEAD_BYTES = 64 << 20
# Boxes allowed between the end of one fragment and the next, or after the last.
_FRAGMENT_STARTS = {b"moof", b"styp", b"emsg", b"prft"}
_TRAILERS = {b"mfra", b"free", b"skip", b"udta", b"meta"}
_MAX_DEPTH = 8
_NOT_FRAGMENTED = "not fragmented (a progressive MP4, e.g. faststart; remux with -movflags +frag_keyframe+empty_moov+global_sidx)"


class Mp4Error(FillError):
    """The bytes are not one fragmented MP4 encode with a sidx; the message says why."""


class Mp4Truncated(Mp4Error):
    """The head given ends before a box it must hold; `need_bytes` from the start would do."""

    def __init__(self, message: str, need_bytes: int):
        super().__init__(message)
        self.need_bytes = need_bytes


@dataclass(frozen=True, slots=True)
class Box:
    type: bytes
    offset: int  # of the box's first byte
    size: int  # whole box, header included
    header: int  # 8, or 16 with a 64-bit size

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def body(self) -> int:
        return self.offset + self.header


def _name(t: bytes) -> str:
    return t.decode("latin-1").encode("unicode_escape").decode("ascii")


def read_box(data: bytes, offset: int, limit: int, where: str) -> Box:
    """The box whose header starts at `offset`; it must end by `limit` (its parent's end or the file size)."""
    if offset + 8 > limit:
        raise Mp4Error(f"{where}: {limit - offset} bytes left at offset {offset}, less than a box header")
    if offset + 8 > len(data):
        raise Mp4Truncated(f"{where}: box header at offset {offset} is past the bytes read", offset + 16)
    size, btype = struct.unpack_from(">I4s", data, offset)
    header = 8
    if size == 1:
        if offset + 16 > limit:
            raise Mp4Error(f"{where}: box {_name(btype)!r} at {offset} has a 64-bit size but no room for it")
        if offset + 16 > len(data):
            raise Mp4Truncated(f"{where}: box header at offset {offset} is past the bytes read", offset + 16)
        (size,) = struct.unpack_from(">Q", data, offset + 8)
        header = 16
    elif size == 0:
        raise Mp4Error(f"{where}: box {_name(btype)!r} at {offset} has size 0 (to the end of the file), which is not supported")
    if size < header:
        raise Mp4Error(f"{where}: box {_name(btype)!r} at {offset} claims {size} bytes, less than its {header}-byte header")
    if offset + size > limit:
        raise Mp4Error(f"{where}: box {_name(btype)!r} at {offset} claims {size} bytes, past its container's end at {limit}")
    return Box(btype, offset, size, header)


def children(data: bytes, parent: Box, where: str) -> list[Box]:
    """The boxes inside `parent` (whose bytes must all be in `data`), in order."""
    out = []
    offset = parent.body
    while offset < parent.end:
        box = read_box(data, offset, parent.end, where)
        out.append(box)
        offset = box.end
    return out


def top_boxes(head: bytes, file_size: int) -> list[Box]:
    """Top-level boxes up to and including the first moof or mdat (whose bodies need not be in `head`)."""
    out = []
    offset = 0
    while offset < file_size:
        box = read_box(head, offset, file_size, "file")
        out.append(box)
        if box.type in (b"moof", b"mdat"):
            break
        if box.end > MAX_HEAD_BYTES:
            raise Mp4Error(f"{_name(box.type)}: {box.size} bytes at {box.offset}; more than {MAX_HEAD_BYTES >> 20} MiB of header is refused")
        offset = box.end
    return out


@dataclass(frozen=True, slots=True)
class Track:
    kind: str  # "video" or "audio"
    codecs: str
    width: int | None
    height: int | None
    timescale: int


def media_info(head: bytes, file_size: int) -> MediaInfo:
    """MediaInfo of one fMP4 encode from its first bytes; `Mp4Error` (or `Mp4Truncated`) says why not."""
    if file_size > len(head) and len(head) < 8:
        raise Mp4Truncated("fewer than 8 bytes read", 16)
    if file_size >= 8 and head[4:8] != b"ftyp":
        raise Mp4Error(f"not an MP4: the file starts with {_name(head[4:8])!r}, not 'ftyp'")
    boxes = top_boxes(head, file_size)
    if not boxes:
        raise Mp4Error("not an MP4: the file is empty")
    types = [b.type for b in boxes]
    if types[-1] == b"mdat" or b"moov" not in types:
        raise Mp4Error(_NOT_FRAGMENTED + ": media data before any moof" + ("" if b"moov" in types else " or moov"))
    moov = boxes[types.index(b"moov")]
    _need(head, moov, "moov")
    if not _find(head, moov, [b"mvex"], "moov"):
        raise Mp4Error(_NOT_FRAGMENTED + ": no mvex in moov")
    track = _track(head, moov)
    sidxs = [b for b in boxes if b.type == b"sidx"]
    if not sidxs:
        raise Mp4Error("no sidx: fragmented, but without the index a player needs (ffmpeg -movflags +global_sidx)")
    if len(sidxs) > 1:
        raise Mp4Error(f"{len(sidxs)} sidx boxes before the first fragment; one covering all fragments is expected")
    sidx = sidxs[0]
    if sidx.offset < moov.end:
        raise Mp4Error("the sidx comes before the moov")
    _need(head, sidx, "sidx")
    segments = _segments(head, sidx, file_size)
    if segments[0].first < boxes[-1].offset:
        raise Mp4Error(f"sidx: the first fragment starts at {segments[0].first}, before the first moof at {boxes[-1].offset}")
    duration = sum(s.duration_s for s in segments)
    bandwidth = max(math.ceil((s.last - s.first + 1) * 8 / s.duration_s) for s in segments)
    return MediaInfo(
        kind=track.kind,
        codecs=track.codecs,
        bandwidth=bandwidth,
        width=track.width,
        height=track.height,
        duration_s=round(duration, 6),
        init_range=(0, moov.end - 1),
        index_range=(sidx.offset, sidx.end - 1),
        segments=tuple(segments),
    )


def check_fragments(info: MediaInfo, heads: dict[int, bytes], file_size: int) -> None:
    """Each fragment the sidx names starts with a fragment box, and what follows the last is a trailer or the end.

    `heads` maps each `segment.first` (and the byte after the last segment,
    unless that is the file's end) to at least the 8 bytes found there.
    """
    for k, seg in enumerate(info.segments):
        got = heads.get(seg.first, b"")[4:8]
        if got not in _FRAGMENT_STARTS:
            raise Mp4Error(f"sidx lies: fragment {k} at byte {seg.first} starts with {_name(got)!r}, not 'moof'")
    after = info.segments[-1].last + 1
    if after < file_size:
        got = heads.get(after, b"")[4:8]
        if got not in _TRAILERS and got not in _FRAGMENT_STARTS:
            raise Mp4Error(f"after the last indexed fragment, byte {after} starts {_name(got)!r}")
        if got in _FRAGMENT_STARTS:
            raise Mp4Error(f"the sidx does not cover every fragment: another starts at byte {after}")


def _need(head: bytes, box: Box, what: str) -> None:
    if box.end > len(head):
        if box.end > MAX_HEAD_BYTES:
            raise Mp4Error(f"{what}: {box.size} bytes at {box.offset}; more than {MAX_HEAD_BYTES >> 20} MiB of header is refused")
        raise Mp4Truncated(f"{what} ends at {box.end}, past the {len(head)} bytes read", box.end)


def _find(data: bytes, parent: Box, path: list[bytes], where: str, depth: int = 0) -> list[Box]:
    """Every box at `path` below `parent`."""
    if depth > _MAX_DEPTH:
        raise Mp4Error(f"{where}: boxes nested too deeply")
    found = []
    for box in children(data, parent, where):
        if box.type == path[0]:
            if len(path) == 1:
                found.append(box)
            elif box.type in _CONTAINERS:
                found.extend(_find(data, box, path[1:], f"{where}.{_name(box.type)}", depth + 1))
    return found


def _one(data: bytes, parent: Box, path: list[bytes], where: str) -> Box:
    found = _find(data, parent, path, where)
    name = "/".join(_name(p) for p in path)
    if len(found) != 1:
        raise Mp4Error(f"{where}: {len(found)} {name} boxes, expected one")
    return found[0]


def _body(data: bytes, box: Box, need: int, what: str) -> memoryview:
    body = memoryview(data)[box.body : box.end]
    if len(body) < need:
        raise Mp4Error(f"{what}: {len(body)} bytes, too short (needs {need})")
    return body


def _track(data: bytes, moov: Box) -> Track:
    traks = _find(data, moov, [b"trak"], "moov")
    if len(traks) != 1:
        raise Mp4Error(f"moov: {len(traks)} tracks; one encode per file, with one track, is expected")
    trak = traks[0]
    hdlr = _body(data, _one(data, trak, [b"mdia", b"hdlr"], "trak"), 12, "hdlr")
    handler = bytes(hdlr[8:12])
    kind = {b"vide": "video", b"soun": "audio"}.get(handler)
    if kind is None:
        raise Mp4Error(f"hdlr: track kind {_name(handler)!r} is neither 'vide' nor 'soun'")
    mdhd = _body(data, _one(data, trak, [b"mdia", b"mdhd"], "trak"), 4, "mdhd")
    version = mdhd[0]
    need = 24 if version == 0 else 36
    if len(mdhd) < need:
        raise Mp4Error(f"mdhd: {len(mdhd)} bytes, too short for version {version}")
    (timescale,) = struct.unpack_from(">I", mdhd, 12 if version == 0 else 20)
    if timescale == 0:
        raise Mp4Error("mdhd: timescale 0")
    width = height = None
    if kind == "video":
        tkhd = _body(data, _one(data, trak, [b"tkhd"], "trak"), 4, "tkhd")
        at = 76 if tkhd[0] == 0 else 88  # width, height: 16.16 fixed point at the end of tkhd
        if len(tkhd) < at + 8:
            raise Mp4Error(f"tkhd: {len(tkhd)} bytes, too short for version {tkhd[0]}")
        w, h = struct.unpack_from(">II", tkhd, at)
        width, height = w >> 16, h >> 16
        if not (0 < width <= 65535 and 0 < height <= 65535):
            raise Mp4Error(f"tkhd: picture size {width}x{height}")
    stsd_box = _one(data, trak, [b"mdia", b"minf", b"stbl", b"stsd"], "trak")
    stsd = _body(data, stsd_box, 8, "stsd")
    (count,) = struct.unpack_from(">I", stsd, 4)
    if count != 1:
        raise Mp4Error(f"stsd: {count} sample entries, expected one")
    entry = read_box(data, stsd_box.body + 8, stsd_box.end, "stsd")
    codecs = _codecs(data, entry, kind)
    return Track(kind, codecs, width, height, timescale)


def _codecs(data: bytes, entry: Box, kind: str) -> str:
    name = _name(entry.type)
    if kind == "video" and entry.type in (b"avc1", b"avc3"):
        # VisualSampleEntry: 8 bytes SampleEntry + 70 bytes, then child boxes (ISO/IEC 14496-12 12.1.3).
        avcc = _child_of_entry(data, entry, 78, b"avcC")
        body = _body(data, avcc, 4, "avcC")
        if body[0] != 1:
            raise Mp4Error(f"avcC: configurationVersion {body[0]}, expected 1")
        return f"{name}.{body[1]:02x}{body[2]:02x}{body[3]:02x}"
    if kind == "audio" and entry.type == b"mp4a":
        # AudioSampleEntry: 8 bytes SampleEntry + 20 bytes, then child boxes.
        esds = _child_of_entry(data, entry, 28, b"esds")
        return _mp4a_codecs(_body(data, esds, 4, "esds")[4:])
    raise Mp4Error(f"stsd: sample entry {name!r} for {kind} is not supported (avc1/avc3 video, mp4a audio)")


def _child_of_entry(data: bytes, entry: Box, skip: int, want: bytes) -> Box:
    start = entry.body + skip
    if start > entry.end:
        raise Mp4Error(f"{_name(entry.type)}: {entry.size} bytes, too short for its sample entry")
    inner = Box(entry.type, start - 8, entry.end - start + 8, 8)  # a view of the entry's child boxes
    for box in children(data, inner, _name(entry.type)):
        if box.type == want:
            return box
    raise Mp4Error(f"{_name(entry.type)}: no {_name(want)} box")


def _descriptor(buf: memoryview, at: int, where: str) -> tuple[int, int, int]:
    """(tag, body offset, body end) of the MPEG-4 descriptor at `at` (ISO/IEC 14496-1 8.3.3)."""
    if at + 2 > len(buf):
        raise Mp4Error(f"{where}: descriptor past the end of esds")
    tag = buf[at]
    length = 0
    pos = at + 1
    for _ in range(4):
        if pos >= len(buf):
            raise Mp4Error(f"{where}: descriptor length past the end of esds")
        b = buf[pos]
        pos += 1
        length = (length << 7) | (b & 0x7F)
        if not b & 0x80:
            break
    else:
        raise Mp4Error(f"{where}: descriptor length longer than 4 bytes")
    if pos + length > len(buf):
        raise Mp4Error(f"{where}: descriptor of {length} bytes runs past the end of esds")
    return tag, pos, pos + length


def _mp4a_codecs(buf: memoryview) -> str:
    tag, pos, end = _descriptor(buf, 0, "esds")
    if tag != 0x03:
        raise Mp4Error(f"esds: first descriptor has tag {tag}, not ES_Descriptor (3)")
    if pos + 3 > end:
        raise Mp4Error("esds: ES_Descriptor too short")
    flags = buf[pos + 2]
    pos += 3
    if flags & 0x80:  # streamDependenceFlag
        pos += 2
    if flags & 0x40:  # URL_Flag
        if pos >= end:
            raise Mp4Error("esds: URL length past the end")
        pos += 1 + buf[pos]
    if flags & 0x20:  # OCRstreamFlag
        pos += 2
    tag, pos, dc_end = _descriptor(buf[:end], pos, "esds DecoderConfigDescriptor")
    if tag != 0x04 or dc_end - pos < 13:
        raise Mp4Error("esds: no DecoderConfigDescriptor")
    oti = buf[pos]
    codecs = f"mp4a.{oti:x}"
    if dc_end - pos > 13:
        tag, dsi, dsi_end = _descriptor(buf[:dc_end], pos + 13, "esds DecoderSpecificInfo")
        if tag == 0x05 and dsi < dsi_end:
            aot = buf[dsi] >> 3
            if aot == 31:  # escape: 32 + the next 6 bits (ISO/IEC 14496-3 1.6.2.1)
                if dsi + 1 >= dsi_end:
                    raise Mp4Error("esds: AudioSpecificConfig cut short")
                aot = 32 + (((buf[dsi] & 0x07) << 3) | (buf[dsi + 1] >> 5))
            codecs += f".{aot}"
    return codecs


def _segments(data: bytes, sidx: Box, file_size: int) -> list[Segment]:
    """Fragments from a sidx (ISO/IEC 14496-12 8.16.3): byte ranges from sizes, seconds from durations."""
    body = _body(data, sidx, 4, "sidx")
    version = body[0]
    fixed = 24 if version == 0 else 32
    if len(body) < fixed:
        raise Mp4Error(f"sidx: {len(body)} bytes, too short for version {version}")
    if version == 0:
        _ref, timescale, _ept, first_offset = struct.unpack_from(">IIII", body, 4)
    else:
        _ref, timescale, _ept, first_offset = struct.unpack_from(">IIQQ", body, 4)
    (count,) = struct.unpack_from(">H", body, fixed - 2)
    if timescale == 0:
        raise Mp4Error("sidx: timescale 0")
    if count == 0:
        raise Mp4Error("sidx: no references")
    if len(body) < fixed + 12 * count:
        raise Mp4Error(f"sidx: {count} references need {fixed + 12 * count} bytes; the box holds {len(body)}")
    offset = sidx.end + first_offset
    out = []
    for k in range(count):
        word, duration, _sap = struct.unpack_from(">III", body, fixed + 12 * k)
        if word >> 31:
            raise Mp4Error(f"sidx: reference {k} points at another sidx; a hierarchical index is not supported")
        size = word & 0x7FFFFFFF
        if size == 0 or duration == 0:
            raise Mp4Error(f"sidx: reference {k} has size {size} and duration {duration}; both must be > 0")
        if offset + size > file_size:
            raise Mp4Error(f"sidx: reference {k} ends at byte {offset + size}, past the file's {file_size} bytes")
        out.append(Segment(offset, offset + size - 1, duration / timescale))
        offset += size
    return out
