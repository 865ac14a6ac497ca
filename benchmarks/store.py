#!/usr/bin/env python3
"""Store benchmarks: index lookups under a concurrent writer, and ingest against cp.

Run: ``.venv/bin/python benchmarks/store.py [--quick] [--size-gib 1] [--files N]
[--rounds R] [--dir DIR]``.

Rules kept here:
- Every figure printed is measured in this run; nothing is estimated or
  carried over. Targets are checked and reported PASS/MISS; the exit status
  is 0 either way (it is non-zero only if the benchmark itself breaks).
- Work happens in a temporary directory under ``--dir`` (default /var/tmp,
  a real disk, so fsync costs what it costs); on tmpfs the report says that
  its figures do not reflect a disk. Everything is removed at the end.
- LMDB is never used across fork(): the parent opens the index to seed it and
  closes it before starting the reader and writer processes, which open their
  own.
- Lookups: each call is timed on its own with ``time.perf_counter_ns()``; the
  cost of an empty pair of timer calls (same loop shape) is measured in the
  same process and subtracted, and reported. Throughput (lookups/s) comes from
  separate untimed loops over the same ids.
- Ingest: the two contenders alternate (ABBA order across rounds). Before every
  timed run the destinations are deleted, ``sync`` is run (untimed), the page
  cache is dropped when /proc/sys/vm/drop_caches is writable, and the sources
  are read once, so both contenders start with warm sources and a clean cache
  for the destination.
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import oca.store.content as content  # noqa: E402
from oca.config import load_config  # noqa: E402
from oca.store.content import COPY_CHUNK_BYTES, ContentStore  # noqa: E402
from oca.store.index import Entry  # noqa: E402
from oca.store.layout import object_relpath  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
MB = 1_000_000

# Targets (from the issue).
LOOKUP_MEDIAN_TARGET_US = 5.0
INGEST_RATIO_TARGET = 0.8

LOOKUP_BATCH = 10_000
WRITER_LIVE_FILES = 256  # the writer removes its oldest file beyond this many
WRITER_FILE_SIZES = (4 << 10, 16 << 10, 64 << 10)
GEN_POOL_BYTES = 16 * MIB  # random bytes generated once; files are slices of it
GEN_CHUNK_BYTES = 1 * MIB


# ---------------------------------------------------------------- helpers


def fs_type(path: str) -> str:
    """The file system type of the mount holding `path` (from /proc/self/mounts)."""
    path = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, best_type = mnt, parts[2]
    except OSError:
        pass
    return best_type


def write_config(base: Path, store_paths: list[Path]) -> Path:
    """An appliance config in the format of tests/support.py's write_config."""
    base.mkdir(parents=True, exist_ok=True)
    for p in store_paths:
        p.mkdir(parents=True, exist_ok=True)
    lines = [
        "[appliance]",
        'id = "oca-bench-1"',
        'site = "bench"',
        "[server]",
        'listen = ["127.0.0.1:18080"]',
        "[index]",
        f'path = "{base / "index"}"',
        "map_size_gb = 1",
    ]
    for p in store_paths:
        lines += ["[[stores]]", f'path = "{p}"', "reserve_percent = 0"]
    cfg = base / "oca.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def percentile(sorted_values, p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def read_through(paths: list[Path]) -> None:
    """Read files once so they sit in the page cache."""
    buf = bytearray(8 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def run_sync() -> None:
    subprocess.run(["sync"], check=True)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- part 1: lookups


def seed_index(cfg_path: Path, n_entries: int, seed: int) -> list[str]:
    """Publish `n_entries` synthetic entries (index only) spread over the stores."""
    cs = ContentStore.open(load_config(str(cfg_path)))
    try:
        uuids = [d.uuid for d in cs.disks if d.working]
        assert uuids, "no working store after attach"
        rng = random.Random(seed)
        ids = [f"title-{i:06d}.mp4" for i in range(n_entries)]
        now = time.time()
        batch: list[Entry] = []
        for i, cid in enumerate(ids):
            checksum = "%032x" % rng.getrandbits(128)
            mtime = 1_700_000_000 + i
            batch.append(
                Entry(cid, uuids[i % len(uuids)], object_relpath(cid, checksum, mtime), rng.randint(1 << 20, 4 << 30), checksum, mtime, now, 0.0)
            )
            if len(batch) == 5000:
                cs.index.put_many(batch)
                batch = []
        if batch:
            cs.index.put_many(batch)
        assert cs.index.count() == n_entries
    finally:
        cs.close()
    return ids


def reader_main(cfg_path: str, ids: list[str], n_lookups: int, seed: int, conn) -> None:
    """Child: open the store, measure the timer, then time `n_lookups` lookups."""
    try:
        cs = ContentStore.open(load_config(cfg_path), writable=False)
        lookup = cs.lookup
        pc = time.perf_counter_ns
        rng = random.Random(seed)

        # Warm-up: the stores cache, CPU caches, the LMDB pages we will touch.
        for cid in ids:
            lookup(cid)

        # Timer overhead, in exactly the timed loop's shape minus the call.
        n_over = min(n_lookups, 200_000)
        over = array("q", bytes(8 * n_over))
        i = 0
        for _ in range(n_over):
            t0 = pc()
            t1 = pc()
            over[i] = t1 - t0
            i += 1
        over_sorted = sorted(over)
        overhead_ns = percentile(over_sorted, 50)

        lat = array("q", bytes(8 * n_lookups))
        misses = 0
        i = 0
        untimed_ns = 0
        untimed_n = 0
        t_start = time.monotonic()
        remaining = n_lookups
        while remaining:
            batch = rng.choices(ids, k=min(LOOKUP_BATCH, remaining))
            remaining -= len(batch)
            # Each call timed on its own.
            for cid in batch:
                t0 = pc()
                loc = lookup(cid)
                t1 = pc()
                lat[i] = t1 - t0
                i += 1
                if loc is None:
                    misses += 1
            # The same ids again, untimed per call: throughput.
            b0 = pc()
            for cid in batch:
                lookup(cid)
            untimed_ns += pc() - b0
            untimed_n += len(batch)
        wall_s = time.monotonic() - t_start
        raw_sorted = sorted(lat)
        net = sorted(max(0, v - overhead_ns) for v in raw_sorted)
        conn.send(
            {
                "n": n_lookups,
                "misses": misses,
                "overhead_ns": overhead_ns,
                "overhead_p99_ns": percentile(over_sorted, 99),
                "raw_median_ns": percentile(raw_sorted, 50),
                "median_ns": percentile(net, 50),
                "p99_ns": percentile(net, 99),
                "p999_ns": percentile(net, 99.9),
                "max_ns": net[-1],
                "mean_ns": statistics.fmean(net),
                "lookups_per_s": untimed_n / (untimed_ns / 1e9),
                "wall_s": wall_s,
                "gc_enabled": gc.isenabled(),
            }
        )
        cs.close()
    except BaseException as exc:  # report, never hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()


def writer_main(cfg_path: str, src_files: list[str], ops, ready, stop, conn) -> None:
    """Child: publish and remove real small files until told to stop."""
    try:
        cs = ContentStore.open(load_config(cfg_path))
        live: list[str] = []
        published = removed = 0
        k = 0
        t0 = time.monotonic()
        while not stop.is_set():
            cid = f"writer-{os.getpid()}-{k}"
            cs.publish_file(src_files[k % len(src_files)], cid)
            k += 1
            published += 1
            live.append(cid)
            if len(live) > WRITER_LIVE_FILES:
                cs.remove(live.pop(0))
                removed += 1
            ops.value = published + removed
            if published == 1:
                ready.set()
        elapsed = time.monotonic() - t0
        for cid in live:
            cs.remove(cid)
        conn.send({"published": published, "removed": removed, "elapsed_s": elapsed})
        cs.close()
    except BaseException as exc:
        ready.set()
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()


def run_reader(ctx, cfg_path: Path, ids: list[str], n_lookups: int, seed: int) -> dict:
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=reader_main, args=(str(cfg_path), ids, n_lookups, seed, send), name="lookup-reader")
    proc.start()
    send.close()
    result = recv.recv()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"reader failed: {result['error']}")
    return result


def bench_lookups(base: Path, n_entries: int, n_lookups: int, n_stores: int) -> dict:
    ctx = mp.get_context("fork")
    stores = [base / f"store{i}" for i in range(n_stores)]
    cfg_path = write_config(base, stores)
    t0 = time.monotonic()
    ids = seed_index(cfg_path, n_entries, seed=1)
    print(f"  seeded {n_entries} entries over {n_stores} stores in {time.monotonic() - t0:.2f} s", flush=True)

    src_dir = base / "writer-src"
    src_dir.mkdir()
    src_files = []
    for i, size in enumerate(WRITER_FILE_SIZES):
        p = src_dir / f"small-{i}.bin"
        p.write_bytes(os.urandom(size))
        src_files.append(str(p))

    print(f"  reader alone: {n_lookups} lookups ...", flush=True)
    idle = run_reader(ctx, cfg_path, ids, n_lookups, seed=2)

    print(f"  reader with a concurrent writer: {n_lookups} lookups ...", flush=True)
    ops = ctx.Value("q", 0, lock=False)
    ready, stop = ctx.Event(), ctx.Event()
    w_recv, w_send = ctx.Pipe(duplex=False)
    writer = ctx.Process(target=writer_main, args=(str(cfg_path), src_files, ops, ready, stop, w_send), name="lookup-writer")
    writer.start()
    w_send.close()
    if not ready.wait(60):
        stop.set()
        writer.join()
        raise RuntimeError("writer did not publish its first file within 60 s")
    ops_before, t_before = ops.value, time.monotonic()
    busy = run_reader(ctx, cfg_path, ids, n_lookups, seed=3)
    ops_during, window_s = ops.value - ops_before, time.monotonic() - t_before
    stop.set()
    wres = w_recv.recv()
    writer.join()
    if "error" in wres:
        raise RuntimeError(f"writer failed: {wres['error']}")
    wres["ops_during_reader"] = ops_during
    wres["reader_window_s"] = window_s
    return {"idle": idle, "busy": busy, "writer": wres, "entries": n_entries, "stores": n_stores}


# ---------------------------------------------------------------- part 2: ingest


def generate_sources(src_dir: Path, n_files: int, file_bytes: int) -> list[Path]:
    """Random-looking files: slices of one urandom pool at varying offsets."""
    src_dir.mkdir(parents=True)
    pool = memoryview(os.urandom(GEN_POOL_BYTES + GEN_CHUNK_BYTES))
    rng = random.Random(4)
    paths = []
    for i in range(n_files):
        p = src_dir / f"src-{i:03d}.bin"
        with open(p, "wb") as fh:
            left = file_bytes
            while left:
                n = min(GEN_CHUNK_BYTES, left)
                off = rng.randrange(0, GEN_POOL_BYTES)
                fh.write(pool[off : off + n])
                left -= n
        paths.append(p)
    run_sync()  # the sources' own writeback must not land inside a timed run
    return paths


def prepare_run(sources: list[Path], drop: bool) -> None:
    run_sync()
    if drop:
        drop_caches()
    read_through(sources)


def run_baseline(sources: list[Path], dest: Path) -> tuple[float, dict[str, str]]:
    dest.mkdir(parents=True)
    dest_files = " ".join(shlex.quote(str(dest / s.name)) for s in sources)
    cmd = f"cp {' '.join(shlex.quote(str(s)) for s in sources)} {shlex.quote(str(dest))}/ && sync && xxh128sum {dest_files}"
    t0 = time.perf_counter()
    # stderr captured: xxh128sum draws progress there when it has a terminal.
    proc = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"baseline command failed ({proc.returncode}): {cmd}\n{proc.stderr}")
    sums = {}
    for line in proc.stdout.splitlines():
        digest, _, name = line.partition("  ")
        sums[os.path.basename(name)] = digest
    return elapsed, sums


def run_ours(sources: list[Path], base: Path) -> tuple[float, dict[str, str]]:
    cfg_path = write_config(base, [base / "store"])
    cs = ContentStore.open(load_config(str(cfg_path)))  # fresh store: set up untimed
    try:
        sums = {}
        t0 = time.perf_counter()
        for i, src in enumerate(sources):
            entry = cs.publish_file(str(src), f"ingest-{i:03d}")
            sums[src.name] = entry.checksum
        elapsed = time.perf_counter() - t0
    finally:
        cs.close()
    return elapsed, sums


def bench_ingest(base: Path, total_bytes: int, n_files: int, rounds: int, drop_requested: bool) -> dict:
    file_bytes = max(MIB, (total_bytes // n_files) // MIB * MIB)
    total = file_bytes * n_files
    src_dir = base / "ingest-src"
    t0 = time.monotonic()
    sources = generate_sources(src_dir, n_files, file_bytes)
    print(f"  generated {n_files} x {file_bytes // MIB} MiB sources in {time.monotonic() - t0:.1f} s", flush=True)
    drop = drop_requested and can_drop_caches()
    baseline_s: list[float] = []
    ours_s: list[float] = []
    checksums_agree = True
    for r in range(rounds):
        order = ("baseline", "ours") if r % 2 == 0 else ("ours", "baseline")
        for who in order:
            dest = base / f"dest-{who}"
            rmtree(dest)
            prepare_run(sources, drop)
            if who == "baseline":
                elapsed, sums_cp = run_baseline(sources, dest)
                baseline_s.append(elapsed)
            else:
                elapsed, sums_ours = run_ours(sources, dest)
                ours_s.append(elapsed)
            print(f"  round {r + 1}/{rounds} {who:8s}: {elapsed:7.3f} s  {total / MB / elapsed:8.1f} MB/s", flush=True)
            rmtree(dest)
        if sums_cp != sums_ours:
            checksums_agree = False
    rmtree(src_dir)
    run_sync()
    return {
        "total_bytes": total,
        "files": n_files,
        "file_bytes": file_bytes,
        "baseline_s": baseline_s,
        "ours_s": ours_s,
        "drop_caches": drop,
        "checksums_agree": checksums_agree,
    }


# ---------------------------------------------------------------- report


def _write_behind_text() -> str:
    step = getattr(content, "WRITE_BEHIND_BYTES", None)
    return "no write-behind" if step is None or step >= 1 << 40 else f"write-behind every {step // MIB} MiB"


def us(ns: float) -> str:
    return f"{ns / 1000:8.2f}"


def report(args, base: Path, lk: dict | None, ing: dict | None, notes: list[str]) -> None:
    print()
    print("=" * 78)
    print("oca store benchmark  (benchmarks/store.py)")
    print(f"  command : {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"  machine : {platform.node()}  {os.cpu_count()} CPUs  Linux {platform.release()}  Python {platform.python_version()}")
    print(f"  workdir : {base}  ({fs_type(str(base))})")
    for n in notes:
        print(f"  note    : {n}")
    results: list[tuple[str, str, bool]] = []
    if lk is not None:
        idle, busy, w = lk["idle"], lk["busy"], lk["writer"]
        print()
        print(f"1. ContentStore.lookup(id) -> Located  ({lk['entries']} entries, {lk['stores']} stores, random existing ids)")
        print(f"   timer overhead (empty perf_counter_ns pair, subtracted): idle {idle['overhead_ns']} ns, busy {busy['overhead_ns']} ns")
        print(f"   {'':26s} {'lookups':>9s} {'median µs':>10s} {'p99 µs':>9s} {'p99.9 µs':>9s} {'max µs':>9s} {'lookups/s':>11s} {'misses':>6s}")
        for name, d in (("reader alone", idle), ("reader + writer", busy)):
            print(
                f"   {name:26s} {d['n']:9d} {us(d['median_ns']):>10s} {us(d['p99_ns']):>9s} {us(d['p999_ns']):>9s}"
                f" {us(d['max_ns']):>9s} {d['lookups_per_s']:11,.0f} {d['misses']:6d}"
            )
        rate = w["ops_during_reader"] / w["reader_window_s"] if w["reader_window_s"] else 0.0
        print(
            f"   writer: publish_file+remove of 4-64 KiB files, {w['published']} published / {w['removed']} removed in"
            f" {w['elapsed_s']:.1f} s; {w['ops_during_reader']} ops ({rate:.0f}/s) while the reader measured"
        )
        print(f"   (raw medians before subtracting the timer: idle {us(idle['raw_median_ns']).strip()} µs, busy {us(busy['raw_median_ns']).strip()} µs; gc enabled: {busy['gc_enabled']})")
        ok = busy["median_ns"] / 1000 < LOOKUP_MEDIAN_TARGET_US and busy["misses"] == 0
        results.append((f"lookup median with writer < {LOOKUP_MEDIAN_TARGET_US:g} µs", f"{busy['median_ns'] / 1000:.2f} µs", ok))
    if ing is not None:
        total = ing["total_bytes"]
        print()
        print(
            f"2. Ingest {ing['files']} x {ing['file_bytes'] // MIB} MiB = {total / GIB:.2f} GiB, same file system, "
            f"alternating ABBA, {len(ing['ours_s'])} round(s)"
        )
        print("   baseline: cp SRC... DEST/ && sync && xxh128sum DEST...   (one shell, wall time)")
        print(f"   ours    : ContentStore.publish_file per file, in-process (library throughput), fresh store each round, "
              f"chunk {COPY_CHUNK_BYTES // MIB} MiB, {_write_behind_text()}")
        print(
            "   before each run: destination deleted, sync, "
            + ("page cache dropped (echo 3 > drop_caches), " if ing["drop_caches"] else "page cache NOT dropped, ")
            + "sources read once (warm)"
        )
        print(f"   {'round':>5s} {'baseline s':>11s} {'MB/s':>9s} {'ours s':>9s} {'MB/s':>9s} {'ours/base':>10s}")
        ratios = []
        for r, (b, o) in enumerate(zip(ing["baseline_s"], ing["ours_s"])):
            ratios.append(b / o)
            print(f"   {r + 1:5d} {b:11.3f} {total / MB / b:9.1f} {o:9.3f} {total / MB / o:9.1f} {b / o:10.2f}")
        b_med = statistics.median(total / MB / b for b in ing["baseline_s"])
        o_med = statistics.median(total / MB / o for o in ing["ours_s"])
        ratio = o_med / b_med
        print(f"   {'median':>5s} {'':11s} {b_med:9.1f} {'':9s} {o_med:9.1f} {ratio:10.2f}   (median of per-round ratios {statistics.median(ratios):.2f})")
        print(f"   checksums: publish_file's xxh3-128 {'equals' if ing['checksums_agree'] else 'DIFFERS FROM'} xxh128sum's for every file")
        results.append((f"ingest MB/s ours/baseline >= {INGEST_RATIO_TARGET:g}", f"{ratio:.2f}", ratio >= INGEST_RATIO_TARGET and ing["checksums_agree"]))
    print()
    print("Targets")
    for name, value, ok in results:
        print(f"   {'PASS' if ok else 'MISS'}  {name:45s} measured {value}")
    print("=" * 78, flush=True)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke test")
    p.add_argument("--size-gib", type=float, default=None, help="ingest data size in GiB (default 1; --quick 0.125)")
    p.add_argument("--files", type=int, default=None, help="number of ingest files (default 8; --quick 4)")
    p.add_argument("--rounds", type=int, default=None, help="ingest rounds, each running both contenders (default 3; --quick 1)")
    p.add_argument("--dir", default="/var/tmp", help="parent of the temporary work directory (must not be tmpfs)")
    p.add_argument("--entries", type=int, default=None, help="index entries for the lookup test (default 20000)")
    p.add_argument("--lookups", type=int, default=None, help="timed lookups per reader run (default 1000000; --quick 100000)")
    p.add_argument("--stores", type=int, default=3, help="stores in the lookup test's config (default 3)")
    p.add_argument("--no-drop-caches", action="store_true", help="do not drop the page cache before ingest runs")
    p.add_argument("--skip-lookups", action="store_true")
    p.add_argument("--skip-ingest", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    args.size_gib = args.size_gib if args.size_gib is not None else (0.125 if q else 1.0)
    args.files = args.files if args.files is not None else (4 if q else 8)
    args.rounds = args.rounds if args.rounds is not None else (1 if q else 3)
    args.entries = args.entries if args.entries is not None else 20_000
    args.lookups = args.lookups if args.lookups is not None else (100_000 if q else 1_000_000)
    for name in ("files", "rounds", "entries", "lookups", "stores"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.size_gib <= 0:
        p.error("--size-gib must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parent = Path(args.dir).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    ftype = fs_type(str(parent))
    if ftype in ("tmpfs", "ramfs"):
        notes.append(f"{parent} is {ftype}: fsync is free there, so figures do not reflect a disk")
    base = Path(tempfile.mkdtemp(prefix="oca-bench-store-", dir=parent))
    lk = ing = None
    try:
        if not args.skip_lookups:
            print("1. lookups", flush=True)
            lk = bench_lookups(base / "lookup", args.entries, args.lookups, args.stores)
            rmtree(base / "lookup")
        if not args.skip_ingest:
            print("2. ingest", flush=True)
            want = int(args.size_gib * GIB)
            free = shutil.disk_usage(base).free
            if free < 4 * want:
                scaled = (free // 4) // (args.files * MIB) * (args.files * MIB)
                if scaled < args.files * MIB:
                    notes.append(f"ingest skipped: only {free / GIB:.2f} GiB free under {base}")
                    want = 0
                else:
                    notes.append(
                        f"only {free / GIB:.2f} GiB free (< 4 x {want / GIB:.2f} GiB): ingest scaled down to {scaled / GIB:.2f} GiB"
                    )
                    want = scaled
                print(f"  NOTE: {notes[-1]}", flush=True)
            if not args.no_drop_caches and not can_drop_caches():
                notes.append("/proc/sys/vm/drop_caches is not writable: page cache not dropped between runs")
            if want:
                ing = bench_ingest(base / "ingest", want, args.files, args.rounds, not args.no_drop_caches)
    finally:
        rmtree(base)
    report(args, base, lk, ing, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
