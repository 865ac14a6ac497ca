"""Prefix matching: every prefix that contains an address, longest first.

Nothing here performs I/O. Rules kept here:
- A table holds IPv4 and IPv6 prefixes, each with a list of tags (here:
  which appliance reported it, or which coverage-zone site it belongs to).
  The same prefix from several sources is one entry with several tags.
- `matches(addr)` returns every entry that contains `addr`, longest prefix
  first, by walking from the longest match to its enclosing prefixes.
- Structure: CIDR prefixes either nest or are disjoint, so the address
  space of each family is flattened at build time into sorted,
  non-overlapping intervals, each naming its longest-matching entry; each
  entry knows its parent (the next shorter prefix containing it). A lookup
  is one `bisect` on the interval starts plus a short walk up the parents,
  whatever the table's size or number of distinct prefix lengths. (One dict
  per prefix length, probed longest first, was rejected: its cost grows
  with the number of lengths present, 293k lookups/s with 9 lengths here.
  DIR-24-8 was rejected because it needs a second structure for IPv6.)
- A table is immutable once built; the service builds a new one in a thread
  and swaps it in.
"""

from __future__ import annotations

import ipaddress
import socket
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True, slots=True)
class PrefixEntry:
    cidr: str
    length: int
    tags: tuple  # e.g. ("route", appliance id) or ("cz", site)
    parent: int  # index of the enclosing entry, -1 for none


def parse_prefix(cidr: str) -> tuple[int, int, int]:
    """(version, network address as int, length); host bits are cleared. Raises ValueError."""
    addr, slash, length_text = cidr.partition("/")
    try:
        if ":" in addr:
            version, bits, raw = 6, 128, socket.inet_pton(socket.AF_INET6, addr)
        else:
            version, bits, raw = 4, 32, socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"{cidr!r} is not an IPv4 or IPv6 prefix") from None
    if slash:
        if not length_text.isdigit() or int(length_text) > bits:
            raise ValueError(f"{cidr!r} has a bad prefix length")
        length = int(length_text)
    else:
        length = bits
    value = int.from_bytes(raw, "big")
    value = (value >> (bits - length)) << (bits - length) if length else 0
    return version, value, length


def format_prefix(version: int, value: int, length: int) -> str:
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, value.to_bytes(4, 'big'))}/{length}"
    return f"{socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, 'big'))}/{length}"


class _Family:
    """Disjoint intervals of one family's address space → longest-matching entry.

    IPv4 also gets a DIR-24-8 table (Gupta, Lin and McKeown, 1998; DPDK's
    rte_lpm): 2^24 slots indexed by the top 24 bits, and 256-slot chunks for
    /24 blocks split by longer prefixes, so a lookup is one or two array
    indexes. IPv6 (far fewer prefixes) uses bisect on the interval starts.
    """

    def __init__(self, bits: int):
        self.bits = bits
        self.starts: list[int] = []
        self.values = array("i")
        self.tbl24: array | None = None
        self.tbl8 = array("i")

    def lookup(self, addr: int) -> int:
        if self.tbl24 is not None:
            v = self.tbl24[addr >> 8]
            if v < -1:
                v = self.tbl8[((-v - 2) << 8) | (addr & 255)]
            return v
        i = bisect_right(self.starts, addr) - 1
        return -1 if i < 0 else self.values[i]

    def build_dir24(self) -> None:
        tbl24 = array("i", [-1]) * (1 << 24)
        tbl8 = self.tbl8
        starts, values = self.starts, self.values
        n = len(starts)
        for i in range(n):
            start = starts[i]
            end = starts[i + 1] if i + 1 < n else 1 << 32  # exclusive
            value = values[i]
            if value == -1:
                continue
            b0, b1 = start >> 8, end >> 8
            if start & 255:
                self._chunk_fill(tbl24, b0, start & 255, 256 if b1 > b0 else end & 255, value)
                b0 += 1
            if b1 > b0:
                tbl24[b0:b1] = array("i", [value]) * (b1 - b0)
            if end & 255 and b1 >= b0:
                self._chunk_fill(tbl24, b1, 0, end & 255, value)
        self.tbl24 = tbl24

    def _chunk_fill(self, tbl24: array, block: int, lo: int, hi: int, value: int) -> None:
        if lo >= hi:
            return
        v = tbl24[block]
        if v < -1:
            base = (-v - 2) << 8
        else:
            base = len(self.tbl8)
            self.tbl8.extend(array("i", [v]) * 256)
            tbl24[block] = -((base >> 8) + 2)
        self.tbl8[base + lo : base + hi] = array("i", [value]) * (hi - lo)


class PrefixTable:
    def __init__(self, entries: list[PrefixEntry], chains: list[tuple], v4: _Family, v6: _Family):
        self.entries = entries
        self._chains = chains
        self._v4 = v4
        self._v6 = v6

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def build(cls, items: Iterable[tuple[str, object]]) -> "PrefixTable":
        """Build from (cidr, tag) pairs; a bad CIDR raises ValueError naming it."""
        grouped: dict[tuple[int, int, int], list] = {}
        for cidr, tag in items:
            key = parse_prefix(cidr)
            tags = grouped.get(key)
            if tags is None:
                grouped[key] = [tag]
            elif tag not in tags:
                tags.append(tag)
        entries: list[PrefixEntry] = []
        families = {4: _Family(32), 6: _Family(128)}
        for version, fam in families.items():
            keys = sorted((k for k in grouped if k[0] == version), key=lambda k: (k[1], k[2]))
            _flatten(fam, keys, grouped, entries)
        families[4].build_dir24()
        chains: list[tuple] = []
        for e in entries:  # a parent always comes before its children
            chains.append((e,) + (chains[e.parent] if e.parent >= 0 else ()))
        return cls(entries, chains, families[4], families[6])

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[PrefixEntry, ...]:
        """Every entry containing `addr`, longest first."""
        return self.matches_int(addr.version, int(addr))

    def matches_int(self, version: int, addr: int) -> tuple[PrefixEntry, ...]:
        i = (self._v4 if version == 4 else self._v6).lookup(addr)
        return self._chains[i] if i >= 0 else ()


def _flatten(fam: _Family, keys: Sequence[tuple[int, int, int]], grouped: dict, entries: list[PrefixEntry]) -> None:
    """Turn nested prefixes (sorted by start, shorter first) into disjoint intervals."""
    bits = fam.bits
    starts = fam.starts
    values = fam.values
    stack: list[tuple[int, int]] = []  # (end address, entry index)

    def emit(pos: int, value: int) -> None:
        if starts and starts[-1] == pos:
            values[-1] = value
            if len(values) >= 2 and values[-2] == value:
                starts.pop()
                values.pop()
        elif not values or values[-1] != value:
            starts.append(pos)
            values.append(value)

    for version, start, length in keys:
        end = start + (1 << (bits - length)) - 1
        while stack and stack[-1][0] < start:
            closed_end, _ = stack.pop()
            emit(closed_end + 1, stack[-1][1] if stack else -1)
        parent = stack[-1][1] if stack else -1
        index = len(entries)
        entries.append(PrefixEntry(format_prefix(version, start, length), length, tuple(grouped[(version, start, length)]), parent))
        emit(start, index)
        stack.append((end, index))
    while stack:
        closed_end, _ = stack.pop()
        if closed_end + 1 < (1 << bits):
            emit(closed_end + 1, stack[-1][1] if stack else -1)
