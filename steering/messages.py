"""What steering accepts from other machines: one validating function per message.

Nothing here performs I/O or reads the clock. Rules kept here:
- Each message an appliance sends (`/health`, `/inventory` full, delta or
  unchanged, `/routes`) has one pure function that takes the body's bytes
  and returns a frozen dataclass, or raises `MessageError` whose message
  starts with the field it is about (``load.nic_utilisation: must be a
  number, not 'x'``). Nothing else in steering reads an appliance's JSON.
- JSON is strict: NaN, Infinity and duplicate keys are refused, the top
  level must be an object. Fields steering does not use are ignored (an
  appliance newer than steering may add some); the body's size is bounded
  before it gets here (`[health] max_response_mb`).
- Numbers are finite, never booleans, within stated bounds; generations
  are integers from 0 to 2^63-1. Content ids obey `oca.ids`; prefixes are
  ASCII CIDR text that `steering.lpm.parse_prefix` accepts, and are
  returned in that normal form (host bits cleared), so the prefix table
  never sees a value that can make its build fail.
- An appliance may claim at most `max_prefixes` prefixes: over that, the
  routes message is refused whole. `admit_routes` then keeps only the
  prefixes inside the appliance's `allowed_prefixes` (when it has a list)
  and counts the rest: a route is admitted when some allowed prefix
  contains it.
- `/inventory` comes in two forms (`oca.inventory_wire`), told apart by
  Content-Type: JSON, and the packed form (zlib of a JSON head line and one
  id per line), whose inflated size is bounded by `[health]
  max_response_mb` before it is inflated further, whose lines are checked
  whole by one regular expression, and whose `count` must agree. The
  hashed form (a fleet's poller asks for it) lists a full inventory as
  sorted, distinct 64-bit id hashes, checked as an array (length, count,
  strictly increasing); its deltas are uncompressed `+id`/`-id` lines.
- `/health` may carry the appliance's inventory and routes generations
  (`generation`, `routes_generation`); a poller that holds both skips the
  other two answers. An appliance that sends neither is polled whole.
- Reasons an appliance gives are display text: cut to `MAX_REASON_CHARS`,
  control characters replaced; they never decide anything.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

from oca.ids import is_valid_id
from oca.inventory_wire import HASHED_TYPE, PACKED_TYPE
from steering.lpm import format_prefix, parse_prefix

MAX_GENERATION = 2**63 - 1
MAX_REASON_CHARS = 200
MAX_CONDITIONS = 64
MAX_IDS = 2_000_000  # 33 times a full appliance (60,000 files); the body size bounds it first
STATUSES = ("ok", "degraded", "draining", "down")
# An appliance's /health is about 2 KB; 64 stores with long paths and reasons stay under 100 KB.
MAX_HEALTH_BYTES = 1_000_000
# The longest prefix text ("ffff:...:ffff/128", 43 bytes) with its quotes and ", ", rounded up.
MAX_BYTES_PER_PREFIX = 64
ROUTES_OVERHEAD_BYTES = 64 * 1024


class MessageError(ValueError):
    """A message from another machine is malformed; the text starts with the field."""


@dataclass(frozen=True, slots=True)
class HealthMessage:
    status: str  # one of STATUSES
    reasons: tuple[str, ...]
    nic_utilisation: float | None  # 0..1 nominal; more while a link is saturated
    bytes_per_s: float | None
    inventory_generation: int | None = None  # absent from an older appliance's answer
    routes_generation: int | None = None


@dataclass(frozen=True, slots=True)
class InventoryMessage:
    kind: str  # "full", "delta" or "unchanged"
    generation: int
    ids: frozenset = frozenset()  # kind "full"
    added: frozenset = frozenset()  # kind "delta"
    removed: frozenset = frozenset()  # kind "delta"
    hashes: Any = None  # kind "full" in the hashed form: a read-only numpy uint64 array, sorted, distinct


@dataclass(frozen=True, slots=True)
class RoutesMessage:
    kind: str  # "full" or "unchanged"
    generation: int
    prefixes: tuple[str, ...] = ()  # normal form, kind "full"


@dataclass(frozen=True, slots=True)
class AdmittedRoutes:
    prefixes: tuple[str, ...]
    dropped: tuple[str, ...]  # outside allowed_prefixes


@dataclass(frozen=True, slots=True)
class BodyLimits:
    health: int
    inventory: int
    routes: int


def body_limits(max_response_bytes: int, max_prefixes: int) -> BodyLimits:
    """The most steering reads of each answer: `[health] max_response_mb`, and less where the message is bounded.

    A routes answer can hold no more than `max_prefixes` prefixes, so a body
    bigger than that many can take is refused before it is parsed (a million
    prefixes is 17 MB of JSON and some 80 MB once parsed).
    """
    routes = max_prefixes * MAX_BYTES_PER_PREFIX + ROUTES_OVERHEAD_BYTES
    return BodyLimits(min(max_response_bytes, MAX_HEALTH_BYTES), max_response_bytes, min(max_response_bytes, routes))


# ---------------------------------------------------------------- JSON


def _refuse_constant(name: str) -> Any:
    raise MessageError(f"body: {name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise MessageError(f"{k}: key appears twice")
        out[k] = v
    return out


def decode_object(body: bytes) -> dict:
    """Strict JSON object from bytes (UTF-8)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise MessageError(f"body: must be bytes, not {type(body).__name__}")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"body: not UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except MessageError:
        raise
    except RecursionError:
        raise MessageError("body: nested too deeply") from None
    except ValueError as exc:
        raise MessageError(f"body: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MessageError(f"body: must be a JSON object, not {_kind(doc)}")
    return doc


# ---------------------------------------------------------------- fields


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(doc: dict, key: str, where: str, low: float, high: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"{where}: must be a number, not {_kind(value)}")
    if isinstance(value, int) and not low <= value <= high:
        raise MessageError(f"{where}: must be from {low:g} to {high:g}, not an integer of {len(str(value))} digits")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise MessageError(f"{where}: must be from {low:g} to {high:g}, not {value!r}")
    return value


def _generation(doc: dict) -> int:
    value = doc.get("generation")
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"generation: must be an integer, not {_kind(value)}")
    if not 0 <= value <= MAX_GENERATION:
        raise MessageError(f"generation: must be from 0 to 2^63-1, not {value if abs(value) < 10**30 else 'a huge number'}")
    return value


def _kind_field(doc: dict, allowed: tuple[str, ...]) -> str:
    value = doc.get("kind")
    if not isinstance(value, str) or value not in allowed:
        shown = repr(value[:40]) if isinstance(value, str) else _kind(value)
        raise MessageError(f"kind: must be one of {', '.join(allowed)}, not {shown}")
    return value


def _list(doc: dict, key: str, limit: int) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise MessageError(f"{key}: must be a list, not {_kind(value)}")
    if len(value) > limit:
        raise MessageError(f"{key}: {len(value)} entries, more than the limit of {limit}")
    return value


def _ids(doc: dict, key: str, limit: int) -> frozenset:
    items = _list(doc, key, limit)
    for i, cid in enumerate(items):
        if not is_valid_id(cid):
            shown = repr(cid[:40]) if isinstance(cid, str) else _kind(cid)
            raise MessageError(f"{key}[{i}]: {shown} is not a content id")
    return frozenset(items)


def display_text(value: str) -> str:
    """Text from another machine made safe to show: bounded, no control characters."""
    cut = value[:MAX_REASON_CHARS]
    return "".join(c if c.isprintable() else "?" for c in cut)


# ---------------------------------------------------------------- messages


def parse_health(body: bytes) -> HealthMessage:
    """An appliance's `/health` answer."""
    doc = decode_object(body)
    status = doc.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        shown = repr(status[:40]) if isinstance(status, str) else _kind(status)
        raise MessageError(f"status: must be one of {', '.join(STATUSES)}, not {shown}")
    conditions = doc.get("conditions", [])
    if not isinstance(conditions, list):
        raise MessageError(f"conditions: must be a list, not {_kind(conditions)}")
    if len(conditions) > MAX_CONDITIONS:
        raise MessageError(f"conditions: {len(conditions)} entries, more than the limit of {MAX_CONDITIONS}")
    reasons = []
    for i, c in enumerate(conditions):
        if not isinstance(c, dict):
            raise MessageError(f"conditions[{i}]: must be an object, not {_kind(c)}")
        reason = c.get("reason", "")
        if not isinstance(reason, str):
            raise MessageError(f"conditions[{i}].reason: must be a string, not {_kind(reason)}")
        if reason:
            reasons.append(display_text(reason))
    load = doc.get("load")
    if load is None:
        load = {}
    elif not isinstance(load, dict):
        raise MessageError(f"load: must be an object, not {_kind(load)}")
    util = _number(load, "nic_utilisation", "load.nic_utilisation", 0.0, 100.0)
    bps = _number(load, "bytes_per_s", "load.bytes_per_s", 0.0, 1e15)
    gens = []
    for key in ("generation", "routes_generation"):
        g = doc.get(key)
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= MAX_GENERATION):
            raise MessageError(f"{key}: must be an integer from 0 to {MAX_GENERATION}")
        gens.append(g)
    return HealthMessage(status, tuple(reasons), util, bps, gens[0], gens[1])


def parse_inventory(body: bytes, since: int, max_ids: int = MAX_IDS) -> InventoryMessage:
    """An appliance's `/inventory?since=<since>` answer: full, delta or unchanged."""
    doc = decode_object(body)
    kind = _kind_field(doc, ("full", "delta", "unchanged"))
    generation = _generation(doc)
    if kind == "full":
        return InventoryMessage(kind, generation, ids=_ids(doc, "ids", max_ids))
    # A delta or "unchanged" is relative to what we asked about; one relative
    # to anything else would corrupt what steering believes the appliance holds.
    asked = doc.get("since", since)
    if isinstance(asked, bool) or asked != since:
        raise MessageError(f"since: answers about generation {str(asked)[:30]}, not the {since} asked for")
    if generation < since:
        raise MessageError(f"generation: {generation} is older than the {since} asked for (send a full inventory)")
    if kind == "unchanged":
        return InventoryMessage(kind, generation)
    added = _ids(doc, "added", max_ids)
    removed = _ids(doc, "removed", max_ids)
    return InventoryMessage(kind, generation, added=added, removed=removed)


# Whole lists checked by one regular expression each (C speed); a list that
# fails is walked line by line only to name the bad line.
_ID = rb"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_FULL_LINES = re.compile(rb"(?:" + _ID + rb"\n)*")
_DELTA_LINES = re.compile(rb"(?:\+" + _ID + rb"\n)*(?:-" + _ID + rb"\n)*")


def _inflate(body: bytes, max_bytes: int) -> bytes:
    """zlib body → text of at most `max_bytes`; a bomb is refused before it is inflated past that."""
    d = zlib.decompressobj()
    try:
        text = d.decompress(bytes(body), max_bytes + 1)
    except zlib.error as exc:
        raise MessageError(f"body: not zlib data: {exc}") from None
    if len(text) > max_bytes:
        raise MessageError(f"body: inflates to more than {max_bytes} bytes")
    if not d.eof or d.unused_data:
        raise MessageError("body: zlib stream truncated or followed by other bytes")
    return text


def _bad_line(lines: list[bytes], first: int, prefixes: bytes) -> str:
    for i, line in enumerate(lines):
        if not line or (prefixes and line[:1] not in (b"+", b"-")) or not re.fullmatch(_ID, line[1:] if prefixes else line):
            return f"line {first + i}: {line[:40]!r} is not {'+ or - and ' if prefixes else ''}a content id"
    return f"line {first}: lines out of order"


def parse_inventory_packed(body: bytes, since: int, max_bytes: int, max_ids: int = MAX_IDS) -> InventoryMessage:
    """The packed form of `/inventory?since=<since>&form=packed` (`oca.inventory_wire`): full, delta or unchanged.

    The head line obeys the rules of the JSON form; the id lines are checked
    whole. The inflated text is bounded by `max_bytes`.
    """
    text = _inflate(body, max_bytes)
    head_text, nl, rest = text.partition(b"\n")
    if not nl:
        raise MessageError("body: no head line")
    doc = decode_object(head_text)
    kind = _kind_field(doc, ("full", "delta", "unchanged"))
    generation = _generation(doc)
    if rest and not rest.endswith(b"\n"):
        raise MessageError("body: the last line has no newline")
    lines = rest.split(b"\n")[:-1] if rest else []
    if len(lines) > max_ids:
        raise MessageError(f"ids: {len(lines)} lines, more than the limit of {max_ids}")
    if kind == "full":
        if _FULL_LINES.fullmatch(rest) is None:
            raise MessageError(f"ids: {_bad_line(lines, 2, b'')}")
        count = doc.get("count")
        if count is not None and count != len(lines):
            raise MessageError(f"count: says {str(count)[:30]}, but {len(lines)} ids follow")
        return InventoryMessage(kind, generation, ids=frozenset(line.decode("ascii") for line in lines))
    asked = doc.get("since", since)
    if isinstance(asked, bool) or asked != since:
        raise MessageError(f"since: answers about generation {str(asked)[:30]}, not the {since} asked for")
    if generation < since:
        raise MessageError(f"generation: {generation} is older than the {since} asked for (send a full inventory)")
    return _unchanged_or_delta(kind, generation, lines, rest)


def parse_inventory_hashed(body: bytes, since: int, max_ids: int = MAX_IDS) -> InventoryMessage:
    """The hashed form of `/inventory?since=<since>&form=hashed` (`oca.inventory_wire`): full, delta or unchanged."""
    import numpy as np

    head_text, nl, rest = bytes(body).partition(b"\n")
    if not nl:
        raise MessageError("body: no head line")
    doc = decode_object(head_text)
    kind = _kind_field(doc, ("full", "delta", "unchanged"))
    generation = _generation(doc)
    if kind == "full":
        if len(rest) % 8:
            raise MessageError(f"hashes: {len(rest)} bytes, not a whole number of 8-byte hashes")
        count = doc.get("count")
        if isinstance(count, bool) or count != len(rest) // 8:
            raise MessageError(f"count: says {str(count)[:30]}, but {len(rest) // 8} hashes follow")
        if count > max_ids:
            raise MessageError(f"hashes: {count}, more than the limit of {max_ids}")
        hashes = np.frombuffer(rest, dtype="<u8")
        if count > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
            raise MessageError("hashes: not sorted ascending without repeats")
        return InventoryMessage(kind, generation, hashes=hashes)
    asked = doc.get("since", since)
    if isinstance(asked, bool) or asked != since:
        raise MessageError(f"since: answers about generation {str(asked)[:30]}, not the {since} asked for")
    if generation < since:
        raise MessageError(f"generation: {generation} is older than the {since} asked for (send a full inventory)")
    if rest and not rest.endswith(b"\n"):
        raise MessageError("body: the last line has no newline")
    lines = rest.split(b"\n")[:-1] if rest else []
    if len(lines) > max_ids:
        raise MessageError(f"ids: {len(lines)} lines, more than the limit of {max_ids}")
    return _unchanged_or_delta(kind, generation, lines, rest)


def parse_inventory_answer(body: bytes, content_type: str, since: int, max_bytes: int) -> InventoryMessage:
    """Any form, chosen by the answer's Content-Type (an older appliance answers JSON to `form=packed`)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == PACKED_TYPE:
        return parse_inventory_packed(body, since, max_bytes)
    if ctype == HASHED_TYPE:
        return parse_inventory_hashed(body, since)
    return parse_inventory(body, since)


def parse_routes(body: bytes, max_prefixes: int) -> RoutesMessage:
    """An appliance's `/routes?since=` answer; over `max_prefixes` prefixes it is refused whole."""
    doc = decode_object(body)
    kind = _kind_field(doc, ("full", "unchanged"))
    generation = _generation(doc)
    if kind == "unchanged":
        return RoutesMessage(kind, generation)
    items = doc.get("prefixes")
    if not isinstance(items, list):
        raise MessageError(f"prefixes: must be a list, not {_kind(items)}")
    if len(items) > max_prefixes:
        raise MessageError(
            f"prefixes: {len(items)} prefixes, more than [health] max_prefixes_per_appliance = {max_prefixes}; routes refused")
    out = []
    seen = set()
    for i, cidr in enumerate(items):
        out_cidr = normal_prefix(cidr, f"prefixes[{i}]")
        if out_cidr not in seen:
            seen.add(out_cidr)
            out.append(out_cidr)
    return RoutesMessage(kind, generation, tuple(out))


def normal_prefix(cidr: Any, where: str) -> str:
    """CIDR text in normal form, or MessageError naming `where`."""
    if not isinstance(cidr, str):
        raise MessageError(f"{where}: must be a string, not {_kind(cidr)}")
    if not cidr.isascii() or len(cidr) > 50:
        raise MessageError(f"{where}: {cidr[:50]!r} is not an IPv4 or IPv6 prefix")
    try:
        version, value, length = parse_prefix(cidr)
    except (ValueError, TypeError, OSError):
        raise MessageError(f"{where}: {cidr!r} is not an IPv4 or IPv6 prefix") from None
    return format_prefix(version, value, length)


def admit_routes(prefixes: Iterable[str], allowed: Iterable[str] | None) -> AdmittedRoutes:
    """Keep the prefixes inside `allowed` (all of them when `allowed` is None)."""
    prefixes = tuple(prefixes)
    if allowed is None:
        return AdmittedRoutes(prefixes, ())
    nets = [parse_prefix(a) for a in allowed]
    kept, dropped = [], []
    for p in prefixes:
        version, value, length = parse_prefix(p)
        inside = False
        for v, net, n in nets:
            if v == version and n <= length:
                bits = 32 if v == 4 else 128
                if value >> (bits - n) == net >> (bits - n):
                    inside = True
                    break
        (kept if inside else dropped).append(p)
    return AdmittedRoutes(tuple(kept), tuple(dropped))


@dataclass(frozen=True, slots=True)
class PollAnswers:
    health: HealthMessage
    inventory: InventoryMessage
    routes: AdmittedRoutes | None  # None: routes unchanged
    routes_generation: int


def read_poll(health: bytes, inventory: bytes, since: int, routes: bytes, max_prefixes: int,
              allowed: Iterable[str] | None, inventory_type: str = "application/json",
              max_inflated_bytes: int = 64 * 1_000_000) -> PollAnswers:
    """One poll's three answers, validated together; the error names the endpoint and the field."""
    try:
        h = parse_health(health)
    except MessageError as exc:
        raise MessageError(f"/health: {exc}") from None
    try:
        inv = parse_inventory_answer(inventory, inventory_type, since, max_inflated_bytes)
    except MessageError as exc:
        raise MessageError(f"/inventory: {exc}") from None
    try:
        r = parse_routes(routes, max_prefixes)
    except MessageError as exc:
        raise MessageError(f"/routes: {exc}") from None
    admitted = admit_routes(r.prefixes, allowed) if r.kind == "full" else None
    return PollAnswers(h, inv, admitted, r.generation)


# ---------------------------------------------------------------- a client's request


@dataclass(frozen=True, slots=True)
class SteerQuery:
    content: str
    client: str | None  # ?client=, believed only from trusted callers (steering.access)


def parse_steer_query(pairs: Iterable[tuple[str, str]], content_in_path: str | None = None) -> SteerQuery:
    """`/steer?content=<id>[&client=<addr>]`, or `/content/<id>[?client=<addr>]` with the id from the path.

    Other parameters are ignored (players add cache-busters); `content` and
    `client` may appear once each.
    """
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in ("content", "client"):
            if key in seen:
                raise MessageError(f"{key}: given more than once")
            seen[key] = value
    if content_in_path is not None:
        if "content" in seen:
            raise MessageError("content: given in the path and in the query")
        content = content_in_path
    else:
        if "content" not in seen:
            raise MessageError("content: missing ?content=<id>")
        content = seen["content"]
    if not is_valid_id(content):
        raise MessageError("content: malformed content id: it must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
    client = seen.get("client")
    if client is not None and (len(client) > 64 or not client.isascii()):
        raise MessageError("client: not an IP address")
    return SteerQuery(content, client)


def _unchanged_or_delta(kind: str, generation: int, lines: list[bytes], rest: bytes) -> InventoryMessage:
    """The body of an `unchanged` (no lines) or `delta` (`+id`/`-id` lines) inventory answer."""
    if kind == "unchanged":
        if lines:
            raise MessageError("ids: an unchanged answer lists no ids")
        return InventoryMessage(kind, generation)
    if _DELTA_LINES.fullmatch(rest) is None:
        raise MessageError(f"ids: {_bad_line(lines, 2, b'+-')}")
    added = frozenset(line[1:].decode("ascii") for line in lines if line[:1] == b"+")
    removed = frozenset(line[1:].decode("ascii") for line in lines if line[:1] == b"-")
    return InventoryMessage(kind, generation, added=added, removed=removed)
