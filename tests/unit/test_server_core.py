"""The server's pure decisions as case tables: control access, query numbers,
content paths, signature detection, response heads, connection deadlines,
the single-range fast path against `ranges.decide`, and the parent's loop guard."""

from __future__ import annotations

import random

import pytest

from oca.http import ranges
from oca.http.protocol import ABORT, BUSY, CLOSE, CLOSING, HEAD, IDLE, NOTHING, TIMEOUT, expiry_action
from oca.server.control import (
    DELTA_PAGE_DEFAULT,
    DELTA_PAGE_MAX,
    ControlPolicy,
    InventoryQuery,
    QueryError,
    control_refusal,
    parse_inventory_query,
    parse_routes_query,
)
from oca.server.responses import _SIMPLE_RANGE, PathError, build_head, has_signature, parse_content_path

ADDRESS = "control endpoints are not open to this address"
TOKEN = "control endpoints need a valid bearer token"

# ---------------------------------------------------------------- control access (defect 8)

OPEN = ControlPolicy.from_config(("0.0.0.0/0", "::/0"), None)
NONE = ControlPolicy.from_config((), None)
PLANE = ControlPolicy.from_config(("10.1.0.0/16", "2001:db8::/32"), None)
TOKENED = ControlPolicy.from_config(("10.1.0.0/16",), "s3cret-token-0123456789")

ACCESS_CASES = [
    # (peer, Authorization, policy, refusal)
    ("127.0.0.1", None, NONE, None),  # loopback is always allowed
    ("127.3.4.5", None, NONE, None),  # all of 127.0.0.0/8
    ("::1", None, NONE, None),
    ("::ffff:127.0.0.1", None, NONE, None),  # IPv4-mapped loopback
    ("10.1.2.3", None, NONE, ADDRESS),  # the default: loopback only
    ("192.0.2.1", None, NONE, ADDRESS),
    ("2001:db8::1", None, NONE, ADDRESS),
    ("10.1.2.3", None, PLANE, None),
    ("::ffff:10.1.2.3", None, PLANE, None),  # mapped peers are judged as IPv4
    ("10.2.0.1", None, PLANE, ADDRESS),
    ("2001:db8:5::1", None, PLANE, None),
    ("2001:db9::1", None, PLANE, ADDRESS),
    ("fe80::1%eth0", None, PLANE, ADDRESS),  # zone stripped, still outside
    ("192.0.2.1", None, OPEN, None),  # 0.0.0.0/0 opens to every IPv4 peer
    ("2001:db9::1", None, OPEN, None),  # ::/0 to every IPv6 peer
    ("", None, OPEN, ADDRESS),  # no peer address (a Unix socket): refused
    ("not-an-ip", None, OPEN, ADDRESS),
    ("10.1.2.3", "Bearer s3cret-token-0123456789", TOKENED, None),
    ("10.1.2.3", "bearer   s3cret-token-0123456789 ", TOKENED, None),  # scheme is case-insensitive
    ("127.0.0.1", None, TOKENED, TOKEN),  # the token binds loopback too
    ("127.0.0.1", "Bearer s3cret-token-0123456789", TOKENED, None),
    ("10.1.2.3", "Bearer s3cret-token-012345678", TOKENED, TOKEN),  # one character short
    ("10.1.2.3", "Bearer s3cret-token-0123456789x", TOKENED, TOKEN),
    ("10.1.2.3", "Basic s3cret-token-0123456789", TOKENED, TOKEN),
    ("10.1.2.3", "s3cret-token-0123456789", TOKENED, TOKEN),
    ("10.1.2.3", "Bearer ", TOKENED, TOKEN),
    ("10.1.2.3", "Bearer s3cret-tökén", TOKENED, TOKEN),  # non-ASCII (latin-1 decoded header)
    ("10.9.9.9", "Bearer s3cret-token-0123456789", TOKENED, ADDRESS),  # a good token from a wrong address
]


@pytest.mark.parametrize("peer,auth,policy,want", ACCESS_CASES)
def test_control_access(peer, auth, policy, want):
    assert control_refusal(peer, auth, policy) == want


# ---------------------------------------------------------------- query numbers (defect 18)

QUERY_CASES = [
    ("", InventoryQuery(None, DELTA_PAGE_DEFAULT)),
    ("since=5", InventoryQuery(5, DELTA_PAGE_DEFAULT)),
    ("since=0", InventoryQuery(0, DELTA_PAGE_DEFAULT)),
    ("since=5&limit=10", InventoryQuery(5, 10, True)),
    (f"since=5&limit={DELTA_PAGE_MAX}", InventoryQuery(5, DELTA_PAGE_MAX, True)),
    ("since=9999999999999999999", InventoryQuery(9999999999999999999, DELTA_PAGE_DEFAULT)),
    ("since=5&other=x", InventoryQuery(5, DELTA_PAGE_DEFAULT)),  # unknown parameters are ignored
    ("since=%C2%B2", "since"),  # superscript two: str.isdigit() says yes
    ("since=%D9%A3", "since"),  # Arabic-Indic three
    ("since=" + "9" * 20, "since"),
    ("since=" + "9" * 5000, "since"),
    ("since=-1", "since"),
    ("since=+1", "since"),
    ("since=1.5", "since"),
    ("since=NaN", "since"),
    ("since=", "since"),
    ("since=%201", "since"),
    ("since=0x1f", "since"),
    ("since=1&since=2", "since"),
    ("since=1&limit=0", "limit"),
    ("since=1&limit=-5", "limit"),
    (f"since=1&limit={DELTA_PAGE_MAX + 1}", "limit"),
    ("since=1&limit=ten", "limit"),
]


@pytest.mark.parametrize("query,want", QUERY_CASES)
def test_inventory_query(query, want):
    if isinstance(want, str):
        with pytest.raises(QueryError) as exc:
            parse_inventory_query(query)
        assert str(exc.value).startswith(want + ":")
    else:
        assert parse_inventory_query(query) == want


@pytest.mark.parametrize("query,want", [("", None), ("since=3", 3), ("since=%C2%B2", QueryError), ("since=" + "1" * 5000, QueryError)])
def test_routes_query(query, want):
    if want is QueryError:
        with pytest.raises(QueryError):
            parse_routes_query(query)
    else:
        assert parse_routes_query(query) == want


# ---------------------------------------------------------------- content paths and signatures (defect 17)

PATH_CASES = [
    ("/content/a.mp4", ("a.mp4", None)),
    ("/content/a%2Emp4", ("a.mp4", None)),
    ("/content/a.mp4/range/0-99", ("a.mp4", (0, 99))),
    ("/content/a.mp4/range/5-1", ("a.mp4", (5, 1))),  # order is ranges.decide_path_range's business
    ("/content/a.mp4/range/" + "9" * 19 + "-" + "9" * 19, ("a.mp4", (int("9" * 19), int("9" * 19)))),
    ("/content/a.mp4/range/" + "9" * 20 + "-1", "malformed range"),
    ("/content/a.mp4/range/%C2%B2-3", "malformed range"),
    ("/content/a.mp4/range/²-3", "malformed range"),
    ("/content/a.mp4/range/1-", "malformed range"),
    ("/content/a.mp4/range/-1", "malformed range"),
    ("/content/a.mp4/range/1-2-3", "malformed range"),
    ("/content/a.mp4/range/+1-2", "malformed range"),
    ("/content/a.mp4/bytes/1-2", "malformed path"),
    ("/content/a.mp4/", "malformed path"),
    ("/content/", "malformed content id"),
    ("/content/..", "malformed content id"),
    ("/content/%2e%2e%2fetc%2fpasswd", "malformed content id"),
    ("/content/a b", "malformed content id"),
]


@pytest.mark.parametrize("path,want", PATH_CASES)
def test_parse_content_path(path, want):
    if isinstance(want, str):
        with pytest.raises(PathError) as exc:
            parse_content_path(path)
        assert str(exc.value).startswith(want)
    else:
        assert parse_content_path(path) == want


@pytest.mark.parametrize("query,want", [
    ("", False), ("start=0", False), ("format=t=1", False), ("xt=1", False), ("at=1&b=2", False),
    ("t=abc", True), ("e=1&k=a&t=abc", True), ("t=", True), ("t", True), ("a=1&t=2", True),
])
def test_has_signature(query, want):
    assert has_signature(query) is want


# ---------------------------------------------------------------- the head builder


def test_build_head_is_the_one_shape_of_every_head():
    date = b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    assert build_head(200, date, b"Server: x\r\n", 5, False) == (
        b"HTTP/1.1 200 OK\r\n" + date + b"Server: x\r\nContent-Length: 5\r\n\r\n")
    assert build_head(304, date, b"", None, True) == b"HTTP/1.1 304 Not Modified\r\n" + date + b"Connection: close\r\n\r\n"
    assert build_head(599, date, b"", 0, False).startswith(b"HTTP/1.1 599 Error\r\n")


# ---------------------------------------------------------------- connection deadlines


DEADLINE_CASES = [
    # (phase, kind, busy, action)
    (IDLE, "header", False, CLOSE),  # connected, sent nothing
    (HEAD, "header", False, TIMEOUT),  # slowloris: 408, then linger
    (BUSY, "header", True, NOTHING),  # a pipelined head never cuts a response in flight
    (HEAD, "header", True, NOTHING),
    (CLOSING, "header", False, NOTHING),
    (IDLE, "idle", False, CLOSE),  # keep-alive timeout
    (HEAD, "idle", False, NOTHING),  # a head started: the header deadline applies instead
    (BUSY, "idle", True, NOTHING),
    (BUSY, "send", True, ABORT),  # the client stopped reading: reset
    (IDLE, "send", False, ABORT),
    (CLOSING, "linger", False, CLOSE),
    (BUSY, "linger", True, CLOSE),
    (IDLE, "unknown", False, NOTHING),
]


@pytest.mark.parametrize("phase,kind,busy,want", DEADLINE_CASES)
def test_expiry_action(phase, kind, busy, want):
    assert expiry_action(phase, kind, busy) == want


# ---------------------------------------------------------------- _SIMPLE_RANGE agrees with ranges.decide


def _fast_path(range_value: str, size: int, max_ranges: int) -> tuple[int, int, int] | None:
    """What App._content_response's fast path answers, or None when it defers to ranges.decide."""
    if max_ranges <= 0:
        return None
    m = _SIMPLE_RANGE.fullmatch(range_value)
    if m is None:
        return None
    start, last = int(m[1]), int(m[2])
    if start <= last and start < size:
        end = last if last < size else size - 1
        return 206, start, end
    return None


def _random_range(rng: random.Random, size: int) -> str:
    big = 10 ** rng.randint(1, 20)
    pick = rng.random()
    a = rng.randint(0, max(0, size * 2)) if pick < 0.7 else rng.randint(0, big)
    b = a + rng.randint(-5, size + 5) if rng.random() < 0.8 else rng.randint(0, big)
    if rng.random() < 0.5:
        return f"bytes={a}-{b}"  # the form the fast path takes, half the time
    forms = [
        f"bytes={a}-{b}", f"bytes={a}-", f"bytes=-{b}", f"bytes={a}-{b},{b}-{a}", f"bytes= {a}-{b}", f"bytes={a}-{b} ",
        f"BYTES={a}-{b}", f"bytes={a:020d}-{b}", f"bytes={a}-{b:025d}", f"bytes={a}-{b},", f"items={a}-{b}",
        f"bytes={a}-{b}\t", f"bytes=0{a}-0{b}", f"bytes={-a}-{b}",
    ]
    return rng.choice(forms)


def test_single_range_fast_path_agrees_with_decide_on_random_inputs():
    rng = random.Random(20261201)
    checked = 0
    for _ in range(30_000):
        size = rng.choice([0, 1, 2, 10, 1000, 65536, 10**9, 10**17, 10**18 + 7])
        value = _random_range(rng, size)
        max_ranges = rng.choice([0, 1, 16])
        fast = _fast_path(value, size, max_ranges)
        if fast is None:
            continue
        checked += 1
        d = ranges.decide("GET", value, None, None, None, None, None, ranges.Representation(size, '"x"', 0), max_ranges)
        assert (d.status, d.ranges) == (fast[0], ((fast[1], fast[2]),)), (value, size, max_ranges)
    assert checked > 3_000  # the generator reaches the fast path often enough to mean something


@pytest.mark.parametrize("query,want", [
    ("", None), ("top=3", 3), ("top=0", "top"), ("top=-1", "top"), ("top=%C2%B2", "top"), ("top=" + "9" * 20, "top"),
    ("top=1&top=2", "top"), ("top=", "top"), ("top= 1", "top"),
])
def test_popularity_query(query, want):
    from oca.server.control import parse_popularity_query

    if isinstance(want, str):
        with pytest.raises(QueryError) as exc:
            parse_popularity_query(query)
        assert str(exc.value).startswith(want + ":")
    else:
        assert parse_popularity_query(query) == want
