"""A real nginx on loopback for tests and benchmarks: its own config, pid and logs.

    with NginxOrigin(root_dir, port) as origin:
        urlopen(origin.url("files/a.bin"))

Rules kept here:
- nginx runs in the foreground (`daemon off`) as a child of the caller, with
  one worker, `sendfile on` and every path it writes (pid, error log, temp
  paths, the optional access log) inside a temporary directory of its own;
  nothing under /etc/nginx or /var/log/nginx is read or written (`-e` points
  the start-up error log there too).
- The access log is off unless asked for. When on, each line records what
  a fill test needs to count: bytes sent (`$bytes_sent`, headers included,
  and `$body_bytes_sent`), the `Range` and `If-Range` asked for, the status,
  and when the request ended and how long it took (so overlaps can be
  computed). nginx writes a line when the request ends, including when the
  client vanished mid-body.
- Stop is SIGQUIT (graceful), then SIGTERM, then SIGKILL, each bounded.
- When run as root the worker runs as root too: pytest's temp dirs are 0700.
- `nginx_unavailable_reason()` says why tests must be skipped (no nginx on PATH).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# One line per request, space separated; the quoted fields may hold spaces.
LOG_FORMAT = (
    '$msec $request_time $status $bytes_sent $body_bytes_sent $connection '
    '"$request_method" "$uri" "$http_range" "$http_if_range"'
)


def nginx_unavailable_reason() -> str | None:
    if shutil.which("nginx") is None:
        return "nginx is not on PATH (install nginx-light to run the origin tests)"
    return None


@dataclass(frozen=True, slots=True)
class AccessEntry:
    """One request as nginx logged it."""

    ended_s: float
    duration_s: float
    status: int
    bytes_sent: int  # headers and body
    body_bytes_sent: int
    connection: int
    method: str
    uri: str
    range: str  # "" when absent
    if_range: str

    @property
    def started_s(self) -> float:
        return self.ended_s - self.duration_s

    @property
    def range_start(self) -> int:
        """The first byte asked for (0 without a Range header; only 'bytes=N-' forms)."""
        if not self.range.startswith("bytes="):
            return 0
        first = self.range[6:].split("-", 1)[0]
        return int(first) if first.isdigit() else 0


def parse_access_line(line: str) -> AccessEntry:
    # nginx escapes '"' inside variables as \x22, so splitting on quotes is safe.
    ended, duration, status, sent, body, conn, method, uri, rng, if_range = shlex.split(line)
    return AccessEntry(
        float(ended), float(duration), int(status), int(sent), int(body), int(conn),
        method, uri, "" if rng == "-" else rng, "" if if_range == "-" else if_range,
    )


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NginxOrigin:
    """A foreground nginx serving `root_dir` on 127.0.0.1:`port` until exit."""

    def __init__(self, root_dir: str | os.PathLike, port: int, *, access_log: bool = False, workers: int = 1,
                 sndbuf: int | None = None, extra_http: str = ""):
        self.root_dir = Path(root_dir).resolve()
        self.port = port
        self.access_log_enabled = access_log
        self.workers = workers
        self.sndbuf = sndbuf
        self.extra_http = extra_http
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._out = None

    # ------------------------------------------------------------ paths

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, relpath: str) -> str:
        return f"{self.base}/{relpath.lstrip('/')}"

    @property
    def access_log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "access.log"

    @property
    def error_log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "error.log"

    # ------------------------------------------------------------ config

    def config_text(self) -> str:
        assert self.dir is not None
        d = self.dir
        user = "user root root;\n" if os.geteuid() == 0 else ""
        access = f"log_format fill '{LOG_FORMAT}';\n    access_log {d / 'access.log'} fill;" if self.access_log_enabled else "access_log off;"
        listen_opts = f" sndbuf={self.sndbuf}" if self.sndbuf else ""
        return f"""{user}daemon off;
worker_processes {self.workers};
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;
events {{
    worker_connections 1024;
}}
http {{
    {access}
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {d / 'tmp-body'};
    proxy_temp_path {d / 'tmp-proxy'};
    fastcgi_temp_path {d / 'tmp-fastcgi'};
    uwsgi_temp_path {d / 'tmp-uwsgi'};
    scgi_temp_path {d / 'tmp-scgi'};
    {self.extra_http}
    server {{
        listen 127.0.0.1:{self.port}{listen_opts};
        root {self.root_dir};
        location / {{ }}
    }}
}}
"""

    # ------------------------------------------------------------ life cycle

    def start(self, timeout_s: float = 10.0) -> "NginxOrigin":
        reason = nginx_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="oca-test-nginx-"))
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config_text())
        self._out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.dir), "-e", str(self.error_log_path), "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start on port {self.port}: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGQUIT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    proc.send_signal(sig)
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if self._out is not None:
            self._out.close()
            self._out = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "NginxOrigin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------ logs

    def log_tail(self, n: int = 2000) -> str:
        out = []
        for path in (self.dir / "stdout.log", self.dir / "error.log") if self.dir else ():
            if path.exists():
                out.append(path.read_text(errors="replace")[-n:])
        return " | ".join(out)

    def access_entries(self) -> list[AccessEntry]:
        """Every request logged so far (needs access_log=True)."""
        if not self.access_log_enabled:
            raise RuntimeError("NginxOrigin(access_log=True) is needed to read the access log")
        try:
            text = self.access_log_path.read_text()
        except FileNotFoundError:
            return []
        return [parse_access_line(line) for line in text.splitlines() if line.strip()]

    def wait_idle(self, uri_prefix: str = "/", settle_s: float = 0.3, timeout_s: float = 10.0) -> list[AccessEntry]:
        """Access entries once the log has stopped growing for `settle_s` (requests ended)."""
        deadline = time.monotonic() + timeout_s
        last = -1
        stable_since = time.monotonic()
        while True:
            size = self.access_log_path.stat().st_size if self.access_log_path.exists() else 0
            now = time.monotonic()
            if size != last:
                last, stable_since = size, now
            elif now - stable_since >= settle_s or now > deadline:
                return [e for e in self.access_entries() if e.uri.startswith(uri_prefix)]
            time.sleep(0.05)
