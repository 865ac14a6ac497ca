"""The validators of what appliances and clients send steering (steering/messages.py).

Tables of good and hostile answers: each hostile one must raise the one
error type, `MessageError`, whose text starts with the field it is about.
Pure: bytes in, values out.
"""

from __future__ import annotations

import json

import pytest

from steering.messages import (
    MAX_REASON_CHARS,
    AdmittedRoutes,
    HealthMessage,
    InventoryMessage,
    MessageError,
    RoutesMessage,
    SteerQuery,
    admit_routes,
    decode_object,
    parse_health,
    parse_inventory,
    parse_routes,
    parse_steer_query,
    read_poll,
)


def j(doc) -> bytes:
    return json.dumps(doc).encode()


HEALTHY = {"status": "ok", "conditions": [], "load": {"nic_utilisation": 0.25, "bytes_per_s": 1e6}, "appliance": "a1", "stores": []}


def health(**changes) -> bytes:
    doc = dict(HEALTHY)
    for k, v in changes.items():
        if v is DELETE:
            doc.pop(k, None)
        else:
            doc[k] = v
    return j(doc)


DELETE = object()

# ---------------------------------------------------------------- JSON

DECODE_CASES = [
    # (name, body, field the error starts with)
    ("empty", b"", "body"),
    ("invalid JSON", b"{", "body"),
    ("trailing garbage", b'{"a": 1} x', "body"),
    ("a list", b"[]", "body"),
    ("a string", b'"ok"', "body"),
    ("null", b"null", "body"),
    ("a number", b"1", "body"),
    ("NaN", b'{"a": NaN}', "body"),
    ("Infinity", b'{"a": -Infinity}', "body"),
    ("not UTF-8", b'{"a": "\xff"}', "body"),
    ("duplicate key", b'{"status": "ok", "status": "down"}', "status"),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000, "body"),
]


@pytest.mark.parametrize("name,body,where", DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_decode_refuses(name, body, where):
    with pytest.raises(MessageError) as e:
        decode_object(body)
    assert str(e.value).startswith(where + ":"), str(e.value)


def test_decode_refuses_non_bytes():
    with pytest.raises(MessageError, match="^body:"):
        decode_object("{}")  # type: ignore[arg-type]


# ---------------------------------------------------------------- /health

HEALTH_GOOD = [
    ("the appliance's own form", health(), HealthMessage("ok", (), 0.25, 1e6)),
    ("load null", health(load=None), HealthMessage("ok", (), None, None)),
    ("no load", health(load=DELETE), HealthMessage("ok", (), None, None)),
    ("utilisation null", health(load={"nic_utilisation": None}), HealthMessage("ok", (), None, None)),
    ("integers", health(load={"nic_utilisation": 1, "bytes_per_s": 0}), HealthMessage("ok", (), 1.0, 0.0)),
    ("draining with a reason", health(status="draining", conditions=[{"status": "draining", "reason": "drained by operator"}]),
     HealthMessage("draining", ("drained by operator",), 0.25, 1e6)),
    ("extra fields ignored", health(colour="blue", load={"nic_utilisation": 0.5, "extra": [1, 2]}), HealthMessage("ok", (), 0.5, None)),
    ("non-ASCII reason kept", health(conditions=[{"reason": "stockage défaillant"}]), HealthMessage("ok", ("stockage défaillant",), 0.25, 1e6)),
    ("control characters replaced", health(conditions=[{"reason": "a\nb\x1b[31m"}]), HealthMessage("ok", ("a?b?[31m",), 0.25, 1e6)),
    ("empty reason dropped", health(conditions=[{"status": "degraded"}]), HealthMessage("ok", (), 0.25, 1e6)),
    ("generations", health(generation=7, routes_generation=3), HealthMessage("ok", (), 0.25, 1e6, 7, 3)),
    ("inventory generation only (routes asked always)", health(generation=0), HealthMessage("ok", (), 0.25, 1e6, 0, None)),
    ("generations null", health(generation=None, routes_generation=None), HealthMessage("ok", (), 0.25, 1e6)),
]


@pytest.mark.parametrize("name,body,expected", HEALTH_GOOD, ids=[c[0] for c in HEALTH_GOOD])
def test_health_accepts(name, body, expected):
    assert parse_health(body) == expected


def test_health_reason_is_cut():
    msg = parse_health(health(conditions=[{"reason": "x" * 1_000_000}]))
    assert msg.reasons == ("x" * MAX_REASON_CHARS,)


HEALTH_BAD = [
    # (name, body, field)
    ("load is a number (issue 10 #1)", health(load=1), "load"),
    ("load is a list", health(load=[]), "load"),
    ("load is a string", health(load="busy"), "load"),
    ("utilisation a string", health(load={"nic_utilisation": "0.5"}), "load.nic_utilisation"),
    ("utilisation a boolean", health(load={"nic_utilisation": True}), "load.nic_utilisation"),
    ("utilisation negative", health(load={"nic_utilisation": -0.1}), "load.nic_utilisation"),
    ("utilisation huge", health(load={"nic_utilisation": 1e300}), "load.nic_utilisation"),
    ("utilisation huge integer", health(load={"nic_utilisation": 10**400}), "load.nic_utilisation"),
    ("utilisation of 5,000 digits", b'{"status": "ok", "load": {"nic_utilisation": 1' + b"0" * 5000 + b"}}", "body"),
    ("bytes_per_s negative", health(load={"bytes_per_s": -1}), "load.bytes_per_s"),
    ("bytes_per_s an object", health(load={"bytes_per_s": {}}), "load.bytes_per_s"),
    ("NaN utilisation", b'{"status": "ok", "load": {"nic_utilisation": NaN}}', "body"),
    ("status missing", health(status=DELETE), "status"),
    ("status null", health(status=None), "status"),
    ("status a number", health(status=1), "status"),
    ("status unknown", health(status="fine"), "status"),
    ("status non-ASCII", health(status="ök"), "status"),
    ("status huge", health(status="o" * 10_000_000), "status"),
    ("conditions an object", health(conditions={}), "conditions"),
    ("condition a string", health(conditions=["bad"]), "conditions[0]"),
    ("reason a number", health(conditions=[{"reason": 7}]), "conditions[0].reason"),
    ("too many conditions", health(conditions=[{"reason": "x"}] * 100_000), "conditions"),
    ("not an object", b"[1]", "body"),
    ("generation a string", health(generation="7"), "generation"),
    ("generation a boolean", health(generation=True), "generation"),
    ("generation negative", health(generation=-1), "generation"),
    ("generation over 2^63-1", health(generation=2**63), "generation"),
    ("generation a float", health(generation=1.5), "generation"),
    ("routes generation a list", health(routes_generation=[1]), "routes_generation"),
    ("routes generation of 5,000 digits", b'{"status": "ok", "routes_generation": 1' + b"0" * 5000 + b"}", "body"),
]


@pytest.mark.parametrize("name,body,where", HEALTH_BAD, ids=[c[0] for c in HEALTH_BAD])
def test_health_refuses(name, body, where):
    with pytest.raises(MessageError) as e:
        parse_health(body)
    assert str(e.value).startswith(where + ":"), str(e.value)
    assert len(str(e.value)) < 400


# ---------------------------------------------------------------- /inventory

INVENTORY_GOOD = [
    ("full", j({"appliance": "a1", "generation": 7, "kind": "full", "count": 2, "ids": ["m1.mp4", "m2.ts"]}), 0,
     InventoryMessage("full", 7, ids=frozenset({"m1.mp4", "m2.ts"}))),
    ("full, empty", j({"generation": 0, "kind": "full", "ids": []}), 0, InventoryMessage("full", 0)),
    ("full whatever since", j({"generation": 3, "kind": "full", "ids": ["a"]}), 9, InventoryMessage("full", 3, ids=frozenset({"a"}))),
    ("delta", j({"generation": 9, "since": 7, "kind": "delta", "added": ["n"], "removed": ["o"]}), 7,
     InventoryMessage("delta", 9, added=frozenset({"n"}), removed=frozenset({"o"}))),
    ("unchanged", j({"generation": 7, "since": 7, "kind": "unchanged"}), 7, InventoryMessage("unchanged", 7)),
    ("unchanged without since", j({"generation": 7, "kind": "unchanged"}), 7, InventoryMessage("unchanged", 7)),
    ("extra fields ignored", j({"generation": 1, "kind": "full", "ids": [], "next": 5, "x": {"y": 1}}), 0, InventoryMessage("full", 1)),
]


@pytest.mark.parametrize("name,body,since,expected", INVENTORY_GOOD, ids=[c[0] for c in INVENTORY_GOOD])
def test_inventory_accepts(name, body, since, expected):
    assert parse_inventory(body, since) == expected


INVENTORY_BAD = [
    # (name, doc, since, field)
    ("kind missing", {"generation": 1, "ids": []}, 0, "kind"),
    ("kind unknown", {"generation": 1, "kind": "partial", "ids": []}, 0, "kind"),
    ("kind a list", {"generation": 1, "kind": ["full"], "ids": []}, 0, "kind"),
    ("generation missing", {"kind": "full", "ids": []}, 0, "generation"),
    ("generation a string", {"generation": "1", "kind": "full", "ids": []}, 0, "generation"),
    ("generation a float", {"generation": 1.5, "kind": "full", "ids": []}, 0, "generation"),
    ("generation a boolean", {"generation": True, "kind": "full", "ids": []}, 0, "generation"),
    ("generation negative", {"generation": -1, "kind": "full", "ids": []}, 0, "generation"),
    ("generation huge", {"generation": 10**30, "kind": "full", "ids": []}, 0, "generation"),
    ("generation 2^63", {"generation": 2**63, "kind": "full", "ids": []}, 0, "generation"),
    ("ids missing", {"generation": 1, "kind": "full"}, 0, "ids"),
    ("ids an object", {"generation": 1, "kind": "full", "ids": {"a": 1}}, 0, "ids"),
    ("ids a string", {"generation": 1, "kind": "full", "ids": "abc"}, 0, "ids"),
    ("id a number", {"generation": 1, "kind": "full", "ids": ["a", 7]}, 0, "ids[1]"),
    ("id null", {"generation": 1, "kind": "full", "ids": [None]}, 0, "ids[0]"),
    ("id with a slash", {"generation": 1, "kind": "full", "ids": ["../etc/passwd"]}, 0, "ids[0]"),
    ("id non-ASCII", {"generation": 1, "kind": "full", "ids": ["fïlm"]}, 0, "ids[0]"),
    ("id too long", {"generation": 1, "kind": "full", "ids": ["a" * 129]}, 0, "ids[0]"),
    ("id empty", {"generation": 1, "kind": "full", "ids": [""]}, 0, "ids[0]"),
    ("delta added missing", {"generation": 9, "since": 7, "kind": "delta", "removed": []}, 7, "added"),
    ("delta removed not a list", {"generation": 9, "since": 7, "kind": "delta", "added": [], "removed": 3}, 7, "removed"),
    ("delta bad id", {"generation": 9, "since": 7, "kind": "delta", "added": [{}], "removed": []}, 7, "added[0]"),
    ("delta about another generation", {"generation": 9, "since": 5, "kind": "delta", "added": [], "removed": []}, 7, "since"),
    ("delta going back", {"generation": 6, "since": 7, "kind": "delta", "added": [], "removed": []}, 7, "generation"),
    ("unchanged about another generation", {"generation": 5, "since": 5, "kind": "unchanged"}, 7, "since"),
    ("since a boolean", {"generation": 1, "since": True, "kind": "unchanged"}, 1, "since"),
]


@pytest.mark.parametrize("name,doc,since,where", INVENTORY_BAD, ids=[c[0] for c in INVENTORY_BAD])
def test_inventory_refuses(name, doc, since, where):
    with pytest.raises(MessageError) as e:
        parse_inventory(j(doc), since)
    assert str(e.value).startswith(where + ":"), str(e.value)
    assert len(str(e.value)) < 400


def test_inventory_generation_of_5000_digits_is_refused():
    with pytest.raises(MessageError, match="^body:"):
        parse_inventory(b'{"kind": "full", "ids": [], "generation": 1' + b"0" * 5000 + b"}", 0)


def test_inventory_over_the_id_limit_is_refused():
    with pytest.raises(MessageError, match=r"^ids: 11 entries, more than the limit of 10"):
        parse_inventory(j({"generation": 1, "kind": "full", "ids": [f"f{i}" for i in range(11)]}), 0, max_ids=10)


# ---------------------------------------------------------------- /routes

ROUTES_GOOD = [
    ("full", {"appliance": "a1", "site": "s", "generation": 3, "kind": "full", "prefixes": ["10.0.0.0/8", "2001:db8::/32"]},
     RoutesMessage("full", 3, ("10.0.0.0/8", "2001:db8::/32"))),
    ("host bits cleared, host routes", {"generation": 1, "kind": "full", "prefixes": ["10.1.2.3/16", "192.0.2.7", "2001:DB8::1/128"]},
     RoutesMessage("full", 1, ("10.1.0.0/16", "192.0.2.7/32", "2001:db8::1/128"))),
    ("duplicates once", {"generation": 1, "kind": "full", "prefixes": ["10.0.0.0/8", "10.0.0.0/8", "10.9.9.9/8"]},
     RoutesMessage("full", 1, ("10.0.0.0/8",))),
    ("empty", {"generation": 0, "kind": "full", "prefixes": []}, RoutesMessage("full", 0, ())),
    ("unchanged", {"generation": 4, "kind": "unchanged"}, RoutesMessage("unchanged", 4)),
    ("default route is a prefix like any other", {"generation": 1, "kind": "full", "prefixes": ["0.0.0.0/0"]},
     RoutesMessage("full", 1, ("0.0.0.0/0",))),
]


@pytest.mark.parametrize("name,doc,expected", ROUTES_GOOD, ids=[c[0] for c in ROUTES_GOOD])
def test_routes_accepts(name, doc, expected):
    assert parse_routes(j(doc), 100) == expected


ROUTES_BAD = [
    ("prefix a number (issue 10 #2)", ["10.0.0.0/8", 7], "prefixes[1]"),
    ("prefix null", [None], "prefixes[0]"),
    ("prefix a list", [["10.0.0.0/8"]], "prefixes[0]"),
    ("prefix garbage", ["not-a-prefix"], "prefixes[0]"),
    ("prefix length too long", ["10.0.0.0/33"], "prefixes[0]"),
    ("v6 length too long", ["2001:db8::/129"], "prefixes[0]"),
    ("negative length", ["10.0.0.0/-1"], "prefixes[0]"),
    ("empty length", ["10.0.0.0/"], "prefixes[0]"),
    ("superscript digit", ["10.0.0.0/²"], "prefixes[0]"),
    ("non-ASCII digits", ["١٠.0.0.0/8"], "prefixes[0]"),
    ("octal-looking", ["010.0.0.0/8"], "prefixes[0]"),
    ("spaces", [" 10.0.0.0/8"], "prefixes[0]"),
    ("NUL", ["10.0.0.0\x00/8"], "prefixes[0]"),
    ("huge", ["1" * 1_000_000], "prefixes[0]"),
    ("zone id", ["fe80::1%eth0/64"], "prefixes[0]"),
]


@pytest.mark.parametrize("name,prefixes,where", ROUTES_BAD, ids=[c[0] for c in ROUTES_BAD])
def test_routes_refuses_a_bad_prefix(name, prefixes, where):
    with pytest.raises(MessageError) as e:
        parse_routes(j({"generation": 1, "kind": "full", "prefixes": prefixes}), 100)
    assert str(e.value).startswith(where + ":"), str(e.value)
    assert len(str(e.value)) < 400


ROUTES_BAD_SHAPE = [
    ("prefixes missing", {"generation": 1, "kind": "full"}, "prefixes"),
    ("prefixes a string", {"generation": 1, "kind": "full", "prefixes": "10.0.0.0/8"}, "prefixes"),
    ("kind delta", {"generation": 1, "kind": "delta", "prefixes": []}, "kind"),
    ("generation null", {"generation": None, "kind": "full", "prefixes": []}, "generation"),
]


@pytest.mark.parametrize("name,doc,where", ROUTES_BAD_SHAPE, ids=[c[0] for c in ROUTES_BAD_SHAPE])
def test_routes_refuses_a_bad_shape(name, doc, where):
    with pytest.raises(MessageError) as e:
        parse_routes(j(doc), 100)
    assert str(e.value).startswith(where + ":"), str(e.value)


def test_routes_over_the_cap_are_refused_whole_with_the_reason():
    doc = {"generation": 1, "kind": "full", "prefixes": [f"10.{i >> 8}.{i & 255}.0/24" for i in range(101)]}
    with pytest.raises(MessageError, match=r"^prefixes: 101 prefixes, more than \[health\] max_prefixes_per_appliance = 100"):
        parse_routes(j(doc), 100)
    assert len(parse_routes(j(doc), 101).prefixes) == 101


ADMIT_CASES = [
    # (name, prefixes, allowed, kept, dropped)
    ("no list: everything", ("0.0.0.0/0", "10.0.0.0/8"), None, ("0.0.0.0/0", "10.0.0.0/8"), ()),
    ("default route outside", ("0.0.0.0/0", "10.1.0.0/16"), ("10.0.0.0/8",), ("10.1.0.0/16",), ("0.0.0.0/0",)),
    ("the allowed prefix itself", ("10.0.0.0/8",), ("10.0.0.0/8",), ("10.0.0.0/8",), ()),
    ("shorter than allowed", ("10.0.0.0/7",), ("10.0.0.0/8",), (), ("10.0.0.0/7",)),
    ("sibling", ("11.0.0.0/8",), ("10.0.0.0/8",), (), ("11.0.0.0/8",)),
    ("host route inside", ("10.255.255.255/32",), ("10.0.0.0/8",), ("10.255.255.255/32",), ()),
    ("v6 inside, v4 list", ("2001:db8::/48",), ("10.0.0.0/8",), (), ("2001:db8::/48",)),
    ("v6 inside v6", ("2001:db8:1::/48", "::/0"), ("2001:db8::/32",), ("2001:db8:1::/48",), ("::/0",)),
    ("any of several", ("192.0.2.0/25", "198.51.100.7/32"), ("192.0.2.0/24", "198.51.100.0/24"), ("192.0.2.0/25", "198.51.100.7/32"), ()),
    ("empty list: nothing", ("10.0.0.0/8",), (), (), ("10.0.0.0/8",)),
    ("0.0.0.0/0 allowed: every v4", ("1.2.3.0/24", "2001:db8::/32"), ("0.0.0.0/0",), ("1.2.3.0/24",), ("2001:db8::/32",)),
]


@pytest.mark.parametrize("name,prefixes,allowed,kept,dropped", ADMIT_CASES, ids=[c[0] for c in ADMIT_CASES])
def test_admit_routes(name, prefixes, allowed, kept, dropped):
    assert admit_routes(prefixes, allowed) == AdmittedRoutes(kept, dropped)


def test_read_poll_names_the_endpoint():
    good_inv = j({"generation": 1, "kind": "full", "ids": ["a"]})
    good_routes = j({"generation": 1, "kind": "full", "prefixes": ["0.0.0.0/0", "10.0.0.0/8"]})
    answers = read_poll(health(), good_inv, 0, good_routes, 10, ("10.0.0.0/8",))
    assert answers.routes == AdmittedRoutes(("10.0.0.0/8",), ("0.0.0.0/0",)) and answers.routes_generation == 1
    with pytest.raises(MessageError, match=r"^/health: load:"):
        read_poll(health(load=1), good_inv, 0, good_routes, 10, None)
    with pytest.raises(MessageError, match=r"^/inventory: ids\[0\]:"):
        read_poll(health(), j({"generation": 1, "kind": "full", "ids": [1]}), 0, good_routes, 10, None)
    with pytest.raises(MessageError, match=r"^/routes: prefixes\[0\]:"):
        read_poll(health(), good_inv, 0, j({"generation": 1, "kind": "full", "prefixes": [7]}), 10, None)
    unchanged = read_poll(health(), good_inv, 0, j({"generation": 1, "kind": "unchanged"}), 10, None)
    assert unchanged.routes is None


# ---------------------------------------------------------------- a client's query

QUERY_CASES = [
    # (name, pairs, content in path, expected or the field of the error)
    ("content", [("content", "m1.mp4")], None, SteerQuery("m1.mp4", None)),
    ("content and client", [("content", "m1.mp4"), ("client", "192.0.2.1")], None, SteerQuery("m1.mp4", "192.0.2.1")),
    ("cache-buster ignored", [("content", "m1.mp4"), ("_", "123"), ("_", "456")], None, SteerQuery("m1.mp4", None)),
    ("path form", [], "m1.mp4", SteerQuery("m1.mp4", None)),
    ("path form with client", [("client", "::1")], "m1.mp4", SteerQuery("m1.mp4", "::1")),
    ("missing content", [], None, "content"),
    ("content twice", [("content", "a"), ("content", "b")], None, "content"),
    ("content in path and query", [("content", "a")], "b", "content"),
    ("client twice", [("content", "a"), ("client", "192.0.2.1"), ("client", "192.0.2.2")], None, "client"),
    ("content with a slash", [("content", "../x")], None, "content"),
    ("content non-ASCII", [("content", "fïlm")], None, "content"),
    ("content empty", [("content", "")], None, "content"),
    ("content too long", [("content", "a" * 129)], None, "content"),
    ("path id malformed", [], ".hidden", "content"),
    ("client huge", [("content", "a"), ("client", "1" * 10_000)], None, "client"),
    ("client non-ASCII", [("content", "a"), ("client", "١٩٢.0.2.1")], None, "client"),
]


@pytest.mark.parametrize("name,pairs,path_id,expected", QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_steer_query(name, pairs, path_id, expected):
    if isinstance(expected, SteerQuery):
        assert parse_steer_query(pairs, path_id) == expected
    else:
        with pytest.raises(MessageError) as e:
            parse_steer_query(pairs, path_id)
        assert str(e.value).startswith(expected + ":"), str(e.value)


# ---------------------------------------------------------------- body sizes (issue 10 #21)


def test_body_limits():
    from steering.messages import MAX_HEALTH_BYTES, BodyLimits, body_limits

    mb64 = 64 * 1_000_000
    assert body_limits(mb64, 100_000) == BodyLimits(MAX_HEALTH_BYTES, mb64, 100_000 * 64 + 64 * 1024)
    assert body_limits(mb64, 10_000_000).routes == mb64  # never more than max_response_mb
    assert body_limits(500_000, 100_000) == BodyLimits(500_000, 500_000, 500_000)
    # A full routes answer at the cap, IPv6 at its longest, fits its limit; one of a million prefixes does not.
    at_cap = j({"generation": 1, "kind": "full", "prefixes": ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:0/112"] * 1000})
    assert len(at_cap) <= body_limits(mb64, 1000).routes
    million = j({"generation": 1, "kind": "full", "prefixes": ["10.0.0.0/32"] * 1_000_000})
    assert len(million) > body_limits(mb64, 100_000).routes
