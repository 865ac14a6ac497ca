#!/usr/bin/env python3
"""Serving benchmark: oca-server against nginx on the same files, same load.

Run: ``.venv/bin/python benchmarks/serve.py [--quick] [--https]
[--profile default|production] [--baseline TREE | --pure-baseline] [--rounds N] [--duration S]
[--connections C] [--idle N] [--hold S] [--dir DIR]``.

Rules kept here:
- Every figure printed is measured in this run; nothing is typed in or
  carried over. Targets are checked and reported PASS/MISS; the exit status
  is 0 either way (non-zero only if the benchmark itself breaks).
- Content: 4 files of random bytes (256 MiB each, 64 MiB with --quick) in a
  temporary directory under ``--dir`` (default /var/tmp). They are ingested
  into an oca appliance with two stores, and the same files are put in an
  nginx root under the same URL path (``/content/<id>``), so one wrk script
  drives both. Both servers get their page cache warmed by reading every
  file they serve once.
- nginx 1.22: its own config in the temp dir (2 workers, sendfile on,
  tcp_nopush on, access_log off, keepalive_requests 100000), run in the
  foreground (``daemon off``) as our child. A second nginx, identical but
  with ``tcp_nopush off`` ("nginx-nocork"), is measured too: with
  tcp_nopush on, nginx 1.22 was seen (strace) to cork and uncork but never
  set TCP_NODELAY, so under Nagle a response ending one small segment past
  a full one (64 KiB + head on loopback's 64 KiB MSS) waits for the
  client's delayed ACK (~40 ms). Targets are reported against both. oca-server: 2 workers,
  uvloop, access log off. Each server on its own loopback port.
- Load: wrk, 1 thread, ``--connections`` connections (64), ``--latency``,
  with a generated Lua script that asks for a random range of fixed length
  (2 MiB, then 64 KiB) of a random file at a random offset. Within a round
  all servers get the same request sequence (same seed); the order rotates
  between rounds because the machine is shared and noisy. Figures come from
  wrk's `done()` hook (exact byte and request counts, latency percentiles in
  microseconds), and the worker processes' CPU time is read from /proc
  around each run. One unmeasured 1 s run per server and workload comes
  first.
- Ratios are oca / nginx, computed per round (the runs of a round are
  seconds apart) and summarised by their median; the ratio of the medians is
  shown too.
- ``--https``: both servers serve HTTPS only, with the same throwaway
  ECDSA P-256 certificate (made with `cryptography` in the temp dir):
  oca with `[tls]` and an empty `[server] listen`, nginx with `listen ssl`,
  `ssl_protocols TLSv1.2 TLSv1.3` and `output_buffers 2 256k`; wrk asks
  for https URLs. The idle-connection test is skipped (it speaks plain
  HTTP), and the targets printed are the plain-HTTP ones.
- Correctness is checked once before the load: a handful of ranges (random,
  first and last bytes, one of 2 MiB) fetched from every server must be 206
  with the same Content-Range and body as the source file, byte for byte.
- Idle connections: ``--idle`` (10,000) keep-alive connections are opened to
  a server, each sends one small range request and reads the response, then
  all stay idle for ``--hold`` seconds; the VmRSS of each worker (children of
  the server's parent, by ``pgrep -P``) is read at the end of the hold. The
  client binds several 127.0.0.x source addresses so ephemeral ports do not
  run short. oca first (the target), then oca-base if any, then nginx for
  reference.
- ``--profile production``: what a real appliance runs. oca with
  `[signing] required`, the access log on (combined, to a file) and its
  metrics (always on), 2 workers; each nginx with `secure_link` (an MD5
  token with expiry, `secure_link_md5 "$secure_link_expires$uri secret"`)
  and `access_log` combined to a file. Each file has one signed URL per
  server (each in its own scheme), reused for all its ranges, as a player
  does. Workloads: 64 KiB ranges, 2 MiB ranges and a player mix (2 MiB and
  96 KiB ranges, one to one, in the same random order for every server).
  Targets are checked against the better nginx of each round, figure by
  figure (higher requests/s or bytes/s, lower p99). The access logs are
  counted after the load: every server must have logged every request.
- ``--baseline TREE``: a second oca ("oca-base") runs the code in TREE (for
  example ``git archive main | tar -x -C TREE``) with its own copy of the
  content, in the same rounds, so before/after figures are measured in the
  same run, alternating. ``--pure-baseline``: oca-base is this tree run
  with OCA_PURE=1 (the pure-Python hot path). A tree with the compiled
  module's source but no build is built first (`benchmarks/compiled.py`);
  each oca's hot path is printed.
- Cleanup (wrk, the servers, idle sockets, the temp dir) runs on normal
  exit, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import compiled

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

MIB = 1 << 20
MB = 1_000_000

# Targets (from the issue).
TARGET_2M_BYTES_RATIO = 0.9  # oca bytes/s ÷ nginx bytes/s, 2 MiB ranges, at least
TARGET_64K_REQS_RATIO = 0.7  # oca req/s ÷ nginx req/s, 64 KiB ranges, at least
TARGET_P99_RATIO = 2.0  # oca p99 ÷ nginx p99, at most (each workload)
TARGET_RSS_MIB = 50.0  # VmRSS of each oca worker holding the idle connections, below
# Production profile (issue 16), against the better nginx of each round.
PROD_64K_REQS_RATIO = 0.9
PROD_64K_P99_RATIO = 1.5
PROD_2M_BYTES_RATIO = 1.0
PROD_MIX_BYTES_RATIO = 1.0

# (name, spans): each request asks for one of `spans`, chosen at random.
DEFAULT_WORKLOADS = (("2 MiB", (2 * MIB,)), ("64 KiB", (64 * 1024,)))
PRODUCTION_WORKLOADS = (("64 KiB", (64 * 1024,)), ("2 MiB", (2 * MIB,)), ("mix", (2 * MIB, 96 * 1024)))
WORKLOADS = DEFAULT_WORKLOADS
PRODUCTION = {"on": False}
SIGN_SECRET = "bench-secret-0123456789"  # oca's HMAC key and nginx's secure_link secret
SIGN_EXPIRY_S = 4102444800  # 2100-01-01: never expires during a run
SOURCE_ADDRS = tuple(f"127.0.0.{i}" for i in range(2, 10))
FILE_COUNT = 4


# ---------------------------------------------------------------- processes and cleanup


class Cleanup:
    """Everything started or created, undone in reverse order by `run()`."""

    def __init__(self) -> None:
        self._first: list[tuple[str, object]] = []  # run first, in order added
        self._actions: list[tuple[str, object]] = []  # then these, last added first

    def add(self, name: str, fn, first: bool = False) -> None:
        (self._first if first else self._actions).append((name, fn))

    def run(self) -> None:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave things behind
        try:
            while self._first or self._actions:
                name, fn = self._first.pop(0) if self._first else self._actions.pop()
                try:
                    fn()  # type: ignore[operator]
                except BaseException as exc:  # keep cleaning, whatever happened
                    print(f"cleanup: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0, children: bool = True) -> None:
    if proc.poll() is not None:
        return
    kids = child_pids(proc.pid) if children else []
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in kids + (child_pids(proc.pid) if children else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(x) for x in out.split())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s: {tail(log)}")


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def raise_nofile(want: int = 200_000) -> int:
    """Raise our open-files limit (children inherit it: each server holds ~10k sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want and os.geteuid() == 0:
        try:
            cap = int(Path("/proc/sys/fs/nr_open").read_text())
            hard = min(want, cap)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids`, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def socket_fds(pid: int) -> int:
    n = 0
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        pass
    return n


# ---------------------------------------------------------------- content and servers


@dataclass
class Content:
    ids: list[str]
    sizes: list[int]
    sources: list[Path]


def make_content(base: Path, size: int) -> Content:
    src = base / "www" / "content"
    src.mkdir(parents=True)
    ids, sizes, paths = [], [], []
    chunk = 16 * MIB
    for i in range(FILE_COUNT):
        content_id = f"bench-{i}.bin"
        path = src / content_id
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(chunk, left)
                fh.write(os.urandom(n))
                left -= n
        ids.append(content_id)
        sizes.append(size)
        paths.append(path)
    return Content(ids, sizes, paths)


TLS: dict = {}  # --https: {"crt": Path, "key": Path, "ca": Path}


def make_certificate(base: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.tlscerts import make_ca, make_leaf

    ca = make_ca(base / "pki")
    crt, key = make_leaf(ca, base / "pki", "leaf", "ecdsa")
    TLS.update(crt=crt, key=key, ca=ca.path)


def write_oca_config(base: Path, port: int) -> Path:
    stores = [base / "store0", base / "store1"]
    for p in stores:
        p.mkdir(exist_ok=True)
    lines = [
        "[appliance]",
        'id = "oca-bench-1"',
        'site = "bench"',
        "[server]",
        f'listen = ["127.0.0.1:{port}"]' if not TLS else "listen = []",
        "workers = 2",
        'event_loop = "uvloop"',
        f'access_log = "{base / "oca-access.log"}"' if PRODUCTION["on"] else 'access_log = ""',
        "max_connections = 16384",
        "shutdown_timeout_s = 5",
        "[index]",
        f'path = "{base / "index"}"',
        "map_size_gb = 1",
    ]
    for p in stores:
        lines += ["[[stores]]", f'path = "{p}"']
    if PRODUCTION["on"]:
        lines += ["[signing]", "required = true", 'key_id = "k1"', "[signing.keys]", f'k1 = "{SIGN_SECRET}"']
    if TLS:
        lines += ["[tls]", f'listen = ["127.0.0.1:{port}"]', f'cert_file = "{TLS["crt"]}"', f'key_file = "{TLS["key"]}"']
    cfg = base / "oca.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def tree_env(tree: Path, pure: bool = False) -> dict:
    return compiled.tree_env(tree, pure)


def ingest(cfg: Path, content: Content, tree: Path = ROOT) -> None:
    for content_id, path in zip(content.ids, content.sources):
        proc = subprocess.run(
            [PY, "-m", "oca.admin", "--config", str(cfg), "ingest", str(path), "--id", content_id],
            capture_output=True, text=True, cwd=tree, timeout=600, env=tree_env(tree),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"oca-admin ingest {content_id} exited {proc.returncode}: {proc.stderr}")


def write_nginx_config(base: Path, name: str, port: int, nopush: bool) -> Path:
    tmp = base / f"{name}-tmp"
    tmp.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""  # files live in a 0700 temp dir
    conf = base / f"{name}.conf"
    if PRODUCTION["on"]:
        logging = f"access_log {base / (name + '-access.log')} combined;"
        location = f"""location /content/ {{
            secure_link $arg_md5,$arg_expires;
            secure_link_md5 "$secure_link_expires$uri {SIGN_SECRET}";
            if ($secure_link = "") {{ return 403; }}
            if ($secure_link = "0") {{ return 410; }}
        }}"""
    else:
        logging = "access_log off;"
        location = "location / { }"
    conf.write_text(
        f"""{user}worker_processes 2;
pid {base / (name + ".pid")};
error_log {base / (name + "-error.log")} warn;
worker_rlimit_nofile 65536;
events {{
    worker_connections 16384;
}}
http {{
    {logging}
    sendfile on;
    tcp_nopush {"on" if nopush else "off"};
    keepalive_requests 100000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096{" ssl" if TLS else ""};
        {f"ssl_certificate {TLS['crt']}; ssl_certificate_key {TLS['key']}; ssl_protocols TLSv1.2 TLSv1.3; output_buffers 2 256k;" if TLS else ""}
        root {base / "www"};
        {location}
    }}
}}
"""
    )
    return conf


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    parent_pid: int = 0  # the process whose children are the workers
    paths: list[str] = field(default_factory=list)  # one URL (path and query) per file, signed in production
    access_log: Path | None = None

    def workers(self) -> list[int]:
        return child_pids(self.parent_pid or self.proc.pid)


def start_nginx(base: Path, name: str, port: int, nopush: bool, cleanup: Cleanup) -> Server:
    conf = write_nginx_config(base, name, port, nopush)
    log = base / f"{name}-error.log"
    out = open(base / f"{name}-stdout.log", "ab")
    proc = subprocess.Popen(
        ["nginx", "-p", str(base), "-e", str(log), "-c", str(conf), "-g", "daemon off;"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    cleanup.add(name, lambda: (stop_process(proc, signal.SIGTERM), out.close()))
    wait_port(port, proc, log)
    srv = Server(name, port, proc, log)
    _wait_workers(srv, 2)
    return srv


def start_oca(base: Path, cfg: Path, port: int, cleanup: Cleanup, name: str = "oca", tree: Path = ROOT, pure: bool = False) -> Server:
    log = base / f"{name}-server.log"
    out = open(log, "ab")
    proc = subprocess.Popen(
        [PY, "-m", "oca.server.main", "--config", str(cfg)],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tree, env=tree_env(tree, pure),
    )
    cleanup.add(name, lambda: (stop_process(proc, signal.SIGTERM, timeout=20), out.close()))
    wait_port(port, proc, log)
    srv = Server(name, port, proc, log)
    _wait_workers(srv, 2)
    # The port answers as soon as the parent has bound it, but each worker's
    # SO_REUSEPORT socket joins only when that worker listens: wrk's
    # keep-alive connections opened before then would all stay on one worker.
    deadline = time.monotonic() + 30
    while " with 2/2 workers" not in tail(log):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: workers not ready: {tail(log)}")
        time.sleep(0.05)
    return srv


def _wait_workers(srv: Server, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(srv.workers()) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{srv.name}: expected {n} workers, found {srv.workers()}")


def oca_paths(content: Content) -> list[str]:
    if not PRODUCTION["on"]:
        return [f"/content/{c}" for c in content.ids]
    sys.path.insert(0, str(ROOT))
    from oca.signing import signed_path

    return [signed_path(c, SIGN_EXPIRY_S, "k1", SIGN_SECRET.encode()) for c in content.ids]


def nginx_paths(content: Content) -> list[str]:
    if not PRODUCTION["on"]:
        return [f"/content/{c}" for c in content.ids]
    out = []
    for c in content.ids:
        uri = f"/content/{c}"
        digest = hashlib.md5(f"{SIGN_EXPIRY_S}{uri} {SIGN_SECRET}".encode()).digest()
        token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        out.append(f"{uri}?md5={token}&expires={SIGN_EXPIRY_S}")
    return out


def count_lines(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def warm(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while True:
                b = fh.read(8 * MIB)
                if not b:
                    break
                total += len(b)
    return total


def store_files(base: Path) -> list[Path]:
    out = []
    for store in ("store0", "store1"):
        for dirpath, _dirs, files in os.walk(base / store):
            for f in files:
                p = Path(dirpath) / f
                if p.is_file() and p.stat().st_size >= MIB:
                    out.append(p)
    return out


# ---------------------------------------------------------------- correctness


def fetch(port: int, path: str, first: int, last: int) -> tuple[int, str | None, bytes]:
    if TLS:
        import ssl

        ctx = ssl.create_default_context(cafile=str(TLS["ca"]))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("localhost", port, timeout=30, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Range": f"bytes={first}-{last}"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Range"), resp.read()
    finally:
        conn.close()


def verify(servers: list[Server], content: Content, rng: random.Random) -> int:
    """Ranges from both servers against the source, byte for byte; returns how many were checked."""
    cases = []
    for i, size in enumerate(content.sizes):
        cases.append((i, 0, 99))
        cases.append((i, size - 1000, size - 1))
    for _ in range(6):
        i = rng.randrange(len(content.ids))
        first = rng.randrange(content.sizes[i] - 70_000)
        cases.append((i, first, first + rng.randrange(1, 70_000)))
    i = rng.randrange(len(content.ids))
    first = rng.randrange(content.sizes[i] - 2 * MIB)
    cases.append((i, first, first + 2 * MIB - 1))
    for i, first, last in cases:
        with open(content.sources[i], "rb") as fh:
            fh.seek(first)
            want = fh.read(last - first + 1)
        want_range = f"bytes {first}-{last}/{content.sizes[i]}"
        for srv in servers:
            status, crange, body = fetch(srv.port, srv.paths[i], first, last)
            if status != 206 or crange != want_range or body != want:
                raise RuntimeError(
                    f"{srv.name}: {srv.paths[i]} bytes={first}-{last}: status {status}, "
                    f"Content-Range {crange!r} (want {want_range!r}), body {'ok' if body == want else f'{len(body)} bytes, differs'}"
                )
    if PRODUCTION["on"]:
        # The signature is really checked: a wrong token is refused by every server.
        for srv in servers:
            bad = srv.paths[0].replace("t=", "t=A", 1).replace("md5=", "md5=A", 1)
            status, _crange, _body = fetch(srv.port, bad, 0, 99)
            if status != 403:
                raise RuntimeError(f"{srv.name}: a bad token got {status}, not 403")
    return len(cases)


# ---------------------------------------------------------------- wrk


LUA = """-- generated by benchmarks/serve.py
local paths = {%(paths)s}
local sizes = {%(sizes)s}
local spans = {%(spans)s}
local n = #paths
local m = #spans
math.randomseed(%(seed)d)

request = function()
    local i = math.random(n)
    local span = spans[math.random(m)]
    local first = math.random(0, sizes[i] - span)
    return wrk.format("GET", paths[i], {["Range"] = "bytes=" .. first .. "-" .. (first + span - 1)})
end

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%%.0f bytes=%%.0f duration_us=%%.0f p50_us=%%.0f p99_us=%%.0f mean_us=%%.1f max_us=%%.0f " ..
        "err_connect=%%.0f err_read=%%.0f err_write=%%.0f err_status=%%.0f err_timeout=%%.0f\\n",
        summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class Run:
    server: str
    workload: str
    round: int
    reqs_s: float
    bytes_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    bytes_per_req: float
    errors: dict
    cpu_us_per_req: float
    cpu_s_per_gb: float
    text: str = ""


def write_lua(base: Path, srv: Server, content: Content, spans: tuple[int, ...], seed: int) -> Path:
    """One script per server (its own URLs), the same request sequence for all (same seed)."""
    script = base / f"ranges-{srv.name}-{'-'.join(map(str, spans))}-{seed}.lua"
    script.write_text(LUA % {
        "paths": ", ".join(f'"{p}"' for p in srv.paths),
        "sizes": ", ".join(str(s) for s in content.sizes),
        "spans": ", ".join(str(s) for s in spans),
        "seed": seed,
    })
    return script


def run_wrk(srv: Server, script: Path, args: argparse.Namespace, workload: str, rnd: int, cleanup_box: list) -> Run:
    cmd = [
        "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "--timeout", "10s",
        "-s", str(script), f"{'https' if TLS else 'http'}://127.0.0.1:{srv.port}/",
    ]
    workers = srv.workers()
    cpu0 = cpu_seconds(workers)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cleanup_box.append(proc)
    try:
        out, _ = proc.communicate(timeout=args.duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cleanup_box.remove(proc)
    cpu1 = cpu_seconds(workers)
    line = next((l for l in out.splitlines() if l.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk against {srv.name} failed ({proc.returncode}):\n{out}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    seconds = f["duration_us"] / 1e6
    requests = int(f["requests"])
    errors = {k[4:]: int(v) for k, v in f.items() if k.startswith("err_") and v}
    non2xx = next((l for l in out.splitlines() if "Non-2xx" in l), None)
    if non2xx:
        errors["non-2xx"] = int(non2xx.split(":")[1])
    cpu = cpu1 - cpu0
    return Run(
        server=srv.name, workload=workload, round=rnd,
        reqs_s=requests / seconds, bytes_s=f["bytes"] / seconds,
        p50_ms=f["p50_us"] / 1000, p99_ms=f["p99_us"] / 1000,
        requests=requests, bytes_per_req=f["bytes"] / max(1, requests), errors=errors,
        cpu_us_per_req=cpu / max(1, requests) * 1e6, cpu_s_per_gb=cpu / max(1e-9, f["bytes"] / 1e9),
        text=out,
    )


# ---------------------------------------------------------------- idle connections


class IdleHolder:
    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []

    async def open(self, port: int, n: int, path: str) -> tuple[int, list[str]]:
        req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-1023\r\n\r\n".encode()
        sem = asyncio.Semaphore(200)
        failures: list[str] = []

        async def one(i: int) -> None:
            async with sem:
                try:
                    r, w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCE_ADDRS[i % len(SOURCE_ADDRS)], 0), limit=1 << 16),
                        20,
                    )
                except (OSError, asyncio.TimeoutError) as exc:
                    failures.append(f"connect: {exc}")
                    return
                self.writers.append(w)
                self.readers.append(r)
                try:
                    w.write(req)
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    await asyncio.wait_for(r.readexactly(length), 20)
                    if not head.startswith(b"HTTP/1.1 206"):
                        failures.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    failures.append(f"request: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(i) for i in range(n)))
        return len(self.writers), failures

    def alive(self) -> int:
        return sum(1 for r, w in zip(self.readers, self.writers) if not r.at_eof() and not w.is_closing())

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        await asyncio.sleep(0)
        self.writers.clear()
        self.readers.clear()


def drop_idle(loop: asyncio.AbstractEventLoop, holders: list[IdleHolder]) -> None:
    """After an interruption: abort the idle connections without running the loop again.

    Running it could re-raise the KeyboardInterrupt stored in an interrupted
    task; the sockets themselves close when the process exits, right after
    the servers are stopped.
    """
    loop.set_exception_handler(lambda _loop, _context: None)  # no "Task was destroyed" noise
    warnings.simplefilter("ignore")  # nor "coroutine ... was never awaited"
    for holder in holders:
        for w in holder.writers:
            try:
                w.transport.abort()
            except Exception:
                pass
        holder.writers.clear()
        holder.readers.clear()
    for task in asyncio.all_tasks(loop):
        task.cancel()


@dataclass
class IdleResult:
    server: str
    opened: int
    failures: list[str]
    alive: int
    open_s: float
    rss_before_mib: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    sockets: list[int] = field(default_factory=list)


async def idle_test(srv: Server, n: int, hold: float, path: str, holder_box: list) -> IdleResult:
    workers = srv.workers()
    before = [vm_rss_kib(p) / 1024 for p in workers]
    holder = IdleHolder()
    holder_box.append(holder)  # if interrupted, `drop_idle` aborts what is open (no await in a finally here)
    t0 = time.monotonic()
    opened, failures = await holder.open(srv.port, n, path)
    open_s = time.monotonic() - t0
    await asyncio.sleep(hold)
    alive = holder.alive()
    rss = [vm_rss_kib(p) / 1024 for p in workers]
    socks = [socket_fds(p) for p in workers]
    await holder.close()
    holder_box.remove(holder)
    return IdleResult(srv.name, opened, failures, alive, open_s, before, rss, socks)


# ---------------------------------------------------------------- report


def fmt_row(label: str, values: list[float], fmt: str, median: float | None = None) -> str:
    med = statistics.median(values) if median is None and values else median
    cells = "".join(f"{fmt.format(v):>10}" for v in values)
    return f"  {label:<28}{cells}{fmt.format(med) if med is not None else '':>12}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(runs: list[Run], idle: list[IdleResult], args: argparse.Namespace, meta: dict, contenders: tuple[str, ...]) -> None:
    rounds = args.rounds
    prod = PRODUCTION["on"]
    print()
    print("=" * 104)
    print(f"oca-server vs nginx, measured {time.strftime('%Y-%m-%d %H:%M:%S')}  ({meta['cmd']}, seed {meta['seed']})")
    print(f"  {meta['cpus']} CPUs, load average at start {meta['load0']}, at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{FILE_COUNT} files x {meta['file_mib']} MiB")
    print(f"  wrk 1 thread, {args.connections} connections, {args.duration}s per run, {rounds} round(s), order rotating each round")
    print(f"  {NGINX}: sendfile on, tcp_nopush on; {NGINX_NOCORK}: the same with tcp_nopush off")
    if prod:
        print("  profile production: oca signing required + access log (combined, file) + metrics; "
              "nginx secure_link (MD5 + expiry) + access_log combined to a file; one signed URL per file")
    print(f"  correctness: {meta['verified']} ranges identical from all servers and the source files")
    for name, hot in meta.get("hot_paths", {}).items():
        print(f"  {name}: hot path {hot}")
    head = "".join(f"{'r' + str(r + 1):>10}" for r in range(rounds))
    # ratios[(workload, reference)][figure] -> per-round ratios; reference "best" is the better nginx per round and figure.
    ratios: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    ocas = [c for c in contenders if c.startswith("oca")]
    for workload, _spans in WORKLOADS:
        print()
        print(f"random {workload} ranges{'':<13}{head}{'median':>12}")
        by = {s: sorted((r for r in runs if r.server == s and r.workload == workload), key=lambda r: r.round) for s in contenders}
        for s in contenders:
            rs = by[s]
            print(f" {s}")
            print(fmt_row("requests/s", [r.reqs_s for r in rs], "{:.0f}"))
            print(fmt_row("MB/s (10^6 bytes)", [r.bytes_s / MB for r in rs], "{:.0f}"))
            print(fmt_row("p50 latency ms", [r.p50_ms for r in rs], "{:.2f}"))
            print(fmt_row("p99 latency ms", [r.p99_ms for r in rs], "{:.2f}"))
            print(fmt_row("worker CPU us/request", [r.cpu_us_per_req for r in rs], "{:.0f}"))
            print(fmt_row("worker CPU s/GB", [r.cpu_s_per_gb for r in rs], "{:.2f}"))
            print(fmt_row("bytes/response", [r.bytes_per_req for r in rs], "{:.0f}"))
            errs = [(r.round + 1, r.errors) for r in rs if r.errors]
            if errs:
                print(f"  errors (round, kind: count): {errs}")
        best = []  # per round: the better nginx for each figure
        for a, b in zip(by[NGINX], by[NGINX_NOCORK]):
            best.append({"reqs_s": max(a.reqs_s, b.reqs_s), "bytes_s": max(a.bytes_s, b.bytes_s),
                         "p50_ms": min(a.p50_ms, b.p50_ms), "p99_ms": min(a.p99_ms, b.p99_ms),
                         "cpu_us_per_req": min(a.cpu_us_per_req, b.cpu_us_per_req)})
        refs = [(NGINX, [vars(r) for r in by[NGINX]]), (NGINX_NOCORK, [vars(r) for r in by[NGINX_NOCORK]]), ("better nginx", best)]
        if "oca-base" in contenders:
            refs.append(("oca-base", [vars(r) for r in by["oca-base"]]))
        for o in ocas:
            for ref, rows in refs:
                if ref == o:
                    continue
                print(f" {o} / {ref} (per round)")
                mine = [vars(r) for r in by[o]]
                pairs = list(zip(rows, mine))
                rr = {key: [m[attr] / n[attr] for n, m in pairs]
                      for key, attr in (("reqs", "reqs_s"), ("bytes", "bytes_s"), ("p50", "p50_ms"), ("p99", "p99_ms"), ("cpu", "cpu_us_per_req"))}
                ratios[(workload, o, ref)] = rr
                print(fmt_row("requests/s ratio", rr["reqs"], "{:.3f}"))
                print(fmt_row("bytes/s ratio", rr["bytes"], "{:.3f}"))
                print(fmt_row("p50 latency ratio", rr["p50"], "{:.3f}"))
                print(fmt_row("p99 latency ratio", rr["p99"], "{:.3f}"))
                print(fmt_row("CPU us/request ratio", rr["cpu"], "{:.3f}"))
    if meta.get("logged"):
        print()
        print("access log lines after the load (every request must have one)")
        for name, (lines, requests) in meta["logged"].items():
            print(f"  {name:<14} {lines:>10} lines for {requests:>10} requests  {verdict(lines >= requests)}")
    if idle:
        print()
        print(f"idle keep-alive connections (one 1 KiB range request each, then idle {args.hold:g}s)")
    for res in idle:
        print(f" {res.server}: opened {res.opened}/{args.idle} in {res.open_s:.1f}s, {res.alive} still open after the hold, "
              f"{len(res.failures)} failures{(' e.g. ' + res.failures[0]) if res.failures else ''}")
        for i, (b, a, s) in enumerate(zip(res.rss_before_mib, res.rss_mib, res.sockets)):
            print(f"   worker {i + 1}: VmRSS {b:.1f} MiB before -> {a:.1f} MiB holding, {s} socket fds")
    print()
    if prod:
        checks = [
            ("64 KiB ranges, req/s", f">= {PROD_64K_REQS_RATIO}", "64 KiB", "reqs", lambda v: v >= PROD_64K_REQS_RATIO),
            ("64 KiB ranges, p99", f"<= {PROD_64K_P99_RATIO}", "64 KiB", "p99", lambda v: v <= PROD_64K_P99_RATIO),
            ("2 MiB ranges, bytes/s", f">= {PROD_2M_BYTES_RATIO}", "2 MiB", "bytes", lambda v: v >= PROD_2M_BYTES_RATIO),
            ("mix, bytes/s", f">= {PROD_MIX_BYTES_RATIO}", "mix", "bytes", lambda v: v >= PROD_MIX_BYTES_RATIO),
        ]
        refs_shown: tuple[str, ...] = ("better nginx",)
    else:
        checks = [
            ("2 MiB ranges, bytes/s", f">= {TARGET_2M_BYTES_RATIO}", "2 MiB", "bytes", lambda v: v >= TARGET_2M_BYTES_RATIO),
            ("64 KiB ranges, req/s", f">= {TARGET_64K_REQS_RATIO}", "64 KiB", "reqs", lambda v: v >= TARGET_64K_REQS_RATIO),
            ("2 MiB ranges, p99", f"<= {TARGET_P99_RATIO}", "2 MiB", "p99", lambda v: v <= TARGET_P99_RATIO),
            ("64 KiB ranges, p99", f"<= {TARGET_P99_RATIO}", "64 KiB", "p99", lambda v: v <= TARGET_P99_RATIO),
        ]
        refs_shown = (NGINX, NGINX_NOCORK)
    print(f"targets: oca / nginx, median of per-round ratios{'':<6}" + "".join(f"{'vs ' + r:>20}" for r in refs_shown))
    for label, target, workload, key, ok in checks:
        cells = ""
        for ref in refs_shown:
            v = statistics.median(ratios[(workload, "oca", ref)][key])
            cells += f"{v:>14.3f} {verdict(ok(v))}"
        print(f"  {label:<34} target {target:<7}{cells}")
    if "oca-base" in contenders:
        print("before/after: oca / oca-base, median of per-round ratios")
        for workload, _spans in WORKLOADS:
            rr = ratios[(workload, "oca", "oca-base")]
            print(f"  {workload:<8} req/s {statistics.median(rr['reqs']):.3f}  bytes/s {statistics.median(rr['bytes']):.3f}  "
                  f"p99 {statistics.median(rr['p99']):.3f}  CPU us/request {statistics.median(rr['cpu']):.3f}")
    oca_idle = next((r for r in idle if r.server == "oca"), None)
    if oca_idle is not None:
        rss_max = max(oca_idle.rss_mib) if oca_idle.rss_mib else float("nan")
        idle_ok = oca_idle.opened == args.idle and not oca_idle.failures and oca_idle.alive == args.idle
        rss_ok = idle_ok and rss_max < TARGET_RSS_MIB
        print(f"  {'RSS per oca worker, ' + str(args.idle) + ' idle':<34} target < {TARGET_RSS_MIB:.0f} {rss_max:>11.1f} MiB {verdict(rss_ok)}")
        if not idle_ok:
            print(f"  (idle test incomplete: {oca_idle.opened} opened, {oca_idle.alive} alive, {len(oca_idle.failures)} failures)")
    print("=" * 104)


# ---------------------------------------------------------------- main

NGINX = "nginx"
NGINX_NOCORK = "nginx-nocork"


def main(argv: list[str] | None = None) -> int:
    global WORKLOADS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 3 s, 64 MiB files, 3 s hold")
    p.add_argument("--https", action="store_true", help="both servers on HTTPS with the same certificate; no idle test")
    p.add_argument("--profile", choices=("default", "production"), default="default",
                   help="production: signing, access logs and the player mix (see the module docstring)")
    p.add_argument("--baseline", type=Path, help="a source tree of oca to measure alongside, as oca-base")
    p.add_argument("--pure-baseline", action="store_true", help="oca-base is this tree with OCA_PURE=1 (pure-Python hot path)")
    p.add_argument("--rounds", type=int, help="rotating rounds (default 3, --quick 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10, --quick 3)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--idle", type=int, default=10_000, help="idle keep-alive connections to hold (default 10000; 0: no idle test)")
    p.add_argument("--hold", type=float, help="seconds to hold them (default 10, --quick 3)")
    p.add_argument("--file-mib", type=int, help="size of each of the 4 files (default 256, --quick 64)")
    p.add_argument("--dir", default="/var/tmp", help="where the temporary directory goes (default /var/tmp)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 10)
    args.hold = args.hold if args.hold is not None else (3.0 if args.quick else 10.0)
    file_mib = args.file_mib or (64 if args.quick else 256)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    PRODUCTION["on"] = args.profile == "production"
    WORKLOADS = PRODUCTION_WORKLOADS if PRODUCTION["on"] else DEFAULT_WORKLOADS
    if args.baseline and args.pure_baseline:
        p.error("--baseline and --pure-baseline exclude each other")
    if args.pure_baseline:
        args.baseline = ROOT
    contenders: tuple[str, ...] = (NGINX, "oca", NGINX_NOCORK) + (("oca-base",) if args.baseline else ())
    if args.baseline and not (args.baseline / "oca" / "server" / "main.py").is_file():
        print(f"serve.py: {args.baseline} is not an oca source tree", file=sys.stderr)
        return 2
    for tree in (ROOT, args.baseline):
        if tree is not None:
            compiled.prepare(tree.resolve())
    for tool in ("wrk", "nginx", "pgrep"):
        if shutil.which(tool) is None:
            print(f"serve.py: {tool} is not installed", file=sys.stderr)
            return 2

    def on_term(signum, frame):  # SIGTERM: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`cmd &`)
    nofile = raise_nofile()
    if nofile < args.idle + 1000:
        print(f"serve.py: open-files limit {nofile} is too low for {args.idle} idle connections", file=sys.stderr)
        return 2
    cleanup = Cleanup()
    wrk_box: list[subprocess.Popen] = []
    holder_box: list[IdleHolder] = []
    loop = asyncio.new_event_loop()
    cleanup.add("wrk", lambda: [(w.kill(), w.wait()) for w in list(wrk_box)], first=True)
    cleanup.add("idle sockets", lambda: drop_idle(loop, holder_box), first=True)
    # Closed only when nothing is pending: after an interruption, tasks left behind
    # finish their `finally` blocks at exit and need an open (idle) loop for that.
    cleanup.add("event loop", lambda: None if asyncio.all_tasks(loop) else loop.close(), first=True)
    meta = {
        "cmd": " ".join([".venv/bin/python", "benchmarks/serve.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "load0": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "file_mib": file_mib,
        "seed": seed,
        "hot_paths": {"oca": compiled.describe(ROOT), **({"oca-base": compiled.describe(args.baseline.resolve(), args.pure_baseline)}
                                                        if args.baseline else {})},
    }
    try:
        base = Path(tempfile.mkdtemp(prefix="oca-serve-bench-", dir=args.dir))
        cleanup.add("temp dir", lambda: shutil.rmtree(base, ignore_errors=True))
        print(f"seed {seed}; temp dir {base}; profile {args.profile}", flush=True)

        if args.https:
            make_certificate(base)
            meta["https"] = "ECDSA P-256"
        t0 = time.monotonic()
        content = make_content(base, file_mib * MIB)
        print(f"wrote {FILE_COUNT} x {file_mib} MiB of random bytes in {time.monotonic() - t0:.1f}s", flush=True)
        ports: list[int] = []
        while len(ports) < 4:
            port = free_port()
            if port not in ports:
                ports.append(port)
        cfg = write_oca_config(base, ports[0])
        t0 = time.monotonic()
        ingest(cfg, content)
        base_cfg = None
        if args.baseline:
            (base / "baseline").mkdir()
            base_cfg = write_oca_config(base / "baseline", ports[3])
            ingest(base_cfg, content, args.baseline.resolve())
        print(f"ingested into the oca appliance(s) in {time.monotonic() - t0:.1f}s", flush=True)

        servers = {
            NGINX: start_nginx(base, NGINX, ports[1], True, cleanup),
            NGINX_NOCORK: start_nginx(base, NGINX_NOCORK, ports[2], False, cleanup),
            "oca": start_oca(base, cfg, ports[0], cleanup),
        }
        if base_cfg is not None:
            servers["oca-base"] = start_oca(base / "baseline", base_cfg, ports[3], cleanup, "oca-base", args.baseline.resolve(),
                                            args.pure_baseline)
        for name, srv in servers.items():
            srv.paths = oca_paths(content) if name.startswith("oca") else nginx_paths(content)
            if PRODUCTION["on"]:
                srv.access_log = (base / "baseline" / "oca-access.log" if name == "oca-base" else
                                  base / "oca-access.log" if name == "oca" else base / f"{name}-access.log")
            print(f"{name} on :{srv.port}, workers {srv.workers()}", flush=True)
        t0 = time.monotonic()
        warmed = warm(content.sources) + warm(store_files(base)) + (warm(store_files(base / "baseline")) if base_cfg else 0)
        print(f"page cache warmed: read {warmed / MIB:.0f} MiB in {time.monotonic() - t0:.1f}s", flush=True)

        meta["verified"] = verify(list(servers.values()), content, rng)
        print(f"correctness: {meta['verified']} ranges identical from all servers and the source", flush=True)

        runs: list[Run] = []
        # A short unmeasured warm-up of each server and workload (descriptor caches, code paths).
        warm_args = argparse.Namespace(**{**vars(args), "duration": 1})
        for name in contenders:
            for workload, spans in WORKLOADS:
                run_wrk(servers[name], write_lua(base, servers[name], content, spans, rng.randrange(1 << 30)), warm_args, workload, -1, wrk_box)
        time.sleep(1.5)  # the access logs' last buffered second reaches the files
        logged0 = {name: count_lines(srv.access_log) for name, srv in servers.items()}
        for rnd in range(args.rounds):
            k = rnd % len(contenders)
            order = contenders[k:] + contenders[:k]
            for workload, spans in WORKLOADS:
                seed_w = rng.randrange(1 << 30)
                for name in order:
                    r = run_wrk(servers[name], write_lua(base, servers[name], content, spans, seed_w), args, workload, rnd, wrk_box)
                    runs.append(r)
                    print(f"round {rnd + 1} {workload:>6} {name:<12}: {r.reqs_s:9.0f} req/s {r.bytes_s / MB:8.0f} MB/s "
                          f"p50 {r.p50_ms:6.2f} ms p99 {r.p99_ms:7.2f} ms  cpu {r.cpu_us_per_req:5.0f} us/req"
                          f"{'  errors ' + str(r.errors) if r.errors else ''}", flush=True)
        if PRODUCTION["on"]:
            time.sleep(1.5)
            # wrk counts only completed responses; a connection cut at the end of a run can add a line.
            meta["logged"] = {name: (count_lines(srv.access_log) - logged0[name], sum(r.requests for r in runs if r.server == name))
                              for name, srv in servers.items()}

        idle: list[IdleResult] = []
        asyncio.set_event_loop(loop)
        for name in () if args.https or not args.idle else tuple(c for c in ("oca", "oca-base", NGINX) if c in servers):
            res = loop.run_until_complete(idle_test(servers[name], args.idle, args.hold, servers[name].paths[0], holder_box))
            idle.append(res)
            print(f"idle {name}: {res.opened} opened in {res.open_s:.1f}s, {res.alive} alive after {args.hold:g}s, "
                  f"VmRSS per worker {', '.join(f'{x:.1f}' for x in res.rss_mib)} MiB, {len(res.failures)} failures", flush=True)
            time.sleep(1.0)  # let the server close its side

        report(runs, idle, args, meta, contenders)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
