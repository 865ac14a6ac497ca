"""Deployment artefacts: systemd units, example configs, Prometheus and Grafana files.

Real checks: `systemd-analyze verify` on the units, every example config
loaded by the programs' own loaders, and every dashboard query's metric
names found in live /metrics scrapes of a real appliance and a real
steering service. (Grafana itself cannot be installed here, so the
dashboard is checked against Grafana's dashboard JSON model instead of
being imported.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from oca.config import load_config
from steering.config import coverage_path, load_coverage, load_steering_config
from tests.server_proc import ServerProcess, appliance, free_port, wait_port
from tests.support import ROOT

CONFIGS = ROOT / "configs"
SYSTEMD = ROOT / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    venv_bin = Path(sys.executable).parent
    for unit in SYSTEMD.iterdir():
        text = unit.read_text().replace("/opt/oca/.venv/bin", str(venv_bin))
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    proc = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and "Failed to resolve user" not in line
                and "Failed to resolve group" not in line]
    assert proc.returncode == 0 or not problems, proc.stdout + proc.stderr
    assert not problems, problems


def test_units_carry_what_an_operator_relies_on():
    server = (SYSTEMD / "oca-server.service").read_text()
    for needle in ("Type=notify", "Restart=on-failure", "LimitNOFILE=", "ProtectSystem=strict", "ReadWritePaths=",
                   "NoNewPrivileges=true", "PrivateTmp=true", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                   "ExecReload=/bin/kill -HUP $MAINPID", "User=oca"):
        assert needle in server, needle
    steering = (SYSTEMD / "oca-steering.service").read_text()
    for needle in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure"):
        assert needle in steering, needle
    timer = (SYSTEMD / "oca-fill.timer").read_text()
    assert "OnCalendar=" in timer and "Unit=oca-fill.service" in timer
    assert "Type=oneshot" in (SYSTEMD / "oca-fill.service").read_text()


def test_example_appliance_config_loads(tmp_path):
    text = (CONFIGS / "oca.toml").read_text()
    for old in ("/srv/oca/disk0", "/srv/oca/disk1", "/var/lib/oca"):
        new = tmp_path / old.strip("/").replace("/", "_")
        new.mkdir()
        text = text.replace(old, str(new))
    cfg_path = tmp_path / "oca.toml"
    cfg_path.write_text(text)
    cfg = load_config(str(cfg_path))
    assert len(cfg.stores) == 2
    from fill.config import load_fill_config

    assert load_fill_config(str(cfg_path))[1].window == "02:00-14:00"


def test_example_steering_config_and_coverage_load():
    path = CONFIGS / "steering.toml"
    if not path.exists():
        pytest.skip("configs/steering.toml not written yet")
    cfg = load_steering_config(str(path))
    cz = coverage_path(cfg, str(path))
    assert cz is not None
    zones = load_coverage(cz)
    assert zones and all(zones.values())
    assert {a.site for a in cfg.appliances} >= set(cfg.fallback_sites)


def test_example_manifest_parses():
    from fill.manifest import parse_manifest

    m = parse_manifest((CONFIGS / "manifest.example.json").read_text())
    assert m.files and m.sites


def test_prometheus_config_names_both_jobs():
    text = (CONFIGS / "prometheus.yml").read_text()
    assert "job_name: oca-appliance" in text and "job_name: oca-steering" in text
    assert "metrics_path: /metrics" in text


def _dashboard() -> dict:
    return json.loads((CONFIGS / "grafana-dashboard.json").read_text())


def test_dashboard_follows_grafana_model():
    d = _dashboard()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in d, key
    assert isinstance(d["schemaVersion"], int)
    ids = set()
    for p in d["panels"]:
        assert {"id", "type", "title", "gridPos", "targets"} <= set(p), p.get("title")
        assert p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")) and 0 < g["w"] <= 24 and g["x"] + g["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"]


_IDENT = re.compile(r"\b((?:oca|steering)_[a-zA-Z0-9_:]*)")


def dashboard_metric_names() -> set[str]:
    names = set()
    for p in _dashboard()["panels"]:
        for t in p["targets"]:
            found = _IDENT.findall(t["expr"])
            assert found, f"panel {p['title']!r}: no oca/steering metric in {t['expr']!r}"
            names.update(found)
    return names


def scrape_names(url: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            names.add(sample.name)
    return names


def test_every_dashboard_query_names_exported_metrics(tmp_path):
    cfg, host, port = appliance(tmp_path / "a", files={"x.mp4": b"x" * 1000}, host="127.0.0.31",
                                extra="[routes]\nstatic = [\"127.9.0.0/16\"]\n")
    cfg.write_text(cfg.read_text().replace("[appliance]\n", "[appliance]\nnic_capacity_mbps = 10000\n", 1))
    sport = free_port("127.0.0.32")
    scfg = tmp_path / "steering.toml"
    scfg.write_text(
        f'[server]\nlisten = ["127.0.0.32:{sport}"]\n'
        f'[[appliances]]\nid = "oca-test-1"\nurl = "http://{host}:{port}"\nsite = "site-a"\n'
        "[health]\ninterval_s = 0.3\n"
    )
    with ServerProcess(cfg, host, port):
        proc = subprocess.Popen([sys.executable, "-m", "steering.cli", "--config", str(scfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port("127.0.0.32", sport)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # let the parent sample load once and steering decide once
                try:  # 503 (NO_CANDIDATES) until steering has polled the appliance twice
                    urllib.request.urlopen(f"http://127.0.0.32:{sport}/steer?content=x.mp4", timeout=5).read()
                except urllib.error.HTTPError as exc:
                    assert exc.code == 503

                time.sleep(0.5)
                names = scrape_names(f"http://{host}:{port}/metrics") | scrape_names(f"http://127.0.0.32:{sport}/metrics")
                if dashboard_metric_names() <= names:
                    break
        finally:
            proc.terminate()
            proc.wait(10)
    missing = dashboard_metric_names() - names
    assert not missing, f"dashboard queries name metrics nobody exports: {sorted(missing)}"
