"""Polling the appliances: health, inventory deltas and routes, concurrently.

Rules kept here:
- Every appliance is polled in its own task with its own deadline
  (`[health] timeout_s`, for its three answers; checking them in a thread
  is steering's own time and not counted); a dead, hanging or trickling
  appliance never delays the others or the round. At most `[health]
  max_concurrent_polls` polls run at once; a poll's deadline starts when it
  does.
- Inventory is fetched with `?since=<generation>&form=packed`, so an
  unchanged appliance costs one small answer; routes likewise. An
  appliance that predates the packed form answers JSON, read as before
  (told apart by Content-Type). Holdings are interned into one catalogue
  and kept as a bitmap per appliance (`steering.holdings`), built in the
  checker thread.
- Every answer is read with a size bound (`[health] max_response_mb`,
  checked against Content-Length and again while reading; no compressed
  bodies) and parsed by the pure validators in `steering.messages`, in a
  thread, off the loop that answers clients. A poll is applied whole or not
  at all: any failure (connection, status, size, a malformed answer, or
  anything else raised) makes it a failed poll of that appliance, with the
  reason, logged when the reason changes. Nothing an appliance sends can end
  the poller.
- At most `CHECKERS` answers are parsed at once, and one per appliance: a
  poll that finds its appliance's previous answer still being parsed (its
  deadline passed, but a thread cannot be stopped) fails at once, so a slow
  or huge answer cannot pile up threads or memory.
- Routes outside the appliance's `allowed_prefixes` are dropped and
  counted; more than `[health] max_prefixes_per_appliance` refuses them
  whole (a failed poll).
- The round's results go through the pure hysteresis (`steering.health`),
  which also applies the fleet-wide blip guard.
- When the admitted routes change, `on_routes_changed` is called; the prefix
  table is rebuilt by the service.
- With a fleet store (`attach_store`, for `[server] workers`), the poller
  keeps no holdings: inventories and routes go into the store
  (`steering.fleetstore`) as they arrive, states after each round, and the
  workers decide from it. Polls are conditional: `/health` first, and
  `/inventory` and `/routes` only when the generations it carries differ
  from those held (an appliance whose `/health` has no generations is
  asked all three, as before). Inventories are asked in the hashed form;
  an appliance that refuses it (HTTP 400, it predates the form) is asked
  for the packed form from then on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import aiohttp

from steering.fleetstore import FleetStoreWriter, state_byte
from steering.health import Availability, PollResult, Thresholds, apply_round
from steering.holdings import Catalogue, Holdings
from steering.messages import (BodyLimits, InventoryMessage, MessageError, PollAnswers, admit_routes, body_limits,
                               parse_health, parse_inventory_answer, parse_routes, read_poll)
from steering.ranking import Appliance
from steering.snapshot import SnapshotError, decode as decode_snapshot, encode as encode_snapshot

READ_CHUNK_BYTES = 256 * 1024
CHECKERS = 2  # threads parsing answers; parsing holds the GIL, more would only queue
ROUTES_FLUSH_S = 0.5  # route changes reach the fleet store together: one commit copies the B-tree pages it touches


@dataclass(frozen=True, slots=True)
class PollLimits:
    max_response_bytes: int = 64 * 1_000_000
    max_prefixes: int = 100_000
    token: str | None = None  # sent as Authorization: Bearer
    # Verifies https appliances ([health] ca_file, or the system store). Always
    # a verifying context: there is no unverified or plain-HTTP fallback.
    tls: ssl.SSLContext | None = None


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """The context https polls verify with; raises OSError/ssl.SSLError for an unreadable ca_file."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class PollFailure(Exception):
    """A poll failed for a reason stated in the message."""


@dataclass
class Knowledge:
    """What steering knows about one appliance beyond its availability."""

    inventory: Holdings | frozenset = frozenset()
    inventory_generation: int = 0
    routes: tuple = ()
    routes_generation: int = 0
    routes_dropped: tuple = ()  # outside allowed_prefixes, from the last routes answer
    polls: int = 0
    failures: int = 0
    last_failure: str = ""
    checking: concurrent.futures.Future | None = None  # the parse of this appliance's last answers
    # With a fleet store: the files held, whether an inventory and routes were ever taken, the form asked.
    count: int = 0
    known_inventory: bool = False
    known_routes: bool = False
    form: str = "hashed"

    def __contains__(self, content_id: object) -> bool:
        """Whether the appliance holds `content_id` now (the ranking's `Live.holds`)."""
        return content_id in self.inventory


@dataclass
class _Settings:
    thresholds: Thresholds
    interval_s: float
    timeout_s: float
    limits: PollLimits = field(default_factory=PollLimits)
    allowed: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    max_concurrent: int = 256


class Poller:
    def __init__(self, registry: list[Appliance], thresholds: Thresholds, interval_s: float, timeout_s: float,
                 on_routes_changed: Callable[[], None], limits: PollLimits = PollLimits(),
                 allowed: Mapping[str, tuple[str, ...] | None] | None = None,
                 log: Callable[[str], None] | None = None, max_concurrent: int = 256,
                 on_holdings_changed: Callable[[frozenset | None], None] | None = None):
        self.registry = registry
        self.on_routes_changed = on_routes_changed
        # Called with the ids whose holders changed (None: any may have).
        self.on_holdings_changed = on_holdings_changed or (lambda ids: None)
        self._s = _Settings(thresholds, interval_s, timeout_s, limits, dict(allowed or {}), max_concurrent)
        self._slots: asyncio.Semaphore | None = None
        self._route_lists: dict[tuple, tuple] = {}
        self.snapshot_path: str | None = None
        self.snapshot_interval_s = 60.0
        self.restored_from_s: float | None = None  # when the snapshot read at start was taken
        self.snapshot_written_s: float | None = None
        self.snapshot_error = ""
        self._snapshot_writing: asyncio.Future | None = None
        self.log = log or (lambda line: print(f"oca-steering: {line}", file=sys.stderr, flush=True))
        self.catalogue = Catalogue()
        # Interning happens in the checker threads; one batch at a time keeps
        # the catalogue's numbering whole.
        self._intern_lock = threading.Lock()
        self.states: dict[str, Availability] = {a.appliance_id: Availability() for a in registry}
        self.known: dict[str, Knowledge] = {a.appliance_id: Knowledge() for a in registry}
        self.blip = False
        self.blip_reason = ""
        self.blip_since: float | None = None
        self.rounds = 0
        self.last_round_s: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._checker: concurrent.futures.ThreadPoolExecutor | None = None
        self._default_tls: ssl.SSLContext | None = None
        self.store: FleetStoreWriter | None = None
        self.store_root: str | None = None
        self._store_index: dict[str, int] = {}

    def attach_store(self, root: str, now_s: float | None = None) -> str:
        """Keep the fleet view in the store at `root` (made, or reopened and its knowledge taken); returns what happened."""
        if self.store is not None:
            self.store.close()
        ids = [a.appliance_id for a in self.registry]
        store = FleetStoreWriter(root, ids)
        self.store, self.store_root = store, root
        self._store_index = {aid: i for i, aid in enumerate(ids)}
        if not store.restored:
            store.mark_restarted(None)
            return f"a new fleet store at {store.dir} ({store.why_new or 'none to reopen'}): a cold start"
        states = dict(self.states)
        for i, aid in enumerate(ids):
            r = store.restored[i]
            k = self.known[aid]
            k.inventory_generation, k.count, k.known_inventory = r.inventory_generation, r.count, r.inventory_generation > 0
            k.routes, k.routes_generation, k.known_routes = self._shared_routes(r.routes), r.routes_generation, r.routes_generation > 0
            up = bool(r.state & 4)
            states[aid] = Availability(up=up, reason="from the fleet store", status="draining" if r.state & 8 else "ok" if up else "unknown",
                                       draining=bool(r.state & 8), overloaded=bool(r.state & 2), content_count=r.count,
                                       route_count=len(r.routes), good_streak=1 if up else 0)
        self.states = states
        self.restored_from_s = now_s if now_s is not None else time.time()
        store.mark_restarted(self.restored_from_s)
        return f"reopened the fleet store {store.dir}: {len(ids)} appliances answered from it, stale until the first round"

    @property
    def thresholds(self) -> Thresholds:
        return self._s.thresholds

    def reconfigure(self, registry: list[Appliance], thresholds: Thresholds, interval_s: float, timeout_s: float,
                    limits: PollLimits = PollLimits(), allowed: Mapping[str, tuple[str, ...] | None] | None = None,
                    max_concurrent: int = 256) -> None:
        """New registry: keep what is known about appliances that stay (routes are admitted again next poll)."""
        self.registry = registry
        old_allowed = self._s.allowed
        if max_concurrent != self._s.max_concurrent:
            self._slots = None  # the next round makes one of the new size
        self._s = _Settings(thresholds, interval_s, timeout_s, limits, dict(allowed or {}), max_concurrent)
        ids = {a.appliance_id for a in registry}
        self.states = {aid: self.states.get(aid, Availability()) for aid in ids}
        self.known = {aid: self.known.get(aid, Knowledge()) for aid in ids}
        for aid, k in self.known.items():
            if old_allowed.get(aid) != self._s.allowed.get(aid):
                k.routes_generation = 0  # fetch the full routes again, to admit them under the new list
                k.known_routes = False
        if self.store is not None and [a.appliance_id for a in registry] != self.store.ids:
            # Another registry is another store: everything is asked again, whole.
            for k in self.known.values():
                k.inventory_generation, k.routes_generation, k.known_inventory, k.known_routes, k.routes = 0, 0, False, False, ()
            self.log(self.attach_store(self.store_root))
        self.on_routes_changed()
        self.on_holdings_changed(None)

    async def run(self) -> None:
        s = self._s
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.timeout_s, sock_read=s.timeout_s)
        # With a fleet store, connections are kept: 2,000 polls a second cannot each open one.
        connector = aiohttp.TCPConnector(limit=0, force_close=self.store is None)
        self._checker = concurrent.futures.ThreadPoolExecutor(CHECKERS, thread_name_prefix="steering-check")
        flusher = asyncio.ensure_future(self._flush_routes()) if self.store is not None else None
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
                self._session = session
                while True:
                    started = time.monotonic()
                    await self.poll_round()
                    await asyncio.sleep(max(0.0, self._s.interval_s - (time.monotonic() - started)))
        finally:
            if flusher is not None:
                flusher.cancel()
            self._checker.shutdown(wait=False, cancel_futures=True)

    async def _flush_routes(self) -> None:
        """Route changes queued by polls go into the store together, in a thread, every ROUTES_FLUSH_S."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(ROUTES_FLUSH_S)
            store = self.store
            if store is None:
                continue
            try:
                await loop.run_in_executor(None, store.flush_routes)
            except Exception as exc:  # noqa: BLE001 - logged; the changes are lost and asked again (generation reset)
                self.log(f"fleet store: routes not written: {exc}")
                for k in self.known.values():
                    k.known_routes = False

    @property
    def stale(self) -> bool:
        """Answers come from a snapshot read at start, and no full round has run since."""
        return self.restored_from_s is not None and self.rounds == 0

    def restore(self, path: str) -> str:
        """Read the snapshot at `path` (at start, before polling); returns what happened, for the log."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return f"no snapshot at {path}: a cold start"
        except OSError as exc:
            self.snapshot_error = f"snapshot {path} not read: {exc}"
            return self.snapshot_error + "; a cold start"
        try:
            snap = decode_snapshot(data, set(self.known))
        except SnapshotError as exc:
            self.snapshot_error = f"snapshot {path} not used: {exc}"[:300]
            return self.snapshot_error + "; a cold start"
        self.apply_snapshot(snap)
        return f"restored {len(snap.appliances)} appliances from {path} (taken {time.time() - snap.taken_s:.0f} s ago); stale until the first round"

    def apply_snapshot(self, snap, follower: bool = False) -> None:
        """Take what a snapshot says as what is known (at start; and on every new snapshot in a worker)."""
        routes_changed = False
        self.catalogue = snap.catalogue
        states = dict(self.states)
        for aid, r in snap.appliances.items():
            states[aid] = r.state
            k = self.known[aid]
            k.inventory, k.inventory_generation = r.inventory, r.inventory_generation
            if k.routes != r.routes:
                routes_changed = True
            k.routes, k.routes_generation = self._shared_routes(r.routes), r.routes_generation
        self.states = states  # a new dict: the service's view of the fleet is made again
        self.restored_from_s = snap.taken_s
        if follower:
            self.rounds = snap.rounds
            self.last_round_s = snap.taken_s
        if routes_changed:
            self.on_routes_changed()
        self.on_holdings_changed(None)

    async def follow(self, path: str, every_s: float = 0.25) -> None:
        """In a worker: apply each new snapshot file the poller process writes (mapped, not copied); never poll."""
        loop = asyncio.get_running_loop()
        seen = None
        while True:
            try:
                st = os.stat(path)
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                key = None
            if key is not None and key != seen:
                try:
                    snap = await loop.run_in_executor(None, self._read_mapped, path)
                except (OSError, SnapshotError) as exc:
                    self.snapshot_error = f"snapshot {path} not used: {exc}"[:300]
                else:
                    self.apply_snapshot(snap, follower=True)
                    self.snapshot_error = ""
                    seen = key
            await asyncio.sleep(every_s)

    def _read_mapped(self, path: str):
        import mmap

        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        # The map lives while any Holdings slices it; a newer file is a new inode, so this one never changes.
        return decode_snapshot(memoryview(mapped), set(self.known))

    def _maybe_snapshot(self, now: float) -> None:
        path = self.snapshot_path
        if not path or (self._snapshot_writing is not None and not self._snapshot_writing.done()):
            return
        if self.snapshot_written_s is not None and now - self.snapshot_written_s < self.snapshot_interval_s:
            return
        # References only, on the loop; values are never changed in place, so the thread reads a consistent round.
        ids = self.catalogue.ids
        count = len(ids)
        rounds = self.rounds
        items = {aid: (self.states.get(aid, Availability()), k.inventory, k.inventory_generation, k.routes, k.routes_generation)
                 for aid, k in self.known.items()}

        def write() -> None:
            data = encode_snapshot(now, ids[:count], items, rounds)
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)

        def done(fut: asyncio.Future) -> None:
            exc = fut.exception() if not fut.cancelled() else None
            if exc is None and not fut.cancelled():
                self.snapshot_written_s = now
                self.snapshot_error = ""
            elif exc is not None:
                self.snapshot_error = f"snapshot not written: {exc}"[:300]
                self.log(self.snapshot_error)

        self._snapshot_writing = asyncio.get_running_loop().run_in_executor(None, write)
        self._snapshot_writing.add_done_callback(done)

    async def poll_round(self) -> None:
        registry = list(self.registry)
        results = await asyncio.gather(*(self._poll_bounded(a) for a in registry))
        now = time.time()
        current = {a.appliance_id for a in self.registry}  # a reload during the round dropped the others: keep them out
        polled = {a.appliance_id: r for a, r in zip(registry, results) if a.appliance_id in current}
        outcome = apply_round(self.states, polled, now, self._s.thresholds)
        self.states = outcome.states
        if outcome.blip and not self.blip:
            self.blip_since = now
        self.blip = outcome.blip
        self.blip_reason = outcome.blip_reason
        if not outcome.blip:
            self.blip_since = None
        self.rounds += 1
        self.last_round_s = now
        if self.store is not None:
            states = self.states
            none = Availability()
            self.store.write_states([state_byte(st.up, st.draining, st.overloaded, st.serves_new_clients)
                                     for st in (states.get(a, none) for a in self.store.ids)], self.rounds, now)
            return  # the store is the snapshot
        self._maybe_snapshot(now)

    async def _poll_bounded(self, a: Appliance) -> PollResult:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._s.max_concurrent)
        async with self._slots:
            return await self._poll_one(a)

    async def _poll_one(self, a: Appliance) -> PollResult:
        k = self.known.setdefault(a.appliance_id, Knowledge())
        k.polls += 1
        timeout_s = self._s.timeout_s
        try:
            result = await self._poll(a, k, timeout_s)
        except asyncio.TimeoutError:
            result = PollResult(False, f"no answer within {timeout_s:g} s")
        except MessageError as exc:
            result = PollResult(False, f"bad answer: {exc}"[:300])
        except PollFailure as exc:
            result = PollResult(False, str(exc)[:300])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever an appliance causes is its failed poll, never the poller's end
            result = PollResult(False, f"{type(exc).__name__}: {exc}"[:300])
        if not result.ok:
            k.failures += 1
            if result.reason != k.last_failure:
                self.log(f"appliance {a.appliance_id}: poll failed: {result.reason}")
        elif k.last_failure:
            self.log(f"appliance {a.appliance_id}: polls again")
        k.last_failure = "" if result.ok else result.reason
        return result

    def body_limits(self) -> BodyLimits:
        return body_limits(self._s.limits.max_response_bytes, self._s.limits.max_prefixes)

    async def _fetch(self, base: str, path: str, limit: int, why: str, statuses: tuple[int, ...] = (200,)) -> bytes:
        return (await self._fetch_typed(base, path, limit, why, statuses))[0]

    async def _fetch_typed(self, base: str, path: str, limit: int, why: str, statuses: tuple[int, ...] = (200,)) -> tuple[bytes, str]:
        """The body and its Content-Type."""
        assert self._session is not None
        headers = {"Accept-Encoding": "identity"}
        if self._s.limits.token is not None:
            headers["Authorization"] = f"Bearer {self._s.limits.token}"
        what = path.partition("?")[0]
        tls = self._s.limits.tls
        if tls is None:  # no context given: the system store, still verifying
            tls = self._default_tls = self._default_tls or client_context(None)
        try:
            async with self._session.get(base + path, headers=headers, allow_redirects=False, ssl=tls) as resp:
                return await self._read(resp, what, limit, why, statuses), resp.headers.get("Content-Type", "")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PollFailure(f"{what}: TLS certificate not verified: {exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise PollFailure(f"{what}: TLS failed: {exc}") from None

    @staticmethod
    async def _read(resp, what: str, limit: int, why: str, statuses: tuple[int, ...]) -> bytes:
        if resp.status not in statuses:
            raise PollFailure(f"{what} answered HTTP {resp.status}")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise PollFailure(f"{what}: Content-Encoding {encoding[:30]!r} was not asked for")
        size = resp.content_length
        if size is not None and size > limit:
            raise PollFailure(f"{what}: answer of {size} bytes is over {limit / 1e6:g} MB ({why})")
        chunks = []
        read = 0
        while chunk := await resp.content.read(READ_CHUNK_BYTES):
            chunks.append(chunk)
            read += len(chunk)
            if read > limit:
                raise PollFailure(f"{what}: answer is over {limit / 1e6:g} MB ({why})")
        return b"".join(chunks)

    def _shared_routes(self, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        """One tuple for equal route lists: a site's appliances announce the same prefixes (a fleet: millions)."""
        shared = self._route_lists.get(prefixes)
        if shared is None:
            if len(self._route_lists) > 2 * len(self.known) + 16:
                in_use = {id(k.routes) for k in self.known.values()}
                self._route_lists = {r: r for r in self._route_lists.values() if id(r) in in_use}
            shared = self._route_lists[prefixes] = prefixes
        return shared

    def _check(self, health: bytes, inventory: bytes, inventory_type: str, since: int, routes: bytes,
               allowed: tuple[str, ...] | None, held: Holdings | frozenset) -> tuple[PollAnswers, Holdings | None]:
        """In a checker thread: validate the answers and build the new holdings (None: unchanged)."""
        answers = read_poll(health, inventory, since, routes, self._s.limits.max_prefixes, allowed, inventory_type,
                            self._s.limits.max_response_bytes)
        return answers, self._holdings(answers.inventory, held)

    def _holdings(self, inv: InventoryMessage, held: Holdings | frozenset) -> Holdings | None:
        with self._intern_lock:
            if inv.kind == "full":
                return Holdings.of(self.catalogue, inv.ids)
            if inv.kind == "delta":
                base = held if isinstance(held, Holdings) else Holdings.of(self.catalogue, held)
                return base.changed(inv.added, inv.removed)
        return None

    def _check_store(self, aid: str, inventory: bytes | None, inventory_type: str, since: int, routes: bytes | None,
                     allowed: tuple[str, ...] | None, old_routes: tuple) -> tuple:
        """In a checker thread: validate the answers, then write them into the store whole.

        Returns (inventory message or None, admitted routes or None, routes generation or None)."""
        limits = self._s.limits
        inv = None if inventory is None else parse_inventory_answer(inventory, inventory_type, since, limits.max_response_bytes)
        admitted = rgen = None
        if routes is not None:
            try:
                r = parse_routes(routes, limits.max_prefixes)
            except MessageError as exc:
                raise MessageError(f"/routes: {exc}") from None
            rgen = r.generation
            if r.kind == "full":
                admitted = admit_routes(r.prefixes, allowed)
        store = self.store
        assert store is not None
        i = self._store_index[aid]
        if inv is not None and inv.kind == "full":
            files = store.indexes_of_hashes(inv.hashes) if inv.hashes is not None else store.indexes_of_ids(inv.ids)
            store.replace_row(i, files, inv.generation)
        elif inv is not None and inv.kind == "delta":
            store.change_row(i, store.indexes_of_ids(inv.added), store.indexes_of_ids(inv.removed, intern=False), inv.generation)
        elif inv is not None:
            store.change_row(i, store.indexes_of_ids(()), store.indexes_of_ids(()), inv.generation)
        if admitted is not None and admitted.prefixes != old_routes:
            store.queue_routes(i, old_routes, admitted.prefixes, rgen)  # written by `_flush_routes` within ROUTES_FLUSH_S
        return inv, admitted, rgen

    async def _poll_store(self, a: Appliance, k: Knowledge, timeout_s: float) -> PollResult:
        base = a.url
        limits = self.body_limits()
        most = f"[health] max_response_mb = {self._s.limits.max_response_bytes / 1e6:g}"
        since = k.inventory_generation if k.known_inventory else 0
        inventory = routes = None
        inventory_type = ""
        async with asyncio.timeout(timeout_s):
            health = await self._fetch(base, "/health", limits.health, f"{most}, and a /health answer is never that big", (200, 503))
            try:
                h = parse_health(health)
            except MessageError as exc:
                raise MessageError(f"/health: {exc}") from None
            if not k.known_inventory or h.inventory_generation is None or h.inventory_generation != k.inventory_generation:
                try:
                    inventory, inventory_type = await self._fetch_typed(base, f"/inventory?since={since}&form={k.form}", limits.inventory, most)
                except PollFailure as exc:
                    if k.form != "hashed" or not str(exc).endswith("HTTP 400"):
                        raise
                    k.form = "packed"  # an appliance that predates the hashed form refuses it: the packed one from now on
                    inventory, inventory_type = await self._fetch_typed(base, f"/inventory?since={since}&form=packed", limits.inventory, most)
            if not k.known_routes or h.routes_generation is None or h.routes_generation != k.routes_generation:
                routes = await self._fetch(base, f"/routes?since={k.routes_generation if k.known_routes else 0}", limits.routes,
                                           f"{most}; [health] max_prefixes_per_appliance = {self._s.limits.max_prefixes} prefixes take less")
        if inventory is not None or routes is not None:
            assert self._checker is not None
            k.checking = self._checker.submit(self._check_store, a.appliance_id, inventory, inventory_type, since, routes,
                                              self._s.allowed.get(a.appliance_id), k.routes)
            checking = k.checking
            try:
                inv, admitted, rgen = await asyncio.wrap_future(checking)
            finally:
                if checking.done():
                    k.checking = None
            if inv is not None:
                k.inventory_generation, k.known_inventory = inv.generation, True
                k.count = int(self.store.gens[self._store_index[a.appliance_id]][2]) if self.store is not None else 0
            if rgen is not None:
                if admitted is not None:
                    k.routes = self._shared_routes(admitted.prefixes)
                    k.routes_dropped = admitted.dropped
                k.routes_generation, k.known_routes = rgen, True
        return PollResult(True, "; ".join(h.reasons), h.status, h.nic_utilisation, h.bytes_per_s, k.count, len(k.routes))

    async def _poll(self, a: Appliance, k: Knowledge, timeout_s: float) -> PollResult:
        if self.store is not None:
            if k.checking is not None and not k.checking.done():
                raise PollFailure("its previous answer is still being checked (too big or too slow to parse)")
            return await self._poll_store(a, k, timeout_s)
        if k.checking is not None and not k.checking.done():
            raise PollFailure("its previous answer is still being checked (too big or too slow to parse)")
        base = a.url
        limits = self.body_limits()
        most = f"[health] max_response_mb = {self._s.limits.max_response_bytes / 1e6:g}"
        since = k.inventory_generation
        # The deadline is the appliance's: its three answers. Checking them is
        # steering's own work (bounded by the one-check-per-appliance rule), and
        # a busy steering must not fail healthy appliances.
        async with asyncio.timeout(timeout_s):
            health = await self._fetch(base, "/health", limits.health, f"{most}, and a /health answer is never that big", (200, 503))
            inventory, inventory_type = await self._fetch_typed(base, f"/inventory?since={since}&form=packed", limits.inventory, most)
            routes = await self._fetch(base, f"/routes?since={k.routes_generation}", limits.routes,
                                       f"{most}; [health] max_prefixes_per_appliance = {self._s.limits.max_prefixes} prefixes take less")
        assert self._checker is not None
        k.checking = self._checker.submit(self._check, health, inventory, inventory_type, since, routes,
                                          self._s.allowed.get(a.appliance_id), k.inventory)
        checking = k.checking
        try:
            answers, holdings = await asyncio.wrap_future(checking)
        finally:
            if checking.done():
                # Its result holds every parsed id (30,000 strings an appliance): kept, it was most of the poller's memory.
                k.checking = None
        # Applied whole: nothing above changed `k`.
        inv = answers.inventory
        if holdings is not None:
            k.inventory = holdings
            self.on_holdings_changed(None if inv.kind == "full" else inv.added | inv.removed)
        k.inventory_generation = inv.generation
        if answers.routes is not None:
            changed = answers.routes.prefixes != k.routes
            k.routes = self._shared_routes(answers.routes.prefixes)
            k.routes_dropped = answers.routes.dropped
            k.routes_generation = answers.routes_generation
            if changed:
                self.on_routes_changed()
        h = answers.health
        return PollResult(True, "; ".join(h.reasons), h.status, h.nic_utilisation, h.bytes_per_s, len(k.inventory), len(k.routes))
