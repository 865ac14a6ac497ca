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

from steering.health import Availability, PollResult, Thresholds, apply_round
from steering.holdings import Catalogue, Holdings
from steering.messages import BodyLimits, InventoryMessage, MessageError, PollAnswers, body_limits, read_poll
from steering.ranking import Appliance
from steering.snapshot import SnapshotError, decode as decode_snapshot, encode as encode_snapshot

READ_CHUNK_BYTES = 256 * 1024
CHECKERS = 2  # threads parsing answers; parsing holds the GIL, more would only queue


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
        self.on_routes_changed()
        self.on_holdings_changed(None)

    async def run(self) -> None:
        s = self._s
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.timeout_s, sock_read=s.timeout_s)
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        self._checker = concurrent.futures.ThreadPoolExecutor(CHECKERS, thread_name_prefix="steering-check")
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
                self._session = session
                while True:
                    started = time.monotonic()
                    await self.poll_round()
                    await asyncio.sleep(max(0.0, self._s.interval_s - (time.monotonic() - started)))
        finally:
            self._checker.shutdown(wait=False, cancel_futures=True)

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

    async def _poll(self, a: Appliance, k: Knowledge, timeout_s: float) -> PollResult:
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
