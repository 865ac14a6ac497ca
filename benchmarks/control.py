#!/usr/bin/env python3
"""Control-endpoint benchmark: cold /inventory answers against /health latency.

Run: ``.venv/bin/python benchmarks/control.py [--entries N] [--concurrent C] [--since-back B] [--limit L]``.

Rules kept here:
- A real `oca-server` (2 workers, uvloop) on loopback, with a real index in a
  temporary directory. The index gets `--entries` entries (100,000) written
  straight through `oca.store.index.Index` in batches, so the journal holds
  one record per entry (no files are needed to list them).
- Then `--concurrent` (30) clients ask at once for `/inventory?since=G`
  where G is `--since-back` (99,000) generations back: a cold answer that
  walks that much journal. Meanwhile a probe asks `/health` every 10 ms.
  Reported: the slowest and median inventory answer, the number of
  answers, and /health's median, p99 and maximum latency.
- With `--limit`, the inventory clients page (`&limit=L`) and follow the
  answer's `generation` until `latest` is reached; each page is timed.
- The figures are measured in this run, on a shared machine: compare runs
  made one after the other.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server_proc import ServerProcess, appliance  # noqa: E402


def get(host: str, port: int, path: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - t0
    finally:
        conn.close()


def fill_index(cfg: Path, entries: int) -> int:
    from oca.config import load_config
    from oca.store.content import ContentStore
    from oca.store.index import Entry

    cs = ContentStore.open(load_config(str(cfg)), writable=True)  # attaches (initialises) the store
    index = cs.index
    try:
        store_uuid = next(iter(index.stores()))
        now = time.time()
        batch = []
        for i in range(entries):
            batch.append(Entry(f"bench-{i:07d}.bin", store_uuid, f"objects/xx/bench-{i:07d}", 1000, "0" * 32, 1_600_000_000, now, 0.0))
            if len(batch) == 5000:
                index.put_many(batch)
                batch = []
        if batch:
            index.put_many(batch)
        return index.generation()
    finally:
        index.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--concurrent", type=int, default=30)
    p.add_argument("--since-back", type=int, default=99_000)
    p.add_argument("--limit", type=int, default=0, help="page size (0: one answer, as old clients ask)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        tmp = Path(d)
        cfg, host, port = appliance(tmp, workers=2, stores=1)
        generation = fill_index(cfg, args.entries)
        since = max(1, generation - args.since_back)
        with ServerProcess(cfg, host, port) as srv:
            time.sleep(1.0)
            health: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                while not stop.is_set():
                    status, _, dt = get(host, port, "/health")
                    health.append(dt)
                    time.sleep(0.01)

            times: list[float] = []
            pages = [0]
            errors: list[str] = []

            def client() -> None:
                g = since
                while True:
                    path = f"/inventory?since={g}" + (f"&limit={args.limit}" if args.limit else "")
                    status, body, dt = get(host, port, path)
                    times.append(dt)
                    pages[0] += 1
                    if status != 200:
                        errors.append(f"{status} {body[:80]!r}")
                        return
                    doc = json.loads(body)
                    if not args.limit or doc.get("kind") != "delta" or doc.get("latest", doc["generation"]) <= doc["generation"]:
                        return
                    g = doc["generation"]

            prober = threading.Thread(target=probe)
            prober.start()
            time.sleep(0.3)
            baseline = list(health)
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.concurrent)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            stop.set()
            prober.join()
            during = health[len(baseline):]
            ms = lambda x: f"{x * 1000:.1f} ms"  # noqa: E731
            print(f"journal: {args.entries} entries, generation {generation}, since={since} ({generation - since} records back)")
            print(f"{args.concurrent} concurrent cold /inventory clients{f' paging by {args.limit}' if args.limit else ''}: "
                  f"{pages[0]} answers in {wall:.2f} s; slowest {ms(max(times))}, median {ms(statistics.median(times))}; errors {len(errors)}")
            if during:
                q = sorted(during)
                print(f"/health meanwhile: {len(q)} probes, median {ms(statistics.median(q))}, p99 {ms(q[int(len(q) * 0.99) - 1 if len(q) > 1 else 0])}, max {ms(q[-1])}")
            print(f"/health before: median {ms(statistics.median(baseline))}" if baseline else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
