"""`oca-steering` against real `oca-server` appliances on loopback.

Three appliances (the real parent and workers, real LMDB, content put in
with the real `oca-admin ingest`) listen on 127.0.0.11, .12 and .13, in two
sites; each reports static client prefixes on `/routes` and verifies
signed URLs (`[signing] required = true`). The steering service is the
real `oca-steering --config FILE` process polling them every 0.3 s. A
coverage-zone file gives one more prefix to site beta.

Clients connect from chosen source addresses (the socket is bound to
127.a.b.c before connecting; all of 127/8 is local), so the prefixes
decide; trusted proxies and callers get addresses of their own.

The fleet is shared by the module. Tests that disturb it (drain, kill -9,
SIGSTOP, reload) put it back in a `finally`, and wait, with a deadline,
until steering sees it whole again. Every process started here is stopped
by its fixture even when a test fails; stopped (SIGSTOP) processes are
continued first.

    prefix            source           site / appliance
    127.1.0.0/16      route            alpha / a1 (127.0.0.11)
    127.1.2.0/24      route            alpha / a2 (127.0.0.12)
    127.2.0.0/16      route            beta  / b1 (127.0.0.13)
    127.3.0.0/16      coverage zone    beta
    127.4.0.0/16      route            gamma / c1 (127.0.0.14, added by SIGHUP)
    anything else     fallback_sites = ["beta"]
"""

from __future__ import annotations

import contextlib
import html.parser
import http.client
import json
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import quote, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oca.rendezvous import hrw_score
from tests.server_proc import ServerProcess, appliance, free_port, wait_port
from tests.support import BIN, ROOT, admin

T = TypeVar("T")

SECRET = "0123456789abcdef0123"
INTERVAL_S = 0.3
TIMEOUT_S = 0.5
FAIL_AFTER = 3
RECOVER_AFTER = 2
# Taken out of answers within fail_after polls, the last of which may wait for its timeout.
SLACK_S = 2.5  # a shared, noisy 2-core machine
DOWN_WITHIN_S = FAIL_AFTER * INTERVAL_S + TIMEOUT_S + SLACK_S
UP_WITHIN_S = RECOVER_AFTER * INTERVAL_S + TIMEOUT_S + SLACK_S + 10  # a restarted server must start first
IO_TIMEOUT_S = 10.0

PROXY = "127.0.0.50"  # [trust] proxies
CALLER = "127.0.0.60"  # [trust] callers
UNTRUSTED = "127.0.0.70"

_rng = random.Random(20_240_611)
FILES = {
    "movie-1.mp4": _rng.randbytes(300_000),  # everywhere
    "movie-2.mp4": _rng.randbytes(70_001),  # everywhere
    "only-a1.ts": _rng.randbytes(12_345),  # a1 only
    "only-b1.ts": _rng.randbytes(54_321),  # b1 only
    "not-a2.mp4": _rng.randbytes(1000),  # a1 and b1, not a2
}
HOLDINGS = {
    "a1": ("movie-1.mp4", "movie-2.mp4", "only-a1.ts", "not-a2.mp4"),
    "a2": ("movie-1.mp4", "movie-2.mp4"),
    "b1": ("movie-1.mp4", "movie-2.mp4", "only-b1.ts", "not-a2.mp4"),
    "c1": ("movie-1.mp4",),
}
SPECS = {
    # id: (host, site, static routes)
    "a1": ("127.0.0.11", "alpha", ["127.1.0.0/16"]),
    "a2": ("127.0.0.12", "alpha", ["127.1.2.0/24"]),
    "b1": ("127.0.0.13", "beta", ["127.2.0.0/16"]),
    "c1": ("127.0.0.14", "gamma", ["127.4.0.0/16"]),
}
FLEET = ("a1", "a2", "b1")


# ---------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            value = predicate()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last error: {last!r})")
        time.sleep(interval_s)


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def get(url: str, source: str | None = None, headers: dict | None = None) -> Reply:
    """GET `url` from the source address `source` (a fresh connection, closed after)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=IO_TIMEOUT_S,
                                      source_address=(source, 0) if source else None)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass
class Appliance:
    aid: str
    cfg: Path
    host: str
    port: int
    srv: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.srv = ServerProcess(self.cfg, self.host, self.port, log=self.cfg.parent / "server.log").start()

    def pids(self) -> list[int]:
        if self.srv is None or self.srv.proc is None or self.srv.proc.poll() is not None:
            return []
        return [self.srv.proc.pid, *self.srv.worker_pids()]

    def kill9(self) -> None:
        """kill -9 the parent and every worker: stop the parent first so it restarts none."""
        assert self.srv is not None and self.srv.proc is not None
        parent = self.srv.proc.pid
        os.kill(parent, signal.SIGSTOP)
        for pid in self.srv.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.kill(parent, signal.SIGKILL)
        self.srv.proc.wait(IO_TIMEOUT_S)
        self.srv.stop()  # already dead: only closes its log
        wait_for(lambda: not _listening(self.host, self.port), IO_TIMEOUT_S, f"{self.aid}'s workers to be gone")

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self) -> None:
        if self.srv is not None:
            self.signal_all(signal.SIGCONT)
            self.srv.stop(timeout=15)


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def make_appliance(tmp: Path, aid: str) -> Appliance:
    host, site, routes = SPECS[aid]
    files = {cid: FILES[cid] for cid in HOLDINGS[aid]}
    extra = (
        f"[routes]\nstatic = {json.dumps(routes)}\n"
        f'[signing]\nrequired = true\nkeys = {{k1 = "{SECRET}"}}\n'
    )
    cfg, host, port = appliance(tmp / aid, host=host, site=site, files=files, extra=extra, appliance_id=aid, workers=2)
    return Appliance(aid, cfg, host, port)


def steering_toml(port: int, fleet: list[Appliance], coverage: Path, fallback=("beta",), decision_log: str = "") -> str:
    lines = [
        "max_urls = 4",
        f"fallback_sites = {json.dumps(list(fallback))}",
        "[server]",
        f'listen = ["127.0.0.1:{port}"]',
        f"decision_log = {json.dumps(decision_log)}",
        "[coverage]",
        f'file = "{coverage}"',
        "[health]",
        f"interval_s = {INTERVAL_S}",
        f"timeout_s = {TIMEOUT_S}",
        f"fail_after = {FAIL_AFTER}",
        f"recover_after = {RECOVER_AFTER}",
        "[signing]",
        f'keys = {{k1 = "{SECRET}"}}',
        'key_id = "k1"',
        "ttl_s = 600",
        "[trust]",
        f'proxies = ["{PROXY}/32"]',
        f'callers = ["{CALLER}/32"]',
    ]
    for a in fleet:
        lines += ["[[appliances]]", f'id = "{a.aid}"', f'url = "{a.url}"', f'site = "{SPECS[a.aid][1]}"']
    return "\n".join(lines) + "\n"


@dataclass
class Steering:
    cfg: Path
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    fleet: dict[str, Appliance] = field(default_factory=dict)
    coverage: Path | None = None  # the coverage-zone file
    tmp: Path | None = None  # the module's directory

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen([str(BIN / "oca-steering"), "--config", str(self.cfg)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_port("127.0.0.1", self.port, timeout=15)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"steering did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def steer(self, content: str, source: str, **kw) -> Reply:
        return get(f"{self.base}/steer?content={quote(content, safe='')}", source, **kw)

    def first(self, content: str, source: str) -> str | None:
        r = self.steer(content, source)
        return r.json()["urls"][0]["appliance"] if r.status == 200 else None

    def listed(self, content: str, source: str) -> list[str]:
        r = self.steer(content, source)
        return [u["appliance"] for u in r.json()["urls"]]

    def health(self) -> dict:
        return get(f"{self.base}/health").json()

    def states(self) -> dict[str, str]:
        """appliance id → state, read from the status page."""
        page = get(f"{self.base}/").body.decode()
        return dict(re.findall(r"<tr class='[a-z]+'><td>([^<]+)</td><td>[^<]*</td><td>([a-z]+)</td>", page))

    def wait_whole(self, ids=FLEET, timeout_s: float = UP_WITHIN_S, prefixes: int = 4) -> None:
        """Every appliance in `ids` up, and the prefix table holding their routes and the zone."""
        wait_for(lambda: all(self.states().get(i) == "up" for i in ids), timeout_s, f"steering to see {ids} up")
        wait_for(lambda: self.health()["prefixes"] == prefixes, timeout_s, f"a table of {prefixes} prefixes")

    def reloaded(self, count_before: int) -> bool:
        return self.log.read_text(errors="replace").count("oca-steering: reload") > count_before

    def reload_count(self) -> int:
        return self.log.read_text(errors="replace").count("oca-steering: reload")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Steering]:
    tmp = tmp_path_factory.mktemp("steering")
    fleet = {aid: make_appliance(tmp, aid) for aid in FLEET}
    coverage = tmp / "zones.json"
    coverage.write_text(json.dumps({"coverageZones": {"beta": {"network": ["127.3.0.0/16"]}}}))
    port = free_port("127.0.0.1")
    cfg = tmp / "steering.toml"
    cfg.write_text(steering_toml(port, list(fleet.values()), coverage))
    s = Steering(cfg, port, tmp / "steering.log", fleet=fleet, coverage=coverage, tmp=tmp)
    try:
        for a in fleet.values():
            a.start()
        s.start()
        s.wait_whole(timeout_s=20)
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.stop()
        for a in s.fleet.values():
            with contextlib.suppress(Exception):
                a.stop()


@pytest.fixture
def whole(stack: Steering) -> Iterator[Steering]:
    """The stack, checked whole before the test and put back whole after it."""
    stack.wait_whole()
    try:
        yield stack
    finally:
        for a in stack.fleet.values():
            a.signal_all(signal.SIGCONT)
        stack.wait_whole()


def download(url: str, source: str = "127.9.9.9") -> Reply:
    return get(url, source)


# ---------------------------------------------------------------- the answer


ALPHA = "the best of site alpha"  # the second site's pick, by rendezvous order of the content id


def alpha_winner(content: str) -> str:
    return max(("a1", "a2"), key=lambda aid: hrw_score(aid, content, 1.0))


ROUTING_CASES = [
    # (client source address, content, expected order of appliances, result, prefix)
    ("127.1.2.3", "movie-1.mp4", ["a2", "a1", "b1"], "BGP", "127.1.2.0/24"),  # /24 beats /16; then the second site
    ("127.1.9.9", "movie-1.mp4", ["a1", "b1"], "BGP", "127.1.0.0/16"),  # only a1's /16; second site b1
    ("127.1.2.255", "movie-2.mp4", ["a2", "a1", "b1"], "BGP", "127.1.2.0/24"),  # last address of the /24
    ("127.1.3.0", "movie-2.mp4", ["a1", "b1"], "BGP", "127.1.0.0/16"),  # just outside it
    ("127.2.0.5", "movie-1.mp4", ["b1", ALPHA], "BGP", "127.2.0.0/16"),  # b1's route; second site: alpha's rendezvous winner
    ("127.3.0.5", "movie-2.mp4", ["b1", ALPHA], "COVERAGE_ZONE", "127.3.0.0/16"),  # beta's zone
    ("127.9.9.9", "movie-1.mp4", ["b1"], "FALLBACK", None),  # nothing matches: fallback_sites only
    ("127.1.2.3", "not-a2.mp4", ["a1", "b1"], "BGP", "127.1.0.0/16"),  # a2 lacks it: never listed
    ("127.1.2.3", "only-b1.ts", ["b1"], "FALLBACK", None),  # matched ones lack it: fallback
]


@pytest.mark.parametrize("source,content,expected,result,prefix", ROUTING_CASES)
def test_answer_follows_the_prefixes(stack, source, content, expected, result, prefix):
    r = stack.steer(content, source)
    assert r.status == 200, r.body
    doc = r.json()
    expected = [alpha_winner(content) if e == ALPHA else e for e in expected]
    assert [u["appliance"] for u in doc["urls"]] == expected
    assert doc["client"] == source and doc["client_from"] == "peer"
    assert doc["content"] == content
    assert doc["result"] == result and doc["prefix"] == prefix
    assert r.headers["cache-control"] == "no-store"


def test_an_appliance_lacking_the_file_is_never_listed(stack):
    rng = random.Random(41)
    for i in range(40):
        source = f"127.1.{rng.choice((2, 2, 7))}.{rng.randint(0, 255)}"
        for content in ("only-a1.ts", "not-a2.mp4", "only-b1.ts"):
            listed = stack.listed(content, source)
            holders = {aid for aid, held in HOLDINGS.items() if content in held}
            assert listed and set(listed) <= holders, (source, content, listed)


def test_urls_download_with_their_signature(stack):
    for source, content in [("127.1.2.3", "movie-1.mp4"), ("127.1.9.9", "only-a1.ts"), ("127.2.0.5", "movie-2.mp4"), ("127.3.1.1", "only-b1.ts")]:
        doc = stack.steer(content, source).json()
        for u in doc["urls"]:
            assert re.search(r"\?e=\d+&k=k1&t=[A-Za-z0-9_-]{43}$", u["url"]), u["url"]
            assert u["url"].startswith(stack.fleet[u["appliance"]].url + f"/content/{content}?")
            r = download(u["url"])
            assert r.status == 200, (u, r.body[:200])
            assert r.body == FILES[content], u
    # the signature is what lets them in: the same URL without it, or with a byte changed, is refused
    url = stack.steer("movie-1.mp4", "127.1.2.3").json()["urls"][0]["url"]
    assert download(url.split("?")[0]).status == 403
    tampered = url[:-1] + ("A" if url[-1] != "A" else "B")
    assert download(tampered).status == 403


def test_redirect_to_the_first_url(stack):
    r = get(f"{stack.base}/content/movie-1.mp4", "127.1.2.3")
    assert r.status == 302
    location = r.headers["location"]
    assert location.startswith(stack.fleet["a2"].url + "/content/movie-1.mp4?e=")
    assert r.headers["cache-control"] == "no-store"
    assert download(location).body == FILES["movie-1.mp4"]
    r = get(f"{stack.base}/content/only-b1.ts", "127.1.2.3")
    assert r.status == 302 and r.headers["location"].startswith(stack.fleet["b1"].url)


@pytest.mark.parametrize("path", [
    "/steer?content=..%2Fetc%2Fpasswd",
    "/steer?content=-dash-first",
    "/steer?content=" + "x" * 129,
    "/steer?content=",
    "/steer",
    "/content/.hidden",
    "/content/a%40b",
])
def test_malformed_content_id_is_400(stack, path):
    r = get(stack.base + path, "127.1.2.3")
    assert r.status == 400, (path, r.body)
    assert r.json()["error"]
    assert r.headers["cache-control"] == "no-store"


def test_no_candidates_is_503_with_the_result(stack):
    for path in ("/steer?content=nobody-has-this.mp4", "/content/nobody-has-this.mp4"):
        r = get(stack.base + path, "127.1.2.3")
        assert r.status == 503
        doc = r.json()
        assert doc["result"] == "NO_CANDIDATES" and doc["urls"] == [] and doc["content"] == "nobody-has-this.mp4"


# ---------------------------------------------------------------- whose word about the client


TRUST_CASES = [
    # (peer, query client, X-Forwarded-For, believed client, from)
    (PROXY, None, "127.2.0.9", "127.2.0.9", "x-forwarded-for"),
    (PROXY, None, f"127.1.2.3, {PROXY}", "127.1.2.3", "x-forwarded-for"),  # rightmost that is not a proxy
    (PROXY, None, "127.7.7.7, 127.2.0.9", "127.2.0.9", "x-forwarded-for"),  # a client's own claim before it is not believed
    (PROXY, None, "not-an-address", PROXY, "peer"),
    (UNTRUSTED, None, "127.2.0.9", UNTRUSTED, "peer"),  # X-Forwarded-For from anyone else: ignored
    (CALLER, None, "127.2.0.9", CALLER, "peer"),  # a trusted caller is not a trusted proxy
    (CALLER, "127.2.0.9", None, "127.2.0.9", "query"),
    (CALLER, "127.3.4.5", "127.2.0.9", "127.3.4.5", "query"),
    (UNTRUSTED, "127.2.0.9", None, UNTRUSTED, "peer"),  # ?client= from anyone else: ignored
    (PROXY, "127.2.0.9", None, PROXY, "peer"),  # a trusted proxy is not a trusted caller
]


@pytest.mark.parametrize("peer,query,xff,client,source", TRUST_CASES)
def test_client_address_is_believed_only_from_trusted_peers(stack, peer, query, xff, client, source):
    path = "/steer?content=movie-1.mp4" + (f"&client={query}" if query else "")
    r = get(stack.base + path, peer, headers={"X-Forwarded-For": xff} if xff else None)
    assert r.status == 200, r.body
    doc = r.json()
    assert (doc["client"], doc["client_from"]) == (client, source)


def test_bad_client_from_a_trusted_caller_is_400(stack):
    r = get(stack.base + "/steer?content=movie-1.mp4&client=nonsense", CALLER)
    assert r.status == 400


def test_trusted_caller_steers_for_the_named_client(stack):
    r = get(stack.base + "/steer?content=movie-1.mp4&client=127.1.2.44", CALLER)
    assert [u["appliance"] for u in r.json()["urls"]] == ["a2", "a1", "b1"]


# ---------------------------------------------------------------- status page, health, metrics


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value:
                self.refs.append(value)


def test_status_page_shows_every_appliance_and_the_counts(stack):
    stack.steer("movie-1.mp4", "127.9.9.9")  # at least one FALLBACK decision
    stack.steer("movie-1.mp4", "127.1.2.3")  # and one BGP decision, whatever ran before
    r = get(stack.base + "/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    page = r.body.decode()
    assert page.lstrip().lower().startswith("<!doctype html>")
    states = stack.states()
    for aid in FLEET:
        assert states.get(aid) == "up", states
    counts = dict((k, int(v)) for k, v in re.findall(r"<li>([A-Z_]+): (\d+)</li>", page))
    assert counts == stack.health()["decisions"]
    assert counts.get("FALLBACK", 0) >= 1 and counts.get("BGP", 0) >= 1
    refs = _Refs()
    refs.feed(page)
    assert not [u for u in refs.refs if re.match(r"(?i)\s*(https?:)?//", u)], refs.refs
    assert not re.search(r"(?i)(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)
    assert not re.search(r"(?i)@import|url\(", page)
    assert "script" not in refs.tags


def test_health_document(stack):
    doc = stack.health()
    assert doc["status"] == "ok" and doc["appliances"] == 3 and doc["serving"] == 3
    assert doc["blip_guard"]["active"] is False
    assert doc["prefixes"] == 4  # three routes and one zone
    assert doc["rounds"] > 0 and doc["last_round"] is not None


def test_metrics_parse(stack):
    before = stack.health()["decisions"]
    r = get(stack.base + "/metrics")
    assert r.status == 200
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    decisions = {s.labels["result"]: s.value for s in families["steering_decisions"].samples if s.name == "steering_decisions_total"}
    assert decisions == {k: float(v) for k, v in before.items()}
    up = {s.labels["appliance"]: s.value for s in families["steering_appliance_up"].samples}
    assert up == {"a1": 1.0, "a2": 1.0, "b1": 1.0}
    assert {s.labels["appliance"]: s.labels["site"] for s in families["steering_appliance_up"].samples} == {"a1": "alpha", "a2": "alpha", "b1": "beta"}
    assert families["steering_blip_guard"].samples[0].value == 0
    assert families["steering_prefixes"].samples[0].value == 4
    assert "steering_decision_seconds" in families


# ---------------------------------------------------------------- availability


def test_drain_moves_new_clients_away_and_undrain_back(whole):
    s = whole
    a2 = s.fleet["a2"]
    assert s.first("movie-1.mp4", "127.1.2.3") == "a2"
    admin(a2.cfg, "drain", check=True)
    try:
        wait_for(lambda: "a2" not in s.listed("movie-1.mp4", "127.1.2.3"), DOWN_WITHIN_S, "a2 to leave answers after drain")
        assert s.listed("movie-1.mp4", "127.1.2.3") == ["a1", "b1"]
        assert s.states()["a2"] == "draining"
        # a draining appliance still serves what it was asked for
        r = download(get(f"{s.base}/steer?content=movie-1.mp4", "127.1.2.3").json()["urls"][0]["url"].replace(s.fleet["a1"].url, a2.url))
        assert r.status == 200 and r.body == FILES["movie-1.mp4"]
    finally:
        admin(a2.cfg, "undrain", check=True)
    wait_for(lambda: s.first("movie-1.mp4", "127.1.2.3") == "a2", DOWN_WITHIN_S, "a2 to come back after undrain")


def test_kill9_removes_the_first_appliance_and_a_restart_brings_it_back(whole):
    s = whole
    a2 = s.fleet["a2"]
    source = "127.1.2.3"
    assert s.first("movie-1.mp4", source) == "a2"
    a2.kill9()
    killed = time.monotonic()
    wait_for(lambda: "a2" not in s.listed("movie-1.mp4", source), DOWN_WITHIN_S, "a2 to leave answers after kill -9", 0.02)
    gone_after_s = time.monotonic() - killed
    assert gone_after_s <= DOWN_WITHIN_S
    assert s.listed("movie-1.mp4", source) == ["a1", "b1"]
    assert s.states()["a2"] == "down"
    page = get(s.base + "/").body.decode()
    assert re.search(r"<td>a2</td>.*?failed polls", page, re.S), "the status page gives the reason"
    assert s.health()["status"] == "degraded"
    a2.start()
    wait_for(lambda: s.first("movie-1.mp4", source) == "a2", UP_WITHIN_S, "a2 to come back after restart")
    print(f"a2 left answers {gone_after_s:.2f} s after kill -9 (bound {DOWN_WITHIN_S:.1f} s)")


def test_blip_guard_keeps_the_last_good_state_when_every_appliance_stops(whole):
    s = whole
    source = "127.1.2.3"
    assert s.listed("movie-1.mp4", source) == ["a2", "a1", "b1"]
    for a in s.fleet.values():
        a.signal_all(signal.SIGSTOP)
    try:
        wait_for(lambda: s.health()["blip_guard"]["active"], DOWN_WITHIN_S, "the blip guard")
        stopped = time.monotonic()
        # well past fail_after rounds of failures: still the last good answer
        while time.monotonic() - stopped < FAIL_AFTER * (INTERVAL_S + TIMEOUT_S) + 1.0:
            assert s.listed("movie-1.mp4", source) == ["a2", "a1", "b1"]
            time.sleep(0.2)
        doc = s.health()
        assert doc["blip_guard"]["active"] is True and doc["blip_guard"]["since"] is not None
        assert "all 3 appliances failed" in doc["blip_guard"]["reason"]
        assert doc["serving"] == 3
        assert "Blip guard active" in get(s.base + "/").body.decode()
        families = {f.name: f for f in text_string_to_metric_families(get(s.base + "/metrics").body.decode())}
        assert families["steering_blip_guard"].samples[0].value == 1
    finally:
        for a in s.fleet.values():
            a.signal_all(signal.SIGCONT)
    wait_for(lambda: not s.health()["blip_guard"]["active"], DOWN_WITHIN_S, "the blip guard to end")
    assert s.listed("movie-1.mp4", source) == ["a2", "a1", "b1"]


def test_one_stopped_appliance_is_not_a_blip(whole):
    """SIGSTOP of one appliance: its polls time out, and it goes down like a dead one."""
    s = whole
    b1 = s.fleet["b1"]
    b1.signal_all(signal.SIGSTOP)
    try:
        wait_for(lambda: s.states()["b1"] == "down", FAIL_AFTER * (INTERVAL_S + TIMEOUT_S) + SLACK_S, "b1 to go down")
        assert not s.health()["blip_guard"]["active"]
        assert "no answer within" in get(s.base + "/").body.decode()
        assert s.listed("movie-1.mp4", "127.1.2.3") == ["a2", "a1"]  # no second site left to add
        # b1's own prefix, and fallback beta: nobody near is left, so the best
        # holders anywhere are listed rather than a 503.
        r = s.steer("movie-1.mp4", "127.2.0.5")
        assert r.status == 200 and r.json()["result"] == "FALLBACK"
        assert [u["appliance"] for u in r.json()["urls"]] and "b1" not in [u["appliance"] for u in r.json()["urls"]]
    finally:
        b1.signal_all(signal.SIGCONT)


# ---------------------------------------------------------------- reload


def test_sighup_adds_an_appliance_without_dropping_the_others(whole, tmp_path):
    s = whole
    c1 = make_appliance(s.tmp, "c1")
    original = s.cfg.read_text()
    c1.start()
    try:
        n = s.reload_count()
        s.cfg.write_text(steering_toml(s.port, [*s.fleet.values(), c1], s.coverage))
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: s.reloaded(n), IO_TIMEOUT_S, "the reload")
        said = [line for line in s.log.read_text(errors="replace").splitlines() if "oca-steering: reload" in line][n]
        assert "reloaded" in said and "4 appliances" in said
        # straight after the reload: the others keep their state (no "not polled yet", no recovery wait)
        assert s.listed("movie-1.mp4", "127.1.2.3") == ["a2", "a1", "b1"]
        assert s.health()["serving"] >= 3
        wait_for(lambda: s.first("movie-1.mp4", "127.4.0.1") == "c1", UP_WITHIN_S, "c1 to be first for its prefix")
        doc = s.steer("movie-1.mp4", "127.4.0.1").json()
        assert doc["result"] == "BGP" and doc["prefix"] == "127.4.0.0/16"
        assert download(doc["urls"][0]["url"]).body == FILES["movie-1.mp4"]
        assert s.states()["c1"] == "up" and s.health()["appliances"] == 4
    finally:
        n = s.reload_count()
        s.cfg.write_text(original)
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: s.reloaded(n), IO_TIMEOUT_S, "the reload back")
        c1.stop()
    assert s.health()["appliances"] == 3
    assert "c1" not in s.states()


@pytest.mark.parametrize("bad", ["coverage file", "decision log"])
def test_refused_reload_keeps_the_running_config(whole, bad):
    """A config that does not load (here: a bad coverage entry, or a decision log that cannot be opened) changes nothing."""
    s = whole
    original = s.cfg.read_text()
    coverage = s.coverage
    decision_log = ""
    if bad == "coverage file":
        coverage = s.tmp / "bad-zones.json"
        coverage.write_text('{"coverageZones": {"beta": {"network": ["127.3.0.0/33"]}}}')
        message = "127.3.0.0/33"
    else:
        decision_log = str(s.tmp / "no-such-dir" / "decisions.log")
        message = "no-such-dir"
    c1 = Appliance("c1", s.cfg, "127.0.0.14", 9)  # never started: only named in the refused config
    try:
        n = s.reload_count()
        s.cfg.write_text(steering_toml(s.port, [*s.fleet.values(), c1], coverage, decision_log=decision_log))
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: s.reloaded(n), IO_TIMEOUT_S, "the refused reload")
        said = [line for line in s.log.read_text(errors="replace").splitlines() if "oca-steering: reload" in line][n]
        assert "reload refused" in said and message in said
        time.sleep(3 * INTERVAL_S)
        assert "c1" not in s.states(), "a refused config must leave nothing behind"
        assert s.health()["appliances"] == 3
        assert s.first("movie-1.mp4", "127.3.0.5") == "b1"  # the old zones still match
        assert s.listed("movie-1.mp4", "127.1.2.3") == ["a2", "a1", "b1"]
    finally:
        s.cfg.write_text(original)
