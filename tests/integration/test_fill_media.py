"""Media fields from real ffmpeg output: the demo's ladders, `oca-fill manifest build`, cross-checked with ffprobe.

Real ffmpeg encodes (a short low-resolution ladder from oca.demo.make_ladder,
and a progressive faststart MP4), the real CLI as a subprocess, and ffprobe
as the independent reader the parser is checked against.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from fill.manifest import parse_manifest
from fill.manifest_build import probe_media
from oca.demo import FRAGMENT_S, SMALL_RUNGS, ladder_key, make_ladder
from tests.integration.test_fill import oca_fill

SECONDS = 9  # four 2 s fragments and a short one


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> list[Path]:
    return make_ladder(tmp_path_factory.mktemp("ladder"), "clip", SECONDS, SMALL_RUNGS)


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return json.loads(out)


def test_the_parser_agrees_with_ffprobe(ladder):
    names = [p.name for p in ladder]
    assert names == ["clip.144p.mp4", "clip.240p.mp4", "clip.360p.mp4", "clip.audio.mp4"]
    for path, rung in zip(ladder, [*SMALL_RUNGS, None]):
        info = probe_media(str(path))
        probe = ffprobe(path)
        (stream,) = probe["streams"]
        assert abs(info.duration_s - float(probe["format"]["duration"])) < 0.05, path.name
        assert abs(info.duration_s - SECONDS) < 0.1
        if rung is not None:
            assert info.kind == "video" and stream["codec_type"] == "video"
            assert (info.width, info.height) == (stream["width"], stream["height"]) == (rung.width, rung.height)
            assert stream["codec_name"] == "h264" and stream["codec_tag_string"] == info.codecs[:4] == "avc1"
            profile, level = int(info.codecs[5:7], 16), int(info.codecs[9:11], 16)
            assert level == stream["level"]
            assert {66: "Baseline", 77: "Main", 100: "High"}[profile] in stream["profile"]
            # The peak fragment is above the target rate and below what the VBV cap allows, with slack.
            assert rung.kbps * 1000 * 0.5 < info.bandwidth < rung.kbps * 1000 * 2, (path.name, info.bandwidth)
        else:
            assert info.kind == "audio" and stream["codec_type"] == "audio"
            assert stream["codec_name"] == "aac" and stream["profile"] == "LC" and info.codecs == "mp4a.40.2"
            assert info.width is None
        # 2 s fragments, as many as the duration needs, contiguous up to the mfra ffmpeg appends.
        assert len(info.segments) == -(-SECONDS // FRAGMENT_S), path.name
        assert all(s.duration_s <= FRAGMENT_S + 0.05 for s in info.segments)
        assert info.index_range[0] == info.init_range[1] + 1 and info.segments[0].first == info.index_range[1] + 1
        with open(path, "rb") as fh:
            fh.seek(info.segments[-1].last + 1)
            assert fh.read(8)[4:] == b"mfra"


def test_manifest_build_fills_media_fields_and_reports_the_rest(ladder, tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    for p in ladder:
        (content / p.name).hardlink_to(p)
    # A progressive MP4 (moov up front, no fragments), as the old demo made them.
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-t", "1", "-i", "testsrc2=size=160x90:rate=10",
         "-c:v", "libx264", "-preset", "ultrafast", "-movflags", "+faststart", str(content / "old.mp4")],
        check=True, timeout=60,
    )
    (content / "notes.txt").write_text("not media")
    titles = tmp_path / "titles.json"
    titles.write_text(json.dumps({"clip.audio.mp4": "clip-audio", "notes.txt": "notes"}))
    proc = oca_fill(None, "manifest", "build", str(content), "--base-url", "http://o.example/", "--titles", str(titles), check=True)
    m = parse_manifest(proc.stdout)
    by_id = m.by_id()
    for p in ladder:
        assert by_id[p.name].media == probe_media(str(p))
    assert by_id["clip.360p.mp4"].title == "clip"  # the name up to its first dot
    assert by_id["clip.audio.mp4"].title == "clip-audio"  # --titles wins
    assert (by_id["notes.txt"].title, by_id["notes.txt"].media) == ("notes", None)
    assert (by_id["old.mp4"].title, by_id["old.mp4"].media) == (None, None)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert any(line.startswith("oca-fill manifest build: old.mp4: no media fields: not fragmented") for line in lines), lines
    assert any(line.startswith("oca-fill manifest build: notes.txt: no media fields: not an MP4") for line in lines), lines


@pytest.mark.parametrize(
    "doc,words",
    [
        ({"clip.144p.mp4": "a b"}, "title of 'clip.144p.mp4': 'a b' is not a valid title"),
        ({"clip.144p.mp4": 7}, "title of 'clip.144p.mp4'"),
        ({"gone.mp4": "gone"}, "--titles names files not in"),
        (["clip"], "must be a JSON object"),
    ],
    ids=["space", "number", "unknown file", "a list"],
)
def test_bad_titles_files_are_refused_naming_the_entry(ladder, tmp_path, doc, words):
    titles = tmp_path / "titles.json"
    titles.write_text(json.dumps(doc))
    proc = oca_fill(None, "manifest", "build", str(ladder[0].parent), "--base-url", "http://o.example/", "--titles", str(titles))
    assert proc.returncode == 1 and proc.stdout == ""
    assert words in proc.stderr


def test_make_ladder_reuses_its_cache(tmp_path):
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    first = make_ladder(tmp_path / "a", "cached", 2, SMALL_RUNGS[:1], cache=cache)
    encode_s = time.monotonic() - t0
    home = cache / ladder_key("cached", 2, SMALL_RUNGS[:1])
    assert sorted(p.name for p in home.iterdir()) == ["cached.144p.mp4", "cached.audio.mp4"]
    second = make_ladder(tmp_path / "b", "cached", 2, SMALL_RUNGS[:1], cache=cache)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert all(p.stat().st_ino == (home / p.name).stat().st_ino for p in second)  # linked, not encoded again
    assert [p.name for p in cache.iterdir()] == [home.name]  # no temporary directory left behind
    # Another parameter, another key.
    assert ladder_key("cached", 3, SMALL_RUNGS[:1]) != home.name and ladder_key("other", 2, SMALL_RUNGS[:1]) != home.name
    assert encode_s < 60
