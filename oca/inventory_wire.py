"""The bodies of an appliance's `/inventory` and `/routes` answers, in both forms.

Nothing here performs I/O. The appliance (`oca.server.app`) and the fleet
simulator (`benchmarks/fleet.py`) build their answers with these functions,
so a simulated appliance cannot drift from the real one.

Rules kept here:
- The JSON form is the original one, and the default: fill peers and older
  steering read it. Its shape is unchanged.
- The packed form is sent only to a client that asks for it with
  `?form=packed` (an appliance that predates it ignores the parameter and
  answers JSON, so a mixed fleet works: steering reads either, by the
  answer's Content-Type). Its body is zlib (RFC 1950) of UTF-8 text: one
  JSON line, the head (the same fields as the JSON form minus the lists),
  then one line per content id: a full inventory lists ids, sorted; a delta
  lists `+id` for an added id and `-id` for a removed one, added first. An
  id never contains a newline (`oca.ids`), so lines need no escaping.
- Why: 60,000 ids as a JSON list are about 1.5 MB and cost steering a JSON
  parse per id; sorted ids compress 4-6 times, and steering validates the
  whole list with one regular expression and splits it with `bytes.split`.
  (A bitmap over a shared catalogue order was rejected for now: the
  appliance does not know the manifest's order, and steering would have to
  fetch and agree on it.)
- The hashed form (`?form=hashed`) is for a steering that polls a whole
  fleet: a full inventory is a JSON head line, then the XXH3-64 of every id
  (`id_hash`, the id's ASCII bytes) as 8-byte little-endian integers,
  sorted ascending, with no compression, so steering maps it onto its
  catalogue with one `numpy.searchsorted` and never inflates or splits
  30,000 ids per appliance. A delta is the head line and `+id`/`-id` lines,
  uncompressed (a few ids); unchanged is the head line alone. Steering
  keys what appliances hold by the hash: two ids with the same 64-bit hash
  (about one chance in 10^9 for a million ids) would be taken for one.
  (Compressed id lines were rejected for full inventories at fleet scale:
  inflating and interning them cost 60 ms an appliance here, 20 minutes
  of CPU for 20,000 appliances.)
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Iterable, Sequence

import xxhash

PACKED_TYPE = "application/x-oca-inventory+zlib"
HASHED_TYPE = "application/x-oca-inventory-hashed"
JSON_TYPE = "application/json"
FORMS = ("json", "packed", "hashed")
CONTENT_TYPES = {"json": JSON_TYPE, "packed": PACKED_TYPE, "hashed": HASHED_TYPE}


def id_hash(content_id: str) -> int:
    """The 64-bit hash the hashed form lists for `content_id` (XXH3-64 of its ASCII bytes)."""
    return xxhash.xxh3_64_intdigest(content_id.encode("ascii"))
PACKED_LEVEL = 6  # sorted short ids: level 6 is about 1.3x smaller than 1 for 2x the time, once per generation


def _json(doc: dict) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def _packed(head: dict, lines: Iterable[str]) -> bytes:
    text = json.dumps(head, separators=(",", ":")) + "\n" + "".join(f"{line}\n" for line in lines)
    return zlib.compress(text.encode(), PACKED_LEVEL)


def _hashed(head: dict, lines: Iterable[str] = (), hashes: bytes = b"") -> bytes:
    return (json.dumps(head, separators=(",", ":")) + "\n" + "".join(f"{line}\n" for line in lines)).encode() + hashes


def hashed_full(appliance: str, generation: int, sorted_hashes: bytes, count: int) -> bytes:
    """A full hashed inventory from its hashes already sorted and packed (`<u8`); `inventory_full` makes them from ids."""
    return _hashed({"appliance": appliance, "generation": generation, "kind": "full", "count": count}, (), sorted_hashes)


def inventory_unchanged(appliance: str, generation: int, since: int, form: str = "json") -> bytes:
    doc = {"appliance": appliance, "generation": generation, "since": since, "kind": "unchanged"}
    return _json(doc) if form == "json" else _hashed(doc) if form == "hashed" else _packed(doc, ())


def inventory_full(appliance: str, generation: int, ids: Sequence[str], form: str = "json") -> bytes:
    if form == "json":
        return _json({"appliance": appliance, "generation": generation, "kind": "full", "count": len(ids), "ids": list(ids)})
    if form == "hashed":
        hashes = sorted({id_hash(c) for c in ids})
        return hashed_full(appliance, generation, b"".join(h.to_bytes(8, "little") for h in hashes), len(hashes))
    return _packed({"appliance": appliance, "generation": generation, "kind": "full", "count": len(ids)}, sorted(ids))


def inventory_delta(appliance: str, generation: int, since: int, added: Sequence[str], removed: Sequence[str],
                    latest: int | None = None, more: bool | None = None, form: str = "json") -> bytes:
    """A delta; `latest` and `more` are given only to a client that pages (asked with `limit`)."""
    doc: dict[str, Any] = {"appliance": appliance, "generation": generation, "since": since, "kind": "delta"}
    if form == "json":
        doc["added"] = list(added)
        doc["removed"] = list(removed)
    if latest is not None:
        doc["latest"] = latest
        doc["more"] = bool(more)
    if form == "json":
        return _json(doc)
    if form == "hashed":
        return _hashed(doc, [*(f"+{c}" for c in sorted(added)), *(f"-{c}" for c in sorted(removed))])
    return _packed(doc, [*(f"+{c}" for c in sorted(added)), *(f"-{c}" for c in sorted(removed))])


def routes_answer(appliance: str, site: str, generation: int, since: int | None, prefixes: Sequence[str]) -> bytes:
    """`/routes?since=`: "unchanged" when the caller holds `generation`, else the full list."""
    out: dict[str, Any] = {"appliance": appliance, "site": site, "generation": generation}
    if since is not None and since == generation:
        out["kind"] = "unchanged"
    else:
        out["kind"] = "full"
        out["prefixes"] = list(prefixes)
    return json.dumps(out).encode() + b"\n"
