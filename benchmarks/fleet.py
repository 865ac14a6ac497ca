#!/usr/bin/env python3
"""Steering at fleet scale: N simulated appliances, one real `oca-steering`, measured.

Run: ``.venv/bin/python benchmarks/fleet.py --appliances N`` (one N; ends with
the single `fleet:` line), or ``--table 1000,5000,20000`` (one run per N, then
a table). ``--generate-only`` builds and caches the fleet.

Rules kept here:
- The fleet (cached by seed, N, files and prefixes under ``--cache-dir``;
  making it is never in a measured time): a catalogue of ``--files``
  (200,000) content ids in popularity order (Zipf, s = 1); sites of 1-8
  appliances; each appliance's capacity drawn from 5,000-60,000 files. The
  placement is fill's: within a site, a file gets
  `fill.plan.CopyPolicy().copies(...)` copies on the site's appliances that
  rank it highest by `oca.rendezvous` (weighted rendezvous, equal weights),
  and each appliance takes the files placed on it in popularity order up to
  its capacity. (File sizes are not modelled: capacity is a count.) The
  rendezvous scores are computed vectorised (numpy, XXH3-64 for 16-byte
  inputs); `check_placement` compares them with `oca.rendezvous.hrw_score`
  on 10,000 sampled (appliance, file) pairs before a fleet is used.
- Routes: ``--prefixes`` (1,000,000) prefixes in all, 80 % IPv4 (/16-/24)
  and 20 % IPv6 (/32-/48), spread over the sites; every appliance of a site
  announces its site's prefixes.
- The simulator: ``--sim-procs`` processes, each serving a share of the
  appliances on its own port, each appliance under its own base URL
  ``http://127.0.0.1:PORT/a/<n>``. `/inventory` and `/routes` bodies are
  made by `oca.inventory_wire`, the builders the real appliance uses (JSON
  or packed, as asked); `/health` has the real answer's fields steering
  reads (tests/unit/test_fleet_sim.py checks both against steering's parser).
- Churn, while steering polls: every second 1 % of the appliances change
  their inventory by one added and one removed file (a delta), every 10 s
  0.1 % of them gain or lose one route; the driver kills one appliance and
  drains another, and adds a file to a third, and times how long until
  `/steer` reflects each.
- Steering runs as `[server] workers = 2` (a poller writing the fleet
  store, two workers deciding from it), interval 10 s, fail_after 1: a dead
  appliance is out after its next failed poll, within one interval and a
  round.
- Figures: RSS is the sum over steering's processes (/proc smaps_rollup;
  PSS too, which counts the shared snapshot pages once); start is
  from launching steering to every appliance being up with its inventory
  and routes; poll CPU is steering's CPU seconds per second while idle
  between rounds and polls (no client load); decisions/s, p99 from wrk
  (`-t1 -c64`, random clients and files, max_urls 5) against steering and
  against the minimal aiohttp handler of benchmarks/steer.py, alternating,
  in the same run, after one uncounted run of each (`--warmup`, 30 s).
- Oracle: churn is frozen, two rounds pass, then 10,000 sampled clients
  (with random files) are asked of steering and compared with a brute-force
  answer over the simulator's own truth: every prefix length probed in a
  dict (no DIR-24-8, no intervals), holdings as Python sets, states from
  what the driver did, and `steering.ranking.decide` for the order (the
  ranking itself is tested in tests/unit/test_ranking.py).
- Everything started is stopped on exit, error, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import ipaddress
import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable

from benchmarks.steer import Cleanup, child_pids, cpu_seconds, free_port, run_wrk, stop_process  # noqa: E402
from tests.server_proc import wait_port  # noqa: E402

CAPACITY_RANGE = (5_000, 60_000)
SITE_SIZES = (1, 8)
V6_SHARE = 0.2
ZIPF_S = 1.0
APPLIANCE_FMT = "a{:05d}"  # 6 characters: "<id>\0<content id>" is 16 bytes, one XXH3 length class
CONTENT_CHARS = 9  # "c" + 8 hex digits

# ---------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    n: int
    seed: int
    ids: list  # content ids, most popular first
    appliances: list  # appliance ids
    site_of: list  # site index per appliance
    sites: list  # site names
    members: list  # per site: appliance indexes
    holdings: list  # per appliance: sorted numpy uint32 file indexes
    v4: list  # per site: list of (network int, length)
    v6: list


def content_ids(count: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < count:
        cid = f"c{rng.getrandbits(32):08x}"
        if cid not in seen:
            seen.add(cid)
            out.append(cid)
    return out


_M64 = (1 << 64) - 1
# XXH3's default secret, bytes 24..55 as little-endian words (the 9-16 byte path reads only these).
_S24, _S32, _S40, _S48 = 0x1F67B3B7A4A44072, 0x78E5C0CC4EE679CB, 0x2172FFCC7DD05A82, 0x8E2443F7744608B8
_BITFLIP1 = _S24 ^ _S32
_BITFLIP2 = _S40 ^ _S48
_MX = 0x165667919E3779F9


def hrw_hashes(appliance_id: str, tails):
    """XXH3-64 of "<appliance id>\\0<content id>" for many content ids at once (16-byte inputs).

    `tails` is a numpy uint64 array of each content id's last 8 bytes (little
    endian). Equal weights: the rendezvous order is the order of these hashes.
    """
    import numpy as np

    head = (appliance_id + "\0" + "c").encode("ascii")
    assert len(head) == 8
    lo = np.uint64(int.from_bytes(head, "little") ^ _BITFLIP1)
    hi = tails ^ np.uint64(_BITFLIP2)
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a_lo, a_hi = lo & m32, lo >> s32
    b_lo, b_hi = hi & m32, hi >> s32
    ll = a_lo * b_lo
    hl = a_hi * b_lo
    lh = a_lo * b_hi
    hh = a_hi * b_hi
    cross = (ll >> s32) + (hl & m32) + lh
    upper = (hl >> s32) + (cross >> s32) + hh
    lower = (cross << s32) | (ll & m32)
    swapped = int.from_bytes(int(lo).to_bytes(8, "little"), "big")
    acc = np.uint64((16 + swapped) & _M64) + hi + (lower ^ upper)
    acc ^= acc >> np.uint64(37)
    acc *= np.uint64(_MX)
    acc ^= acc >> s32
    return acc


def tails_of(ids: list[str]):
    import numpy as np

    return np.array([int.from_bytes(c[1:].encode("ascii"), "little") for c in ids], dtype=np.uint64)


def check_placement(ids: list[str], appliances: list[str], samples: int, rng: random.Random) -> int:
    """Vectorised scores against `oca.rendezvous.hrw_score` on sampled pairs; returns how many agree."""
    import numpy as np
    import xxhash

    agree = 0
    for _ in range(samples):
        a = rng.choice(appliances)
        c = rng.choice(ids)
        ours = int(hrw_hashes(a, tails_of([c]))[0])
        theirs = xxhash.xxh3_64_intdigest(f"{a}\0{c}".encode("ascii"))
        agree += ours == theirs
    del np
    return agree


def generate(n: int, seed: int, files: int, prefixes: int) -> Fleet:
    import numpy as np

    from fill.plan import CopyPolicy

    rng = random.Random(seed)
    ids = content_ids(files, rng)
    tails = tails_of(ids)
    appliances = [APPLIANCE_FMT.format(i) for i in range(n)]
    members: list[list[int]] = []
    site_of = [0] * n
    i = 0
    while i < n:
        size = min(n - i, rng.randint(*SITE_SIZES))
        members.append(list(range(i, i + size)))
        for j in range(i, i + size):
            site_of[j] = len(members) - 1
        i += size
    sites = [f"s{k:05d}" for k in range(len(members))]
    pop = 1.0 / np.arange(1, files + 1) ** ZIPF_S
    share = pop / pop.sum()
    policy = CopyPolicy()
    holdings: list = [None] * n
    # k copies per file: CopyPolicy.copies, vectorised for the default policy (no head or mid share).
    assert policy.head_share == 0 and policy.mid_share == 0
    for site, mem in enumerate(members):
        size = len(mem)
        caps = [rng.randint(*CAPACITY_RANGE) for _ in mem]
        if size == 1:
            holdings[mem[0]] = np.arange(min(files, caps[0]), dtype=np.uint32)
            continue
        span = min(files, sum(caps))  # no file past this one can find a free appliance
        k = np.minimum(size, np.maximum(1, np.ceil(size * share[:span] * policy.load_headroom - 1e-9))).astype(np.int64)
        scores = np.stack([hrw_hashes(appliances[a], tails[:span]) for a in mem])  # size × span
        # Rank of each appliance for each file (0 = the file's best): argsort of argsort, best first.
        order = np.argsort(scores, axis=0)[::-1]
        rank = np.empty_like(order)
        rows = np.arange(size)[:, None]
        rank[order, np.arange(span)[None, :]] = rows
        for r, a in enumerate(mem):
            placed = np.nonzero(rank[r] < k)[0]
            holdings[a] = placed[: caps[r]].astype(np.uint32)
    v4: list[list] = [[] for _ in members]
    v6: list[list] = [[] for _ in members]
    for p in range(prefixes):
        site = rng.randrange(len(members))
        if rng.random() < V6_SHARE:
            length = rng.randint(32, 48)
            net = (0x2001 << 112 | rng.getrandbits(112)) >> (128 - length) << (128 - length)
            v6[site].append((net, length))
        else:
            length = rng.randint(16, 24)
            net = rng.randrange(1 << 24, 224 << 24) >> (32 - length) << (32 - length)
            v4[site].append((net, length))
    return Fleet(n, seed, ids, appliances, site_of, sites, members, holdings, v4, v6)


def cache_path(args) -> Path:
    return Path(args.cache_dir) / f"fleet-s{args.seed}-n{args.appliances}-f{args.files}-p{args.prefixes}.pickle"


def full_bodies(args, fleet: Fleet) -> tuple:
    """Every appliance's first full inventory in the packed form, made once and cached beside the fleet.

    Returns (memory map of the bodies, offsets): body i is map[offsets[i]:offsets[i + 1]].
    A real appliance also keeps its answer per generation; making 30,000-id
    bodies on demand made the simulator, not steering, the bottleneck.
    """
    import mmap

    import numpy as np

    from oca.inventory_wire import inventory_full

    path = cache_path(args).with_suffix(".bodies")
    index = cache_path(args).with_suffix(".offsets.npy")
    if not path.exists() or not index.exists():
        offsets = [0]
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            for i, aid in enumerate(fleet.appliances):
                body = inventory_full(aid, 1, [fleet.ids[f] for f in fleet.holdings[i].tolist()], "packed")
                fh.write(body)
                offsets.append(offsets[-1] + len(body))
        np.save(index, np.array(offsets, dtype=np.int64))
        os.replace(tmp, path)
    offsets = np.load(index)
    with path.open("rb") as fh:
        return mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ), offsets


def hashed_bodies(args, fleet: Fleet) -> tuple:
    """Every appliance's first full inventory in the hashed form (`oca.inventory_wire.hashed_full`), cached like `full_bodies`."""
    import mmap

    import numpy as np

    from oca.inventory_wire import hashed_full, id_hash

    path = cache_path(args).with_suffix(".hashed")
    index = cache_path(args).with_suffix(".hashed-offsets.npy")
    if not path.exists() or not index.exists():
        catalogue = np.array([id_hash(c) for c in fleet.ids], dtype=np.uint64)
        offsets = [0]
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            for i, aid in enumerate(fleet.appliances):
                hashes = np.unique(catalogue[fleet.holdings[i]])
                body = hashed_full(aid, 1, hashes.astype("<u8").tobytes(), len(hashes))
                fh.write(body)
                offsets.append(offsets[-1] + len(body))
        np.save(index, np.array(offsets, dtype=np.int64))
        os.replace(tmp, path)
    offsets = np.load(index)
    with path.open("rb") as fh:
        return mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ), offsets


def load_fleet(args) -> Fleet:
    cache = cache_path(args)
    if cache.exists():
        with cache.open("rb") as fh:
            return pickle.load(fh)  # our own cache file, written below
    started = time.monotonic()
    fleet = generate(args.appliances, args.seed, args.files, args.prefixes)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(fleet, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, cache)
    print(f"fleet: generated N={args.appliances} in {time.monotonic() - started:.1f} s, cached at {cache}", file=sys.stderr)
    return fleet


def v4_text(net: int, length: int) -> str:
    return f"{ipaddress.IPv4Address(net)}/{length}"


def v6_text(net: int, length: int) -> str:
    return f"{ipaddress.IPv6Address(net)}/{length}"


def site_prefixes(fleet: Fleet, site: int) -> list[str]:
    return [v4_text(*p) for p in fleet.v4[site]] + [v6_text(*p) for p in fleet.v6[site]]


# ---------------------------------------------------------------- the simulator


@dataclass
class SimAppliance:
    index: int
    generation: int = 1
    journal: list = field(default_factory=list)  # (generation, added ids, removed ids)
    added: set = field(default_factory=set)  # file indexes beyond the base holdings
    removed: set = field(default_factory=set)
    routes_generation: int = 1
    routes_extra: list = field(default_factory=list)
    routes_gone: set = field(default_factory=set)
    state: str = "ok"  # ok, draining, dead


def health_body(appliance: str, site: str, status: str, generation: int | None = None, routes_generation: int | None = None) -> bytes:
    """The fields of the real appliance's /health that steering reads (see `oca.server.app.health_document`)."""
    conditions = [] if status == "ok" else [{"status": status, "reason": "drained by operator" if status == "draining" else status}]
    doc = {"status": status, "conditions": conditions, "appliance": appliance, "site": site,
           "load": {"bytes_per_s": 0.0, "nic_utilisation": 0.1}}
    if generation is not None:
        doc["generation"] = generation
        doc["routes_generation"] = routes_generation
    return json.dumps(doc).encode() + b"\n"


def simulate(args) -> None:
    """`--simulate`: serve appliances [lo, hi) of the cached fleet on one port."""
    import uvloop
    from aiohttp import web

    from oca.inventory_wire import CONTENT_TYPES, FORMS, inventory_delta, inventory_full, inventory_unchanged, routes_answer

    fleet = load_fleet(args)
    packed_box: list = []  # the packed bodies, mapped at the first packed request (a fleet's poller asks for the hashed form)
    hashed, hashed_offsets = hashed_bodies(args, fleet)
    lo, hi = (int(x) for x in args.simulate.split(":"))
    sims = {i: SimAppliance(i) for i in range(lo, hi)}
    rng = random.Random(args.seed * 1000 + lo)
    frozen = [False]
    site_routes = {}
    routes_bodies: dict[int, tuple[int, bytes]] = {}

    def routes_of(s: SimAppliance) -> list[str]:
        site = fleet.site_of[s.index]
        base = site_routes.get(site)
        if base is None:
            base = site_routes[site] = site_prefixes(fleet, site)
        if not s.routes_extra and not s.routes_gone:
            return base
        return [p for p in base if p not in s.routes_gone] + s.routes_extra

    def ids_of(s: SimAppliance) -> list[str]:
        held = set(fleet.holdings[s.index].tolist())
        held |= s.added
        held -= s.removed
        return [fleet.ids[i] for i in held]

    async def handle(request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")
        if parts[1] == "_ctl":
            return control(parts[2:], request)
        s = sims.get(int(parts[2]))
        if s is None:
            return web.Response(status=404)
        if s.state == "dead":
            request.transport.close()  # a killed appliance: the connection ends, nothing is answered
            raise web.HTTPServiceUnavailable()
        aid = fleet.appliances[s.index]
        what = parts[3]
        if what == "health":
            return web.Response(body=health_body(aid, fleet.sites[fleet.site_of[s.index]], "draining" if s.state == "draining" else "ok",
                                                 s.generation, s.routes_generation),
                                content_type="application/json")
        if what == "routes":
            since = request.query.get("since")
            since = int(since) if since is not None else None
            if since == s.routes_generation:
                body = routes_answer(aid, fleet.sites[fleet.site_of[s.index]], s.routes_generation, since, ())
            else:
                cached = routes_bodies.get(s.index)
                if cached is None or cached[0] != s.routes_generation:
                    cached = routes_bodies[s.index] = (s.routes_generation, routes_answer(
                        aid, fleet.sites[fleet.site_of[s.index]], s.routes_generation, None, routes_of(s)))
                body = cached[1]
            return web.Response(body=body, content_type="application/json")
        if what == "inventory":
            form = request.query.get("form", "json")
            if form not in FORMS:
                return web.Response(status=400, text='{"error": "form"}', content_type="application/json")
            ctype = CONTENT_TYPES[form]
            since = request.query.get("since")
            since = int(since) if since is not None else None
            if since is not None and since == s.generation:
                body = inventory_unchanged(aid, s.generation, since, form)
            elif since is not None and 1 <= since < s.generation:
                added: set = set()
                removed: set = set()
                for gen, adds, drops in s.journal:
                    if gen > since:
                        for c in adds:
                            removed.discard(c)
                            added.add(c)
                        for c in drops:
                            added.discard(c)
                            removed.add(c)
                body = inventory_delta(aid, s.generation, since, sorted(added), sorted(removed), form=form)
            elif form == "hashed":
                body = hashed[int(hashed_offsets[s.index]) : int(hashed_offsets[s.index + 1])]
            elif form == "packed":
                # The full inventory as of generation 1, cached; the next poll's delta
                # (since=1) brings every change after it, as for a steering that polled then.
                if not packed_box:
                    packed_box.extend(full_bodies(args, fleet))
                bodies, offsets = packed_box
                body = bodies[int(offsets[s.index]) : int(offsets[s.index + 1])]
            else:
                body = await asyncio.get_running_loop().run_in_executor(None, inventory_full, aid, s.generation, ids_of(s), form)
            return web.Response(body=body, headers={"Content-Type": ctype})
        return web.Response(status=404)

    def control(parts: list[str], request: web.Request) -> web.Response:
        cmd = parts[0]
        if cmd == "freeze":
            frozen[0] = True
        elif cmd == "thaw":
            frozen[0] = False
        elif cmd in ("kill", "drain", "revive"):
            sims[int(parts[1])].state = {"kill": "dead", "drain": "draining", "revive": "ok"}[cmd]
        elif cmd == "add":
            s = sims[int(parts[1])]
            f = int(parts[2])
            s.removed.discard(f)
            s.added.add(f)
            s.generation += 1
            s.journal.append((s.generation, [fleet.ids[f]], []))
        elif cmd == "truth":
            doc = {i: {"added": sorted(s.added), "removed": sorted(s.removed), "state": s.state,
                       "routes_extra": s.routes_extra, "routes_gone": sorted(s.routes_gone)} for i, s in sims.items()}
            return web.json_response(doc)
        return web.json_response({"ok": True})

    async def churn() -> None:
        indexes = list(sims)
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            if frozen[0]:
                continue
            for i in rng.sample(indexes, max(1, len(indexes) // 100)):
                s = sims[i]
                base = fleet.holdings[i]
                if len(base) == 0:
                    continue
                drop = int(base[rng.randrange(len(base))])
                add = rng.randrange(len(fleet.ids))
                if add in s.removed or drop in s.added:
                    continue
                s.removed.add(drop)
                s.added.add(add)
                s.generation += 1
                s.journal.append((s.generation, [fleet.ids[add]], [fleet.ids[drop]]))
            if tick % 10 == 0:
                for i in rng.sample(indexes, max(1, len(indexes) // 1000)):
                    s = sims[i]
                    base = routes_of(s)
                    if s.routes_extra or not base:
                        s.routes_extra = []
                    else:
                        s.routes_extra = [f"203.0.{rng.randrange(256)}.0/24"]
                    s.routes_generation += 1

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096, reuse_address=True).start()
        task = asyncio.ensure_future(churn())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("simulator ready", file=sys.stderr, flush=True)
        await stop.wait()
        task.cancel()
        await runner.cleanup()

    uvloop.run(main())


def serve_baseline(listen: str) -> None:
    """`--baseline-server HOST:PORT`: benchmarks/steer.py's minimal handler, on a shared port (SO_REUSEPORT)."""
    import uvloop
    from aiohttp import web

    async def steer(request: web.Request) -> web.Response:
        q = request.query
        return web.json_response({"content": q.get("content"), "client": q.get("client"), "urls": []})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/steer", steer)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = listen.rsplit(":", 1)
        await web.TCPSite(runner, host, int(port), backlog=1024, reuse_address=True, reuse_port=True).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(main())


# ---------------------------------------------------------------- the driver


def steering_toml(fleet: Fleet, path: Path, port: int, sim_ports: list[tuple[int, int, int]], args) -> None:
    lines = [
        "max_urls = 5",
        f'fallback_sites = ["{fleet.sites[0]}"]',
        "[server]", f'listen = ["127.0.0.1:{port}"]', f"workers = {getattr(args, 'workers', 1)}",
        "[trust]", 'callers = ["127.0.0.1/32"]',
        "[health]", f"interval_s = {args.interval}", f"timeout_s = {args.timeout}", f"fail_after = {args.fail_after}",
        "recover_after = 1", "max_response_mb = 64",
    ]
    if getattr(args, "snapshot", None):
        lines += [f'snapshot_file = "{args.snapshot}"', f"snapshot_interval_s = {getattr(args, 'snapshot_interval', 60)}"]
    for lo, hi, sim_port in sim_ports:
        for i in range(lo, hi):
            lines += ["[[appliances]]", f'id = "{fleet.appliances[i]}"', f'url = "http://127.0.0.1:{sim_port}/a/{i}"',
                      f'site = "{fleet.sites[fleet.site_of[i]]}"']
    path.write_text("\n".join(lines) + "\n")


def rss_mib(pids: list[int], field: str = "Rss:") -> float:
    """Sum over `pids` of /proc/PID/smaps_rollup's `field` ("Rss:", or "Pss:", which shares a page among its mappers)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Client:
    """One keep-alive connection to steering."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError

    def json(self, path: str) -> dict:
        return json.loads(self.get(path)[1])

    def close(self) -> None:
        self.conn.close()

    def steer(self, client: str, content: str) -> list[str]:
        status, body = self.get(f"/steer?content={content}&client={client}")
        return [u["appliance"] for u in json.loads(body).get("urls", [])]


def address_in(net: int, length: int, bits: int, rng: random.Random) -> str:
    value = net | rng.getrandbits(bits - length) if length < bits else net
    return str(ipaddress.IPv4Address(value) if bits == 32 else ipaddress.IPv6Address(value))


def sample_clients(fleet: Fleet, count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        site = rng.randrange(len(fleet.sites))
        if fleet.v6[site] and rng.random() < V6_SHARE:
            out.append(address_in(*rng.choice(fleet.v6[site]), 128, rng))
        elif fleet.v4[site]:
            out.append(address_in(*rng.choice(fleet.v4[site]), 32, rng))
        else:
            out.append(f"198.18.{rng.randrange(256)}.{rng.randrange(256)}")  # matches nothing: fallback
    return out


def popular(fleet: Fleet, rng: random.Random) -> str:
    """A content id, log-uniform over popularity rank (the head asked often, the tail sometimes)."""
    return fleet.ids[int(len(fleet.ids) ** rng.random()) - 1]


def oracle(fleet: Fleet, truth: dict, samples: list[tuple[str, str]], max_urls: int) -> list[list[str]]:
    """Brute force over the simulator's truth: every prefix length probed, a bitmap per appliance for holdings."""
    from steering.ranking import Appliance, Live, decide

    registry = [Appliance(a, "", fleet.sites[fleet.site_of[i]]) for i, a in enumerate(fleet.appliances)]
    tables: dict[tuple[int, int], dict[int, list]] = {}  # (version, length) -> network -> tags
    texts: dict[int, list] = {}  # site → (version, net, length, text) of its prefixes, made once
    for i, a in enumerate(fleet.appliances):
        t = truth[str(i)]
        site = fleet.site_of[i]
        gone = set(t["routes_gone"])
        items = texts.get(site)
        if items is None:
            items = texts[site] = ([(4, net, length, v4_text(net, length)) for net, length in fleet.v4[site]]
                                   + [(6, net, length, v6_text(net, length)) for net, length in fleet.v6[site]])
        tag = ("route", a)
        for version, net, length, text in items:
            if text not in gone:
                tags = tables.setdefault((version, length), {}).setdefault(net, [])
                if tag not in tags:
                    tags.append(tag)
        for text in t["routes_extra"]:
            n = ipaddress.ip_network(text)
            tags = tables.setdefault((n.version, n.prefixlen), {}).setdefault(int(n.network_address), [])
            if ("route", a) not in tags:
                tags.append(("route", a))
    index = {c: f for f, c in enumerate(fleet.ids)}

    # Holdings as one bitmap row per appliance, made here from the simulator's truth (not steering's store), and
    # a file's holders found by reading its column: walking a 20,000-appliance registry for each of 10,000
    # decisions took the oracle most of an hour. `ranking.decide` with an index gives the walk's answer (tested).
    import numpy as np

    from steering.ranking import holder_order, index_registry

    width = (len(fleet.ids) + 7) // 8
    rows = np.zeros((fleet.n, width), dtype=np.uint8)
    for i in range(fleet.n):
        t = truth[str(i)]
        mask = np.zeros(width * 8, dtype=bool)
        mask[fleet.holdings[i]] = True
        mask[t["added"]] = True
        mask[t["removed"]] = False
        rows[i] = np.packbits(mask, bitorder="little")

    class Bits:
        __slots__ = ("i",)

        def __init__(self, i: int):
            self.i = i

        def __contains__(self, cid: object) -> bool:
            f = index.get(cid)
            return f is not None and (int(rows[self.i, f >> 3]) >> (f & 7)) & 1 == 1

    def held(i: int) -> Bits:
        return Bits(i)

    holders_cache: dict[str, list] = {}

    def holders(cid: str) -> list:
        h = holders_cache.get(cid)
        if h is None:
            f = index.get(cid)
            which = [] if f is None else np.flatnonzero(rows[:, f >> 3] & (1 << (f & 7))).tolist()
            h = holders_cache[cid] = holder_order(cid, [registry[i] for i in which])
        return h

    reg_index = index_registry(registry, holders)

    class LazyLive(dict):
        def __missing__(self, aid):
            i = int(aid[1:])
            state = truth[str(i)]["state"]
            lv = Live(state == "ok", False, held(i))
            self[aid] = lv
            return lv

        def get(self, aid, default=None):
            return self[aid]

    live = LazyLive()

    @dataclass(frozen=True)
    class Entry:
        cidr: str
        length: int
        tags: tuple

    out = []
    for client, content in samples:
        addr = ipaddress.ip_address(client)
        bits = 32 if addr.version == 4 else 128
        value = int(addr)
        matches = []
        for length in range(bits, -1, -1):
            table = tables.get((addr.version, length))
            if not table:
                continue
            net = value >> (bits - length) << (bits - length) if length else 0
            tags = table.get(net)
            if tags:
                text = (v4_text if bits == 32 else v6_text)(net, length)
                matches.append(Entry(text, length, tuple(tags)))
        d = decide(content, matches, registry, live, max_urls=max_urls, fallback_sites=[fleet.sites[0]], index=reg_index)
        out.append([p.appliance.appliance_id for p in d.picks])
    return out


def wait_for(what: str, fn, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step_s)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")


def run_one(args) -> dict:
    fleet = load_fleet(args)
    if args.workers <= 1:
        full_bodies(args, fleet)  # made before anything is timed; a single process asks for the packed form
    hashed_bodies(args, fleet)
    rng = random.Random(args.seed + 7)
    agree = check_placement(fleet.ids, fleet.appliances, 10_000, rng)
    if agree != 10_000:
        raise RuntimeError(f"vectorised rendezvous agrees with oca.rendezvous on {agree} of 10000 samples")
    cleanup = Cleanup()
    wrk_box: list = []
    cleanup.add("wrk", lambda: [w.kill() for w in list(wrk_box)])

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="oca-fleet-"))
    cleanup.add("tmp", lambda: subprocess.run(["rm", "-rf", str(tmp)]))
    try:
        # Simulators.
        share = math.ceil(fleet.n / args.sim_procs)
        sim_ports = []
        for lo in range(0, fleet.n, share):
            hi = min(fleet.n, lo + share)
            port = free_port()
            cmd = [PY, __file__, "--simulate", f"{lo}:{hi}", "--port", str(port), "--appliances", str(args.appliances),
                   "--seed", str(args.seed), "--files", str(args.files), "--prefixes", str(args.prefixes), "--cache-dir", args.cache_dir]
            proc = subprocess.Popen(cmd, stderr=open(tmp / f"sim-{lo}.log", "w"))
            cleanup.add(f"simulator {lo}", lambda p=proc: stop_process(p))
            sim_ports.append((lo, hi, port, proc))
        for *_, port, proc in sim_ports:
            wait_port("127.0.0.1", port, 120)
        sim_of = {}
        for lo, hi, port, _ in sim_ports:
            for i in range(lo, hi):
                sim_of[i] = port

        def ctl(i: int | None, *parts) -> dict:
            ports = [sim_of[i]] if i is not None else sorted({p for _, _, p, _ in sim_ports})
            doc = {}
            for port in ports:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/_ctl/" + "/".join(str(p) for p in parts))
                doc.update(json.loads(conn.getresponse().read()))
                conn.close()
            return doc

        # Steering.
        sport = free_port()
        config = tmp / "steering.toml"
        args.snapshot = str(tmp / "steering.snapshot")
        args.snapshot_interval = min(args.snapshot_interval, args.interval) if args.workers > 1 else args.snapshot_interval
        steering_toml(fleet, config, sport, [(lo, hi, p) for lo, hi, p, _ in sim_ports], args)
        started = time.monotonic()
        steering = subprocess.Popen([PY, "-m", "steering.cli", "--config", str(config)], cwd=ROOT,
                                    stderr=open(tmp / "steering.log", "w"))
        cleanup.add("steering", lambda: stop_process(steering))
        wait_port("127.0.0.1", sport, 300)
        client = Client(sport)

        # Every appliance up, and its routes in the prefix table (a worker's table is built after it learns the routes).
        distinct = len({p for site in fleet.v4 for p in site}) + len({p for site in fleet.v6 for p in site})

        def all_up():
            doc = client.json("/health")
            return doc["serving"] == fleet.n and doc["rounds"] >= 1 and doc["prefixes"] >= distinct and doc
        wait_for("every appliance up", all_up, args.start_timeout, 0.5)
        start_s = time.monotonic() - started
        time.sleep(1.0)
        pids = [steering.pid] + child_pids(steering.pid)
        rss = rss_mib(pids)
        pss = rss_mib(pids, "Pss:")
        print(f"fleet: N={fleet.n} started in {start_s:.1f} s, RSS {rss:.0f} MiB (PSS {pss:.0f} MiB) over {len(pids)} processes",
              file=sys.stderr)

        # Poll CPU while idle: over two intervals.
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(2 * args.interval)
        poll_cpu = (cpu_seconds(pids) - cpu0) / (time.monotonic() - t0)

        # Freshness: kill, drain, add.
        probe_rng = random.Random(args.seed + 11)

        def victim_probe() -> tuple[int, str, str]:
            """An appliance that answers first for some (client, file) in its own site, and that pair."""
            # IPv6 clients: the random IPv4 prefixes overlap so densely that another
            # site's longer prefix usually wins; the IPv6 ones (/32-/48 in 2^112) do not.
            for _ in range(1000):
                site = probe_rng.randrange(1, len(fleet.sites))
                if not fleet.v6[site]:
                    continue
                cl = address_in(*fleet.v6[site][0], 128, probe_rng)
                cid = fleet.ids[probe_rng.randrange(200)]
                urls = client.steer(cl, cid)
                if urls and fleet.site_of[int(urls[0][1:])] == site:
                    return int(urls[0][1:]), cl, cid
            raise RuntimeError("no probe found")

        def timed_change(what: str, i: int, cl: str, cid: str, gone: bool) -> float:
            t = time.monotonic()
            aid = fleet.appliances[i]
            wait_for(what, lambda: (aid not in client.steer(cl, cid)) if gone else (aid in client.steer(cl, cid)),
                     6 * args.interval + 60, 0.05)
            return time.monotonic() - t

        i, cl, cid = victim_probe()
        ctl(i, "kill", i)
        detect_s = timed_change("a killed appliance to leave the answer", i, cl, cid, True)
        j, cl2, cid2 = victim_probe()
        ctl(j, "drain", j)
        drain_s = timed_change("a drained appliance to leave the answer", j, cl2, cid2, True)
        # A file added to an appliance whose site holds it nowhere: the answer turns to that appliance.
        add_s = float("nan")
        for _ in range(200):
            site = probe_rng.randrange(1, len(fleet.sites))
            if not fleet.v6[site]:
                continue
            mem = fleet.members[site]
            held = set()
            for m in mem:
                held |= set(fleet.holdings[m].tolist())
            f = next((f for f in range(len(fleet.ids) - 1, 0, -1) if f not in held), None)
            k = mem[0]
            if f is None or k in (i, j):
                continue
            cl3 = address_in(*fleet.v6[site][0], 128, probe_rng)
            ctl(k, "add", k, f)
            add_s = timed_change("an added file to be steered to its appliance", k, cl3, fleet.ids[f], False)
            break
        print(f"fleet: detect {detect_s:.2f} s, drain {drain_s:.2f} s, added file {add_s:.2f} s (interval {args.interval:g} s)",
              file=sys.stderr)

        # Decisions under load, against the baseline, alternating.
        bport = free_port()
        baselines = []
        for _ in range(args.workers):
            b = subprocess.Popen([PY, __file__, "--baseline-server", f"127.0.0.1:{bport}"], cwd=ROOT)
            cleanup.add("baseline", lambda b=b: stop_process(b))
            baselines.append(b)
        wait_port("127.0.0.1", bport, 30)
        time.sleep(1.0)  # every baseline process listening
        lrng = random.Random(args.seed + 13)
        load_clients = sample_clients(fleet, 2000, lrng)
        load_ids = [popular(fleet, lrng) for _ in range(2000)]
        from benchmarks.steer import LUA

        script = tmp / "load.lua"
        script.write_text(LUA % {"ids": ", ".join(f'"{c}"' for c in load_ids), "clients": ", ".join(f'"{c}"' for c in load_clients),
                                 "seed": args.seed})
        wargs = argparse.Namespace(connections=64, duration=args.duration)
        runs = {"steering": [], "baseline": []}
        # One run each first, not counted: a worker orders a file's holders the first time it is asked for it
        # (then keeps that order), and the measure is of a running service, not of its first seconds. At 20,000
        # appliances ordering one popular file costs milliseconds, so the load's 2,000 files need tens of seconds.
        for name, port, ps in (("steering", sport, pids), ("baseline", bport, [b.pid for b in baselines])):
            run_wrk(name + " (warm-up)", port, ps, script, wargs, -1, wrk_box, duration=args.warmup)
        for r in range(args.rounds):
            order = [("steering", sport, pids), ("baseline", bport, [b.pid for b in baselines])]
            if r % 2:
                order.reverse()
            for name, port, ps in order:
                runs[name].append(run_wrk(name, port, ps, script, wargs, r, wrk_box))
        rate = sorted(x.rate for x in runs["steering"])[len(runs["steering"]) // 2]
        base_rate = sorted(x.rate for x in runs["baseline"])[len(runs["baseline"]) // 2]
        p99 = max(x.p99_ms for x in runs["steering"])
        errors = sum(sum(x.errors.values()) for x in runs["steering"])
        print(f"fleet: decisions/s {[round(x.rate) for x in runs['steering']]}, baseline {[round(x.rate) for x in runs['baseline']]}, "
              f"steering p99 {[round(x.p99_ms, 2) for x in runs['steering']]} ms, baseline p99 {[round(x.p99_ms, 2) for x in runs['baseline']]} ms, "
              f"CPU µs a request (steering's processes, its poller included) {[round(x.cpu_us_per_req) for x in runs['steering']]}, "
              f"baseline {[round(x.cpu_us_per_req) for x in runs['baseline']]}, errors {errors}", file=sys.stderr)

        # Oracle: freeze churn, let two rounds pass, compare.
        ctl(None, "freeze")
        rounds0 = client.json("/health")["rounds"]
        wait_for("two rounds after the freeze", lambda: client.json("/health")["rounds"] >= rounds0 + 2, 10 * args.interval + 120, 0.5)
        truth = ctl(None, "truth")
        orng = random.Random(args.seed + 17)
        samples = list(zip(sample_clients(fleet, args.oracle, orng),
                           [popular(fleet, orng) for _ in range(args.oracle)]))
        got = [client.steer(c, cid) for c, cid in samples]
        want = oracle(fleet, truth, samples, 5)
        agree = sum(g == w for g, w in zip(got, want))
        print(f"fleet: oracle {agree}/{len(samples)}", file=sys.stderr)
        if agree != len(samples):
            bad = next((s, g, w) for s, g, w in zip(samples, got, want) if g != w)
            print(f"fleet: oracle disagrees, e.g. {bad}", file=sys.stderr)
        rss = max(rss, rss_mib([steering.pid] + child_pids(steering.pid)))
        pss = max(pss, rss_mib([steering.pid] + child_pids(steering.pid), "Pss:"))

        # Restart: kill -9, start again; time to answering from the snapshot.
        written = f"{args.snapshot}.store/current" if args.workers > 1 else args.snapshot  # with workers, the fleet store
        wait_for("a snapshot written", lambda: os.path.exists(written), 2 * args.snapshot_interval + 120, 0.5)
        workers = child_pids(steering.pid)
        steering.kill()
        steering.wait()
        # Its workers notice within half a second and end; until then they still answer, from the old snapshot.
        wait_for("the old workers to end", lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 30, 0.05)
        started = time.monotonic()
        steering = subprocess.Popen([PY, "-m", "steering.cli", "--config", str(config)], cwd=ROOT,
                                    stderr=open(tmp / "steering-restarted.log", "w"))
        cleanup.add("steering restarted", lambda: stop_process(steering))
        wait_port("127.0.0.1", sport, 300)
        client = Client(sport)
        wait_for("answers after the restart", lambda: client.json("/health")["serving"] >= fleet.n - 2, 300, 0.2)
        restart_s = time.monotonic() - started
        stale = client.json("/health")["snapshot"]["stale"]
        print(f"fleet: restarted and answering in {restart_s:.1f} s (stale: {stale})", file=sys.stderr)
        return {"restart_s": restart_s, "pss_mib": pss, "appliances": fleet.n, "rss_mib": rss, "start_s": start_s, "interval_s": args.interval, "detect_s": detect_s,
                "drain_s": drain_s, "add_s": add_s, "poll_cpu": poll_cpu, "decisions_per_s": rate, "baseline_per_s": base_rate,
                "p99_ms": p99, "oracle": f"{agree}/{len(samples)}", "errors": errors}
    finally:
        cleanup.run()
        signal.signal(signal.SIGTERM, old_term)


def fleet_line(r: dict) -> str:
    return (f"fleet: appliances={r['appliances']} rss_mib={r['rss_mib']:.0f} start_s={r['start_s']:.1f} interval_s={r['interval_s']:g} "
            f"detect_s={r['detect_s']:.2f} decisions_per_s={r['decisions_per_s']:.0f} baseline_per_s={r['baseline_per_s']:.0f} "
            f"p99_ms={r['p99_ms']:.2f} oracle={r['oracle']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--appliances", type=int, default=1000)
    p.add_argument("--table", default="", help="comma-separated N values: one run each, then a table")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--prefixes", type=int, default=1_000_000)
    p.add_argument("--interval", type=float, default=10.0, help="[health] interval_s")
    p.add_argument("--timeout", type=float, default=9.0, help="[health] timeout_s")
    p.add_argument("--fail-after", type=int, default=1, help="[health] fail_after (1: a failure shows within one interval and a round)")
    p.add_argument("--sim-procs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="[server] workers (and as many baseline processes)")
    p.add_argument("--baseline-server", default="", help=argparse.SUPPRESS)
    p.add_argument("--snapshot-interval", type=float, default=10.0, help="[health] snapshot_interval_s")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=2, help="wrk runs per server, alternating")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds of the uncounted wrk run before them, each server")
    p.add_argument("--oracle", type=int, default=10_000, help="sampled clients compared with the oracle")
    p.add_argument("--start-timeout", type=float, default=900.0)
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "oca-fleet-cache"))
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--simulate", default="", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.simulate:
        simulate(args)
        return 0
    if args.baseline_server:
        serve_baseline(args.baseline_server)
        return 0
    if args.generate_only:
        fleet = load_fleet(args)
        full_bodies(args, fleet)
        hashed_bodies(args, fleet)
        return 0
    if args.table:
        results = []
        for n in (int(x) for x in args.table.split(",")):
            args.appliances = n
            r = run_one(args)
            print(fleet_line(r), flush=True)
            results.append(r)
        print("| N | RSS MiB | PSS MiB | start s | restart s | poll CPU (cores) | detect s | drain s | added file s | decisions/s | baseline/s | ratio | p99 ms | oracle |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['appliances']:,} | {r['rss_mib']:.0f} | {r['pss_mib']:.0f} | {r['start_s']:.1f} | {r['restart_s']:.1f} | {r['poll_cpu']:.2f} | {r['detect_s']:.2f} | "
                  f"{r['drain_s']:.2f} | {r['add_s']:.2f} | {r['decisions_per_s']:.0f} | {r['baseline_per_s']:.0f} | "
                  f"{r['decisions_per_s'] / r['baseline_per_s']:.2f} | {r['p99_ms']:.2f} | {r['oracle']} |")
        return 0
    r = run_one(args)
    print(f"fleet: pss_mib={r['pss_mib']:.0f} restart_s={r['restart_s']:.1f} poll_cpu={r['poll_cpu']:.2f} drain_s={r['drain_s']:.2f} add_s={r['add_s']:.2f} errors={r['errors']}", file=sys.stderr)
    print(fleet_line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
