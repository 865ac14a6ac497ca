#!/usr/bin/env python3
"""CPU per request on the serving path, in one process: oca trees compared.

Run: ``.venv/bin/python benchmarks/request_cost.py [--baseline TREE |
--pure-baseline] [--rounds N] [--requests N] [--span BYTES] [--dir DIR]``.

Rules kept here:
- What is measured is the Python of one request and its two syscalls:
  `HttpConnection.data_received` for a whole GET head, through the parser,
  `App.handle` (signature, index lookup, descriptor cache, range, head),
  the send of the head and the `os.sendfile` of the body, `finished`
  (counters, access-log line). The production configuration is used:
  `[signing] required`, the combined access log to a file. The socket is one
  end of a real `socketpair`; the other end is read after each request and
  that read is part of the figure (the same for every tree).
- No event loop runs and no wrk is involved, so the figure is far less
  sensitive to other load on the machine than a wrk run; it leaves out what
  uvloop and the kernel's TCP stack cost per request, which
  `benchmarks/serve.py --profile production` includes.
- Each tree (this one, and ``--baseline TREE`` as "base", e.g. made with
  ``git archive main | tar -x -C TREE``) runs in its own subprocess with
  its own index and stores, rounds alternating; the best of 5 repetitions
  of ``--requests`` requests is kept per round, and ratios are this / base.
  ``--pure-baseline``: "base" is this tree with OCA_PURE=1 (the pure-Python
  hot path), so compiled and pure are compared in the same run. A tree's
  compiled module is built first if it has the source only
  (`benchmarks/compiled.py`), and each tree's hot path is printed.
- The content, index and configs live in a temporary directory that is
  removed at exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import compiled

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = "bench-secret-0123456789"
FILES = 4
FILE_BYTES = 8 << 20

CHILD = r'''
import asyncio, os, random, socket, sys, time
cfg_path, span, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from oca.config import load_config
from oca.http.protocol import HttpConnection, Limits
from oca.server import stats as S
from oca.server.accesslog import AccessLog
from oca.server.app import App
from oca.signing import signed_path
from oca.store.content import ContentStore

cfg = load_config(cfg_path)
loop = asyncio.new_event_loop()
stats = S.SharedStats.create(4)
stats.slot, stats.base = 0, 0
store = ContentStore.open(cfg, writable=False)
log = AccessLog(cfg.server.access_log, cfg.server.access_log_format)
app = App(cfg, store, stats, log, loop)
server, client = socket.socketpair()
server.setblocking(False)
client.setblocking(False)
server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)


class Transport(asyncio.Transport):
    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "socket": server}.get(name, default)

    def is_closing(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass


sc = cfg.server
limits = Limits(header_timeout_s=sc.header_timeout_s, keepalive_timeout_s=sc.keepalive_timeout_s, send_timeout_s=sc.send_timeout_s,
                max_request_line_bytes=sc.max_request_line_bytes, max_header_bytes=sc.max_header_bytes, max_headers=sc.max_headers,
                max_pipelined=sc.max_pipelined)
conn = HttpConnection(app, limits, set(), loop, lambda i, k: None)
conn.connection_made(Transport())
secret = cfg.signing.secrets()["k1"]
paths = [signed_path(f"cost-{i}.bin", 4102444800, "k1", secret) for i in range(FILES)]
rng = random.Random(1)
heads = []
for i in range(2000):
    first = rng.randrange(FILE_BYTES - span)
    heads.append((f"GET {paths[i % FILES]} HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes={first}-{first + span - 1}\r\n"
                  f"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0\r\nAccept: */*\r\n\r\n").encode())
buf = bytearray(1 << 20)


def run(count):
    for i in range(count):
        conn.data_received(heads[i % 2000])
        got = 0
        while True:  # the response was written before data_received returned: read all of it
            try:
                got += client.recv_into(buf)
            except BlockingIOError:
                if got <= span:
                    raise SystemExit(f"response {i} incomplete: {got} bytes")
                break


run(2000)
samples = []
for _ in range(5):
    t0 = time.process_time()
    run(n)
    samples.append((time.process_time() - t0) / n * 1e6)
log.flush()
if stats.total(S.C_CODES + S.COUNTED_CODES.index(206)) != 2000 + 5 * n:
    raise SystemExit("not every request was answered 206")
print(min(samples))
'''.replace("FILES", str(FILES)).replace("FILE_BYTES", str(FILE_BYTES))


def prepare(base: Path, tree: Path) -> Path:
    """An appliance under `base` with the content ingested by `tree`'s own code; returns its config."""
    base.mkdir(parents=True)
    stores = [base / "store0"]
    for s in stores:
        s.mkdir()
    cfg = base / "oca.toml"
    lines = ["[appliance]", 'id = "oca-cost-1"', 'site = "bench"', "[server]", 'listen = ["127.0.0.1:1"]',
             f'access_log = "{base / "access.log"}"', "[index]", f'path = "{base / "index"}"', "map_size_gb = 1"]
    lines += [x for s in stores for x in ("[[stores]]", f'path = "{s}"')]
    lines += ["[signing]", "required = true", 'key_id = "k1"', "[signing.keys]", f'k1 = "{SECRET}"']
    cfg.write_text("\n".join(lines) + "\n")
    rng_bytes = os.urandom(FILE_BYTES)
    for i in range(FILES):
        src = base / f"src-{i}"
        src.write_bytes(rng_bytes[i:] + rng_bytes[:i])
        proc = subprocess.run([PY, "-m", "oca.admin", "--config", str(cfg), "ingest", str(src), "--id", f"cost-{i}.bin"],
                              capture_output=True, text=True, cwd=tree, env=compiled.tree_env(tree), timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"ingest with {tree} failed: {proc.stderr[-2000:]}")
    return cfg


def measure(tree: Path, cfg: Path, span: int, n: int, pure: bool) -> float:
    proc = subprocess.run([PY, "-c", CHILD, str(cfg), str(span), str(n)], capture_output=True, text=True, cwd=tree,
                          env=compiled.tree_env(tree, pure), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {proc.stderr[-3000:]}")
    return float(proc.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, help="another oca source tree, measured as 'base'")
    p.add_argument("--pure-baseline", action="store_true", help="'base' is this tree with OCA_PURE=1")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=10_000, help="requests per repetition (5 repetitions per round)")
    p.add_argument("--span", type=int, default=64 * 1024, help="range length in bytes (default 64 KiB)")
    p.add_argument("--dir", default="/var/tmp")
    args = p.parse_args(argv)
    trees = {"this": ROOT}
    pure = {"this": False, "base": args.pure_baseline}
    if args.baseline and args.pure_baseline:
        p.error("--baseline and --pure-baseline exclude each other")
    if args.baseline or args.pure_baseline:
        trees["base"] = args.baseline.resolve() if args.baseline else ROOT
    for name, tree in trees.items():
        compiled.prepare(tree)
        print(f"{name:<5} {tree}: {compiled.describe(tree, pure[name])}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="oca-request-cost-", dir=args.dir))
    try:
        cfgs = {name: prepare(base / name, tree) for name, tree in trees.items()}
        results: dict[str, list[float]] = {name: [] for name in trees}
        names = list(trees)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                us = measure(trees[name], cfgs[name], args.span, args.requests, pure[name])
                results[name].append(us)
                print(f"round {r + 1} {name:<5} {us:6.1f} us/request", flush=True)
        print()
        print(f"CPU per request, {args.span}-byte ranges, production config (signing, access log), in-process; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name in names:
            print(f"  {name:<5} median {statistics.median(results[name]):6.1f} us  rounds {' '.join(f'{x:.1f}' for x in results[name])}")
        if "base" in results:
            ratios = [a / b for a, b in zip(results["this"], results["base"])]
            print(f"  this / base per round {' '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
