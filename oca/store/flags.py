"""Cross-process state kept in the index: one frozen type, one reader and one writer per flag.

The server's workers, its parent (routes), `oca-admin` and the fill agent
share a few small records through the LMDB index. Rules kept here:
- Each record has a frozen dataclass and exactly one `read_*` and one
  `write_*` function, here; nothing else knows its flag name or encoding.
  `ContentStore` exposes them, so no module outside the store touches
  `Index.get_flag`/`set_flag`.
- A reader never raises on what it finds: a missing flag, a value that is not
  JSON, or JSON of the wrong shape reads as the empty record (another
  process's bug must not take `/health` down). Values that do not fit are
  dropped field by field.
- Writers take the typed record; the encoding is compact JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Protocol

_DRAIN = "drain"
_ROUTES = "routes"
_FILL_STATUS = "fill_status"
_UNCHOSEN = "fill_unchosen"
_LISTED = "fill_listed"
_MAX_REASON_CHARS = 1000  # a reason is one log line, not a document


class FlagStore(Protocol):
    def get_flag(self, name: str) -> str | None: ...
    def set_flag(self, name: str, value: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Drain:
    """The operator drained this appliance (`oca-admin drain`) at `since_s`."""

    since_s: float


@dataclass(frozen=True, slots=True)
class Routes:
    """The client prefixes this appliance serves, as published by the server's parent."""

    generation: int = 0
    prefixes: tuple[str, ...] = ()
    updated_s: float = 0.0
    # Why the kernel route follower is down ("" while it runs): the prefixes
    # may be stale, and /health names it.
    down: str = ""


@dataclass(frozen=True, slots=True)
class FillStatus:
    """The fill agent's record of its last finished run and of the run in progress."""

    last: Mapping[str, Any] | None = None
    current: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Unchosen:
    """Content id → when the fill plan first found it no longer chosen (grace period)."""

    since_s: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


def _load(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _dump(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------- drain


def read_drain(index: FlagStore) -> Drain | None:
    raw = index.get_flag(_DRAIN)
    if raw is None:
        return None
    # Written as a bare timestamp; anything else still means "drained".
    try:
        since = float(raw)
    except ValueError:
        since = 0.0
    return Drain(since if math.isfinite(since) else 0.0)


def write_drain(index: FlagStore, drain: Drain | None) -> None:
    index.set_flag(_DRAIN, None if drain is None else repr(float(drain.since_s)))


# ---------------------------------------------------------------- routes


def read_routes(index: FlagStore) -> Routes:
    doc = _load(index.get_flag(_ROUTES))
    if not isinstance(doc, dict):
        return Routes()
    gen = doc.get("generation")
    prefixes = doc.get("prefixes")
    return Routes(
        generation=gen if isinstance(gen, int) and not isinstance(gen, bool) and gen >= 0 else 0,
        prefixes=tuple(p for p in prefixes if isinstance(p, str)) if isinstance(prefixes, list) else (),
        updated_s=_number(doc.get("updated_s")) or 0.0,
        down=down[:_MAX_REASON_CHARS] if isinstance(down := doc.get("down"), str) else "",
    )


def write_routes(index: FlagStore, routes: Routes) -> None:
    doc = {"generation": routes.generation, "prefixes": list(routes.prefixes), "updated_s": routes.updated_s}
    if routes.down:
        doc["down"] = routes.down[:_MAX_REASON_CHARS]
    index.set_flag(_ROUTES, _dump(doc))


# ---------------------------------------------------------------- fill status


def read_fill_status(index: FlagStore) -> FillStatus:
    doc = _load(index.get_flag(_FILL_STATUS))
    if not isinstance(doc, dict):
        return FillStatus()
    last, current = doc.get("last"), doc.get("current")
    return FillStatus(
        last=MappingProxyType(dict(last)) if isinstance(last, dict) else None,
        current=MappingProxyType(dict(current)) if isinstance(current, dict) else None,
    )


def write_fill_status(index: FlagStore, status: FillStatus) -> None:
    index.set_flag(_FILL_STATUS, _dump({
        "last": None if status.last is None else dict(status.last),
        "current": None if status.current is None else dict(status.current),
    }))


# ---------------------------------------------------------------- unchosen


def read_unchosen(index: FlagStore) -> Unchosen:
    doc = _load(index.get_flag(_UNCHOSEN))
    if not isinstance(doc, dict):
        return Unchosen()
    since = {k: v for k, v in ((k, _number(v)) for k, v in doc.items() if isinstance(k, str)) if v is not None}
    return Unchosen(MappingProxyType(since))


def write_unchosen(index: FlagStore, unchosen: Unchosen) -> None:
    index.set_flag(_UNCHOSEN, _dump(dict(unchosen.since_s)))


# ---------------------------------------------------------------- listed


@dataclass(frozen=True, slots=True)
class Listed:
    """The content ids the last accepted manifest listed (the night's run tells new files by them)."""

    ids: frozenset[str] = frozenset()


def read_listed(index: FlagStore) -> Listed:
    doc = _load(index.get_flag(_LISTED))
    if not isinstance(doc, list):
        return Listed()
    return Listed(frozenset(x for x in doc if isinstance(x, str)))


def write_listed(index: FlagStore, listed: Listed) -> None:
    index.set_flag(_LISTED, _dump(sorted(listed.ids)))
