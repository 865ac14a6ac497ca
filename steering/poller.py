"""Polling the appliances: health, inventory deltas and routes, concurrently.

Rules kept here:
- Every appliance is polled in its own task with its own deadline
  (`[health] timeout_s`); a dead or hanging appliance never delays the
  others or the round.
- Inventory is fetched with `?since=<generation>`, so an unchanged appliance
  costs one small answer; routes likewise.
- The round's results go through the pure hysteresis (`steering.health`),
  which also applies the fleet-wide blip guard.
- When routes change, the prefix table is rebuilt in a thread and swapped in.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from steering.health import Availability, PollResult, Thresholds, apply_round
from steering.ranking import Appliance


@dataclass
class Knowledge:
    """What steering knows about one appliance beyond its availability."""

    inventory: set = field(default_factory=set)
    inventory_generation: int = 0
    routes: list = field(default_factory=list)
    routes_generation: int = 0
    polls: int = 0
    failures: int = 0


class Poller:
    def __init__(self, registry: list[Appliance], thresholds: Thresholds, interval_s: float, timeout_s: float,
                 on_routes_changed: Callable[[], None]):
        self.registry = registry
        self.thresholds = thresholds
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.on_routes_changed = on_routes_changed
        self.states: dict[str, Availability] = {a.appliance_id: Availability() for a in registry}
        self.known: dict[str, Knowledge] = {a.appliance_id: Knowledge() for a in registry}
        self.blip = False
        self.blip_reason = ""
        self.blip_since: float | None = None
        self.rounds = 0
        self.last_round_s: float | None = None
        self._session: aiohttp.ClientSession | None = None

    def reconfigure(self, registry: list[Appliance], thresholds: Thresholds, interval_s: float, timeout_s: float) -> None:
        """New registry: keep what is known about appliances that stay."""
        self.registry = registry
        self.thresholds = thresholds
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        ids = {a.appliance_id for a in registry}
        self.states = {aid: self.states.get(aid, Availability()) for aid in ids}
        self.known = {aid: self.known.get(aid, Knowledge()) for aid in ids}
        self.on_routes_changed()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
            self._session = session
            while True:
                started = time.monotonic()
                await self.poll_round()
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def poll_round(self) -> None:
        registry = list(self.registry)
        results = await asyncio.gather(*(self._poll_bounded(a) for a in registry))
        now = time.time()
        outcome = apply_round(self.states, {a.appliance_id: r for a, r in zip(registry, results)}, now, self.thresholds)
        self.states = outcome.states
        if outcome.blip and not self.blip:
            self.blip_since = now
        self.blip = outcome.blip
        self.blip_reason = outcome.blip_reason
        if not outcome.blip:
            self.blip_since = None
        self.rounds += 1
        self.last_round_s = now

    async def _poll_bounded(self, a: Appliance) -> PollResult:
        k = self.known.setdefault(a.appliance_id, Knowledge())
        k.polls += 1
        try:
            result = await asyncio.wait_for(self._poll(a, k), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            result = PollResult(False, f"no answer within {self.timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            result = PollResult(False, f"{type(exc).__name__}: {exc}"[:200])
        except (ValueError, KeyError, TypeError) as exc:
            result = PollResult(False, f"bad answer: {type(exc).__name__}: {exc}"[:200])
        if not result.ok:
            k.failures += 1
        return result

    async def _get_json(self, url: str) -> tuple[int, dict]:
        assert self._session is not None
        async with self._session.get(url) as resp:
            body = await resp.json(content_type=None)
            if not isinstance(body, dict):
                raise ValueError("answer is not a JSON object")
            return resp.status, body

    async def _poll(self, a: Appliance, k: Knowledge) -> PollResult:
        base = a.url
        status_code, health = await self._get_json(base + "/health")
        if status_code not in (200, 503):
            return PollResult(False, f"/health answered HTTP {status_code}")
        status = str(health.get("status", "ok"))
        load = health.get("load") or {}
        util = load.get("nic_utilisation")
        bps = load.get("bytes_per_s")
        reasons = [c.get("reason", "") for c in health.get("conditions", []) if isinstance(c, dict)]
        _, inv = await self._get_json(f"{base}/inventory?since={k.inventory_generation}")
        kind = inv.get("kind")
        if kind == "full":
            k.inventory = set(inv["ids"])
        elif kind == "delta":
            k.inventory |= set(inv.get("added", []))
            k.inventory -= set(inv.get("removed", []))
        elif kind != "unchanged":
            raise ValueError(f"inventory kind {kind!r}")
        k.inventory_generation = int(inv.get("generation", 0))
        _, routes = await self._get_json(f"{base}/routes?since={k.routes_generation}")
        if routes.get("kind") == "full":
            prefixes = list(routes.get("prefixes", []))
            changed = prefixes != k.routes
            k.routes = prefixes
            k.routes_generation = int(routes.get("generation", 0))
            if changed:
                self.on_routes_changed()
        return PollResult(
            True, "; ".join(r for r in reasons if r), status,
            float(util) if isinstance(util, (int, float)) else None,
            float(bps) if isinstance(bps, (int, float)) else None,
            len(k.inventory), len(k.routes),
        )
