#!/usr/bin/env python3
"""Fill benchmark: `oca-fill run` against `curl` on the same files from one local nginx.

Run: ``.venv/bin/python benchmarks/fill.py [--quick] [--rounds R] [--files N]
[--file-mib M] [--concurrency C] [--cap-mbps MBPS] [--dir DIR]``.

Rules kept here:
- Every figure printed is measured in this run; nothing is estimated or
  carried over. Targets are checked and reported PASS/MISS; the exit status
  is 0 either way (non-zero only if the benchmark itself breaks).
- Work happens in a temporary directory under ``--dir`` (default /var/tmp, a
  real disk, so fsync costs what it costs). Everything is removed at the end,
  nginx is stopped, whatever happens.
- The origin is nginx 1.x (tests/nginx.py: one worker, sendfile on) serving
  N files of M MiB (default 8 × 256 MiB = 2 GiB; ``--quick``: 2 × 128 MiB).
  The contenders, alternating (ABBA across rounds):
  * curl: ``curl -s -o`` each file in turn, then ``sync``; timed from the
    first curl's start to the end of ``sync`` (the same durability as the
    fill, whose files are fsynced before they are published);
  * fill: ``python -m fill.cli run`` on a fresh appliance (one store next to
    curl's directory), uncapped; timed as the whole process (interpreter
    start, manifest, downloads, hashing, fsyncs, publishes) and, separately,
    as the run itself (the status record's start to end).
  Before every timed run the destinations are deleted, ``sync`` is run
  (untimed), the page cache is dropped when /proc/sys/vm/drop_caches is
  writable, and the sources are read once, so both start with warm sources
  and a clean destination.
- The rate-cap run fills, at ``--cap-mbps`` (default 400), hard links of the
  same files under new names, enough for at least 10 s at the cap, from a
  second nginx with its access log on and a small send buffer, and reports
  achieved/cap from the agent's status record and from the origin's log.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.nginx import NginxOrigin, nginx_unavailable_reason  # noqa: E402
from tests.server_proc import free_port  # noqa: E402

MIB = 1 << 20
MB = 1_000_000
PY = sys.executable

RATIO_TARGET = 0.9  # fill MB/s ÷ curl MB/s, at least
CAP_TOLERANCE = 0.05  # achieved/cap within ±5%
CAP_MIN_SECONDS = 10.0


def make_file(path: Path, size: int, seed: int) -> None:
    """Pseudo-random bytes, every 4 KiB stamped with seed and offset (so no two blocks are alike)."""
    base = random.Random(seed).randbytes(MIB)
    with open(path, "wb") as fh:
        for pos in range(0, size, MIB):
            block = bytearray(base)
            for off in range(0, MIB, 4096):
                struct.pack_into("<QQ", block, off, seed, pos + off)
            fh.write(block[: size - pos])


def sh(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def drop_caches() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def warm(paths: list[Path]) -> None:
    buf = bytearray(8 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def appliance_config(base: Path, manifest_url: str, *, concurrency: int, cap_mbps: float | None) -> Path:
    store = base / "store0"
    store.mkdir(parents=True)
    lines = [
        "[appliance]", 'id = "oca-bench-fill"', 'site = "bench"',
        "[server]", 'listen = ["127.0.0.1:18080"]',
        "[index]", f'path = "{base / "index"}"', "map_size_gb = 1",
        "[[stores]]", f'path = "{store}"', "reserve_percent = 0",
        "[fill]", f'manifest_url = "{manifest_url}"', f"concurrency = {concurrency}",
        "require_signed_manifest = false",  # a loopback nginx over http, unsigned manifest
    ]
    if cap_mbps is not None:
        lines.append(f"rate_limit_mbps = {cap_mbps}")
    cfg = base / "oca.toml"
    cfg.write_text("\n".join(lines) + "\n")
    proc = sh(PY, "-m", "oca.admin", "--config", str(cfg), "check")  # initialise the store, as in service
    if proc.returncode != 0:
        raise RuntimeError(f"oca-admin check: {proc.stderr}")
    return cfg


def build_manifest(files_dir: Path, base_url: str, out: Path) -> dict:
    proc = sh(PY, "-m", "fill.cli", "manifest", "build", str(files_dir), "--base-url", base_url)
    if proc.returncode != 0:
        raise RuntimeError(f"manifest build: {proc.stderr}")
    out.write_text(proc.stdout)
    return json.loads(proc.stdout)


def run_fill(cfg: Path) -> tuple[float, dict]:
    """(wall seconds of the whole process, the status record's `last`)."""
    t0 = time.perf_counter()
    proc = sh(PY, "-m", "fill.cli", "--config", str(cfg), "run", timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"oca-fill run exited {proc.returncode}: {proc.stderr[-2000:]}")
    st = sh(PY, "-m", "fill.cli", "--config", str(cfg), "status")
    return wall, json.loads(st.stdout)["last"]


def run_curl(urls: list[str], dest: Path) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for url in urls:
        subprocess.run(["curl", "-s", "-f", "-o", str(dest / url.rsplit("/", 1)[1]), url], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 files of 128 MiB (256 MiB in all)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2)")
    p.add_argument("--files", type=int, default=None)
    p.add_argument("--file-mib", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=4, help="fill.concurrency for the uncapped runs")
    p.add_argument("--cap-mbps", type=float, default=400.0)
    p.add_argument("--dir", default="/var/tmp")
    args = p.parse_args()
    reason = nginx_unavailable_reason()
    if reason or shutil.which("curl") is None:
        print(f"cannot run: {reason or 'curl is not on PATH'}", file=sys.stderr)
        return 2
    n_files = args.files or (2 if args.quick else 8)
    file_mib = args.file_mib or (128 if args.quick else 256)
    rounds = args.rounds or 2
    total = n_files * file_mib * MIB

    work = Path(tempfile.mkdtemp(prefix="oca-fill-bench-", dir=args.dir))
    origins: list[NginxOrigin] = []
    try:
        www = work / "www"
        files = www / "files"
        files.mkdir(parents=True)
        t0 = time.perf_counter()
        for i in range(n_files):
            make_file(files / f"f{i:02d}.bin", file_mib * MIB, seed=700 + i)
        gen_s = time.perf_counter() - t0
        plain = NginxOrigin(www, free_port()).start()
        origins.append(plain)
        manifest = build_manifest(files, plain.url("files/"), www / "manifest.json")
        urls = [f["sources"][0] for f in manifest["files"]]
        sources = sorted(files.iterdir())

        print(f"fill vs curl, measured {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} "
              f"({os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()})")
        print(f"origin: nginx, {n_files} files x {file_mib} MiB = {total / MIB:.0f} MiB (made in {gen_s:.1f} s); "
              f"work dir {work}; fill concurrency {args.concurrency}; {rounds} round(s)")
        rows = []
        dropped = False
        for r in range(rounds):
            order = ("curl", "fill") if r % 2 == 0 else ("fill", "curl")
            row = {"round": r + 1}
            for who in order:
                for d in (work / "curl", work / "app"):
                    shutil.rmtree(d, ignore_errors=True)
                dropped = drop_caches()
                warm(sources)
                if who == "curl":
                    row["curl_s"] = run_curl(urls, work / "curl")
                else:
                    cfg = appliance_config(work / "app", plain.url("manifest.json"), concurrency=args.concurrency, cap_mbps=None)
                    wall, last = run_fill(cfg)
                    if last["files_added"] != n_files or last["bytes_filled"] != total:
                        raise RuntimeError(f"fill did not fill everything: {last}")
                    row["fill_wall_s"] = wall
                    row["fill_run_s"] = last["ended_s"] - last["started_s"]
            rows.append(row)

        print()
        print(f"{'round':>5}  {'curl MB/s':>10}  {'fill MB/s (process)':>20}  {'fill MB/s (run)':>16}  {'ratio (process)':>16}  {'ratio (run)':>12}")
        ratios_p, ratios_r = [], []
        for row in rows:
            c = total / MB / row["curl_s"]
            fp = total / MB / row["fill_wall_s"]
            fr = total / MB / row["fill_run_s"]
            ratios_p.append(fp / c)
            ratios_r.append(fr / c)
            print(f"{row['round']:>5}  {c:>10.0f}  {fp:>20.0f}  {fr:>16.0f}  {fp / c:>16.2f}  {fr / c:>12.2f}")
        med_p, med_r = statistics.median(ratios_p), statistics.median(ratios_r)
        print(f"{'median':>5}  {'':>10}  {'':>20}  {'':>16}  {med_p:>16.2f}  {med_r:>12.2f}")
        print("(process: the whole `oca-fill run`, interpreter start included; run: the status record's start to end;"
              f" page cache {'dropped' if dropped else 'NOT dropped (no permission)'} before each run)")

        # ------------------------------------------------ rate cap
        cap_Bps = args.cap_mbps * 1e6 / 8
        file_bytes = file_mib * MIB
        n_links = max(1, -(-int(cap_Bps * (CAP_MIN_SECONDS + 0.5)) // file_bytes))
        capdir = work / "www-cap" / "files"
        capdir.mkdir(parents=True)
        for i in range(n_links):
            os.link(sources[i % len(sources)], capdir / f"cap{i:02d}.bin")
        logged = NginxOrigin(work / "www-cap", free_port(), access_log=True, sndbuf=64 << 10).start()
        origins.append(logged)
        build_manifest(capdir, logged.url("files/"), work / "www-cap" / "manifest.json")
        shutil.rmtree(work / "app", ignore_errors=True)
        shutil.rmtree(work / "curl", ignore_errors=True)
        drop_caches()
        warm(sources)
        cfg = appliance_config(work / "app", logged.url("manifest.json"), concurrency=args.concurrency, cap_mbps=args.cap_mbps)
        wall, last = run_fill(cfg)
        run_s = last["ended_s"] - last["started_s"]
        achieved = last["bytes_filled"] * 8 / run_s / 1e6
        entries = [e for e in logged.wait_idle("/files/")]
        span = max(e.ended_s for e in entries) - min(e.started_s for e in entries)
        origin_mbps = sum(e.body_bytes_sent for e in entries) * 8 / span / 1e6
        print()
        print(f"rate cap {args.cap_mbps:g} Mb/s, {n_links} files, {last['bytes_filled'] / MB:.0f} MB, concurrency {args.concurrency}:")
        print(f"  agent side  (status record): {achieved:7.1f} Mb/s over {run_s:5.1f} s  achieved/cap {achieved / args.cap_mbps:.3f}")
        print(f"  origin side (nginx log)    : {origin_mbps:7.1f} Mb/s over {span:5.1f} s  achieved/cap {origin_mbps / args.cap_mbps:.3f}")

        print()
        print("targets:")
        ok_ratio = med_r >= RATIO_TARGET
        print(f"  fill/curl MB/s (run), median    >= {RATIO_TARGET}: {med_r:.2f}  {'PASS' if ok_ratio else 'MISS'}")
        print(f"  fill/curl MB/s (process), median >= {RATIO_TARGET}: {med_p:.2f}  {'PASS' if med_p >= RATIO_TARGET else 'MISS'}")
        worst = max(abs(achieved / args.cap_mbps - 1), abs(origin_mbps / args.cap_mbps - 1))
        long_enough = min(run_s, span) >= CAP_MIN_SECONDS
        print(f"  rate cap achieved/cap within ±{CAP_TOLERANCE:.0%} over >= {CAP_MIN_SECONDS:g} s: "
              f"agent {achieved / args.cap_mbps:.3f}, origin {origin_mbps / args.cap_mbps:.3f}  "
              f"{'PASS' if worst <= CAP_TOLERANCE and long_enough else 'MISS'}")
        return 0
    finally:
        for o in origins:
            o.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
