"""What steering knows about the fleet, as bytes for a snapshot file, and back.

Nothing here performs I/O: the poller writes the bytes (to a temporary
file, then renames it) and reads them at start. Rules kept here:
- Layout: 8 bytes "OCASNAP1", an 8-byte big-endian length, a JSON head of
  that length (time, catalogue ids, the distinct route lists, and per
  appliance its state, inventory generation and count, the index of its
  route list and its routes generation), then every
  appliance's holdings bitmap, one after another, at the offsets the head
  gives. Bitmaps stay binary: 20,000 of them are 500 MB, and base64 in JSON
  would be a third more and a copy.
- `decode` checks what it reads as it would a message from another machine
  (the file may be cut short by a crash, or be from another version): any
  fault is a `SnapshotError` naming the field, and steering then starts
  cold, as without a snapshot.
- Holdings bitmaps are slices of the buffer given to `decode`, not copies:
  the workers of `[server] workers` map the file and share its pages.
  `count` is taken from the head (bounded by the bitmap's bits).
- Only appliances still in the registry are restored; their states come
  back as they were, and the service marks every answer stale until the
  first full polling round after the start.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping

from oca.ids import is_valid_id
from steering.health import Availability
from steering.holdings import Catalogue, Holdings
from steering.messages import MessageError, decode_object, normal_prefix

MAGIC = b"OCASNAP1"
MAX_GENERATION = 2**63 - 1


class SnapshotError(ValueError):
    """A snapshot that cannot be used; the text names the field."""


@dataclass(frozen=True, slots=True)
class Restored:
    """One appliance as the snapshot had it."""

    state: Availability
    inventory: Holdings
    inventory_generation: int
    routes: tuple[str, ...]
    routes_generation: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_s: float
    catalogue: Catalogue
    appliances: Mapping[str, Restored]
    rounds: int = 0  # the writer's polling rounds since it started


def encode(taken_s: float, catalogue_ids: list[str], appliances: Mapping[str, tuple], rounds: int = 0) -> bytes:
    """`appliances`: id → (Availability, Holdings or a frozenset, inventory generation, routes, routes generation)."""
    blobs = []
    offset = 0
    entries = {}
    route_sets: dict[tuple, int] = {}  # the appliances of a site announce the same list: it is written once
    for aid, (st, inv, gen, routes, rgen) in appliances.items():
        bits = inv.bits if isinstance(inv, Holdings) else b""
        blobs.append(bits)
        entries[aid] = {
            "up": st.up, "draining": st.draining, "overloaded": st.overloaded, "status": st.status, "reason": st.reason,
            "last_ok_s": st.last_ok_s, "generation": gen if isinstance(inv, Holdings) else 0, "count": len(inv),
            "bits": [offset, len(bits)], "routes": route_sets.setdefault(tuple(routes), len(route_sets)), "routes_generation": rgen,
        }
        offset += len(bits)
    head = json.dumps({"taken_s": taken_s, "rounds": rounds, "catalogue": catalogue_ids, "routes": [list(r) for r in route_sets],
                       "appliances": entries},
                      separators=(",", ":")).encode()
    return b"".join([MAGIC, len(head).to_bytes(8, "big"), head, *blobs])


def _int(doc: dict, key: str, where: str, high: int = MAX_GENERATION) -> int:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= high:
        raise SnapshotError(f"{where}.{key}: must be an integer from 0 to {high}")
    return v


def decode(data: bytes | memoryview, registry_ids: set[str]) -> Snapshot:
    data = memoryview(data)
    if bytes(data[:8]) != MAGIC:
        raise SnapshotError("magic: not a steering snapshot (or another version)")
    size = int.from_bytes(data[8:16], "big")
    if size > len(data) - 16:
        raise SnapshotError(f"head: says {size} bytes, the file has {len(data) - 16} after the magic")
    try:
        doc = decode_object(data[16 : 16 + size])
    except MessageError as exc:
        raise SnapshotError(f"head: {exc}") from None
    blobs = data[16 + size :]
    taken = doc.get("taken_s")
    if isinstance(taken, bool) or not isinstance(taken, (int, float)) or not math.isfinite(taken):
        raise SnapshotError("taken_s: must be a number")
    ids = doc.get("catalogue")
    if not isinstance(ids, list) or not all(is_valid_id(c) for c in ids) or len(set(ids)) != len(ids):
        raise SnapshotError("catalogue: must be a list of distinct content ids")
    catalogue = Catalogue(ids)
    entries = doc.get("appliances")
    if not isinstance(entries, dict):
        raise SnapshotError("appliances: must be an object")
    sets = doc.get("routes")
    if not isinstance(sets, list) or not all(isinstance(r, list) for r in sets):
        raise SnapshotError("routes: must be a list of prefix lists")
    checked: dict[int, tuple[str, ...]] = {}  # checked once each, when an appliance still registered uses it
    width = (len(ids) + 7) >> 3
    out = {}
    for aid, e in entries.items():
        where = f"appliances.{aid[:40]}"
        if aid not in registry_ids:
            continue
        if not isinstance(e, dict):
            raise SnapshotError(f"{where}: must be an object")
        span = e.get("bits")
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in span)
                or span[0] + span[1] > len(blobs) or span[1] > width):
            raise SnapshotError(f"{where}.bits: must be [offset, length] inside the file and the catalogue")
        # A slice of the caller's buffer, not a copy: workers map the file and share its pages.
        bits = blobs[span[0] : span[0] + span[1]]
        count = _int(e, "count", where, 8 * len(bits))
        inv = Holdings(catalogue, bits, count)
        ref = e.get("routes")
        if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < len(sets):
            raise SnapshotError(f"{where}.routes: must be an index into routes")
        routes_t = checked.get(ref)
        if routes_t is None:
            try:
                routes_t = checked[ref] = tuple(normal_prefix(p, f"routes[{ref}][{i}]") for i, p in enumerate(sets[ref]))
            except MessageError as exc:
                raise SnapshotError(str(exc)) from None
        for key in ("up", "draining", "overloaded"):
            if not isinstance(e.get(key), bool):
                raise SnapshotError(f"{where}.{key}: must be true or false")
        status, reason = e.get("status"), e.get("reason")
        if not isinstance(status, str) or not isinstance(reason, str):
            raise SnapshotError(f"{where}.status: status and reason must be strings")
        last_ok = e.get("last_ok_s")
        if last_ok is not None and (isinstance(last_ok, bool) or not isinstance(last_ok, (int, float))):
            raise SnapshotError(f"{where}.last_ok_s: must be a number or null")
        state = Availability(up=e["up"], reason=f"from the snapshot: {reason}"[:200], status=status[:20], draining=e["draining"],
                             overloaded=e["overloaded"], last_ok_s=last_ok, content_count=inv.count, route_count=len(routes_t))
        out[aid] = Restored(state, inv, _int(e, "generation", where) if bits else 0, routes_t, _int(e, "routes_generation", where))
    rounds = doc.get("rounds", 0)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise SnapshotError("rounds: must be a non-negative integer")
    return Snapshot(float(taken), catalogue, out, rounds)
