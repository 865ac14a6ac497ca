"""Steering over a small simulated fleet: decisions equal the brute-force oracle, and two replicas agree.

The fleet and the simulator are `benchmarks/fleet.py`'s (the same code the
fleet benchmark measures with), at N = 40: a real simulator process serving
40 appliances under their own base URLs with the appliance's own inventory
and routes builders, and two real `oca-steering` processes, each on its
own port with its own poller and nothing shared. Churn runs until it is
frozen; then, after two more rounds on each replica, sampled decisions of
both replicas are compared with each other and with the oracle over the
simulator's truth (every prefix length probed in a dict, holdings as
arrays and sets, `ranking.decide` for the order).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
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
                              interval=0.5, timeout=3.0, fail_after=2)
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
        for r in range(2):
            port = free_port()
            cfg = tmp / f"steering-{r}.toml"
            steering_toml(fleet, cfg, port, [(0, N, sim_port)], args)
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
        yield fleet, replicas, truth
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


def test_decisions_equal_the_brute_force_oracle(fleet_run):
    fleet, replicas, truth = fleet_run
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
    fleet, replicas, _ = fleet_run
    rng = random.Random(6)
    samples = list(zip(sample_clients(fleet, SAMPLES, rng), [popular(fleet, rng) for _ in range(SAMPLES)]))
    first = [replicas[0].steer(c, cid) for c, cid in samples]
    second = [replicas[1].steer(c, cid) for c, cid in samples]
    assert first == second
