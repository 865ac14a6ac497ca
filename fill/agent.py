"""The fill run: fetch the manifest, plan, delete, download, publish, report.

Rules kept here:
- The agent writes only through the store's public face (publish_prepared,
  remove, partial_path); the index never disagrees with the disks.
- Order: refuse a manifest that would delete more than
  `fill.max_delete_share` of what is held (unless forced); delete what the
  manifest no longer lists; then add, most popular first, at most
  `fill.concurrency` at once, under the shared rate cap, within the nightly
  budget and the window. When an add needs room, unchosen files are deleted
  least popular first.
- Sources, per file: the site's peers that report holding it (signed URLs
  through their normal `/content/<id>`), then the manifest's origin URLs.
  Each is retried with doubling backoff `fill.retries` times, then the next.
- At the window's end, when the budget is spent, or on SIGTERM/SIGINT, the
  run stops cleanly: downloads in progress keep their partial files for the
  next run, which resumes them.
- A status record of the current and last run is kept in the index
  (`fill_status`), where `/health` and `/metrics` read it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp

from fill.download import ChecksumMismatch, DiskFullError, Partial, SourceError, download
from fill.manifest import Manifest, ManifestError, ManifestFile, SiteAppliance, parse_manifest
from fill.plan import Held, Plan, holders_with, make_room, plan_fill, site_of
from fill.ratelimit import TokenBucket
from fill.window import parse_window, seconds_left, zone
from oca.config import Config
from oca.errors import OcaError
from oca.signing import signed_path
from oca.store.content import ContentStore
from oca.store.disks import StoreError, StoreFullError

STATUS_FLAG = "fill_status"
UNCHOSEN_FLAG = "fill_unchosen"
PEER_URL_TTL_S = 6 * 3600
# Under a rate cap each connection's TCP receive buffer is bounded. The token
# bucket paces what the agent reads, but the kernel grows the receive window
# up to net.ipv4.tcp_rmem's maximum (32 MiB on the test machines) and the
# sender fills it at line rate: the origin saw 6-7% over an 80 Mb/s cap over
# 10 s (tests/integration/test_fill.py), and every kill -9 threw a full
# window away. A tenth of a second of the cap, shared by the downloads (at
# least 128 KiB each; the kernel doubles it and advertises most of that),
# keeps the cap reachable at round trips up to 100 ms and the burst at the
# start to about 2% of 10 s (a quarter second measured 4% here).
RCVBUF_CAP_S = 0.1
RCVBUF_MIN_BYTES = 128 << 10


class FillError(OcaError):
    pass


@dataclass
class RunStatus:
    started_s: float
    ended_s: float | None = None
    ended_because: str | None = None
    manifest_files: int = 0
    files_total: int = 0
    files_added: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    bytes_filled: int = 0
    bytes_planned: int = 0
    checksum_mismatches: int = 0
    current: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.failures = (self.failures + [line])[-20:]


def held_files(cs: ContentStore) -> dict[str, Held]:
    working = {d.uuid for d in cs.disks if d.working}
    return {e.content_id: Held(e.content_id, e.size, e.checksum, e.popularity) for e in cs.index.entries() if e.store_uuid in working}


def capacity_bytes(cs: ContentStore, held: dict[str, Held]) -> int:
    usable = sum(max(0, cap.free_bytes - cap.reserve_bytes) for disk, cap in cs.capacities() if disk.working)
    return usable + sum(h.size for h in held.values())


def make_plan(cfg: Config, cs: ContentStore, manifest: Manifest, now_s: float) -> Plan:
    held = held_files(cs)
    raw = cs.index.get_flag(UNCHOSEN_FLAG)
    unchosen = json.loads(raw) if raw else {}
    assert cfg.fill is not None
    return plan_fill(
        manifest, cfg.appliance.id, cfg.appliance.site, held, capacity_bytes(cs, held), now_s,
        cfg.fill.delete_grace_h * 3600, unchosen,
    )


async def fetch_manifest(session: aiohttp.ClientSession, cfg: Config) -> Manifest:
    assert cfg.fill is not None
    url = cfg.fill.manifest_url
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=120, sock_connect=cfg.fill.connect_timeout_s, sock_read=cfg.fill.read_timeout_s)) as resp:
            if resp.status != 200:
                raise FillError(f"manifest {url}: HTTP {resp.status}")
            body = await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise FillError(f"manifest {url}: {type(exc).__name__}: {exc}") from None
    return parse_manifest(body, keys=cfg.signing.secrets(), require_signature=cfg.fill.require_signed_manifest)


def load_manifest_sync(cfg: Config) -> Manifest:
    async def go() -> Manifest:
        async with aiohttp.ClientSession() as session:
            return await fetch_manifest(session, cfg)

    return asyncio.run(go())


class Progress:
    """A live line on a terminal, plain log lines otherwise."""

    def __init__(self, status: RunStatus, stream=sys.stderr):
        self.status = status
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0

    def log(self, msg: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{time.strftime('%H:%M:%S')} oca-fill: {msg}\n")
        self.stream.flush()

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.25:
            return
        self.last_draw = now
        s = self.status
        elapsed = max(1e-3, now - self.started)
        rate = s.bytes_filled / elapsed
        left = max(0, s.bytes_planned - s.bytes_filled)
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate > 0 else "--:--:--"
        current = ", ".join(s.current[:2]) + ("..." if len(s.current) > 2 else "")
        line = (
            f"[{s.files_added + s.files_failed + s.files_skipped}/{s.files_total}] {s.bytes_filled / 1e9:.2f}/{s.bytes_planned / 1e9:.2f} GB "
            f"{rate * 8 / 1e6:.0f} Mb/s ETA {eta}  {current}"
        )
        self.stream.write("\r\x1b[K" + line[: 160])
        self.stream.flush()


class FillRun:
    def __init__(self, cfg: Config, cs: ContentStore, *, ignore_window: bool = False, force: bool = False, now=time.time, monotonic=time.monotonic):
        assert cfg.fill is not None
        self.cfg = cfg
        self.fc = cfg.fill
        self.cs = cs
        self.ignore_window = ignore_window
        self.force = force
        self.now = now
        self.monotonic = monotonic
        self.status = RunStatus(started_s=now())
        self.progress = Progress(self.status)
        self.bucket = TokenBucket(None if self.fc.rate_limit_mbps is None else self.fc.rate_limit_mbps * 1e6, monotonic())
        self.budget = None if self.fc.nightly_budget_gb is None else int(self.fc.nightly_budget_gb * 1e9)
        self.window = None if (ignore_window or self.fc.window is None) else parse_window(self.fc.window)
        self.tz = zone(self.fc.timezone)
        self.stop_reason: str | None = None
        self.budget_skipped = 0
        self.stop_event = asyncio.Event()
        self._last_status_write = 0.0

    # ------------------------------------------------------------ status

    def save_status(self, final: bool = False) -> None:
        raw = self.cs.index.get_flag(STATUS_FLAG)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        record = asdict(self.status)
        if final:
            doc["last"] = record
            doc["current"] = None
        else:
            doc["current"] = record
        self.cs.index.set_flag(STATUS_FLAG, json.dumps(doc))

    def maybe_save_status(self) -> None:
        now = self.monotonic()
        if now - self._last_status_write >= 2.0:
            self._last_status_write = now
            self.save_status()

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.progress.log(f"stopping: {reason}")
        self.stop_event.set()

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        st = self.status
        if self.window is not None and seconds_left(self.window, self.now(), self.tz) <= 0:
            self.progress.log(f"outside the fill window {self.fc.window}; nothing to do (use --ignore-window for a hand run)")
            st.ended_s = self.now()
            st.ended_because = "outside the window"
            self.save_status(final=True)
            return 0
        self.save_status()
        rcvbuf = rcvbuf_bytes(self.fc.rate_limit_mbps, self.fc.concurrency)
        bounded = {} if rcvbuf is None else {"socket_factory": _bounded_rcvbuf(rcvbuf)}  # aiohttp >= 3.11
        connector = aiohttp.TCPConnector(limit=self.fc.concurrency * 2, force_close=False, **bounded)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            try:
                manifest = await fetch_manifest(session, self.cfg)
            except (FillError, ManifestError) as exc:
                return self._finish(f"manifest refused: {exc}", 1)
            plan = make_plan(self.cfg, self.cs, manifest, self.now())
            st.manifest_files = len(manifest.files)
            st.files_total = len(plan.adds)
            st.bytes_planned = plan.add_bytes
            self.progress.log(
                f"plan: {len(plan.adds)} to add ({plan.add_bytes / 1e9:.2f} GB), {len(plan.delete_now)} to delete now, "
                f"{len(plan.delete_if_needed)} to delete if room is needed, {len(plan.keep)} kept"
            )
            if plan.delete_share > self.fc.max_delete_share and not self.force:
                return self._finish(
                    f"manifest refused: it would delete {plan.delete_share:.0%} of what this appliance holds "
                    f"(limit {self.fc.max_delete_share:.0%}); run with --force if that is intended", 1,
                )
            for cid in plan.delete_now:
                if self.cs.remove(cid) is not None:
                    st.files_deleted += 1
            self.cs.index.set_flag(UNCHOSEN_FLAG, json.dumps(dict(plan.unchosen_since)))
            self.site = site_of(manifest, self.cfg.appliance.id, self.cfg.appliance.site)
            self.inventories = await self._peer_inventories(session) if self.fc.peer_fill else {}
            self.if_needed = list(plan.delete_if_needed)
            self.sizes = {h.content_id: h.size for h in held_files(self.cs).values()}
            self.popularity = {f.content_id: f.popularity for f in manifest.files}
            queue: asyncio.Queue[ManifestFile] = asyncio.Queue()
            for f in plan.adds:
                queue.put_nowait(f)
            watcher = asyncio.create_task(self._watch_window())
            workers = [asyncio.create_task(self._worker(session, queue)) for _ in range(self.fc.concurrency)]
            stopper = asyncio.create_task(self.stop_event.wait())
            try:
                await asyncio.wait([asyncio.gather(*workers), stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in workers:
                    t.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                watcher.cancel()
                stopper.cancel()
        # Files left out because the rest of the budget could not hold them
        # end the run for the budget too; "done" with files silently skipped
        # told the operator the night's list was complete when it was not
        # (found by tests/integration/test_fill.py::test_nightly_budget_stops_the_run).
        reason = self.stop_reason or ("nightly budget reached" if self.budget_skipped else "done")
        return self._finish(reason, 1 if st.files_failed else 0)

    def _finish(self, reason: str, code: int) -> int:
        st = self.status
        st.ended_s = self.now()
        st.ended_because = reason
        st.current = []
        self.progress.draw(force=True)
        self.progress.log(
            f"run ended ({reason}): {st.files_added} added, {st.files_deleted} deleted, {st.files_failed} failed, "
            f"{st.files_skipped} skipped, {st.bytes_filled / 1e9:.3f} GB downloaded"
        )
        self.save_status(final=True)
        return code

    async def _watch_window(self) -> None:
        while True:
            if self.window is not None:
                left = seconds_left(self.window, self.now(), self.tz)
                if left <= 0:
                    self.request_stop("window ended")
                    return
            await asyncio.sleep(1.0)
            self.maybe_save_status()
            self.progress.draw()

    async def _peer_inventories(self, session: aiohttp.ClientSession) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}

        async def one(a: SiteAppliance) -> None:
            try:
                async with session.get(a.url + "/inventory", timeout=aiohttp.ClientTimeout(total=30, sock_connect=5)) as resp:
                    if resp.status == 200:
                        out[a.appliance_id] = set((await resp.json()).get("ids", []))
            except Exception as exc:  # a dead peer is only a missing source
                self.progress.log(f"peer {a.appliance_id} inventory unavailable: {type(exc).__name__}")

        peers = [a for a in self.site if a.appliance_id != self.cfg.appliance.id and a.url]
        await asyncio.gather(*(one(a) for a in peers))
        return out

    def _sources(self, f: ManifestFile) -> list[str]:
        urls = []
        key_id = self.fc.signing_key_id or self.cfg.signing.key_id
        secrets = self.cfg.signing.secrets()
        for peer in holders_with(f.content_id, self.site, self.inventories, self.cfg.appliance.id):
            if key_id and key_id in secrets:
                urls.append(peer.url + signed_path(f.content_id, int(self.now()) + PEER_URL_TTL_S, key_id, secrets[key_id]))
            else:
                urls.append(f"{peer.url}/content/{f.content_id}")
        return urls + list(f.sources)

    def _throttle(self, nbytes: int):
        wait = self.bucket.take(nbytes, self.monotonic())
        return asyncio.sleep(wait) if wait > 0 else None

    def _count_bytes(self, nbytes: int) -> None:
        self.status.bytes_filled += nbytes
        if self.budget is not None and self.status.bytes_filled >= self.budget:
            self.request_stop("nightly budget reached")

    async def _worker(self, session: aiohttp.ClientSession, queue: "asyncio.Queue[ManifestFile]") -> None:
        while not self.stop_event.is_set():
            try:
                f = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if self.budget is not None and self.status.bytes_filled + f.size > self.budget and self.status.bytes_filled > 0:
                self.status.files_skipped += 1
                self.budget_skipped += 1
                self.progress.log(f"skipped {f.content_id}: {f.size} bytes do not fit in what is left of the nightly budget")
                continue
            self.status.current.append(f.content_id)
            try:
                await self._fill_one(session, f)
            finally:
                self.status.current.remove(f.content_id)

    def _partial_for(self, f: ManifestFile) -> tuple[object, Partial] | None:
        """The disk and partial of an earlier attempt, if one exists."""
        for disk in self.cs.disks:
            if not disk.working:
                continue
            p = Partial.at(os.path.dirname(self.cs.partial_path(disk, "x")), f)
            if os.path.exists(p.data_path):
                return disk, p
        return None

    def _disk_for(self, f: ManifestFile):
        try:
            return self.cs.choose_disk(f.size)
        except StoreFullError:
            free = max((r.usable_bytes for r in self.cs.rooms() if r.working), default=0)
            victims = make_room(f.size, free, [c for c in self.if_needed], self.sizes)
            for cid in victims:
                if self.cs.remove(cid) is not None:
                    self.status.files_deleted += 1
                self.if_needed.remove(cid)
            return self.cs.choose_disk(f.size) if victims else None

    async def _fill_one(self, session: aiohttp.ClientSession, f: ManifestFile) -> None:
        st = self.status
        found = self._partial_for(f)
        if found is not None:
            disk, partial = found
        else:
            try:
                disk = self._disk_for(f)
            except StoreError as exc:
                disk = None
                st.fail(f"{f.content_id}: {exc}")
            if disk is None:
                st.files_skipped += 1
                st.fail(f"{f.content_id}: no store has room for {f.size} bytes")
                self.progress.log(f"skipped {f.content_id}: no room")
                return
            partial = Partial.at(os.path.dirname(self.cs.partial_path(disk, "x")), f)
        last_error = "no sources"
        for url in self._sources(f):
            delay = self.fc.backoff_s
            for attempt in range(1, self.fc.retries + 1):
                if self.stop_event.is_set():
                    return
                try:
                    checksum = await download(
                        session, url, f, partial, throttle=self._throttle, on_bytes=self._count_bytes,
                        read_timeout_s=self.fc.read_timeout_s,
                    )
                except ChecksumMismatch as exc:
                    st.checksum_mismatches += 1
                    last_error = str(exc)
                    self.progress.log(f"{f.content_id}: {exc} (attempt {attempt})")
                except SourceError as exc:
                    last_error = str(exc)
                    self.progress.log(f"{f.content_id}: {exc} (attempt {attempt})")
                    if not exc.retry:
                        break
                except DiskFullError as exc:
                    partial.discard()
                    st.files_failed += 1
                    st.fail(f"{f.content_id}: {exc}")
                    self.progress.log(f"{f.content_id}: {exc}; partial removed")
                    return
                except OSError as exc:
                    # The store side failed (EIO and kin): that disk may be gone.
                    # Fail this file, let the store decide whether the disk is
                    # dead, and let the run go on with the other files.
                    self.cs.report_io_error(disk, exc, "filling")
                    st.files_failed += 1
                    st.fail(f"{f.content_id}: store error while writing: {exc.strerror or exc}")
                    self.progress.log(f"{f.content_id}: store error while writing: {exc.strerror or exc}")
                    return
                else:
                    try:
                        self.cs.publish_prepared(disk, partial.data_path, f.content_id, checksum=checksum, mtime_s=f.mtime_s, popularity=f.popularity)
                    except StoreError as exc:
                        partial.discard()
                        st.files_failed += 1
                        st.fail(f"{f.content_id}: publish failed: {exc}")
                        return
                    partial.discard()  # the data file was renamed; this removes the sidecar
                    st.files_added += 1
                    self.progress.log(f"added {f.content_id} ({f.size} bytes) from {url.split('?')[0]}")
                    return
                if attempt < self.fc.retries:
                    try:
                        await asyncio.wait_for(self.stop_event.wait(), timeout=delay)
                        return
                    except asyncio.TimeoutError:
                        delay *= 2
        st.files_failed += 1
        st.fail(f"{f.content_id}: every source failed; last: {last_error}")
        self.progress.log(f"failed {f.content_id}: every source failed")


def rcvbuf_bytes(rate_limit_mbps: float | None, concurrency: int) -> int | None:
    """The receive buffer per connection under a rate cap (None: leave the kernel's autotuning)."""
    if rate_limit_mbps is None:
        return None
    return max(RCVBUF_MIN_BYTES, int(rate_limit_mbps * 1e6 / 8 * RCVBUF_CAP_S / concurrency))


def _bounded_rcvbuf(rcvbuf: int):
    def make(addr_info) -> socket.socket:
        family, type_, proto, _name, _address = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window scale
        return sock

    return make


async def run_fill(cfg: Config, *, ignore_window: bool = False, force: bool = False) -> int:
    cs = ContentStore.open(cfg, writable=True)
    try:
        run = FillRun(cfg, cs, ignore_window=ignore_window, force=force)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, run.request_stop, f"stopped by {signal.Signals(sig).name}")
        return await run.run()
    finally:
        cs.close()
