"""`python -m oca.demo`: the whole system on one machine, on built-in defaults.

What it does, with the real programs:
1. makes sample titles (short H.264 MP4s with faststart when ffmpeg is
   installed, otherwise random bytes) and popularity figures;
2. publishes them with a signed manifest on a real nginx origin on loopback;
3. starts three appliances in two sites (oca-1 and oca-2 in site-a,
   oca-3 in site-b) and the steering service, on 127.0.0.x addresses;
4. runs the nightly fill on each appliance (site-a's second appliance
   fills from its peer where it can);
5. plays a title the way a player would: asks steering, fetches 2 MiB ranges
   from the first URL, and when that appliance dies mid-way (the demo kills
   it) carries on from the next URL, then checks the bytes against the
   manifest's checksum;
6. prints where to look, and waits for Ctrl-C, which stops everything.

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
- Every process it starts is stopped on exit: on Ctrl-C, and on SIGTERM or
  SIGHUP (a supervisor, `timeout`, a closed terminal), which end the demo
  the same way. Children never outlive it: each is started with
  PR_SET_PDEATHSIG (SIGTERM), so even a `kill -9` of the demo stops them.
- `DemoSystem` is also what the end-to-end test drives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

SECRET = "demo-secret-0123456789"
KEY_ID = "demo"
# (name, seconds of video or MiB of random data, popularity in bytes/day)
TITLES = (
    ("big-buck-bunny.1080p.mp4", 24, 9.0e9),
    ("big-buck-bunny.480p.mp4", 24, 3.0e9),
    ("sintel.1080p.mp4", 20, 2.0e9),
    ("sintel.480p.mp4", 20, 6.0e8),
    ("tears-of-steel.1080p.mp4", 16, 4.0e8),
    ("tears-of-steel.480p.mp4", 16, 1.0e8),
    ("cosmos-laundromat.1080p.mp4", 12, 5.0e7),
    ("elephants-dream.480p.mp4", 8, 1.0e7),
)
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


def make_title(path: Path, seconds: int, index: int, use_ffmpeg: bool) -> None:
    if path.exists() and path.stat().st_size > 0:
        return
    tmp = path.with_suffix(".tmp.mp4")
    if use_ffmpeg:
        sizes = "1280x720" if "1080p" in path.name else "640x360"
        rate = "2500k" if "1080p" in path.name else "800k"
        cmd = [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={sizes}:rate=25",
            "-f", "lavfi", "-i", f"sine=frequency={220 + 55 * index}:sample_rate=48000",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-b:v", rate,
            "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(tmp),
        ]
        subprocess.run(cmd, check=True)
    else:
        block = os.urandom(1 << 20)
        with open(tmp, "wb") as fh:
            for j in range(seconds):
                fh.write(bytes([index, j & 255]) + block[2:])
    os.replace(tmp, path)


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
        )

    def make_content(self, titles=TITLES, *, use_ffmpeg: bool | None = None) -> bool:
        if use_ffmpeg is None:
            use_ffmpeg = shutil.which("ffmpeg") is not None
        for i, (name, seconds, _pop) in enumerate(titles):
            make_title(self.content / name, seconds, i, use_ffmpeg)
        return use_ffmpeg

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
        say(f"{len(TITLES)} sample titles in {sysm.content} ({'H.264 MP4 via ffmpeg' if real else 'random bytes: install ffmpeg for playable ones'})")
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
        title = TITLES[0][0]
        expected = next(f["xxh128"] for f in doc["files"] if f["id"] == title)
        client = "127.1.0.50"
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
        base = sysm.steering_url
        lines = [f"  steering status page  {base}/", f"  steer a client        {base}/steer?content={title}&client=127.1.0.50"]
        for n in sysm.nodes:
            lines.append(f"  {n.appliance_id:<5} health {n.url}/health   metrics {n.url}/metrics")
        lines.append(f"  origin                {sysm.origin_url}/manifest.json")
        lines.append(f"  logs and configs      {sysm.work}")
        lines.extend(sysm.trust_help())
        print("\nThe system is running (Ctrl-C stops everything):\n" + "\n".join(lines) + "\n", flush=True)
        if args.seconds:
            time.sleep(args.seconds)
        else:
            signal.pause()
        return 0 if pb.checksum == expected else 1
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
