#!/usr/bin/env python3
"""Memory per connection of slow HTTPS readers, against plain HTTP, in one oca worker.

Run: ``.venv/bin/python benchmarks/tls_memory.py [--connections N] [--file-mib M]``
and ``.venv/bin/python benchmarks/tls_memory.py --idle 10000``.

Rules kept here:
- Every figure is measured in this run. One appliance (1 worker, uvloop)
  serves one file over HTTP and HTTPS (a throwaway ECDSA P-256 CA and
  certificate). N clients with a 64 KiB receive buffer ask for the whole
  file and then read nothing: each response stays in flight, held back by
  the send path's back-pressure. The worker's VmRSS is read before and
  while they are held; the difference over N is the figure per connection.
- ``--idle N``: oca (2 workers, uvloop, HTTPS only, ECDSA P-256) and then
  nginx (2 workers, `ssl_protocols TLSv1.2 TLSv1.3`) each get N TLS
  keep-alive connections (asyncio client, TLS 1.3, 200 handshakes at a
  time), each sending one request for a 1 KiB file (``--body``: another
  size, e.g. a player's segment) and reading the answer, then all idle; the VmRSS of each worker is read while they are held.
  The figure is the largest worker's RSS (target < 160 MiB for oca).
  ``--event-loop asyncio`` runs oca on the stock loop instead (its TLS
  transport is asyncio's sslproto; the target is for uvloop).
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


async def _open_idle(port: int, n: int, ctx: ssl.SSLContext) -> list:
    import asyncio

    sem = asyncio.Semaphore(200)
    writers = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 60)
            writer.write(b"GET /content/small.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            length = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")).split(b":")[1])
            await reader.readexactly(length)
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def idle(n: int, event_loop: str = "uvloop", body: int = 1024) -> None:
    """The largest worker's RSS with `n` idle TLS keep-alive connections over 2 workers, oca then nginx."""
    import asyncio
    import resource

    import uvloop

    from benchmarks.tls_handshake import start_nginx

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        tmp = Path(d)
        ca = make_ca(tmp / "pki")
        crt, key = make_leaf(ca, tmp / "pki", "leaf", "ecdsa")
        ctx = ssl.create_default_context(cafile=str(ca.path))
        tls_port = free_port()
        tls = f'[tls]\nlisten = ["127.0.0.1:{tls_port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n'
        cfg, host, port = appliance(tmp / "app", workers=2, extra=tls, event_loop=event_loop,
                                    extra_server="keepalive_timeout_s = 600\nmax_connections = 16384\n")
        small = tmp / "small.bin"
        small.write_bytes(os.urandom(body))
        admin(cfg, "ingest", str(small), "--id", "small.bin", check=True)
        rows = []
        with ServerProcess(cfg, host, port) as srv:
            time.sleep(2)
            workers = srv.worker_pids()
            before = [rss_mib(w) for w in workers]
            loop = uvloop.new_event_loop()
            try:
                t0 = time.monotonic()
                writers = loop.run_until_complete(_open_idle(tls_port, n, ctx))
                opened_s = time.monotonic() - t0
                time.sleep(3)
                held = [rss_mib(w) for w in workers]
                conns = [len(psutil_conns(w, tls_port)) for w in workers]
                for w in writers:
                    w.transport.abort()
                loop.run_until_complete(asyncio.sleep(0.5))
            finally:
                loop.close()
            rows.append(("oca", before, held, conns, opened_s))
        nginx = start_nginx(tmp, "nginx-idle", crt, key, True, extra_http="keepalive_timeout 600s;")
        (tmp / "nginx-idle" / "www" / "content" / "small.bin").write_bytes(small.read_bytes())
        try:
            workers = nginx.workers()
            before = [rss_mib(w) for w in workers]
            loop = uvloop.new_event_loop()
            try:
                t0 = time.monotonic()
                writers = loop.run_until_complete(_open_idle(nginx.port, n, ctx))
                opened_s = time.monotonic() - t0
                time.sleep(3)
                held = [rss_mib(w) for w in workers]
                conns = [len(psutil_conns(w, nginx.port)) for w in workers]
                for w in writers:
                    w.transport.abort()
            finally:
                loop.close()
            rows.append(("nginx", before, held, conns, opened_s))
        finally:
            nginx.stop()
    print(f"\n{n} idle TLS 1.3 keep-alive connections (ECDSA P-256) over 2 workers, {event_loop} for oca, "
          f"each idle after one {body}-byte response:")
    print("| server | connections per worker | worker VmRSS before (MiB) | held (MiB) | largest worker (MiB) | KiB per connection | opened in (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, before, held, conns, opened_s in rows:
        per = (sum(held) - sum(before)) * 1024 / max(1, sum(conns))
        target = " (target < 160)" if name == "oca" else ""
        print(f"| {name} | {', '.join(map(str, conns))} | {', '.join(f'{x:.1f}' for x in before)} | "
              f"{', '.join(f'{x:.1f}' for x in held)} | {max(held):.1f}{target} | {per:.1f} | {opened_s:.1f} |")


def psutil_conns(pid: int, port: int) -> list:
    import psutil

    return [c for c in psutil.Process(pid).net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.raddr]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--file-mib", type=int, default=64)
    p.add_argument("--idle", type=int, default=0, help="instead: RSS with this many idle TLS keep-alive connections, oca and nginx")
    p.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop", help="oca's [server] event_loop for --idle")
    p.add_argument("--body", type=int, default=1024, help="bytes of the one response each --idle connection gets first (default 1024)")
    args = p.parse_args()
    if args.idle:
        idle(args.idle, args.event_loop, args.body)
        return
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
