#!/usr/bin/env python3
"""Server CPU per connection: one request per connection, plain HTTP and HTTPS, this tree against another.

Run: ``.venv/bin/python benchmarks/conn_cost.py --baseline DIR [--rounds 3] [--duration 5]``
(DIR: another oca source tree, e.g. ``git archive main`` unpacked).

Rules kept here:
- Every figure is measured in this run. Each tree runs one oca with one
  worker (uvloop, access log on, session tickets off so every HTTPS
  connection is a full TLS 1.3 handshake, ECDSA P-256 unless ``--rsa``)
  serving a 1 KiB file on a plain and an HTTPS port. The trees run one
  after the other, alternating, for ``--rounds`` rounds.
- The client is wrk (one thread, 16 connections) with
  ``Connection: close``: every request is a new TCP connection. The figure
  is the worker's utime+stime (/proc/PID/stat) over the run divided by the
  requests wrk completed, so a loaded machine changes requests/s far more
  than it changes this figure. Ratios are new/base per round; the median
  is printed.
- Bounded and clean: loopback only; servers are stopped and the temp dir
  removed on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tls_handshake import BODY, FILE_ID, LUA, PY, Server, _wait_workers, cpu_seconds, free_port, wait_port  # noqa: E402
from tests.tlscerts import make_ca, make_leaf  # noqa: E402


def start(base: Path, name: str, tree: Path, crt: Path, key: Path) -> tuple[Server, int]:
    d = base / name
    (d / "store").mkdir(parents=True)
    port, tls_port = free_port(), free_port()
    cfg = d / "oca.toml"
    cfg.write_text("\n".join([
        "[appliance]", f'id = "{name}"', 'site = "bench"',
        "[server]", f'listen = ["127.0.0.1:{port}"]', "workers = 1", 'event_loop = "uvloop"',
        f'access_log = "{d / "access.log"}"', "max_connections = 16384", "shutdown_timeout_s = 5",
        "[index]", f'path = "{d / "index"}"', "map_size_gb = 1",
        "[[stores]]", f'path = "{d / "store"}"',
        "[tls]", f'listen = ["127.0.0.1:{tls_port}"]', f'cert_file = "{crt}"', f'key_file = "{key}"',
        "session_tickets = false",
    ]) + "\n")
    src = base / f"{FILE_ID}.bin"
    src.write_bytes(BODY)
    subprocess.run([PY, "-m", "oca.admin", "--config", str(cfg), "ingest", str(src), "--id", FILE_ID],
                   check=True, capture_output=True, cwd=tree, timeout=120)
    log = open(d / "server.log", "ab")
    proc = subprocess.Popen([PY, "-m", "oca.server.main", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=tree)
    srv = Server(name, port, proc)
    wait_port(port, proc, f"oca ({d / 'server.log'})")
    wait_port(tls_port, proc, f"oca ({d / 'server.log'})")
    _wait_workers(srv, 1)
    return srv, tls_port


def cost(srv: Server, url: str, script: Path, duration: int) -> tuple[float, float]:
    """(requests/s, worker CPU µs per request) over one wrk run."""
    workers = srv.workers()
    cpu0 = cpu_seconds(workers)
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    cpu = cpu_seconds(workers) - cpu0
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk against {srv.name} gave no figures:\n{out}")
    f = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    n = max(1, int(f["requests"]))
    if f["errors"]:
        print(f"  ({srv.name}: {int(f['errors'])} wrk errors)")
    return n / (f["duration_us"] / 1e6), cpu / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rsa", action="store_true", help="RSA-2048 instead of ECDSA P-256")
    args = p.parse_args()
    trees = {"base": args.baseline.resolve(), "new": ROOT}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        base = Path(d)
        ca = make_ca(base / "pki")
        crt, key = make_leaf(ca, base / "pki", "leaf", "rsa" if args.rsa else "ecdsa")
        script = base / "close.lua"
        script.write_text(LUA)
        try:
            ports = {}
            for name, tree in trees.items():
                srv, tls_port = start(base, name, tree, crt, key)
                servers.append(srv)
                ports[name] = (srv, srv.port, tls_port)
            for r in range(args.rounds):
                for kind in ("plain", "tls"):
                    for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
                        srv, port, tls_port = ports[name]
                        url = (f"http://127.0.0.1:{port}" if kind == "plain" else f"https://127.0.0.1:{tls_port}")
                        rps, us = cost(srv, f"{url}/content/{FILE_ID}", script, args.duration)
                        results.setdefault((kind, name), []).append((rps, us))
                        print(f"round {r + 1} {kind:5} {name:4}: {rps:8.0f} conn/s  {us:7.1f} µs CPU per connection", flush=True)
        finally:
            for srv in servers:
                srv.stop()
    print(f"\nOne request per connection, 1 KiB, 1 worker, wrk -c16 Connection: close, {'RSA-2048' if args.rsa else 'ECDSA P-256'}:")
    print("| path | base µs/conn | new µs/conn | new/base (median of rounds) |")
    print("|---|---|---|---|")
    for kind in ("plain", "tls"):
        b = [us for _, us in results[(kind, "base")]]
        n = [us for _, us in results[(kind, "new")]]
        ratio = statistics.median(x / y for x, y in zip(n, b))
        print(f"| {kind} | {statistics.median(b):.1f} | {statistics.median(n):.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
