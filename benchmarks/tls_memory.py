#!/usr/bin/env python3
"""Memory per connection of slow HTTPS readers, against plain HTTP, in one oca worker.

Run: ``.venv/bin/python benchmarks/tls_memory.py [--connections N] [--file-mib M]``.

Rules kept here:
- Every figure is measured in this run. One appliance (1 worker, uvloop)
  serves one file over HTTP and HTTPS (a throwaway ECDSA P-256 CA and
  certificate). N clients with a 64 KiB receive buffer ask for the whole
  file and then read nothing: each response stays in flight, held back by
  the send path's back-pressure. The worker's VmRSS is read before and
  while they are held; the difference over N is the figure per connection.
- Bounded: loopback only, N defaults to 200, everything is closed and the
  server stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_proc import ServerProcess, appliance, free_port  # noqa: E402
from tests.support import admin  # noqa: E402
from tests.tlscerts import make_ca, make_leaf  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hold(port: int, n: int, ctx: ssl.SSLContext | None) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        if ctx is not None:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.sendall(b"GET /content/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1024)  # the head and the start of the body: the response is under way
        socks.append(s)
    return socks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--file-mib", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        tmp = Path(d)
        ca = make_ca(tmp / "pki")
        crt, key = make_leaf(ca, tmp / "pki", "leaf", "ecdsa")
        tls_port = free_port()
        tls = f'[tls]\nlisten = ["127.0.0.1:{tls_port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n'
        cfg, host, port = appliance(tmp / "app", workers=1, extra=tls, extra_server="send_timeout_s = 600\n")
        src = tmp / "big.bin"
        src.write_bytes(os.urandom(args.file_mib << 20))
        admin(cfg, "ingest", str(src), "--id", "big.bin", check=True)
        ctx = ssl.create_default_context(cafile=str(ca.path))
        with ServerProcess(cfg, host, port) as srv:
            time.sleep(2)
            (worker,) = srv.worker_pids()
            for name, p_, c in (("http", port, None), ("https", tls_port, ctx)):
                before = rss_mib(worker)
                socks = hold(p_, args.connections, c)
                time.sleep(2)
                held = rss_mib(worker)
                for s in socks:
                    s.close()
                time.sleep(1.5)
                per_conn_kib = (held - before) * 1024 / args.connections
                print(f"{name:5}: {args.connections} slow readers held: worker VmRSS {before:.1f} -> {held:.1f} MiB, "
                      f"{per_conn_kib:.0f} KiB per connection; after closing {rss_mib(worker):.1f} MiB")


if __name__ == "__main__":
    main()
