"""The client prefixes this appliance serves, for `/routes`.

Rules kept here:
- Two sources: `[routes] static`, and the routes a routing daemon (BIRD,
  FRR) installed in the kernel table `[routes] kernel_table` with one of the
  protocol numbers `[routes] kernel_protocols`.
- The kernel is dumped once (filtered by table), then followed through
  netlink route events, so a table of many routes is never re-dumped on
  each poll. The event socket is bound before the dump, so no change made
  during the dump is lost.
- pyroute2 does not run on uvloop, so this runs in a thread of the parent
  process, never on a serving loop. The parent publishes the set into the
  index (`routes` flag: generation and prefixes); workers only read it.
- The generation changes exactly when the set of prefixes changes.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from typing import Callable, Iterable

ROUTES_FLAG = "routes"
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
DEBOUNCE_S = 0.2


def route_prefix(msg) -> str | None:
    family = msg.get("family")
    dst = msg.get_attr("RTA_DST")
    length = msg["dst_len"]
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    try:
        return str(ipaddress.ip_network(f"{dst}/{length}", strict=False))
    except ValueError:
        return None


def route_table(msg) -> int:
    table = msg.get_attr("RTA_TABLE")
    return table if table is not None else msg["table"]


def publish_routes(index, prefixes: Iterable[str]) -> int:
    """Write the prefix set to the index if it changed; returns the generation."""
    wanted = sorted(set(prefixes), key=lambda p: (":" in p, p))
    raw = index.get_flag(ROUTES_FLAG)
    old = json.loads(raw) if raw else {"generation": 0, "prefixes": []}
    if old.get("prefixes") == wanted:
        return int(old.get("generation", 0))
    generation = int(old.get("generation", 0)) + 1
    index.set_flag(ROUTES_FLAG, json.dumps({"generation": generation, "prefixes": wanted, "updated_s": time.time()}))
    return generation


class KernelRouteFollower(threading.Thread):
    """Dump one kernel table once, then follow its changes; call `publish` with the set."""

    def __init__(self, table: int, protocols: tuple[int, ...], publish: Callable[[set[str]], None], log: Callable[[str], None]):
        super().__init__(name="oca-routes", daemon=True)
        self.table = table
        self.protocols = set(protocols)
        self.publish = publish
        self.log = log
        self.prefixes: set[str] = set()
        self._halt = threading.Event()
        self._events = None

    def wanted(self, msg) -> bool:
        return route_table(msg) == self.table and msg["proto"] in self.protocols

    def run(self) -> None:
        from pyroute2 import IPRoute

        while not self._halt.is_set():
            try:
                self._follow(IPRoute)
            except Exception as exc:  # netlink trouble: report, wait, start over
                if self._halt.is_set():
                    return
                self.log(f"kernel routes: {type(exc).__name__}: {exc}; retrying in 5 s")
                self._halt.wait(5)

    def _follow(self, IPRoute) -> None:
        events = IPRoute()
        self._events = events
        try:
            events.bind(groups=RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
            with IPRoute() as dump:
                found = set()
                for family in (socket.AF_INET, socket.AF_INET6):
                    for msg in dump.route("dump", table=self.table, family=family):
                        if self.wanted(msg):
                            p = route_prefix(msg)
                            if p:
                                found.add(p)
            self.prefixes = found
            self.publish(set(found))
            self.log(f"kernel routes: {len(found)} prefixes in table {self.table}, following changes")
            dirty_since = None
            while not self._halt.is_set():
                for msg in events.get():
                    event = msg.get("event")
                    if event not in ("RTM_NEWROUTE", "RTM_DELROUTE") or not self.wanted(msg):
                        continue
                    p = route_prefix(msg)
                    if p is None:
                        continue
                    if event == "RTM_NEWROUTE":
                        self.prefixes.add(p)
                    else:
                        self.prefixes.discard(p)
                    dirty_since = dirty_since or time.monotonic()
                if dirty_since is not None:
                    self.publish(set(self.prefixes))
                    dirty_since = None
        finally:
            self._events = None
            events.close()

    def stop(self) -> None:
        self._halt.set()
        ev = self._events
        if ev is not None:
            try:
                ev.close()
            except Exception:
                pass


class RoutesManager:
    """The parent's keeper of `/routes`: static prefixes plus the kernel follower."""

    def __init__(self, index, log: Callable[[str], None]):
        self.index = index
        self.log = log
        self.static: set[str] = set()
        self.kernel: set[str] = set()
        self.follower: KernelRouteFollower | None = None
        self._key: tuple | None = None
        self._lock = threading.Lock()

    def configure(self, static: Iterable[str], table: int | None, protocols: tuple[int, ...]) -> None:
        self.static = set(static)
        key = (table, tuple(protocols))
        if key != self._key:
            self._stop_follower()
            self.kernel = set()
            self._key = key
            if table is not None:
                self.follower = KernelRouteFollower(table, tuple(protocols), self._on_kernel, self.log)
                self.follower.start()
        self._publish()

    def _on_kernel(self, prefixes: set[str]) -> None:
        self.kernel = prefixes
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            publish_routes(self.index, self.static | self.kernel)

    def _stop_follower(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower.join(timeout=2)
            self.follower = None

    def stop(self) -> None:
        self._stop_follower()
