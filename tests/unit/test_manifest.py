"""The manifest (fill/manifest.py): schema validation, signatures, building, popularity files.

Pure apart from `tmp_path` files for build_manifest/read_popularity.
"""

from __future__ import annotations

import copy
import json
import os
from urllib.parse import quote

import pytest
import xxhash

from fill.manifest import (
    FORMAT,
    VERSION,
    Manifest,
    ManifestError,
    ManifestFile,
    MediaInfo,
    Segment,
    SiteAppliance,
    canonical_bytes,
    check_fresh,
    media_fields,
    parse_manifest,
    sign,
    signature_for,
)
from fill.errors import FillError
from fill.manifest_build import build_manifest, read_popularity
from oca.errors import OcaError

SUM = "0123456789abcdef0123456789abcdef"
KEYS = {"k1": b"first secret key", "k2": b"second secret key"}


def valid_doc() -> dict:
    return {
        "format": "oca-manifest",
        "version": 1,
        "generated_s": 1795677000,
        "files": [
            {
                "id": "a.mp4",
                "size": 123456789,
                "xxh128": SUM,
                "mtime": 1795600000,
                "popularity": 4.2e9,
                "sources": ["https://origin.example/a.mp4", "http://backup.example/media/a.mp4"],
            },
            {
                "id": "b_2.1080p-x.mkv",
                "size": 0,
                "xxh128": "f" * 32,
                "mtime": 0,
                "popularity": 0,
                "sources": ["http://origin.example/b"],
            },
        ],
        "sites": {
            "site-a": [
                {"id": "oca-1", "url": "http://10.0.0.1/", "weight": 1.0},
                {"id": "oca-2", "url": "https://10.0.0.2:8443", "weight": 2},
                {"id": "oca-3", "url": "http://10.0.0.3"},
            ],
            "site-b": [{"id": "oca-1", "url": "http://10.1.0.1", "weight": 0.5}],
        },
    }


def dumps(doc) -> str:
    return json.dumps(doc)


def test_a_valid_manifest_parses():
    m = parse_manifest(dumps(valid_doc()))
    assert isinstance(m, Manifest)
    assert m.version == 1
    assert m.generated_s == 1795677000
    assert m.signed_by is None
    assert m.files[0] == ManifestFile(
        "a.mp4", 123456789, SUM, 1795600000, 4.2e9, ("https://origin.example/a.mp4", "http://backup.example/media/a.mp4")
    )
    assert m.files[1].popularity == 0.0 and isinstance(m.files[1].popularity, float)
    assert m.sites["site-a"] == (
        SiteAppliance("oca-1", "http://10.0.0.1", 1.0),  # trailing slash dropped
        SiteAppliance("oca-2", "https://10.0.0.2:8443", 2.0),
        SiteAppliance("oca-3", "http://10.0.0.3", 1.0),  # weight defaults to 1
    )
    # An appliance id may appear in two sites; it is unique within each.
    assert m.sites["site-b"] == (SiteAppliance("oca-1", "http://10.1.0.1", 0.5),)
    assert set(m.by_id()) == {"a.mp4", "b_2.1080p-x.mkv"}


def test_bytes_and_minimal_documents_parse():
    minimal = {"format": FORMAT, "version": VERSION, "files": []}
    m = parse_manifest(dumps(minimal).encode())
    assert m.files == () and dict(m.sites) == {} and m.generated_s is None


# --- every error names the entry and the field ----------------------------------------


def drop(key):
    def f(d, _key=key):
        del d["files"][0][_key]

    return f


def set_file(key, value, i=0):
    def f(d):
        d["files"][i][key] = value

    return f


def set_top(key, value):
    def f(d):
        d[key] = value

    return f


def set_member(key, value, site="site-a", j=0):
    def f(d):
        d["sites"][site][j][key] = value

    return f


def _dup_file(d):
    d["files"][1]["id"] = "a.mp4"


def _dup_appliance(d):
    d["sites"]["site-a"][2]["id"] = "oca-1"


def _drop_member_id(d):
    del d["sites"]["site-a"][0]["id"]


def _drop_member_url(d):
    del d["sites"]["site-a"][1]["url"]


def _drop_top(key):
    def f(d):
        del d[key]

    return f


A = "files[0] (a.mp4)"  # how an entry is named once its id is known
ERROR_CASES = [
    # top level
    ("unknown top-level field", set_top("extra", 1), "extra: unknown field"),
    ("format missing", _drop_top("format"), "format: must be 'oca-manifest'"),
    ("wrong format", set_top("format", "oca-manifest-2"), "format: must be 'oca-manifest'"),
    ("version missing", _drop_top("version"), "version: must be an integer"),
    ("version string", set_top("version", "1"), "version: must be an integer"),
    ("version bool", set_top("version", True), "version: must be an integer"),
    ("version float", set_top("version", 1.0), "version: must be an integer"),
    ("version from the future", set_top("version", 2), "version: 2 is not supported"),
    ("version zero", set_top("version", 0), "version: 0 is not supported"),
    ("generated_s float", set_top("generated_s", 1.5), "generated_s: must be a non-negative integer"),
    ("generated_s string", set_top("generated_s", "now"), "generated_s: must be a non-negative integer"),
    ("generated_s negative", set_top("generated_s", -1), "generated_s: must be a non-negative integer"),
    ("generated_s huge", set_top("generated_s", 10**30), "generated_s: must be a non-negative integer"),
    ("generated_s bool", set_top("generated_s", True), "generated_s:"),
    ("files missing", _drop_top("files"), "files: must be a list"),
    ("files object", set_top("files", {}), "files: must be a list"),
    # one file: missing fields
    *[(f"missing {k}", drop(k), f"files[0].{k}: required field is missing") for k in ("id", "size", "xxh128", "mtime", "popularity", "sources")],
    ("file not an object", set_top("files", [["a.mp4"]]), "files[0]: must be an object"),
    ("unknown file field", set_file("colour", "red"), "files[0].colour: unknown field"),
    ("typo of a field", lambda d: d["files"][1].update(popularty=1), "files[1].popularty: unknown field"),
    ("forecast unknown", set_file("forecast", "oracle"), f"{A}.forecast: must be one of 'title', 'class'"),
    ("forecast not a string", set_file("forecast", 1), f"{A}.forecast:"),
    ("forecast null", set_file("forecast", None), f"{A}.forecast:"),
    # ids
    ("invalid id", set_file("id", "../etc/passwd"), "files[0].id: '../etc/passwd' is not a valid content id"),
    ("id with slash", set_file("id", "a/b"), "files[0].id:"),
    ("empty id", set_file("id", ""), "files[0].id:"),
    ("id not a string", set_file("id", 7), "files[0].id: '7' is not a valid content id"),
    ("duplicate id", _dup_file, "files[1].id: 'a.mp4' is listed twice"),
    # sizes and numbers
    ("negative size", set_file("size", -1), f"{A}.size: must be an integer from 0 to"),
    ("huge size", set_file("size", 10**40), f"{A}.size: must be an integer from 0 to"),
    ("non-ASCII id", set_file("id", "tïtle.mp4"), "files[0].id: 'tïtle.mp4' is not a valid content id"),
    ("id too long", set_file("id", "a" * 5000), "files[0].id:"),
    ("size as string", set_file("size", "10"), f"{A}.size:"),
    ("size float", set_file("size", 10.0), f"{A}.size:"),
    ("size bool", set_file("size", True), f"{A}.size:"),
    ("size null", set_file("size", None), f"{A}.size:"),
    ("checksum upper case", set_file("xxh128", SUM.upper()), f"{A}.xxh128: must be 32 lowercase hex digits"),
    ("checksum short", set_file("xxh128", SUM[:-1]), f"{A}.xxh128:"),
    ("checksum long", set_file("xxh128", SUM + "0"), f"{A}.xxh128:"),
    ("checksum not hex", set_file("xxh128", "g" * 32), f"{A}.xxh128:"),
    ("checksum int", set_file("xxh128", 12), f"{A}.xxh128:"),
    ("negative mtime", set_file("mtime", -1), f"{A}.mtime: must be a non-negative integer"),
    ("huge mtime", set_file("mtime", 10**30), f"{A}.mtime:"),
    ("mtime float", set_file("mtime", 1.5), f"{A}.mtime:"),
    ("mtime bool", set_file("mtime", False), f"{A}.mtime:"),
    ("negative popularity", set_file("popularity", -0.1), f"{A}.popularity: must be a finite number >= 0"),
    ("popularity string", set_file("popularity", "1"), f"{A}.popularity:"),
    ("popularity bool", set_file("popularity", True), f"{A}.popularity:"),
    ("popularity null", set_file("popularity", None), f"{A}.popularity:"),
    ("popularity NaN", set_file("popularity", float("nan")), f"{A}.popularity:"),
    ("popularity inf", set_file("popularity", float("inf")), f"{A}.popularity:"),
    ("popularity -inf", set_file("popularity", float("-inf")), f"{A}.popularity:"),
    # sources
    ("no sources", set_file("sources", []), f"{A}.sources: must be a non-empty list of URLs"),
    ("sources a string", set_file("sources", "https://origin.example/a.mp4"), f"{A}.sources: must be a non-empty list"),
    ("ftp source", set_file("sources", ["ftp://origin.example/a.mp4"]), f"{A}.sources[0]: 'ftp://origin.example/a.mp4' is not an http(s) URL"),
    ("file source", set_file("sources", ["file:///etc/passwd"]), f"{A}.sources[0]:"),
    ("no host", set_file("sources", ["http:///a.mp4"]), f"{A}.sources[0]:"),
    ("relative source", set_file("sources", ["/a.mp4"]), f"{A}.sources[0]:"),
    ("second source bad", set_file("sources", ["http://o/a", "gopher://o/a"]), f"{A}.sources[1]:"),
    ("source not a string", set_file("sources", [5]), f"{A}.sources[0]: must be a URL string"),
    ("error in second file", set_file("size", -5, i=1), "files[1] (b_2.1080p-x.mkv).size:"),
    # sites
    ("sites a list", set_top("sites", []), "sites: must be an object"),
    ("bad site name", lambda d: d["sites"].update({"bad site": [{"id": "x", "url": "http://x"}]}), "sites.bad site: 'bad site' is not a valid site name"),
    ("empty site", lambda d: d["sites"].update({"site-c": []}), "sites.site-c: must be a non-empty list"),
    ("site an object", lambda d: d["sites"].update({"site-c": {"id": "x"}}), "sites.site-c: must be a non-empty list"),
    ("member not an object", lambda d: d["sites"].update({"site-c": ["oca-1"]}), "sites.site-c[0]: must be an object"),
    ("unknown member field", set_member("port", 80), "sites.site-a[0].port: unknown field"),
    ("member id missing", _drop_member_id, "sites.site-a[0].id: must be a valid appliance id"),
    ("member id invalid", set_member("id", "oca 1"), "sites.site-a[0].id:"),
    ("member id not a string", set_member("id", 1), "sites.site-a[0].id:"),
    ("duplicate appliance id", _dup_appliance, "sites.site-a[2].id: 'oca-1' is listed twice in the site"),
    ("member url missing", _drop_member_url, "sites.site-a[1].url: must be a URL string"),
    ("member url scheme", set_member("url", "tcp://10.0.0.1"), "sites.site-a[0].url: 'tcp://10.0.0.1' is not an http(s) URL"),
    ("weight zero", set_member("weight", 0), "sites.site-a[0].weight: must be a number greater than 0"),
    ("weight negative", set_member("weight", -1.0), "sites.site-a[0].weight:"),
    ("weight string", set_member("weight", "2"), "sites.site-a[0].weight:"),
    ("weight bool", set_member("weight", True), "sites.site-a[0].weight:"),
    ("weight null", set_member("weight", None), "sites.site-a[0].weight:"),
    ("weight NaN", set_member("weight", float("nan")), "sites.site-a[0].weight:"),
    # An infinite weight would take every file.
    ("weight inf", set_member("weight", float("inf"), j=1), "sites.site-a[1].weight:"),
    # signature shape
    ("signature a string", set_top("signature", "abc"), "signature: must be"),
    ("signature missing hmac", set_top("signature", {"key_id": "k1"}), "signature: must be"),
    ("signature extra key", set_top("signature", {"key_id": "k1", "hmac": "x", "alg": "none"}), "signature: must be"),
    ("signature hmac not a string", set_top("signature", {"key_id": "k1", "hmac": 5}), "signature: must be"),
]


@pytest.mark.parametrize("mutate,message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_name_the_entry_and_field(mutate, message):
    doc = valid_doc()
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        parse_manifest(dumps(doc))
    assert message in str(info.value)
    assert isinstance(info.value, OcaError)


@pytest.mark.parametrize(
    "raw,message",
    [
        ("{", "manifest is not valid JSON"),
        (b"\xff\xfe\x00", "manifest is not valid JSON"),
        ("", "manifest is not valid JSON"),
        ("[]", "manifest: must be a JSON object"),
        ('"oca-manifest"', "manifest: must be a JSON object"),
        ('{"format": "oca-manifest", "version": 1, "files": [{"id": "a", "size": 1, "xxh128": "' + SUM
         + '", "mtime": 1, "popularity": NaN, "sources": ["http://o/a"]}]}', "files[0] (a).popularity:"),
        ('{"format": "oca-manifest", "version": 1, "files": [{"id": "a", "size": 1, "xxh128": "' + SUM
         + '", "mtime": 1, "popularity": Infinity, "sources": ["http://o/a"]}]}', "files[0] (a).popularity:"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"format": "oca-manifest", "version": 1, "files": [], "sites": {"s": [{"id": "x", "url": "http://x", "weight": NaN}]}}',
         "sites.s[0].weight:"),
    ],
    ids=["truncated", "not utf-8", "empty", "a list", "a string", "NaN literal", "Infinity literal", "deep nesting", "NaN weight"],
)
def test_raw_text_errors(raw, message):
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert message in str(info.value)


# --- media fields (title, kind .. segments) ------------------------------------------


def media_doc() -> dict:
    """valid_doc with a video file (a.mp4), an audio file (b...) and a title on each."""
    doc = valid_doc()
    doc["files"][0].update(
        title="a",
        kind="video",
        codecs="avc1.64001f",
        bandwidth=2_400_000,
        width=1280,
        height=720,
        duration_s=4.0,
        init_range=[0, 999],
        index_range=[1000, 1099],
        segments=[[1100, 50_000, 2.0], [50_001, 123456788, 2]],
    )
    doc["files"][1].update(
        size=10_000,
        title="a",
        kind="audio",
        codecs="mp4a.40.2",
        bandwidth=128_000,
        duration_s=2.5,
        init_range=[0, 499],
        index_range=[600, 699],
        segments=[[800, 9999, 2.5]],
    )
    return doc


def test_media_fields_parse_into_frozen_values():
    m = parse_manifest(dumps(media_doc()))
    video, audio = m.files
    assert video.title == "a" and audio.title == "a"
    assert video.media == MediaInfo(
        "video", "avc1.64001f", 2_400_000, 1280, 720, 4.0, (0, 999), (1000, 1099),
        (Segment(1100, 50_000, 2.0), Segment(50_001, 123456788, 2.0)),
    )
    assert isinstance(video.media.segments[1].duration_s, float)
    assert audio.media.kind == "audio" and audio.media.width is None and audio.media.height is None
    assert audio.media.segments == (Segment(800, 9999, 2.5),)
    # What media_fields writes is what parse_manifest reads.
    doc = valid_doc()
    doc["files"][0].update(media_fields(video.media))
    assert parse_manifest(dumps(doc)).files[0].media == video.media
    with pytest.raises(AttributeError):
        video.media.kind = "audio"  # frozen


def test_without_media_fields_title_and_media_are_none():
    m = parse_manifest(dumps(valid_doc()))
    assert all(f.title is None and f.media is None for f in m.files)
    doc = valid_doc()
    doc["files"][0]["title"] = "alone"  # a title needs no media fields
    f = parse_manifest(dumps(doc)).files[0]
    assert (f.title, f.media) == ("alone", None)


def test_media_fields_are_covered_by_the_signature():
    signed = sign(media_doc(), "k1", KEYS["k1"])
    assert parse_manifest(dumps(signed), keys=KEYS, require_signature=True).files[0].media is not None
    signed["files"][0]["segments"][0][2] = 2.5
    with pytest.raises(ManifestError, match="signature.hmac"):
        parse_manifest(dumps(signed), keys=KEYS, require_signature=True)


def set_seg(k, value, i=0):
    def f(d):
        d["files"][i]["segments"][k] = value

    return f


def drop_key(key, i=0):
    def f(d):
        del d["files"][i][key]

    return f


def _only(key):
    """Keep one media field of the video file and drop the others."""

    def f(d):
        for k in ("kind", "codecs", "bandwidth", "width", "height", "duration_s", "init_range", "index_range", "segments"):
            if k != key:
                del d["files"][0][k]

    return f


B = "files[1] (b_2.1080p-x.mkv)"
MEDIA_ERROR_CASES = [
    ("title invalid", set_file("title", "../x"), f"{A}.title: '../x' is not a valid title"),
    ("title empty", set_file("title", ""), f"{A}.title:"),
    ("title not a string", set_file("title", 5), f"{A}.title:"),
    ("title with space", set_file("title", "a b"), f"{A}.title:"),
    ("kind unknown", set_file("kind", "text"), f"{A}.kind: must be one of video, audio"),
    ("kind missing with others", drop_key("kind"), f"{A}.kind: must be one of"),
    ("kind alone is not enough", _only("kind"), f"{A}.codecs: required with the other media fields"),
    ("codecs alone", _only("codecs"), f"{A}.kind: must be one of"),
    ("segments alone", _only("segments"), f"{A}.kind: must be one of"),
    *[(f"missing {k}", drop(k), f"files[0].{k}: required field is missing") for k in ("id", "size", "xxh128", "mtime", "popularity", "sources")],
    ("file not an object", set_top("files", [["a.mp4"]]), "files[0]: must be an object"),
    ("unknown file field", set_file("colour", "red"), "files[0].colour: unknown field"),
    ("typo of a field", lambda d: d["files"][1].update(popularty=1), "files[1].popularty: unknown field"),
    # ids
    ("invalid id", set_file("id", "../etc/passwd"), "files[0].id: '../etc/passwd' is not a valid content id"),
    ("id with slash", set_file("id", "a/b"), "files[0].id:"),
    ("empty id", set_file("id", ""), "files[0].id:"),
    ("id not a string", set_file("id", 7), "files[0].id: '7' is not a valid content id"),
    ("duplicate id", _dup_file, "files[1].id: 'a.mp4' is listed twice"),
    # sizes and numbers
    ("negative size", set_file("size", -1), f"{A}.size: must be an integer from 0 to"),
    ("huge size", set_file("size", 10**40), f"{A}.size: must be an integer from 0 to"),
    ("non-ASCII id", set_file("id", "tïtle.mp4"), "files[0].id: 'tïtle.mp4' is not a valid content id"),
    ("id too long", set_file("id", "a" * 5000), "files[0].id:"),
    ("size as string", set_file("size", "10"), f"{A}.size:"),
    ("size float", set_file("size", 10.0), f"{A}.size:"),
    ("size bool", set_file("size", True), f"{A}.size:"),
    ("size null", set_file("size", None), f"{A}.size:"),
    ("checksum upper case", set_file("xxh128", SUM.upper()), f"{A}.xxh128: must be 32 lowercase hex digits"),
    ("checksum short", set_file("xxh128", SUM[:-1]), f"{A}.xxh128:"),
    ("checksum long", set_file("xxh128", SUM + "0"), f"{A}.xxh128:"),
    ("checksum not hex", set_file("xxh128", "g" * 32), f"{A}.xxh128:"),
    ("checksum int", set_file("xxh128", 12), f"{A}.xxh128:"),
    ("negative mtime", set_file("mtime", -1), f"{A}.mtime: must be a non-negative integer"),
    ("huge mtime", set_file("mtime", 10**30), f"{A}.mtime:"),
    ("mtime float", set_file("mtime", 1.5), f"{A}.mtime:"),
    ("mtime bool", set_file("mtime", False), f"{A}.mtime:"),
    ("negative popularity", set_file("popularity", -0.1), f"{A}.popularity: must be a finite number >= 0"),
    ("popularity string", set_file("popularity", "1"), f"{A}.popularity:"),
    ("popularity bool", set_file("popularity", True), f"{A}.popularity:"),
    ("popularity null", set_file("popularity", None), f"{A}.popularity:"),
    ("popularity NaN", set_file("popularity", float("nan")), f"{A}.popularity:"),
    ("popularity inf", set_file("popularity", float("inf")), f"{A}.popularity:"),
    ("popularity -inf", set_file("popularity", float("-inf")), f"{A}.popularity:"),
    # sources
    ("no sources", set_file("sources", []), f"{A}.sources: must be a non-empty list of URLs"),
    ("sources a string", set_file("sources", "https://origin.example/a.mp4"), f"{A}.sources: must be a non-empty list"),
    ("ftp source", set_file("sources", ["ftp://origin.example/a.mp4"]), f"{A}.sources[0]: 'ftp://origin.example/a.mp4' is not an http(s) URL"),
    ("file source", set_file("sources", ["file:///etc/passwd"]), f"{A}.sources[0]:"),
    ("no host", set_file("sources", ["http:///a.mp4"]), f"{A}.sources[0]:"),
    ("relative source", set_file("sources", ["/a.mp4"]), f"{A}.sources[0]:"),
    ("second source bad", set_file("sources", ["http://o/a", "gopher://o/a"]), f"{A}.sources[1]:"),
    ("source not a string", set_file("sources", [5]), f"{A}.sources[0]: must be a URL string"),
    ("error in second file", set_file("size", -5, i=1), "files[1] (b_2.1080p-x.mkv).size:"),
    # sites
    ("sites a list", set_top("sites", []), "sites: must be an object"),
    ("bad site name", lambda d: d["sites"].update({"bad site": [{"id": "x", "url": "http://x"}]}), "sites.bad site: 'bad site' is not a valid site name"),
    ("empty site", lambda d: d["sites"].update({"site-c": []}), "sites.site-c: must be a non-empty list"),
    ("site an object", lambda d: d["sites"].update({"site-c": {"id": "x"}}), "sites.site-c: must be a non-empty list"),
    ("member not an object", lambda d: d["sites"].update({"site-c": ["oca-1"]}), "sites.site-c[0]: must be an object"),
    ("unknown member field", set_member("port", 80), "sites.site-a[0].port: unknown field"),
    ("member id missing", _drop_member_id, "sites.site-a[0].id: must be a valid appliance id"),
    ("member id invalid", set_member("id", "oca 1"), "sites.site-a[0].id:"),
    ("member id not a string", set_member("id", 1), "sites.site-a[0].id:"),
    ("duplicate appliance id", _dup_appliance, "sites.site-a[2].id: 'oca-1' is listed twice in the site"),
    ("member url missing", _drop_member_url, "sites.site-a[1].url: must be a URL string"),
    ("member url scheme", set_member("url", "tcp://10.0.0.1"), "sites.site-a[0].url: 'tcp://10.0.0.1' is not an http(s) URL"),
    ("weight zero", set_member("weight", 0), "sites.site-a[0].weight: must be a number greater than 0"),
    ("weight negative", set_member("weight", -1.0), "sites.site-a[0].weight:"),
    ("weight string", set_member("weight", "2"), "sites.site-a[0].weight:"),
    ("weight bool", set_member("weight", True), "sites.site-a[0].weight:"),
    ("weight null", set_member("weight", None), "sites.site-a[0].weight:"),
    ("weight NaN", set_member("weight", float("nan")), "sites.site-a[0].weight:"),
    # An infinite weight would take every file.
    ("weight inf", set_member("weight", float("inf"), j=1), "sites.site-a[1].weight:"),
    # signature shape
    ("signature a string", set_top("signature", "abc"), "signature: must be"),
    ("signature missing hmac", set_top("signature", {"key_id": "k1"}), "signature: must be"),
    ("signature extra key", set_top("signature", {"key_id": "k1", "hmac": "x", "alg": "none"}), "signature: must be"),
    ("signature hmac not a string", set_top("signature", {"key_id": "k1", "hmac": 5}), "signature: must be"),
]


@pytest.mark.parametrize("mutate,message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_name_the_entry_and_field(mutate, message):
    doc = valid_doc()
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        parse_manifest(dumps(doc))
    assert message in str(info.value)
    assert isinstance(info.value, OcaError)


@pytest.mark.parametrize(
    "raw,message",
    [
        ("{", "manifest is not valid JSON"),
        (b"\xff\xfe\x00", "manifest is not valid JSON"),
        ("", "manifest is not valid JSON"),
        ("[]", "manifest: must be a JSON object"),
        ('"oca-manifest"', "manifest: must be a JSON object"),
        ('{"format": "oca-manifest", "version": 1, "files": [{"id": "a", "size": 1, "xxh128": "' + SUM
         + '", "mtime": 1, "popularity": NaN, "sources": ["http://o/a"]}]}', "files[0] (a).popularity:"),
        ('{"format": "oca-manifest", "version": 1, "files": [{"id": "a", "size": 1, "xxh128": "' + SUM
         + '", "mtime": 1, "popularity": Infinity, "sources": ["http://o/a"]}]}', "files[0] (a).popularity:"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"format": "oca-manifest", "version": 1, "files": [], "sites": {"s": [{"id": "x", "url": "http://x", "weight": NaN}]}}',
         "sites.s[0].weight:"),
    ],
    ids=["truncated", "not utf-8", "empty", "a list", "a string", "NaN literal", "Infinity literal", "deep nesting", "NaN weight"],
)
def test_raw_text_errors(raw, message):
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw)
    assert message in str(info.value)


# --- media fields (title, kind .. segments) ------------------------------------------


def media_doc() -> dict:
    """valid_doc with a video file (a.mp4), an audio file (b...) and a title on each."""
    doc = valid_doc()
    doc["files"][0].update(
        title="a",
        kind="video",
        codecs="avc1.64001f",
        bandwidth=2_400_000,
        width=1280,
        height=720,
        duration_s=4.0,
        init_range=[0, 999],
        index_range=[1000, 1099],
        segments=[[1100, 50_000, 2.0], [50_001, 123456788, 2]],
    )
    doc["files"][1].update(
        size=10_000,
        title="a",
        kind="audio",
        codecs="mp4a.40.2",
        bandwidth=128_000,
        duration_s=2.5,
        init_range=[0, 499],
        index_range=[600, 699],
        segments=[[800, 9999, 2.5]],
    )
    return doc


def test_media_fields_parse_into_frozen_values():
    m = parse_manifest(dumps(media_doc()))
    video, audio = m.files
    assert video.title == "a" and audio.title == "a"
    assert video.media == MediaInfo(
        "video", "avc1.64001f", 2_400_000, 1280, 720, 4.0, (0, 999), (1000, 1099),
        (Segment(1100, 50_000, 2.0), Segment(50_001, 123456788, 2.0)),
    )
    assert isinstance(video.media.segments[1].duration_s, float)
    assert audio.media.kind == "audio" and audio.media.width is None and audio.media.height is None
    assert audio.media.segments == (Segment(800, 9999, 2.5),)
    # What media_fields writes is what parse_manifest reads.
    doc = valid_doc()
    doc["files"][0].update(media_fields(video.media))
    assert parse_manifest(dumps(doc)).files[0].media == video.media
    with pytest.raises(AttributeError):
        video.media.kind = "audio"  # frozen


def test_without_media_fields_title_and_media_are_none():
    m = parse_manifest(dumps(valid_doc()))
    assert all(f.title is None and f.media is None for f in m.files)
    doc = valid_doc()
    doc["files"][0]["title"] = "alone"  # a title needs no media fields
    f = parse_manifest(dumps(doc)).files[0]
    assert (f.title, f.media) == ("alone", None)


def test_media_fields_are_covered_by_the_signature():
    signed = sign(media_doc(), "k1", KEYS["k1"])
    assert parse_manifest(dumps(signed), keys=KEYS, require_signature=True).files[0].media is not None
    signed["files"][0]["segments"][0][2] = 2.5
    with pytest.raises(ManifestError, match="signature.hmac"):
        parse_manifest(dumps(signed), keys=KEYS, require_signature=True)


def set_seg(k, value, i=0):
    def f(d):
        d["files"][i]["segments"][k] = value

    return f


def drop_key(key, i=0):
    def f(d):
        del d["files"][i][key]

    return f


def _only(key):
    """Keep one media field of the video file and drop the others."""

    def f(d):
        for k in ("kind", "codecs", "bandwidth", "width", "height", "duration_s", "init_range", "index_range", "segments"):
            if k != key:
                del d["files"][0][k]

    return f


B = "files[1] (b_2.1080p-x.mkv)"
MEDIA_ERROR_CASES = [
    ("title invalid", set_file("title", "../x"), f"{A}.title: '../x' is not a valid title"),
    ("title empty", set_file("title", ""), f"{A}.title:"),
    ("title not a string", set_file("title", 5), f"{A}.title:"),
    ("title with space", set_file("title", "a b"), f"{A}.title:"),
    ("kind unknown", set_file("kind", "text"), f"{A}.kind: must be one of video, audio"),
    ("kind missing with others", drop_key("kind"), f"{A}.kind: must be one of"),
    ("kind alone is not enough", lambda d: d["files"][0].update(
        {k: d["files"][0].pop(k) for k in ()} ) or [d["files"][0].pop(k) for k in
        ("codecs", "bandwidth", "width", "height", "duration_s", "init_range", "index_range", "segments")],
        f"{A}.codecs: required with the other media fields"),
    ("codecs alone", lambda d: d["files"][1].update(codecs="x") if False else d["files"].__setitem__(1, {
        k: v for k, v in valid_doc()["files"][1].items()} | {"codecs": "mp4a.40.2"}),
        f"{B}.kind: must be one of"),
    *[(f"missing {k}", drop_key(k), f"{A}.{k}: required with the other media fields")
      for k in ("codecs", "bandwidth", "duration_s", "init_range", "index_range", "segments")],
    ("video without width", drop_key("width"), f"{A}.width: required for video"),
    ("video without height", drop_key("height"), f"{A}.height: required for video"),
    ("audio with width", set_file("width", 10, i=1), f"{B}.width: only video has a width"),
    ("audio with height", set_file("height", 10, i=1), f"{B}.height: only video has a height"),
    ("width zero", set_file("width", 0), f"{A}.width: must be an integer of pixels"),
    ("width huge", set_file("width", 70000), f"{A}.width:"),
    ("width float", set_file("width", 1280.0), f"{A}.width:"),
    ("height bool", set_file("height", True), f"{A}.height:"),
    ("codecs empty", set_file("codecs", ""), f"{A}.codecs: must be an RFC 6381"),
    ("codecs with quote", set_file("codecs", 'avc1"><x'), f"{A}.codecs:"),
    ("codecs with newline", set_file("codecs", "avc1.64001f\n#EXT"), f"{A}.codecs:"),
    ("codecs too long", set_file("codecs", "a" * 200), f"{A}.codecs:"),
    ("codecs not a string", set_file("codecs", ["avc1"]), f"{A}.codecs:"),
    ("bandwidth zero", set_file("bandwidth", 0), f"{A}.bandwidth: must be an integer of bits/s"),
    ("bandwidth float", set_file("bandwidth", 1.5e6), f"{A}.bandwidth:"),
    ("bandwidth huge", set_file("bandwidth", 10**20), f"{A}.bandwidth:"),
    ("bandwidth string", set_file("bandwidth", "1000"), f"{A}.bandwidth:"),
    ("duration zero", set_file("duration_s", 0), f"{A}.duration_s: must be a number of seconds > 0"),
    ("duration negative", set_file("duration_s", -4.0), f"{A}.duration_s:"),
    ("duration NaN", set_file("duration_s", float("nan")), f"{A}.duration_s:"),
    ("duration inf", set_file("duration_s", float("inf")), f"{A}.duration_s:"),
    ("duration string", set_file("duration_s", "4"), f"{A}.duration_s:"),
    ("init range reversed", set_file("init_range", [999, 0]), f"{A}.init_range: [999, 0] is not a byte range inside"),
    ("init range negative", set_file("init_range", [-1, 10]), f"{A}.init_range:"),
    ("init range past the end", set_file("init_range", [0, 10_000], i=1), f"{B}.init_range: [0, 10000] is not a byte range inside the file's 10000 bytes"),
    ("init range three items", set_file("init_range", [0, 1, 2]), f"{A}.init_range: must be [first, last]"),
    ("init range floats", set_file("init_range", [0.0, 999.0]), f"{A}.init_range: must be [first, last]"),
    ("init range a string", set_file("init_range", "0-999"), f"{A}.init_range: must be [first, last]"),
    ("index range bools", set_file("index_range", [True, True]), f"{A}.index_range: must be [first, last]"),
    ("index overlaps init", set_file("index_range", [999, 1099]), f"{A}.index_range: overlaps init_range"),
    ("index inside init", set_file("index_range", [10, 20]), f"{A}.index_range: overlaps init_range"),
    ("segments empty", set_file("segments", []), f"{A}.segments: must be a non-empty list"),
    ("segments an object", set_file("segments", {"0": [1100, 2000, 2.0]}), f"{A}.segments: must be a non-empty list"),
    ("too many segments", set_file("segments", [0] * ((1 << 20) + 1)), f"{A}.segments: 1048577 fragments; the limit is"),
    ("segment not a list", set_seg(1, {"first": 50_001}), f"{A}.segments[1]: must be [first, last, duration_s]"),
    ("segment two items", set_seg(1, [50_001, 60_000]), f"{A}.segments[1]: must be [first, last, duration_s]"),
    ("segment past the end", set_seg(1, [50_001, 123456789, 2.0]), f"{A}.segments[1]: [50001, 123456789] is not a byte range"),
    ("segment reversed", set_seg(1, [50_001, 50_000, 2.0]), f"{A}.segments[1]: [50001, 50000]"),
    ("segment gap", set_seg(1, [50_002, 60_000, 2.0]), f"{A}.segments[1]: starts at byte 50002; fragments are contiguous, so it must start at 50001"),
    ("segment overlap", set_seg(1, [50_000, 60_000, 2.0]), f"{A}.segments[1]: starts at byte 50000"),
    ("first segment inside the index", set_seg(0, [1050, 50_000, 2.0]), f"{A}.segments[0]: starts at byte 1050, inside the init segment or the index"),
    ("first segment inside init", set_seg(0, [0, 50_000, 2.0]), f"{A}.segments[0]: starts at byte 0"),
    ("segment duration zero", set_seg(0, [1100, 50_000, 0]), f"{A}.segments[0][2] (duration_s): must be a number of seconds > 0"),
    ("segment duration NaN", set_seg(1, [50_001, 123456788, float("nan")]), f"{A}.segments[1][2] (duration_s):"),
    ("segment duration string", set_seg(0, [1100, 50_000, "2"]), f"{A}.segments[0][2] (duration_s):"),
    ("segment offsets floats", set_seg(0, [1100.0, 50_000, 2.0]), f"{A}.segments[0]: must be [first, last]"),
    ("segments on an empty file", lambda d: d["files"][1].update(size=0), f"{B}.init_range: [0, 499] is not a byte range inside the file's 0 bytes"),
    ("unknown media-ish field", set_file("framerate", 25), "files[0].framerate: unknown field"),
]


@pytest.mark.parametrize("mutate,message", [c[1:] for c in MEDIA_ERROR_CASES], ids=[c[0] for c in MEDIA_ERROR_CASES])
def test_media_errors_name_the_entry_and_field(mutate, message):
    doc = media_doc()
    parse_manifest(dumps(doc))  # valid before the change
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        parse_manifest(dumps(doc))
    assert message in str(info.value)


# --- signatures -------------------------------------------------------------------------


def test_sign_and_verify():
    signed = sign(valid_doc(), "k1", KEYS["k1"])
    assert signed["signature"]["key_id"] == "k1"
    mac = signed["signature"]["hmac"]
    assert len(mac) == 43 and "=" not in mac and "+" not in mac and "/" not in mac  # base64url, no padding
    m = parse_manifest(dumps(signed), keys=KEYS, require_signature=True)
    assert m.signed_by == "k1"
    unsigned = parse_manifest(dumps(valid_doc()))
    assert (m.files, dict(m.sites), m.generated_s) == (unsigned.files, dict(unsigned.sites), unsigned.generated_s)


def test_the_signature_covers_the_canonical_form_not_the_bytes():
    signed = sign(valid_doc(), "k2", KEYS["k2"])
    pretty = json.dumps(signed, indent=4, sort_keys=False)
    reordered = json.dumps(dict(reversed(list(signed.items()))))
    for raw in (pretty, reordered):
        assert parse_manifest(raw, keys=KEYS, require_signature=True).signed_by == "k2"
    # canonical_bytes: sorted keys, no spaces, ASCII, without the signature.
    canon = canonical_bytes(signed)
    assert b"signature" not in canon and b" " not in canon
    assert canon == canonical_bytes(valid_doc())
    assert signature_for(valid_doc(), KEYS["k2"]) == signed["signature"]["hmac"]


def test_signing_again_replaces_the_old_signature():
    once = sign(valid_doc(), "k1", KEYS["k1"])
    twice = sign(once, "k2", KEYS["k2"])
    assert twice["signature"]["key_id"] == "k2"
    assert parse_manifest(dumps(twice), keys=KEYS, require_signature=True).signed_by == "k2"


def _tamper(path, value):
    def f(d):
        target = d
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return f


TAMPER_CASES = [
    ("size", _tamper(("files", 0, "size"), 123456790)),
    ("checksum", _tamper(("files", 0, "xxh128"), "f" * 32)),
    ("mtime", _tamper(("files", 0, "mtime"), 1795600001)),
    ("popularity", _tamper(("files", 0, "popularity"), 4.3e9)),
    ("popularity int for float", _tamper(("files", 1, "popularity"), 0.0)),
    ("source", _tamper(("files", 0, "sources", 0), "https://evil.example/a.mp4")),
    ("id", _tamper(("files", 0, "id"), "z.mp4")),
    ("file dropped", lambda d: d["files"].pop()),
    ("file added", lambda d: d["files"].append(dict(d["files"][0], id="extra.mp4"))),
    ("generated_s", _tamper(("generated_s",), 1795677001)),
    ("generated_s removed", lambda d: d.pop("generated_s")),
    ("appliance weight", _tamper(("sites", "site-a", 0, "weight"), 100.0)),
    ("appliance url", _tamper(("sites", "site-a", 1, "url"), "http://10.6.6.6")),
    ("appliance added", lambda d: d["sites"]["site-b"].append({"id": "oca-9", "url": "http://10.9.9.9"})),
    ("site removed", lambda d: d["sites"].pop("site-b")),
    ("hmac", _tamper(("signature", "hmac"), "A" * 43)),
    ("hmac truncated", lambda d: d["signature"].update(hmac=d["signature"]["hmac"][:-1])),
    ("other known key", _tamper(("signature", "key_id"), "k2")),
]


@pytest.mark.parametrize("mutate", [c[1] for c in TAMPER_CASES], ids=[c[0] for c in TAMPER_CASES])
@pytest.mark.parametrize("required", [True, False])
def test_tampering_with_any_field_is_refused(mutate, required):
    signed = sign(valid_doc(), "k1", KEYS["k1"])
    assert parse_manifest(dumps(signed), keys=KEYS, require_signature=required).signed_by == "k1"
    doc = copy.deepcopy(signed)
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        parse_manifest(dumps(doc), keys=KEYS, require_signature=required)
    assert "signature.hmac: does not match" in str(info.value)


def test_wrong_secret_is_refused():
    signed = sign(valid_doc(), "k1", b"not the configured secret")
    with pytest.raises(ManifestError, match=r"signature\.hmac"):
        parse_manifest(dumps(signed), keys=KEYS)


def test_unsigned_when_required_is_refused():
    with pytest.raises(ManifestError, match="signature: the manifest is not signed"):
        parse_manifest(dumps(valid_doc()), keys=KEYS, require_signature=True)
    with pytest.raises(ManifestError, match="not signed"):
        parse_manifest(dumps(valid_doc()), require_signature=True)


def test_unsigned_when_not_required_is_accepted_as_unsigned():
    assert parse_manifest(dumps(valid_doc()), keys=KEYS).signed_by is None


def test_unknown_key_id_is_refused_when_signatures_are_required():
    signed = sign(valid_doc(), "k9", b"a key we do not have")
    with pytest.raises(ManifestError, match=r"signature\.key_id: 'k9' is not one of signing\.keys"):
        parse_manifest(dumps(signed), keys=KEYS, require_signature=True)
    with pytest.raises(ManifestError, match=r"signature\.key_id"):
        parse_manifest(dumps(signed), require_signature=True)
    # Not required: an unverifiable signature counts as none.
    assert parse_manifest(dumps(signed), keys=KEYS).signed_by is None


def test_a_signed_but_malformed_manifest_is_still_refused():
    doc = valid_doc()
    doc["files"][0]["size"] = -1
    signed = sign(doc, "k1", KEYS["k1"])
    with pytest.raises(ManifestError, match=r"files\[0\] \(a\.mp4\)\.size"):
        parse_manifest(dumps(signed), keys=KEYS, require_signature=True)


# --- build_manifest ---------------------------------------------------------------------


def write(path, data: bytes, mtime: int | None = None):
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_build_then_parse_round_trip(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    blobs = {"a.mp4": os.urandom(5000), "b-2_x.1080p.mkv": b"hello", "empty.bin": b""}
    for i, (name, data) in enumerate(blobs.items()):
        write(content / name, data, mtime=1795600000 + i)
    (content / "sub").mkdir()
    (content / "sub" / "inner.mp4").write_bytes(b"not listed")
    pop = {"a.mp4": 7.5, "b-2_x.1080p.mkv": 3}
    doc = build_manifest(str(content), "https://origin.example/media", pop, now_s=1795677000)
    assert doc["format"] == FORMAT and doc["version"] == VERSION and doc["generated_s"] == 1795677000
    assert "sites" not in doc and "signature" not in doc
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    m = parse_manifest(path.read_bytes())
    assert [f.content_id for f in m.files] == sorted(blobs)  # subdirectory skipped
    for i, name in enumerate(sorted(blobs)):
        f = m.by_id()[name]
        assert f.size == len(blobs[name])
        assert f.checksum == xxhash.xxh3_128_hexdigest(blobs[name])
        assert f.mtime_s == 1795600000 + list(blobs).index(name)
        assert f.popularity == float(pop.get(name, 0.0))
        assert f.sources == (f"https://origin.example/media/{quote(name)}",)
    assert m.generated_s == 1795677000
    # Signed, then read back as the agent would.
    signed_path = tmp_path / "signed.json"
    signed_path.write_text(json.dumps(sign(doc, "k1", KEYS["k1"])))
    assert parse_manifest(signed_path.read_bytes(), keys=KEYS, require_signature=True).files == m.files


def test_build_of_an_empty_directory(tmp_path):
    doc = build_manifest(str(tmp_path), "http://origin.example")
    assert doc == {"format": FORMAT, "version": VERSION, "files": []}
    assert parse_manifest(dumps(doc)).files == ()


@pytest.mark.parametrize(
    "base,name,url",
    [
        ("http://o.example", "a.mp4", "http://o.example/a.mp4"),
        ("http://o.example/", "a.mp4", "http://o.example/a.mp4"),
        ("https://o.example/media/2025", "x_y-z.1.ts", "https://o.example/media/2025/x_y-z.1.ts"),
        ("https://o.example/media/2025/", "x_y-z.1.ts", "https://o.example/media/2025/x_y-z.1.ts"),
        ("http://o.example:8080/a%20b", "A9", "http://o.example:8080/a%20b/A9"),
    ],
)
def test_build_joins_the_base_url_and_quoted_name(tmp_path, base, name, url):
    (tmp_path / name).write_bytes(b"x")
    doc = build_manifest(str(tmp_path), base)
    assert doc["files"][0]["sources"] == [url]
    assert url.endswith("/" + quote(name))


@pytest.mark.parametrize("name", [".hidden", "-dash", "a b.mp4", "a@b", "ünïcode.mp4", "x" * 129])
def test_build_refuses_a_file_name_that_is_not_a_content_id(tmp_path, name):
    (tmp_path / "fine.mp4").write_bytes(b"x")
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ManifestError) as info:
        build_manifest(str(tmp_path), "http://o.example")
    assert repr(name) in str(info.value)
    assert "not a valid content id" in str(info.value)


def test_build_skips_subdirectories_even_with_unusual_names(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "a dir").mkdir()
    (tmp_path / "a.mp4").write_bytes(b"x")
    assert [f["id"] for f in build_manifest(str(tmp_path), "http://o.example")["files"]] == ["a.mp4"]


def test_build_refuses_popularity_for_files_it_does_not_have(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError) as info:
        build_manifest(str(tmp_path), "http://o.example", {"a.mp4": 1.0, "missing.mp4": 2.0, "gone.ts": 1})
    assert "gone.ts, missing.mp4" in str(info.value)


@pytest.mark.parametrize("base", ["ftp://o.example", "o.example/media", "http://", ""])
def test_build_refuses_a_bad_base_url(tmp_path, base):
    with pytest.raises(ManifestError, match="--base-url"):
        build_manifest(str(tmp_path), base)


def test_build_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ManifestError, match="not a directory"):
        build_manifest(str(tmp_path / "nope"), "http://o.example")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ManifestError, match="not a directory"):
        build_manifest(str(tmp_path / "file"), "http://o.example")


# --- read_popularity ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"a.mp4": 4.2e9, "b": 0, "c": 3}', {"a.mp4": 4.2e9, "b": 0.0, "c": 3.0}),
        ("  \n{}", {}),
        ("a.mp4 4.2e9\nb 0\n", {"a.mp4": 4.2e9, "b": 0.0}),
        ("# title popularity\n\na.mp4   12   # trailing comment\n\tb\t3.5\n", {"a.mp4": 12.0, "b": 3.5}),
        ("", {}),
        ("# only comments\n", {}),
    ],
    ids=["json", "empty json", "lines", "comments and blanks", "empty", "comments only"],
)
def test_read_popularity(tmp_path, text, expected):
    path = tmp_path / "pop"
    path.write_text(text)
    got = read_popularity(str(path))
    assert got == expected
    assert all(isinstance(v, float) for v in got.values())


@pytest.mark.parametrize(
    "text,where,words",
    [
        ("a 1\nb\n", ":2:", "expected 'id popularity'"),
        ("a 1\n# c\nb 1 2\n", ":3:", "expected 'id popularity'"),
        ("a one\n", ":1:", "'one' is not a number"),
        ("a 1\nb -1\n", ":2:", "must be a finite number >= 0"),
        ("a nan\n", ":1:", "must be a finite number >= 0"),
        ("a inf\n", ":1:", "must be a finite number >= 0"),  # as parse_manifest refuses them
        ("\n\n\na -Infinity\n", ":4:", "must be a finite number >= 0"),
    ],
    ids=["one field", "three fields", "not a number", "negative", "nan", "inf", "-inf"],
)
def test_read_popularity_line_errors_name_the_line(tmp_path, text, where, words):
    path = tmp_path / "pop.txt"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        read_popularity(str(path))
    assert f"{path}{where}" in str(info.value)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"a": 1,', "not valid JSON"),
        ('{"a": -1}', "popularity of 'a' must be a finite number >= 0"),
        ('{"a": "1"}', "popularity of 'a'"),
        ('{"a": true}', "popularity of 'a'"),
        ('{"a": null}', "popularity of 'a'"),
        ('{"a": NaN}', "popularity of 'a'"),  # as parse_manifest refuses them
        ('{"a": Infinity}', "popularity of 'a'"),  # as parse_manifest refuses them
    ],
    ids=["truncated", "negative", "string", "bool", "null", "NaN", "Infinity"],
)
def test_read_popularity_json_errors_name_the_file_and_id(tmp_path, text, words):
    path = tmp_path / "pop.json"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        read_popularity(str(path))
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_popularity_file_feeds_build(tmp_path):
    content = tmp_path / "c"
    content.mkdir()
    (content / "a.mp4").write_bytes(b"a")
    (content / "b.mp4").write_bytes(b"b")
    pop_path = tmp_path / "pop.txt"
    pop_path.write_text("a.mp4 10\n")
    doc = build_manifest(str(content), "http://o.example", read_popularity(str(pop_path)))
    assert {f["id"]: f["popularity"] for f in doc["files"]} == {"a.mp4": 10.0, "b.mp4": 0.0}
    pop_path.write_text("a.mp4 10\nc.mp4 1\n")
    with pytest.raises(ManifestError, match="c.mp4"):
        build_manifest(str(content), "http://o.example", read_popularity(str(pop_path)))


# --- freshness: replay and age --------------------------------------------------------

NOW = 1_795_677_000
HOUR = 3600
# (case, generated_s, newest accepted, words in the error or None when accepted)
FRESH_CASES = [
    ("fresh, first ever", NOW - HOUR, None, None),
    ("the same manifest again", NOW - HOUR, NOW - HOUR, None),
    ("newer than the last", NOW - 60, NOW - HOUR, None),
    ("just under the age limit", NOW - 72 * HOUR + 1, None, None),
    ("a little in the future (clock skew)", NOW + 300, None, None),
    ("missing", None, None, "generated_s: required"),
    ("missing, after one was accepted", None, NOW - HOUR, "generated_s: required"),
    ("replayed: older than the newest accepted", NOW - 2 * HOUR, NOW - HOUR, "older than the newest manifest accepted"),
    ("one second older than the newest", NOW - HOUR - 1, NOW - HOUR, "replayed?"),
    ("too old", NOW - 73 * HOUR, None, "73.0 h old (limit 72 h)"),
    ("far in the future", NOW + 2 * HOUR, None, "in the future"),
    ("epoch zero", 0, None, "h old"),
]


@pytest.mark.parametrize("generated,newest,words", [c[1:] for c in FRESH_CASES], ids=[c[0] for c in FRESH_CASES])
def test_check_fresh(generated, newest, words):
    if words is None:
        check_fresh(generated, newest, NOW, 72 * HOUR)
        return
    with pytest.raises(ManifestError) as info:
        check_fresh(generated, newest, NOW, 72 * HOUR)
    assert str(info.value).startswith("generated_s: ")
    assert words in str(info.value)


def test_manifest_errors_share_the_fill_root():
    assert issubclass(ManifestError, FillError) and issubclass(FillError, OcaError)


def test_forecast_is_optional_and_title_by_default():
    from fill.agent import uncertain_forecasts

    doc = valid_doc()
    doc["files"][0]["forecast"] = "class"
    m = parse_manifest(dumps(doc))
    assert [f.forecast for f in m.files][:2] == ["class", "title"]
    assert uncertain_forecasts(m) == {doc["files"][0]["id"]}
