"""The real `oca-steering` process against fake appliances that misbehave (issue 10).

Fake appliances (tests/fake_appliance.py: real sockets on 127.0.0.x, one
aiohttp server in a thread of this process) answer with the hostile shapes
of the message tables: wrong types, 50 MB bodies with and without a length,
a slow trickle, invalid JSON, NaN, a compressed body, HTTP 500, a default
route, a million prefixes and a non-string prefix. Steering, a real process,
must keep answering correctly for the healthy appliances, mark each bad one
failed with the reason on its /health, and stay under 500 MiB RSS.

Every hostile appliance claims the healthy appliance h1's prefix and holds
the file the test asks for, so one that was wrongly believed would show up
in the answers. The module's steering also has a `control_token`, so its
control endpoints need the token even from loopback.

The defect tests (#1, #2, #9, #10) each start their own small steering, with
a config that the code before the fix also loads, so they fail there for
the defect itself and not for an unknown key.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_appliance import (
    HEALTHY_HEALTH,
    Fake,
    FakeFleet,
    chunked_answer,
    gzip_answer,
    json_answer,
    raw_answer,
    trickle_answer,
)
from tests.integration.test_steering import IO_TIMEOUT_S, Reply, Steering, get, wait_for
from tests.server_proc import free_port

TOKEN = "hostile-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RSS_LIMIT_BYTES = 500 * 2**20
MOVIE = "movie-1.mp4"
MILLION = 1_000_000
BIG_BYTES = 50 * 1_000_000
H1_ROUTE = "127.21.0.0/16"


def _prefixes_body(n: int) -> bytes:
    prefixes = [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32" for i in range(n)]
    return json.dumps({"generation": 1, "kind": "full", "prefixes": prefixes}).encode()


def hostile_fleet() -> list[tuple[Fake, str | None]]:
    """(fake, the text its failure reason must contain; None: it stays up)."""
    healthy_health = {"status": "ok", "conditions": [], "load": {"nic_utilisation": 0.1}}
    cases: list[tuple[str, str, dict, str | None]] = [
        ("x-load", "127.0.0.31", {"/health": json_answer({**healthy_health, "load": 1})}, "load: must be an object"),
        ("x-util-type", "127.0.0.32", {"/health": json_answer({**healthy_health, "load": {"nic_utilisation": "high"}})},
         "load.nic_utilisation"),
        ("x-nan", "127.0.0.33", {"/health": raw_answer(b'{"status": "ok", "load": {"nic_utilisation": NaN}}')}, "NaN"),
        ("x-big", "127.0.0.34", {"/health": raw_answer(b" " * BIG_BYTES)}, "max_response_mb"),
        ("x-chunked", "127.0.0.35", {"/inventory": chunked_answer(BIG_BYTES)}, "max_response_mb"),
        ("x-trickle", "127.0.0.36", {"/health": trickle_answer()}, "no answer within"),
        ("x-json", "127.0.0.37", {"/health": raw_answer(b'{"status": "ok", "load": {')}, "not JSON"),
        ("x-ids", "127.0.0.38", {"/inventory": json_answer({"generation": 5, "kind": "full", "ids": [MOVIE, 7]})}, "ids[1]"),
        ("x-unicode", "127.0.0.39", {"/inventory": json_answer({"generation": 5, "kind": "full", "ids": ["fïlm"]})}, "ids[0]"),
        ("x-kind", "127.0.0.40", {"/inventory": json_answer({"generation": 5, "kind": ["full"], "ids": []})}, "kind"),
        ("x-prefix", "127.0.0.41", {"/routes": json_answer({"generation": 2, "kind": "full", "prefixes": [H1_ROUTE, 7]})},
         "prefixes[1]"),
        ("x-million", "127.0.0.42", {"/routes": raw_answer(_prefixes_body(MILLION))}, "max_prefixes_per_appliance = 100000"),
        ("x-over-cap", "127.0.0.48", {"/routes": raw_answer(_prefixes_body(100_001))}, "100001 prefixes, more than"),
        ("x-500", "127.0.0.43", {"/health": raw_answer(b"{}", status=500)}, "HTTP 500"),
        ("x-gzip", "127.0.0.44", {"/health": gzip_answer(healthy_health)}, "Content-Encoding"),
        ("x-status", "127.0.0.45", {"/health": json_answer({**healthy_health, "status": "grand"})}, "status"),
        ("x-list", "127.0.0.46", {"/health": json_answer([healthy_health])}, "JSON object"),
        # Valid answers; the default route is outside its allowed_prefixes: dropped, counted, still up.
        ("x-default", "127.0.0.47", {"/routes": json_answer({"generation": 3, "kind": "full", "prefixes": ["0.0.0.0/0", "::/0", "127.47.0.0/16"]})},
         None),
    ]
    out = []
    for aid, host, hostile, reason in cases:
        holds = ["only-x.mp4"] if aid == "x-default" else [MOVIE, "only-x.mp4"]
        out.append((Fake(aid, host, "evil", routes=[H1_ROUTE], holds=holds, hostile=hostile), reason))
    return out


HEALTHY = [
    Fake("h1", "127.0.0.21", "alpha", routes=[H1_ROUTE], holds=[MOVIE]),
    Fake("h2", "127.0.0.22", "beta", routes=["127.22.0.0/16"], holds=[MOVIE]),
]


def steering_config(port: int, fleet: FakeFleet, fakes: list[Fake], *, interval_s: float, timeout_s: float,
                    extra_server: str = "", extra_health: str = "", extra_appliance: dict | None = None) -> str:
    lines = [
        "max_urls = 4",
        "[server]",
        f'listen = ["127.0.0.1:{port}"]',
        extra_server,
        "[health]",
        f"interval_s = {interval_s}",
        f"timeout_s = {timeout_s}",
        "fail_after = 2",
        "recover_after = 1",
        extra_health,
    ]
    for f in fakes:
        lines += ["[[appliances]]", f'id = "{f.aid}"', f'url = "{fleet.url(f)}"', f'site = "{f.site}"',
                  (extra_appliance or {}).get(f.aid, "")]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running(tmp: Path, fakes: list[Fake], **config) -> Iterator[tuple[Steering, FakeFleet]]:
    fleet = FakeFleet(fakes, free_port("127.0.0.1")).start()
    port = free_port("127.0.0.1")
    cfg = tmp / "steering.toml"
    cfg.write_text(steering_config(port, fleet, fakes, **config))
    s = Steering(cfg, port, tmp / "steering.log")
    try:
        s.start()
        yield s, fleet
    finally:
        with contextlib.suppress(Exception):
            s.stop()
        fleet.stop()


def health(s: Steering, headers: dict | None = None) -> dict:
    return get(f"{s.base}/health", headers=headers).json()


def states(s: Steering, headers: dict | None = None) -> dict[str, str]:
    """appliance id → state, from the status page (a format the code before the fix also has)."""
    import re

    page = get(f"{s.base}/", headers=headers).body.decode()
    return dict(re.findall(r"<tr class='[a-z]+'><td>([^<]+)</td><td>[^<]*</td><td>([a-z]+)</td>", page))


def listed(s: Steering, content: str, source: str) -> tuple[str, list[str]]:
    r = s.steer(content, source)
    doc = r.json()
    return doc["result"], [u["appliance"] for u in doc["urls"]]


class PeakRss:
    """The highest RSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------- every hostile shape at once


def test_hostile_appliances_are_failed_with_the_reason_and_the_healthy_ones_keep_serving(tmp_path):
    hostile = hostile_fleet()
    fakes = HEALTHY + [f for f, _ in hostile]
    started = time.monotonic()
    with running(tmp_path, fakes, interval_s=0.5, timeout_s=2.0,
                 extra_server=f'control_token = "{TOKEN}"',
                 extra_health="max_response_mb = 32\nmax_prefixes_per_appliance = 100000",
                 extra_appliance={"x-default": 'allowed_prefixes = ["127.47.0.0/16"]'}) as (s, fleet):
        assert s.proc is not None
        with PeakRss(s.proc.pid) as rss:
            expected_down = {f.aid: reason for f, reason in hostile if reason is not None}

            def settled() -> dict | None:
                doc = health(s, AUTH)
                by = doc["by_appliance"]
                ok = all(by[aid]["state"] == "down" and reason in by[aid]["last_failure"] for aid, reason in expected_down.items())
                ok = ok and all(by[aid]["state"] == "up" for aid in ("h1", "h2", "x-default"))
                return doc if ok and doc["rounds"] >= 4 else None

            doc = wait_for(settled, 45, "every hostile appliance down with its reason and the healthy ones up")
            # Polling goes on: more rounds, still the same verdicts, and answers stay right throughout.
            rounds = doc["rounds"]
            slowest_s = 0.0
            for _ in range(20):
                t0 = time.monotonic()
                assert listed(s, MOVIE, "127.21.3.4") == ("BGP", ["h1", "h2"])
                slowest_s = max(slowest_s, time.monotonic() - t0)
                assert listed(s, MOVIE, "127.22.9.9") == ("BGP", ["h2", "h1"])
                assert listed(s, "only-x.mp4", "127.47.1.1") == ("BGP", ["x-default"])
                time.sleep(0.1)
            wait_for(lambda: health(s, AUTH)["rounds"] >= rounds + 3, 20, "three more polling rounds")
            doc = settled()
            assert doc is not None, health(s, AUTH)["by_appliance"]
            assert doc["status"] == "degraded" and doc["tasks_down"] == {}
            assert doc["serving"] == 3
            # The default route was dropped and counted; its allowed prefix was kept.
            x = doc["by_appliance"]["x-default"]
            assert x["routes"] == 1 and x["routes_dropped"] == 2 and set(x["dropped_examples"]) == {"0.0.0.0/0", "::/0"}
            # Nobody else is captured by it.
            assert listed(s, MOVIE, "127.99.1.1")[0] != "BGP"
            # The failures are in the log, once per reason.
            log = s.log.read_text(errors="replace")
            for aid in expected_down:
                assert f"appliance {aid}: poll failed" in log
            metrics = get(f"{s.base}/metrics", headers=AUTH)
            families = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
            dropped = {x.labels["appliance"]: x.value for x in families["steering_routes_dropped"].samples}
            assert dropped["x-default"] == 2 and dropped["h1"] == 0
            failures = {x.labels["appliance"]: x.value for x in families["steering_appliance_poll_failures"].samples}
            assert all(failures[aid] >= 2 for aid in expected_down) and failures["h1"] == 0
            tasks = {x.labels["task"]: x.value for x in families["steering_task_failures"].samples if x.name.endswith("_total")}
            assert tasks == {"poller": 0, "table-keeper": 0, "manifest-keeper": 0}
        # Control endpoints need the token, even from loopback; the player's paths do not.
        assert get(f"{s.base}/health").status == 403
        assert get(f"{s.base}/metrics").status == 403
        assert get(f"{s.base}/").status == 403
        assert s.steer(MOVIE, "127.21.3.4").status == 200
    elapsed = time.monotonic() - started
    print(f"\nsteering peak RSS with {len(hostile)} hostile appliances: {rss.peak / 2**20:.1f} MiB; "
          f"slowest /steer while they were polled: {slowest_s * 1000:.0f} ms; test took {elapsed:.1f} s")
    assert 0 < rss.peak < RSS_LIMIT_BYTES, f"peak RSS {rss.peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------- the numbered defects


def _wait_state(s: Steering, aid: str, state: str, timeout_s: float = 20, headers: dict | None = None) -> None:
    wait_for(lambda: states(s, headers).get(aid) == state, timeout_s, f"{aid} to be {state}")


def test_defect1_a_health_answer_of_the_wrong_shape_takes_that_appliance_down_and_polling_goes_on(tmp_path):
    """Issue 10 #1: `"load": 1` used to end the poller; the appliance stayed up for good."""
    a = Fake("a", "127.0.0.51", "alpha", routes=["127.51.0.0/16"], holds=[MOVIE])
    b = Fake("b", "127.0.0.52", "beta", routes=["127.52.0.0/16"], holds=[MOVIE])
    with running(tmp_path, [a, b], interval_s=0.3, timeout_s=1.0) as (s, fleet):
        _wait_state(s, "a", "up")
        _wait_state(s, "b", "up")
        a.hostile["/health"] = json_answer({"status": "ok", "conditions": [], "load": 1})
        _wait_state(s, "a", "down")
        wait_for(lambda: listed(s, MOVIE, "127.51.0.9")[1] == ["b"], 20, "a out of the answers")
        # The poller still runs: a change on b is seen.
        b.set_routes(["127.52.0.0/16", "127.53.0.0/16"])
        wait_for(lambda: listed(s, MOVIE, "127.53.1.1") == ("BGP", ["b"]), 20, "b's new route in answers")
        # And a comes back when it answers properly again.
        del a.hostile["/health"]
        _wait_state(s, "a", "up")


def test_defect2_a_non_string_prefix_does_not_stop_later_table_builds(tmp_path):
    """Issue 10 #2: one appliance's `7` in /routes used to stop every rebuild, for every appliance."""
    a = Fake("a", "127.0.0.61", "alpha", routes=["127.61.0.0/16"], holds=[MOVIE])
    b = Fake("b", "127.0.0.62", "beta", routes=["127.62.0.0/16"], holds=[MOVIE])
    with running(tmp_path, [a, b], interval_s=0.3, timeout_s=1.0) as (s, fleet):
        _wait_state(s, "a", "up")
        wait_for(lambda: listed(s, MOVIE, "127.62.0.1") == ("BGP", ["b", "a"]), 20, "b's route in answers")
        a.set_routes(["127.61.0.0/16", 7])
        a.set_routes(["127.61.0.0/16", 7, "not-a-prefix"])
        time.sleep(1.0)  # a few rounds with the bad routes
        b.set_routes(["127.62.0.0/16", "127.63.0.0/16"])
        wait_for(lambda: listed(s, MOVIE, "127.63.0.1") == ("BGP", ["b"]), 20, "b's new route in answers")
        assert states(s)["a"] == "down"


def test_defect2_routes_outside_allowed_prefixes_are_dropped_and_over_the_cap_refused(tmp_path):
    """Issue 10 #2: `0.0.0.0/0` from one appliance captured every client; there was no cap."""
    a = Fake("a", "127.0.0.71", "alpha", routes=["0.0.0.0/0", "127.71.0.0/16"], holds=[MOVIE])
    b = Fake("b", "127.0.0.72", "beta", routes=["127.72.0.0/16"], holds=[MOVIE])
    c = Fake("c", "127.0.0.73", "gamma", routes=[f"127.73.{i}.0/24" for i in range(11)], holds=[MOVIE])
    with running(tmp_path, [a, b, c], interval_s=0.3, timeout_s=1.0, extra_health="max_prefixes_per_appliance = 10",
                 extra_appliance={"a": 'allowed_prefixes = ["127.71.0.0/16"]'}) as (s, fleet):
        wait_for(lambda: listed(s, MOVIE, "127.72.0.1") == ("BGP", ["b", "a"]), 20, "a and b up, b's route in the table")
        wait_for(lambda: listed(s, MOVIE, "127.71.0.1")[0] == "BGP", 20, "a's allowed route in the table")
        assert listed(s, MOVIE, "127.99.0.1")[0] != "BGP"  # nobody is captured by a's default route
        result, order = listed(s, MOVIE, "127.71.0.1")
        assert result == "BGP" and order[0] == "a"
        doc = health(s)
        assert doc["by_appliance"]["a"]["routes_dropped"] == 1 and doc["by_appliance"]["a"]["dropped_examples"] == ["0.0.0.0/0"]
        wait_for(lambda: "max_prefixes_per_appliance = 10" in health(s)["by_appliance"]["c"]["last_failure"], 20,
                 "c's 11 routes refused")
        assert states(s)["c"] == "down"
        c.set_routes([f"127.73.{i}.0/24" for i in range(10)])
        _wait_state(s, "c", "up")


def _get_lines(url: str, source: str, headers: list[tuple[str, str]]) -> Reply:
    """GET with header lines exactly as given (repeated names stay separate lines)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=IO_TIMEOUT_S, source_address=(source, 0))
    try:
        conn.putrequest("GET", parts.path + "?" + parts.query)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def test_defect9_every_forwarded_line_is_read_right_to_left(tmp_path):
    """Issue 10 #9: only the first X-Forwarded-For line was read, so the client chose its own address."""
    a = Fake("a", "127.0.0.81", "alpha", routes=["127.81.0.0/16"], holds=[MOVIE])
    b = Fake("b", "127.0.0.82", "beta", routes=["127.82.0.0/16"], holds=[MOVIE])
    proxy = "127.0.0.90"
    with running(tmp_path, [a, b], interval_s=0.3, timeout_s=1.0,
                 extra_server=f'[trust]\nproxies = ["{proxy}/32"]') as (s, fleet):
        wait_for(lambda: listed(s, MOVIE, "127.82.0.1")[0] == "BGP", 20, "b's route in the table")
        # The client forged a line naming a's prefix; the trusted proxy appended its own with the real address.
        r = _get_lines(f"{s.base}/steer?content={MOVIE}", proxy,
                       [("X-Forwarded-For", "127.81.0.1"), ("X-Forwarded-For", "127.82.0.1")])
        assert r.status == 200 and (r.json()["client"], r.json()["client_from"]) == ("127.82.0.1", "x-forwarded-for")
        # A proxy hop written IPv4-mapped is still the trusted proxy.
        r = _get_lines(f"{s.base}/steer?content={MOVIE}", proxy, [("X-Forwarded-For", f"127.82.0.2, ::ffff:{proxy}")])
        assert r.json()["client"] == "127.82.0.2"


def test_defect10_control_endpoints_need_the_token_and_public_paths_do_not(tmp_path):
    """Issue 10 #10: the status page (client addresses), /metrics and /health were open to everyone."""
    a = Fake("a", "127.0.0.91", "alpha", routes=["127.91.0.0/16"], holds=[MOVIE])
    with running(tmp_path, [a], interval_s=0.3, timeout_s=1.0, extra_server=f'control_token = "{TOKEN}"',
                 extra_health='appliance_token = "appliance-token-0123456789"') as (s, fleet):
        _wait_state(s, "a", "up", headers=AUTH)
        assert a.authorization == "Bearer appliance-token-0123456789"  # steering's own polls carry [health] appliance_token
        for path in ("/", "/health", "/metrics", "/nonexistent", "/steer/../health"):
            r = get(f"{s.base}{path}")
            assert r.status == 403 and "control" in r.json()["error"], (path, r.status)
            assert get(f"{s.base}{path}", headers={"Authorization": "Bearer wrong-token-0123456789"}).status == 403
        assert get(f"{s.base}/health", headers=AUTH).status == 200
        assert get(f"{s.base}/", headers=AUTH).status == 200
        assert get(f"{s.base}/steer?content={MOVIE}", "127.91.0.5").status == 200
        r = get(f"{s.base}/content/{MOVIE}", "127.91.0.5")
        assert r.status == 302 and r.headers["location"].startswith(fleet.url(a))


def test_a_reload_during_a_poll_round_leaves_the_removed_appliance_out(tmp_path):
    """A round in flight across a SIGHUP put the appliances the reload removed back into the states, for good."""
    keep = Fake("k", "127.0.0.93", "alpha", routes=["127.93.0.0/16"], holds=[MOVIE])
    gone = Fake("g", "127.0.0.94", "beta", routes=["127.94.0.0/16"], holds=[MOVIE])
    release = threading.Event()

    async def held(request):  # answers once the test has reloaded: the round is in flight across the reload
        while not release.is_set():
            await asyncio.sleep(0.02)
        return web.json_response({**HEALTHY_HEALTH, "appliance": gone.aid, "site": gone.site})

    config = {"interval_s": 0.2, "timeout_s": 5.0}
    with running(tmp_path, [keep, gone], **config) as (s, fleet):
        wait_for(lambda: s.states() == {"k": "up", "g": "up"}, IO_TIMEOUT_S, "both up")
        asked = gone.requests
        gone.hostile["/health"] = held
        wait_for(lambda: gone.requests > asked, IO_TIMEOUT_S, "a round waiting on g")
        n = s.reload_count()
        s.cfg.write_text(steering_config(s.port, fleet, [keep], **config))
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: s.reloaded(n), IO_TIMEOUT_S, "the reload")
        rounds = s.health()["rounds"]
        release.set()
        wait_for(lambda: s.health()["rounds"] >= rounds + 2, IO_TIMEOUT_S, "the held round and one more")
        assert s.health()["appliances"] == 1 and s.states() == {"k": "up"}
