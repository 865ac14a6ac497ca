"""Range and conditional decisions (RFC 9110 §13, §14), multipart layout, HTTP-dates."""

from __future__ import annotations

import random
import re

import pytest

from oca.http.dates import format_http_date, parse_http_date
from oca.http.ranges import (
    Decision,
    Representation,
    content_range,
    decide,
    decide_path_range,
    multipart_layout,
    unsatisfied_range,
)

LM = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT (the RFC's example date)
LM_IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
LM_RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
LM_ASCTIME = "Sun Nov  6 08:49:37 1994"
LM_PLUS_1 = "Sun, 06 Nov 1994 08:49:38 GMT"
LM_MINUS_1 = "Sun, 06 Nov 1994 08:49:36 GMT"
ETAG = '"abc123"'
SIZE = 10_000

SIXTEEN = ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(16))
SIXTEEN_RANGES = tuple((i * 100, i * 100 + 9) for i in range(16))
SEVENTEEN = ",".join(f"{i * 100}-{i * 100 + 9}" for i in range(17))


def case(
    id: str,
    status: int,
    ranges: tuple[tuple[int, int], ...] = (),
    *,
    method: str = "GET",
    range: str | None = None,
    if_range: str | None = None,
    inm: str | None = None,
    ims: str | None = None,
    im: str | None = None,
    ius: str | None = None,
    size: int = SIZE,
    etag: str = ETAG,
    max_ranges: int = 16,
):
    request = dict(
        method=method,
        range_header=range,
        if_range=if_range,
        if_none_match=inm,
        if_modified_since=ims,
        if_match=im,
        if_unmodified_since=ius,
        rep=Representation(size=size, etag=etag, last_modified_s=LM),
        max_ranges=max_ranges,
    )
    return pytest.param(request, status, ranges, id=id)


DECIDE_CASES = [
    # --- RFC 9110 §14.1.2 examples, 10000-byte representation ---------------
    case("rfc-first-500", 206, ((0, 499),), range="bytes=0-499"),
    case("rfc-second-500", 206, ((500, 999),), range="bytes=500-999"),
    case("rfc-suffix-500", 206, ((9500, 9999),), range="bytes=-500"),
    case("rfc-from-9500", 206, ((9500, 9999),), range="bytes=9500-"),
    case("rfc-first-and-last", 206, ((0, 0), (9999, 9999)), range="bytes=0-0,-1"),
    case(
        "rfc-three-ranges",
        206,
        ((0, 999), (4500, 5499), (9000, 9999)),
        range="bytes=0-999,4500-5499,-1000",
    ),
    case("rfc-adjacent-coalesced", 206, ((500, 999),), range="bytes=500-600,601-999"),
    case("rfc-overlap-coalesced", 206, ((500, 999),), range="bytes=500-700,601-999"),
    # --- single ranges and clamping -----------------------------------------
    case("open-from-zero-is-206", 206, ((0, 9999),), range="bytes=0-"),
    case("whole-explicit-is-206", 206, ((0, 9999),), range="bytes=0-9999"),
    case("last-byte", 206, ((9999, 9999),), range="bytes=9999-9999"),
    case("first-byte", 206, ((0, 0),), range="bytes=0-0"),
    case("last-pos-clamped", 206, ((9000, 9999),), range="bytes=9000-20000"),
    case("suffix-larger-than-file", 206, ((0, 9999),), range="bytes=-20000"),
    case("suffix-equals-size", 206, ((0, 9999),), range="bytes=-10000"),
    case("suffix-one", 206, ((9999, 9999),), range="bytes=-1"),
    case("leading-zeros", 206, ((500, 999),), range="bytes=0000500-000999"),
    case("huge-last-clamped", 206, ((0, 9999),), range="bytes=0-99999999999999999999999"),
    case("huge-suffix", 206, ((0, 9999),), range="bytes=-99999999999999999999999"),
    case("very-long-number", 206, ((5, 9999),), range="bytes=5-" + "9" * 5000),
    # --- unsatisfiable --------------------------------------------------------
    case("suffix-zero-416", 416, range="bytes=-0"),
    case("first-equals-size-416", 416, range="bytes=10000-"),
    case("first-beyond-size-416", 416, range="bytes=10000-10001"),
    case("huge-first-416", 416, range="bytes=99999999999999999999999-"),
    case("huge-first-and-last-416", 416, range="bytes=99999999999999999999998-99999999999999999999999"),
    case("all-unsatisfiable-multi-416", 416, range="bytes=20000-,-0,10000-10005"),
    case("unsatisfiable-dropped", 206, ((0, 99),), range="bytes=0-99,20000-30000"),
    case("unsatisfiable-dropped-multi", 206, ((0, 9), (20, 29)), range="bytes=0-9,-0,20-29"),
    # --- invalid syntax: ignore the field (§14.2) -> 200 whole -----------------
    case("first-after-last-200", 200, range="bytes=500-499"),
    case("first-after-last-in-list-200", 200, range="bytes=0-1,500-499"),
    case("huge-first-after-huge-last-200", 200, range="bytes=99999999999999999999999-99999999999999999999998"),
    case("unknown-unit-200", 200, range="items=0-10"),
    case("unit-prefix-only-200", 200, range="byte=0-10"),
    case("no-equals-200", 200, range="bytes 0-10"),
    case("empty-set-200", 200, range="bytes="),
    case("only-commas-200", 200, range="bytes=,, ,"),
    case("double-dash-200", 200, range="bytes=--5"),
    case("lone-dash-200", 200, range="bytes=-"),
    case("missing-dash-200", 200, range="bytes=5"),
    case("plus-sign-200", 200, range="bytes=+5-10"),
    case("decimal-point-200", 200, range="bytes=1.5-10"),
    case("hex-200", 200, range="bytes=0x10-0x20"),
    case("space-inside-spec-200", 200, range="bytes=0 - 9"),
    case("superscript-digit-200", 200, range="bytes=\u00b2-5"),
    case("latin1-garbage-200", 200, range="\xff\x00\x7f garbage \xe9=\xa0"),
    case("empty-field-200", 200, range=""),
    case("semicolon-separator-200", 200, range="bytes=0-1;2-3"),
    case("other-unit-other-range-200", 200, range="rows=a-b"),
    # --- case and whitespace ----------------------------------------------------
    case("unit-uppercase", 206, ((0, 9),), range="BYTES=0-9"),
    case("unit-mixed-case", 206, ((0, 9),), range="Bytes=0-9"),
    case("ows-around-commas", 206, ((0, 9), (20, 29)), range="bytes=0-9 ,\t20-29"),
    case("ows-after-equals", 206, ((0, 9),), range="bytes= 0-9"),
    case("ows-around-field", 206, ((0, 9),), range=" bytes=0-9 "),
    case("empty-elements-skipped", 206, ((0, 1), (5, 6)), range="bytes=0-1,,5-6"),
    case("leading-comma", 206, ((0, 1),), range="bytes=,0-1"),
    case("trailing-comma", 206, ((0, 1),), range="bytes=0-1,"),
    # --- multiple ranges ----------------------------------------------------------
    case("request-order-kept", 206, ((9000, 9099), (0, 99)), range="bytes=9000-9099,0-99"),
    case(
        "coalesced-group-keeps-first-appearance",
        206,
        ((5000, 5099), (0, 199)),
        range="bytes=5000-5099,0-99,50-199",
    ),
    case("contained-range-coalesced", 206, ((100, 999),), range="bytes=100-999,200-300"),
    case("duplicate-ranges-coalesced", 206, ((0, 9),), range="bytes=0-9,0-9"),
    case("exactly-max-ranges", 206, SIXTEEN_RANGES, range="bytes=" + SIXTEEN),
    case("too-many-ranges-200", 200, range="bytes=" + SEVENTEEN),
    case("too-many-counts-unsatisfiable-200", 200, range="bytes=" + ",".join(["-0"] * 17)),
    case("max-ranges-1-single-ok", 206, ((0, 9),), range="bytes=0-9", max_ranges=1),
    case("max-ranges-1-two-200", 200, range="bytes=0-9,20-29", max_ranges=1),
    case("max-ranges-0-disables-200", 200, range="bytes=0-9", max_ranges=0),
    case("overlap-sum-exceeds-size-200", 200, range="bytes=0-5999,4000-9999"),
    case("disjoint-sum-equals-size-200", 200, range="bytes=0-4999,5000-9999"),
    case("repeated-whole-200", 200, range="bytes=0-,0-"),
    case("suffix-and-prefix-overlap-200", 200, range="bytes=-6000,0-5000"),
    case("sum-just-below-size", 206, ((0, 4999), (5001, 9999)), range="bytes=0-4999,5001-9999"),
    # --- tiny and empty representations -----------------------------------------
    case("empty-no-range-200", 200, size=0),
    case("empty-range-416", 416, range="bytes=0-", size=0),
    case("empty-suffix-416", 416, range="bytes=-5", size=0),
    case("empty-multi-416", 416, range="bytes=0-0,-1", size=0),
    case("empty-malformed-200", 200, range="bytes=5-1", size=0),
    case("one-byte-suffix", 206, ((0, 0),), range="bytes=-1", size=1),
    case("one-byte-two-ranges-200", 200, range="bytes=0-0,-1", size=1),
    # --- If-Range (§13.1.5) -------------------------------------------------------
    case("if-range-strong-match", 206, ((0, 9),), range="bytes=0-9", if_range=ETAG),
    case("if-range-with-ows", 206, ((0, 9),), range="bytes=0-9", if_range=f" {ETAG}\t"),
    case("if-range-other-tag-200", 200, range="bytes=0-9", if_range='"other"'),
    case("if-range-weak-same-opaque-200", 200, range="bytes=0-9", if_range='W/"abc123"'),
    case("if-range-weak-rep-200", 200, range="bytes=0-9", if_range='"abc123"', etag='W/"abc123"'),
    case("if-range-list-200", 200, range="bytes=0-9", if_range=f"{ETAG}, {ETAG}"),
    case("if-range-unquoted-200", 200, range="bytes=0-9", if_range="abc123"),
    case("if-range-date-exact", 206, ((0, 9),), range="bytes=0-9", if_range=LM_IMF),
    case("if-range-date-rfc850-exact", 206, ((0, 9),), range="bytes=0-9", if_range=LM_RFC850),
    case("if-range-date-later-200", 200, range="bytes=0-9", if_range=LM_PLUS_1),
    case("if-range-date-earlier-200", 200, range="bytes=0-9", if_range=LM_MINUS_1),
    case("if-range-garbage-200", 200, range="bytes=0-9", if_range="\xff\xfe yesterday"),
    case("if-range-empty-200", 200, range="bytes=0-9", if_range=""),
    case("if-range-without-range-ignored", 200, if_range='"other"'),
    case("if-range-match-unsatisfiable-416", 416, range="bytes=10000-", if_range=ETAG),
    case("if-range-mismatch-unsatisfiable-200", 200, range="bytes=10000-", if_range='"old"'),
    # --- If-None-Match (§13.1.2) ---------------------------------------------------
    case("inm-exact-304", 304, inm=ETAG),
    case("inm-weak-compare-304", 304, inm='W/"abc123"'),
    case("inm-list-contains-304", 304, inm='"x", W/"y",  "abc123"'),
    case("inm-list-without-200", 200, inm='"x", "y"'),
    case("inm-star-304", 304, inm="*"),
    case("inm-malformed-200", 200, inm="abc123"),
    case("inm-comma-inside-tag-304", 304, inm='"a,b"', etag='"a,b"'),
    case("inm-comma-inside-tag-no-split-200", 200, inm='"a,b"', etag='"a"'),
    case("inm-match-beats-range-304", 304, range="bytes=0-9", inm=ETAG),
    case("inm-miss-range-206", 206, ((0, 9),), range="bytes=0-9", inm='"old"'),
    case("inm-present-ims-ignored-200", 200, inm='"old"', ims=LM_IMF),
    # --- If-Modified-Since (§13.1.3) ---------------------------------------------------
    case("ims-equal-304", 304, ims=LM_IMF),
    case("ims-later-304", 304, ims=LM_PLUS_1),
    case("ims-earlier-200", 200, ims=LM_MINUS_1),
    case("ims-garbage-200", 200, ims="not a date"),
    case("ims-two-dates-200", 200, ims=f"{LM_IMF}, {LM_IMF}"),
    case("ims-rfc850-304", 304, ims=LM_RFC850),
    case("ims-asctime-304", 304, ims=LM_ASCTIME),
    case("ims-earlier-range-206", 206, ((0, 9),), range="bytes=0-9", ims=LM_MINUS_1),
    case("ims-ignored-for-post-200", 200, method="POST", ims=LM_IMF),
    # --- If-Match and If-Unmodified-Since (§13.1.1, §13.1.4) ------------------------
    case("if-match-ok-range-206", 206, ((0, 9),), range="bytes=0-9", im=ETAG),
    case("if-match-fails-412", 412, im='"other"'),
    case("if-match-weak-same-412", 412, im='W/"abc123"'),
    case("if-match-star-200", 200, im="*"),
    case("if-match-list-contains-200", 200, im='"x", "abc123"'),
    case("if-match-malformed-412", 412, im="abc123"),
    case("if-match-weak-rep-412", 412, im='"abc123"', etag='W/"abc123"'),
    case("if-match-fails-before-inm-412", 412, im='"other"', inm=ETAG),
    case("if-match-fails-before-range-412", 412, range="bytes=0-9", im='"other"'),
    case("ius-earlier-412", 412, ius=LM_MINUS_1),
    case("ius-equal-200", 200, ius=LM_IMF),
    case("ius-later-200", 200, ius=LM_PLUS_1),
    case("ius-garbage-ignored-200", 200, ius="tomorrow"),
    case("ius-ignored-with-if-match", 200, im=ETAG, ius=LM_MINUS_1),
    case("ius-passes-then-inm-304", 304, ius=LM_IMF, inm=ETAG),
    # --- methods (§9.1, §14.2) -------------------------------------------------------
    case("head-range-ignored-200", 200, method="HEAD", range="bytes=0-9"),
    case("head-inm-304", 304, method="HEAD", inm=ETAG),
    case("head-ims-304", 304, method="HEAD", ims=LM_IMF),
    case("post-range-ignored-200", 200, method="POST", range="bytes=0-9"),
    case("post-inm-match-412", 412, method="POST", inm=ETAG),
    case("lowercase-get-range-ignored-200", 200, method="get", range="bytes=0-9"),
    case("no-headers-200", 200),
]


@pytest.mark.parametrize(("request_", "status", "ranges"), DECIDE_CASES)
def test_decide(request_, status, ranges):
    decision = decide(**request_)
    assert (decision.status, decision.ranges) == (status, ranges), decision.reason
    assert decision.reason


def test_decide_case_count():
    assert len(DECIDE_CASES) >= 60
    ids = [p.id for p in DECIDE_CASES]
    assert len(ids) == len(set(ids))


def test_decide_default_max_ranges_is_16():
    rep = Representation(SIZE, ETAG, LM)
    args = (None, None, None, None, None, rep)
    assert decide("GET", "bytes=" + SIXTEEN, *args).status == 206
    assert decide("GET", "bytes=" + SEVENTEEN, *args).status == 200


def test_decision_is_frozen():
    decision = Decision(200, ())
    with pytest.raises(AttributeError):
        decision.status = 206  # type: ignore[misc]


# --- never raise on garbage ----------------------------------------------------------

_ALPHABET = "bytes=0123456789-, \t*W/\"\xff\x00\u00b2GMTSunNov:"


def _garbage(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.2:
        return None
    if roll < 0.5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40))).decode("latin-1")
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(40)))


def test_decide_never_raises_on_garbage():
    rng = random.Random(9110)
    for _ in range(5000):
        rep = Representation(rng.choice([0, 1, 10, SIZE]), rng.choice([ETAG, 'W/"w"', "bad"]), LM)
        headers = [_garbage(rng) for _ in range(6)]
        decision = decide(rng.choice(["GET", "HEAD", "POST", "\xff"]), *headers, rep)
        assert decision.status in (200, 206, 304, 412, 416)
        for start, end in decision.ranges:
            assert 0 <= start <= end < rep.size


# --- property test against a brute-force oracle ----------------------------------------


def _oracle(specs: list[str], size: int, max_ranges: int) -> tuple[int, set[tuple[int, int]], list[int]]:
    """Status, set of expected ranges, and each range's first-appearance order key.

    Computed byte by byte, independently of the implementation's arithmetic.
    """
    if len(specs) > max_ranges:
        return 200, set(), []
    byte_sets: list[set[int]] = []
    for spec in specs:
        first, last = spec.split("-")
        if first == "":
            n = int(last)
            byte_sets.append(set(range(size)[-n:]) if n else set())
        else:
            end = size - 1 if last == "" else int(last)
            byte_sets.append({b for b in range(int(first), end + 1) if b < size})
    satisfiable = [(i, s) for i, s in enumerate(byte_sets) if s]
    if not satisfiable:
        return 416, set(), []
    if len(satisfiable) == 1:
        only = satisfiable[0][1]
        return 206, {(min(only), max(only))}, [0]
    if sum(len(s) for _, s in satisfiable) >= size:
        return 200, set(), []
    union = sorted(set().union(*(s for _, s in satisfiable)))
    runs: list[tuple[int, int]] = []
    for b in union:
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    order = [min(i for i, s in satisfiable if s & set(range(lo, hi + 1))) for lo, hi in runs]
    return 206, set(runs), order


def test_decide_matches_oracle_on_random_ranges():
    rng = random.Random(14)
    for _ in range(3000):
        size = rng.randrange(0, 60)
        specs = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.random()
            a, b = sorted(rng.randrange(0, 70) for _ in range(2))
            if kind < 0.2:
                specs.append(f"-{rng.randrange(0, 70)}")
            elif kind < 0.4:
                specs.append(f"{a}-")
            else:
                specs.append(f"{a}-{b}")
        max_ranges = rng.choice([1, 3, 16])
        rep = Representation(size, ETAG, LM)
        decision = decide("GET", "bytes=" + ",".join(specs), None, None, None, None, None, rep, max_ranges)
        status, expected, order = _oracle(specs, size, max_ranges)
        assert decision.status == status, (specs, size, decision)
        assert set(decision.ranges) == expected, (specs, size, decision)
        if status == 206:
            # Parts come in the order their first range-spec appeared (§15.3.7.2).
            first_appearance = dict(zip(sorted(expected), order))
            keys = [first_appearance[r] for r in decision.ranges]
            assert keys == sorted(keys), (specs, decision)


# --- path ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "size", "status", "ranges"),
    [
        pytest.param(0, 99, SIZE, 200, ((0, 99),), id="inside"),
        pytest.param(9990, 20000, SIZE, 200, ((9990, 9999),), id="end-clamped"),
        pytest.param(9999, 9999, SIZE, 200, ((9999, 9999),), id="last-byte"),
        pytest.param(0, 0, 1, 200, ((0, 0),), id="one-byte-file"),
        pytest.param(0, 10**30, SIZE, 200, ((0, 9999),), id="huge-end"),
        pytest.param(10000, 10005, SIZE, 416, (), id="start-at-size"),
        pytest.param(0, 0, 0, 416, (), id="empty-file"),
        pytest.param(5, 4, SIZE, 400, (), id="start-after-end"),
        pytest.param(-1, 5, SIZE, 400, (), id="negative"),
    ],
)
def test_decide_path_range(start, end, size, status, ranges):
    decision = decide_path_range(start, end, size)
    assert (decision.status, decision.ranges) == (status, ranges)
    assert decision.reason


def test_content_range_headers():
    assert content_range(0, 499, SIZE) == "bytes 0-499/10000"
    assert unsatisfied_range(SIZE) == "bytes */10000"
    assert unsatisfied_range(0) == "bytes */0"


# --- multipart layout ------------------------------------------------------------------

_BODY = bytes(random.Random(7).randrange(256) for _ in range(SIZE))


def _assemble(parts, closing, data: bytes) -> bytes:
    return b"".join(head + data[start : start + length] for head, start, length in parts) + closing


def _parse_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A strict reader of our layout, written from RFC 2046 §5.1.1 and RFC 9110 §14.6 and §15.3.7.2."""
    delimiter = b"\r\n--" + boundary.encode()
    closing = delimiter + b"--\r\n"
    assert body.endswith(closing)
    pos, parts = 0, []
    while body.startswith(delimiter + b"\r\n", pos):
        pos += len(delimiter) + 2
        head_end = body.index(b"\r\n\r\n", pos)
        headers = dict(line.split(": ", 1) for line in body[pos:head_end].decode().split("\r\n"))
        pos = head_end + 4
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers["Content-Range"])
        assert m is not None
        length = int(m[2]) - int(m[1]) + 1
        parts.append((headers, body[pos : pos + length]))
        pos += length
    assert body[pos:] == closing
    return parts


def test_multipart_layout_matches_assembled_body():
    ranges = ((9000, 9099), (0, 0), (4500, 5499), (9999, 9999))
    parts, closing, total = multipart_layout(ranges, SIZE, "video/mp4", "OCA0123456789abcdef")
    body = _assemble(parts, closing, _BODY)
    assert total == len(body)
    assert [(start, length) for _, start, length in parts] == [(s, e - s + 1) for s, e in ranges]
    assert body.startswith(
        b"\r\n--OCA0123456789abcdef\r\nContent-Type: video/mp4\r\nContent-Range: bytes 9000-9099/10000\r\n\r\n"
    )
    assert closing == b"\r\n--OCA0123456789abcdef--\r\n"
    decoded = _parse_multipart(body, "OCA0123456789abcdef")
    assert [p for _, p in decoded] == [_BODY[s : e + 1] for s, e in ranges]
    assert [h["Content-Type"] for h, _ in decoded] == ["video/mp4"] * len(ranges)
    assert [h["Content-Range"] for h, _ in decoded] == [content_range(s, e, SIZE) for s, e in ranges]


def test_multipart_layout_from_a_decision():
    rep = Representation(SIZE, ETAG, LM)
    decision = decide("GET", "bytes=0-999,4500-5499,-1000", None, None, None, None, None, rep)
    parts, closing, total = multipart_layout(decision.ranges, SIZE, "application/octet-stream", "b")
    body = _assemble(parts, closing, _BODY)
    assert len(body) == total
    assert total < SIZE + len(parts) * 200


def test_multipart_layout_without_content_type():
    parts, closing, total = multipart_layout([(1, 2)], 5, "", "xyz")
    assert parts == [(b"\r\n--xyz\r\nContent-Range: bytes 1-2/5\r\n\r\n", 1, 2)]
    assert total == len(parts[0][0]) + 2 + len(closing)


@pytest.mark.parametrize(
    "boundary",
    ["", "a" * 71, "ends with space ", "semi;colon", "quote\"", "caf\u00e9", "new\r\nline"],
)
def test_multipart_layout_rejects_bad_boundary(boundary):
    with pytest.raises(ValueError):
        multipart_layout([(0, 0)], 1, "text/plain", boundary)


@pytest.mark.parametrize("bad", [(5, 4), (-1, 3), (0, 10), (10, 10)])
def test_multipart_layout_rejects_ranges_outside(bad):
    with pytest.raises(ValueError):
        multipart_layout([bad], 10, "text/plain", "b")


# --- HTTP-date (§5.6.7) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(LM_IMF, id="imf-fixdate"),
        pytest.param(LM_RFC850, id="rfc850"),
        pytest.param(LM_ASCTIME, id="asctime"),
        pytest.param("Sun Nov 06 08:49:37 1994", id="asctime-two-digit-day"),
        pytest.param(f" {LM_IMF}\t", id="surrounding-ows"),
    ],
)
def test_parse_http_date_three_formats(text):
    assert parse_http_date(text) == LM


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 23:60:00 GMT",
        "Sun, 06 Nov 1994 23:59:61 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Tue, 29 Feb 2100 00:00:00 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sat, 01 Jan 0000 00:00:00 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",
        "Sun, \u00b2\u00b2 Nov 1994 08:49:37 GMT",
        "784111777",
    ],
)
def test_parse_http_date_rejects(text):
    assert parse_http_date(text) is None


def test_parse_http_date_calendar_edges():
    assert parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0
    assert parse_http_date("Wed, 31 Dec 1969 23:59:59 GMT") == -1
    assert parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT") == 951782400
    assert parse_http_date("Sat, 31 Dec 2022 23:59:60 GMT") == 1672531200  # leap second
    assert parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT") == 253402300799


def test_parse_http_date_rfc850_two_digit_years():
    # Without now_s: POSIX %y pivot.
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT") == 0
    assert parse_http_date("Saturday, 01-Jan-00 00:00:00 GMT") == 946684800
    # With now_s (2025): §5.6.7 keeps the date within 50 years of now.
    now_2025 = parse_http_date("Wed, 01 Jan 2025 00:00:00 GMT")
    assert now_2025 is not None
    y2070 = parse_http_date("Wed, 01 Jan 2070 00:00:00 GMT")
    assert parse_http_date("Wednesday, 01-Jan-70 00:00:00 GMT", now_s=now_2025) == y2070
    assert parse_http_date("Friday, 01-Jan-99 00:00:00 GMT", now_s=now_2025) == parse_http_date(
        "Fri, 01 Jan 1999 00:00:00 GMT"
    )
    # In 2095, "10" means 2110, not 2010.
    now_2095 = parse_http_date("Sat, 01 Jan 2095 00:00:00 GMT")
    assert parse_http_date("Wednesday, 01-Jan-10 00:00:00 GMT", now_s=now_2095) == parse_http_date(
        "Wed, 01 Jan 2110 00:00:00 GMT"
    )


def test_format_http_date():
    assert format_http_date(LM) == LM_IMF
    assert format_http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert format_http_date(951782400) == "Tue, 29 Feb 2000 00:00:00 GMT"


def test_format_and_parse_round_trip():
    rng = random.Random(5)
    for _ in range(2000):
        t = rng.randrange(0, 2**36)
        assert parse_http_date(format_http_date(t)) == t

