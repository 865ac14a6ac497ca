"""Who may use the control endpoints, seen from a peer that is not loopback (defect 8).

Loopback is always allowed, so the refusal can only be seen from another
address. The test makes a network namespace with a veth interface holding
10.77.0.1/24 and runs a real `oca-server` inside it (`ip netns exec`),
listening on 10.77.0.1 and on 127.0.0.1. A client in the same namespace
that connects to 10.77.0.1 arrives from 10.77.0.1, not from loopback.
Nothing leaves the namespace; it is deleted at the end, whatever happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.test_routes_netns import _netns_unavailable
from tests.support import ROOT, needs_root, write_config

ADDR = "10.77.0.1"
PORT = 18_177


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"oca-ctl-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=15)
    try:
        for cmd in ("ip link set lo up", "ip link add v0 type veth peer name v1", f"ip addr add {ADDR}/24 dev v0",
                    "ip link set v0 up", "ip link set v1 up"):
            subprocess.run(["ip", "netns", "exec", name, *cmd.split()], check=True, timeout=15)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], timeout=15)


def _status(ns: str, host: str, path: str, headers: tuple[str, ...] = ()) -> int:
    args = ["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run([*args, f"http://{host}:{PORT}{path}"], capture_output=True, text=True, timeout=15).stdout
    return int(out or 0)


def _server(ns: str, tmp: Path, server_extra: str) -> tuple[subprocess.Popen, Path]:
    cfg = write_config(tmp, stores=1, listen=[f"{ADDR}:{PORT}", f"127.0.0.1:{PORT}"])
    cfg.write_text(cfg.read_text().replace("[index]", f"workers = 1\n{server_extra}[index]", 1))
    log = open(tmp / "server.log", "ab")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "oca.server.main", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()
    deadline = time.monotonic() + 20
    while _status(ns, "127.0.0.1", "/content/none.bin") != 404:  # serving (the control endpoints may need a token)
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()[-2000:]
        time.sleep(0.1)
    return proc, cfg


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


CONTROL = ("/health", "/inventory", "/routes", "/metrics")


@needs_root("creates a network namespace")
def test_default_opens_control_endpoints_to_loopback_only(netns, tmp_path):
    proc, _ = _server(netns, tmp_path, "")
    try:
        for path in CONTROL:
            assert _status(netns, ADDR, path) == 403, path
            assert _status(netns, "127.0.0.1", path) == 200, path
        assert _status(netns, ADDR, "/content/none.bin") == 404  # content stays public
    finally:
        _stop(proc)


@needs_root("creates a network namespace")
@pytest.mark.parametrize("allow,status", [('["10.77.0.0/24"]', 200), ('["10.78.0.0/16"]', 403), ('["0.0.0.0/0"]', 200), ('["::/0"]', 403)])
def test_control_allow_opens_them_to_listed_networks(netns, tmp_path, allow, status):
    proc, _ = _server(netns, tmp_path, f"control_allow = {allow}\n")
    try:
        for path in CONTROL:
            assert _status(netns, ADDR, path) == status, (allow, path)
    finally:
        _stop(proc)


@needs_root("creates a network namespace")
def test_control_token_is_needed_from_listed_networks_too(netns, tmp_path):
    proc, _ = _server(netns, tmp_path, 'control_allow = ["0.0.0.0/0"]\ncontrol_token = "netns-token-0123456789"\n')
    try:
        assert _status(netns, ADDR, "/health") == 403
        assert _status(netns, ADDR, "/health", ("Authorization: Bearer netns-token-0123456789",)) == 200
        assert _status(netns, "127.0.0.1", "/health") == 403
    finally:
        _stop(proc)
