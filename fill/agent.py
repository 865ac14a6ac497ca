"""The fill run: fetch the manifest, plan, delete, download, publish, report.

Rules kept here:
- The agent writes only through the store's public face (publish_prepared,
  remove, partial_dir, the typed fill records); the index never disagrees
  with the disks.
- One run per appliance at a time (`fill.runlock`).
- The manifest is refused whole when it is malformed, unsigned where a
  signature is required, replayed or stale (`fill.manifest.check_fresh`
  against the newest one accepted, kept in the status record), or when it
  would delete more than `fill.max_delete_share` of what is held at once
  (unless forced).
- Every deletion of a run, whatever its path (the manifest no longer lists
  the file; room for an addition), is counted against one `DeleteBudget`
  of `fill.max_delete_share` of what was held, checked before each
  deletion. Room is made only once the source has answered as
  `resume_action` wants, with its first bytes (`download`'s `on_answer`),
  so a source that answers nothing useful never costs a held file.
- Where an addition goes is one decision (`fill.plan.place`): the store and
  the deletions it needs; `_fill_one` carries it out and returns one
  `Outcome`.
- Every file the plan chose ends as added, failed or skipped, with a log
  line naming it and the reason; the last line says
  `N added, N deleted, N failed, N skipped` and the counts add up to the
  files chosen. A failure that escapes a download (a bug, an odd answer)
  fails that file, never the run.
- Every HTTPS request verifies the certificate against `fill.ca_file` (or
  the system store); a failure is that source's failure, never retried
  unverified or over plain http.
- Sources, per file: the site's peers whose validated `/inventory` lists
  it (signed URLs through their normal `/content/<id>`), then the
  manifest's origin URLs. Each is retried with doubling backoff
  `fill.retries` times, then the next.
- The budget: a file starts only if it fits in what the sizes of the
  files started before it left; the run's first may end past it (a whole
  file rather than a partial one waiting a day), and the next day's budget
  is lowered by that overshoot (see the night's run below). Files that do
  not fit are "skipped".
- At the window's end or on SIGTERM/SIGINT, the run stops cleanly:
  downloads in progress keep their partial files for the next run, which
  resumes them; files not finished are "skipped" with the reason.
- A status record of the current and last run is kept through
  `ContentStore.set_fill_status`, where `/health` and `/metrics` read it.
- The night's run (NIGHT) marks the appliance's request counters, so what
  they count since is what the passes see. With `fill.passes` and a
  budget it spends only `fill.plan.night_budget` of it: files listed for
  the first time (against the ids the last manifest listed) without a
  forecast leave up to `fill.pass_reserve` of the budget to the passes.
  Its budget for the day (`fill.plan.day_budget`, kept in its record as
  `day_budget_bytes`) is the budget less what the last day's night and
  passes spent beyond it: a run's or a pass's first file may end past what
  is left, and the next day repays it.
- An intra-day pass (PASS) plans with `fill.plan.plan_pass` on the plays
  observed since the mark (`observed_plays`, `observed_share`), the site's
  inventories (what is missing from the whole site) and the night plan's
  additions not yet made, within what the night and earlier passes of this
  window left of the budget and what the rate cap can move before the
  window ends. It deletes only to make room, when a download needs it,
  within the same deletion budget rule. It is summarised under the night's
  record (`passes`), which stays the last run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from types import MappingProxyType

import aiohttp

from fill.config import FillConfig, client_ssl_context
from fill.errors import ChecksumMismatch, DiskFullError, FillError, InventoryError, ManifestError, SourceError
from fill.fetch import fetch_inventory, fetch_manifest, no_downgrade
from fill.download import Partial, download
from fill.manifest import Manifest, ManifestFile, SiteAppliance, check_fresh
from fill.progress import Progress
from fill.plan import (
    DeleteBudget, Held, PassPolicy, Placement, Plan, day_budget, holders_with, night_budget, observed_plays, observed_share, place,
    plan_fill, plan_pass, site_of,
)
from fill.ratelimit import TokenBucket
from fill.runlock import run_lock
from fill.localzone import zone
from fill.window import current_or_next, parse_window, seconds_left
from oca.config import Config
from oca.signing import signed_path
from oca.store.content import ContentStore
from oca.store.disks import StoreError
from oca.store.flags import FillStatus, Listed, Unchosen

PEER_URL_TTL_S = 6 * 3600
FAILURE_LINES_KEPT = 100  # per run in the status record; the log has every one
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




ADDED = "added"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one chosen file ended: ADDED, FAILED or SKIPPED, with the reason."""

    kind: str
    reason: str = ""


class Skip(FillError):
    """This file cannot be added this run (no room, the deletion budget); not the source's fault."""


NIGHT = "night"
PASS = "pass"
PASSES_KEPT = 48  # pass summaries kept under the night's record


@dataclass
class RunStatus:
    started_s: float
    kind: str = NIGHT  # NIGHT: the night's run (the full plan); PASS: an intra-day pass
    ended_s: float | None = None
    ended_because: str | None = None
    manifest_files: int = 0
    manifest_generated_s: int | None = None
    newest_manifest_s: int | None = None  # the newest generated_s ever accepted: the replay guard
    files_total: int = 0
    files_added: int = 0
    files_deleted: int = 0
    files_failed: int = 0
    files_skipped: int = 0
    bytes_filled: int = 0
    bytes_planned: int = 0
    checksum_mismatches: int = 0
    budget_bytes: int | None = None  # what this run may download (a pass: what the night and earlier passes left)
    day_budget_bytes: int | None = None  # the night's record, with passes: nightly_budget_gb less the last day's overshoot
    observed_share: float | None = None  # a pass: the share of a day its request counts cover
    requested_missing: int = 0  # a pass: files requested since the night that no appliance of the site holds
    passes: list[dict] = field(default_factory=list)  # the night's record: one summary per pass after it
    current: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.failures = (self.failures + [line])[-FAILURE_LINES_KEPT:]

    def pass_summary(self) -> dict:
        """What `oca-fill status` shows of a pass under the night's record."""
        return {
            "started_s": self.started_s, "ended_s": self.ended_s, "ended_because": self.ended_because,
            "planned": self.files_total, "planned_bytes": self.bytes_planned, "added": self.files_added,
            "failed": self.files_failed, "skipped": self.files_skipped, "deleted": self.files_deleted,
            "bytes": self.bytes_filled, "budget_bytes": self.budget_bytes, "observed_share": self.observed_share,
            "requested_missing": self.requested_missing,
        }


def _spent(night: Mapping[str, object]) -> int:
    """Bytes a night's record says its run and its passes downloaded."""
    spent = night.get("bytes_filled", 0)
    spent = spent if isinstance(spent, (int, float)) else 0
    passes = night.get("passes", [])
    if isinstance(passes, list):
        spent += sum(p.get("bytes", 0) for p in passes if isinstance(p, dict) and isinstance(p.get("bytes", 0), (int, float)))
    return int(spent)


def held_files(cs: ContentStore) -> dict[str, Held]:
    working = {d.uuid for d in cs.disks if d.working}
    return {e.content_id: Held(e.content_id, e.size, e.checksum, e.popularity) for e in cs.entries() if e.store_uuid in working}


def held_places(cs: ContentStore) -> dict[str, tuple[str, int]]:
    """content id → (store uuid, size) of what working stores hold."""
    working = {d.uuid for d in cs.disks if d.working}
    return {e.content_id: (e.store_uuid, e.size) for e in cs.entries() if e.store_uuid in working}


def capacity_bytes(cs: ContentStore, held: dict[str, Held], *, count_new_stores: bool = False) -> int:
    """What the held files and the free space above the reserves add up to.

    `count_new_stores`: count the free space of stores that are empty and
    not initialised yet, as a run (a writer) would initialise them.
    """
    usable = sum(
        max(0, cap.free_bytes - cap.reserve_bytes)
        for disk, cap in cs.capacities()
        if disk.working or (count_new_stores and would_initialise(disk))
    )
    return usable + sum(h.size for h in held.values())


def would_initialise(disk) -> bool:
    """A store a writer (`oca-fill run`, `oca-admin check`) would initialise: not in service, no marker, empty."""
    if disk.working or disk.uuid is not None:
        return False
    try:
        return disk.read_marker() is None and disk.is_empty()
    except (OSError, StoreError):
        return False


def newest_accepted(cs: ContentStore) -> int | None:
    st = cs.fill_status()
    values = [r.get("newest_manifest_s") for r in (st.last, st.current) if r is not None]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return max(ints) if ints else None


def make_plan(cfg: Config, fc: FillConfig, cs: ContentStore, manifest: Manifest, now_s: float, *, count_new_stores: bool = False) -> Plan:
    held = held_files(cs)
    return plan_fill(
        manifest, cfg.appliance.id, cfg.appliance.site, held, capacity_bytes(cs, held, count_new_stores=count_new_stores), now_s,
        fc.delete_grace_h * 3600, dict(cs.unchosen().since_s),
    )


def uncertain_forecasts(manifest: Manifest) -> frozenset[str]:
    """Files whose popularity is the mean of their class of release (`"forecast": "class"`): the passes judge them by requests."""
    return frozenset(f.content_id for f in manifest.files if f.forecast == "class")


def load_manifest_sync(cfg: Config, fc: FillConfig) -> Manifest:
    async def go() -> Manifest:
        connector = aiohttp.TCPConnector(ssl=client_ssl_context(fc.ca_file))
        async with aiohttp.ClientSession(connector=connector, trace_configs=[no_downgrade()]) as session:
            return await fetch_manifest(session, fc, cfg.signing.secrets())

    return asyncio.run(go())


class FillRun:
    def __init__(self, cfg: Config, fc: FillConfig, cs: ContentStore, *, ignore_window: bool = False, force: bool = False,
                 now=time.time, monotonic=time.monotonic, kind: str = NIGHT):
        self.kind = kind
        self.cfg = cfg
        self.fc = fc
        self.cs = cs
        self.ignore_window = ignore_window
        self.force = force
        self.now = now
        self.monotonic = monotonic
        self.status = RunStatus(started_s=now(), kind=kind, newest_manifest_s=newest_accepted(cs))
        self.progress = Progress(self.status)
        self.bucket = TokenBucket(None if fc.rate_limit_mbps is None else fc.rate_limit_mbps * 1e6, monotonic())
        self.budget = None if fc.nightly_budget_gb is None else int(fc.nightly_budget_gb * 1e9)
        self.window = None if (ignore_window or fc.window is None) else parse_window(fc.window)
        self.tz = zone(fc.timezone)
        self.stop_reason: str | None = None
        self.budget_skipped = 0
        self.started_bytes = 0  # sizes of the files this run started, counted against the budget before each starts
        self.stop_event = asyncio.Event()
        self._last_status_write = 0.0
        self.outcomes: dict[str, Outcome] = {}
        # store uuid -> content id -> (size, partial path) of the downloads in progress there
        self.claimed: dict[str, dict[str, tuple[int, str]]] = {}
        self.delete_budget = DeleteBudget(None, None)
        self.places: dict[str, tuple[str, int]] = {}  # held id -> (store uuid, size), read once per run
        self.site: tuple[SiteAppliance, ...] = ()
        self.inventories: dict[str, frozenset[str]] = {}
        self.if_needed: list[str] = []
        warning = fc.unsigned_http_warning
        if warning:
            self.status.warnings.append(warning)

    # ------------------------------------------------------------ status

    def save_status(self, final: bool = False) -> None:
        record = MappingProxyType(asdict(self.status))
        old = self.cs.fill_status()
        if final and self.kind == PASS:
            # A pass is shown under the record of the night's run it follows, which stays `last`.
            night = dict(old.last) if old.last is not None else {**asdict(RunStatus(self.status.started_s)), "ended_because": "no night run recorded"}
            kept = night.get("passes") if isinstance(night.get("passes"), list) else []
            night["passes"] = (kept + [self.status.pass_summary()])[-PASSES_KEPT:]
            self.cs.set_fill_status(FillStatus(last=MappingProxyType(night), current=None))
        elif final:
            self.cs.set_fill_status(FillStatus(last=record, current=None))
        else:
            self.cs.set_fill_status(FillStatus(last=old.last, current=record))

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

    def record(self, f: ManifestFile, outcome: Outcome) -> None:
        """The one place a chosen file's end is counted and logged."""
        st = self.status
        if f.content_id in self.outcomes:
            return
        self.outcomes[f.content_id] = outcome
        if outcome.kind == ADDED:
            st.files_added += 1
            self.progress.log(f"added {f.content_id} ({f.size} bytes) {outcome.reason}")
            return
        if outcome.kind == FAILED:
            st.files_failed += 1
        else:
            st.files_skipped += 1
        st.fail(f"{f.content_id}: {outcome.kind}: {outcome.reason}")
        self.progress.log(f"{outcome.kind} {f.content_id}: {outcome.reason}")

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        st = self.status
        for warning in st.warnings:
            self.progress.log(f"warning: {warning}")
        if self.window is not None and seconds_left(self.window, self.now(), self.tz) <= 0:
            self.progress.log(f"outside the fill window {self.fc.window}; nothing to do (use --ignore-window for a hand run)")
            st.ended_s = self.now()
            st.ended_because = "outside the window"
            self.save_status(final=True)
            return 0
        self.save_status()
        rcvbuf = rcvbuf_bytes(self.fc.rate_limit_mbps, self.fc.concurrency)
        bounded = {} if rcvbuf is None else {"socket_factory": _bounded_rcvbuf(rcvbuf)}  # aiohttp >= 3.11
        # One verifying context for every HTTPS request of the run (manifest,
        # peers, origins, and the redirects between them): fill.ca_file or the system store.
        connector = aiohttp.TCPConnector(limit=self.fc.concurrency * 2, force_close=False,
                                         ssl=client_ssl_context(self.fc.ca_file), **bounded)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False, trace_configs=[no_downgrade()]) as session:
            try:
                manifest = await fetch_manifest(session, self.fc, self.cfg.signing.secrets())
                check_fresh(manifest.generated_s, st.newest_manifest_s, self.now(), self.fc.max_manifest_age_h * 3600)
            except ManifestError as exc:
                return self._finish(f"manifest refused: {exc}", 1)
            st.manifest_generated_s = manifest.generated_s
            st.newest_manifest_s = max(manifest.generated_s or 0, st.newest_manifest_s or 0)
            if self.kind == PASS:
                adds = await self._plan_pass(session, manifest)
                return await self._carry_out(session, adds)
            self._mark_demand()
            plan = make_plan(self.cfg, self.fc, self.cs, manifest, self.now())
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
            self.places = held_places(self.cs)
            self.delete_budget = DeleteBudget.of_share(
                self.fc.max_delete_share, len(self.places), sum(size for _u, size in self.places.values()), unlimited=self.force,
            )
            for cid in plan.delete_now:
                self._delete(cid, "no longer listed or unchosen past the grace period")
            self.cs.set_unchosen(Unchosen(MappingProxyType(dict(plan.unchosen_since))))
            self._reserve_for_passes(manifest)
            self.site = site_of(manifest, self.cfg.appliance.id, self.cfg.appliance.site)
            self.inventories = await self._peer_inventories(session) if self.fc.peer_fill else {}
            self.if_needed = list(plan.delete_if_needed)
            return await self._carry_out(session, list(plan.adds))

    async def _carry_out(self, session: aiohttp.ClientSession, adds: list[ManifestFile]) -> int:
        """Download `adds` (most valuable first) with the run's workers; every one ends added, failed or skipped."""
        st = self.status
        queue: asyncio.Queue[ManifestFile] = asyncio.Queue()
        for f in adds:
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
        # end the run "for the budget" too: "done" means the night's list is complete.
        reason = self.stop_reason or ("nightly budget reached" if self.budget_skipped else "done")
        for f in adds:
            if f.content_id not in self.outcomes:
                kept = " (its partial download is kept for the next run)" if self._partial_for(f) is not None else ""
                self.record(f, Outcome(SKIPPED, f"run stopped ({reason}) before this file was finished{kept}"))
        return self._finish(reason, 1 if st.files_failed else 0)

    def _mark_demand(self) -> None:
        """The night's run starts a new period of the appliance's request counts: the passes read what follows."""
        try:
            self.cs.mark_demand(self.now())
        except StoreError as exc:
            self.status.warnings.append(f"request counters not marked: {exc}")
            self.progress.log(f"warning: request counters not marked, the passes will see older requests too: {exc}")

    def _reserve_for_passes(self, manifest: Manifest) -> None:
        """The day's budget repays the last day's overshoot (`day_budget`); with passes, the night spends only
        `night_budget` of it, and files listed for the first time decide how much."""
        listed = self.cs.listed().ids
        self.cs.set_listed(Listed(frozenset(f.content_id for f in manifest.files)))
        self.status.budget_bytes = self.budget
        if self.budget is None:
            return
        day = day_budget(self.budget, *self._last_day())
        if day < self.budget:
            self.progress.log(f"the last day spent {(self.budget - day) / 1e9:.3f} GB beyond the budget (its last file ended "
                              f"past it): today's budget is {day / 1e9:.3f} GB")
        self.budget = day
        self.status.day_budget_bytes = day
        self.status.budget_bytes = day
        if not self.fc.passes:
            return
        new_files = [f for f in manifest.files if f.content_id not in listed] if listed else []
        tonight = night_budget(day, new_files, self.fc.pass_reserve, uncertain_forecasts(manifest))
        if tonight < day:
            self.progress.log(f"the night spends {tonight / 1e9:.3f} GB of the {day / 1e9:.3f} GB budget; "
                              f"the rest waits for the passes at {', '.join(self.fc.passes)}")
        self.budget = tonight
        self.status.budget_bytes = tonight

    def _last_day(self) -> tuple[int, int]:
        """The last day's budget and what its night's run and passes downloaded, if that night began within the last
        36 h (else nothing to repay)."""
        assert self.budget is not None
        last = self.cs.fill_status().last
        if last is None or last.get("kind", NIGHT) != NIGHT:
            return self.budget, 0
        started = last.get("started_s")
        if not isinstance(started, (int, float)) or started < self.now() - 36 * 3600:
            return self.budget, 0
        budget = last.get("day_budget_bytes")
        budget = budget if isinstance(budget, int) and not isinstance(budget, bool) else self.budget
        return budget, _spent(last)

    def _this_windows_night(self) -> Mapping[str, object] | None:
        """The night's record if its run began in the current window (or the last 24 h without one), else None."""
        last = self.cs.fill_status().last
        if last is None or last.get("kind", NIGHT) != NIGHT:
            return None
        started = last.get("started_s")
        now = self.now()
        if self.window is not None:
            begin, _end = current_or_next(self.window, now, self.tz)
        else:
            begin = now - 86400
        if not isinstance(started, (int, float)) or started < begin:
            return None
        return last

    def _spent_this_window(self) -> int:
        """Bytes the night's run and the passes since it downloaded in the current window (or the last 24 h without one)."""
        night = self._this_windows_night()
        return 0 if night is None else _spent(night)

    def _pass_budget(self, capacity: int) -> int:
        """What a pass may download: what is left of the budget, and what the rate cap can move before the window ends."""
        left = capacity
        if self.budget is not None:
            night = self._this_windows_night()
            day = None if night is None else night.get("day_budget_bytes")
            day = day if isinstance(day, int) and not isinstance(day, bool) else self.budget
            left = min(left, day - self._spent_this_window())
        if self.fc.rate_limit_mbps is not None and self.window is not None:
            left = min(left, int(self.fc.rate_limit_mbps * 1e6 / 8 * seconds_left(self.window, self.now(), self.tz)))
        return max(0, left)

    async def _plan_pass(self, session: aiohttp.ClientSession, manifest: Manifest) -> list[ManifestFile]:
        """An intra-day pass's plan (`fill.plan.plan_pass`) from this appliance's request counts since the night."""
        st = self.status
        me, my_site = self.cfg.appliance.id, self.cfg.appliance.site
        self.site = site_of(manifest, me, my_site)
        # The site's inventories tell what is missing from the whole site, whether or not peers are fill sources.
        self.inventories = await self._peer_inventories(session) if len(self.site) > 1 else {}
        held = held_files(self.cs)
        site_held = set(held).union(*self.inventories.values())
        demand = self.cs.demand()
        now = self.now()
        observed = observed_plays(demand, held)
        share = observed_share(demand, now)
        night = make_plan(self.cfg, self.fc, self.cs, manifest, now)  # what the night chose and has not yet added
        capacity = capacity_bytes(self.cs, held)
        left = self._pass_budget(capacity)
        policy = PassPolicy(self.fc.pass_min_requests, self.fc.pass_margin)
        pp = plan_pass(manifest, me, my_site, held, site_held, observed, share, capacity, left, policy, night.adds,
                       uncertain_forecasts(manifest))
        listed = manifest.by_id()
        st.manifest_files = len(manifest.files)
        st.observed_share = round(share, 4)
        st.requested_missing = sum(1 for cid, n in observed.items() if cid in listed and cid not in site_held and n >= policy.min_requests)
        st.budget_bytes = left
        st.files_total = len(pp.adds)
        st.bytes_planned = pp.add_bytes
        self.budget = left
        self.places = held_places(self.cs)
        self.delete_budget = DeleteBudget.of_share(
            self.fc.max_delete_share, len(self.places), sum(size for _u, size in self.places.values()), unlimited=self.force,
        )
        self.if_needed = list(pp.deletes)  # deleted only when an addition needs their room
        self.progress.log(
            f"pass: {len(observed)} files requested since the night ({share:.0%} of a day), {st.requested_missing} of them missing "
            f"from the site; {len(pp.adds)} to add ({pp.add_bytes / 1e9:.3f} GB of {left / 1e9:.3f} GB left), "
            f"{len(pp.deletes)} to delete for room"
        )
        return list(pp.adds)

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

    def _delete(self, cid: str, why: str) -> bool:
        """Delete one held file if the run's deletion budget allows it (checked before each deletion)."""
        size = self.places.get(cid, ("", 0))[1]
        if not self.delete_budget.allows(1, size):
            self.progress.log(f"kept {cid}: deleting it ({why}) would pass the run's deletion budget ({self.delete_budget.describe()} left)")
            return False
        self.delete_budget = self.delete_budget.spend(1, size)
        self.places.pop(cid, None)
        if self.cs.remove(cid) is not None:
            self.status.files_deleted += 1
            self.progress.log(f"deleted {cid} ({why})")
        return True

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

    async def _peer_inventories(self, session: aiohttp.ClientSession) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}

        async def one(a: SiteAppliance) -> None:
            try:
                out[a.appliance_id] = await fetch_inventory(session, self.fc, a.url, a.appliance_id, self.cfg.server.control_token or "")
            except InventoryError as exc:  # a bad or dead peer is only a missing source
                self.progress.log(f"peer {a.appliance_id} is no source this run: inventory refused: {exc}")

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

    async def _worker(self, session: aiohttp.ClientSession, queue: "asyncio.Queue[ManifestFile]") -> None:
        while not self.stop_event.is_set():
            try:
                f = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            # A file starts only if it fits in what the files started so far left of the budget, except the
            # run's first, which may end past it (whole, never cut; the next day's budget repays it).
            if self.budget is not None and self.started_bytes + f.size > self.budget and (self.started_bytes > 0 or self.budget <= 0):
                self.budget_skipped += 1
                self.record(f, Outcome(SKIPPED, f"{f.size} bytes do not fit in what is left of the nightly budget"))
                continue
            self.started_bytes += f.size
            self.status.current.append(f.content_id)
            try:
                outcome = await self._fill_one(session, f)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one file's surprise must not end the run's other files
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
                self.progress.log(f"{f.content_id}: unexpected error:\n{tb}")
                outcome = Outcome(FAILED, f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                self.status.current.remove(f.content_id)
                for per_store in self.claimed.values():
                    per_store.pop(f.content_id, None)
            if outcome is not None:
                self.record(f, outcome)

    # ------------------------------------------------------------ one file

    def _partial_for(self, f: ManifestFile) -> tuple[object, Partial] | None:
        """The disk and partial of an earlier attempt, if one exists."""
        for disk in self.cs.disks:
            if not disk.working:
                continue
            p = Partial.at(self.cs.partial_dir(disk), f)
            if os.path.exists(p.data_path):
                return disk, p
        return None

    def _claimed(self) -> dict[str, int]:
        """Store uuid → bytes the downloads in progress there will still write (what is written is already not free)."""
        out = {}
        for uuid, per in self.claimed.items():
            total = 0
            for size, path in per.values():
                try:
                    total += max(0, size - os.path.getsize(path))
                except OSError:
                    total += size
            out[uuid] = total
        return out

    def _placement(self, f: ManifestFile, need: int, only: str | None) -> Placement:
        return place(need, self.cs.rooms(), self._claimed(), self.if_needed, self.places, self.delete_budget, only=only)

    def _make_room(self, f: ManifestFile, disk, need: int, partial_path: str) -> None:
        """Carry out the placement's deletions on `disk` (called once the source has answered)."""
        decision = self._placement(f, need, disk.uuid)
        if decision.store_uuid is None:
            raise Skip(f"no room: {decision.reason}")
        for cid in decision.evictions:
            if not self._delete(cid, f"room for {f.content_id}"):
                raise Skip(f"no room: the deletion budget is spent ({self.delete_budget.describe()} left)")
            self.if_needed.remove(cid)
        self.claimed.setdefault(disk.uuid, {})[f.content_id] = (f.size, partial_path)

    async def _fill_one(self, session: aiohttp.ClientSession, f: ManifestFile) -> Outcome | None:
        """Carry out one file's placement and download; None when the run stopped under it."""
        found = self._partial_for(f)
        if found is not None:
            disk, partial = found
            on_disk = os.path.getsize(partial.data_path) if os.path.exists(partial.data_path) else 0
            need = max(0, f.size - on_disk)
            decision = self._placement(f, need, disk.uuid)
        else:
            need = f.size
            decision = self._placement(f, need, None)
            disk = None if decision.store_uuid is None else self.cs.disk(decision.store_uuid)
            partial = None if disk is None else Partial.at(self.cs.partial_dir(disk), f)
        if decision.store_uuid is None or disk is None or partial is None:
            return Outcome(SKIPPED, f"no room for {f.size} bytes: {decision.reason}")
        if not decision.evictions:
            self.claimed.setdefault(disk.uuid, {})[f.content_id] = (f.size, partial.data_path)

        async def on_answer(offset: int) -> None:
            if f.content_id not in self.claimed.get(disk.uuid, {}):
                self._make_room(f, disk, max(0, f.size - offset), partial.data_path)

        last_error = "no sources"
        for url in self._sources(f):
            delay = self.fc.backoff_s
            for attempt in range(1, self.fc.retries + 1):
                if self.stop_event.is_set():
                    return None
                try:
                    checksum = await download(
                        session, url, f, partial, throttle=self._throttle, on_bytes=self._count_bytes,
                        read_timeout_s=self.fc.read_timeout_s, on_answer=on_answer,
                    )
                except Skip as exc:
                    if partial.checkpoint == 0:
                        partial.discard()  # nothing was written: leave no empty partial behind
                    return Outcome(SKIPPED, str(exc))
                except SourceError as exc:
                    if isinstance(exc, ChecksumMismatch):
                        self.status.checksum_mismatches += 1
                    last_error = str(exc)
                    self.progress.log(f"{f.content_id}: {exc} (attempt {attempt})")
                    if not exc.retry:
                        break
                except DiskFullError as exc:
                    partial.discard()
                    return Outcome(FAILED, f"{exc}; partial removed")
                except OSError as exc:
                    # The store side failed (EIO and kin): that disk may be gone.
                    # The store decides whether the disk is dead; the run goes on.
                    self.cs.report_io_error(disk, exc, "filling")
                    return Outcome(FAILED, f"store error while writing: {exc.strerror or exc}")
                else:
                    try:
                        self.cs.publish_prepared(disk, partial.data_path, f.content_id, checksum=checksum, mtime_s=f.mtime_s,
                                                 popularity=f.popularity)
                    except StoreError as exc:
                        partial.discard()
                        return Outcome(FAILED, f"publish failed: {exc}")
                    partial.discard()  # the data file was renamed; this removes the sidecar
                    return Outcome(ADDED, f"from {url.split('?')[0]}")
                if attempt < self.fc.retries:
                    try:
                        await asyncio.wait_for(self.stop_event.wait(), timeout=delay)
                        return None
                    except asyncio.TimeoutError:
                        delay *= 2
        if partial.checkpoint == 0 and os.path.exists(partial.data_path) and os.path.getsize(partial.data_path) == 0:
            partial.discard()  # no source sent a byte: leave no empty partial behind
        return Outcome(FAILED, f"every source failed; last: {last_error}")


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


async def run_fill(cfg: Config, fc: FillConfig, *, ignore_window: bool = False, force: bool = False,
                   on_signal=None, kind: str = NIGHT) -> int:
    """One run under the appliance's run lock (RunLocked when another holds it).

    SIGTERM and SIGINT stop the run cleanly; `on_signal()` is called too (the daemon stops after the run).
    """
    with run_lock(cfg.index.path):
        cs = ContentStore.open(cfg, writable=True)
        try:
            run = FillRun(cfg, fc, cs, ignore_window=ignore_window, force=force, kind=kind)
            loop = asyncio.get_running_loop()
            def stop(name: str) -> None:
                run.request_stop(f"stopped by {name}")
                if on_signal is not None:
                    on_signal()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop, signal.Signals(sig).name)
            try:
                return await run.run()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        finally:
            cs.close()
