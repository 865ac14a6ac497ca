"""Prefix matching (steering/lpm.py) against a brute-force `ipaddress` oracle.

Pure: no I/O, no clock. Every random table comes from a seeded RNG, so a
failure names its seed and reproduces. The oracle knows nothing of
intervals, parents or DIR-24-8: for each address it tries every prefix of
the table (`ipaddress.ip_network`, compared by network address and mask)
and sorts the hits longest first. The addresses probed are each prefix's
first and last address, the addresses just outside it, and random ones.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from steering.lpm import PrefixEntry, PrefixTable, format_prefix, parse_prefix

SEEDS = (1, 2, 3)  # three independent random tables per family
V4_PREFIXES = 2500  # per seed; with nesting, duplicates, /0 and /32
V6_PREFIXES = 1500
RANDOM_ADDRESSES = 2000  # per seed and family, besides the boundary addresses
TAGS = tuple(("route", f"oca-{i}") for i in range(5)) + tuple(("cz", f"site-{i}") for i in range(3))


# ---------------------------------------------------------------- generators


def _random_prefixes(rng: random.Random, version: int, count: int) -> list[tuple[str, tuple]]:
    """(cidr, tag) pairs: random roots, prefixes nested inside earlier ones, /0, host routes, duplicates.

    Host bits are sometimes left set (``10.1.2.3/16``): the table must clear
    them, as `ipaddress.ip_network(strict=False)` does.
    """
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    nets: list = [cls(0)]  # /0: matches every address of the family
    while len(nets) < count:
        r = rng.random()
        if r < 0.35 and len(nets) > 1:
            # nest: a longer prefix inside an existing one (sometimes several levels deep)
            parent = rng.choice(nets)
            if parent.prefixlen == bits:
                continue
            length = rng.randint(parent.prefixlen + 1, min(bits, parent.prefixlen + rng.choice((1, 2, 8, 24))))
            offset = rng.getrandbits(bits - parent.prefixlen) if parent.prefixlen < bits else 0
            addr = int(parent.network_address) | offset
            nets.append(cls((addr, length), strict=False))
        elif r < 0.45:
            nets.append(cls((rng.getrandbits(bits), bits)))  # host route: /32 or /128
        elif r < 0.55 and len(nets) > 1:
            nets.append(rng.choice(nets))  # the same prefix again, another tag
        else:
            low = 1 if version == 4 else 8
            nets.append(cls((rng.getrandbits(bits), rng.randint(low, bits)), strict=False))
    items = []
    for net in nets:
        cidr = str(net)
        if rng.random() < 0.1 and net.prefixlen < bits:
            # host bits set in the text: the table clears them
            host = int(net.network_address) | rng.getrandbits(bits - net.prefixlen)
            cidr = f"{ipaddress.ip_address(host) if version == 4 else ipaddress.IPv6Address(host)}/{net.prefixlen}"
        items.append((cidr, rng.choice(TAGS)))
    return items


def _probe_addresses(rng: random.Random, version: int, items: list[tuple[str, tuple]]) -> list[int]:
    """First and last address of every prefix, one below and one above, and random addresses."""
    top = (1 << (32 if version == 4 else 128)) - 1
    out = set()
    for cidr, _ in items:
        net = ipaddress.ip_network(cidr, strict=False)
        first, last = int(net.network_address), int(net.broadcast_address)
        out.update(a for a in (first, last, first - 1, last + 1) if 0 <= a <= top)
    out.update(rng.getrandbits(32 if version == 4 else 128) for _ in range(RANDOM_ADDRESSES))
    out.update((0, top))
    return sorted(out)


# ---------------------------------------------------------------- the oracle


class Oracle:
    """Every prefix tried for every address: slow, obviously right."""

    def __init__(self, items: list[tuple[str, tuple]]):
        tags: dict[ipaddress._BaseNetwork, list] = {}
        for cidr, tag in items:
            net = ipaddress.ip_network(cidr, strict=False)
            lst = tags.setdefault(net, [])
            if tag not in lst:
                lst.append(tag)
        self.tags = tags
        self.by_version = {
            v: [(int(n.network_address), int(n.netmask), n) for n in tags if n.version == v] for v in (4, 6)
        }

    def matches(self, version: int, addr: int) -> list[tuple[str, int, tuple]]:
        hits = [n for net, mask, n in self.by_version[version] if addr & mask == net]
        hits.sort(key=lambda n: n.prefixlen, reverse=True)
        return [(str(n), n.prefixlen, tuple(self.tags[n])) for n in hits]


def _as_tuples(entries: tuple[PrefixEntry, ...]) -> list[tuple[str, int, tuple]]:
    return [(e.cidr, e.length, e.tags) for e in entries]


# ---------------------------------------------------------------- oracle tests


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_agree_with_brute_force_oracle(seed: int, version: int):
    rng = random.Random(seed * 10 + version)
    items = _random_prefixes(rng, version, V4_PREFIXES if version == 4 else V6_PREFIXES)
    table = PrefixTable.build(items)
    oracle = Oracle(items)
    assert len(table) == len(oracle.tags)
    addresses = _probe_addresses(rng, version, items)
    assert len(addresses) > 4 * 1000
    mismatches = []
    for addr in addresses:
        want = oracle.matches(version, addr)
        got = _as_tuples(table.matches_int(version, addr))
        if got != want:
            mismatches.append((str(ipaddress.ip_address(addr) if version == 4 else ipaddress.IPv6Address(addr)), got, want))
            if len(mismatches) >= 5:
                break
    assert not mismatches, f"seed {seed} v{version}: {mismatches}"


def test_mixed_table_keeps_families_apart():
    """One table with both families; `matches` takes ipaddress objects; v4 never matches v6."""
    rng = random.Random(99)
    items = _random_prefixes(rng, 4, 600) + _random_prefixes(rng, 6, 400)
    table = PrefixTable.build(items)
    oracle = Oracle(items)
    for _ in range(1500):
        version = rng.choice((4, 6))
        addr = ipaddress.ip_address(rng.getrandbits(32)) if version == 4 else ipaddress.IPv6Address(rng.getrandbits(128))
        assert _as_tuples(table.matches(addr)) == oracle.matches(version, int(addr))
        assert all((":" in e.cidr) == (version == 6) for e in table.matches(addr))


def test_oracle_with_ipaddress_membership_on_a_small_nested_table():
    """The same check with `addr in network` itself, on hand-made nesting and boundaries."""
    items = [
        ("0.0.0.0/0", ("cz", "world")),
        ("10.0.0.0/8", ("cz", "a")),
        ("10.0.0.0/8", ("route", "oca-1")),  # the same prefix from two tags
        ("10.0.0.0/8", ("cz", "a")),  # and a repeated tag, kept once
        ("10.1.0.0/16", ("route", "oca-2")),
        ("10.1.2.0/24", ("route", "oca-3")),
        ("10.1.2.3/32", ("route", "oca-4")),
        ("10.1.2.128/25", ("route", "oca-5")),
        ("10.255.255.255/32", ("route", "oca-6")),
        ("11.0.0.0/8", ("cz", "b")),  # adjacent to 10/8
        ("255.255.255.255/32", ("cz", "edge")),
        ("0.0.0.0/32", ("cz", "zero")),
        ("::/0", ("cz", "world6")),
        ("2001:db8::/32", ("cz", "a")),
        ("2001:db8:1::/48", ("route", "oca-1")),
        ("2001:db8:1::1/128", ("route", "oca-2")),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128", ("route", "oca-3")),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", ("cz", "edge6")),
    ]
    table = PrefixTable.build(items)
    nets = {}
    for cidr, tag in items:
        nets.setdefault(ipaddress.ip_network(cidr), [])
        if tag not in nets[ipaddress.ip_network(cidr)]:
            nets[ipaddress.ip_network(cidr)].append(tag)
    probes = set()
    for net in nets:
        for a in (int(net.network_address) - 1, int(net.network_address), int(net.broadcast_address), int(net.broadcast_address) + 1):
            top = (1 << net.max_prefixlen) - 1
            if 0 <= a <= top:
                probes.add(ipaddress.ip_address(a) if net.version == 4 else ipaddress.IPv6Address(a))
    assert len(probes) > 30
    for addr in probes:
        want = sorted((n for n in nets if n.version == addr.version and addr in n), key=lambda n: -n.prefixlen)
        got = table.matches(addr)
        assert [e.cidr for e in got] == [str(n) for n in want], addr
        assert [e.tags for e in got] == [tuple(nets[n]) for n in want], addr
    assert table.matches(ipaddress.ip_address("10.0.0.0"))[0].tags == (("cz", "a"), ("route", "oca-1"))


# ---------------------------------------------------------------- table cases

CASES = [
    # (prefixes, address, expected cidrs longest first)
    ([], "10.0.0.1", []),
    ([], "2001:db8::1", []),
    (["0.0.0.0/0"], "0.0.0.0", ["0.0.0.0/0"]),
    (["0.0.0.0/0"], "255.255.255.255", ["0.0.0.0/0"]),
    (["0.0.0.0/0"], "::1", []),
    (["::/0"], "::", ["::/0"]),
    (["::/0"], "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ["::/0"]),
    (["::/0"], "10.0.0.1", []),
    (["192.0.2.1/32"], "192.0.2.1", ["192.0.2.1/32"]),
    (["192.0.2.1/32"], "192.0.2.0", []),
    (["192.0.2.1/32"], "192.0.2.2", []),
    (["192.0.2.0/24"], "192.0.1.255", []),
    (["192.0.2.0/24"], "192.0.3.0", []),
    (["192.0.2.0/24", "192.0.2.0/25"], "192.0.2.127", ["192.0.2.0/25", "192.0.2.0/24"]),
    (["192.0.2.0/24", "192.0.2.0/25"], "192.0.2.128", ["192.0.2.0/24"]),
    (["192.0.2.0/24", "192.0.2.255/32"], "192.0.2.255", ["192.0.2.255/32", "192.0.2.0/24"]),
    (["192.0.2.0/24", "192.0.2.255/32"], "192.0.2.254", ["192.0.2.0/24"]),
    (["10.0.0.0/8", "10.0.0.0/9", "10.0.0.0/10"], "10.0.0.0", ["10.0.0.0/10", "10.0.0.0/9", "10.0.0.0/8"]),
    (["10.0.0.0/8", "10.128.0.0/9"], "10.127.255.255", ["10.0.0.0/8"]),
    (["255.255.255.0/24", "255.255.255.255/32"], "255.255.255.255", ["255.255.255.255/32", "255.255.255.0/24"]),
    (["0.0.0.0/32", "0.0.0.0/8"], "0.0.0.0", ["0.0.0.0/32", "0.0.0.0/8"]),
    (["0.0.0.0/32", "0.0.0.0/8"], "0.0.0.1", ["0.0.0.0/8"]),
    (["10.1.2.3/16"], "10.1.0.0", ["10.1.0.0/16"]),  # host bits cleared
    (["2001:db8::1/128"], "2001:db8::1", ["2001:db8::1/128"]),
    (["2001:db8::1/128"], "2001:db8::2", []),
    (["2001:db8::/32", "2001:db8::/64"], "2001:db8::ffff", ["2001:db8::/64", "2001:db8::/32"]),
    (["2001:db8::/32", "2001:db8::/64"], "2001:db8:0:1::", ["2001:db8::/32"]),
    (["2001:db8::/32"], "2001:db9::", []),
    (["2001:db8::/32"], "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", []),
    (["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "ff00::/8"], "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
     ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "ff00::/8"]),
]


@pytest.mark.parametrize("prefixes,address,expected", CASES)
def test_cases(prefixes, address, expected):
    table = PrefixTable.build([(p, ("cz", "s")) for p in prefixes])
    assert [e.cidr for e in table.matches(ipaddress.ip_address(address))] == expected


def test_parents_link_each_entry_to_its_enclosing_prefix():
    table = PrefixTable.build([(p, ("cz", "s")) for p in ("10.0.0.0/8", "10.1.0.0/16", "10.1.1.0/24", "11.0.0.0/8")])
    by_cidr = {e.cidr: e for e in table.entries}
    assert by_cidr["10.0.0.0/8"].parent == -1
    assert table.entries[by_cidr["10.1.0.0/16"].parent].cidr == "10.0.0.0/8"
    assert table.entries[by_cidr["10.1.1.0/24"].parent].cidr == "10.1.0.0/16"
    assert by_cidr["11.0.0.0/8"].parent == -1


def test_table_build_is_order_independent():
    rng = random.Random(7)
    items = _random_prefixes(rng, 4, 500) + _random_prefixes(rng, 6, 300)
    shuffled = items[:]
    rng.shuffle(shuffled)
    a, b = PrefixTable.build(items), PrefixTable.build(shuffled)
    for _ in range(1000):
        version = rng.choice((4, 6))
        addr = rng.getrandbits(32 if version == 4 else 128)
        assert [(e.cidr, set(e.tags)) for e in a.matches_int(version, addr)] == [(e.cidr, set(e.tags)) for e in b.matches_int(version, addr)]


# ---------------------------------------------------------------- parsing

PARSE_CASES = [
    ("10.0.0.0/8", (4, 10 << 24, 8)),
    ("10.1.2.3/8", (4, 10 << 24, 8)),
    ("10.1.2.3", (4, (10 << 24) | (1 << 16) | (2 << 8) | 3, 32)),
    ("0.0.0.0/0", (4, 0, 0)),
    ("255.255.255.255/0", (4, 0, 0)),
    ("2001:db8::1/32", (6, 0x20010DB8 << 96, 32)),
    ("::/0", (6, 0, 0)),
    ("::1", (6, 1, 128)),
]


@pytest.mark.parametrize("cidr,expected", PARSE_CASES)
def test_parse_prefix(cidr, expected):
    assert parse_prefix(cidr) == expected
    version, value, length = expected
    assert format_prefix(version, value, length) == str(ipaddress.ip_network(cidr, strict=False))


@pytest.mark.parametrize("bad", ["", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/-1", "host/8", "1.2.3.4.5/8", "fe80::1%eth0/64"])
def test_parse_prefix_refuses(bad):
    with pytest.raises(ValueError):
        parse_prefix(bad)


def test_build_names_the_bad_prefix():
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        PrefixTable.build([("10.0.0.0/8", ("cz", "a")), ("10.0.0.0/33", ("cz", "b"))])


def test_entries_are_made_once_and_shared_by_chains():
    """Entries are made on first use and kept: the same objects whichever lookup returns them."""
    table = PrefixTable.build([(p, ("cz", "s")) for p in ("10.0.0.0/8", "10.1.0.0/16", "10.1.1.0/24", "2001:db8::/32", "2001:db8::/48")])
    a = table.matches(ipaddress.ip_address("10.1.1.1"))
    b = table.matches(ipaddress.ip_address("10.1.2.2"))
    assert a[1] is b[0] and a[2] is b[1]
    assert table.matches(ipaddress.ip_address("10.1.1.1")) is a
    assert [e.cidr for e in table.entries] == ["10.0.0.0/8", "10.1.0.0/16", "10.1.1.0/24", "2001:db8::/32", "2001:db8::/48"]
    assert table.entries[1] is a[1]
    v6 = table.matches(ipaddress.ip_address("2001:db8::1"))
    assert [e.cidr for e in v6] == ["2001:db8::/48", "2001:db8::/32"] and v6[1] is table.entries[3]
