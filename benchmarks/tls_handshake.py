#!/usr/bin/env python3
"""TLS handshakes: oca against nginx, full and resumed, RSA-2048 and ECDSA P-256.

Run: ``.venv/bin/python benchmarks/tls_handshake.py [--duration 5] [--rounds 3]``
and ``.venv/bin/python benchmarks/tls_handshake.py --resumption [--oca-root DIR]``.

Rules kept here:
- Every figure is measured in this run. oca (2 workers, uvloop, access log
  off) and nginx (2 workers, `ssl_protocols TLSv1.2 TLSv1.3`, access log
  off) serve the same 1 KiB file with the same certificate; they run one
  after the other, alternating, for `--rounds` rounds of `--duration` s.
- The client is wrk (C, one thread, 32 connections) with
  `-H "Connection: close"`: every request is a new TCP connection and a
  new TLS handshake (TLS 1.3, what wrk and both servers agree on). Rows:
  - full: session tickets off on both sides (oca `[tls] session_tickets =
    false`, which sets OP_NO_TICKET and num_tickets = 0; nginx
    `ssl_session_tickets off; ssl_session_cache off`). A Python client
    offering its last session checks that nothing resumes.
  - resumed: tickets on for both (oca's shared ticket key; nginx's keys,
    made before it forks). wrk offers its last session on reconnecting.
- Handshakes/s are wrk's requests/s (one request per connection). Server
  CPU per handshake is the workers' utime+stime (/proc/PID/stat) over the
  run divided by the handshakes: wrk saturates its core first, so this is
  the figure that compares the servers' own cost. p99 is wrk's request
  latency, which starts after the handshake (wrk cannot time connects).
- ``--floor`` adds a third server, the floor of this stack: 2 processes
  (SO_REUSEPORT) running uvloop's TLS transport with the same SSLContext
  settings and a Protocol that answers the same 1 KiB response and closes,
  with no oca code at all. oca's distance to it is oca's own per-connection
  cost; its distance to nginx is Python's `ssl` over memory BIOs + uvloop.
- ``--ticket-keys``: two oca servers with tickets on, one with a
  `ticket_key_file` only (the key is copied into the context) and one with a
  `previous_ticket_key_files` entry too (OpenSSL's key callback, a ctypes
  call into Python per ticket issued or presented), under wrk's resumed
  handshakes; prints the workers' CPU per handshake of each and the
  per-round difference, the callback's cost.
- ``--resumption``: a Python ssl client makes N sequential connections to
  a 2-worker oca, each offering the session of the one before (reading a
  response first, so TLS 1.3 tickets have arrived), and prints the share
  that resumed, for TLS 1.2 and 1.3. ``--oca-root`` runs another checkout
  of oca (e.g. `git archive main` unpacked) for a before/after.
- Bounded and clean: loopback only; servers and wrk are stopped and the
  temp dir removed on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tlscerts import make_ca, make_leaf  # noqa: E402

PY = sys.executable
FILE_ID = "f1k"
BODY = os.urandom(1024)

LUA = """
wrk.headers["Connection"] = "close"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.name == "floor":
            for pid in self.workers():
                os.kill(pid, signal.SIGTERM)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_oca(base: Path, name: str, crt: Path, key: Path, tickets: bool, oca_root: Path, tls_extra: tuple[str, ...] = ()) -> Server:
    d = base / name
    (d / "store").mkdir(parents=True)
    port = free_port()
    cfg = d / "oca.toml"
    cfg.write_text("\n".join([
        "[appliance]", f'id = "{name}"', 'site = "bench"',
        "[server]", "listen = []", "workers = 2", 'event_loop = "uvloop"', 'access_log = ""',
        "max_connections = 16384", "shutdown_timeout_s = 5",
        "[index]", f'path = "{d / "index"}"', "map_size_gb = 1",
        "[[stores]]", f'path = "{d / "store"}"',
        "[tls]", f'listen = ["127.0.0.1:{port}"]', f'cert_file = "{crt}"', f'key_file = "{key}"',
        *([] if tickets else ["session_tickets = false"]), *tls_extra,
    ]) + "\n")
    src = base / f"{FILE_ID}.bin"
    src.write_bytes(BODY)
    subprocess.run([PY, "-m", "oca.admin", "--config", str(cfg), "ingest", str(src), "--id", FILE_ID],
                   check=True, capture_output=True, cwd=oca_root, timeout=120)
    log = open(d / "server.log", "ab")
    proc = subprocess.Popen([PY, "-m", "oca.server.main", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=oca_root)
    srv = Server("oca", port, proc)
    wait_port(port, proc, f"oca ({d / 'server.log'})")
    _wait_workers(srv)
    return srv


def start_nginx(base: Path, name: str, crt: Path, key: Path, tickets: bool, extra_http: str = "") -> Server:
    d = base / name
    (d / "www" / "content").mkdir(parents=True)
    (d / "www" / "content" / FILE_ID).write_bytes(BODY)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    session = "ssl_session_tickets on; ssl_session_cache shared:SSL:10m;" if tickets else "ssl_session_tickets off; ssl_session_cache off;"
    conf = d / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 2;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    default_type application/octet-stream;
    {extra_http}
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {crt}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
        {session}
        root {d / "www"};
        location / {{ }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    srv = Server("nginx", port, proc)
    wait_port(port, proc, f"nginx ({d / 'error.log'})")
    _wait_workers(srv)
    return srv


FLOOR = r"""
import asyncio, socket, ssl, sys, uvloop
crt, key, port, tickets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
BODY = open(sys.argv[5], "rb").read()
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
    def data_received(self, data):
        self.t.write(RESP)
        self.t.close()
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(crt, key)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    await asyncio.get_running_loop().create_server(P, sock=sock, ssl=ctx, ssl_handshake_timeout=10)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def start_floor(base: Path, crt: Path, key: Path, tickets: bool) -> Server:
    """Two processes of bare uvloop TLS (see FLOOR), under one `sh` parent so `workers()` finds them."""
    base.mkdir(parents=True, exist_ok=True)
    script = base / "floor.py"
    script.write_text(FLOOR)
    body = base / "floor-body.bin"
    body.write_bytes(BODY)
    port = free_port()
    one = f"{PY} {script} {crt} {key} {port} {int(tickets)} {body}"
    proc = subprocess.Popen(["sh", "-c", f"{one} & {one} & wait"], stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Server("floor", port, proc)
    wait_port(port, proc, "the uvloop floor server")
    _wait_workers(srv)
    return srv


def _wait_workers(srv: Server, n: int = 2, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(srv.workers()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{srv.name}: {n} workers did not start")
        time.sleep(0.05)


def resumed_share(port: int, ca: Path, version: ssl.TLSVersion, n: int) -> tuple[int, int]:
    """(resumed, offered) over n sequential connections, each offering the last session."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = version
    session, resumed = None, 0
    for _ in range(n):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost",
                             session=session) as s:
            s.sendall(f"GET /content/{FILE_ID} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            if not got.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bad answer on port {port}: {got[:80]!r}")
            resumed += s.session_reused
            session = s.session
    return resumed, n - 1


@dataclass
class Run:
    hs_s: float
    cpu_us: float
    p99_ms: float
    errors: int


def run_wrk(srv: Server, script: Path, duration: float, connections: int) -> Run:
    workers = srv.workers()
    cpu0 = cpu_seconds(workers)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "10s", "-s", str(script),
         f"https://127.0.0.1:{srv.port}/content/{FILE_ID}"],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    cpu = cpu_seconds(workers) - cpu0
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk against {srv.name} gave no figures:\n{out}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    n = max(1, int(f["requests"]))
    return Run(n / (f["duration_us"] / 1e6), cpu / n * 1e6, f["p99_us"] / 1000, int(f["errors"]))


def handshakes(args: argparse.Namespace, base: Path, pki: dict, cleanup: list) -> None:
    script = base / "close.lua"
    script.write_text(LUA)
    rows = []
    for kind in ("rsa", "ecdsa"):
        crt, key = pki[kind]
        for mode in ("full", "resumed"):
            tickets = mode == "resumed"
            servers = [start_oca(base, f"oca-{kind}-{mode}", crt, key, tickets, args.oca_root),
                       start_nginx(base, f"nginx-{kind}-{mode}", crt, key, tickets)]
            if args.floor:
                servers.append(start_floor(base / f"floor-{kind}-{mode}", crt, key, tickets))
            cleanup.extend(servers)
            checks = {s.name: resumed_share(s.port, pki["ca"], ssl.TLSVersion.TLSv1_3, 4) for s in servers}
            for s in servers:
                run_wrk(s, script, 1, args.connections)  # warm-up, not counted
            runs: dict[str, list[Run]] = {s.name: [] for s in servers}
            for r in range(args.rounds):
                for s in servers if r % 2 == 0 else servers[::-1]:
                    runs[s.name].append(run_wrk(s, script, args.duration, args.connections))
            for s in servers:
                s.stop()
                cleanup.remove(s)
            rows.append((kind, mode, runs, checks))
    label = {"rsa": "RSA-2048", "ecdsa": "ECDSA P-256"}
    target = {"rsa": 0.85, "ecdsa": 0.8}
    print(f"\nTLS 1.3 handshakes, 1 KiB per connection, wrk -t1 -c{args.connections} -H 'Connection: close', "
          f"{args.rounds} rounds x {args.duration:g} s alternating, 2 workers each (medians):")
    print("| key | handshake | oca hs/s | nginx hs/s | ratio (target) | oca CPU µs/hs | nginx CPU µs/hs | CPU ratio nginx/oca "
          "| oca p99 ms | nginx p99 ms | resumed by a Python client (oca, nginx) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, mode, runs, checks in rows:
        o, n = runs["oca"], runs["nginx"]
        med = lambda rs, a: statistics.median(getattr(x, a) for x in rs)  # noqa: E731
        ratios = [a.hs_s / b.hs_s for a, b in zip(o, n)]
        ratio = statistics.median(ratios)
        cpu_ratio = med(n, "cpu_us") / med(o, "cpu_us")
        tgt = f" (≥ {target[kind]})" if mode == "full" else ""
        print(f"| {label[kind]} | {mode} | {med(o, 'hs_s'):.0f} | {med(n, 'hs_s'):.0f} | {ratio:.2f}{tgt} | {med(o, 'cpu_us'):.0f} | "
              f"{med(n, 'cpu_us'):.0f} | {cpu_ratio:.2f} | {med(o, 'p99_ms'):.1f} | {med(n, 'p99_ms'):.1f} | "
              f"{checks['oca'][0]}/{checks['oca'][1]}, {checks['nginx'][0]}/{checks['nginx'][1]} | "
              f"{sum(x.errors for x in o)}, {sum(x.errors for x in n)} |")
    if args.floor:
        print("\nThe floor: bare uvloop TLS in 2 processes, no oca code (same runs, alternating with the two above):")
        print("| key | handshake | floor hs/s | floor/nginx hs/s | floor CPU µs/hs | CPU ratio nginx/floor | oca CPU over the floor, µs/hs | floor p99 ms |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, mode, runs, _checks in rows:
            f, o, n = runs["floor"], runs["oca"], runs["nginx"]
            med = lambda rs, a: statistics.median(getattr(x, a) for x in rs)  # noqa: E731
            ratio = statistics.median(a.hs_s / b.hs_s for a, b in zip(f, n))
            print(f"| {label[kind]} | {mode} | {med(f, 'hs_s'):.0f} | {ratio:.2f} | {med(f, 'cpu_us'):.0f} | "
                  f"{med(n, 'cpu_us') / med(f, 'cpu_us'):.2f} | {med(o, 'cpu_us') - med(f, 'cpu_us'):.0f} | {med(f, 'p99_ms'):.1f} |")


def ticket_keys(args: argparse.Namespace, base: Path, pki: dict, cleanup: list) -> None:
    """Resumed handshakes with one ticket key (a memory copy into the context) and with a previous key too (the callback)."""
    script = base / "close.lua"
    script.write_text(LUA)
    keys = []
    for name in ("current", "previous"):
        path = base / f"{name}.key"
        path.write_bytes(os.urandom(80))
        path.chmod(0o600)
        keys.append(path)
    crt, key = pki["ecdsa"]
    servers = []
    for name, extra in (("1 key", (f'ticket_key_file = "{keys[0]}"',)),
                        ("2 keys", (f'ticket_key_file = "{keys[0]}"', f'previous_ticket_key_files = ["{keys[1]}"]'))):
        srv = start_oca(base, f"oca-{name.replace(' ', '')}", crt, key, True, args.oca_root, extra)
        srv.name = name
        servers.append(srv)
        cleanup.append(srv)
    checks = {s.name: resumed_share(s.port, pki["ca"], ssl.TLSVersion.TLSv1_3, 20) for s in servers}
    for s in servers:
        run_wrk(s, script, 1, args.connections)  # warm-up, not counted
    runs: dict[str, list[Run]] = {s.name: [] for s in servers}
    for r in range(args.rounds):
        for s in servers if r % 2 == 0 else servers[::-1]:
            runs[s.name].append(run_wrk(s, script, args.duration, args.connections))
    med = lambda rs, a: statistics.median(getattr(x, a) for x in rs)  # noqa: E731
    print(f"\nResumed TLS 1.3 handshakes (ECDSA P-256), oca only, 2 workers, wrk -t1 -c{args.connections} "
          f"-H 'Connection: close', {args.rounds} rounds x {args.duration:g} s alternating (medians):")
    print("| ticket keys | hs/s | CPU µs/hs | p99 ms | resumed by a Python client | errors |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        print(f"| {name} | {med(rs, 'hs_s'):.0f} | {med(rs, 'cpu_us'):.0f} | {med(rs, 'p99_ms'):.1f} | "
              f"{checks[name][0]}/{checks[name][1]} | {sum(x.errors for x in rs)} |")
    per_round = [b.cpu_us - a.cpu_us for a, b in zip(runs["1 key"], runs["2 keys"])]
    print(f"the key callback's cost: {statistics.median(per_round):+.1f} µs of worker CPU per handshake "
          f"(median of per-round differences: {', '.join(f'{x:+.1f}' for x in per_round)})")


def resumption(args: argparse.Namespace, base: Path, pki: dict, cleanup: list) -> None:
    crt, key = pki["ecdsa"]
    srv = start_oca(base, "oca-resume", crt, key, True, args.oca_root)
    cleanup.append(srv)
    print(f"\nResumption across 2 oca workers ({args.oca_root}), {args.connections_resume} sequential connections, "
          "each offering the session of the one before:")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        got, offered = resumed_share(srv.port, pki["ca"], version, args.connections_resume)
        print(f"  {version.name}: {got}/{offered} resumed ({100 * got / offered:.1f}%)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--floor", action="store_true", help="also run bare uvloop TLS (no oca code), the floor of this stack")
    p.add_argument("--resumption", action="store_true", help="measure the share of sessions resumed across workers instead")
    p.add_argument("--ticket-keys", action="store_true", help="instead: resumed handshakes with 1 ticket key vs 2 (the key callback)")
    p.add_argument("--connections-resume", type=int, default=200)
    p.add_argument("--oca-root", type=Path, default=ROOT, help="the oca checkout to run (a before/after of either mode)")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tls-handshake-"))
    cleanup: list[Server] = []
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        ca = make_ca(base / "pki")
        pki = {"ca": ca.path, "rsa": make_leaf(ca, base / "pki", "rsa", "rsa"), "ecdsa": make_leaf(ca, base / "pki", "ecdsa", "ecdsa")}
        if args.resumption:
            resumption(args, base, pki, cleanup)
        elif args.ticket_keys:
            ticket_keys(args, base, pki, cleanup)
        else:
            handshakes(args, base, pki, cleanup)
    finally:
        for s in cleanup:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
