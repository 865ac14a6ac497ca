"""Range and conditional-request decisions (RFC 9110 §13 and §14), as pure functions.

Rules this module keeps:

- Nothing here performs I/O or reads the clock.  The caller gathers the
  request's header values and the representation's metadata, calls
  :func:`decide` (or :func:`decide_path_range`) and carries out the answer:
  status, byte ranges and, for multipart, the exact layout from
  :func:`multipart_layout`.  Every number the response head needs is known
  before the first byte is sent.
- Header values are untrusted text (bytes decoded as latin-1).  No input
  makes these functions raise: malformed fields are ignored or fail the way
  RFC 9110 says, and numbers of any length are compared without ``int()``
  on unbounded strings (CPython refuses to convert more than 4300 digits).
- Deciding which methods are allowed (405), whether the resource exists
  (404) and whether preconditions apply at all (§13.2.1: only when the
  unconditional answer would be 2xx or 412) is the caller's job; ``decide``
  assumes the representation exists.
- Preconditions are evaluated in the order of §13.2.2.  Range is honoured
  only for GET (§14.2) and only when If-Range, if sent, holds (§13.1.5).
- A Range field that is syntactically invalid, uses another unit, or lists
  more than ``max_ranges`` range-specs is ignored (200 with the whole
  representation); §14.2 lets a server ignore Range.  A valid field in
  which no range is satisfiable gets 416.  ``max_ranges`` is nginx's
  ``max_ranges``: a cap on the work and on the number of parts a single
  request may ask for; 0 disables range requests.
- A multipart response is never larger than the representation plus its
  part headers: overlapping and adjacent ranges are coalesced (§15.3.7.2 allows
  it), and a multi-range request whose ranges add up to at least the whole
  representation is answered with 200 and the whole representation (as
  nginx does), which also defeats the "many overlapping ranges"
  amplification attack (CVE-2011-3192).  A request for a single range gets
  206 even when that range is the whole representation.
- Multipart parts follow the order in which their first range-spec
  appeared in the request (§15.3.7.2 SHOULD).  Rejected alternative: ascending
  offsets, which would be friendlier to the disk but ignores the SHOULD;
  clients must read each part's Content-Range anyway (§15.3.7.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from oca.http.dates import format_http_date, parse_http_date

__all__ = [
    "DEFAULT_MAX_RANGES",
    "Decision",
    "Representation",
    "content_range",
    "decide",
    "decide_path_range",
    "format_http_date",
    "multipart_layout",
    "parse_http_date",
    "unsatisfied_range",
]

# nginx's default max_ranges is unlimited, Apache's MaxRanges is 200.  Video
# players ask for one range; 16 leaves room for clients that batch a few
# index and segment ranges while bounding the parts a request can cost.
DEFAULT_MAX_RANGES = 16

_OWS = " \t"

# §14.1.2 range-spec for the bytes unit: int-range / suffix-range.  Only
# ASCII digits: str.isdigit() accepts "²", which int() then rejects.
_BYTE_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)", re.ASCII)

# §8.8.3 etagc = %x21 / %x23-7E / obs-text
_ETAGC = re.compile(r"[\x21\x23-\x7e\x80-\xff]*")
# §8.8.3 entity-tag = [ weak ] opaque-tag, weak = %s"W/"
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')

# RFC 2046 §5.1.1 boundary: 1-70 bchars, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]", re.ASCII)

# A number with more significant digits than this exceeds any file size
# (2**63 - 1 has 19 digits); it is replaced by _HUGE for arithmetic.
_MAX_DIGITS = 19
_HUGE = 10**_MAX_DIGITS


@dataclass(frozen=True, slots=True)
class Representation:
    """What the server knows about the selected representation."""

    size: int  # bytes
    etag: str  # strong entity tag, already quoted, e.g. '"0123abcd"'
    last_modified_s: int  # unix seconds (origin modification time)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request.

    ``ranges`` holds inclusive ``(start, end)`` byte offsets: empty for 200
    with the whole representation, 304, 412 and 416; one entry for a single
    range 206 (and for the 200 of a path range); two or more for
    ``multipart/byteranges``.
    """

    status: int
    ranges: tuple[tuple[int, int], ...]
    reason: str = ""


def decide(
    method: str,
    range_header: str | None,
    if_range: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_match: str | None,
    if_unmodified_since: str | None,
    rep: Representation,
    max_ranges: int = DEFAULT_MAX_RANGES,
) -> Decision:
    """Decide status and byte ranges for a request on ``rep``.

    Each header argument is the field value as received (``None`` when the
    field is absent).  Methods are case-sensitive (§9.1): ``get`` is not GET.
    """
    # §13.2.2 step 1: If-Match; step 2 only when If-Match is absent
    # (§13.1.4: If-Unmodified-Since is ignored when If-Match is present).
    if if_match is not None:
        if not _if_match_holds(if_match, rep):
            return Decision(412, (), "If-Match failed")
    elif if_unmodified_since is not None:
        date = parse_http_date(if_unmodified_since)
        # §13.1.4: an invalid date is ignored.
        if date is not None and rep.last_modified_s > date:
            return Decision(412, (), "modified since If-Unmodified-Since")

    safe = method == "GET" or method == "HEAD"
    # §13.2.2 step 3: If-None-Match; §13.1.2: 304 for GET/HEAD, else 412.
    if if_none_match is not None:
        if _if_none_match_matches(if_none_match, rep):
            if safe:
                return Decision(304, (), "If-None-Match matched")
            return Decision(412, (), "If-None-Match matched")
    # §13.2.2 step 4 / §13.1.3: If-Modified-Since only without If-None-Match,
    # only for GET and HEAD, and ignored when not a valid HTTP-date.
    elif safe and if_modified_since is not None:
        date = parse_http_date(if_modified_since)
        if date is not None and rep.last_modified_s <= date:
            return Decision(304, (), "not modified since If-Modified-Since")

    if range_header is None:
        return Decision(200, (), "no Range")
    # §14.2: GET is the only method for which range handling is defined.
    if method != "GET":
        return Decision(200, (), "Range ignored: method is not GET")
    # §13.2.2 step 5 / §13.1.5: a false If-Range means "send it all".
    if if_range is not None and not _if_range_holds(if_range, rep):
        return Decision(200, (), "If-Range does not match")
    return _decide_byte_ranges(range_header, rep.size, max_ranges)


def decide_path_range(start: int, end: int, size: int) -> Decision:
    """Decide the Open Connect path form ``/content/<id>/range/<start>-<end>``.

    The answer is 200 (not 206) with the bytes ``start..min(end, size-1)``;
    ``start > end`` (or a negative offset) is the client's error (400) and a
    ``start`` at or past the end of the representation is 416.
    """
    if start < 0 or end < 0:
        return Decision(400, (), "negative offset in path range")
    if start > end:
        return Decision(400, (), "path range start is after its end")
    if start >= size:
        return Decision(416, (), "path range starts at or after the end of the representation")
    return Decision(200, ((start, min(end, size - 1)),), "path range")


def content_range(start: int, end: int, size: int) -> str:
    """The Content-Range field value for an inclusive byte range (§14.4)."""
    return f"bytes {start}-{end}/{size}"


def unsatisfied_range(size: int) -> str:
    """The Content-Range field value of a 416 response (§14.4, §15.5.17)."""
    return f"bytes */{size}"


def multipart_layout(
    ranges: Iterable[tuple[int, int]],
    size: int,
    content_type: str,
    boundary: str,
) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """Lay out a ``multipart/byteranges`` body (§14.6, §15.3.7.2, RFC 2046 §5.1.1).

    Returns ``(parts, closing, total_length)``: each part is
    ``(part_head, start, length)``, to be sent as ``part_head`` followed by
    ``length`` bytes of the representation from ``start``; then ``closing``.
    ``total_length`` is the exact body length, for Content-Length.

    Every part head, the first included, starts with CRLF: the body then
    opens with an empty preamble, which RFC 2046 allows, and all parts have
    the same shape.  An empty ``content_type`` omits the part's
    Content-Type line.  Invalid arguments are the caller's bug and raise
    ``ValueError``.
    """
    if not _BOUNDARY.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    type_line = f"Content-Type: {content_type}\r\n" if content_type else ""
    parts: list[tuple[bytes, int, int]] = []
    total = 0
    for start, end in ranges:
        if not 0 <= start <= end < size:
            raise ValueError(f"range {start}-{end} is outside a representation of {size} bytes")
        head = (
            f"\r\n--{boundary}\r\n{type_line}Content-Range: {content_range(start, end, size)}\r\n\r\n"
        ).encode("latin-1")
        length = end - start + 1
        parts.append((head, start, length))
        total += len(head) + length
    closing = f"\r\n--{boundary}--\r\n".encode("latin-1")
    return parts, closing, total + len(closing)


# --- Range (§14.1, §14.2) -----------------------------------------------------


def _decide_byte_ranges(value: str, size: int, max_ranges: int) -> Decision:
    unit, eq, range_set = value.partition("=")
    if not eq:
        return Decision(200, (), "Range ignored: malformed")
    # §14.1: range units are compared case-insensitively.
    if unit.strip(_OWS).lower() != "bytes":
        return Decision(200, (), "Range ignored: unit is not bytes")

    # §14.1.1 range-set = 1#range-spec; §5.6.1: empty list elements are
    # accepted and skipped, and OWS may surround each element.
    specs: list[tuple[str, str, str]] = []
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue
        if len(specs) >= max_ranges:
            return Decision(200, (), f"Range ignored: more than {max_ranges} ranges")
        m = _BYTE_RANGE_SPEC.fullmatch(element)
        if m is None:
            return Decision(200, (), "Range ignored: malformed")
        first, last, suffix = m.groups()
        # §14.1.1: a range-spec whose last-pos is less than its first-pos is
        # invalid; §14.2 lets us ignore the whole field.
        if last and _digits_greater(first, last):
            return Decision(200, (), "Range ignored: first-pos after last-pos")
        specs.append((first or "", last or "", suffix or ""))
    if not specs:
        return Decision(200, (), "Range ignored: no range-spec")

    # §14.1.2 satisfiability, with out-of-bounds ends clamped.
    chosen: list[tuple[int, int, int]] = []  # (start, end, order of appearance)
    for order, (first, last, suffix) in enumerate(specs):
        if suffix:
            # suffix-range: the last N bytes; "-0" and an empty
            # representation are unsatisfiable.
            n = _number(suffix)
            if n == 0 or size == 0:
                continue
            chosen.append((size - min(n, size), size - 1, order))
        else:
            start = _number(first)
            if start >= size:
                continue
            end = size - 1 if not last else min(_number(last), size - 1)
            chosen.append((start, end, order))

    if not chosen:
        # §14.1.2 / §15.5.17: the server writes Content-Range: bytes */size.
        return Decision(416, (), "no satisfiable range")
    if len(chosen) == 1:
        start, end, _ = chosen[0]
        return Decision(206, ((start, end),), "single range")
    if sum(end - start + 1 for start, end, _ in chosen) >= size:
        return Decision(200, (), "ranges add up to the whole representation")

    merged = _coalesce(chosen)
    if len(merged) == 1:
        return Decision(206, merged, "ranges coalesced into one")
    return Decision(206, merged, f"{len(merged)} ranges")


def _coalesce(chosen: list[tuple[int, int, int]]) -> tuple[tuple[int, int], ...]:
    """Merge overlapping or adjacent ranges (§15.3.7.2); order groups by first appearance."""
    groups: list[list[int]] = []  # [start, end, first order]
    for start, end, order in sorted(chosen):
        if groups and start <= groups[-1][1] + 1:
            group = groups[-1]
            group[1] = max(group[1], end)
            group[2] = min(group[2], order)
        else:
            groups.append([start, end, order])
    groups.sort(key=lambda g: g[2])
    return tuple((g[0], g[1]) for g in groups)


def _number(digits: str) -> int:
    """A decimal of any length; one beyond any file size becomes ``_HUGE``."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_DIGITS:
        return _HUGE
    return int(significant or "0")


def _digits_greater(a: str, b: str) -> bool:
    """Compare two ASCII decimals of any length without converting them."""
    a = a.lstrip("0")
    b = b.lstrip("0")
    return (len(a), a) > (len(b), b)


# --- Entity tags and preconditions (§8.8.3, §13.1) -----------------------------


def _parse_entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """Parse ``#entity-tag`` into ``(weak, opaque)`` pairs; ``None`` if malformed.

    Scans rather than splitting on commas: a comma is a legal etagc.
    """
    tags: list[tuple[bool, str]] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] in " \t,":  # OWS and empty list elements (§5.6.1)
            i += 1
            continue
        weak = value.startswith("W/", i)  # %s"W/": case-sensitive
        if weak:
            i += 2
        if i >= n or value[i] != '"':
            return None
        close = value.find('"', i + 1)
        if close < 0:
            return None
        opaque = value[i + 1 : close]
        if not _ETAGC.fullmatch(opaque):
            return None
        tags.append((weak, opaque))
        i = close + 1
        while i < n and value[i] in _OWS:
            i += 1
        if i < n and value[i] != ",":
            return None
    return tags


def _own_tag(rep: Representation) -> tuple[bool, str] | None:
    m = _ENTITY_TAG.fullmatch(rep.etag)
    if m is None:
        return None  # a malformed ETag of ours matches nothing
    return (m.group(1) is not None, m.group(2))


def _if_match_holds(value: str, rep: Representation) -> bool:
    # §13.1.1: "*" holds when a current representation exists (it does);
    # otherwise a listed tag must match by strong comparison (§8.8.3.2).
    # A malformed field cannot be shown to hold, so it fails.
    if value.strip(_OWS) == "*":
        return True
    own = _own_tag(rep)
    tags = _parse_entity_tags(value)
    if own is None or tags is None or own[0]:
        return False
    return any(not weak and opaque == own[1] for weak, opaque in tags)


def _if_none_match_matches(value: str, rep: Representation) -> bool:
    # §13.1.2: "*" matches any current representation; otherwise weak
    # comparison (§8.8.3.2) against each listed tag.  A malformed field
    # matches nothing, so the request proceeds unconditionally.
    if value.strip(_OWS) == "*":
        return True
    own = _own_tag(rep)
    tags = _parse_entity_tags(value)
    if own is None or tags is None:
        return False
    return any(opaque == own[1] for _, opaque in tags)


def _if_range_holds(value: str, rep: Representation) -> bool:
    # §13.1.5: If-Range = entity-tag / HTTP-date.
    value = value.strip(_OWS)
    if value.startswith('"') or value.startswith("W/"):
        # Exactly one entity-tag (not a list), compared strongly: a weak tag
        # never matches.
        m = _ENTITY_TAG.fullmatch(value)
        own = _own_tag(rep)
        if m is None or own is None:
            return False
        weak, opaque = m.groups()
        return weak is None and not own[0] and opaque == own[1]
    # A date holds only when it is exactly the Last-Modified; anything
    # else, including garbage, is false.
    date = parse_http_date(value)
    return date is not None and date == rep.last_modified_s
