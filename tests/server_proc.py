"""Start a real `oca-server` process on loopback for tests, and stop it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import ROOT, admin, write_config

_next_port = [20000 + (os.getpid() % 200) * 50]
# Every port handed out, with the pid of the pytest process that took it.
# Parallel pytest workers (and any other test run on the box) pick ports in
# overlapping ranges, and a port is only bound seconds after it is chosen
# (configs written, titles ingested), so a bind check alone lets two
# processes take the same port. A port stays taken while its pid lives.
PORTS_TAKEN = Path(tempfile.gettempdir()) / "oca-test-ports"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host` and handed to no other live test process (below the kernel's ephemeral range)."""
    with open(PORTS_TAKEN.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            taken: dict[int, int] = {}
            with contextlib.suppress(FileNotFoundError):
                for line in PORTS_TAKEN.read_text().split():
                    port_s, _, pid_s = line.partition(":")
                    if port_s.isdigit() and pid_s.isdigit():
                        taken[int(port_s)] = int(pid_s)
            live = {pid for pid in set(taken.values()) if pid == os.getpid() or _alive(pid)}
            taken = {port: pid for port, pid in taken.items() if pid in live}
            while True:
                _next_port[0] += 1
                if _next_port[0] >= 32000:
                    _next_port[0] = 20001
                port = _next_port[0]
                if port in taken:
                    continue
                with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                    try:
                        s.bind((host, port))
                    except OSError:
                        continue
                taken[port] = os.getpid()
                tmp = PORTS_TAKEN.with_suffix(f".{os.getpid()}")
                tmp.write_text("".join(f"{p}:{pid}\n" for p, pid in sorted(taken.items())))
                os.replace(tmp, PORTS_TAKEN)
                return port
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class ServerProcess:
    """`with ServerProcess(cfg_path, host, port) as srv:` — a real oca-server parent."""

    def __init__(self, config: Path, host: str, port: int, env: dict | None = None, log: Path | None = None):
        self.config = config
        self.host = host
        self.port = port
        self.env = env
        self.log_path = log or config.parent / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oca.server.main", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(self.env or {})},
        )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"server did not start: {self.log_path.read_text()[-2000:]}")
        return self

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in self.worker_pids():
                    os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def appliance(tmp: Path, *, files: dict[str, bytes] | None = None, extra_server: str = "", extra: str = "",
              event_loop: str = "uvloop", workers: int = 2, host: str = "127.0.0.1", stores: int = 2,
              appliance_id: str = "oca-test-1", site: str = "site-a") -> tuple[Path, str, int]:
    """Write a config (with a [server] port of its own), ingest `files`; returns (config, host, port)."""
    port = free_port(host)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server_extra = f'event_loop = "{event_loop}"\nworkers = {workers}\n' + extra_server
    cfg = write_config(tmp, stores=stores, listen=[listen], appliance_id=appliance_id, site=site, extra=extra)
    text = cfg.read_text().replace("[index]", server_extra + "[index]", 1)
    cfg.write_text(text)
    for content_id, data in (files or {}).items():
        src = tmp / f"src-{content_id}"
        src.write_bytes(data)
        admin(cfg, "ingest", str(src), "--id", content_id, check=True)
    return cfg, host, port


def wait_until(pred, timeout_s: float, what: str) -> None:
    """Poll `pred` every 50 ms until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
