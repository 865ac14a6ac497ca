"""Operational features of oca-server not covered elsewhere: connection cap,
pid file, JSON access log, workers dying with their parent. Real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.server_proc import ServerProcess, appliance


def _metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    raise KeyError(name)


def _wait(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_connections_beyond_max_connections_are_refused(tmp_path):
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a" * 100}, workers=1, extra_server="max_connections = 16\n")
    with ServerProcess(cfg, host, port) as srv:
        _wait(lambda: "1/1 workers" in srv.log_text(), 20, "the worker")
        held = []
        try:
            for _ in range(16):  # fill the cap with connections that made one request
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(b"GET /content/a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
                held.append(s)
            extra = socket.create_connection((host, port), timeout=5)
            extra.sendall(b"GET /content/a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = extra.recv(4096)
            except ConnectionResetError:
                got = b""
            assert got == b"", got[:80]  # closed at once, no answer
            extra.close()
        finally:
            for s in held:
                s.close()
        # With the held connections gone, the cap frees up and the refusal was counted.
        _wait(lambda: _try_get(srv.base + "/content/a.bin"), 10, "a free slot")
        assert _metric(srv.base, "oca_http_rejected_connections_total") >= 1


def _try_get(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def test_pid_file_and_json_access_log(tmp_path):
    pid_file = tmp_path / "oca.pid"
    log_file = tmp_path / "access.json"
    cfg, host, port = appliance(
        tmp_path, files={"a.mp4": b"x" * 5000},
        extra_server=f'pid_file = "{pid_file}"\naccess_log = "{log_file}"\naccess_log_format = "json"\n',
    )
    with ServerProcess(cfg, host, port) as srv:
        _wait(pid_file.exists, 10, "the pid file")
        assert int(pid_file.read_text()) == srv.proc.pid
        req = urllib.request.Request(srv.base + "/content/a.mp4", headers={"Range": "bytes=0-99", "User-Agent": 'quote" agent'})
        assert urllib.request.urlopen(req, timeout=5).status == 206
        _wait(lambda: log_file.exists() and log_file.read_text().strip(), 5, "the log line (flushed each second)")
        line = json.loads(log_file.read_text().splitlines()[-1])
        assert line["status"] == 206 and line["body_bytes_sent"] == 100 and line["uri"] == "/content/a.mp4"
        assert line["user_agent"] == 'quote" agent' and line["method"] == "GET"
    assert not pid_file.exists()


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a"})
    srv = ServerProcess(cfg, host, port).start()
    workers: list[int] = []
    try:
        _wait(lambda: len(srv.worker_pids()) == 2, 20, "two workers")
        workers = srv.worker_pids()
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(5)

        def state(pid: int) -> str:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    return fh.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return "gone"

        def gone() -> bool:  # exited: reaped, or a zombie waiting for init
            return all(state(pid) in ("gone", "Z") for pid in workers)

        _wait(gone, 10, "the orphaned workers to exit")
    finally:
        for pid in workers:  # never leave an orphan behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        srv.stop()
