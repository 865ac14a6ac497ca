"""The access log loses no line on SIGUSR1, SIGHUP or SIGTERM, and at most
the last second's on kill -9. A real oca-server (1 worker, combined log to
a file), real signals, a real kill -9; lines are counted in the file."""

from __future__ import annotations

import http.client
import os
import signal
import time
from pathlib import Path

from tests.server_proc import ServerProcess, appliance


def _burst(host: str, port: int, n: int) -> None:
    """`n` requests on one keep-alive connection, each answered before the next."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for i in range(n):
            conn.request("GET", "/content/a.bin", headers={"Range": f"bytes={i % 50}-{i % 50 + 9}", "User-Agent": f'agent "{i}"'})
            resp = conn.getresponse()
            assert resp.status == 206 and len(resp.read()) == 10
    finally:
        conn.close()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_lines(path: Path, want: int, within_s: float) -> int:
    deadline = time.monotonic() + within_s
    while True:
        got = _lines(path)
        if got >= want or time.monotonic() >= deadline:
            return got
        time.sleep(0.01)


def _only_worker(srv: ServerProcess, not_pid: int = 0) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = [p for p in srv.worker_pids() if p != not_pid]
        if len(pids) == 1 and "1/1 workers" in srv.log_text():
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no single worker: {srv.worker_pids()}")


def test_access_log_lines_survive_signals_and_kill_9_loses_at_most_the_last_second(tmp_path):
    log = tmp_path / "access.log"
    cfg, host, port = appliance(tmp_path, files={"a.bin": bytes(range(256)) * 4}, workers=1,
                                extra_server=f'access_log = "{log}"\naccess_log_format = "combined"\n')
    srv = ServerProcess(cfg, host, port).start()
    try:
        worker = _only_worker(srv)
        expected = 0
        # Signals that must flush at once: lines buffered in the worker are in
        # the file within 0.3 s, well before the once-a-second sweep would
        # write them (without the flush this fails most of the time).
        for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP):
            _burst(host, port, 100)
            expected += 100
            os.kill(worker, sig)
            assert _wait_lines(log, expected, 0.3) == expected, signal.Signals(sig).name
        # kill -9: everything logged more than a second ago is on disk; only
        # the lines of the last second may be lost.
        _burst(host, port, 100)
        time.sleep(1.5)
        expected += 100
        _burst(host, port, 50)
        os.kill(worker, signal.SIGKILL)
        worker = _only_worker(srv, not_pid=worker)  # the parent restarts it
        got = _lines(log)
        assert expected <= got <= expected + 50
        expected = got
        # SIGTERM: the worker writes what it holds before it exits.
        _burst(host, port, 100)
        expected += 100
    finally:
        code = srv.stop(signal.SIGTERM)
    assert code == 0
    assert _lines(log) == expected
    lines = log.read_text().splitlines()
    # Every line is whole and a quoted user agent stays one field.
    assert all(line.startswith("127.0.0.1 - - [") and line.endswith('"') for line in lines)
    assert lines[-1].endswith('"agent \\"99\\""')
