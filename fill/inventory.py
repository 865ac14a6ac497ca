"""A peer appliance's `/inventory` answer, validated.

Nothing here performs I/O. Rules kept here:
- `parse_inventory` is the one function that reads a peer's answer: it
  returns the set of content ids or raises `InventoryError` naming the
  field. A bad answer makes that peer no source for this run; it never
  reaches the planner.
- The answer must be a JSON object with `"kind": "full"`, the peer's own id
  in `appliance`, a non-negative integer `generation`, and `ids`, a list of
  valid content ids whose length `count` states when present. Other fields
  are ignored: the server may add some (paging) without breaking old agents.
- Size is bounded by the caller (`fill.max_response_mb`) before parsing.
"""

from __future__ import annotations

from fill.errors import InventoryError
from fill.manifest import is_int, json_object
from oca.ids import is_valid_id


def parse_inventory(raw: bytes | str, appliance_id: str) -> frozenset[str]:
    """The content ids peer `appliance_id` reports holding. Raises InventoryError."""
    doc = json_object(raw, "inventory", InventoryError)
    if doc.get("kind", "full") != "full":
        raise InventoryError(f"kind: must be 'full', not {str(doc.get('kind'))[:40]!r}")
    if doc.get("appliance") != appliance_id:
        raise InventoryError(f"appliance: {str(doc.get('appliance'))[:80]!r} is not the peer asked ({appliance_id!r})")
    gen = doc.get("generation")
    if not is_int(gen) or gen < 0:
        raise InventoryError("generation: must be a non-negative integer")
    ids = doc.get("ids")
    if not isinstance(ids, list):
        raise InventoryError("ids: must be a list of content ids")
    for i, cid in enumerate(ids):
        if not is_valid_id(cid):
            raise InventoryError(f"ids[{i}]: {str(cid)[:60]!r} is not a valid content id")
    count = doc.get("count")
    if count is not None and (not is_int(count) or count != len(ids)):
        raise InventoryError(f"count: {str(count)[:40]} does not match the {len(ids)} ids listed")
    return frozenset(ids)
