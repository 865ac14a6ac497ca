"""What each appliance holds, for a whole fleet: interned content ids and one bitmap per appliance.

Nothing here performs I/O. Rules kept here:
- A `Catalogue` gives every content id steering has seen a small integer,
  in order of first sight, and never takes one back (a file removed from
  every appliance costs its dict entry, about 100 bytes; the catalogue is
  the size of the manifest, not of the fleet).
- An appliance's holdings are a bitmap over those integers: 200,000 files
  take 25 KB per appliance, so 20,000 appliances take 500 MB, where a
  Python set of 30,000 shared strings takes about 1.3 MB each (26 GB).
  (Sorted arrays of ids were rejected: 4 bytes per held file is 2.6 GB at
  20,000 appliances of 32,500 files.)
- `Holdings` values are never changed in place: a delta makes a new one, so
  a decision that holds the old value sees one consistent inventory, and a
  poll that fails half way changes nothing.
- `content_id in holdings` is a dict lookup and a bit test: it is what the
  ranking (`steering.ranking`) asks of `Live.holds`.
"""

from __future__ import annotations

from typing import Iterable, Iterator


class Catalogue:
    __slots__ = ("index", "ids")

    def __init__(self, ids: Iterable[str] = ()):
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        for cid in ids:
            self.intern(cid)

    def __len__(self) -> int:
        return len(self.ids)

    def intern(self, content_id: str) -> int:
        i = self.index.get(content_id)
        if i is None:
            i = self.index[content_id] = len(self.ids)
            self.ids.append(content_id)
        return i


class Holdings:
    """One appliance's files as a bitmap over a `Catalogue`."""

    __slots__ = ("catalogue", "bits", "count")

    def __init__(self, catalogue: Catalogue, bits: bytes = b"", count: int = 0):
        self.catalogue = catalogue
        self.bits = bits
        self.count = count

    @classmethod
    def of(cls, catalogue: Catalogue, content_ids: Iterable[str]) -> "Holdings":
        intern = catalogue.intern
        indexes = [intern(c) for c in content_ids]
        bits = bytearray((len(catalogue) + 7) >> 3)
        for i in indexes:
            bits[i >> 3] |= 1 << (i & 7)
        return cls(catalogue, bytes(bits), _popcount(bits))

    def changed(self, added: Iterable[str], removed: Iterable[str]) -> "Holdings":
        """A new value with `added` set and `removed` cleared (removed wins for an id in both)."""
        intern = self.catalogue.intern
        adds = [intern(c) for c in added]
        index = self.catalogue.index
        drops = [i for i in (index.get(c) for c in removed) if i is not None]
        bits = bytearray(self.bits)
        size = (len(self.catalogue) + 7) >> 3
        if len(bits) < size:
            bits.extend(bytes(size - len(bits)))
        for i in adds:
            bits[i >> 3] |= 1 << (i & 7)
        for i in drops:
            bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        return Holdings(self.catalogue, bytes(bits), _popcount(bits))

    def __contains__(self, content_id: object) -> bool:
        i = self.catalogue.index.get(content_id)  # type: ignore[arg-type]
        if i is None:
            return False
        byte = i >> 3
        return byte < len(self.bits) and (self.bits[byte] >> (i & 7)) & 1 == 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        ids = self.catalogue.ids
        for byte, value in enumerate(self.bits):
            if value:
                for bit in range(8):
                    if value >> bit & 1:
                        yield ids[byte << 3 | bit]


def _popcount(bits: bytes | bytearray) -> int:
    return int.from_bytes(bits, "little").bit_count() if bits else 0
