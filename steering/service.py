"""The steering service's HTTP shell: /steer, /content/<id>, /play/*, /watch/*, /health, /metrics, /.

Rules kept here:
- Who the client is, and who may use which path, is decided by the pure
  `steering.access` (`client_address`, `is_public_path`,
  `control_refusal`); this shell only gathers the peer, headers and query.
  A control path refused is 403 with the reason.
- Each answer comes from the pure `steering.ranking.decide` over the current
  prefix table and poll states; URLs are absolute and signed with the shared
  `oca.signing` code, so the appliances accept them.
- A malformed content id or client address is 400 with a reason; no
  candidates is 503 with the result type in the JSON.
- Every decision is logged as one JSON line (sampled) and counted by result.
- The poller and the table keeper run under `oca.supervise.Supervisor`:
  one that raises is logged, counted (`steering_task_failures_total`) and
  restarted; while one is down, `/health` says `degraded` and names it.
- The prefix table is rebuilt, in a thread, when an event says the routes
  or coverage changed; changes that arrive during a build, or during the
  pause after a build of 1 s or more (as long as it took, at most 30 s), coalesce into
  one more build. A keeper that restarts rebuilds.
- With `[health] snapshot_file`, what the poller knows is written after a
  round (at most every `snapshot_interval_s`, in a thread, then renamed);
  at start it is read and the prefix table built before listening, so the
  first answers come from it. Answers say `"stale": true` and /health is
  `degraded` until the first full round after the start.
- `[server] workers` > 1: this process polls and writes the fleet store
  (`steering.fleetstore`, at `<snapshot_file>.store`), and starts that many
  worker processes (`--role worker`), restarted if one ends; each listens
  on the same addresses (SO_REUSEPORT) and decides from the store
  (`steering.fleetview`: mapped files and an LMDB read per decision,
  nothing rebuilt when the fleet changes) instead of polling. The
  appliances see one poller whatever the number of workers. The store is
  also what a restarted poller and its new workers answer from at once.
- The playback routes (DASH/HLS manifests, Content Steering answers, the
  /watch player pages) live in `steering.playback`; the origin's manifest
  they play from is kept by `steering.content.ContentKeeper`, a third
  supervised task, refreshed on SIGHUP too; a failed fetch shows on
  /health (`content.error`, status `degraded`).
- SIGHUP reloads the registry, coverage zones and keys without dropping
  poll state; a config that does not load is reported and the old one stays.
- `[tls]` serves the same app on HTTPS addresses with `oca.tls.make_context`
  (the appliance's rules). SIGHUP loads the pair again into the same
  context (new handshakes take it); a pair `oca.tls.judge_pair` refuses is
  logged, shown on /health, and the old one stays. `[tls] listen` itself is
  only read at start.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import os
import random
import signal
import ssl
import sys
import time
from collections import Counter, deque

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram, generate_latest

from oca import __version__
from oca.sdnotify import notify_systemd
from oca.errors import ConfigError
from oca.settings import parse_host_port
from oca.signing import sign_query
from oca.supervise import Supervisor
from oca.tls import Served, expiry_condition, judge_pair, make_context, read_pair, stat_key_file
from steering.access import client_address, control_refusal, is_public_path, networks
from steering.config import SteeringConfig, coverage_path, load_coverage, load_steering_config
from steering.content import ContentKeeper
from steering.fleetstore import H_LAST_ROUND_US, H_PREFIXES, H_RESTORED_US, H_ROUNDS, H_STATES_EPOCH, FleetStoreReader, StoreError
from steering.fleetview import FleetView
from steering.health import Thresholds
from steering.lpm import PrefixTable
from steering.messages import MessageError, parse_steer_query
from steering.playback import Playback
from steering.poller import Knowledge, PollLimits, Poller, client_context
from steering.ranking import NO_CANDIDATES, Appliance, Live, RegistryIndex, decide, holder_order, index_registry
from steering.status_page import render_status

POLLER_TASK = "poller"
# Contents whose holders are kept in order (most recently made); one entry is
# a list of the content's holders, about 8 bytes each.
HOLDERS_CACHE = 20_000
TABLE_TASK = "table-keeper"
TABLE_GAP_MAX_S = 30.0  # the longest wait after a build before the next
TABLE_GAP_MIN_S = 1.0  # builds quicker than this are followed by no wait
CONTENT_TASK = "manifest-keeper"


def _log(line: str) -> None:
    print(f"oca-steering: {line}", file=sys.stderr, flush=True)


def table_items(known: dict[str, Knowledge], coverage: dict[str, list[str]]) -> list:
    """(cidr, tag) pairs for the prefix table: admitted appliance routes, then coverage zones."""
    items = []
    for aid, k in known.items():
        tag = ("route", aid)  # one tuple per appliance, not per prefix: a fleet announces millions
        items.extend((p, tag) for p in k.routes)
    for site, nets in coverage.items():
        for p in nets:
            items.append((p, ("cz", site)))
    return items


def overall_status(serving: int, appliances: int, tasks_down: dict[str, str]) -> str:
    """`ok`, `degraded` (an appliance or a task is down) or `down` (nothing serves)."""
    if serving == 0:
        return "down"
    if serving < appliances or tasks_down:
        return "degraded"
    return "ok"


class Steering:
    def __init__(self, config_path: str, cfg: SteeringConfig):
        self.config_path = config_path
        self.cfg = cfg
        self.table = PrefixTable.build([])
        self.table_built_s: float | None = None
        self.table_error = ""
        self._table_wanted = asyncio.Event()
        self.recent: deque = deque(maxlen=50)
        self.results: Counter = Counter()
        self._rng = random.Random()
        self._log_fd = -1
        self.tls: Served | None = None  # set by serve() when [tls] is configured
        self.tls_error = ""  # why the last reload of the pair was refused
        self._live: dict[str, Live] = {}
        self._live_key: tuple | None = None
        self.view: FleetView | None = None  # a worker's view of the poller's fleet store
        self._states_due = False
        self.content = ContentKeeper(cfg.content, lambda: self.secrets, _log)
        self.key_file_warning: str | None = None  # who else can read the [tls] key, if anyone
        self._apply_config(cfg)
        self.playback = Playback(self)
        self.poller = Poller(self.registry, self.thresholds, cfg.health.interval_s, cfg.health.timeout_s, self.mark_dirty,
                             self.limits, self.allowed, log=_log, max_concurrent=cfg.health.max_concurrent_polls,
                             on_holdings_changed=self.holders_changed)
        self.registry_metrics = CollectorRegistry()
        r = self.registry_metrics
        self.m_decisions = PCounter("steering_decisions", "Decisions by result type", ["result"], registry=r)
        self.m_latency = Histogram("steering_decision_seconds", "Time to decide", registry=r,
                                   buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1))
        self.m_up = Gauge("steering_appliance_up", "1 when the appliance serves new clients", ["appliance", "site"], registry=r)
        self.m_state = Gauge("steering_appliance_available", "1 when up (draining included)", ["appliance", "site"], registry=r)
        self.m_polls = Gauge("steering_appliance_poll_failures", "Failed polls since start", ["appliance"], registry=r)
        self.m_dropped = Gauge("steering_routes_dropped", "Routes in the last answer outside the appliance's allowed_prefixes",
                               ["appliance"], registry=r)
        self.m_blip = Gauge("steering_blip_guard", "1 while every appliance fails at once and the last good state is kept", registry=r)
        self.m_prefixes = Gauge("steering_prefixes", "Prefixes in the matching table", registry=r)
        self.m_build = Gauge("steering_table_build_seconds", "Time the last table build took", registry=r)
        self.m_task_failures = PCounter("steering_task_failures", "Failures of supervised tasks (each was restarted)", ["task"], registry=r)
        self.m_tls_expiry = Gauge("steering_tls_certificate_expiry_timestamp_seconds",
                                  "When the served TLS certificate expires (Unix time); absent without [tls]", registry=r)
        self.m_tls_reload_failed = Gauge("steering_tls_reload_refused",
                                         "1 when the last reload's key pair was refused (the old one is served)", registry=r)
        self.m_task_down = Gauge("steering_task_down", "1 while a supervised task waits to be restarted", ["task"], registry=r)
        for name in (POLLER_TASK, TABLE_TASK, CONTENT_TASK):
            self.m_task_failures.labels(name)
        self.supervisor = Supervisor(_log, on_failure=lambda name: self.m_task_failures.labels(name).inc())
        self.poller.snapshot_path = cfg.health.snapshot_file
        self.poller.snapshot_interval_s = cfg.health.snapshot_interval_s

    # ------------------------------------------------------------ configuration

    def _apply_config(self, cfg: SteeringConfig) -> None:
        # Everything that can fail (the coverage file, the decision log) is
        # done before anything is assigned, so a refused reload leaves the
        # running config whole.
        path = coverage_path(cfg, self.config_path)
        coverage = load_coverage(path) if path else {}
        try:
            poll_tls = client_context(cfg.health.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"health.ca_file: {cfg.health.ca_file}: {exc}") from None
        log_fd = self._open_log(cfg.server.decision_log)
        if self._log_fd > 2 and self._log_fd != log_fd:
            os.close(self._log_fd)
        self._log_fd = log_fd
        self.cfg = cfg
        self.registry = [Appliance(a.id, a.url.rstrip("/"), a.site, a.tier, a.weight) for a in cfg.appliances]
        self._holders: dict[str, list[Appliance]] = {}
        self.index: RegistryIndex = index_registry(self.registry, self.holders_of)
        self.allowed = {a.id: a.allowed_prefixes for a in cfg.appliances}
        self.limits = PollLimits(int(cfg.health.max_response_mb * 1_000_000), cfg.health.max_prefixes_per_appliance,
                                 cfg.health.appliance_token, poll_tls)
        self.thresholds = Thresholds(cfg.health.fail_after, cfg.health.recover_after, cfg.health.overload_percent)
        self.coverage = coverage
        if getattr(self, "view", None) is not None:
            self.view = FleetView(self.view.reader, self.registry)  # the poller's knowledge follows in reload()
        self.secrets = cfg.signing.secrets()
        self.proxies = networks(cfg.trust.proxies)
        self.callers = networks(cfg.trust.callers)
        self.control_allow = networks(cfg.server.control_allow)
        self.mark_dirty()

    @staticmethod
    def _open_log(target: str) -> int:
        return 1 if target == "-" else os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if target else -1

    def reload(self) -> None:
        try:
            cfg = load_steering_config(self.config_path)
            self._apply_config(cfg)
        except Exception as exc:
            _log(f"reload refused, keeping the running config: {exc}")
            self.reload_pair()  # renewal (e.g. a certbot deploy hook) does not wait for the config to be fixed
            return
        self.poller.reconfigure(self.registry, self.thresholds, cfg.health.interval_s, cfg.health.timeout_s, self.limits, self.allowed,
                                cfg.health.max_concurrent_polls)
        self.poller.snapshot_path = cfg.health.snapshot_file
        self.poller.snapshot_interval_s = cfg.health.snapshot_interval_s
        if self.view is not None:
            self.use_view(self.view)  # the new registry's appliances answer from the store too
        self.content.reconfigure(cfg.content)  # fetches the manifest again at once
        _log(f"reloaded {self.config_path}: {len(self.registry)} appliances")
        self.reload_pair()

    def reload_pair(self) -> None:
        """Load the [tls] pair again into the serving context; a bad pair keeps the old one."""
        tls = self.cfg.tls
        if self.tls is None or tls is None:
            return
        facts = read_pair(tls.cert_file, tls.key_file)
        problem = judge_pair(facts, time.time())
        if problem is None:
            try:
                self.tls.context.load_cert_chain(tls.cert_file, tls.key_file)
            except (OSError, ssl.SSLError) as exc:
                problem = f"{tls.cert_file}: {exc}"
        if problem is not None:
            self.tls_error = f"TLS pair not reloaded, the old one stays: {problem}"
            _log(self.tls_error)
            return
        self.tls = Served(self.tls.context, facts.not_after_s)
        self.tls_error = ""
        self.key_file_warning = stat_key_file(tls.key_file)
        _log(f"reloaded the TLS pair {tls.cert_file}")

    @staticmethod
    def log(line: str) -> None:
        _log(line)

    def mark_dirty(self) -> None:
        """The routes or the coverage changed: the table keeper rebuilds."""
        self._table_wanted.set()

    async def table_keeper(self) -> None:
        loop = asyncio.get_running_loop()
        self._table_wanted.set()  # a (re)started keeper builds once: a change may have come while it was down
        while True:
            await self._table_wanted.wait()
            self._table_wanted.clear()
            items = table_items(self.poller.known, self.coverage)
            started = time.monotonic()
            try:
                table = await loop.run_in_executor(None, PrefixTable.build, items)
            except ValueError as exc:
                # Inputs are validated before they get here; this keeps the last
                # good table and says why on /health.
                self.table_error = f"prefix table not rebuilt: {exc}"[:300]
                _log(self.table_error)
                continue
            self.table = table
            self.table_error = ""
            self.table_built_s = time.time()
            took = time.monotonic() - started
            self.m_build.set(took)
            self.m_prefixes.set(len(table))
            # Changes that come meanwhile wait: builds take at most about half of
            # the process's time (a fleet's routes arriving one appliance at a
            # time would otherwise rebuild back to back and starve the polls).
            if took >= TABLE_GAP_MIN_S:
                await asyncio.sleep(min(TABLE_GAP_MAX_S, took))

    def decide(self, client: str, content_id: str) -> dict:
        started = time.perf_counter()
        addr = ipaddress.ip_address(client)
        if self.view is not None:
            # A worker: routes, states and holdings from the fleet store; `self.table` holds the coverage zones.
            d = self.view.decide(content_id, addr.version, int(addr), self.table, self.cfg.max_urls, self.cfg.fallback_sites)
        else:
            matches = self.table.matches_int(addr.version, int(addr))
            live = self.live_view()
            d = decide(content_id, matches, self.registry, live, max_urls=self.cfg.max_urls, fallback_sites=self.cfg.fallback_sites,
                       index=self.index)
        now = int(time.time())
        key_id = self.cfg.signing.key_id
        query = ""
        if key_id is not None:
            query = "?" + sign_query(content_id, now + int(self.cfg.signing.ttl_s), key_id, self.secrets[key_id])
        urls = [
            {"url": f"{p.appliance.url}/content/{content_id}{query}", "appliance": p.appliance.appliance_id, "site": p.appliance.site,
             "tier": p.appliance.tier, "match": p.kind, "prefix": p.prefix}
            for p in d.picks
        ]
        doc = {"client": client, "prefix": d.prefix, "result": d.result, "urls": urls, "content": content_id}
        if self.poller.stale:
            doc["stale"] = True  # from the snapshot read at start; no full round yet
        self.results[d.result] += 1
        self.m_decisions.labels(d.result).inc()
        self.m_latency.observe(time.perf_counter() - started)
        self.recent.append((time.time(), client, content_id, d.result, [u["appliance"] for u in urls]))
        if self._log_fd >= 0 and (self.cfg.server.decision_log_sample >= 1 or self._rng.random() < self.cfg.server.decision_log_sample):
            line = json.dumps({"t": round(time.time(), 3), "client": client, "content": content_id, "result": d.result,
                               "prefix": d.prefix, "appliances": [u["appliance"] for u in urls]}, separators=(",", ":")) + "\n"
            try:
                os.write(self._log_fd, line.encode())
            except OSError:
                pass
        return doc

    async def follow_store(self, root: str, every_s: float = 0.25) -> None:
        """In a worker: open the poller's fleet store (again when the poller makes a new one) and take its states each round."""
        seen = None
        while True:
            view = self.view
            if view is None or not view.reader.current():
                try:
                    reader = FleetStoreReader(root)
                except (OSError, StoreError, ValueError) as exc:
                    self.poller.snapshot_error = f"fleet store {root} not opened: {exc}"[:300]
                else:
                    self.use_view(FleetView(reader, self.registry))
                    view = self.view
                    seen = None
            if view is not None:
                head = view.reader.head
                key = (int(head[H_STATES_EPOCH]), len(self.registry))
                if key != seen:
                    seen = key
                    p = self.poller
                    self._states_due = True  # made when /health, /metrics or / asks: 20,000 of them take tens of ms
                    p.rounds = int(head[H_ROUNDS])
                    p.last_round_s = int(head[H_LAST_ROUND_US]) / 1e6 or None
                    restored = int(head[H_RESTORED_US])
                    p.restored_from_s = restored / 1e6 if restored else None
            await asyncio.sleep(every_s)

    def use_view(self, view: FleetView) -> None:
        """Decide from `view`; the playback routes and the status page ask the poller's knowledge, so it answers from the store too."""
        self.view = view
        self.poller.snapshot_error = ""
        self._states_due = True
        for aid, k in self.poller.known.items():
            held = view.holdings(aid)
            k.inventory = held if held is not None else frozenset()

    def matches_int(self, version: int, addr: int) -> list:
        """Every prefix containing the address (in a worker, routes from the store and coverage zones from the table)."""
        if self.view is not None:
            return self.view.matches(version, addr, self.table)
        return list(self.table.matches_int(version, addr))

    def fresh_states(self) -> None:
        """In a worker: the poller's states as the store has them, made again after a round."""
        if self.view is not None and self._states_due:
            self._states_due = False
            self.poller.states = self.view.states()

    def prefix_count(self) -> int:
        """Prefixes decisions match against: the table's, and in a worker the store's routes too."""
        return len(self.table) + (int(self.view.reader.head[H_PREFIXES]) if self.view is not None else 0)

    def holders_changed(self, ids: frozenset | None) -> None:
        """The poller's word that these contents' holders changed (None: any content's)."""
        if ids is None:
            self._holders.clear()
        else:
            for cid in ids:
                self._holders.pop(cid, None)

    def holders_of(self, content_id: str) -> list[Appliance]:
        """Every appliance holding `content_id`, in `ranking.holder_order`; kept until a poll changes them."""
        h = self._holders.get(content_id)
        if h is None:
            known = self.poller.known
            empty = frozenset()
            h = holder_order(content_id, [a for a in self.registry if content_id in known.get(a.appliance_id, empty)])
            if len(self._holders) >= HOLDERS_CACHE:
                del self._holders[next(iter(self._holders))]  # the oldest made
            self._holders[content_id] = h
        return h

    def live_view(self) -> dict[str, Live]:
        """What the ranking needs per appliance; made again only when the states, the registry or the knowledge change.

        `Live.holds` is the appliance's `Knowledge`, which answers from its
        current holdings, so an inventory delta counts from the poll that
        brought it, without remaking this view.
        """
        p = self.poller
        key = (p.states, self.registry, p.known)
        cached = self._live_key
        if cached is None or any(a is not b for a, b in zip(key, cached)):
            live = {}
            for a in self.registry:
                st = p.states.get(a.appliance_id)
                k = p.known.get(a.appliance_id)
                if st is not None and k is not None:
                    live[a.appliance_id] = Live(st.serves_new_clients, st.overloaded, k)
            self._live = live
            self._live_key = key
        return self._live

    # ------------------------------------------------------------ handlers

    def _bad(self, status: int, reason: str, **extra) -> web.Response:
        return web.json_response({"error": reason, **extra}, status=status, headers={"Cache-Control": "no-store"})

    async def steer(self, request: web.Request) -> web.Response:
        return self._answer(request, None, redirect=False)

    async def redirect(self, request: web.Request) -> web.Response:
        return self._answer(request, request.match_info["content_id"], redirect=True)

    def _answer(self, request: web.Request, content_in_path: str | None, redirect: bool) -> web.Response:
        try:
            q = parse_steer_query(request.query.items(), content_in_path)
            client, source = client_address(request.remote or "", q.client, request.headers.getall("X-Forwarded-For", ()),
                                             self.proxies, self.callers)
        except MessageError as exc:
            return self._bad(400, str(exc))
        doc = self.decide(client, q.content)
        doc["client_from"] = source
        if doc["result"] == NO_CANDIDATES:
            return web.json_response(doc, status=503, headers={"Cache-Control": "no-store"})
        if redirect:
            return web.Response(status=302, headers={"Location": doc["urls"][0]["url"], "Cache-Control": "no-store"}, text="")
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    def health_doc(self) -> dict:
        self.fresh_states()
        states = self.poller.states
        serving = sum(1 for s in states.values() if s.serves_new_clients)
        tasks_down = self.supervisor.down()
        by_appliance = {}
        for a in self.registry:
            st = self.poller.states.get(a.appliance_id)
            k = self.poller.known.get(a.appliance_id)
            if st is None or k is None:
                continue
            by_appliance[a.appliance_id] = {
                "state": st.state, "reason": st.reason, "last_poll": st.last_poll_s, "polls": k.polls,
                "failed_polls": k.failures, "last_failure": k.last_failure, "routes": len(k.routes),
                "routes_dropped": len(k.routes_dropped), "dropped_examples": list(k.routes_dropped[:5]),
            }
        status = overall_status(serving, len(states), tasks_down)
        if status == "ok" and self.poller.stale:
            status = "degraded"  # answering from the snapshot until the first round
        if self.tls is not None and self.cfg.tls is not None:
            expiry = expiry_condition(self.tls.not_after_s, time.time(), self.cfg.tls.expiry_warn_days)
            if status == "ok" and (expiry or self.tls_error):
                status = "degraded"  # still serving, but an operator must renew or fix the pair
        if status == "ok" and self.content.error:
            status = "degraded"  # titles are those of the last good manifest, or none
        return {
            "status": status, "version": __version__, "pid": os.getpid(),
            "appliances": len(states), "serving": serving, "tasks_down": tasks_down,
            "blip_guard": {"active": self.poller.blip, "reason": self.poller.blip_reason, "since": self.poller.blip_since},
            "rounds": self.poller.rounds, "last_round": self.poller.last_round_s,
            "snapshot": {"restored_from": self.poller.restored_from_s, "stale": self.poller.stale,
                         "written": self.poller.snapshot_written_s, "error": self.poller.snapshot_error},
            "prefixes": self.prefix_count(), "table_built": self.table_built_s, "table_error": self.table_error,
            "decisions": dict(self.results), "by_appliance": by_appliance,
            **({"tls": self.tls_doc()} if self.tls is not None else {}),
            **({"content": self.content.doc()} if self.cfg.content.manifest_url else {}),
        }

    def tls_doc(self) -> dict:
        assert self.tls is not None
        left_s = self.tls.not_after_s - time.time()
        expiry = expiry_condition(self.tls.not_after_s, time.time(), self.cfg.tls.expiry_warn_days) if self.cfg.tls else None
        return {"not_after": self.tls.not_after_s, "days_left": round(left_s / 86400, 2), "expiry": expiry or "",
                "reload_error": self.tls_error, "key_file_warning": self.key_file_warning}

    async def health(self, request: web.Request) -> web.Response:
        doc = self.health_doc()
        return web.json_response(doc, status=200 if doc["status"] != "down" else 503, headers={"Cache-Control": "no-store"})

    async def metrics(self, request: web.Request) -> web.Response:
        self.fresh_states()
        for a in self.registry:
            st = self.poller.states.get(a.appliance_id)
            k = self.poller.known.get(a.appliance_id)
            self.m_up.labels(a.appliance_id, a.site).set(1 if st and st.serves_new_clients else 0)
            self.m_state.labels(a.appliance_id, a.site).set(1 if st and st.up else 0)
            self.m_polls.labels(a.appliance_id).set(k.failures if k else 0)
            self.m_dropped.labels(a.appliance_id).set(len(k.routes_dropped) if k else 0)
        down = self.supervisor.down()
        for name in (POLLER_TASK, TABLE_TASK, CONTENT_TASK):
            self.m_task_down.labels(name).set(1 if name in down else 0)
        self.m_blip.set(1 if self.poller.blip else 0)
        if self.tls is not None:
            self.m_tls_expiry.set(self.tls.not_after_s)
            self.m_tls_reload_failed.set(1 if self.tls_error else 0)
        return web.Response(body=generate_latest(self.registry_metrics), content_type="text/plain", charset="utf-8")

    async def status_page(self, request: web.Request) -> web.Response:
        self.fresh_states()
        return web.Response(text=render_status(self.registry, self.poller, len(self.table), self.recent, self.results, time.time()), content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})

    @web.middleware
    async def access(self, request: web.Request, handler) -> web.StreamResponse:
        """Public paths for everyone; the rest only for control peers (steering.access)."""
        if not is_public_path(request.path):
            refusal = control_refusal(request.remote or "", request.headers.get("Authorization"), self.control_allow,
                                      self.cfg.server.control_token)
            if refusal is not None:
                return self._bad(403, refusal)
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.access])
        app.router.add_get("/steer", self.steer)
        app.router.add_get("/content/{content_id}", self.redirect)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.status_page)
        self.playback.add_routes(app)
        return app


WORKERS_TASK = "workers"
FOLLOWER_TASK = "snapshot-follower"


async def _keep_workers(config_path: str, count: int, procs: list) -> None:
    """The poller process's workers: started, and started again when one ends."""
    import subprocess

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "steering.cli", "--config", config_path, "--role", "worker"])

    while len(procs) < count:
        procs.append(spawn())
    while True:
        await asyncio.sleep(1.0)
        for i, p in enumerate(procs):
            if p.poll() is not None:
                _log(f"worker {p.pid} ended ({p.returncode}); starting another")
                procs[i] = spawn()


async def serve(config_path: str, role: str = "all") -> int:
    """Run steering. `role`: "all" (one process, or with `[server] workers` > 1 the poller that starts the
    workers), or "worker" (answers clients from the snapshot file, never polls)."""
    cfg = load_steering_config(config_path)
    s = Steering(config_path, cfg)
    workers = cfg.server.workers if role == "all" else 0
    listens = workers <= 1  # with workers, the poller process does not answer clients
    store_root = f"{cfg.health.snapshot_file}.store" if cfg.health.snapshot_file else None
    if workers > 1 and store_root:
        # The workers decide from the store; reopened, it is what they answer from at once.
        _log(s.poller.attach_store(store_root))
    elif role == "worker" and store_root:
        try:  # before listening, so the first answers come from the store; else the follower opens it when it can
            s.use_view(FleetView(FleetStoreReader(store_root), s.registry))
        except (OSError, StoreError, ValueError) as exc:
            _log(f"worker: fleet store {store_root} not opened yet: {exc}")
    elif cfg.health.snapshot_file and role == "all":
        # Before listening: the first answers already come from the snapshot's routes and holdings.
        _log(s.poller.restore(cfg.health.snapshot_file))
        if s.poller.restored_from_s is not None and listens:
            s.table = PrefixTable.build(table_items(s.poller.known, s.coverage))
            s.table_built_s = time.time()
    runner = web.AppRunner(s.app(), access_log=None, handle_signals=False)
    await runner.setup()
    reuse_port = role == "worker"
    if listens:
        for item in cfg.server.listen:
            host, port = parse_host_port(item)
            await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True, reuse_port=reuse_port or None).start()
        if cfg.tls is not None:
            s.tls = make_context(cfg.tls, time.time())  # TlsError names the file and the reason
            s.key_file_warning = stat_key_file(cfg.tls.key_file)
            if s.key_file_warning is not None:
                _log(f"warning: the TLS private key is exposed: {s.key_file_warning}")
            for item in cfg.tls.listen:
                host, port = parse_host_port(item)
                await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True, reuse_port=reuse_port or None,
                                  ssl_context=s.tls.context).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    procs: list = []

    def hangup() -> None:
        s.reload()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    if role == "worker":
        assert cfg.health.snapshot_file
        s.supervisor.start(FOLLOWER_TASK, lambda: s.follow_store(f"{cfg.health.snapshot_file}.store"))
        parent = os.getppid()

        async def orphaned() -> None:
            # A worker whose poller is gone (even by kill -9) ends: the next poller starts its own.
            while os.getppid() == parent:
                await asyncio.sleep(0.5)
            _log("worker: the poller process is gone; stopping")
            stop.set()

        orphan_watch = asyncio.ensure_future(orphaned())
    else:
        s.supervisor.start(POLLER_TASK, s.poller.run)
    if listens:
        # With workers, the poller answers no client: only the workers need a prefix table (1M prefixes: seconds of CPU a build).
        s.supervisor.start(TABLE_TASK, s.table_keeper)
    if listens:
        s.supervisor.start(CONTENT_TASK, s.content.run)  # the playback routes' manifest: wherever clients are answered
    if workers > 1:
        s.supervisor.start(WORKERS_TASK, lambda: _keep_workers(config_path, workers, procs))
    https = f", https on {', '.join(cfg.tls.listen)}" if cfg.tls is not None else ""
    plain = ', '.join(cfg.server.listen) or 'no plain address'
    what = (f"serving on {plain}{https}, polling {len(s.registry)} appliances" if workers <= 1 and role == "all"
            else f"worker serving on {plain}{https} from {cfg.health.snapshot_file}" if role == "worker"
            else f"polling {len(s.registry)} appliances for {workers} workers on {plain}{https}")
    # What start-up made (a fleet's registry, config and coverage: hundreds of thousands of objects) lives as long as the
    # process: kept out of the collector's full passes, which otherwise walk it and stall answers for tens of ms.
    gc.freeze()
    print(f"oca-steering {__version__}: {what}", file=sys.stderr, flush=True)
    notify_systemd("READY=1")
    await stop.wait()
    if role == "worker":
        orphan_watch.cancel()
    await s.supervisor.stop()
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except Exception:  # noqa: BLE001 - a worker that will not stop is killed
            p.kill()
            p.wait()
    await runner.cleanup()
    return 0
