"""Prefix matching: every prefix that contains an address, longest first.

Nothing here performs I/O. Rules kept here:
- A table holds IPv4 and IPv6 prefixes, each with a list of tags (here:
  which appliance reported it, or which coverage-zone site it belongs to).
  The same prefix from several sources is one entry with several tags.
- `matches(addr)` returns every entry that contains `addr`, longest prefix
  first, by walking from the longest match to its enclosing prefixes.
- Structure: CIDR prefixes either nest or are disjoint, and each entry
  knows its parent (the next shorter prefix containing it), so a lookup
  finds the longest matching entry and returns its chain of parents.
  Finding it costs the same whatever the table's size or number of
  distinct prefix lengths:
  - IPv4: DIR-24-8 (Gupta, Lin and McKeown, 1998; DPDK's rte_lpm): 2^24
    slots indexed by the top 24 bits, and 256-slot chunks for the /24
    blocks that longer prefixes split; a lookup is one or two array
    indexes. It is filled shortest prefix first, so a longer prefix
    overwrites the slots it covers, and the value found at a prefix's first
    address just before it is written is its parent. (Flattening IPv4 into
    sorted intervals first and filling DIR-24-8 from those was most of the
    build: about 6 of 10 CPU seconds for 1M prefixes here.)
  - IPv6 (far fewer prefixes): the address space is flattened at build time
    into sorted, non-overlapping intervals, each naming its longest-matching
    entry; a lookup is one `bisect` on the interval starts.
  (One dict per prefix length, probed longest first, was rejected: its
  cost grows with the number of lengths present, 293k lookups/s with 9
  lengths here.)
- A table is immutable once built; the service builds a new one in a thread
  and swaps it in. Its `PrefixEntry` values and their chains are made the
  first time a lookup returns them and kept (a build of 1M prefixes spent
  half its time making entries that most lookups never return); only the
  thread that uses a table makes them.
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
    """One family's lookup structure: DIR-24-8 for IPv4 (`tbl24`, `tbl8`), intervals for IPv6."""

    def __init__(self, bits: int):
        self.bits = bits
        self.starts: list[int] = []
        self.values = array("i")
        self.tbl24: array | None = None
        self.tbl8 = array("i")

    def lookup(self, addr: int) -> int:
        if self.tbl24 is not None:
            v = self.tbl24[addr >> 8]
            if v < -1:  # a chunk: -(chunk number + 2)
                v = self.tbl8[((-v - 2) << 8) | (addr & 255)]
            return v
        i = bisect_right(self.starts, addr) - 1
        return -1 if i < 0 else self.values[i]


class PrefixTable:
    def __init__(self, keys4: list[int], grouped4: dict, keys6: list[int], grouped6: dict, parents: array, v4: _Family, v6: _Family):
        # Entry i is keys4[i] (length << 32 | network) for i < len(keys4), then
        # keys6[i - len(keys4)] (network << 8 | length); parents[i] is its parent.
        self._keys4 = keys4
        self._grouped4 = grouped4
        self._keys6 = keys6
        self._grouped6 = grouped6
        self._n4 = len(keys4)
        self._parents = parents
        self._chains: list[tuple | None] = [None] * len(parents)
        self._v4 = v4
        self._v6 = v6

    def __len__(self) -> int:
        return len(self._chains)

    @property
    def entries(self) -> list[PrefixEntry]:
        """Every entry by index; a parent comes before its children."""
        return [self._chain(i)[0] for i in range(len(self._chains))]

    @classmethod
    def build(cls, items: Iterable[tuple[str, object]]) -> "PrefixTable":
        """Build from (cidr, tag) pairs; a bad CIDR raises ValueError naming it."""
        # Prefixes are keyed by one int per family, so a plain sort of ints gives
        # the order each structure is built in. IPv4: length << 32 | network,
        # shortest first (see `_fill_dir24`); IPv6: network << 8 | length, by
        # start, shorter first (see `_flatten`). (Sorting (version, start, length)
        # tuples with a key function took 2.4 s of a 16 s build of 1M IPv4
        # prefixes.) IPv4 text is parsed inline; anything unusual goes through
        # `parse_prefix` for its error message.
        grouped4: dict[int, list] = {}  # key -> tags
        grouped6: dict[int, list] = {}
        pton, af_inet, from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes
        for cidr, tag in items:
            addr, slash, length_text = cidr.partition("/")
            if ":" in addr:
                _, value, length = parse_prefix(cidr)
                key = value << 8 | length
                grouped = grouped6
            else:
                try:
                    value = from_bytes(pton(af_inet, addr), "big")
                except (OSError, TypeError):
                    parse_prefix(cidr)  # raises with the message
                    raise
                if slash:
                    if not length_text.isdigit() or (length := int(length_text)) > 32:
                        parse_prefix(cidr)
                        raise ValueError(cidr)
                else:
                    length = 32
                key = length << 32 | value >> (32 - length) << (32 - length)
                grouped = grouped4
            tags = grouped.get(key)
            if tags is None:
                grouped[key] = [tag]
            elif tag not in tags:
                tags.append(tag)
        parents = array("i")
        v4, v6 = _Family(32), _Family(128)
        keys4, keys6 = sorted(grouped4), sorted(grouped6)
        _fill_dir24(v4, keys4, parents)
        _flatten(v6, keys6, parents)
        return cls(keys4, grouped4, keys6, grouped6, parents, v4, v6)

    def matches(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[PrefixEntry, ...]:
        """Every entry containing `addr`, longest first."""
        return self.matches_int(addr.version, int(addr))

    def matches_int(self, version: int, addr: int) -> tuple[PrefixEntry, ...]:
        i = (self._v4 if version == 4 else self._v6).lookup(addr)
        if i < 0:
            return ()
        chain = self._chains[i]
        return chain if chain is not None else self._chain(i)

    def _chain(self, i: int) -> tuple[PrefixEntry, ...]:
        """Entry i and its enclosing entries, longest first; made once."""
        chain = self._chains[i]
        if chain is None:
            parent = self._parents[i]
            if i < self._n4:
                key = self._keys4[i]
                length = key >> 32
                entry = PrefixEntry(_format_v4(key & _MASK32, length), length, tuple(self._grouped4[key]), parent)
            else:
                key = self._keys6[i - self._n4]
                length = key & 255
                entry = PrefixEntry(format_prefix(6, key >> 8, length), length, tuple(self._grouped6[key]), parent)
            chain = (entry,) + self._chain(parent) if parent >= 0 else (entry,)
            self._chains[i] = chain
        return chain


_MASK32 = (1 << 32) - 1


_V4_LENGTH_TEXT = tuple(f"/{n}" for n in range(33))


def _format_v4(value: int, length: int, _ntoa=socket.inet_ntoa) -> str:
    # inet_ntoa plus a table of "/n" texts: half the time of an f-string of four octets.
    return _ntoa(value.to_bytes(4, "big")) + _V4_LENGTH_TEXT[length]


def _fill_dir24(fam: _Family, keys: Sequence[int], parents: array) -> None:
    """IPv4 prefixes (keys: length << 32 | network, sorted: shortest first) into DIR-24-8.

    Entry indexes are positions in `keys`. Shortest first, so every entry's
    parent is written before it and has a smaller index, and each prefix
    overwrites exactly the slots it covers.
    """
    tbl24 = array("i", [-1]) * (1 << 24)
    tbl8 = fam.tbl8
    index = len(parents)
    for key in keys:
        length, start = key >> 32, key & _MASK32
        block = start >> 8
        v = tbl24[block]
        if v < -1:
            base = (-v - 2) << 8
            parents.append(tbl8[base | (start & 255)])
        else:
            parents.append(v)
        if length <= 24:
            # No chunk exists yet: chunks come from longer prefixes, written later.
            n = 1 << (24 - length)
            if n == 1:
                tbl24[block] = index
            else:
                tbl24[block : block + n] = array("i", [index]) * n
        else:
            if v >= -1:  # the block's first split: a chunk holding what the slot held
                base = len(tbl8)
                tbl8.extend(array("i", [v]) * 256)
                tbl24[block] = -((base >> 8) + 2)
            lo = base | (start & 255)
            n = 1 << (32 - length)
            if n == 1:
                tbl8[lo] = index
            else:
                tbl8[lo : lo + n] = array("i", [index]) * n
        index += 1
    fam.tbl24 = tbl24


def _flatten(fam: _Family, keys: Sequence[int], parents: array) -> None:
    """Turn nested prefixes (keys: start << 8 | length, sorted) into disjoint intervals.

    Entry indexes continue from `len(parents)`, in the order of `keys`.
    """
    bits = fam.bits
    top = 1 << bits
    starts = fam.starts
    values = fam.values
    stack: list[tuple[int, int]] = []  # (end address, entry index)

    def emit(pos: int, value: int) -> None:
        """Start an interval at `pos` naming `value`, merging with the one before when they agree."""
        if starts and starts[-1] == pos:
            values[-1] = value
            if len(values) >= 2 and values[-2] == value:
                starts.pop()
                values.pop()
        elif not values or values[-1] != value:
            starts.append(pos)
            values.append(value)

    index = len(parents)
    for key in keys:
        start, length = key >> 8, key & 255
        while stack and stack[-1][0] < start:
            closed_end, _ = stack.pop()
            emit(closed_end + 1, stack[-1][1] if stack else -1)
        parents.append(stack[-1][1] if stack else -1)
        # emit(start, index) inlined (the hot path): a new index never equals the
        # value before it, so there is nothing to merge.
        if starts and starts[-1] == start:
            values[-1] = index
        else:
            starts.append(start)
            values.append(index)
        stack.append((start + (1 << (bits - length)) - 1, index))
        index += 1
    while stack:
        closed_end, _ = stack.pop()
        if closed_end + 1 < top:
            emit(closed_end + 1, stack[-1][1] if stack else -1)
