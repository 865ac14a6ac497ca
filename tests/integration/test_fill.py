"""The fill agent against a real nginx origin on loopback, as real subprocesses.

Every test builds its own origin directory of random files under one nginx
(module scope, access log on), builds the manifest with `oca-fill manifest
build`, publishes it next to the files, and drives `oca-fill` and
`oca-admin` as subprocesses on an appliance of its own (config, LMDB index,
two store directories under tmp_path). What the origin was asked for is read
from nginx's access log (bytes sent, Range, timing), never inferred.

Covered: plan and run, verify/ls/status; a changed manifest (one added, one
removed); the max_delete_share refusal and --force; signed manifests
(unsigned, signed, tampered); malformed manifests refused whole with the
field named and nothing on disk changed; the rate cap's accuracy over more
than 10 s with the concurrency limit observed on the origin; the nightly
budget; peer fill from a real oca-server appliance with signed URLs.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from oca.config import load_config

from tests.nginx import AccessEntry, NginxOrigin, nginx_unavailable_reason
from tests.server_proc import ServerProcess, appliance, free_port
from tests.support import ROOT, admin, write_config

pytestmark = pytest.mark.skipif(nginx_unavailable_reason() is not None, reason=nginx_unavailable_reason() or "")

MB = 1_000_000
MiB = 1 << 20
KEY = "fill-test-secret-0123456789"


# ---------------------------------------------------------------- helpers (the fault tests use them too)


def make_file(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes (every 4 KiB stamped with seed and offset); return the xxh3-128.

    A random 1 MiB block per file, stamped, so every 4 KiB of every file is
    distinct (a resume at a wrong offset cannot go unnoticed) and the bytes
    are cheap to make at hundreds of MiB.
    """
    base = random.Random(seed).randbytes(MiB)
    h = xxhash.xxh3_128()
    with open(path, "wb") as fh:
        pos = 0
        while pos < size:
            block = bytearray(base)
            for off in range(0, MiB, 4096):
                struct.pack_into("<QQ", block, off, seed, pos + off)
            n = min(MiB, size - pos)
            fh.write(block[:n] if n < MiB else block)
            h.update(block[:n] if n < MiB else block)
            pos += n
    return h.hexdigest()


def make_files(directory: Path, sizes: dict[str, int], seed: int = 1) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: make_file(directory / name, size, seed * 1000 + i) for i, (name, size) in enumerate(sorted(sizes.items()))}


def oca_fill(cfg: Path | None, *args: str, timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "fill.cli"]
    if cfg is not None:
        argv += ["--config", str(cfg)]
    proc = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"oca-fill {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_manifest(files_dir: Path, base_url: str, popularity: dict[str, float] | None = None,
                   sign_with: Path | None = None) -> dict:
    """`oca-fill manifest build` as a subprocess; the parsed document."""
    args = ["manifest", "build", str(files_dir), "--base-url", base_url]
    if popularity is not None:
        pop = files_dir.parent / "popularity.json"
        pop.write_text(json.dumps(popularity))
        args += ["--popularity", str(pop)]
    if sign_with is not None:
        args += ["--sign"]
    proc = oca_fill(sign_with, *args, check=True)
    return json.loads(proc.stdout)


def publish(doc: dict | str | bytes, path: Path) -> None:
    """Replace the published manifest atomically (nginx never serves half a file)."""
    data = doc if isinstance(doc, bytes) else (doc if isinstance(doc, str) else json.dumps(doc, indent=1)).encode()
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fill_table(manifest_url: str, **settings) -> str:
    lines = ["[fill]", f'manifest_url = "{manifest_url}"']
    # The test origins are plain http and most tests publish unsigned manifests:
    # say so explicitly (the default would require a signature over http).
    defaults = {"backoff_s": 0.1, "retries": 2, "read_timeout_s": 10, "connect_timeout_s": 5, "require_signed_manifest": False}
    for key, value in {**defaults, **settings}.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def signing_table(key_id: str = "k1", secret: str = KEY, required: bool = False) -> str:
    return f'[signing]\nrequired = {"true" if required else "false"}\nkey_id = "{key_id}"\n[signing.keys]\n{key_id} = "{secret}"\n'


def status(cfg: Path) -> dict:
    return json.loads(oca_fill(cfg, "status", check=True).stdout)


def held(cfg: Path) -> dict[str, tuple[int, str]]:
    """`oca-admin ls`: id -> (size, checksum)."""
    out = {}
    for line in admin(cfg, "ls", check=True).stdout.splitlines():
        cid, size, _store, checksum = line.split()
        out[cid] = (int(size), checksum)
    return out


def tree(cfg: Path) -> dict[str, int]:
    """Every file under the appliance's stores and index dir: relative path -> size."""
    base = cfg.parent
    out = {}
    for dirpath, _dirs, names in os.walk(base):
        for name in names:
            p = Path(dirpath, name)
            if p.name.endswith(".lock") or p == cfg:
                continue
            out[str(p.relative_to(base))] = p.stat().st_size
    return out


def store_files(cfg: Path) -> dict[str, int]:
    return {k: v for k, v in tree(cfg).items() if k.startswith("store")}


def store_dirs(cfg: Path) -> list[Path]:
    return [Path(s.path) for s in load_config(str(cfg)).stores]


def partials(cfg: Path) -> list[Path]:
    """Everything in the stores' partial directories (data files and their sidecars)."""
    return sorted(p for d in store_dirs(cfg) for p in (d / "partial").glob("*") if p.is_file())


def expected(doc: dict) -> dict[str, tuple[int, str]]:
    return {f["id"]: (f["size"], f["xxh128"]) for f in doc["files"]}


def max_overlap(entries: list[AccessEntry]) -> int:
    events = sorted([(e.started_s, 1) for e in entries] + [(e.ended_s, -1) for e in entries], key=lambda t: (t[0], t[1]))
    best = cur = 0
    for _t, d in events:
        cur += d
        best = max(best, cur)
    return best


@dataclass
class Site:
    """One test's corner of the origin: files in <root>/<name>/files, manifest beside them."""

    origin: NginxOrigin
    name: str

    @property
    def dir(self) -> Path:
        return self.origin.root_dir / self.name

    @property
    def files_dir(self) -> Path:
        return self.dir / "files"

    @property
    def files_url(self) -> str:
        return self.origin.url(f"{self.name}/files/")

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def manifest_url(self) -> str:
        return self.origin.url(f"{self.name}/manifest.json")

    def entries(self) -> list[AccessEntry]:
        return self.origin.wait_idle(f"/{self.name}/files/")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("origin")
    # A small send buffer, so that when nginx logs a request as ended its bytes
    # have nearly all crossed loopback: the origin side then measures the wire.
    with NginxOrigin(root, free_port(), access_log=True, sndbuf=64 << 10) as o:
        yield o


@pytest.fixture
def site(origin, request) -> Site:
    s = Site(origin, request.node.name.replace("[", "-").replace("]", ""))
    s.files_dir.mkdir(parents=True)
    return s


def appliance_cfg(tmp_path: Path, site: Site, *, extra: str = "", appliance_id: str = "oca-a", server_extra: str = "", **fill) -> Path:
    """An appliance in service: config written and stores initialised (a read-only `plan` never initialises)."""
    cfg = write_config(tmp_path / appliance_id, appliance_id=appliance_id, site="site-a", server_extra=server_extra,
                       extra=fill_table(site.manifest_url, **fill) + extra)
    admin(cfg, "check", check=True)
    return cfg


# ---------------------------------------------------------------- plan, run, verify, status, changes


def test_plan_then_run_fills_everything_and_a_changed_manifest_adds_and_deletes(tmp_path, site):
    sums = make_files(site.files_dir, {f"title-{i}.mp4": (2 + i) * MiB + 1234 * i for i in range(5)}, seed=11)
    pop = {f"title-{i}.mp4": float(100 - i) for i in range(5)}
    doc = build_manifest(site.files_dir, site.files_url, pop)
    assert {f["id"]: f["xxh128"] for f in doc["files"]} == sums  # the builder hashes like we do
    publish(doc, site.manifest_path)
    cfg = appliance_cfg(tmp_path, site, concurrency=2)

    plan = oca_fill(cfg, "plan", check=True).stdout
    adds = [line.split()[1] for line in plan.splitlines() if line.startswith("add ")]
    assert adds == [f"title-{i}.mp4" for i in range(5)], plan  # most popular (and smallest) first
    assert f"adds: 5 files, {sum(f['size'] for f in doc['files'])} bytes" in plan
    assert held(cfg) == {}  # plan changes nothing

    run = oca_fill(cfg, "run", check=True)
    assert "run ended (done)" in run.stderr
    assert held(cfg) == expected(doc)
    verify = admin(cfg, "verify")
    assert verify.returncode == 0 and "verified 5 objects" in verify.stdout and "0 corrupt" in verify.stdout
    last = status(cfg)["last"]
    assert last["ended_because"] == "done"
    assert (last["files_added"], last["files_deleted"], last["files_failed"], last["files_skipped"]) == (5, 0, 0, 0)
    assert last["bytes_filled"] == sum(f["size"] for f in doc["files"])
    assert last["manifest_files"] == 5 and last["checksum_mismatches"] == 0
    assert status(cfg)["current"] is None
    assert partials(cfg) == []
    fetched = site.entries()
    assert sorted(e.uri.rsplit("/", 1)[1] for e in fetched) == sorted(sums)  # each file asked for once
    assert all(e.status == 200 and e.range == "" for e in fetched)

    # A new title appears, title-4 is withdrawn.
    (site.files_dir / "title-4.mp4").unlink()
    sums["title-new.mp4"] = make_file(site.files_dir / "title-new.mp4", 3 * MiB + 7, seed=99)
    pop.pop("title-4.mp4")
    pop["title-new.mp4"] = 1000.0
    doc2 = build_manifest(site.files_dir, site.files_url, pop)
    publish(doc2, site.manifest_path)
    plan2 = oca_fill(cfg, "plan", check=True).stdout
    assert [line for line in plan2.splitlines() if line.startswith(("add ", "delete"))] == [
        f"add title-new.mp4 {3 * MiB + 7} popularity=1000", "delete title-4.mp4"]
    before = len(fetched)
    oca_fill(cfg, "run", check=True)
    assert held(cfg) == expected(doc2)
    last = status(cfg)["last"]
    assert (last["files_added"], last["files_deleted"], last["files_failed"]) == (1, 1, 0)
    assert last["bytes_filled"] == 3 * MiB + 7
    assert [e.uri.rsplit("/", 1)[1] for e in site.entries()[before:]] == ["title-new.mp4"]
    assert admin(cfg, "verify").returncode == 0
    check = admin(cfg, "check", check=True)
    assert check.stdout.strip().endswith("consistent"), check.stdout


def test_max_delete_share_refuses_then_force_proceeds(tmp_path, site):
    make_files(site.files_dir, {f"t{i}": MiB + i for i in range(5)}, seed=12)
    doc = build_manifest(site.files_dir, site.files_url)
    publish(doc, site.manifest_path)
    cfg = appliance_cfg(tmp_path, site, max_delete_share=0.5)
    oca_fill(cfg, "run", check=True)
    assert set(held(cfg)) == {f"t{i}" for i in range(5)}

    shrunk = dict(doc, files=[f for f in doc["files"] if f["id"] == "t0"])  # 4 of 5 withdrawn
    publish(shrunk, site.manifest_path)
    plan = oca_fill(cfg, "plan", check=True).stdout
    assert "warning: this manifest deletes 80% of what is held; a run needs --force" in plan
    disk_before = store_files(cfg)
    run = oca_fill(cfg, "run")
    assert run.returncode == 1
    assert "manifest refused: it would delete 80% of what this appliance holds (limit 50%); run with --force" in run.stderr
    assert set(held(cfg)) == {f"t{i}" for i in range(5)}
    assert store_files(cfg) == disk_before
    last = status(cfg)["last"]
    assert last["ended_because"].startswith("manifest refused: it would delete 80%")
    assert last["files_deleted"] == 0

    forced = oca_fill(cfg, "run", "--force")
    assert forced.returncode == 0, forced.stderr
    assert held(cfg) == expected(shrunk)
    assert status(cfg)["last"]["files_deleted"] == 4
    assert admin(cfg, "verify").returncode == 0


def test_signed_manifest_required_unsigned_and_tampered_refused(tmp_path, site):
    make_files(site.files_dir, {"a.mp4": 2 * MiB, "b.mp4": 3 * MiB}, seed=13)
    cfg = appliance_cfg(tmp_path, site, extra=signing_table(), require_signed_manifest=True)
    empty = store_files(cfg)  # markers only

    unsigned = build_manifest(site.files_dir, site.files_url)
    assert "signature" not in unsigned
    publish(unsigned, site.manifest_path)
    run = oca_fill(cfg, "run")
    assert run.returncode == 1
    assert "signature: the manifest is not signed" in run.stderr
    assert held(cfg) == {} and store_files(cfg) == empty  # nothing fetched, nothing written
    assert site.entries() == []

    signed = build_manifest(site.files_dir, site.files_url, sign_with=cfg)
    assert signed["signature"]["key_id"] == "k1"
    tampered = json.loads(json.dumps(signed))
    tampered["files"][0]["sources"] = ["http://127.0.0.1:9/evil.mp4"]
    publish(tampered, site.manifest_path)
    run = oca_fill(cfg, "run")
    assert run.returncode == 1
    assert "signature.hmac: does not match the manifest (key 'k1')" in run.stderr
    assert held(cfg) == {} and store_files(cfg) == empty
    plan = oca_fill(cfg, "plan")
    assert plan.returncode == 1 and "signature.hmac" in plan.stderr

    other_key = dict(signed, signature={"key_id": "k9", "hmac": signed["signature"]["hmac"]})
    publish(other_key, site.manifest_path)
    run = oca_fill(cfg, "run")
    assert run.returncode == 1 and "signature.key_id: 'k9' is not one of signing.keys" in run.stderr

    publish(signed, site.manifest_path)
    run = oca_fill(cfg, "run")
    assert run.returncode == 0, run.stderr
    assert held(cfg) == expected(signed)
    assert admin(cfg, "verify").returncode == 0


def _mutations(doc: dict) -> list[tuple[str, bytes, str]]:
    """(case, manifest bytes, what the error must say)."""

    def edit(fn):
        d = json.loads(json.dumps(doc))
        fn(d)
        return json.dumps(d).encode()

    return [
        ("bad checksum", edit(lambda d: d["files"][1].update(xxh128=d["files"][1]["xxh128"].upper())),
         "files[1] (b.mp4).xxh128: must be 32 lowercase hex digits"),
        ("missing size", edit(lambda d: d["files"][2].pop("size")), "files[2].size: required field is missing"),
        ("unknown field", edit(lambda d: d["files"][0].update(sise=5)), "files[0].sise: unknown field"),
        ("negative popularity", edit(lambda d: d["files"][2].update(popularity=-1)),
         "files[2] (c.mp4).popularity: must be a finite number >= 0"),
        ("bad source", edit(lambda d: d["files"][1].update(sources=["ftp://origin/b.mp4"])),
         "files[1] (b.mp4).sources[0]: 'ftp://origin/b.mp4' is not an http(s) URL"),
        ("duplicate id", edit(lambda d: d["files"].append(dict(d["files"][0]))), "files[3].id: 'a.mp4' is listed twice"),
        ("bad site url", edit(lambda d: d.update(sites={"site-a": [{"id": "oca-a", "url": "nope"}]})),
         "sites.site-a[0].url: 'nope' is not an http(s) URL"),
        ("future version", edit(lambda d: d.update(version=2)), "version: 2 is not supported"),
        ("truncated JSON", json.dumps(doc).encode()[:-40], "manifest is not valid JSON"),
    ]


def test_malformed_manifest_is_refused_whole_and_nothing_changes(tmp_path, site):
    make_files(site.files_dir, {"a.mp4": MiB, "b.mp4": MiB + 1, "c.mp4": MiB + 2}, seed=14)
    good = build_manifest(site.files_dir, site.files_url)
    # Hold a and b (c unlisted) so that a valid version of each malformed
    # manifest would both add (c) and delete nothing; then check nothing moves.
    publish(dict(good, files=good["files"][:2]), site.manifest_path)
    cfg = appliance_cfg(tmp_path, site)
    oca_fill(cfg, "run", check=True)
    before_tree, before_held, before_status = tree(cfg), held(cfg), status(cfg)["last"]
    fetched_before = len(site.entries())
    failures = []
    for case, raw, message in _mutations(good):
        publish(raw, site.manifest_path)
        plan = oca_fill(cfg, "plan")
        run = oca_fill(cfg, "run")
        if plan.returncode != 1 or message not in plan.stderr:
            failures.append(f"{case}: plan exited {plan.returncode}: {plan.stderr.strip()}")
        if run.returncode != 1 or message not in run.stderr or "manifest refused" not in run.stderr:
            failures.append(f"{case}: run exited {run.returncode}: {run.stderr.strip()}")
        if held(cfg) != before_held:
            failures.append(f"{case}: held files changed")
        after = {k: v for k, v in tree(cfg).items() if not k.startswith("index")}
        if after != {k: v for k, v in before_tree.items() if not k.startswith("index")}:
            failures.append(f"{case}: files on disk changed")
        if status(cfg)["last"]["ended_because"] != f"manifest refused: {message}" and message not in status(cfg)["last"]["ended_because"]:
            failures.append(f"{case}: status says {status(cfg)['last']['ended_because']!r}")
    assert not failures, "\n".join(failures)
    assert len(site.entries()) == fetched_before  # no content was fetched for any of them
    assert before_status["files_added"] == 2


# ---------------------------------------------------------------- rate cap, concurrency, budget


@pytest.mark.serial  # a measured rate: other tests must not share the CPU
def test_rate_cap_is_accurate_over_ten_seconds_and_concurrency_is_honoured(tmp_path, site):
    cap_mbps = 80  # 10 MB/s
    sizes = {f"r{i}.bin": 26 * MB + i for i in range(4)}  # 104 MB: about 10.4 s at the cap
    make_files(site.files_dir, sizes, seed=15)
    publish(build_manifest(site.files_dir, site.files_url), site.manifest_path)
    cfg = appliance_cfg(tmp_path, site, rate_limit_mbps=cap_mbps, concurrency=3)
    t0 = time.monotonic()
    run = oca_fill(cfg, "run")
    wall_s = time.monotonic() - t0
    assert run.returncode == 0, run.stderr
    last = status(cfg)["last"]
    total = sum(sizes.values())
    assert last["bytes_filled"] == total and last["files_added"] == 4
    entries = site.entries()
    assert len(entries) == 4
    # Measured on the agent's side: from the run's start to its end (manifest
    # fetch and publishing included, so this errs low) ...
    run_s = last["ended_s"] - last["started_s"]
    assert run_s >= 10.0, f"the run took only {run_s:.1f} s; make the files larger"
    achieved = total * 8 / run_s / 1e6
    # ... and on the origin's side: first request start to last request end
    # (nginx logs the end when its last byte left for the socket, so this errs high).
    span_s = max(e.ended_s for e in entries) - min(e.started_s for e in entries)
    origin_rate = sum(e.body_bytes_sent for e in entries) * 8 / span_s / 1e6
    print(f"cap {cap_mbps} Mb/s: achieved {achieved:.1f} Mb/s over {run_s:.1f} s ({achieved / cap_mbps:.3f}), "
          f"origin saw {origin_rate:.1f} Mb/s over {span_s:.1f} s ({origin_rate / cap_mbps:.3f}); wall {wall_s:.1f} s")
    assert 0.85 * cap_mbps <= achieved <= 1.05 * cap_mbps
    assert origin_rate <= 1.05 * cap_mbps
    # Concurrency 3: three downloads overlapped on the origin, never four.
    assert max_overlap(entries) == 3
    assert admin(cfg, "verify").returncode == 0


@pytest.mark.parametrize("concurrency", [1, 3])
def test_nightly_budget_stops_the_run(tmp_path, site, concurrency):
    """A file starts only if it fits in what the files started before it left of the budget, however many
    download at once: no download is cut by the budget, the files that do not fit are skipped, and the
    next night fetches them."""
    sizes = {f"b{i}.bin": 4 * MB for i in range(4)}
    make_files(site.files_dir, sizes, seed=16)
    pop = {name: float(10 - i) for i, name in enumerate(sorted(sizes))}
    publish(build_manifest(site.files_dir, site.files_url, pop), site.manifest_path)
    budget = 10 * MB
    cfg = appliance_cfg(tmp_path, site, nightly_budget_gb=budget / 1e9, concurrency=concurrency)
    run = oca_fill(cfg, "run")
    assert run.returncode == 0, run.stderr
    last = status(cfg)["last"]
    assert last["ended_because"] == "nightly budget reached", last
    got = held(cfg)
    assert set(got) == {"b0.bin", "b1.bin"}  # the most popular first; b2 and b3 do not fit in the 2 MB left
    assert last["bytes_filled"] == 8 * MB and last["files_skipped"] == 2 and last["files_added"] == 2
    assert last["day_budget_bytes"] == budget
    assert partials(cfg) == []
    first_night = site.entries()
    assert sum(e.body_bytes_sent for e in first_night) == 8 * MB
    assert admin(cfg, "verify").returncode == 0

    # The next night (no budget) fetches the rest, once each.
    cfg.write_text(cfg.read_text().replace(f"nightly_budget_gb = {budget / 1e9}\n", ""))
    oca_fill(cfg, "run", check=True)
    assert held(cfg) == {n: (4 * MB, s) for n, s in ((f["id"], f["xxh128"]) for f in json.loads(site.manifest_path.read_text())["files"])}
    second_night = site.entries()[len(first_night):]
    assert sum(e.body_bytes_sent for e in second_night) == 8 * MB
    assert admin(cfg, "verify").returncode == 0


def test_a_first_file_bigger_than_the_budget_is_filled_whole_and_the_next_day_repays_it(tmp_path, site):
    """Budget 3 MB, files of 4 MB: night 1 fills its first file whole (1 MB over); night 2's budget is 2 MB,
    and its first file again goes whole (2 MB over its day); night 3's budget is 1 MB."""
    sizes = {f"w{i}.bin": 4 * MB for i in range(3)}
    make_files(site.files_dir, sizes, seed=17)
    publish(build_manifest(site.files_dir, site.files_url, {n: float(10 - i) for i, n in enumerate(sorted(sizes))}), site.manifest_path)
    cfg = appliance_cfg(tmp_path, site, nightly_budget_gb=3 * MB / 1e9, concurrency=2)
    for night, (day_budget_mb, want) in enumerate([(3, {"w0.bin"}), (2, {"w0.bin", "w1.bin"}), (1, {"w0.bin", "w1.bin", "w2.bin"})]):
        run = oca_fill(cfg, "run", check=True)
        last = status(cfg)["last"]
        assert last["day_budget_bytes"] == day_budget_mb * MB, (night, last)
        assert last["bytes_filled"] == 4 * MB and set(held(cfg)) == want, (night, last)
        if night:
            assert f"today's budget is {day_budget_mb * MB / 1e9:.3f} GB" in run.stderr, run.stderr
    assert partials(cfg) == []


# ---------------------------------------------------------------- peer fill


@pytest.mark.parametrize("token", ["", "site-a-control-token-0123"])
def test_peer_fill_from_an_appliance_of_the_same_site_with_signed_urls(tmp_path, site, token):
    """With `[server] control_token` on the site's appliances, the agent sends its own to the peer's /inventory."""
    names = {f"p{i}.mp4": 2 * MiB + 1000 * i for i in range(4)}
    make_files(site.files_dir, names, seed=17)
    datas = {n: (site.files_dir / n).read_bytes() for n in names}
    b_log = tmp_path / "b-access.log"
    token_line = f'control_token = "{token}"\n' if token else ""
    cfg_b, host_b, port_b = appliance(
        tmp_path / "b", files=datas, appliance_id="oca-b", site="site-a",
        extra_server=f'access_log = "{b_log}"\naccess_log_format = "json"\n' + token_line,
        extra=signing_table(required=True),
    )
    doc = build_manifest(site.files_dir, site.files_url)
    # A weighs a thousand times B, so rendezvous hashing places every file on A;
    # B holds them all and says so in /inventory.
    doc["sites"] = {"site-a": [{"id": "oca-a", "url": "http://127.0.0.1:9", "weight": 1000.0},
                               {"id": "oca-b", "url": f"http://{host_b}:{port_b}", "weight": 0.001}]}
    publish(doc, site.manifest_path)
    cfg_a = appliance_cfg(tmp_path, site, extra=signing_table(), appliance_id="oca-a", server_extra=token_line)
    with ServerProcess(cfg_b, host_b, port_b) as srv:
        plan = oca_fill(cfg_a, "plan", check=True).stdout
        assert "site: 2 appliance(s); 4 of 4 files placed here" in plan
        run = oca_fill(cfg_a, "run")
        assert run.returncode == 0, run.stderr + srv.log_text()[-2000:]
        deadline = time.monotonic() + 5
        lines: list[dict] = []
        while time.monotonic() < deadline:  # the server flushes its log once a second
            lines = [json.loads(x) for x in b_log.read_text().splitlines()] if b_log.exists() else []
            if sum(1 for x in lines if x["uri"].startswith("/content/")) >= 4:
                break
            time.sleep(0.2)
    assert held(cfg_a) == expected(doc)
    assert admin(cfg_a, "verify").returncode == 0
    content = [x for x in lines if x["uri"].startswith("/content/")]
    assert sorted(x["uri"].split("?")[0] for x in content) == sorted(f"/content/{n}" for n in names)
    for x in content:
        query = x["uri"].split("?", 1)[1]
        assert "e=" in query and "k=k1" in query and "t=" in query, x["uri"]
        assert x["status"] == 200
    assert any(x["uri"] == "/inventory" and x["status"] == 200 for x in lines)
    assert site.entries() == []  # the origin was never asked for a file
    assert "added p0.mp4" in run.stderr and f"from http://{host_b}:{port_b}/content/p0.mp4" in run.stderr


# ---------------------------------------------------------------- intra-day passes


def test_a_pass_adds_the_missing_file_that_clients_requested_within_what_the_night_left(tmp_path, site):
    """Night 1 fills two forecast titles. Night 2's manifest lists three new ones: `n-fore` with a forecast,
    `n-a` and `n-b` without, so the night keeps most of the budget for the passes and adds `n-fore` only.
    Clients then ask the real server for `n-b` (404s, counted); the pass has room in the budget for one
    file and adds `n-b`, not `n-a`: the requests decide."""
    size = 1 * MiB
    make_files(site.files_dir, {"old-1.mp4": size, "old-2.mp4": size}, seed=51)
    publish(build_manifest(site.files_dir, site.files_url, {"old-1.mp4": 100.0, "old-2.mp4": 90.0}), site.manifest_path)
    budget_gb = 2.5 * size / 1e9  # night 1: both old titles; night 2: 2.5 * (1 - 0.7 * 2/3) = 1.33 files
    cfg, host, port = appliance(
        tmp_path / "a", appliance_id="oca-a", workers=1,
        extra=fill_table(site.manifest_url, nightly_budget_gb=budget_gb, concurrency=1, passes=["10:00"]) + "[popularity]\nflush_s = 0.1\n",
    )
    assert "2 added" in oca_fill(cfg, "run", check=True).stderr

    make_files(site.files_dir, {"n-a.mp4": size, "n-b.mp4": size, "n-fore.mp4": size}, seed=52)
    pop = {"old-1.mp4": 100.0, "old-2.mp4": 90.0, "n-fore.mp4": 80.0, "n-a.mp4": 0.0, "n-b.mp4": 0.0}
    publish(build_manifest(site.files_dir, site.files_url, pop), site.manifest_path)
    night = oca_fill(cfg, "run", check=True)
    assert "the rest waits for the passes at 10:00" in night.stderr, night.stderr
    assert "added n-fore.mp4" in night.stderr and "1 added" in night.stderr

    with ServerProcess(cfg, host, port) as srv:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        for _ in range(3):
            conn.request("GET", "/content/n-b.mp4")
            r = conn.getresponse()
            r.read()
            assert r.status == 404
        conn.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the worker flushes its tally every 0.1 s
            rows = json.loads(urllib.request.urlopen(srv.base + "/popularity", timeout=5).read())["rows"]
            if [r[:4] for r in rows] == [["n-b.mp4", 3, 0, 3]]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"counts not flushed: {rows}")
        done = oca_fill(cfg, "pass", "--ignore-window", check=True)
        # The file just added is served at once.
        assert urllib.request.urlopen(srv.base + "/content/n-b.mp4", timeout=5).read() == (site.files_dir / "n-b.mp4").read_bytes()
    assert "1 of them missing from the site; 1 to add" in done.stderr, done.stderr
    assert set(held(cfg)) == {"old-1.mp4", "old-2.mp4", "n-fore.mp4", "n-b.mp4"}
    last = status(cfg)["last"]
    assert last["kind"] == "night" and last["bytes_filled"] == size
    assert last["day_budget_bytes"] == int(budget_gb * 1e9)  # night 1 spent less than the budget: nothing to repay
    [p] = last["passes"]
    assert (p["planned"], p["added"], p["failed"], p["skipped"], p["bytes"], p["requested_missing"]) == (1, 1, 0, 0, size, 1)
    assert p["budget_bytes"] == int(budget_gb * 1e9) - size and p["ended_because"] == "done"


# ---------------------------------------------------------------- daemon mode


def test_daemon_fills_in_the_open_window_then_waits_and_stops_on_sigterm(tmp_path, site):
    sums = make_files(site.files_dir, {"d-0.mp4": 1 * MiB, "d-1.mp4": 2 * MiB}, seed=41)
    publish(build_manifest(site.files_dir, site.files_url), site.manifest_path)
    now = time.gmtime()
    start = (now.tm_hour * 60 + now.tm_min - 1) % 1440
    end = (start + 5) % 1440  # open from a minute ago for five minutes: crosses midnight when it must
    window = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    cfg = appliance_cfg(tmp_path, site, window=window, timezone="UTC")
    proc = subprocess.Popen([sys.executable, "-m", "fill.cli", "--config", str(cfg), "run", "--daemon"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (status(cfg).get("last") or {}).get("ended_because") != "done":
            time.sleep(0.2)
        assert {cid: checksum for cid, (_size, checksum) in held(cfg).items()} == sums
        time.sleep(1.0)
        assert proc.poll() is None, "the daemon must wait for the next window, not exit"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err[-2000:]

