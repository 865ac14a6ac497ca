"""Who the client is and who may use what (steering/access.py): tables of cases.

Issue 10 #9 (every X-Forwarded-For line, right to left, IPv4-mapped hops
normalised) and #10 (public paths vs control paths, control_allow and
control_token). Pure: strings in, answers out.
"""

from __future__ import annotations

import pytest

from steering.access import client_address, control_refusal, is_public_path, networks
from steering.messages import MessageError

PROXIES = networks(["10.255.0.0/24", "2001:db8:ff::/48"])
CALLERS = networks(["10.254.0.1/32"])
PROXY = "10.255.0.5"
PROXY2 = "10.255.0.6"
CALLER = "10.254.0.1"
STRANGER = "203.0.113.9"

CLIENT_CASES = [
    # (name, peer, ?client=, X-Forwarded-For lines, expected (address, source))
    ("plain peer", STRANGER, None, [], ("203.0.113.9", "peer")),
    ("peer IPv6", "2001:db8::7", None, [], ("2001:db8::7", "peer")),
    ("peer IPv4-mapped", "::ffff:203.0.113.9", None, [], ("203.0.113.9", "peer")),
    ("peer with a zone", "fe80::1%eth0", None, [], ("fe80::1", "peer")),
    ("XFF from a stranger is ignored", STRANGER, None, ["192.0.2.1"], ("203.0.113.9", "peer")),
    ("XFF from a proxy", PROXY, None, ["192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    ("XFF via a proxy written IPv4-mapped", "::ffff:10.255.0.5", None, ["192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    ("rightmost untrusted hop wins", PROXY, None, ["192.0.2.66, 192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    ("trusted hops skipped", PROXY, None, ["192.0.2.1, 10.255.0.9, 10.255.0.6"], ("192.0.2.1", "x-forwarded-for")),
    ("trusted hop written IPv4-mapped is skipped", PROXY, None, ["192.0.2.1, ::ffff:10.255.0.9"], ("192.0.2.1", "x-forwarded-for")),
    ("client hop IPv4-mapped is normalised", PROXY, None, ["::ffff:192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    # Issue 10 #9: the client writes its own line, the proxy appends another; the proxy's line is the truth.
    ("a forged first line, the proxy's own line after it", PROXY, None, ["192.0.2.66", "192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    ("three lines as one list", PROXY, None, ["192.0.2.66", "192.0.2.1", "10.255.0.7"], ("192.0.2.1", "x-forwarded-for")),
    ("empty items skipped", PROXY, None, [" , 192.0.2.1 ,, "], ("192.0.2.1", "x-forwarded-for")),
    ("every hop trusted: the leftmost", PROXY, None, ["10.255.0.1, 10.255.0.2"], ("10.255.0.1", "x-forwarded-for")),
    ("garbage hop stops the walk", PROXY, None, ["192.0.2.1, not-an-address"], (PROXY, "peer")),
    ("garbage left of the client does not matter", PROXY, None, ["junk, 192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    ("a port is not an address", PROXY, None, ["192.0.2.1:5555"], (PROXY, "peer")),
    ("non-ASCII hop", PROXY, None, ["١٩٢.0.2.1"], (PROXY, "peer")),
    ("only empty lines", PROXY, None, ["", " "], (PROXY, "peer")),
    ("IPv6 hop", PROXY, None, ["2001:db8::1"], ("2001:db8::1", "x-forwarded-for")),
    ("IPv6 proxy", "2001:db8:ff::1", None, ["192.0.2.1"], ("192.0.2.1", "x-forwarded-for")),
    ("?client= from a caller", CALLER, "192.0.2.1", [], ("192.0.2.1", "query")),
    ("?client= IPv4-mapped", CALLER, "::ffff:192.0.2.1", [], ("192.0.2.1", "query")),
    ("?client= beats XFF from a caller", CALLER, "192.0.2.1", ["192.0.2.66"], ("192.0.2.1", "query")),
    ("?client= from a stranger is ignored", STRANGER, "192.0.2.1", [], ("203.0.113.9", "peer")),
    ("?client= from a proxy is ignored", PROXY, "192.0.2.1", [], (PROXY, "peer")),
    ("a caller is not a proxy", CALLER, None, ["192.0.2.1"], (CALLER, "peer")),
    ("hops beyond the limit are not walked", PROXY, None, ["192.0.2.1, " + ", ".join(["10.255.0.3"] * 80)], (PROXY, "peer")),
]


@pytest.mark.parametrize("name,peer,query,lines,expected", CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_client_address(name, peer, query, lines, expected):
    assert client_address(peer, query, lines, PROXIES, CALLERS) == expected


CLIENT_ERRORS = [
    ("peer not an address", "", None, [], "peer"),
    ("peer a path (unix socket)", "/run/steer.sock", None, [], "peer"),
    ("?client= garbage from a caller", CALLER, "nonsense", [], "client"),
    ("?client= empty from a caller", CALLER, "", [], "client"),
    ("?client= a CIDR from a caller", CALLER, "192.0.2.0/24", [], "client"),
]


@pytest.mark.parametrize("name,peer,query,lines,where", CLIENT_ERRORS, ids=[c[0] for c in CLIENT_ERRORS])
def test_client_address_refuses(name, peer, query, lines, where):
    with pytest.raises(MessageError) as e:
        client_address(peer, query, lines, PROXIES, CALLERS)
    assert str(e.value).startswith(where + ":")


PATH_CASES = [
    ("/steer", True),
    ("/content/m1.mp4", True),
    ("/content/", True),  # the handler answers 404/400; not control
    ("/play/m1/manifest.mpd", True),
    ("/watch", True),
    ("/watch/app.js", True),
    ("/", False),
    ("/health", False),
    ("/metrics", False),
    ("/steer/", False),
    ("/steerx", False),
    ("/content", False),
    ("/playback", False),
    ("/watchers", False),
    ("/admin", False),
    ("//steer", False),
]


@pytest.mark.parametrize("path,public", PATH_CASES)
def test_public_paths(path, public):
    assert is_public_path(path) is public


TOKEN = "0123456789abcdef-token"
NETS = networks(["192.0.2.0/24"])
OPEN = networks(["0.0.0.0/0", "::/0"])

CONTROL_CASES = [
    # (name, peer, Authorization, allow, token, allowed?)
    ("loopback", "127.0.0.1", None, (), None, True),
    ("loopback anywhere in 127/8", "127.3.4.5", None, (), None, True),
    ("loopback v6", "::1", None, (), None, True),
    ("loopback IPv4-mapped", "::ffff:127.0.0.1", None, (), None, True),
    ("stranger, default list", "203.0.113.9", None, (), None, False),
    ("listed", "192.0.2.77", None, NETS, None, True),
    ("listed, IPv4-mapped", "::ffff:192.0.2.77", None, NETS, None, True),
    ("not listed", "198.51.100.1", None, NETS, None, False),
    ("v6 not in a v4 list", "2001:db8::1", None, NETS, None, False),
    ("0.0.0.0/0 and ::/0 open to everyone", "198.51.100.1", None, OPEN, None, True),
    ("::/0 opens v6", "2001:db8::1", None, OPEN, None, True),
    ("token: loopback without it", "127.0.0.1", None, (), TOKEN, False),
    ("token: loopback with it", "127.0.0.1", f"Bearer {TOKEN}", (), TOKEN, True),
    ("token: scheme case-insensitive", "127.0.0.1", f"bearer {TOKEN}", (), TOKEN, True),
    ("token: wrong", "127.0.0.1", "Bearer nope", (), TOKEN, False),
    ("token: a prefix of it", "127.0.0.1", f"Bearer {TOKEN[:-1]}", (), TOKEN, False),
    ("token: basic scheme", "127.0.0.1", f"Basic {TOKEN}", (), TOKEN, False),
    ("token: non-ASCII header", "127.0.0.1", "Bearer tökén", (), TOKEN, False),
    ("token: right but address not allowed", "203.0.113.9", f"Bearer {TOKEN}", NETS, TOKEN, False),
    ("token: right and listed", "192.0.2.1", f"Bearer {TOKEN}", NETS, TOKEN, True),
    ("peer not an address", "", None, OPEN, None, False),
]


@pytest.mark.parametrize("name,peer,auth,allow,token,allowed", CONTROL_CASES, ids=[c[0] for c in CONTROL_CASES])
def test_control_refusal(name, peer, auth, allow, token, allowed):
    reason = control_refusal(peer, auth, allow, token)
    assert (reason is None) is allowed, reason
    if reason is not None:
        assert reason.startswith("control endpoints")
