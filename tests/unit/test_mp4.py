"""The MP4 box parser (fill/mp4.py): synthetic files built box by box, and a table of hostile ones.

Pure: bytes in, values out. Real ffmpeg output is checked against ffprobe in
tests/integration/test_fill_media.py.
"""

from __future__ import annotations

import struct

import pytest

from fill.errors import FillError
from fill.manifest import MediaInfo, Segment
from fill.mp4 import MAX_HEAD_BYTES, Mp4Error, Mp4Truncated, check_fragments, media_info, top_boxes


def box(btype: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), btype) + payload


def box64(btype: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4sQ", 1, btype, 16 + len(payload)) + payload


def full(version: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">I", (version << 24) | flags)


def tkhd(width: int, height: int, version: int = 0) -> bytes:
    times = b"\0" * (20 if version == 0 else 32)  # creation, modification, track id, reserved, duration
    middle = b"\0" * (8 + 2 + 2 + 2 + 2 + 36)  # reserved, layer, group, volume, reserved, matrix
    return box(b"tkhd", full(version, 7), times, middle, struct.pack(">II", width << 16, height << 16))


def mdhd(timescale: int, version: int = 0) -> bytes:
    if version == 0:
        return box(b"mdhd", full(0), struct.pack(">IIII", 0, 0, timescale, 0), b"\x55\xc4\0\0")
    return box(b"mdhd", full(1), struct.pack(">QQIQ", 0, 0, timescale, 0), b"\x55\xc4\0\0")


def hdlr(handler: bytes) -> bytes:
    return box(b"hdlr", full(), b"\0\0\0\0", handler, b"\0" * 12, b"name\0")


def avc1(profile=0x64, compat=0x00, level=0x1F, entry=b"avc1") -> bytes:
    avcc = box(b"avcC", bytes([1, profile, compat, level, 0xFF, 0xE0, 0x00]))
    return box(entry, b"\0" * 6, b"\0\x01", b"\0" * 70, avcc)


def esds_body(oti=0x40, asc=b"\x12\x10", flags=0) -> bytes:
    dsi = bytes([0x05, len(asc)]) + asc
    dcd_body = bytes([oti, 0x15]) + b"\0" * 3 + b"\0" * 8 + dsi
    dcd = bytes([0x04, len(dcd_body)]) + dcd_body
    extra = (b"\0\0" if flags & 0x80 else b"") + (b"\0\0" if flags & 0x20 else b"")  # dependsOn_ES_ID, OCR_ES_Id
    es_body = b"\0\x01" + bytes([flags]) + extra + dcd + b"\x06\x01\x02"
    return bytes([0x03, 0x80, 0x80, 0x80 | 0, len(es_body)]) + es_body  # a 4-byte length, as ffmpeg writes


def mp4a(esds: bytes | None = None) -> bytes:
    return box(b"mp4a", b"\0" * 6, b"\0\x01", b"\0" * 20, box(b"esds", full(), esds if esds is not None else esds_body()))


def trak(kind: str = "video", *, entry: bytes | None = None, width=1280, height=720, timescale=12288, tk_version=0, md_version=0) -> bytes:
    if entry is None:
        entry = avc1() if kind == "video" else mp4a()
    stsd = box(b"stsd", full(), struct.pack(">I", 1), entry)
    minf = box(b"minf", box(b"stbl", stsd))
    handler = {"video": b"vide", "audio": b"soun"}.get(kind, kind.encode())
    return box(b"trak", tkhd(width, height, tk_version), box(b"mdia", mdhd(timescale, md_version), hdlr(handler), minf))


def moov(*traks: bytes, mvex: bool = True) -> bytes:
    return box(b"moov", box(b"mvhd", full(), b"\0" * 96), *traks, box(b"mvex", box(b"trex", full(), b"\0" * 20)) if mvex else b"")


FTYP = box(b"ftyp", b"isom", b"\0\0\2\0", b"isomiso6mp41")


def sidx(refs: list[tuple[int, int]], timescale=1000, first_offset=0, version=0, count: int | None = None, ref_type=0) -> bytes:
    head = struct.pack(">II", 1, timescale)
    head += struct.pack(">II", 0, first_offset) if version == 0 else struct.pack(">QQ", 0, first_offset)
    head += struct.pack(">HH", 0, len(refs) if count is None else count)
    body = b"".join(struct.pack(">III", (ref_type << 31) | size, dur, 0x90000000) for size, dur in refs)
    return box(b"sidx", full(version), head, body)


def fragment(n: int) -> bytes:
    """A moof+mdat of `n` + 100 bytes or so."""
    return box(b"moof", box(b"mfhd", full(), struct.pack(">I", 1))) + box(b"mdat", b"\xab" * n)


def encode(kind="video", frags=(1000, 3000, 500), durs=(2000, 2000, 1500), *, trak_bytes=None, moov_bytes=None, sidx_fn=None, tail=b""):
    """A whole fMP4 file: ftyp, moov, sidx, fragments, `tail`."""
    fr = [fragment(n) for n in frags]
    mv = moov_bytes if moov_bytes is not None else moov(trak_bytes if trak_bytes is not None else trak(kind))
    sx = sidx_fn([len(f) for f in fr]) if sidx_fn else sidx(list(zip([len(f) for f in fr], durs)))
    return FTYP + mv + sx + b"".join(fr) + tail


def info_of(data: bytes) -> MediaInfo:
    return media_info(data, len(data))


def heads_of(data: bytes, info: MediaInfo) -> dict[int, bytes]:
    return {at: data[at : at + 8] for at in [s.first for s in info.segments] + [info.segments[-1].last + 1]}


# --- what a good file gives -------------------------------------------------------------


def test_video_encode():
    data = encode()
    info = info_of(data)
    init_end = len(FTYP) + len(moov(trak()))
    sidx_len = len(sidx([(1, 1)] * 3))
    sizes = [len(fragment(n)) for n in (1000, 3000, 500)]
    first = init_end + sidx_len
    assert info == MediaInfo(
        kind="video",
        codecs="avc1.64001f",
        bandwidth=max(-(-s * 8 // d) for s, d in zip(sizes, (2, 2, 1.5))),
        width=1280,
        height=720,
        duration_s=5.5,
        init_range=(0, init_end - 1),
        index_range=(init_end, init_end + sidx_len - 1),
        segments=(
            Segment(first, first + sizes[0] - 1, 2.0),
            Segment(first + sizes[0], first + sizes[0] + sizes[1] - 1, 2.0),
            Segment(first + sizes[0] + sizes[1], len(data) - 1, 1.5),
        ),
    )
    assert info.bandwidth == -(-sizes[1] * 8 // 2)  # the peak fragment, rounded up
    check_fragments(info, heads_of(data, info), len(data))


@pytest.mark.parametrize(
    "esds,codecs",
    [
        (esds_body(), "mp4a.40.2"),  # AAC-LC
        (esds_body(asc=b"\x2b\x8a\x08"), "mp4a.40.5"),  # HE-AAC (SBR)
        (esds_body(asc=b"\xf8\x00"), "mp4a.40.32"),  # escape: 31 -> 32 + next 6 bits (0)
        (esds_body(oti=0x6B, asc=b""), "mp4a.6b"),  # MP3 in MP4: no DecoderSpecificInfo worth reading
        (esds_body(flags=0x80 | 0x20), "mp4a.40.2"),  # streamDependence and OCR flags skip 2 bytes each
    ],
    ids=["aac-lc", "he-aac", "escaped aot", "mp3", "es flags"],
)
def test_audio_codecs(esds, codecs):
    info = info_of(encode("audio", trak_bytes=trak("audio", entry=mp4a(esds))))
    assert info.kind == "audio" and info.codecs == codecs
    assert info.width is None and info.height is None


@pytest.mark.parametrize(
    "entry,codecs",
    [(avc1(0x42, 0xC0, 0x1E), "avc1.42c01e"), (avc1(0x4D, 0x40, 0x28), "avc1.4d4028"), (avc1(entry=b"avc3"), "avc3.64001f")],
)
def test_video_codecs(entry, codecs):
    assert info_of(encode(trak_bytes=trak(entry=entry))).codecs == codecs


def test_version_1_boxes_and_64_bit_sizes():
    tr = trak(tk_version=1, md_version=1, width=1920, height=1080)
    data = FTYP + box64(b"moov", box(b"mvhd", full(), b"\0" * 96), tr, box(b"mvex")) + b""
    frags = [fragment(100), fragment(200)]
    data += sidx([(len(f), 90000 * 2) for f in frags], timescale=90000, version=1) + b"".join(frags)
    info = info_of(data)
    assert (info.width, info.height, info.duration_s) == (1920, 1080, 4.0)
    assert info.init_range == (0, len(data) - len(frags[0]) - len(frags[1]) - len(sidx([(1, 1)] * 2, version=1)) - 1)


def test_first_offset_and_trailing_mfra():
    frags = [fragment(10), fragment(20)]
    gap = box(b"free", b"\0" * 4)
    data = FTYP + moov(trak()) + sidx([(len(f), 1000) for f in frags], first_offset=len(gap)) + gap + b"".join(frags) + box(b"mfra", b"\0" * 8)
    info = info_of(data)
    assert info.segments[0].first == len(data) - len(box(b"mfra", b"\0" * 8)) - len(frags[0]) - len(frags[1])
    check_fragments(info, heads_of(data, info), len(data))


def test_a_short_head_asks_for_more():
    data = encode()
    with pytest.raises(Mp4Truncated) as info:
        media_info(data[:100], len(data))
    assert info.value.need_bytes > 100
    need = info.value.need_bytes
    # Asking again with what it asked for converges on the whole answer.
    for _ in range(4):
        try:
            got = media_info(data[:need], len(data))
            break
        except Mp4Truncated as exc:
            assert exc.need_bytes > need
            need = exc.need_bytes
    assert got == info_of(data)
    assert need < len(data) - 4000  # the fragments themselves are never needed


def test_top_boxes_stop_at_the_first_fragment():
    data = encode()
    assert [b.type for b in top_boxes(data, len(data))] == [b"ftyp", b"moov", b"sidx", b"moof"]


# --- hostile and unsupported files: one error type, saying why ------------------------------


def _patch(data: bytes, at: int, raw: bytes) -> bytes:
    return data[:at] + raw + data[at + len(raw) :]


GOOD = encode()
MOOV_AT = len(FTYP)
SIDX_AT = len(FTYP) + len(moov(trak()))
progressive = FTYP + moov(trak(), mvex=False) + box(b"mdat", b"\0" * 100)
HOSTILE = [
    ("empty", b"", "the file is empty"),
    ("truncated header", GOOD[:5], "less than a box header"),
    ("not an mp4", b"<html>" + b"\0" * 100, "not an MP4"),
    ("size 0", _patch(GOOD, MOOV_AT, b"\0\0\0\0"), "size 0"),
    ("size 1 without room", FTYP + struct.pack(">I4s", 1, b"moov") + b"\0\0\0", "64-bit size but no room"),
    ("size 1 too small", FTYP + struct.pack(">I4sQ", 1, b"moov", 8) + b"\0" * 50, "less than its 16-byte header"),
    ("size 1 past the end", FTYP + struct.pack(">I4sQ", 1, b"moov", 1 << 62) + b"\0" * 50, "past its container's end"),
    ("size below header", _patch(GOOD, MOOV_AT, b"\0\0\0\5"), "less than its 8-byte header"),
    ("top box past the file", _patch(GOOD, SIDX_AT, struct.pack(">I", len(GOOD))), "past its container's end"),
    ("child past its parent", _patch(GOOD, MOOV_AT + 8, struct.pack(">I", 10_000)), "past its container's end"),
    ("progressive (faststart)", progressive, "not fragmented"),
    ("moov at the end", FTYP + box(b"mdat", b"\0" * 100) + moov(trak(), mvex=False), "not fragmented"),
    ("moof but no mvex", FTYP + moov(trak(), mvex=False) + sidx([(len(fragment(10)), 1)]) + fragment(10), "not fragmented"),
    ("fragmented, no sidx", FTYP + moov(trak()) + fragment(10), "no sidx"),
    ("two sidx", FTYP + moov(trak()) + sidx([(1, 1)]) + sidx([(1, 1)]) + fragment(10), "2 sidx boxes"),
    ("sidx before moov", FTYP + sidx([(len(fragment(10)), 1)]) + moov(trak()) + fragment(10), "before the moov"),
    ("two tracks", encode(moov_bytes=moov(trak(), trak("audio"))), "2 tracks"),
    ("no track", encode(moov_bytes=moov()), "0 tracks"),
    ("subtitle track", encode(trak_bytes=trak("text")), "neither 'vide' nor 'soun'"),
    ("hevc", encode(trak_bytes=trak(entry=box(b"hvc1", b"\0" * 78))), "'hvc1' for video is not supported"),
    ("avc1 without avcC", encode(trak_bytes=trak(entry=box(b"avc1", b"\0" * 78))), "no avcC"),
    ("avc1 too short", encode(trak_bytes=trak(entry=box(b"avc1", b"\0" * 10))), "too short for its sample entry"),
    ("avcC version 2", encode(trak_bytes=trak(entry=box(b"avc1", b"\0" * 78, box(b"avcC", b"\2\x64\0\x1f")))), "configurationVersion 2"),
    ("esds lies about its length", encode("audio", trak_bytes=trak("audio", entry=mp4a(b"\x03\x7f\0\1\0"))), "runs past the end of esds"),
    ("esds length of 5 bytes", encode("audio", trak_bytes=trak("audio", entry=mp4a(b"\x03\x80\x80\x80\x80\x80\x01"))), "longer than 4 bytes"),
    ("esds without decoder config", encode("audio", trak_bytes=trak("audio", entry=mp4a(b"\x03\x03\0\1\0"))), "DecoderConfigDescriptor"),
    ("esds of the wrong tag", encode("audio", trak_bytes=trak("audio", entry=mp4a(b"\x04\x01\0"))), "not ES_Descriptor"),
    ("zero width", encode(trak_bytes=trak(width=0)), "picture size 0x720"),
    ("timescale 0", encode(trak_bytes=trak(timescale=0)), "mdhd: timescale 0"),
    ("sidx timescale 0", encode(sidx_fn=lambda s: sidx([(n, 1) for n in s], timescale=0)), "sidx: timescale 0"),
    ("sidx no references", encode(sidx_fn=lambda s: sidx([])), "sidx: no references"),
    ("sidx huge count", encode(sidx_fn=lambda s: sidx([(n, 1) for n in s], count=65535)), "65535 references need"),
    ("sidx reference past the end", encode(sidx_fn=lambda s: sidx([(n + 10**6, 1) for n in s])), "past the file's"),
    ("sidx first_offset past the end", encode(sidx_fn=lambda s: sidx([(n, 1) for n in s], first_offset=1 << 31)), "past the file's"),
    ("sidx 64-bit offset lie", encode(sidx_fn=lambda s: sidx([(n, 1) for n in s], first_offset=1 << 62, version=1)), "past the file's"),
    ("sidx zero size", encode(sidx_fn=lambda s: sidx([(0, 1)] + [(n, 1) for n in s])), "size 0 and duration 1"),
    ("sidx zero duration", encode(sidx_fn=lambda s: sidx([(n, 0) for n in s])), "duration 0"),
    ("hierarchical sidx", encode(sidx_fn=lambda s: sidx([(n, 1) for n in s], ref_type=1)), "hierarchical"),
    ("sidx too short", FTYP + moov(trak()) + box(b"sidx", full(), b"\0" * 10) + fragment(1), "too short for version 0"),
    ("sidx starts before the moof", FTYP + moov(trak()) + sidx([(10, 1)], first_offset=0) + box(b"free", b"\0" * 2) + fragment(1), "before the first moof"),
    ("mdhd too short", encode(trak_bytes=box(b"trak", tkhd(1, 1), box(b"mdia", box(b"mdhd", full(), b"\0" * 4), hdlr(b"vide")))), "mdhd: 8 bytes, too short"),
    ("tkhd too short", encode(trak_bytes=box(b"trak", box(b"tkhd", full(), b"\0" * 10), box(b"mdia", mdhd(1), hdlr(b"vide")))), "tkhd: 14 bytes, too short"),
    ("two hdlr", encode(trak_bytes=box(b"trak", tkhd(1, 1), box(b"mdia", mdhd(1), hdlr(b"vide"), hdlr(b"vide")))), "2 mdia/hdlr boxes"),
    ("stsd of two entries", encode(trak_bytes=trak(entry=avc1()).replace(struct.pack(">I", 1) + avc1()[:4], struct.pack(">I", 2) + avc1()[:4])), "2 sample entries"),
]


@pytest.mark.parametrize("data,words", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_files_raise_one_error_type_saying_why(data, words):
    with pytest.raises(Mp4Error) as info:
        media_info(data, len(data))
    assert words in str(info.value)
    assert isinstance(info.value, FillError)


def test_a_head_past_the_limit_is_refused_not_read():
    head = FTYP + struct.pack(">I4s", MAX_HEAD_BYTES + 100, b"moov") + b"\0" * 100
    with pytest.raises(Mp4Error, match="MiB of header is refused") as info:
        media_info(head, MAX_HEAD_BYTES * 2)
    assert not isinstance(info.value, Mp4Truncated)


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda d, i: _patch(d, i.segments[1].first + 4, b"mdat"), "fragment 1 at byte"),
        (lambda d, i: d + fragment(5), "does not cover every fragment"),
        (lambda d, i: d + b"\0\0\0\x10junk" + b"\0" * 8, "starts 'junk'"),
    ],
    ids=["sidx points into the middle of things", "unindexed fragment after the last", "garbage after the last"],
)
def test_check_fragments_catches_a_lying_sidx(change, words):
    info = info_of(GOOD)
    data = change(GOOD, info)
    with pytest.raises(Mp4Error, match=words):
        check_fragments(info, heads_of(data, info), len(data))


def test_deep_nesting_is_bounded():
    inner = box(b"free")
    for _ in range(50):
        inner = box(b"trak", inner)
    data = FTYP + moov(inner) + sidx([(1, 1)]) + fragment(1)
    with pytest.raises(Mp4Error):
        media_info(data, len(data))
