"""The steering service's HTTP shell: /steer, /content/<id>, /health, /metrics, /.

Rules kept here:
- The client's address is the connection's peer. `X-Forwarded-For` is
  believed only from `[trust] proxies` (the rightmost address that is not a
  trusted proxy is the client); `?client=` only from `[trust] callers`.
- Each answer comes from the pure `steering.ranking.decide` over the current
  prefix table and poll states; URLs are absolute and signed with the shared
  `oca.signing` code, so the appliances accept them.
- A malformed content id is 400 with a reason; no candidates is 503 with
  the result type in the JSON.
- Every decision is logged as one JSON line (sampled) and counted by result.
- SIGHUP reloads the registry, coverage zones and keys without dropping
  poll state; a config that does not load is reported and the old one stays.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import os
import random
import signal
import sys
import time
from collections import Counter, deque

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram, generate_latest

from oca import __version__
from oca.ids import is_valid_id
from oca.sdnotify import notify_systemd
from oca.settings import parse_host_port
from oca.signing import sign_query
from steering.config import SteeringConfig, coverage_path, load_coverage, load_steering_config
from steering.health import Thresholds
from steering.lpm import PrefixTable
from steering.poller import Poller
from steering.ranking import NO_CANDIDATES, Appliance, Live, decide


def _nets(cidrs) -> list:
    return [ipaddress.ip_network(c) for c in cidrs]


def _in(addr, nets) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


class Steering:
    def __init__(self, config_path: str, cfg: SteeringConfig):
        self.config_path = config_path
        self.cfg = cfg
        self.table = PrefixTable.build([])
        self.table_built_s: float | None = None
        self.table_dirty = True
        self.recent: deque = deque(maxlen=50)
        self.results: Counter = Counter()
        self._rng = random.Random()
        self._log_fd = -1
        self._apply_config(cfg)
        self.poller = Poller(self.registry, self.thresholds, cfg.health.interval_s, cfg.health.timeout_s, self.mark_dirty)
        self.registry_metrics = CollectorRegistry()
        r = self.registry_metrics
        self.m_decisions = PCounter("steering_decisions", "Decisions by result type", ["result"], registry=r)
        self.m_latency = Histogram("steering_decision_seconds", "Time to decide", registry=r,
                                   buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1))
        self.m_up = Gauge("steering_appliance_up", "1 when the appliance serves new clients", ["appliance", "site"], registry=r)
        self.m_state = Gauge("steering_appliance_available", "1 when up (draining included)", ["appliance", "site"], registry=r)
        self.m_polls = Gauge("steering_appliance_poll_failures", "Failed polls since start", ["appliance"], registry=r)
        self.m_blip = Gauge("steering_blip_guard", "1 while every appliance fails at once and the last good state is kept", registry=r)
        self.m_prefixes = Gauge("steering_prefixes", "Prefixes in the matching table", registry=r)
        self.m_build = Gauge("steering_table_build_seconds", "Time the last table build took", registry=r)

    # ------------------------------------------------------------ configuration

    def _apply_config(self, cfg: SteeringConfig) -> None:
        # Fix (tests/integration/test_steering.py): the coverage file is read before
        # anything is assigned. It used to be read after `cfg` and the registry were
        # already swapped in, so a reload with a bad coverage file was "refused" but
        # left the new registry (unpolled appliances) running beside the old zones.
        # The decision log is opened first for the same reason (a refused reload used
        # to have closed the old descriptor already and kept writing to its number).
        path = coverage_path(cfg, self.config_path)
        coverage = load_coverage(path) if path else {}
        log_fd = self._open_log(cfg.server.decision_log)
        if self._log_fd > 2 and self._log_fd != log_fd:
            os.close(self._log_fd)
        self._log_fd = log_fd
        self.cfg = cfg
        self.registry = [Appliance(a.id, a.url.rstrip("/"), a.site, a.tier, a.weight) for a in cfg.appliances]
        self.thresholds = Thresholds(cfg.health.fail_after, cfg.health.recover_after, cfg.health.overload_percent)
        self.coverage = coverage
        self.secrets = cfg.signing.secrets()
        self.proxies = _nets(cfg.trust.proxies)
        self.callers = _nets(cfg.trust.callers)
        self.table_dirty = True

    @staticmethod
    def _open_log(target: str) -> int:
        return 1 if target == "-" else os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if target else -1

    def reload(self) -> None:
        try:
            cfg = load_steering_config(self.config_path)
            self._apply_config(cfg)
        except Exception as exc:
            print(f"oca-steering: reload refused, keeping the running config: {exc}", file=sys.stderr, flush=True)
            return
        self.poller.reconfigure(self.registry, self.thresholds, cfg.health.interval_s, cfg.health.timeout_s)
        print(f"oca-steering: reloaded {self.config_path}: {len(self.registry)} appliances", file=sys.stderr, flush=True)

    def mark_dirty(self) -> None:
        self.table_dirty = True

    def _items(self) -> list:
        items = []
        for aid, k in self.poller.known.items():
            for p in k.routes:
                items.append((p, ("route", aid)))
        for site, nets in self.coverage.items():
            for p in nets:
                items.append((p, ("cz", site)))
        return items

    async def table_keeper(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.table_dirty:
                self.table_dirty = False
                items = self._items()
                started = time.monotonic()
                try:
                    table = await loop.run_in_executor(None, PrefixTable.build, items)
                except ValueError as exc:
                    print(f"oca-steering: prefix table not rebuilt: {exc}", file=sys.stderr, flush=True)
                else:
                    self.table = table
                    self.table_built_s = time.time()
                    self.m_build.set(time.monotonic() - started)
                    self.m_prefixes.set(len(table))
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------ deciding

    def client_address(self, request: web.Request) -> tuple[str | None, str]:
        peer = request.remote or ""
        try:
            peer_addr = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return None, "peer"
        if peer_addr.version == 6 and peer_addr.ipv4_mapped is not None:
            peer_addr = peer_addr.ipv4_mapped
        q = request.query.get("client")
        if q is not None and _in(peer_addr, self.callers):
            try:
                return str(ipaddress.ip_address(q)), "query"
            except ValueError:
                return None, "query"
        xff = request.headers.get("X-Forwarded-For")
        if xff and _in(peer_addr, self.proxies):
            hops = [h.strip() for h in xff.split(",") if h.strip()]
            for hop in reversed(hops):
                try:
                    addr = ipaddress.ip_address(hop)
                except ValueError:
                    break
                if not _in(addr, self.proxies):
                    return str(addr), "x-forwarded-for"
        return str(peer_addr), "peer"

    def decide(self, client: str, content_id: str) -> dict:
        started = time.perf_counter()
        addr = ipaddress.ip_address(client)
        matches = self.table.matches_int(addr.version, int(addr))
        live = {}
        for a in self.registry:
            st = self.poller.states.get(a.appliance_id)
            k = self.poller.known.get(a.appliance_id)
            if st is not None and k is not None:
                live[a.appliance_id] = Live(st.serves_new_clients, st.overloaded, k.inventory)
        d = decide(content_id, matches, self.registry, live, max_urls=self.cfg.max_urls, fallback_sites=self.cfg.fallback_sites)
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

    # ------------------------------------------------------------ handlers

    def _bad(self, status: int, reason: str, **extra) -> web.Response:
        return web.json_response({"error": reason, **extra}, status=status, headers={"Cache-Control": "no-store"})

    async def steer(self, request: web.Request) -> web.Response:
        content_id = request.query.get("content")
        if content_id is None:
            return self._bad(400, "missing ?content=<id>")
        return self._answer(request, content_id, redirect=False)

    async def redirect(self, request: web.Request) -> web.Response:
        return self._answer(request, request.match_info["content_id"], redirect=True)

    def _answer(self, request: web.Request, content_id: str, redirect: bool) -> web.Response:
        if not is_valid_id(content_id):
            return self._bad(400, "malformed content id: it must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
        client, source = self.client_address(request)
        if client is None:
            return self._bad(400, f"client address from {source} is not an IP address")
        doc = self.decide(client, content_id)
        doc["client_from"] = source
        if doc["result"] == NO_CANDIDATES:
            return web.json_response(doc, status=503, headers={"Cache-Control": "no-store"})
        if redirect:
            return web.Response(status=302, headers={"Location": doc["urls"][0]["url"], "Cache-Control": "no-store"}, text="")
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    def health_doc(self) -> dict:
        states = self.poller.states
        serving = sum(1 for s in states.values() if s.serves_new_clients)
        status = "ok" if serving == len(states) else "degraded" if serving else "down"
        return {
            "status": status, "version": __version__, "appliances": len(states), "serving": serving,
            "blip_guard": {"active": self.poller.blip, "reason": self.poller.blip_reason, "since": self.poller.blip_since},
            "rounds": self.poller.rounds, "last_round": self.poller.last_round_s,
            "prefixes": len(self.table), "table_built": self.table_built_s,
            "decisions": dict(self.results),
        }

    async def health(self, request: web.Request) -> web.Response:
        doc = self.health_doc()
        return web.json_response(doc, status=200 if doc["status"] != "down" else 503, headers={"Cache-Control": "no-store"})

    async def metrics(self, request: web.Request) -> web.Response:
        for a in self.registry:
            st = self.poller.states.get(a.appliance_id)
            self.m_up.labels(a.appliance_id, a.site).set(1 if st and st.serves_new_clients else 0)
            self.m_state.labels(a.appliance_id, a.site).set(1 if st and st.up else 0)
            self.m_polls.labels(a.appliance_id).set(self.poller.known[a.appliance_id].failures if a.appliance_id in self.poller.known else 0)
        self.m_blip.set(1 if self.poller.blip else 0)
        return web.Response(body=generate_latest(self.registry_metrics), content_type="text/plain", charset="utf-8")

    async def status_page(self, request: web.Request) -> web.Response:
        return web.Response(text=render_status(self), content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/steer", self.steer)
        app.router.add_get("/content/{content_id}", self.redirect)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.status_page)
        return app


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    return f"{time.time() - ts:.1f} s ago"


def render_status(s: Steering) -> str:
    e = html.escape
    rows = []
    by_site: dict[str, list[Appliance]] = {}
    for a in s.registry:
        by_site.setdefault(a.site, []).append(a)
    for site in sorted(by_site):
        rows.append(f"<tr class='site'><th colspan='9'>site {e(site)}</th></tr>")
        for a in by_site[site]:
            st = s.poller.states.get(a.appliance_id)
            k = s.poller.known.get(a.appliance_id)
            state = st.state if st else "unknown"
            util = "unknown" if st is None or st.nic_utilisation is None else f"{st.nic_utilisation * 100:.1f}%"
            bps = "" if st is None or st.bytes_per_s is None else f"{st.bytes_per_s * 8 / 1e6:.1f} Mb/s"
            rows.append(
                f"<tr class='{e(state)}'><td>{e(a.appliance_id)}</td><td>{e(a.tier)}</td><td>{e(state)}</td>"
                f"<td>{e(st.reason if st else '')}</td><td>{_ago(st.last_poll_s if st else None)}</td>"
                f"<td>{bps}</td><td>{util}</td><td>{len(k.inventory) if k else 0}</td><td>{len(k.routes) if k else 0}</td></tr>"
            )
    recent = "".join(
        f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(t))}</td><td>{e(c)}</td><td>{e(cid)}</td><td>{e(r)}</td><td>{e(', '.join(aps))}</td></tr>"
        for t, c, cid, r, aps in reversed(s.recent)
    )
    counts = "".join(f"<li>{e(k)}: {v}</li>" for k, v in sorted(s.results.items())) or "<li>none yet</li>"
    blip = (f"<p class='blip'>Blip guard active since {_ago(s.poller.blip_since)}: {e(s.poller.blip_reason)}</p>"
            if s.poller.blip else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>oca steering</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }} tr.site th {{ background: #eee; }}
tr.up td:nth-child(3) {{ color: #070; }} tr.down td:nth-child(3) {{ color: #b00; font-weight: bold; }}
tr.draining td:nth-child(3), tr.overloaded td:nth-child(3) {{ color: #a60; }} .blip {{ background: #fdd; padding: 0.5em; }}
</style></head><body>
<h1>oca steering</h1>
<p>version {e(__version__)} &middot; {len(s.registry)} appliances &middot; {len(s.table)} prefixes &middot; polling round {s.poller.rounds}, last {_ago(s.poller.last_round_s)}</p>
{blip}
<h2>Appliances</h2>
<table><tr><th>appliance</th><th>tier</th><th>state</th><th>reason</th><th>last poll</th><th>sending</th><th>NIC</th><th>content</th><th>routes</th></tr>
{''.join(rows)}</table>
<h2>Decisions by result</h2><ul>{counts}</ul>
<h2>Recent decisions</h2>
<table><tr><th>time</th><th>client</th><th>content</th><th>result</th><th>appliances</th></tr>{recent}</table>
</body></html>
"""


async def serve(config_path: str) -> int:
    cfg = load_steering_config(config_path)
    s = Steering(config_path, cfg)
    runner = web.AppRunner(s.app(), access_log=None, handle_signals=False)
    await runner.setup()
    for item in cfg.server.listen:
        host, port = parse_host_port(item)
        await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, s.reload)
    tasks = [asyncio.create_task(s.poller.run()), asyncio.create_task(s.table_keeper())]
    print(f"oca-steering {__version__}: serving on {', '.join(cfg.server.listen)}, polling {len(s.registry)} appliances", file=sys.stderr, flush=True)
    notify_systemd("READY=1")
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await runner.cleanup()
    return 0
