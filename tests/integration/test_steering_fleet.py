"""Steering over a small simulated fleet: decisions equal the brute-force oracle, two replicas agree, a restart answers at once.

The fleet and the simulator are `benchmarks/fleet.py`'s (the same code the
fleet benchmark measures with), at N = 40: a real simulator process serving
40 appliances under their own base URLs with the appliance's own inventory
and routes builders, and two real `oca-steering` processes, each on its
own port with its own poller and nothing shared; the second answers from
two worker processes (`[server] workers = 2`) that follow its poller's
snapshot. Churn runs until it is
frozen; then, after two more rounds on each replica, sampled decisions of
both replicas are compared with each other and with the oracle over the
simulator's truth (every prefix length probed in a dict, holdings as
arrays and sets, `ranking.decide` for the order).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.fleet import Client, address_in, load_fleet, oracle, popular, sample_clients, steering_toml
from tests.server_proc import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
N = 40
SAMPLES = 400


def wait_for(what, fn, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    args = argparse.Namespace(appliances=N, seed=3, files=3000, prefixes=400, cache_dir=str(tmp / "cache"),
                              interval=0.5, timeout=6.0, fail_after=2)
    fleet = load_fleet(args)
    sim_port = free_port()
    procs = []
    logs = []
    clients = []

    def log(name):
        logs.append(open(tmp / name, "w"))
        return logs[-1]

    try:
        sim = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "fleet.py"), "--simulate", f"0:{N}", "--port", str(sim_port),
                                "--appliances", str(N), "--seed", "3", "--files", "3000", "--prefixes", "400", "--cache-dir", args.cache_dir],
                               stderr=log("sim.log"))
        procs.append(sim)
        wait_port("127.0.0.1", sim_port, 30)
        replicas = []
        configs = []
        for r in range(2):
            port = free_port()
            cfg = tmp / f"steering-{r}.toml"
            # Replica 0 keeps a snapshot (test_restart_answers_from_the_snapshot_at_once); replica 1 answers
            # from two worker processes that follow its poller's snapshot, written after every round.
            args.snapshot, args.snapshot_interval, args.workers = (
                (str(tmp / "steering.snapshot"), 1, 1) if r == 0 else (str(tmp / "steering-1.snapshot"), 0.1, 2))
            steering_toml(fleet, cfg, port, [(0, N, sim_port)], args)
            configs.append(cfg)
            procs.append(subprocess.Popen([sys.executable, "-m", "steering.cli", "--config", str(cfg)], cwd=ROOT,
                                          stderr=log(f"steering-{r}.log")))
            wait_port("127.0.0.1", port, 30)
            replicas.append(Client(port))
            clients.append(replicas[-1])
        for c in replicas:
            wait_for("every appliance up", lambda c=c: c.json("/health")["serving"] == N, 30)
        time.sleep(1.5)  # some churn (1 appliance a second changes its inventory)
        sim_ctl = Client(sim_port)
        clients.append(sim_ctl)
        sim_ctl.get("/_ctl/freeze")
        for c in replicas:
            rounds = c.json("/health")["rounds"]
            wait_for("two rounds after the freeze", lambda c=c, rounds=rounds: c.json("/health")["rounds"] >= rounds + 2, 30)
        truth = sim_ctl.json("/_ctl/truth")
        yield Run(fleet, replicas, truth, sim, procs, configs, log, tmp)
    finally:
        for c in clients:
            c.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs:
            f.close()


@dataclass
class Run:
    fleet: object
    replicas: list
    truth: dict
    sim: subprocess.Popen
    procs: list
    configs: list
    log: object
    tmp: Path


def test_decisions_equal_the_brute_force_oracle(fleet_run):
    fleet, replicas, truth = fleet_run.fleet, fleet_run.replicas, fleet_run.truth
    assert any(t["added"] for t in truth.values()), "churn changed no inventory: the test would not see deltas"
    rng = random.Random(5)
    samples = list(zip(sample_clients(fleet, SAMPLES, rng), [popular(fleet, rng) for _ in range(SAMPLES)]))
    # And the files the churn added and removed, asked from inside their appliance's site.
    for i, t in truth.items():
        site = fleet.site_of[int(i)]
        if fleet.v4[site]:
            client = address_in(*fleet.v4[site][0], 32, rng)
            samples += [(client, fleet.ids[f]) for f in t["added"] + t["removed"]]
    got = [replicas[0].steer(c, cid) for c, cid in samples]
    want = oracle(fleet, truth, samples, 5)
    assert sum(1 for g in got if g) > SAMPLES // 2, "most sampled decisions should list appliances"
    wrong = [(s, g, w) for s, g, w in zip(samples, got, want) if g != w]
    assert not wrong, f"{len(wrong)} of {len(samples)} differ, e.g. {wrong[:3]}"


def test_two_replicas_give_the_same_decisions(fleet_run):
    fleet, replicas = fleet_run.fleet, fleet_run.replicas
    rng = random.Random(6)
    samples = list(zip(sample_clients(fleet, SAMPLES, rng), [popular(fleet, rng) for _ in range(SAMPLES)]))
    first = [replicas[0].steer(c, cid) for c, cid in samples]
    second = [replicas[1].steer(c, cid) for c, cid in samples]
    assert first == second


def test_restart_answers_from_the_snapshot_at_once(fleet_run):
    """kill -9, restart with every appliance unreachable: the same answers at once, marked stale until a full round."""
    run = fleet_run
    client = run.replicas[0]
    frozen_at = time.time()
    wait_for("a snapshot written after the freeze", lambda: (client.json("/health")["snapshot"]["written"] or 0) > frozen_at, 30)
    rng = random.Random(7)
    samples = list(zip(sample_clients(run.fleet, 200, rng), [popular(run.fleet, rng) for _ in range(200)]))
    before = [client.steer(c, cid) for c, cid in samples]
    assert sum(1 for b in before if b) > 100
    os.kill(run.sim.pid, signal.SIGSTOP)  # polls now hang until their timeout: no round can finish
    try:
        old = run.procs[1]
        old.kill()
        old.wait(10)
        started = time.monotonic()
        new = subprocess.Popen([sys.executable, "-m", "steering.cli", "--config", str(run.configs[0])], cwd=ROOT,
                               stderr=run.log("steering-0-restarted.log"))
        run.procs[1] = new
        wait_port("127.0.0.1", client.port, 30)
        health = client.json("/health")
        assert health["snapshot"]["stale"] is True and health["status"] == "degraded" and health["rounds"] == 0
        after = [client.steer(c, cid) for c, cid in samples]
        assert time.monotonic() - started < 6.0, "the answers came after the first poll's timeout, not from the snapshot"
        assert after == before
        status, body = client.get(f"/steer?content={samples[0][1]}&client={samples[0][0]}")
        assert b'"stale": true' in body
    finally:
        os.kill(run.sim.pid, signal.SIGCONT)
    wait_for("the first round after the restart", lambda: client.json("/health")["snapshot"]["stale"] is False, 30)


def test_workers_share_the_port_and_do_not_poll(fleet_run):
    """Replica 1's answers come from two worker processes; only its poller process polls."""
    port = fleet_run.replicas[1].port
    pids = set()
    for _ in range(40):
        c = Client(port)  # a new connection each time: SO_REUSEPORT spreads connections, not requests
        try:
            pids.add(c.json("/health")["pid"])
        finally:
            c.close()
    assert len(pids) == 2
    poller = fleet_run.procs[2].pid
    assert poller not in pids
    log = (fleet_run.tmp / "steering-1.log").read_text()
    assert log.count("worker serving on") == 2 and "polling 40 appliances for 2 workers" in log
