#!/usr/bin/env python3
"""Prefix-matching benchmark: `steering.lpm.PrefixTable` on an Internet-sized table.

Run: ``.venv/bin/python benchmarks/lpm.py [--v4 N] [--v6 N] [--lookups N]
[--rounds R] [--seed S] [--tracemalloc]``.

Rules kept here:
- Every figure printed is measured in this run; nothing is typed in. Each
  target is reported PASS or MISS; the exit status is 0 either way (non-zero
  only if the benchmark itself breaks, e.g. a wrong answer).
- The table: ``--v4`` (1,000,000) random IPv4 prefixes of /8 to /32,
  weighted like a real routing table (most are /16 to /24, /24 the most
  common, few shorter than /16 or longer than /24), and ``--v6`` (100,000)
  random IPv6 prefixes of /16 to /64, each tagged with one of 50
  appliances, as the (cidr, tag) text pairs the service passes. Making them
  is not timed.
- Build: wall and CPU time of `PrefixTable.build`, and the process's RSS
  before and after (the table is kept, so the delta is what it holds plus
  what the allocator keeps). With ``--tracemalloc`` a second build runs
  under tracemalloc for its peak of Python allocations (several times
  slower; its time is not the build time).
- Lookups: `PrefixTable.matches_int` called in one process, in a plain
  loop, over ``--lookups`` pre-made random integer addresses: IPv4 alone,
  IPv6 alone, and the two mixed half and half, each over addresses drawn
  uniformly from the family's space ("random") and over addresses inside a
  random prefix of the table ("in table", where every lookup matches).
  Each workload runs ``--rounds`` times; the first run's rate is shown
  apart (it also makes the entries it returns for the first time, see
  steering/lpm.py), and the median of all runs is the verdict, with the
  spread and the rate per CPU second of this process. The machine is
  shared and noisy.
- After the build, a sample of lookups is checked against a brute-force
  answer (one dict per prefix length, probed longest first); a wrong
  answer stops the benchmark.
- Targets: build < 10 s; ≥ 500,000 lookups/s for IPv4, IPv6 and mixed
  (random addresses); memory < 1 GiB.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import socket
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steering.lpm import PrefixTable  # noqa: E402

BUILD_TARGET_S = 10.0
LOOKUP_TARGET_PER_S = 500_000
MEMORY_TARGET_BYTES = 1 << 30
CHECK_SAMPLE = 3000
# Relative weights of IPv4 prefix lengths, shaped like a BGP table: /24 the
# most common, /16-/23 common, shorter and longer ones rare.
V4_WEIGHTS = {n: 1.0 for n in range(8, 16)} | {n: 12.0 for n in range(16, 24)} | {24: 40.0} | {n: 0.5 for n in range(25, 33)}
V6_LENGTHS = range(16, 65)
TAGS = tuple(("route", f"oca-{i:02d}") for i in range(50))


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_prefixes(rng: random.Random, n4: int, n6: int) -> tuple[list[tuple[str, tuple]], list[tuple[int, int, int]]]:
    """(cidr, tag) text pairs, and (version, network, length) of each for making addresses."""
    items: list[tuple[str, tuple]] = []
    raw: list[tuple[int, int, int]] = []
    lengths4 = rng.choices(list(V4_WEIGHTS), weights=list(V4_WEIGHTS.values()), k=n4)
    ntoa, ntop, af6 = socket.inet_ntoa, socket.inet_ntop, socket.AF_INET6
    for length in lengths4:
        net = rng.getrandbits(length) << (32 - length)
        items.append((f"{ntoa(net.to_bytes(4, 'big'))}/{length}", rng.choice(TAGS)))
        raw.append((4, net, length))
    for _ in range(n6):
        length = rng.choice(V6_LENGTHS)
        net = rng.getrandbits(length) << (128 - length)
        items.append((f"{ntop(af6, net.to_bytes(16, 'big'))}/{length}", rng.choice(TAGS)))
        raw.append((6, net, length))
    return items, raw


def brute_force_longest(by_length: dict[tuple[int, int], dict[int, None]], version: int, addr: int) -> tuple[int, int] | None:
    bits = 32 if version == 4 else 128
    for length in range(bits, -1, -1):
        table = by_length.get((version, length))
        if table is not None:
            net = addr >> (bits - length) << (bits - length) if length else 0
            if net in table:
                return net, length
    return None


def check_sample(table: PrefixTable, raw: list[tuple[int, int, int]], rng: random.Random) -> int:
    """Longest match of a sample of addresses against the brute-force answer; returns how many were checked."""
    by_length: dict[tuple[int, int], dict[int, None]] = {}
    for version, net, length in raw:
        by_length.setdefault((version, length), {})[net] = None
    checked = 0
    for i in range(CHECK_SAMPLE):
        version, net, length = rng.choice(raw)
        bits = 32 if version == 4 else 128
        if i % 2:
            addr = rng.getrandbits(bits)
        else:
            addr = net | rng.getrandbits(bits - length) if length < bits else net
        want = brute_force_longest(by_length, version, addr)
        got = table.matches_int(version, addr)
        got_first = None
        if got:
            e = got[0]
            gv, gnet, glen = _parse(e.cidr)
            got_first = (gnet, glen)
        if got_first != want:
            raise SystemExit(f"WRONG ANSWER for v{version} address {addr:#x}: table {got_first}, brute force {want}")
        lengths = [e.length for e in got]
        if lengths != sorted(lengths, reverse=True):
            raise SystemExit(f"WRONG ORDER for v{version} address {addr:#x}: {lengths}")
        checked += 1
    return checked


def _parse(cidr: str) -> tuple[int, int, int]:
    from steering.lpm import parse_prefix

    return parse_prefix(cidr)


def time_lookups(table: PrefixTable, work: list[tuple[int, int]] | list[int], version: int | None) -> tuple[float, float]:
    """Lookups per wall second and per CPU second over `work` (addresses of one `version`, or (version, address) pairs)."""
    m = table.matches_int
    gc.collect()
    if version is not None:
        started, cpu = time.perf_counter(), time.process_time()
        for a in work:
            m(version, a)
    else:
        started, cpu = time.perf_counter(), time.process_time()
        for v, a in work:
            m(v, a)
    return len(work) / (time.perf_counter() - started), len(work) / max(1e-9, time.process_time() - cpu)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--v4", type=int, default=1_000_000, help="IPv4 prefixes (default 1,000,000)")
    p.add_argument("--v6", type=int, default=100_000, help="IPv6 prefixes (default 100,000)")
    p.add_argument("--lookups", type=int, default=1_000_000, help="addresses per lookup workload (default 1,000,000)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each lookup workload (default 3)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--tracemalloc", action="store_true", help="also build once under tracemalloc for its peak")
    args = p.parse_args()
    rng = random.Random(args.seed)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    t = time.perf_counter()
    items, raw = make_prefixes(rng, args.v4, args.v6)
    print(f"made {args.v4:,} IPv4 + {args.v6:,} IPv6 prefixes in {time.perf_counter() - t:.1f} s (not timed)")
    counts = {}
    for version, _net, length in raw:
        counts[(version, length)] = counts.get((version, length), 0) + 1
    v4_share = lambda lo, hi: sum(c for (v, n), c in counts.items() if v == 4 and lo <= n <= hi) / max(1, args.v4)  # noqa: E731
    print(f"IPv4 lengths: /8-/15 {v4_share(8, 15):.1%}, /16-/23 {v4_share(16, 23):.1%}, /24 {v4_share(24, 24):.1%}, /25-/32 {v4_share(25, 32):.1%}")

    # ---- build
    gc.collect()
    rss0 = rss_bytes()
    w0, c0 = time.perf_counter(), time.process_time()
    table = PrefixTable.build(items)
    build_wall, build_cpu = time.perf_counter() - w0, time.process_time() - c0
    gc.collect()
    rss_delta = rss_bytes() - rss0
    print(f"built: {len(table):,} distinct prefixes (duplicates merged)")
    checked = check_sample(table, raw, rng)
    print(f"checked {checked:,} sample lookups against a brute-force answer: all right")

    peak = None
    if args.tracemalloc:
        tracemalloc.start()
        again = PrefixTable.build(items)
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del again
        gc.collect()

    # ---- lookups
    n = args.lookups
    prefixes4 = [(net, length) for v, net, length in raw if v == 4]
    prefixes6 = [(net, length) for v, net, length in raw if v == 6]

    def inside(prefixes, bits):
        out = []
        for _ in range(n):
            net, length = rng.choice(prefixes)
            out.append(net | rng.getrandbits(bits - length) if length < bits else net)
        return out

    workloads = {
        ("IPv4", "random"): ([rng.getrandbits(32) for _ in range(n)], 4),
        ("IPv4", "in table"): (inside(prefixes4, 32), 4),
        ("IPv6", "random"): ([rng.getrandbits(128) for _ in range(n)], 6),
        ("IPv6", "in table"): (inside(prefixes6, 128), 6),
    }
    workloads[("mixed", "random")] = (
        [(4, a) if i % 2 == 0 else (6, b) for i, (a, b) in enumerate(zip(workloads[("IPv4", "random")][0], workloads[("IPv6", "random")][0]))], None)
    workloads[("mixed", "in table")] = (
        [(4, a) if i % 2 == 0 else (6, b) for i, (a, b) in enumerate(zip(workloads[("IPv4", "in table")][0], workloads[("IPv6", "in table")][0]))], None)
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in workloads}
    for _ in range(args.rounds):  # rounds interleave the workloads: the machine is shared
        for key, (work, version) in workloads.items():
            rates[key].append(time_lookups(table, work, version))
    hit_share = {}  # after the timed runs, so the first run is the first use of its entries
    for key, (work, version) in workloads.items():
        sample = work[:20000]
        hits = sum(1 for x in sample if (table.matches_int(version, x) if version else table.matches_int(*x)))
        hit_share[key] = hits / len(sample)

    # ---- report
    results = []
    print()
    print("| measure | value | target | |")
    print("|---|---|---|---|")
    ok = build_wall < BUILD_TARGET_S
    results.append(ok)
    print(f"| build, wall | {build_wall:.2f} s | < {BUILD_TARGET_S:.0f} s | {'PASS' if ok else 'MISS'} |")
    print(f"| build, CPU of this process | {build_cpu:.2f} s | | |")
    ok = rss_delta < MEMORY_TARGET_BYTES
    results.append(ok)
    print(f"| memory: RSS delta of the build (table kept) | {rss_delta / 2**20:,.0f} MiB | < {MEMORY_TARGET_BYTES / 2**30:.0f} GiB | {'PASS' if ok else 'MISS'} |")
    if peak is not None:
        ok = peak < MEMORY_TARGET_BYTES
        results.append(ok)
        print(f"| memory: tracemalloc peak of a build | {peak / 2**20:,.0f} MiB | < {MEMORY_TARGET_BYTES / 2**30:.0f} GiB | {'PASS' if ok else 'MISS'} |")
    print()
    print(f"lookups: PrefixTable.matches_int in one process, {n:,} integer addresses per run, {args.rounds} runs.")
    print("The first run of a workload also makes the entries it returns for the first time; the verdict")
    print("is on the median of all runs (wall clock); per CPU-second is the median rate over this process's CPU time.")
    print()
    print("| family | addresses | matched | first run /s | all runs: median (min-max) /s | per CPU-second | target | |")
    print("|---|---|---|---|---|---|---|---|")
    for key, rs in rates.items():
        wall = [r[0] for r in rs]
        med = statistics.median(wall)
        cpu_med = statistics.median(r[1] for r in rs)
        line = f"| {key[0]} | {key[1]} | {hit_share[key]:.0%} | {wall[0]:,.0f} | {med:,.0f} ({min(wall):,.0f}-{max(wall):,.0f}) | {cpu_med:,.0f} |"
        if key[1] == "random":
            ok = med >= LOOKUP_TARGET_PER_S
            results.append(ok)
            line += f" ≥ {LOOKUP_TARGET_PER_S:,} | {'PASS' if ok else 'MISS'} |"
        else:
            line += " | |"
        print(line)
    print()
    print(f"load average {os.getloadavg()[0]:.2f} at the end; {sum(results)} of {len(results)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
