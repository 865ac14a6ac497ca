"""The whole system end to end, driven like README's demo (oca.demo.DemoSystem).

Real processes throughout: nginx as origin, three oca-server appliances in
two sites on 127.0.0.11-13, oca-steering, oca-fill runs and a player that
asks steering and fetches ranges. Bounded in time: every wait has a deadline.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oca.demo import NEW_TITLE, TITLES, DemoSystem, Playback
from tests.server_proc import free_port
from tests.support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx is not installed (bash .ci/setup installs it)")


def inventory(node, system) -> set[str]:
    with system.urlopen(node.url + "/inventory", timeout=5) as resp:  # HTTPS, trusting the demo's CA
        return set(json.load(resp)["ids"])


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    s = DemoSystem(work, base_port=free_port("127.0.0.11"))
    try:
        s.prepare()
        s.make_content(use_ffmpeg=False)  # random titles: the same paths, without minutes of encoding
        s.doc = s.publish_manifest()
        s.start_origin()
        for node in s.nodes:
            s.start_appliance(node)
        s.start_steering()
        s.fills = [s.fill(node) for node in s.nodes]
        yield s
    finally:
        s.stop()


def by_id(s: DemoSystem, aid: str):
    return next(n for n in s.nodes if n.appliance_id == aid)


def test_fill_put_every_title_in_each_site(system):
    for r in system.fills:
        assert r["code"] == 0, r["stderr"][-2000:]
        assert r["status"]["files_failed"] == 0
    names = {t[0] for t in TITLES}
    site_a = inventory(by_id(system, "oca-1"), system) | inventory(by_id(system, "oca-2"), system)
    assert site_a == names
    assert inventory(by_id(system, "oca-3"), system) == names  # a site of one holds everything that fits


def test_popular_titles_are_on_more_appliances_than_the_tail(system):
    invs = [inventory(n, system) for n in system.nodes]
    copies = {name: sum(name in inv for inv in invs) for name, _s, _p in TITLES}
    head, tail = TITLES[0][0], TITLES[-1][0]
    assert copies[head] == 3, copies
    assert copies[head] > copies[tail], copies


def test_peer_fill_used_the_site_peer(system):
    # oca-2 filled after oca-1, so shared titles came from its peer, not the origin.
    log = (by_id(system, "oca-2").dir / "fill.log").read_text()
    assert f"from {by_id(system, 'oca-1').url}/" in log, log
    assert by_id(system, "oca-1").url.startswith("https://")  # the demo runs on HTTPS, peers verified with its CA


def test_playback_survives_kill_of_its_appliance(system):
    title = TITLES[0][0]
    expected = next(f["xxh128"] for f in system.doc["files"] if f["id"] == title)
    client = "127.1.0.77"
    first = system.wait_steering(title, client, lambda d: len(d.get("urls", [])) >= 2)
    assert first["result"] == "BGP"
    assert first["urls"][0]["site"] == "site-a"
    victim = by_id(system, first["urls"][0]["appliance"])
    killed = []

    def kill_midway(pb: Playback, offset: int) -> None:
        if not killed and offset >= 2 << 20:
            killed.append(victim.appliance_id)
            system.kill(victim)

    pb = system.play(title, client, chunk=1 << 20, on_range=kill_midway)
    assert killed, "the title was too short to kill its appliance mid-way"
    assert pb.failovers and pb.failovers[0][0].startswith(victim.url)
    assert pb.complete and pb.checksum == expected
    # Steering notices within its hysteresis (fail_after 2 x 0.5 s + timeouts).
    after = system.wait_steering(title, client, lambda d: victim.appliance_id not in [u["appliance"] for u in d["urls"]], 15)
    assert victim.appliance_id not in [u["appliance"] for u in after["urls"]]
    system.start_appliance(victim)
    back = system.wait_steering(title, client, lambda d: d["urls"] and d["urls"][0]["appliance"] == victim.appliance_id, 20)
    assert back["urls"][0]["appliance"] == victim.appliance_id


def test_drain_moves_new_clients_away(system):
    title = TITLES[0][0]
    client = "127.1.0.78"
    first = system.wait_steering(title, client, lambda d: d.get("urls") and d["urls"][0]["site"] == "site-a", 20)
    target = by_id(system, first["urls"][0]["appliance"])
    subprocess.run([str(system.bin / "oca-admin"), "--config", str(target.config), "drain"], check=True, capture_output=True)
    try:
        moved = system.wait_steering(title, client, lambda d: target.appliance_id not in [u["appliance"] for u in d["urls"]], 15)
        assert target.appliance_id not in [u["appliance"] for u in moved["urls"]]
        assert moved["urls"], "a drained appliance must not leave the client with nothing"
        # The drained appliance still serves what it is asked for.
        with system.urlopen(first["urls"][0]["url"], timeout=5) as resp:
            assert resp.status == 200
    finally:
        subprocess.run([str(system.bin / "oca-admin"), "--config", str(target.config), "undrain"], check=True, capture_output=True)


def test_second_fill_after_the_manifest_changed(system):
    removed = TITLES[-1][0]
    titles = tuple(t for t in TITLES if t[0] != removed) + (NEW_TITLE,)
    system.make_content(titles, use_ffmpeg=False)
    system.doc = system.publish_manifest(titles)
    results = [system.fill(node) for node in system.nodes]
    for r in results:
        assert r["code"] == 0, r["stderr"][-2000:]
    invs = {n.appliance_id: inventory(n, system) for n in system.nodes}
    assert all(removed not in inv for inv in invs.values()), invs
    assert NEW_TITLE[0] in invs["oca-3"]
    assert NEW_TITLE[0] in invs["oca-1"] | invs["oca-2"]
    # The new title plays through steering, bytes checked against the manifest.
    expected = next(f["xxh128"] for f in system.doc["files"] if f["id"] == NEW_TITLE[0])
    # Until steering's next inventory poll it may only know the copy in site-a (FALLBACK).
    doc = system.wait_steering(NEW_TITLE[0], "127.2.0.9", lambda d: d.get("result") in ("BGP", "COVERAGE_ZONE"), 15)
    assert doc["result"] in ("BGP", "COVERAGE_ZONE")
    pb = system.play(NEW_TITLE[0], "127.2.0.9")
    assert pb.complete and pb.checksum == expected


# ---------------------------------------------------------------- stopping the demo (issue 10, "also found")


DEMO_FLAGS = ["--random-titles"]  # the same system without minutes of encoding


def _demo_tree(tmp_path: Path, port: int):
    """A real `python -m oca.demo` run up to "The system is running"; returns (process, its descendants, log path)."""
    import psutil

    log = tmp_path / "demo.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "oca.demo", "--dir", str(tmp_path / "demo"), "--port", str(port), "--seconds", "600", *DEMO_FLAGS],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 180
    while b"The system is running" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the demo did not come up in 180 s"
        time.sleep(0.2)
    tree = psutil.Process(proc.pid).children(recursive=True)
    names = {p.name() for p in tree}
    assert any("nginx" in n for n in names) and len(tree) >= 9, names  # nginx (2), 3 appliances (3 each), steering
    return proc, tree, log


def _alive(procs) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"])
def test_stopping_the_demo_stops_everything_it_started(tmp_path, sig):
    """Also found (issue 10): SIGTERM or SIGHUP to the demo left nginx, the appliances and steering running.

    SIGTERM and SIGHUP run the demo's teardown; after SIGKILL, which nothing
    can catch, the children stop by themselves (PR_SET_PDEATHSIG).
    """
    port = free_port("127.0.0.11")
    proc, tree, log = _demo_tree(tmp_path, port)
    try:
        proc.send_signal(sig)
        proc.wait(60)
        deadline = time.monotonic() + 45
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(tree)
        assert not left, [(p.pid, p.name()) for p in left]
        if sig != signal.SIGKILL:
            assert proc.returncode == 0
            assert b"stopped everything it started" in log.read_bytes()
    finally:
        for p in _alive(tree):
            try:
                p.kill()
            except Exception:  # noqa: BLE001 - best effort cleanup of a failed test
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
