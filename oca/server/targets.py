"""Content request targets already judged: exact target bytes → what parsing and signing made of them.

Rules kept here:
- A player reuses one signed URL for every range of a file, so the same
  request target (path and query, byte for byte) comes again and again.
  Parsing its path and checking its signature give the same answer until
  the signature expires, so the answer is kept: the content id, the path
  range, and the second until which the answer holds (`good_until_s`).
- Only targets that parsed and passed the signing rules are kept; a
  refused one is judged in full every time, as before.
- `good_until_s` is the signature's expiry plus the allowed clock skew,
  and an answer is used only while `now_s <= good_until_s`: the same test
  `oca.signing.verify` makes. An expired URL therefore goes to the full
  check and gets its 410 there, never a 206 from here. An unsigned target
  on an appliance that does not require signing holds for ever (`inf`).
- The signing keys of a worker never change while it runs (a reload
  replaces the workers), so no key change can leave an answer standing.
- Bounded: at most `max_entries` targets, each at most MAX_TARGET_BYTES
  long (a longer one is judged in full each time), oldest out first, so
  a client sending unique targets cannot grow it past about 2 MiB.
"""

from __future__ import annotations

MAX_TARGETS = 4096
# Signed player URLs are ~100-200 bytes; longer targets are rare and simply not kept.
MAX_TARGET_BYTES = 512


class JudgedTargets:
    """target bytes → (content id, path range or None, good until s); see the module rules."""

    __slots__ = ("max_entries", "entries")

    def __init__(self, max_entries: int = MAX_TARGETS) -> None:
        self.max_entries = max_entries
        # Read directly by the serving path (one dict probe per request).
        self.entries: dict[bytes, tuple[str, tuple[int, int] | None, float]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, target: bytes, now_s: float) -> tuple[str, tuple[int, int] | None] | None:
        """(content id, path range) for a target judged good that still holds at `now_s`, else None."""
        hit = self.entries.get(target)
        if hit is None or now_s > hit[2]:
            return None
        return hit[0], hit[1]

    def remember(self, target: bytes, content_id: str, path_range: tuple[int, int] | None, good_until_s: float) -> None:
        if len(target) > MAX_TARGET_BYTES or self.max_entries <= 0:
            return
        entries = self.entries
        if target not in entries and len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[target] = (content_id, path_range, good_until_s)
