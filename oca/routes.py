"""The client prefixes this appliance serves, for `/routes`.

Rules kept here:
- Two sources: `[routes] static`, and the routes a routing daemon (BIRD,
  FRR) installed in the kernel table `[routes] kernel_table` with one of the
  protocol numbers `[routes] kernel_protocols`.
- The kernel is dumped once (filtered by table), then followed through
  netlink route events, so a table of many routes is never re-dumped on
  each poll. The event socket is bound before the dump, so no change made
  during the dump is lost.
- Events are debounced: the set is published once the events have been
  quiet for `DEBOUNCE_S`, or `MAX_BATCH_S` after the first unpublished
  change while they keep coming (`publish_due`, pure). A burst of route
  changes costs one sort, one serialisation and one index commit (fsync).
- pyroute2 does not run on uvloop, so this runs in a thread of the parent
  process, never on a serving loop. The thread runs under
  `oca.supervise.Supervisor`: a raise is logged with its traceback, counted,
  and the follower restarts (with a fresh dump) after a back-off. While it is
  down the published `Routes` record says why (`Routes.down`), so the
  workers' `/health` can name it; the next successful dump clears it.
- The parent publishes the set into the index through `oca.store.flags`
  (`Routes`: generation, prefixes, down); workers only read it.
- The generation changes exactly when the set of prefixes changes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import threading
import time
from typing import Callable, Iterable

from oca.store import flags
from oca.supervise import Supervisor

RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
# Quiet time that ends a burst: a routing daemon installs a batch of changes
# within milliseconds of each other; 0.2 s adds nothing a steering poll
# (seconds) would notice.
DEBOUNCE_S = 0.2
# Longest a change waits while events keep coming (a full BGP table loading
# for tens of seconds still reaches /routes every few seconds).
MAX_BATCH_S = 5.0
KERNEL_ROUTES_TASK = "kernel-routes"


def publish_due(first_change_s: float, last_change_s: float, quiet_s: float = DEBOUNCE_S,
                max_batch_s: float = MAX_BATCH_S) -> float:
    """When a batch of unpublished changes is due: quiet for `quiet_s`, or `max_batch_s` after the first."""
    return min(last_change_s + quiet_s, first_change_s + max_batch_s)


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


def publish_routes(index: flags.FlagStore, prefixes: Iterable[str], *, down: str = "", now_s: float | None = None) -> int:
    """Write the prefix set (and why the follower is down, if it is) when either changed; returns the generation."""
    wanted = tuple(sorted(set(prefixes), key=lambda p: (":" in p, p)))
    old = flags.read_routes(index)
    if old.prefixes == wanted and old.down == down:
        return old.generation
    generation = old.generation if old.prefixes == wanted else old.generation + 1
    updated_s = time.time() if now_s is None else now_s
    flags.write_routes(index, flags.Routes(generation, wanted, updated_s, down))
    return generation


def _buffered(events) -> bool:
    """Whether pyroute2 holds datagrams it already read off the socket.

    One `get()` returns one datagram's messages, but pyroute2 (0.9) reads
    every datagram waiting on the socket into its own queue while it waits
    for the first; select() on the socket then reports nothing until the
    next event, and a burst would sit half-applied.
    """
    queue = getattr(getattr(events, "asyncore", None), "msg_queue", None)
    return queue is not None and not queue.root.empty()


class KernelRouteFollower:
    """Dump one kernel table once, then follow its changes; call `publish` with the set.

    `follow()` runs until `stop()`; it raises on netlink trouble, and its
    supervisor starts it again.
    """

    def __init__(self, table: int, protocols: tuple[int, ...], publish: Callable[[set[str]], None],
                 log: Callable[[str], None], *, monotonic: Callable[[], float] = time.monotonic):
        self.table = table
        self.protocols = set(protocols)
        self.publish = publish
        self.log = log
        self.monotonic = monotonic
        self.prefixes: set[str] = set()
        self._halt = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def wanted(self, msg) -> bool:
        return route_table(msg) == self.table and msg["proto"] in self.protocols

    def follow(self) -> None:
        from pyroute2 import IPRoute

        if self._halt.is_set():
            return
        with IPRoute() as events:
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
            self._follow_events(events)

    def _follow_events(self, events) -> None:
        first = last = None  # monotonic times of the first and last unpublished change
        while not self._halt.is_set():
            timeout = None if first is None else max(0.0, publish_due(first, last) - self.monotonic())
            ready, _, _ = select.select([events.fileno(), self._wake_r], [], [], timeout)
            if self._halt.is_set():
                return
            if events.fileno() in ready:
                changed = self._apply(events.get())
                while _buffered(events):  # select() cannot see these: drain them now
                    changed = self._apply(events.get()) or changed
                if changed:
                    now = self.monotonic()
                    first, last = first or now, now
            if first is not None and self.monotonic() >= publish_due(first, last):
                self.publish(set(self.prefixes))
                first = last = None

    def _apply(self, msgs) -> bool:
        """Apply route events to the set; True when it changed."""
        changed = False
        for msg in msgs:
            event = msg.get("event")
            if event not in ("RTM_NEWROUTE", "RTM_DELROUTE") or not self.wanted(msg):
                continue
            p = route_prefix(msg)
            if p is None:
                continue
            if event == "RTM_NEWROUTE" and p not in self.prefixes:
                self.prefixes.add(p)
                changed = True
            elif event == "RTM_DELROUTE" and p in self.prefixes:
                self.prefixes.discard(p)
                changed = True
        return changed

    def stop(self) -> None:
        self._halt.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class RoutesManager:
    """The parent's keeper of `/routes`: static prefixes plus the supervised kernel follower.

    `index` is the parent's own `Index` (anything with the flag methods).
    Pass the process's `Supervisor` to have the follower counted with the
    other tasks; `down()` names the follower while it waits to restart.
    """

    def __init__(self, index: flags.FlagStore, log: Callable[[str], None], supervisor: Supervisor | None = None):
        self.index = index
        self.log = log
        self.supervisor = supervisor if supervisor is not None else Supervisor(log)
        self.static: set[str] = set()
        self.kernel: set[str] = set()
        self.follower: KernelRouteFollower | None = None
        self._thread: threading.Thread | None = None
        self._key: tuple | None = None
        self._down = ""
        self._lock = threading.Lock()

    def configure(self, static: Iterable[str], table: int | None, protocols: tuple[int, ...]) -> None:
        self.static = set(static)
        key = (table, tuple(protocols))
        if key != self._key:
            self._stop_follower()
            self.kernel = set()
            self._down = ""
            self._key = key
            if table is not None:
                self.follower = KernelRouteFollower(table, tuple(protocols), self._on_kernel, self.log)
                self._thread = self.supervisor.start_thread(KERNEL_ROUTES_TASK, self._follow)
        self._publish()

    def down(self) -> dict[str, str]:
        """Supervised tasks of this manager waiting to restart: name → reason."""
        return {k: v for k, v in self.supervisor.down().items() if k == KERNEL_ROUTES_TASK}

    def _follow(self) -> None:
        follower = self.follower
        if follower is None:
            return
        try:
            follower.follow()
        except Exception as exc:
            self._down = f"{KERNEL_ROUTES_TASK}: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # the index may be what failed; the supervisor logs the cause
                self._publish()
            raise

    def _on_kernel(self, prefixes: set[str]) -> None:
        self.kernel = prefixes
        self._down = ""
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            publish_routes(self.index, self.static | self.kernel, down=self._down)

    def _stop_follower(self) -> None:
        follower, thread = self.follower, self._thread
        self.follower = self._thread = None
        if follower is None:
            return
        if thread is not None:
            thread.stop_event.set()  # type: ignore[attr-defined]
        follower.stop()
        if thread is not None:
            thread.join(timeout=2)
        if thread is None or not thread.is_alive():  # a thread still inside select keeps its fds
            follower.close()

    def stop(self) -> None:
        self._stop_follower()
