"""The pure playback pieces: titles from the manifest, the MPD, the HLS playlists, Content Steering, the /watch pages.

The MPD is checked against its structure with xml.etree (namespace, the
on-demand profile, one AdaptationSet per kind, BaseURL per pathway with
serviceLocation, SegmentBase ranges, ContentSteering); the playlists line
by line against RFC 8216's grammar for the tags used.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl, urlsplit

import pytest

from fill.manifest import parse_manifest
from steering.catalog import titles_held, titles_of
from steering.content_steering import (
    PlayerQuery,
    parse_player_query,
    session_token,
    session_valid,
    steering_answer,
    steering_url,
)
from steering.dash import iso_duration, render_mpd
from steering.hls import render_media, render_multivariant
from steering.messages import MessageError
from steering.watch_page import BUFFER_S, INSTALL_HINT, TTFB_MS, load_timeout_ms, render_index, render_player

NS = {"m": "urn:mpeg:dash:schema:mpd:2011"}
HEX = "0" * 32


def entry(cid: str, title: str | None, kind: str | None, bw: int = 1_000_000, height: int = 360, n_seg: int = 3,
          seg_s: float = 2.0) -> dict:
    e = {"id": cid, "size": 0, "xxh128": HEX, "mtime": 1, "popularity": 1.0, "sources": [f"http://origin/{cid}"]}
    if kind is None:
        e["size"] = 10
        return e
    init = [0, 799]
    index = [800, 899]
    segs, pos = [], 900
    for _ in range(n_seg):
        segs.append([pos, pos + 9_999, seg_s])
        pos += 10_000
    e.update({"size": pos, "kind": kind, "codecs": "avc1.64001f" if kind == "video" else "mp4a.40.2", "bandwidth": bw,
              "duration_s": n_seg * seg_s, "init_range": init, "index_range": index, "segments": segs})
    if title is not None:
        e["title"] = title
    if kind == "video":
        e["width"], e["height"] = height * 16 // 9, height
    return e


def manifest(*entries: dict):
    return parse_manifest(json.dumps({"format": "oca-manifest", "version": 1, "generated_s": 1, "files": list(entries)}))


LADDER = manifest(
    entry("sintel.1080p.mp4", "sintel", "video", 4_000_000, 1080),
    entry("sintel.360p.mp4", "sintel", "video", 600_000, 360),
    entry("sintel.720p.mp4", "sintel", "video", 2_000_000, 720),
    entry("sintel.aac.mp4", "sintel", "audio", 128_000),
    entry("plain.bin", None, None),
    entry("radio.aac.mp4", "radio", "audio", 64_000),  # no video: not a playable title
)
TITLE = titles_of(LADDER)["sintel"]
PATHWAYS = ["a1", "b1"]
URLS = {aid: {f.content_id: f"http://{aid}.example:80/content/{f.content_id}?k=1&e=9&t=x" for f in TITLE.files} for aid in PATHWAYS}
STEER = "http://steer.example:8090/play/sintel/steering.json?client=192.0.2.7"


# ---------------------------------------------------------------- titles


def test_titles_group_media_files_and_sort_encodes_by_bandwidth():
    titles = titles_of(LADDER)
    assert list(titles) == ["sintel"]
    assert [f.content_id for f in TITLE.video] == ["sintel.360p.mp4", "sintel.720p.mp4", "sintel.1080p.mp4"]
    assert [f.content_id for f in TITLE.audio] == ["sintel.aac.mp4"]
    assert TITLE.duration_s == 6.0


def test_a_title_is_held_only_when_every_encode_is():
    titles = titles_of(LADDER)
    every = {f.content_id for f in TITLE.files}
    assert titles_held(titles, every) == {"sintel"}
    assert titles_held(titles, every - {"sintel.aac.mp4"}) == frozenset()
    assert titles_held(titles, set()) == frozenset()


# ---------------------------------------------------------------- DASH


@pytest.mark.parametrize("seconds, text", [(0, "PT0.000S"), (6, "PT6.000S"), (61.5, "PT1M1.500S"), (3723.25, "PT1H2M3.250S")])
def test_iso_duration(seconds, text):
    assert iso_duration(seconds) == text


def test_mpd_structure():
    root = ET.fromstring(render_mpd(TITLE, PATHWAYS, URLS, STEER))
    assert root.tag == "{urn:mpeg:dash:schema:mpd:2011}MPD"
    assert root.get("type") == "static"
    assert root.get("profiles") == "urn:mpeg:dash:profile:isoff-on-demand:2011"
    assert root.get("mediaPresentationDuration") == "PT6.000S"
    cs = root.findall("m:ContentSteering", NS)
    assert len(cs) == 1
    assert cs[0].text == STEER
    assert cs[0].get("defaultServiceLocation") == "a1" and cs[0].get("queryBeforeStart") == "true"
    periods = root.findall("m:Period", NS)
    assert len(periods) == 1
    sets = periods[0].findall("m:AdaptationSet", NS)
    assert [s.get("contentType") for s in sets] == ["video", "audio"]
    assert [s.get("mimeType") for s in sets] == ["video/mp4", "audio/mp4"]
    video = sets[0].findall("m:Representation", NS)
    assert [r.get("id") for r in video] == ["sintel.360p.mp4", "sintel.720p.mp4", "sintel.1080p.mp4"]
    assert [int(r.get("bandwidth")) for r in video] == [600_000, 2_000_000, 4_000_000]
    assert [(r.get("width"), r.get("height")) for r in video][-1] == ("1920", "1080")
    for rep in video + sets[1].findall("m:Representation", NS):
        bases = rep.findall("m:BaseURL", NS)
        assert [b.get("serviceLocation") for b in bases] == PATHWAYS
        assert [b.text for b in bases] == [URLS[a][rep.get("id")] for a in PATHWAYS]
        sb = rep.find("m:SegmentBase", NS)
        assert sb.get("indexRange") == "800-899"
        assert sb.find("m:Initialization", NS).get("range") == "0-799"
    assert sets[1].findall("m:Representation", NS)[0].get("codecs") == "mp4a.40.2"


def test_mpd_escapes_urls():
    urls = {"a1": {cid: u.replace("?", "?x=<&>&") for cid, u in URLS["a1"].items()}}
    root = ET.fromstring(render_mpd(TITLE, ["a1"], urls, STEER + "&y=<>"))
    assert root.find("m:ContentSteering", NS).text.endswith("&y=<>")
    assert "?x=<&>&" in root.find(".//m:BaseURL", NS).text


def test_mpd_needs_a_pathway():
    with pytest.raises(ValueError, match="pathways"):
        render_mpd(TITLE, [], URLS, STEER)


# ---------------------------------------------------------------- HLS

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"\r\n]*"|[^",]*)(?:,|$)')


def attrs(line: str) -> dict:
    body = line.split(":", 1)[1]
    found = _ATTR.findall(body)
    assert ",".join(f"{k}={v}" for k, v in found) == body, f"not an attribute list: {line}"
    return {k: v.strip('"') for k, v in found}


def test_multivariant_lines():
    mu = {aid: {cid: f"/play/sintel/{aid}/{cid}.m3u8" for cid in URLS[aid]} for aid in PATHWAYS}
    lines = render_multivariant(TITLE, PATHWAYS, mu, STEER).splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-VERSION:7" in lines
    steering = [l for l in lines if l.startswith("#EXT-X-CONTENT-STEERING:")]
    assert len(steering) == 1 and attrs(steering[0]) == {"SERVER-URI": STEER, "PATHWAY-ID": "a1"}
    media = [attrs(l) for l in lines if l.startswith("#EXT-X-MEDIA:")]
    assert [(m["GROUP-ID"], m["URI"]) for m in media] == [(f"audio-{a}", f"/play/sintel/{a}/sintel.aac.mp4.m3u8") for a in PATHWAYS]
    variants = [(attrs(l), lines[i + 1]) for i, l in enumerate(lines) if l.startswith("#EXT-X-STREAM-INF:")]
    assert len(variants) == 3 * len(PATHWAYS)
    for a, uri in variants:
        assert uri.startswith(f"/play/sintel/{a['PATHWAY-ID']}/") and not uri.startswith("#")
        assert a["AUDIO"] == f"audio-{a['PATHWAY-ID']}"
        assert a["CODECS"] == "avc1.64001f,mp4a.40.2"
    assert [int(a["BANDWIDTH"]) for a, _ in variants[:3]] == [728_000, 2_128_000, 4_128_000]
    assert [a["RESOLUTION"] for a, _ in variants[:3]] == ["640x360", "1280x720", "1920x1080"]


def test_media_playlist_lines():
    url = URLS["b1"]["sintel.720p.mp4"]
    lines = render_media(TITLE, "sintel.720p.mp4", url).splitlines()
    assert lines[:2] == ["#EXTM3U", "#EXT-X-VERSION:7"]
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in lines and lines[-1] == "#EXT-X-ENDLIST"
    assert "#EXT-X-TARGETDURATION:2" in lines
    mp = [attrs(l) for l in lines if l.startswith("#EXT-X-MAP:")]
    assert mp == [{"URI": url, "BYTERANGE": "800@0"}]
    body = lines[lines.index(next(l for l in lines if l.startswith("#EXT-X-MAP:"))) + 1:-1]
    assert len(body) == 3 * 3
    for k in range(3):
        extinf, br, uri = body[3 * k: 3 * k + 3]
        assert extinf == "#EXTINF:2.000,"
        assert br == f"#EXT-X-BYTERANGE:10000@{900 + 10_000 * k}"
        assert uri == url


def test_playlists_refuse_a_quote_in_a_uri():
    with pytest.raises(ValueError, match="quoted-string"):
        render_media(TITLE, "sintel.720p.mp4", 'http://x/"evil')
    with pytest.raises(KeyError):
        render_media(TITLE, "nope.mp4", "http://x/")


# ---------------------------------------------------------------- Content Steering


def test_answer_shape():
    doc = steering_answer(["b1", "a1"], 10, STEER)
    assert doc == {"VERSION": 1, "TTL": 10, "RELOAD-URI": STEER, "PATHWAY-PRIORITY": ["b1", "a1"]}
    assert steering_answer(["a1"], 0.2, STEER)["TTL"] == 1


def test_steering_url_carries_a_session_only_with_a_key():
    url = steering_url("http://s:1", "sintel", "192.0.2.7", b"k" * 20)
    q = dict(parse_qsl(urlsplit(url).query))
    assert urlsplit(url).path == "/play/sintel/steering.json"
    assert q["client"] == "192.0.2.7" and session_valid("sintel", "192.0.2.7", q["session"], b"k" * 20)
    assert not session_valid("sintel", "192.0.2.8", q["session"], b"k" * 20)
    assert not session_valid("other", "192.0.2.7", q["session"], b"k" * 20)
    assert not session_valid("sintel", "192.0.2.7", q["session"], b"j" * 20)
    assert "session" not in dict(parse_qsl(urlsplit(steering_url("http://s:1", "sintel", "192.0.2.7", None)).query))


TOKEN = session_token("t", "192.0.2.1", b"x" * 20)
GOOD_QUERIES = [
    ([], PlayerQuery(None, (), (), None, None)),
    ([("_DASH_pathway", "a1"), ("_DASH_throughput", "5000000")], PlayerQuery("dash", ("a1",), (5_000_000,), None, None)),
    ([("_HLS_pathway", "b1"), ("_HLS_throughput", "0"), ("client", "192.0.2.1"), ("session", TOKEN)],
     PlayerQuery("hls", ("b1",), (0,), "192.0.2.1", TOKEN)),
    ([("_HLS_pathway", ""), ("cachebuster", "1"), ("cachebuster", "2")], PlayerQuery("hls", (), (), None, None)),
    # as dash.js 5.2 sends them: a quoted list of pathways, one per media type, and their throughputs
    ([("_DASH_pathway", '"a1,a2"'), ("_DASH_throughput", "51700000,671604000")],
     PlayerQuery("dash", ("a1", "a2"), (51_700_000, 671_604_000), None, None)),
    ([("_DASH_pathway", '"a1,a2"'), ("_DASH_throughput", "51700000,")], PlayerQuery("dash", ("a1", "a2"), (51_700_000, None), None, None)),
]
HOSTILE_QUERIES = [
    ([("_DASH_pathway", "a1"), ("_DASH_pathway", "b1")], "_DASH_pathway: given more than once"),
    ([("_DASH_pathway", "a1"), ("_HLS_pathway", "b1")], "_HLS_pathway: DASH and HLS"),
    ([("_DASH_pathway", "../etc")], "_DASH_pathway: not a list of appliance ids"),
    ([("_DASH_pathway", "a" * 200)], "_DASH_pathway: not a list of appliance ids"),
    ([("_DASH_pathway", '"a1')], "_DASH_pathway: not a list of appliance ids"),
    ([("_DASH_pathway", '""a1""')], "_DASH_pathway: not a list of appliance ids"),
    ([("_DASH_pathway", "a1,,a2")], "_DASH_pathway: not a list of appliance ids"),
    ([("_DASH_pathway", ",".join(["a"] * 17))], "_DASH_pathway: not a list of appliance ids"),
    ([("_DASH_throughput", "-1")], "_DASH_throughput: must be integers"),
    ([("_DASH_throughput", "1_000")], "_DASH_throughput: must be integers"),
    ([("_DASH_throughput", "1,x")], "_DASH_throughput: must be integers"),
    ([("_DASH_throughput", ",".join(["1"] * 17))], "_DASH_throughput: must be integers"),
    ([("_HLS_throughput", "1e9")], "_HLS_throughput: must be integers"),
    ([("_HLS_throughput", "٣")], "_HLS_throughput: must be integers"),  # a non-ASCII digit int() would take
    ([("_HLS_throughput", "9" * 14)], "_HLS_throughput: must be integers"),
    ([("client", "1" * 65)], "client: not an IP address"),
    ([("client", "10.0.0.1\n")], "client: not an IP address"),
    ([("session", "short")], "session: malformed"),
    ([("session", "é" * 43)], "session: malformed"),
]


@pytest.mark.parametrize("pairs, want", GOOD_QUERIES)
def test_player_query(pairs, want):
    assert parse_player_query(pairs) == want


@pytest.mark.parametrize("pairs, message", HOSTILE_QUERIES)
def test_player_query_hostile(pairs, message):
    with pytest.raises(MessageError) as exc:
        parse_player_query(pairs)
    assert str(exc.value).startswith(message)


# ---------------------------------------------------------------- the /watch pages


def _config(page: str) -> dict:
    text = page.split('<script id=cfg type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in text and ">" not in text
    return json.loads(text)


def test_player_page_config_and_failover_settings():
    page = render_player(TITLE, "dash", libs_present=True, appliance_origins={"https://a1.example": "a1"}, mixed_content=[],
                         client="192.0.2.7")
    cfg = _config(page)
    assert cfg["manifest"] == "/play/sintel.mpd?client=192.0.2.7" and cfg["lib"] == "/watch/lib/dash.all.min.js"
    assert cfg["retries"] == 1 and cfg["retry_ms"] == 200 and cfg["ttfb_ms"] == TTFB_MS
    assert cfg["buffer_s"] == BUFFER_S >= 4
    # a top-bitrate fragment (2 s) still loads at a quarter of its bitrate before the whole-download timeout
    assert cfg["load_ms"] == load_timeout_ms(TITLE) >= 4 * 2.0 * 1000
    assert [e["id"] for e in cfg["encodes"]] == [f.content_id for f in TITLE.video]
    assert "class=warn" not in page
    hls = _config(render_player(TITLE, "hls", libs_present=True, appliance_origins={}, mixed_content=[], client=None))
    assert hls["manifest"] == "/play/sintel.m3u8" and hls["lib"] == "/watch/lib/hls.min.js"


def test_player_page_warns_of_mixed_content_and_missing_libraries():
    page = render_player(TITLE, "hls", libs_present=False, appliance_origins={}, mixed_content=["a1", "b<1>"], client=None)
    assert INSTALL_HINT in page
    assert "mixed content" in page and "a1, b&lt;1&gt;" in page
    with pytest.raises(ValueError, match="player"):
        render_player(TITLE, "vlc", libs_present=True, appliance_origins={}, mixed_content=[], client=None)


def test_values_cannot_close_the_config_script():
    page = render_player(TITLE, "dash", libs_present=True, appliance_origins={"http://x</script><b>": "a1"}, mixed_content=[],
                         client=None)
    assert "</script><b>" not in page
    assert _config(page)["appliances"] == {"http://x</script><b>": "a1"}


def test_index_lists_titles_or_says_why_there_are_none():
    assert 'href="/watch/sintel"' in render_index(titles_of(LADDER))
    assert "manifest_url" in render_index({})
