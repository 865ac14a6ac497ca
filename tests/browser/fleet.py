"""The browser tests' system, shared with benchmarks/player_failover.py.

Three `oca-server` appliances on loopback in two sites (a1, a2 in alpha,
both routing 127.1.0.0/16; b1 in beta), each holding one title's ABR
ladder and requiring signed URLs, serving HTTPS with a throwaway CA; the
real `oca-steering` polling them and reading the signed manifest from a
real origin (`tests.origin`); and `Player`, one /watch page in Chromium
with what it records (`window.oca`) read back.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from fill.manifest import sign
from oca.config import load_config
from oca.store.content import ContentStore
from tests.browser.ladder import make_title, manifest_entries
from tests.integration.test_steering import Appliance, Reply, get, wait_for
from tests.origin import OriginProcess
from tests.server_proc import appliance, free_port, wait_port
from tests.support import BIN, ROOT
from tests.tlscerts import make_ca, make_leaf

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECRET = "0123456789abcdef0123"
TITLE = "bunny"
SECONDS = 24
CLIENT = "127.1.0.5"  # matched by a1's and a2's routes; b1 is the second site
SPECS = {"a1": ("127.0.0.21", "alpha", ["127.1.0.0/16"]),
         "a2": ("127.0.0.22", "alpha", ["127.1.0.0/16"]),
         "b1": ("127.0.0.23", "beta", ["127.2.0.0/16"])}
INTERVAL_S = 0.3
TIMEOUT_S = 0.5
FAIL_AFTER = 3
TTL_S = 2
MARGIN_S = 600
SLACK_S = 2.5  # a shared, noisy 2-core machine
CACHE = Path(tempfile.gettempdir()) / "oca-test-ladders"  # encoded once per machine and parameter set


@dataclass
class TlsAppliance(Appliance):
    tls_port: int = 0

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.tls_port}"


class System:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.fleet: dict[str, Appliance] = {}
        self.origin: OriginProcess | None = None
        self.proc = None
        self.log_fh = None
        self.port = 0
        self.tls_port = 0
        self.tls_client: ssl.SSLContext | None = None
        self.files: dict[str, Path] = {}
        self.manifest_path = tmp / "origin" / "manifest.json"
        self.log = tmp / "steering.log"
        self.decisions = tmp / "decisions.jsonl"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def get(self, url: str, source: str | None = None, headers: dict | None = None):
        """GET over HTTPS trusting the test CA (or plain HTTP for http:// URLs), from `source`."""
        parts = urlsplit(url)
        if parts.scheme == "http":
            return get(url, source, headers)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=self.tls_client,
                                           source_address=(source, 0) if source else None)
        try:
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def health(self) -> dict:
        return self.get(f"{self.base}/health").json()

    def serving(self) -> set[str]:
        h = self.health()
        return {aid for aid, b in h["by_appliance"].items() if b["state"] == "up"}

    def wait_whole(self) -> None:
        wait_for(lambda: self.serving() == set(SPECS), 30, "steering to see every appliance up")

    def decisions_since(self, offset: int) -> list[dict]:
        with open(self.decisions, "rb") as fh:
            fh.seek(offset)
            return [json.loads(line) for line in fh.read().splitlines() if line.strip()]

    def write_manifest(self, generated_s: int, key: str = SECRET) -> None:
        doc = {"format": "oca-manifest", "version": 1, "generated_s": generated_s,
               "files": manifest_entries(self.files, TITLE, self.origin.base)}
        self.manifest_path.write_text(json.dumps(sign(doc, "k1", key.encode())))


def publish(cfg: Path, files: dict[str, Path]) -> None:
    """Put the ladder into an appliance's stores with the store's public face (as `oca-admin ingest` does, in one process)."""
    cs = ContentStore.open(load_config(str(cfg)))
    try:
        for cid, path in files.items():
            cs.publish_file(str(path), cid)
    finally:
        cs.close()


@contextlib.contextmanager
def start_system(tmp: Path) -> Iterator[System]:
    """The whole system, up and whole, with steering holding the title; everything stopped on exit."""
    s = System(tmp)
    s.files = make_title(CACHE, tmp / "media", TITLE, SECONDS)
    (tmp / "origin").mkdir()
    ca = make_ca(tmp / "pki")
    s.tls_client = ssl.create_default_context(cafile=str(ca.path))
    try:
        s.origin = OriginProcess(tmp / "origin", free_port("127.0.0.1")).start()
        s.write_manifest(int(time.time()))
        for aid, (host, site, routes) in SPECS.items():
            crt, key = make_leaf(ca, tmp / "pki", aid, hosts=("localhost", "127.0.0.1", host))
            tls_port = free_port(host)
            extra = (f"[routes]\nstatic = {json.dumps(routes)}\n[signing]\nrequired = true\nkeys = {{k1 = \"{SECRET}\"}}\n"
                     f'[tls]\nlisten = ["{host}:{tls_port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n')
            cfg, host, port = appliance(tmp / aid, host=host, site=site, extra=extra, appliance_id=aid, workers=2)
            publish(cfg, s.files)
            s.fleet[aid] = TlsAppliance(aid, cfg, host, port, tls_port=tls_port)
            s.fleet[aid].start()
        s.port = free_port("127.0.0.1")
        s.tls_port = free_port("127.0.0.1")
        crt, key = make_leaf(ca, tmp / "pki", "steering")
        lines = [
            "max_urls = 4",
            "[server]", f'listen = ["127.0.0.1:{s.port}"]', f'decision_log = "{s.decisions}"',
            "[tls]", f'listen = ["127.0.0.1:{s.tls_port}"]', f'cert_file = "{crt}"', f'key_file = "{key}"',
            "[health]", f'ca_file = "{ca.path}"', f"interval_s = {INTERVAL_S}", f"timeout_s = {TIMEOUT_S}", f"fail_after = {FAIL_AFTER}", "recover_after = 2",
            "[signing]", f'keys = {{k1 = "{SECRET}"}}', 'key_id = "k1"', "ttl_s = 600",
            "[trust]", 'callers = ["127.0.0.1/32"]',
            "[content]", f'manifest_url = "{s.origin.base}/manifest.json"', "refresh_s = 300",
            "[play]", f"steering_ttl_s = {TTL_S}", f"url_margin_s = {MARGIN_S}",
        ]
        for aid, a in s.fleet.items():
            lines += ["[[appliances]]", f'id = "{aid}"', f'url = "{a.url}"', f'site = "{SPECS[aid][1]}"']
        cfg = tmp / "steering.toml"
        cfg.write_text("\n".join(lines) + "\n")
        s.log_fh = open(s.log, "ab")
        s.proc = subprocess.Popen([str(BIN / "oca-steering"), "--config", str(cfg)], stdout=s.log_fh, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_port("127.0.0.1", s.port, timeout=15)
        wait_port("127.0.0.1", s.tls_port, timeout=15)
        s.wait_whole()
        wait_for(lambda: s.health()["content"]["titles"] == 1, 15, "steering to read the manifest's title")
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()
            s.proc.wait(10)
        if s.log_fh is not None:
            s.log_fh.close()
        for a in s.fleet.values():
            with contextlib.suppress(Exception):
                a.stop()
        if s.origin is not None:
            s.origin.stop()




def launch_browser(playwright):
    """Debian's chromium (never a downloaded one), headless, with a fresh profile, accepting the test CA."""
    return playwright.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="oca-chromium-"), executable_path=CHROMIUM,
                                                         headless=True, args=CHROMIUM_ARGS, ignore_https_errors=True)


STATE_JS = """() => { const v = document.getElementById('v'); return {
  time: v.currentTime, duration: v.duration, paused: v.paused, buffers: oca.buffers(), fatal: oca.fatal, errors: oca.errors,
  stall: oca.longestStall(), stalls: oca.stalls, appliance: oca.appliance, started: oca.started, now: (performance.now()) / 1000,
  encode: oca.videoEncode ? oca.videoEncode() : null, requests: oca.requests, events: oca.events.slice(-30)}; }"""


class Player:
    def __init__(self, ctx, system: System, player: str, tuning: str = "fast", network: dict | None = None):
        """`network`: Chromium's emulated network conditions, in force before the page loads."""
        self.page = ctx.new_page()
        self.cdp = None
        if network is not None:
            self.cdp = ctx.new_cdp_session(self.page)
            self.cdp.send("Network.enable")
            self.cdp.send("Network.emulateNetworkConditions", network)
        self.page.goto(f"{system.base}/watch/{TITLE}?client={CLIENT}&player={player}&tuning={tuning}")
        self.wait(lambda st: st["started"] and st["time"] > 0.5, 20, "playback to start")

    def state(self) -> dict:
        return self.page.evaluate(STATE_JS)

    def wait(self, ok, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.state()
            if ok(st):
                return st
            if st["fatal"] or time.monotonic() > deadline:
                raise AssertionError(f"{what}: {'fatal player error' if st['fatal'] else 'timed out'}; state: "
                                     f"{json.dumps({k: st[k] for k in ('time', 'buffers', 'fatal', 'appliance', 'encode', 'events')})[:3000]}")
            time.sleep(0.1)

    def close(self) -> None:
        self.page.close()


