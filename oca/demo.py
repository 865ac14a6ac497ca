"""`python -m oca.demo`: the whole system on one machine, on built-in defaults.

What it does, with the real programs:
1. makes sample titles as ABR ladders when ffmpeg is installed (per title
   three H.264 encodes and one AAC encode, each one fragmented MP4 with a
   sidx; `make_ladder`), otherwise random bytes, and popularity figures;
2. publishes them with a signed manifest on a real nginx origin on loopback;
3. starts three appliances in two sites (oca-1 and oca-2 in site-a,
   oca-3 in site-b) and the steering service, on 127.0.0.x addresses;
4. runs the nightly fill on each appliance (site-a's second appliance
   fills from its peer where it can);
5. plays a title: when steering has titles (the manifest's media fields) and
   Debian's chromium and Playwright are installed, in headless Chromium
   through steering's /watch page (dash.js with Content Steering), killing
   the appliance in use mid-playback and saving a screenshot of the page
   (`<dir>/player.png`); otherwise as a scripted player: asks steering,
   fetches 2 MiB ranges from the first URL, and when that appliance dies
   mid-way (the demo kills it) carries on from the next URL, then checks
   the bytes against the manifest's checksum;
6. prints where to look, with one line giving the /watch/<title> URL, and
   waits for Ctrl-C, which stops everything.

Everything speaks HTTPS by default (`--http` for the plain demo): a
throwaway CA made at start (`oca.certs`, in `<dir>/pki`) signs one
certificate per service (each appliance, steering, the origin); nginx
serves the origin with it, the appliances and steering serve HTTPS only,
fill verifies the origin and its peers with `[fill] ca_file`, steering
polls the appliances with `[health] ca_file`, and the demo's own player
trusts that CA. The demo prints how to trust it in curl or a browser.

Rules kept here:
- Everything it writes lands in one working directory that it names
  (default `./demo`); nginx's temporary paths and logs are pointed there.
  Encoded ladders are kept in `<dir>/media-cache/<key>/`, keyed by a hash of
  the ffmpeg command and version, so only the first start encodes.
- Every process it starts is stopped on exit: on Ctrl-C, and on SIGTERM or
  SIGHUP (a supervisor, `timeout`, a closed terminal), which end the demo
  the same way. Children never outlive it: each is started with
  PR_SET_PDEATHSIG (SIGTERM), so even a `kill -9` of the demo stops them.
- `DemoSystem` is also what the end-to-end test drives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

SECRET = "demo-secret-0123456789"
KEY_ID = "demo"
# The demo's titles, each an ABR ladder (see make_ladder): (title, seconds, popularity of the title in bytes/day).
# Two run 60 s, long enough that a player's buffer cannot hide a failover.
LADDER_TITLES = (
    ("big-buck-bunny", 60, 9.0e9),
    ("sintel", 60, 2.0e9),
    ("tears-of-steel", 20, 4.0e8),
    ("elephants-dream", 12, 1.0e7),
)


@dataclass(frozen=True)
class Rung:
    """One video encode of a ladder: the file is `<title>.<name>.mp4`."""

    name: str
    width: int
    height: int
    kbps: int  # target bitrate; peaks are capped at 1.2x (x264 VBV)


VIDEO_RUNGS = (Rung("360p", 640, 360, 400), Rung("720p", 1280, 720, 1200), Rung("1080p", 1920, 1080, 2500))
# For tests: the same shape at low resolution, so 60 s encodes in seconds.
SMALL_RUNGS = (Rung("144p", 256, 144, 150), Rung("240p", 426, 240, 400), Rung("360p", 640, 360, 900))
AUDIO_RUNG = "audio"
AUDIO_KBPS = 96
LADDER_FPS = 24
FRAGMENT_S = 2  # one keyframe, and so one fragment, every 2 s
# Share of a title's bytes/day that each file takes, for the demo's popularity figures.
_RUNG_SHARE = {"360p": 0.1, "720p": 0.3, "1080p": 0.5, AUDIO_RUNG: 0.1}
# MiB of each file with --random-titles (no ffmpeg), per second of the title.
_RANDOM_MIB_PER_S = {"360p": 0.05, "720p": 0.15, "1080p": 0.3, AUDIO_RUNG: 0.0125}


def ladder_titles(ladders=LADDER_TITLES) -> tuple:
    """(file name, MiB with --random-titles, popularity) for every file of every ladder, most popular first."""
    out = []
    for title, seconds, pop in ladders:
        for rung, share in _RUNG_SHARE.items():
            out.append((f"{title}.{rung}.mp4", max(1, round(seconds * _RANDOM_MIB_PER_S[rung])), pop * share))
    return tuple(sorted(out, key=lambda t: -t[2]))


# (file name, MiB of random data with --random-titles, popularity in bytes/day)
TITLES = ladder_titles()
NEW_TITLE = ("spring.1080p.mp4", 10, 7.0e9)


@dataclass
class Node:
    appliance_id: str
    site: str
    host: str
    port: int
    tier: str
    dir: Path
    client_prefix: str
    proc: subprocess.Popen | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def config(self) -> Path:
        return self.dir / "oca.toml"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def pick_port(hosts: list[str], preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 200)]:
        if all(port_free(h, port) for h in hosts):
            return port
    raise RuntimeError("no free port")


def make_title(path: Path, mib: int, index: int) -> None:
    """A file of `mib` MiB of random bytes (--random-titles: the same paths without encoding)."""
    if path.exists() and path.stat().st_size > 0:
        return
    tmp = path.with_suffix(".tmp.mp4")
    block = os.urandom(1 << 20)
    with open(tmp, "wb") as fh:
        for j in range(mib):
            fh.write(bytes([index, j & 255]) + block[2:])
    os.replace(tmp, path)


def ladder_command(title: str, seconds: float, rungs=VIDEO_RUNGS, out_dir: Path = Path(".")) -> list[str]:
    """One ffmpeg run: a generated picture and tone, one fMP4 per rung and one AAC audio fMP4.

    Each file has one track, a keyframe (and so a fragment) every FRAGMENT_S
    seconds, and ONE sidx in front covering every fragment (global_sidx), as
    a DASH on-demand player and HLS byte ranges want. The picture is made at
    the largest rung's size and scaled down for the others.
    """
    big = max(rungs, key=lambda r: r.width * r.height)
    tone = 220 + int(hashlib.sha256(title.encode()).hexdigest()[:4], 16) % 440  # each title sounds different
    gop = str(LADDER_FPS * FRAGMENT_S)
    labels = "".join(f"[v{i}]" for i in range(len(rungs)))
    graph = f"[0:v]split={len(rungs)}{labels}" + "".join(
        # setsar=1: square pixels, so the track's display size (what players are told) is the coded size.
        f";[v{i}]scale={r.width}:{r.height},setsar=1[s{i}]" for i, r in enumerate(rungs)
    )
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-t", f"{seconds:g}", "-i", f"testsrc2=size={big.width}x{big.height}:rate={LADDER_FPS}",
        "-f", "lavfi", "-t", f"{seconds:g}", "-i", f"sine=frequency={tone}:sample_rate=48000",
        "-filter_complex", graph,
    ]
    for i, r in enumerate(rungs):
        cmd += [
            "-map", f"[s{i}]", "-an", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-b:v", f"{r.kbps}k", "-maxrate", f"{r.kbps * 6 // 5}k", "-bufsize", f"{r.kbps * 6 // 5}k",
            "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
            "-movflags", "+frag_keyframe+empty_moov+default_base_moof+global_sidx",
            str(out_dir / f"{title}.{r.name}.mp4"),
        ]
    cmd += [
        "-map", "1:a", "-vn", "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k",
        # Every AAC frame is a sync sample, so fragments are cut by time, not at keyframes.
        "-frag_duration", str(FRAGMENT_S * 1_000_000),
        "-movflags", "+empty_moov+default_base_moof+global_sidx",
        str(out_dir / f"{title}.{AUDIO_RUNG}.mp4"),
    ]
    return cmd


def ladder_key(title: str, seconds: float, rungs=VIDEO_RUNGS) -> str:
    """The cache key of a ladder: a hash of the exact ffmpeg command and ffmpeg's version."""
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout.split("\n", 1)[0]
    recipe = json.dumps([version, ladder_command(title, seconds, rungs)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def make_ladder(directory: Path, title: str, seconds: float, rungs=VIDEO_RUNGS, *, cache: Path | None = None) -> list[Path]:
    """Encode (or take from `cache`) one title's ladder into `directory`; returns the files, video rungs then audio.

    Files are `<title>.<rung>.mp4` and `<title>.audio.mp4`. With `cache`, the
    encodes are kept in `cache/<ladder_key>/` and later calls with the same
    parameters only link (or copy) them. Each file is checked with fill.mp4
    before it is kept, so a changed ffmpeg that stops writing one sidx in
    front fails here, not in a player.
    """
    from fill.mp4 import media_info
    from oca.ids import is_valid_id

    if not is_valid_id(title) or "." in title:
        raise ValueError(f"title {title!r} must be a content id without a dot")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"{title}.{r.name}.mp4" for r in rungs] + [f"{title}.{AUDIO_RUNG}.mp4"]
    home = Path(cache) / ladder_key(title, seconds, rungs) if cache is not None else None
    if home is None or not home.is_dir():
        parent = home.parent if home is not None else directory
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{title}.", dir=parent))
        tmp.chmod(0o755)
        try:
            subprocess.run(ladder_command(title, seconds, rungs, tmp), check=True, timeout=600)
            for name in names:
                path = tmp / name
                with open(path, "rb") as fh:
                    info = media_info(fh.read(1 << 20), path.stat().st_size)
                if abs(info.duration_s - seconds) > FRAGMENT_S:
                    raise RuntimeError(f"{name}: {info.duration_s:g} s encoded, {seconds:g} s asked")
            if home is None:
                for name in names:
                    os.replace(tmp / name, directory / name)
                return [directory / n for n in names]
            try:
                os.rename(tmp, home)  # whole or not at all: a killed encode leaves only a temporary directory
            except OSError:
                if not home.is_dir():
                    raise  # else another run finished the same ladder first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out = []
    for name in names:
        target = directory / name
        target.unlink(missing_ok=True)
        try:
            os.link(home / name, target)
        except OSError:
            shutil.copyfile(home / name, target)
        out.append(target)
    return out


@dataclass
class DemoSystem:
    work: Path
    base_port: int = 8080
    nodes: list[Node] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    log: callable = print
    https: bool = True  # False: the plain-HTTP demo (--http)

    def __post_init__(self) -> None:
        self.work = self.work.resolve()
        self.bin = Path(sys.executable).parent
        self.content = self.work / "origin"
        self.origin_host = "127.0.0.20"
        self.steering_host = "127.0.0.10"

    # ------------------------------------------------------------ set-up

    def prepare(self) -> None:
        for sub in ("appliances", "steering", "nginx"):
            shutil.rmtree(self.work / sub, ignore_errors=True)
        self.content.mkdir(parents=True, exist_ok=True)
        hosts = ["127.0.0.11", "127.0.0.12", "127.0.0.13", self.steering_host, self.origin_host]
        self.port = pick_port(hosts, self.base_port)
        if self.https:
            self.make_pki()
        specs = [("oca-1", "site-a", "127.0.0.11", "embedded", "127.1.0.0/16"),
                 ("oca-2", "site-a", "127.0.0.12", "embedded", "127.1.0.0/16"),
                 ("oca-3", "site-b", "127.0.0.13", "ixp", "127.2.0.0/16")]
        self.nodes = []
        for aid, site, host, tier, prefix in specs:
            d = self.work / "appliances" / aid
            for s in ("store0", "store1"):
                (d / s).mkdir(parents=True, exist_ok=True)
            node = Node(aid, site, host, self.port, tier, d, prefix, scheme=self.scheme)
            node.config.write_text(
                f'[appliance]\nid = "{aid}"\nsite = "{site}"\n'
                f'[server]\n{self.listen_line(host)}\nworkers = 2\naccess_log = "{d / "access.log"}"\n'
                f'[index]\npath = "{d / "index"}"\nmap_size_gb = 1\n'
                f'[[stores]]\npath = "{d / "store0"}"\n[[stores]]\npath = "{d / "store1"}"\n'
                f'[signing]\nkeys = {{ {KEY_ID} = "{SECRET}" }}\nkey_id = "{KEY_ID}"\n'
                f'[routes]\nstatic = ["{prefix}"]\n'
                f'[fill]\nmanifest_url = "{self.origin_url}/manifest.json"\n'
                f"concurrency = 2\nrequire_signed_manifest = true\nretries = 2\nbackoff_s = 0.5\n"
                + self.ca_line()
                + self.tls_table(aid, host)
            )
            self.nodes.append(node)
        sdir = self.work / "steering"
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / "coverage-zones.json").write_text(json.dumps({"coverageZones": {
            "site-a": {"network": ["127.1.0.0/16", "127.3.0.0/16"], "network6": []},
            "site-b": {"network": ["127.2.0.0/16"], "network6": []},
        }}, indent=1))
        apps = "".join(
            f'[[appliances]]\nid = "{n.appliance_id}"\nurl = "{n.url}"\nsite = "{n.site}"\ntier = "{n.tier}"\n' for n in self.nodes
        )
        self.steering_config = sdir / "steering.toml"
        self.steering_config.write_text(
            'max_urls = 3\nfallback_sites = ["site-b", "site-a"]\n'
            f'[server]\n{self.listen_line(self.steering_host)}\ndecision_log = "{sdir / "decisions.log"}"\n'
            + apps
            + '[coverage]\nfile = "coverage-zones.json"\n'
            "[health]\ninterval_s = 0.5\ntimeout_s = 1.0\nfail_after = 2\nrecover_after = 2\n"
            + self.ca_line()
            + self.tls_table("steering", self.steering_host)
            + f'[signing]\nkeys = {{ {KEY_ID} = "{SECRET}" }}\nkey_id = "{KEY_ID}"\nttl_s = 3600\n'
            '[trust]\ncallers = ["127.0.0.0/8"]\n'
            + self.player_steering_toml()
        )

    def make_content(self, titles=TITLES, *, use_ffmpeg: bool | None = None) -> bool:
        """Put `titles` (file names) in the origin: ABR ladders via ffmpeg, or random bytes."""
        if use_ffmpeg is None:
            use_ffmpeg = shutil.which("ffmpeg") is not None
        if not use_ffmpeg:
            for i, (name, mib, _pop) in enumerate(titles):
                make_title(self.content / name, mib, i)
            return False
        self.make_ladders(titles)
        return True

    def make_ladders(self, titles=TITLES) -> None:
        """Encode each title's ladder once, kept in `<work>/media-cache/` so later starts only link the files.

        The cache sits inside the working directory because the demo writes
        nothing elsewhere; a new `--dir` pays for the encodes once.
        """
        seconds = {t: s for t, s, _p in LADDER_TITLES}
        for title in dict.fromkeys(name.split(".", 1)[0] for name, _mib, _pop in titles):
            made = {p.name for p in make_ladder(self.content, title, seconds.get(title, 10), cache=self.work / "media-cache")}
            missing = [name for name, _mib, _pop in titles if name.startswith(title + ".") and name not in made]
            if missing:
                raise RuntimeError(f"{', '.join(missing)}: no such rung in the {title} ladder ({', '.join(sorted(made))})")

    def publish_manifest(self, titles=TITLES) -> dict:
        """Build, add the site list, sign and publish manifest.json on the origin."""
        names = {t[0] for t in titles}
        staging = self.work / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        pop = {}
        for name, _s, p in titles:
            os.link(self.content / name, staging / name)
            pop[name] = p
        (self.work / "popularity.json").write_text(json.dumps(pop))
        out = subprocess.run(
            [str(self.bin / "oca-fill"), "manifest", "build", str(staging), "--base-url", f"{self.origin_url}/",
             "--popularity", str(self.work / "popularity.json")],
            check=True, capture_output=True, text=True,
        ).stdout
        shutil.rmtree(staging)
        doc = json.loads(out)
        doc["sites"] = {}
        for n in self.nodes:
            doc["sites"].setdefault(n.site, []).append({"id": n.appliance_id, "url": n.url, "weight": 1.0})
        from fill.manifest import sign

        doc = sign(doc, KEY_ID, SECRET.encode())
        tmp = self.content / "manifest.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.content / "manifest.json")
        assert {f["id"] for f in doc["files"]} == names
        return doc

    # ------------------------------------------------------------ processes

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        fh = open(log, "ab")
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()))
        fh.close()
        self.procs.append(proc)
        return proc

    def start_origin(self) -> None:
        d = self.work / "nginx"
        d.mkdir(parents=True, exist_ok=True)
        temps = "".join(f"  {k}_temp_path {d / k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (d / "nginx.conf").write_text(
            ""
            # As root, nginx's workers would run as nobody and could not read a private directory.
            + ("user root root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\npid {d / 'nginx.pid'};\nerror_log {d / 'error.log'};\ndaemon off;\n"
            "events { worker_connections 1024; }\n"
            "http {\n  default_type application/octet-stream;\n  sendfile on;\n  tcp_nopush on;\n"
            f"  access_log {d / 'access.log'};\n{temps}"
            f"  server {{ listen {self.origin_host}:{self.port}{self.nginx_tls()}; root {self.content}; }}\n}}\n"
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self._spawn([nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")], d / "stderr.log")
        wait_http(f"{self.origin_url}/manifest.json", 15, context=self.client_context())

    def start_appliance(self, node: Node) -> None:
        node.proc = self._spawn([str(self.bin / "oca-server"), "--config", str(node.config)], node.dir / "server.log")
        wait_http(node.url + "/health", 20, context=self.client_context())

    def start_steering(self) -> None:
        self.steering = self._spawn([str(self.bin / "oca-steering"), "--config", str(self.steering_config)], self.work / "steering" / "steering.log")
        wait_http(f"{self.steering_url}/health", 20, ok_codes=(200, 503), context=self.client_context())

    def fill(self, node: Node) -> dict:
        proc = subprocess.run([str(self.bin / "oca-fill"), "--config", str(node.config), "run", "--ignore-window"],
                              capture_output=True, text=True, timeout=600, preexec_fn=_die_with_parent(os.getpid()))
        with (node.dir / "fill.log").open("a") as fh:
            fh.write(proc.stderr)
        status = json.loads(subprocess.run([str(self.bin / "oca-fill"), "--config", str(node.config), "status"],
                                           capture_output=True, text=True, check=True).stdout)
        return {"code": proc.returncode, "status": status["last"], "stderr": proc.stderr}

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Kill an appliance's whole process group (parent and workers), as a crash would."""
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, sig)
            node.proc.wait(10)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 40
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    # ------------------------------------------------------------ the player

    def player_steering_toml(self) -> str:
        """Steering's [content] and [play] tables: titles from the origin's manifest, short steering TTLs."""
        return (f'[content]\nmanifest_url = "{self.origin_url}/manifest.json"\nrefresh_s = 5\n' + self.ca_line()
                + "[play]\nsteering_ttl_s = 4\n")

    def watch_url(self, title: str, client: str | None = None) -> str:
        return f"{self.steering_url}/watch/{title}" + (f"?client={client}" if client else "")

    def steering_titles(self, doc: dict, timeout_s: float = 15) -> list[str]:
        """The titles steering plays (from the manifest's media fields); [] at once when `doc` has none."""
        if not any("kind" in f for f in doc.get("files", ())):
            return []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self.urlopen(f"{self.steering_url}/health", timeout=5) as resp:
                    doc = json.load(resp)
            except urllib.error.HTTPError as exc:
                doc = json.load(exc)
            except OSError:
                doc = {}
            if doc.get("content", {}).get("titles") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        if not doc.get("content", {}).get("titles"):
            return []
        with self.urlopen(f"{self.steering_url}/watch/", timeout=5) as resp:
            page = resp.read().decode()
        return sorted(set(re.findall(r'href="/watch/([A-Za-z0-9][A-Za-z0-9._-]*)"', page)))

    def steer(self, content_id: str, client: str) -> dict:
        url = f"{self.steering_url}/steer?content={content_id}&client={client}"
        try:
            with self.urlopen(url, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            return json.load(exc)

    def wait_steering(self, content_id: str, client: str, want, timeout_s: float = 20) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = self.steer(content_id, client)
            if want(doc) or time.monotonic() > deadline:
                return doc
            time.sleep(0.2)

    def play(self, content_id: str, client: str, *, chunk: int = 2 << 20, on_range=None) -> "Playback":
        """Fetch the whole title in ranges, failing over down the steering list."""
        doc = self.steer(content_id, client)
        urls = [u["url"] for u in doc.get("urls", [])]
        pb = Playback(content_id, doc, urls)
        h = xxhash.xxh3_128()
        offset = 0
        size = None
        etag = None
        i = 0
        while i < len(urls) and (size is None or offset < size):
            end = offset + chunk - 1
            headers = {"Range": f"bytes={offset}-{end}"}
            if etag:
                headers["If-Range"] = etag  # identical on every appliance, so resuming elsewhere is safe
            try:
                with self.urlopen(urllib.request.Request(urls[i], headers=headers), timeout=5) as resp:
                    if resp.status != 206:
                        raise OSError(f"expected 206, got {resp.status}")
                    total = int(resp.headers["Content-Range"].rsplit("/", 1)[1])
                    size = total if size is None else size
                    etag = etag or resp.headers.get("ETag")
                    data = resp.read()
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                pb.failovers.append((urls[i], offset, str(exc)[:120]))
                i += 1
                continue
            h.update(data)
            offset += len(data)
            pb.ranges.append((urls[i].split("?")[0], len(data)))
            if on_range is not None:
                on_range(pb, offset)
        pb.size = offset
        pb.checksum = h.hexdigest()
        pb.complete = size is not None and offset == size
        return pb

    # ------------------------------------------------------------ HTTPS (the demo's throwaway CA)

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"

    @property
    def origin_url(self) -> str:
        return f"{self.scheme}://{self.origin_host}:{self.port}"

    @property
    def steering_url(self) -> str:
        return f"{self.scheme}://{self.steering_host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.work / "pki" / "ca.pem"

    def make_pki(self) -> None:
        """A CA for this demo run and one certificate per service, in <work>/pki (keys 0600)."""
        from oca.certs import make_ca, make_leaf

        pki = self.work / "pki"
        shutil.rmtree(pki, ignore_errors=True)
        ca = make_ca(pki, name="oca demo CA (throwaway)")
        hosts = {"oca-1": "127.0.0.11", "oca-2": "127.0.0.12", "oca-3": "127.0.0.13",
                 "steering": self.steering_host, "origin": self.origin_host}
        for name, host in hosts.items():
            make_leaf(ca, pki, name, hosts=(host, "localhost"), days=30)

    def listen_line(self, host: str) -> str:
        """`[server] listen`: empty on HTTPS (the [tls] table serves), else the plain address."""
        return "listen = []" if self.https else f'listen = ["{host}:{self.port}"]'

    def tls_table(self, name: str, host: str) -> str:
        if not self.https:
            return ""
        pki = self.work / "pki"
        return (f'[tls]\nlisten = ["{host}:{self.port}"]\ncert_file = "{pki / (name + ".crt")}"\n'
                f'key_file = "{pki / (name + ".key")}"\n')

    def ca_line(self) -> str:
        """`ca_file` for the table being written ([fill] or [health]): verify with the demo CA."""
        return f'ca_file = "{self.ca_path}"\n' if self.https else ""

    def nginx_tls(self) -> str:
        if not self.https:
            return ""
        pki = self.work / "pki"
        return f" ssl; ssl_certificate {pki / 'origin.crt'}; ssl_certificate_key {pki / 'origin.key'}; ssl_protocols TLSv1.2 TLSv1.3"

    def client_context(self):
        """An SSLContext that trusts the demo CA (None on the plain demo)."""
        if not self.https:
            return None
        ctx = getattr(self, "_client_ctx", None)
        if ctx is None:
            import ssl

            ctx = self._client_ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return ctx

    def urlopen(self, url, timeout: float = 5):
        """urllib's urlopen, trusting the demo CA."""
        return urllib.request.urlopen(url, timeout=timeout, context=self.client_context())

    def trust_help(self) -> list[str]:
        if not self.https:
            return []
        ca = self.ca_path
        return [
            f"  HTTPS everywhere, certificates from a throwaway CA: {ca}",
            f"    curl:     curl --cacert {ca} {self.steering_url}/health",
            f"    Chromium: chromium --ignore-certificate-errors --user-data-dir=$(mktemp -d)   (a throwaway profile),",
            f"              or Settings > Privacy and security > Security > Manage certificates > Authorities > Import {ca}",
            f"    Firefox:  Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import {ca}",
            "    (the CA's key was never written to disk, so it signs nothing more; its certificates name only",
            "     127.0.0.x and localhost; still, remove the imported CA when done)",
        ]


@dataclass
class Playback:
    content_id: str
    steering: dict
    urls: list
    ranges: list = field(default_factory=list)
    failovers: list = field(default_factory=list)
    size: int = 0
    checksum: str = ""
    complete: bool = False


def scripted_player_step(sysm: DemoSystem, doc: dict, client: str, say) -> bool:
    """Play the first file as a scripted player: steering's URLs, 2 MiB ranges, kill -9 midway, checksum at the end."""
    title = TITLES[0][0]
    expected = next(f["xxh128"] for f in doc["files"] if f["id"] == title)
    first = sysm.wait_steering(title, client, lambda d: len(d.get("urls", [])) >= 2)
    say(f"player at {client} asks steering for {title}: {first['result']} via {first['prefix']}: "
        + ", ".join(u["appliance"] for u in first["urls"]))
    victim = next(n for n in sysm.nodes if n.appliance_id == first["urls"][0]["appliance"])
    killed = []

    def kill_midway(pb: Playback, offset: int) -> None:
        if not killed and offset >= 4 << 20:
            killed.append(victim.appliance_id)
            sysm.kill(victim)
            say(f"... killed {victim.appliance_id} (kill -9) after {offset / 1e6:.1f} MB of playback")

    pb = sysm.play(title, client, on_range=kill_midway)
    for url, offset, why in pb.failovers:
        say(f"player: {url.split('?')[0]} failed at byte {offset} ({why}); next URL")
    verdict = "matches" if pb.checksum == expected else "DOES NOT MATCH"
    say(f"player: {pb.size} bytes in {len(pb.ranges)} ranges, xxh3-128 {verdict} the manifest")
    if killed:
        sysm.start_appliance(victim)
        say(f"restarted {victim.appliance_id}")
    return pb.checksum == expected


WATCH_STATE_JS = """() => { const v = document.getElementById('v'); return {time: v.currentTime, appliance: oca.appliance,
  encode: oca.videoEncode ? oca.videoEncode() : null, stall: oca.longestStall(), fatal: oca.fatal.map(e => e.text),
  errors: oca.errors.length, buffers: oca.buffers()}; }"""


def watch_in_chromium(sysm: DemoSystem, title: str, client: str, say, *, media_s: float = 6.0) -> bool | None:
    """Play `title` in headless Chromium through steering's /watch page (dash.js), kill -9 the appliance in use
    mid-playback, and save a screenshot of the page (`<work>/player.png`). None when Chromium or Playwright is
    missing: the scripted player runs instead."""
    if not os.path.exists(CHROMIUM):
        say(f"{CHROMIUM} is not installed: the scripted player plays instead")
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        say("Playwright is not installed (pip install playwright): the scripted player plays instead")
        return None
    shot = sysm.work / "player.png"
    profile = sysm.work / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)

    def wait(page, ok, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            st = page.evaluate(WATCH_STATE_JS)
            if ok(st) or st["fatal"] or time.monotonic() > deadline:
                return st
            time.sleep(0.2)

    with sync_playwright() as p:
        # The demo's CA is in no browser store; this throwaway profile accepts the demo's certificates only
        # for this run (every host it visits is one the demo started on 127.0.0.x).
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                                   ignore_https_errors=sysm.https,
                                                   viewport={"width": 1000, "height": 900})
        try:
            page = ctx.new_page()
            page.goto(sysm.watch_url(title, client))
            st = wait(page, lambda s: s["time"] >= media_s and s["appliance"], 60)
            victim = next((n for n in sysm.nodes if n.appliance_id == st["appliance"]), None)
            if st["fatal"] or victim is None:
                say(f"chromium: {title} did not play: {st['fatal'] or st}")
                return False
            enc = st["encode"] or {}
            say(f"chromium (dash.js) plays {title} for client {client} from {victim.appliance_id}: {enc.get('id')} "
                f"at {enc.get('bandwidth', 0) / 1e6:.2f} Mb/s")
            at = st["time"]
            sysm.kill(victim)
            say(f"... killed {victim.appliance_id} (kill -9) at {at:.1f} s of media")
            st = wait(page, lambda s: s["time"] >= at + media_s, 60)
            page.screenshot(path=str(shot))
            ok = not st["fatal"] and st["time"] >= at + media_s
            say(f"chromium: playback {'went on' if ok else 'DID NOT go on'} from {st['appliance']} to {st['time']:.1f} s; "
                f"longest stall {st['stall']:.2f} s; {st['errors']} failed requests retried by the player; screenshot {shot}")
            sysm.start_appliance(victim)
            say(f"restarted {victim.appliance_id}")
            return ok
        finally:
            ctx.close()


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int):
    """A preexec_fn: the child gets SIGTERM when the demo dies, however it dies."""

    def preexec() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the demo died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Stopped(Exception):
    """SIGTERM or SIGHUP asked the demo to stop."""


def _stop_on_signal(signum: int, _frame) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # one teardown, however many signals follow
    raise Stopped(signal.Signals(signum).name)


def wait_http(url: str, timeout_s: float, ok_codes=(200,), context=None) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                if resp.status in ok_codes:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok_codes or exc.code == 404:
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s: {last}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m oca.demo", description="Run the whole system on loopback on built-in defaults.")
    p.add_argument("--dir", default="demo", help="working directory (default ./demo); nothing is written elsewhere")
    p.add_argument("--port", type=int, default=8080, help="port for every service, each on its own 127.0.0.x address")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default: wait for Ctrl-C)")
    p.add_argument("--random-titles", action="store_true", help="random bytes instead of encoding videos with ffmpeg (faster)")
    p.add_argument("--http", action="store_true", help="plain HTTP everywhere instead of HTTPS with a throwaway CA")
    args = p.parse_args(argv)
    sysm = DemoSystem(Path(args.dir), base_port=args.port, https=not args.http)
    say = lambda msg: print(f"demo: {msg}", flush=True)  # noqa: E731
    say(f"working directory {sysm.work} (nothing is written outside it)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    try:
        sysm.prepare()
        real = sysm.make_content(use_ffmpeg=False if args.random_titles else None)
        say(f"{len(TITLES)} sample files in {sysm.content} ({f'{len(LADDER_TITLES)} titles as ABR ladders of fragmented MP4 via ffmpeg' if real else 'random bytes: install ffmpeg for playable ones'})")
        doc = sysm.publish_manifest()
        sysm.start_origin()
        if sysm.https:
            say(f"a throwaway CA signed one certificate per service: {sysm.ca_path} (trust it as shown at the end)")
        say(f"origin: nginx on {sysm.origin_url}/ with a signed manifest of {len(doc['files'])} titles")
        for node in sysm.nodes:
            sysm.start_appliance(node)
        say("appliances: " + ", ".join(f"{n.appliance_id} ({n.site}, {n.tier}) {n.url}" for n in sysm.nodes))
        sysm.start_steering()
        say(f"steering: {sysm.steering_url}/")
        for node in sysm.nodes:
            r = sysm.fill(node)
            st = r["status"] or {}
            say(f"fill {node.appliance_id}: {st.get('files_added', 0)} added, {st.get('files_failed', 0)} failed, "
                f"{st.get('bytes_filled', 0) / 1e6:.1f} MB ({st.get('ended_because')})")
        client = "127.1.0.50"
        titles = sysm.steering_titles(doc)
        watched = watch_in_chromium(sysm, titles[0], client, say) if titles else None
        ok = watched if watched is not None else scripted_player_step(sysm, doc, client, say)
        title = TITLES[0][0]
        base = sysm.steering_url
        lines = [f"  steering status page  {base}/", f"  steer a client        {base}/steer?content={title}&client=127.1.0.50"]
        for n in sysm.nodes:
            lines.append(f"  {n.appliance_id:<5} health {n.url}/health   metrics {n.url}/metrics")
        lines.append(f"  origin                {sysm.origin_url}/manifest.json")
        lines.append(f"  logs and configs      {sysm.work}")
        lines.extend(sysm.trust_help())
        print("\nThe system is running (Ctrl-C stops everything):\n" + "\n".join(lines) + "\n", flush=True)
        if titles:
            print(f"Watch {titles[0]} in a browser: {sysm.watch_url(titles[0])}", flush=True)
        if args.seconds:
            time.sleep(args.seconds)
        else:
            signal.pause()
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 0
    except Stopped as exc:
        say(f"{exc.args[0]}: stopping")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the teardown itself is never interrupted
        sysm.stop()
        say("stopped everything it started")


if __name__ == "__main__":
    sys.exit(main())
