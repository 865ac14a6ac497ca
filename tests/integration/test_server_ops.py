"""Operational features of oca-server not covered elsewhere: connection cap,
pid file, JSON access log, workers dying with their parent, reloads that
raise `workers` or add stores, failed spawns and supervised loops. Real
processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.server_proc import ServerProcess, appliance, wait_until


def _metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    raise KeyError(name)


def test_connections_beyond_max_connections_are_refused(tmp_path):
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a" * 100}, workers=1, extra_server="max_connections = 16\n")
    with ServerProcess(cfg, host, port) as srv:
        wait_until(lambda: "1/1 workers" in srv.log_text(), 20, "the worker")
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
        wait_until(lambda: _try_get(srv.base + "/content/a.bin"), 10, "a free slot")
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
        wait_until(pid_file.exists, 10, "the pid file")
        assert int(pid_file.read_text()) == srv.proc.pid
        req = urllib.request.Request(srv.base + "/content/a.mp4", headers={"Range": "bytes=0-99", "User-Agent": 'quote" agent'})
        assert urllib.request.urlopen(req, timeout=5).status == 206
        wait_until(lambda: log_file.exists() and log_file.read_text().strip(), 5, "the log line (flushed each second)")
        line = json.loads(log_file.read_text().splitlines()[-1])
        assert line["status"] == 206 and line["body_bytes_sent"] == 100 and line["uri"] == "/content/a.mp4"
        assert line["user_agent"] == 'quote" agent' and line["method"] == "GET"
    assert not pid_file.exists()


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a"})
    srv = ServerProcess(cfg, host, port).start()
    workers: list[int] = []
    try:
        wait_until(lambda: len(srv.worker_pids()) == 2, 20, "two workers")
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

        wait_until(gone, 10, "the orphaned workers to exit")
    finally:
        for pid in workers:  # never leave an orphan behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        srv.stop()


# ---------------------------------------------------------------- reloads, spawning and supervision (issue 10)


def _health(base: str) -> dict:
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _task_failures(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    return {s.labels["task"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == "oca_task_failures_total"}


def _set_server_key(cfg, key: str, value: str) -> None:
    lines = cfg.read_text().splitlines()
    out, done = [], False
    for line in lines:
        if line.startswith(f"{key} ="):
            line, done = f"{key} = {value}", True
        out.append(line)
    if not done:
        out.insert(out.index("[index]"), f"{key} = {value}")
    cfg.write_text("\n".join(out) + "\n")


def test_reload_after_raising_workers_accepts_later_reloads(tmp_path):
    """Defect 13: once a reload raised `workers`, every later SIGHUP was refused."""
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a" * 100}, workers=2)
    with ServerProcess(cfg, host, port) as srv:
        wait_until(lambda: len(srv.worker_pids()) == 2, 20, "two workers")
        _set_server_key(cfg, "workers", "4")
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "replacing 2 workers with 4" in srv.log_text(), 20, "the first reload")
        wait_until(lambda: len(srv.worker_pids()) == 4, 30, "four workers")
        _set_server_key(cfg, "workers", "3")
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "replacing 4 workers with 3" in srv.log_text() or "refused" in srv.log_text(), 20, "the second reload")
        assert "refused" not in srv.log_text(), srv.log_text()[-2000:]
        wait_until(lambda: len(srv.worker_pids()) == 3, 30, "three workers")
        with urllib.request.urlopen(f"http://{host}:{port}/content/a.bin", timeout=5) as resp:
            assert resp.read() == b"a" * 100


def test_store_added_by_a_reload_is_initialised_and_served(tmp_path):
    """Defect 22: a store added to the config by a reload was never initialised (workers saw it failed)."""
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a"}, stores=1)
    base = f"http://{host}:{port}"
    new_store = tmp_path / "added-store"
    new_store.mkdir()
    with ServerProcess(cfg, host, port) as srv:
        wait_until(lambda: len(srv.worker_pids()) == 2, 20, "two workers")
        assert [s["state"] for s in _health(base)["stores"]] == ["ok"]
        cfg.write_text(cfg.read_text() + f'\n[[stores]]\npath = "{new_store}"\n')
        srv.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "replacing 2 workers with 2" in srv.log_text(), 20, "the reload")
        wait_until(lambda: len(_health(base)["stores"]) == 2 and len(srv.worker_pids()) == 2, 30, "workers with two stores")
        doc = _health(base)
        assert [s["state"] for s in doc["stores"]] == ["ok", "ok"], doc["stores"]
        assert doc["status"] == "ok", doc["conditions"]


def test_a_failing_worker_sweep_is_restarted_and_shown_in_health(tmp_path):
    """Defect 22 and rule 2: the worker's sweep loop had no guard; one exception ended it silently.

    The sweep cannot be made to raise from outside, so the worker reads a
    test-only fault switch (OCA_TEST_FAULT_SWEEP, a file that makes each
    sweep raise while it exists); everything else is the real server.
    """
    fault = tmp_path / "sweep-fault"
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a"}, workers=1)
    base = f"http://{host}:{port}"
    with ServerProcess(cfg, host, port, env={"OCA_TEST_FAULT_SWEEP": str(fault)}) as srv:
        wait_until(lambda: len(srv.worker_pids()) == 1, 20, "the worker")
        assert _health(base)["status"] == "ok"
        fault.touch()
        wait_until(lambda: _health(base)["status"] == "degraded", 10, "/health to say degraded")
        reasons = [c["reason"] for c in _health(base)["conditions"]]
        assert any("task sweep is down" in r and "RuntimeError" in r for r in reasons), reasons
        assert _task_failures(base)["worker.sweep"] >= 1
        assert "task sweep failed" in srv.log_text() and "Traceback" in srv.log_text()
        fault.unlink()
        wait_until(lambda: _health(base)["status"] == "ok", 20, "/health to recover once the sweep runs again")
        assert len(srv.worker_pids()) == 1  # the worker itself never died


def _fake_venv(tmp_path, real_venv: str) -> str:
    """An interpreter path that the test can remove and restore: a copy of python in a venv-shaped dir."""
    root = tmp_path / "venv"
    (root / "bin").mkdir(parents=True)
    os.symlink(os.path.join(real_venv, "lib"), root / "lib")
    shutil.copy2(os.path.join(real_venv, "pyvenv.cfg"), root / "pyvenv.cfg")
    python = root / "bin" / "python"
    shutil.copy2(os.path.realpath(sys.executable), python)
    return str(python)


def test_a_failed_spawn_leaves_the_parent_serving_and_is_retried(tmp_path):
    """Defect 22: an OSError from spawning a worker (here: the interpreter is gone) killed the parent."""
    from tests.support import ROOT

    python = _fake_venv(tmp_path, os.path.dirname(os.path.dirname(sys.executable)))
    cfg, host, port = appliance(tmp_path, files={"a.bin": b"a"}, workers=2)
    base = f"http://{host}:{port}"
    log = open(tmp_path / "server.log", "ab")
    proc = subprocess.Popen([python, "-m", "oca.server.main", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    workers: list[int] = []
    try:
        wait_until(lambda: len(_children(proc.pid)) == 2, 20, "two workers")
        wait_until(lambda: _health(base)["status"] == "ok", 10, "health")
        os.rename(python, python + ".away")
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _health_or_reset(base) == "degraded", 10, "/health to name the failed spawn")
        reasons = [c["reason"] for c in _health(base)["conditions"]]
        assert any("task spawn is down in the parent" in r for r in reasons), reasons
        assert proc.poll() is None, "the parent died"
        assert len(_children(proc.pid)) == 1
        with urllib.request.urlopen(base + "/content/a.bin", timeout=5) as resp:
            assert resp.read() == b"a"
        os.rename(python + ".away", python)
        wait_until(lambda: len(_children(proc.pid)) == 2, 40, "the worker to be spawned again")
        wait_until(lambda: _health(base)["status"] == "ok", 10, "/health to recover")
        assert _task_failures(base)["parent"] >= 1
    finally:
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _health_or_reset(base: str) -> str:
    """A request queued on the dead worker's socket when its respawn fails is reset (unless
    net.ipv4.tcp_migrate_req moves it to the live worker's socket): the parent takes that
    socket out of service so later connections reach the live worker."""
    try:
        return _health(base)["status"]
    except ConnectionResetError:
        return "reset"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]
