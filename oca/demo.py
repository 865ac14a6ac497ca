"""`python -m oca.demo`: run an appliance on sample content with built-in defaults.

Rules kept here:
- Everything it writes lands in one working directory that it names
  (default `./demo`, or `--dir`); nothing else on the machine changes.
- It uses the real programs: `oca-admin` to ingest, `oca-server` to serve,
  and plays a title the way a player would (ranges, checked against the
  checksum) before handing over to the person at the keyboard.
- Ctrl-C (or `--seconds`) stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import xxhash

SAMPLE_TITLES = (
    ("big-buck-bunny.1080p.mp4", 48 << 20, 9.0e9),
    ("big-buck-bunny.720p.mp4", 24 << 20, 5.0e9),
    ("sintel.1080p.mp4", 32 << 20, 2.0e9),
    ("tears-of-steel.480p.mp4", 8 << 20, 4.0e8),
    ("cosmos-laundromat.audio.m4a", 2 << 20, 1.0e8),
)


def free_port(host: str, preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    raise SystemExit("no free port found")


def make_samples(where: Path) -> list[tuple[Path, str, float]]:
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (name, size, popularity) in enumerate(SAMPLE_TITLES):
        path = where / name
        if not path.exists() or path.stat().st_size != size:
            block = os.urandom(1 << 20)
            with open(path, "wb") as fh:
                for j in range(size >> 20):
                    fh.write(bytes([i, j & 255]) + block[2:])
        out.append((path, name, popularity))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="oca-demo", description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="demo", help="working directory (default ./demo)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default: wait for Ctrl-C)")
    args = p.parse_args(argv)
    work = Path(args.dir).resolve()
    print(f"demo: working directory {work}")
    for sub in ("index", "store0", "store1"):
        if sub == "index":
            shutil.rmtree(work / sub, ignore_errors=True)
        else:
            shutil.rmtree(work / sub, ignore_errors=True)
            (work / sub).mkdir(parents=True)
    port = free_port("127.0.0.1", 8080)
    cfg = work / "oca.toml"
    cfg.write_text(
        "[appliance]\nid = \"demo-oca-1\"\nsite = \"demo-site\"\n"
        f"[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 2\naccess_log = \"{work / 'access.log'}\"\n"
        f"[index]\npath = \"{work / 'index'}\"\nmap_size_gb = 1\n"
        f"[[stores]]\npath = \"{work / 'store0'}\"\n[[stores]]\npath = \"{work / 'store1'}\"\n"
        "[signing]\nkeys = { demo = \"demo-secret-0123456789\" }\nkey_id = \"demo\"\n"
    )
    bindir = Path(sys.executable).parent
    admin = [str(bindir / "oca-admin"), "--config", str(cfg)]
    samples = make_samples(work / "samples")
    for path, name, popularity in samples:
        subprocess.run([*admin, "ingest", str(path), "--id", name, "--popularity", str(popularity)], check=True, stdout=subprocess.DEVNULL)
    print(f"demo: ingested {len(samples)} sample titles into 2 stores")
    subprocess.run([*admin, "stores"], check=True)
    log = open(work / "server.log", "ab")
    server = subprocess.Popen([str(bindir / "oca-server"), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print((work / "server.log").read_text()[-2000:])
                    raise SystemExit("demo: the server did not start")
                time.sleep(0.1)
        # Play a title as a player would: signed URL, 2 MiB ranges, checksum at the end.
        path, name, _pop = samples[0]
        signed = subprocess.run([*admin, "sign", name, "--ttl", "3600"], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        size = path.stat().st_size
        h = xxhash.xxh3_128()
        started = time.monotonic()
        for start in range(0, size, 2 << 20):
            end = min(size, start + (2 << 20)) - 1
            req = urllib.request.Request(base + signed, headers={"Range": f"bytes={start}-{end}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 206, resp.status
                h.update(resp.read())
        took = time.monotonic() - started
        expected = xxhash.xxh3_128_hexdigest(path.read_bytes())
        verdict = "matches" if h.hexdigest() == expected else "DOES NOT MATCH"
        print(f"demo: played {name} in 2 MiB ranges: {size / took / 1e6:.0f} MB/s, xxh3-128 {verdict} the original")
        print(f"""
The appliance is running (Ctrl-C stops it):
  content  {base}{signed}
  path form {base}/content/{name}/range/0-1023
  health   {base}/health
  inventory {base}/inventory
  metrics  {base}/metrics
  config   {cfg}    admin: {' '.join(admin)} ls
""", flush=True)
        if args.seconds:
            time.sleep(args.seconds)
        else:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(40)
        except subprocess.TimeoutExpired:
            server.kill()
        print("demo: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
