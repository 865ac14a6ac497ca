"""`oca-server` as real processes on loopback, driven by real clients.

Every server here is the real parent (`python -m oca.server.main`) with its
real workers, the real LMDB index and real store directories under a
temporary directory; content goes in with the real `oca-admin ingest`.
Clients are curl (single and multiple ranges), `http.client` (keep-alive),
raw sockets (pipelining, slow readers) and strace (to prove that bodies
leave by `sendfile` and are never read into Python).

The HTTP behaviour tests run against one module-scoped appliance per event
loop (`[server] event_loop = "uvloop"` and `"asyncio"`), listening on IPv4
and IPv6. Signals, reloads, metrics and the access log need servers of
their own, started per test. Every wait is bounded by a deadline, and every
server is stopped by its fixture or `with` block even when a test fails.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import psutil
import pytest
import xxhash
from prometheus_client.parser import text_string_to_metric_families

from oca.signing import sign_query
from tests.server_proc import ServerProcess, appliance, free_port, wait_port
from tests.support import ROOT, admin

T = TypeVar("T")

MTIME = 1_600_000_000  # the origin modification time given to every ingest
SEED = 20_240_607  # file contents are random but reproducible
BIG = 8 * 1024 * 1024 + 12_345  # bigger than a loopback socket's buffers (4 MiB send + a small receive window)
SIZES = {"empty.bin": 0, "one.txt": 1, "mid.mp4": 100_000, "big.ts": BIG}
TYPES = {"empty.bin": "application/octet-stream", "one.txt": "text/plain", "mid.mp4": "video/mp4", "big.ts": "video/mp2t"}
SECRET = "0123456789abcdef0123"
CONTROL_TOKEN = "ctl-0123456789abcdef"
SIGNING = f'[signing]\nrequired = true\nkeys = {{k1 = "{SECRET}"}}\nkey_id = "k1"\n'
IO_TIMEOUT_S = 15.0  # any single socket operation or subprocess
SLOW_RCVBUF = 64 * 1024  # receive buffer of the "slow reader" clients


# ---------------------------------------------------------------- small helpers


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def etag_of(data: bytes) -> str:
    return f'"{xxhash.xxh3_128_hexdigest(data)}"'


def http_date(unix_s: int) -> str:
    return email.utils.formatdate(unix_s, usegmt=True)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def _headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        out[key] = value if key not in out else f"{out[key]}, {value}"
    return out


def curl(url: str, *args: str) -> Reply:
    """One request with the real curl; body bytes exactly as received."""
    with tempfile.TemporaryDirectory() as d:
        body = Path(d) / "body"
        proc = subprocess.run(
            ["curl", "-sS", "-g", "--http1.1", "--max-time", str(IO_TIMEOUT_S), "-D", "-", "-o", str(body), *args, url],
            capture_output=True, timeout=IO_TIMEOUT_S + 5,
        )
        assert proc.returncode == 0, f"curl {args} {url}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        blocks = [b for b in proc.stdout.split(b"\r\n\r\n") if b.strip()]
        status_line, *lines = blocks[-1].decode("latin-1").split("\r\n")
        pairs = [tuple(x.strip() for x in line.split(":", 1)) for line in lines if ":" in line]
        return Reply(int(status_line.split()[1]), _headers(pairs), body.read_bytes() if body.exists() else b"")  # type: ignore[arg-type]


def request(host: str, port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    """One request on a fresh `http.client` connection."""
    conn = http.client.HTTPConnection(host, port, timeout=IO_TIMEOUT_S)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, _headers(resp.getheaders()), resp.read())
    finally:
        conn.close()


class RawReader:
    """Reads HTTP/1.1 responses off a raw socket, one after the other."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)  # bounded by the socket timeout
        if not chunk:
            raise EOFError("connection closed by the server")
        self.buf += chunk

    def read_until(self, marker: bytes) -> bytes:
        while (i := self.buf.find(marker)) < 0:
            self._fill()
        out = bytes(self.buf[: i + len(marker)])
        del self.buf[: i + len(marker)]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self) -> tuple[int, dict[str, str]]:
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head[:-4].split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        return int(status), _headers([tuple(x.strip() for x in line.split(":", 1)) for line in lines])  # type: ignore[misc]

    def response(self, method: str = "GET") -> Reply:
        status, headers = self.read_head()
        length = 0 if method == "HEAD" or status in (204, 304) else int(headers["content-length"])
        return Reply(status, headers, self.read_exact(length))

    def at_eof(self) -> bool:
        if self.buf:
            return False
        return self.sock.recv(1) == b""


def raw_connect(host: str, port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    sock.settimeout(IO_TIMEOUT_S)
    sock.connect((host, port))
    return sock


def raw_request(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: oca.test"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class SlowDownload:
    """A GET whose client reads only when told to, so the response stays in flight.

    The receive window is small and the server's send buffer at most 4 MiB,
    so on a file of `BIG` bytes the server is still inside its sendfile loop
    until the client reads.
    """

    def __init__(self, host: str, port: int, path: str):
        self.sock = raw_connect(host, port, rcvbuf=SLOW_RCVBUF)
        self.reader = RawReader(self.sock)
        try:
            self.sock.sendall(raw_request("GET", path))
            self.status, self.headers = self.reader.read_head()
        except BaseException:
            self.sock.close()
            raise
        self.length = int(self.headers["content-length"])
        self.body = bytearray()

    def read_some(self, n: int) -> None:
        self.body += self.reader.read_exact(min(n, self.length - len(self.body)))

    def assert_in_flight(self) -> None:
        """The server cannot have sent everything yet: what it sent is read, or in one of two buffers."""
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert len(self.body) + rcvbuf + wmem_max < self.length, "the test's premise fails on this machine"

    def read_rest(self) -> bytes:
        deadline = time.monotonic() + 60
        while len(self.body) < self.length:
            assert time.monotonic() < deadline, "download did not finish in 60 s"
            self.read_some(1 << 20)
        return bytes(self.body)

    def close(self) -> None:
        self.sock.close()


def parse_multipart(reply: Reply) -> list[tuple[str, int, int, int, bytes]]:
    """Parse a multipart/byteranges body strictly, using each part's Content-Range.

    Returns (part content type, start, end, complete length, bytes) per part.
    """
    ctype = reply.headers["content-type"]
    m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", ctype)
    assert m, ctype
    boundary = m.group(1).encode()
    body = reply.body
    assert int(reply.headers["content-length"]) == len(body)
    parts = []
    pos = 0
    while True:
        delim = b"\r\n--" + boundary
        assert body.startswith(delim, pos), f"no boundary at {pos}: {body[pos:pos + 80]!r}"
        pos += len(delim)
        if body.startswith(b"--\r\n", pos):
            assert pos + 4 == len(body), "bytes after the closing boundary"
            return parts
        assert body.startswith(b"\r\n", pos)
        end_head = body.index(b"\r\n\r\n", pos)
        part_headers = _headers([tuple(x.strip() for x in line.split(":", 1)) for line in body[pos + 2 : end_head].decode("latin-1").split("\r\n")])  # type: ignore[misc]
        pos = end_head + 4
        cr = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", part_headers["content-range"])
        assert cr, part_headers
        start, end, complete = map(int, cr.groups())
        parts.append((part_headers.get("content-type", ""), start, end, complete, body[pos : pos + end - start + 1]))
        pos += end - start + 1


# ---------------------------------------------------------------- appliances


def payloads() -> dict[str, bytes]:
    rng = random.Random(SEED)
    return {cid: rng.randbytes(n) for cid, n in SIZES.items()}


def ingest(cfg: Path, content_id: str, data: bytes, mtime_s: int = MTIME) -> None:
    src = cfg.parent / f"src-{content_id}"
    src.write_bytes(data)
    admin(cfg, "ingest", str(src), "--id", content_id, "--mtime", str(mtime_s), check=True, timeout=IO_TIMEOUT_S * 2)
    src.unlink()


def make_appliance(tmp: Path, files: dict[str, bytes], **kw) -> tuple[Path, str, int]:
    cfg, host, port = appliance(tmp, **kw)
    for content_id, data in files.items():
        ingest(cfg, content_id, data)
    return cfg, host, port


def wait_serving(srv: ServerProcess, workers: int) -> list[int]:
    """Wait until the parent reports all workers ready; returns their pids."""
    wait_for(lambda: f"with {workers}/{workers} workers" in srv.log_text(), 20, "the server to report its workers ready")
    return wait_for(lambda: len(pids := srv.worker_pids()) == workers and pids, 10, f"{workers} worker processes")


@contextlib.contextmanager
def running(cfg: Path, host: str, port: int, workers: int = 2) -> Iterator[ServerProcess]:
    """A started server with all its workers ready; stopped on the way out, whatever happened."""
    with ServerProcess(cfg, host, port) as srv:
        wait_serving(srv, workers)
        yield srv


def owner_of(sock: socket.socket, pids: list[int], server_port: int, timeout_s: float = 5.0) -> int:
    """The worker pid that accepted the client connection `sock`."""
    local = sock.getsockname()[1]

    def find() -> int | None:
        for pid in pids:
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            for c in conns:
                if c.laddr and c.laddr.port == server_port and c.raddr and c.raddr.port == local:
                    return pid
        return None

    return wait_for(find, timeout_s, f"a worker to accept the connection from port {local}")


def listening_pids(pids: list[int], port: int) -> list[int]:
    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            out.append(pid)
    return out


def gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


@dataclass
class Served:
    loop: str
    srv: ServerProcess
    cfg: Path
    host: str
    port: int
    host6: str
    port6: int
    files: dict[str, bytes]
    workers: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base6(self) -> str:
        return f"http://[{self.host6}]:{self.port6}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        return request(self.host, self.port, path, headers, method)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return payloads()


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def served(request, tmp_path_factory, files) -> Iterator[Served]:
    """Two workers on one event loop kind, listening on 127.0.0.1 and ::1."""
    loop = request.param
    tmp = tmp_path_factory.mktemp(f"served-{loop}")
    cfg, host, port = make_appliance(tmp, files, event_loop=loop, workers=2)
    port6 = free_port("::1")
    text = cfg.read_text()
    cfg.write_text(text.replace(f'listen = ["{host}:{port}"]', f'listen = ["{host}:{port}", "[::1]:{port6}"]', 1))
    with ServerProcess(cfg, host, port) as srv:
        pids = wait_serving(srv, 2)
        wait_port("::1", port6)
        yield Served(loop, srv, cfg, host, port, "::1", port6, files, pids)


# ================================================================ HTTP behaviour, both loops


def test_workers_are_direct_children_sharing_v4_and_v6_sockets(served):
    pids = served.srv.worker_pids()
    assert len(pids) == 2
    for pid in pids:
        proc = psutil.Process(pid)
        assert proc.ppid() == served.srv.proc.pid
        assert "oca.server.worker" in proc.cmdline()
    # Every worker holds both listening sockets; the parent owns them too.
    assert sorted(listening_pids(pids, served.port)) == sorted(pids)
    assert sorted(listening_pids(pids, served.port6)) == sorted(pids)
    assert f"({served.loop})" in served.srv.log_text()


@pytest.mark.parametrize("content_id", list(SIZES))
def test_get_whole_file_with_curl(served, content_id):
    data = served.files[content_id]
    r = curl(f"{served.base}/content/{content_id}")
    assert r.status == 200
    assert r.body == data
    h = r.headers
    assert int(h["content-length"]) == len(data)
    assert h["etag"] == etag_of(data)
    assert h["last-modified"] == http_date(MTIME)
    assert h["accept-ranges"] == "bytes"
    assert h["content-type"] == TYPES[content_id]
    assert h["cache-control"] == "no-store"  # the default
    assert h["access-control-allow-origin"] == "*"
    assert "Content-Range" in h["access-control-expose-headers"] and "ETag" in h["access-control-expose-headers"]
    assert "content-range" not in h
    assert email.utils.parsedate_to_datetime(h["date"])  # a valid HTTP-date


@pytest.mark.parametrize("content_id", list(SIZES))
def test_head_has_headers_and_no_body(served, content_id):
    data = served.files[content_id]
    # Pipelined after a GET: a body on the HEAD would corrupt the GET's answer.
    with raw_connect(served.host, served.port) as sock:
        sock.sendall(raw_request("HEAD", f"/content/{content_id}") + raw_request("GET", "/content/one.txt"))
        reader = RawReader(sock)
        head = reader.response("HEAD")
        after = reader.response()
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == len(data)
    assert head.headers["etag"] == etag_of(data)
    assert head.headers["content-type"] == TYPES[content_id]
    assert after.status == 200 and after.body == served.files["one.txt"]


SINGLE_RANGES = [
    # (id, curl -r argument, expected inclusive start, end)
    ("one.txt", "0-0", 0, 0),
    ("one.txt", "-5", 0, 0),  # suffix longer than the file
    ("one.txt", "0-", 0, 0),
    ("mid.mp4", "0-99", 0, 99),
    ("mid.mp4", "1000-1999", 1000, 1999),
    ("mid.mp4", "-500", 99_500, 99_999),  # suffix
    ("mid.mp4", "99990-", 99_990, 99_999),  # open-ended
    ("mid.mp4", "50000-999999999", 50_000, 99_999),  # end clamped
    ("mid.mp4", "0-99999", 0, 99_999),  # one range covering everything is still 206
    ("big.ts", "1000000-3000000", 1_000_000, 3_000_000),
    ("big.ts", f"{BIG - 1}-", BIG - 1, BIG - 1),
    ("big.ts", "-1048576", BIG - 1_048_576, BIG - 1),
]


@pytest.mark.parametrize("content_id,spec,start,end", SINGLE_RANGES, ids=[f"{c}:{s}" for c, s, _, _ in SINGLE_RANGES])
def test_single_range_with_curl(served, content_id, spec, start, end):
    data = served.files[content_id]
    r = curl(f"{served.base}/content/{content_id}", "-r", spec)
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert int(r.headers["content-length"]) == end - start + 1
    assert r.body == data[start : end + 1]
    assert r.headers["etag"] == etag_of(data)
    assert r.headers["content-type"] == TYPES[content_id]


MULTI_RANGES = [
    # (id, curl -r argument, expected parts in order)
    ("mid.mp4", "0-9,200-299,-100", [(0, 9), (200, 299), (99_900, 99_999)]),
    ("mid.mp4", "5000-5099,0-0", [(5000, 5099), (0, 0)]),  # parts in request order
    ("mid.mp4", "0-99,50-149,1000-1099", [(0, 149), (1000, 1099)]),  # overlapping ranges coalesced
    ("mid.mp4", "10-19,20-29,99999-", [(10, 29), (99_999, 99_999)]),  # adjacent ranges coalesced
    ("big.ts", f"0-99,4000000-4999999,{BIG - 100}-", [(0, 99), (4_000_000, 4_999_999), (BIG - 100, BIG - 1)]),
]


@pytest.mark.parametrize("content_id,spec,expected", MULTI_RANGES, ids=[f"{c}:{s}" for c, s, _ in MULTI_RANGES])
def test_multi_range_with_curl(served, content_id, spec, expected):
    data = served.files[content_id]
    r = curl(f"{served.base}/content/{content_id}", "-r", spec)
    assert r.status == 206
    assert "content-range" not in r.headers
    assert r.headers["etag"] == etag_of(data)
    parts = parse_multipart(r)
    assert [(s, e) for _t, s, e, _n, _b in parts] == expected
    for ctype, start, end, complete, got in parts:
        assert ctype == TYPES[content_id]
        assert complete == len(data)
        assert got == data[start : end + 1]


def test_ranges_adding_up_to_the_whole_file_get_200(served):
    data = served.files["mid.mp4"]
    r = curl(f"{served.base}/content/mid.mp4", "-r", "0-60000,40000-")
    assert r.status == 200 and r.body == data


UNSATISFIABLE = [
    ("mid.mp4", "bytes=100000-"),
    ("mid.mp4", "bytes=200000-300000"),
    ("one.txt", "bytes=-0"),
    ("one.txt", "bytes=1-1"),
    ("empty.bin", "bytes=0-0"),
    ("empty.bin", "bytes=-10"),
    ("big.ts", f"bytes={BIG}-,{BIG + 10}-{BIG + 20}"),
]


@pytest.mark.parametrize("content_id,value", UNSATISFIABLE)
def test_unsatisfiable_range_is_416(served, content_id, value):
    r = curl(f"{served.base}/content/{content_id}", "-H", f"Range: {value}")
    assert r.status == 416
    assert r.headers["content-range"] == f"bytes */{SIZES[content_id]}"
    assert r.headers["cache-control"] == "no-store"
    assert r.body.endswith(b"\n") and r.body.count(b"\n") == 1


@pytest.mark.parametrize("value", ["bytes=abc", "items=0-5", "bytes=5-1", "bytes 0-5", "bytes=0-1," + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(1, 17))])
def test_malformed_or_foreign_range_is_ignored(served, value):
    data = served.files["mid.mp4"]
    r = curl(f"{served.base}/content/mid.mp4", "-H", f"Range: {value}")
    assert r.status == 200
    assert r.body == data
    assert "content-range" not in r.headers


def test_if_range(served):
    data = served.files["mid.mp4"]
    tag = etag_of(data)
    cases = [
        (tag, 206),
        ('"0000000000000000000000000000000"', 200),
        (f"W/{tag}", 200),  # a weak tag never satisfies If-Range
        (http_date(MTIME), 206),  # exactly Last-Modified
        (http_date(MTIME + 1), 200),
        (http_date(MTIME - 1), 200),
        ("garbage", 200),
    ]
    for value, status in cases:
        r = served.get("/content/mid.mp4", {"Range": "bytes=100-199", "If-Range": value})
        assert r.status == status, value
        if status == 206:
            assert r.headers["content-range"] == "bytes 100-199/100000"
            assert r.body == data[100:200]
        else:
            assert r.body == data and "content-range" not in r.headers


def test_conditional_requests_get_304(served):
    data = served.files["mid.mp4"]
    tag = etag_of(data)
    cases = [
        ({"If-None-Match": tag}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": f'"abc", W/{tag}'}, 304),  # weak comparison
        ({"If-None-Match": '"abc"'}, 200),
        ({"If-Modified-Since": http_date(MTIME)}, 304),
        ({"If-Modified-Since": http_date(MTIME + 86_400)}, 304),
        ({"If-Modified-Since": http_date(MTIME - 1)}, 200),
        ({"If-Modified-Since": "yesterday"}, 200),
        ({"If-None-Match": '"abc"', "If-Modified-Since": http_date(MTIME)}, 200),  # INM wins
        ({"If-None-Match": tag, "Range": "bytes=0-9"}, 304),
    ]
    for headers, status in cases:
        for method in ("GET", "HEAD"):
            r = served.get("/content/mid.mp4", headers, method)
            assert r.status == status, (method, headers)
            if status == 304:
                assert r.body == b""
                assert r.headers["etag"] == tag
                assert r.headers["last-modified"] == http_date(MTIME)
                assert "content-length" not in r.headers or r.headers["content-length"] == "0"
            elif method == "GET":
                assert r.body == data


PATH_RANGES = [
    # (id, start, end, expected status, expected inclusive start/end of the body)
    ("mid.mp4", 0, 99, 200, (0, 99)),
    ("mid.mp4", 99_990, 200_000, 200, (99_990, 99_999)),  # end clamped to size - 1
    ("mid.mp4", 5, 5, 200, (5, 5)),
    ("one.txt", 0, 0, 200, (0, 0)),
    ("big.ts", 2_000_000, 6_999_999, 200, (2_000_000, 6_999_999)),
    ("mid.mp4", 100_000, 100_010, 416, None),  # start past the end
    ("empty.bin", 0, 0, 416, None),
    ("mid.mp4", 10, 5, 400, None),  # start after end
]


@pytest.mark.parametrize("content_id,start,end,status,expect", PATH_RANGES, ids=[f"{c}:{s}-{e}" for c, s, e, _, _ in PATH_RANGES])
def test_path_range_form(served, content_id, start, end, status, expect):
    data = served.files[content_id]
    r = curl(f"{served.base}/content/{content_id}/range/{start}-{end}")
    assert r.status == status
    if expect is not None:
        s, e = expect
        assert r.body == data[s : e + 1]
        assert int(r.headers["content-length"]) == e - s + 1
        assert "content-range" not in r.headers
        assert r.headers["etag"] == etag_of(data)
    else:
        assert r.headers["cache-control"] == "no-store"
        if status == 416:
            assert r.headers["content-range"] == f"bytes */{len(data)}"


BAD_PATHS = [
    ("/content/no-such-file.mp4", 404),
    ("/content/nope", 404),
    ("/elsewhere", 404),
    ("/content/", 400),
    ("/content/.hidden", 400),
    ("/content/-dash", 400),
    ("/content/a%2Fb", 400),
    ("/content/a@b", 400),
    ("/content/" + "x" * 129, 400),
    ("/content/mid.mp4/other", 400),
    ("/content/mid.mp4/range/1-", 400),
    ("/content/mid.mp4/range/a-b", 400),
    ("/content/mid.mp4/range/-5-9", 400),
    ("/content/mid.mp4/range/" + "9" * 20 + "-" + "9" * 21, 400),
]


@pytest.mark.parametrize("path,status", BAD_PATHS)
def test_unknown_and_malformed_paths(served, path, status):
    r = curl(f"{served.base}{path}", "--path-as-is")
    assert r.status == status
    assert r.headers["cache-control"] == "no-store"  # errors always
    assert r.headers["content-type"].startswith("text/plain")
    assert r.body.endswith(b"\n") and r.body.count(b"\n") == 1  # one-line reason
    assert "etag" not in r.headers


def test_cors_preflight(served):
    r = served.get("/content/mid.mp4", {"Origin": "https://player.example", "Access-Control-Request-Method": "GET",
                                         "Access-Control-Request-Headers": "range"}, "OPTIONS")
    assert r.status == 204
    assert r.body == b""
    assert r.headers["access-control-allow-origin"] == "*"
    assert "GET" in r.headers["access-control-allow-methods"] and "HEAD" in r.headers["access-control-allow-methods"]
    assert "Range" in r.headers["access-control-allow-headers"]
    assert int(r.headers["access-control-max-age"]) > 0
    # Other methods on content are refused.
    r = served.get("/content/mid.mp4", method="DELETE")
    assert r.status == 405 and "GET" in r.headers["allow"]


def test_keep_alive_many_requests_on_one_http_client_connection(served):
    files = served.files
    conn = http.client.HTTPConnection(served.host, served.port, timeout=IO_TIMEOUT_S)
    try:
        conn.connect()
        first = conn.sock
        steps = [
            ("GET", "/content/mid.mp4", {}, 200, files["mid.mp4"]),
            ("HEAD", "/content/big.ts", {}, 200, b""),
            ("GET", "/content/mid.mp4", {"Range": "bytes=10-19"}, 206, files["mid.mp4"][10:20]),
            ("GET", "/content/nope.bin", {}, 404, None),
            ("GET", "/content/mid.mp4", {"If-None-Match": etag_of(files["mid.mp4"])}, 304, b""),
            ("GET", "/content/big.ts", {}, 200, files["big.ts"]),
            ("GET", "/content/empty.bin", {}, 200, b""),
            ("GET", "/content/one.txt/range/0-0", {}, 200, files["one.txt"]),
            ("GET", "/health", {}, 200, None),
            ("GET", "/content/mid.mp4", {"Range": "bytes=0-0,-1"}, 206, None),
            ("GET", "/content/mid.mp4", {}, 200, files["mid.mp4"]),
        ]
        for method, path, headers, status, body in steps:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            got = resp.read()
            assert resp.status == status, path
            if body is not None:
                assert got == body, path
            assert resp.getheader("connection") is None  # no Connection: close
            assert conn.sock is first, f"the connection was reopened before {path}"
    finally:
        conn.close()


def test_pipelined_requests_answered_in_order(served):
    files = served.files
    tag = etag_of(files["mid.mp4"])
    reqs = [
        ("GET", "/content/mid.mp4", {}, 200, files["mid.mp4"]),
        ("HEAD", "/content/big.ts", {}, 200, b""),
        ("GET", "/content/mid.mp4", {"Range": "bytes=10-19"}, 206, files["mid.mp4"][10:20]),
        ("GET", "/content/nope.bin", {}, 404, None),
        ("GET", "/content/big.ts", {}, 200, files["big.ts"]),
        ("GET", "/content/one.txt/range/0-0", {}, 200, files["one.txt"]),
        ("GET", "/content/empty.bin", {}, 200, b""),
        ("GET", "/content/mid.mp4", {"If-None-Match": tag}, 304, b""),
        ("GET", "/content/mid.mp4", {"Range": "bytes=0-0,-1"}, 206, None),
        ("OPTIONS", "/content/mid.mp4", {}, 204, b""),
        ("GET", "/content/big.ts", {"Range": "bytes=-100"}, 206, files["big.ts"][-100:]),
        ("GET", "/content/one.txt", {"Connection": "close"}, 200, files["one.txt"]),
    ]
    with raw_connect(served.host, served.port) as sock:
        sock.sendall(b"".join(raw_request(m, p, h) for m, p, h, _, _ in reqs))  # one write
        reader = RawReader(sock)
        for method, path, _h, status, body in reqs:
            r = reader.response(method)
            assert r.status == status, path
            if body is not None:
                assert r.body == body, path
        assert r.headers.get("connection") == "close"
        assert reader.at_eof()


def test_many_pipelined_requests_beyond_the_queue_limit(served):
    data = served.files["big.ts"]
    offsets = [i * 65_537 for i in range(100)]  # max_pipelined is 32: reading pauses and resumes
    with raw_connect(served.host, served.port) as sock:
        sock.sendall(b"".join(raw_request("GET", f"/content/big.ts/range/{o}-{o + 999}") for o in offsets))
        reader = RawReader(sock)
        for o in offsets:
            r = reader.response()
            assert r.status == 200 and r.body == data[o : o + 1000], o


def test_pipelined_requests_around_an_asynchronous_answer(served):
    # A changed generation makes /inventory build its answer in a thread;
    # the requests queued behind it must still be answered in order.
    files = served.files
    cid = f"pipe-{served.loop}.bin"
    ingest(served.cfg, cid, b"pipelined")
    try:
        reqs = [
            ("GET", "/content/mid.mp4", {}),
            ("GET", "/inventory", {}),
            ("GET", "/content/mid.mp4/range/0-9", {}),
            ("GET", "/inventory", {}),
            ("GET", f"/content/{cid}", {}),
            ("GET", "/content/one.txt", {}),
        ]
        with raw_connect(served.host, served.port) as sock:
            sock.sendall(b"".join(raw_request(m, p, h) for m, p, h in reqs))
            reader = RawReader(sock)
            got = [reader.response(m) for m, _p, _h in reqs]
        assert [r.status for r in got] == [200] * 6
        assert got[0].body == files["mid.mp4"] and got[2].body == files["mid.mp4"][:10]
        assert cid in json.loads(got[1].body)["ids"] and json.loads(got[3].body) == json.loads(got[1].body)
        assert got[4].body == b"pipelined" and got[5].body == files["one.txt"]
    finally:
        admin(served.cfg, "rm", cid, check=True)


def test_http_1_0_client_gets_its_answer_and_a_close(served):
    with raw_connect(served.host, served.port) as sock:
        sock.sendall(b"GET /content/mid.mp4 HTTP/1.0\r\n\r\n")
        reader = RawReader(sock)
        r = reader.response()
        assert r.status == 200 and r.body == served.files["mid.mp4"]
        assert r.headers["connection"] == "close"
        assert reader.at_eof()


def test_ipv6_listener(served):
    data = served.files["mid.mp4"]
    r = curl(f"{served.base6}/content/mid.mp4")
    assert r.status == 200 and r.body == data
    r = curl(f"{served.base6}/content/big.ts", "-r", "100-199,-10")
    assert r.status == 206
    assert [(s, e, b) for _t, s, e, _n, b in parse_multipart(r)] == [
        (100, 199, served.files["big.ts"][100:200]), (BIG - 10, BIG - 1, served.files["big.ts"][-10:])]


# ---------------------------------------------------------------- moving files, both loops


def _on_fresh_connections(served: Served, path: str, n: int = 8) -> list[int]:
    return [served.get(path).status for _ in range(n)]


def test_ingested_file_is_served_at_once_and_removed_file_404s_at_once(served):
    data = random.Random(7).randbytes(300_000)
    cid = f"fresh-{served.loop}.mp4"
    assert _on_fresh_connections(served, f"/content/{cid}", 2) == [404, 404]
    ingest(served.cfg, cid, data)
    # No waiting: every worker sees the new index entry on the next request.
    for _ in range(8):
        r = served.get(f"/content/{cid}")
        assert r.status == 200 and r.body == data
    r = curl(f"{served.base}/content/{cid}", "-r", "1000-1999")
    assert r.status == 206 and r.body == data[1000:2000]
    admin(served.cfg, "rm", cid, check=True)
    assert _on_fresh_connections(served, f"/content/{cid}") == [404] * 8


def test_file_removed_while_being_sent_finishes_sending(served):
    data = random.Random(8).randbytes(BIG)
    cid = f"moving-{served.loop}.ts"
    ingest(served.cfg, cid, data)
    dl = SlowDownload(served.host, served.port, f"/content/{cid}")
    try:
        assert dl.status == 200 and dl.length == len(data)
        dl.read_some(256 * 1024)
        dl.assert_in_flight()
        paths = list(served.cfg.parent.glob(f"store*/objects/*/*/{cid}@*"))
        assert len(paths) == 1
        admin(served.cfg, "rm", cid, check=True)
        assert not paths[0].exists()
        assert served.get(f"/content/{cid}").status == 404
        assert dl.read_rest() == data
    finally:
        dl.close()


# ---------------------------------------------------------------- control endpoints, both loops


def test_health_drain_and_undrain(served):
    r = served.get("/health")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    doc = json.loads(r.body)
    assert doc["status"] == "ok" and doc["conditions"] == []
    assert doc["appliance"] == "oca-test-1" and doc["site"] == "site-a"
    assert [s["state"] for s in doc["stores"]] == ["ok", "ok"]
    assert isinstance(doc["generation"], int) and "load" in doc
    try:
        admin(served.cfg, "drain", check=True)
        t0 = time.monotonic()
        doc = wait_for(lambda: (d := json.loads(served.get("/health").body))["status"] == "draining" and d, 2, "/health to say draining")
        assert time.monotonic() - t0 <= 2
        assert {"status": "draining", "reason": "drained by operator"} in doc["conditions"]
        # Still serving content while draining.
        r = served.get("/content/mid.mp4")
        assert r.status == 200 and r.body == served.files["mid.mp4"]
        assert all(json.loads(served.get("/health").body)["status"] == "draining" for _ in range(4))  # every worker
    finally:
        admin(served.cfg, "undrain", check=True)
    doc = wait_for(lambda: (d := json.loads(served.get("/health").body))["status"] == "ok" and d, 2, "/health to say ok again")
    assert doc["conditions"] == []


def test_inventory_full_unchanged_and_delta(served):
    r = served.get("/inventory")
    assert r.status == 200
    doc = json.loads(r.body)
    assert doc["kind"] == "full" and doc["appliance"] == "oca-test-1"
    assert set(SIZES) <= set(doc["ids"]) and doc["count"] == len(doc["ids"])
    gen = doc["generation"]
    assert json.loads(served.get(f"/inventory?since={gen}").body) == {
        "appliance": "oca-test-1", "generation": gen, "since": gen, "kind": "unchanged"}
    cid = f"inv-{served.loop}.bin"
    ingest(served.cfg, cid, b"inventory test")
    delta = json.loads(served.get(f"/inventory?since={gen}").body)
    assert delta["kind"] == "delta" and delta["added"] == [cid] and delta["removed"] == []
    assert delta["generation"] > gen
    full = json.loads(served.get("/inventory").body)
    assert cid in full["ids"] and full["generation"] == delta["generation"]
    admin(served.cfg, "rm", cid, check=True)
    gone_delta = json.loads(served.get(f"/inventory?since={delta['generation']}").body)
    assert gone_delta["kind"] == "delta" and gone_delta["removed"] == [cid] and gone_delta["added"] == []
    # Added then removed since `gen`: no net change to report for it.
    net = json.loads(served.get(f"/inventory?since={gen}").body)
    assert net["kind"] == "delta" and cid not in net["added"]
    assert served.get("/inventory?since=abc").status == 400



def test_inventory_packed_form_reads_as_the_json_form(served):
    """`?form=packed` (what steering asks for) says the same as the JSON form; a bad form is 400."""
    from steering.messages import parse_inventory, parse_inventory_answer

    plain = served.get("/inventory")
    packed = served.get("/inventory?form=packed")
    assert packed.status == 200 and packed.headers["content-type"] == "application/x-oca-inventory+zlib"
    full = parse_inventory(plain.body, 0)
    assert parse_inventory_answer(packed.body, packed.headers["content-type"], 0, 10**8) == full
    gen = full.generation
    cid = f"packed-{served.loop}.bin"
    ingest(served.cfg, cid, b"packed inventory test")
    delta = served.get(f"/inventory?since={gen}&form=packed")
    msg = parse_inventory_answer(delta.body, delta.headers["content-type"], gen, 10**8)
    assert msg.kind == "delta" and msg.added == frozenset({cid}) and msg.removed == frozenset()
    same = served.get(f"/inventory?since={msg.generation}&form=packed")
    assert parse_inventory_answer(same.body, same.headers["content-type"], msg.generation, 10**8).kind == "unchanged"
    admin(served.cfg, "rm", cid, check=True)
    assert served.get("/inventory?form=xml").status == 400


def parse_inventory_generation(served) -> int:
    return json.loads(served.get("/inventory?since=0").body)["generation"]


def test_inventory_hashed_form_lists_the_hashes_of_the_ids(served):
    """`?form=hashed` (what a fleet's steering asks for): a full answer is the sorted hashes of the JSON form's ids."""
    import xxhash

    from steering.messages import parse_inventory, parse_inventory_answer

    full = parse_inventory(served.get("/inventory").body, 0)
    hashed = served.get("/inventory?form=hashed")
    assert hashed.status == 200 and hashed.headers["content-type"] == "application/x-oca-inventory-hashed"
    msg = parse_inventory_answer(hashed.body, hashed.headers["content-type"], 0, 10**8)
    assert msg.generation == full.generation
    assert msg.hashes.tolist() == sorted(xxhash.xxh3_64_intdigest(c.encode()) for c in full.ids)
    cid = f"hashed-{served.loop}.bin"
    ingest(served.cfg, cid, b"hashed inventory test")
    delta = served.get(f"/inventory?since={full.generation}&form=hashed")
    d = parse_inventory_answer(delta.body, delta.headers["content-type"], full.generation, 10**8)
    assert d.kind == "delta" and d.added == frozenset({cid})
    admin(served.cfg, "rm", cid, check=True)


def test_fleet_simulator_health_has_the_fields_steering_reads(served):
    """benchmarks/fleet.py's /health is a subset of the real one, and steering reads both alike."""
    from benchmarks.fleet import health_body
    from steering.messages import parse_health

    real = json.loads(served.get("/health").body)
    sim = json.loads(health_body("a00001", "s00001", "ok", 3, 2))
    assert set(sim) <= set(real) and set(sim["load"]) <= set(real["load"])
    assert parse_health(health_body("a00001", "s00001", "draining")).status == "draining"
    # The generations that let a fleet's poller skip /inventory and /routes when neither changed.
    h = parse_health(served.get("/health").body)
    assert h.inventory_generation == parse_inventory_generation(served) and h.routes_generation is not None


def test_health_and_metrics_say_which_hot_path_serves(served):
    """The compiled head parser serves unless OCA_PURE=1 (CI's pure pass): a build that failed shows here."""
    from oca.http.speedups import PURE_ENV

    expected = "pure" if os.environ.get(PURE_ENV, "") not in ("", "0") else "compiled"
    doc = json.loads(served.get("/health").body)
    assert doc["hot_path"]["kind"] == expected, doc["hot_path"]
    assert (expected == "pure") == doc["hot_path"]["reason"].startswith(PURE_ENV)
    families = {f.name: f for f in text_string_to_metric_families(served.get("/metrics").body.decode())}
    assert [s.labels["kind"] for s in families["oca_hot_path_info"].samples] == [expected]

# ================================================================ sendfile, proven with strace


class TracedServer(ServerProcess):
    """An oca-server whose whole process tree runs under `strace -ff -y`."""

    SYSCALLS = "sendfile,read,pread64,readv,preadv,preadv2,mmap"

    def __init__(self, config: Path, host: str, port: int, trace_dir: Path):
        super().__init__(config, host, port)
        self.trace_dir = trace_dir

    def start(self) -> "TracedServer":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["strace", "-f", "-ff", "-y", "--seccomp-bpf", "-e", f"trace={self.SYSCALLS}", "-o", str(self.trace_dir / "trace"),
             sys.executable, "-m", "oca.server.main", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        try:
            wait_port(self.host, self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"server did not start: {self.log_text()[-2000:]}")
        return self

    @property
    def server_pid(self) -> int | None:
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children() if self.proc.poll() is None else []
        return children[0].pid if children else None

    def worker_pids(self) -> list[int]:
        pid = self.server_pid
        return [] if pid is None else [c.pid for c in psutil.Process(pid).children()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        # strace blocks fatal signals while it runs a program (-I3): signal
        # the traced oca-server parent; strace exits when its tracees have.
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            pid = self.server_pid
            if pid is not None:
                os.kill(pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in psutil.Process(self.proc.pid).children(recursive=True):
                    p.kill()
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


_FD_PATH = re.compile(r"(\d+)<(/[^<>]*)>")
_RESULT = re.compile(r"\) += (-?\d+)")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_bodies_leave_by_sendfile_and_are_never_read(tmp_path, files, loop):
    cfg, host, port = make_appliance(tmp_path, {"big.ts": files["big.ts"], "mid.mp4": files["mid.mp4"]}, event_loop=loop, workers=2)
    objects = {p.name.split("@")[0]: os.path.realpath(p) for p in tmp_path.glob("store*/objects/*/*/*@*@*")}
    assert set(objects) == {"big.ts", "mid.mp4"}
    trace_dir = tmp_path / "strace"
    trace_dir.mkdir()
    big, mid = files["big.ts"], files["mid.mp4"]
    expected_from = collections.Counter()  # content file -> body bytes the clients asked for
    with TracedServer(cfg, host, port, trace_dir) as srv:
        wait_for(lambda: "with 2/2 workers" in srv.log_text(), 60, "workers under strace")
        worker_pids = srv.worker_pids()
        r = curl(f"{srv.base}/content/big.ts")
        assert r.status == 200 and r.body == big
        expected_from["big.ts"] += len(big)
        r = curl(f"{srv.base}/content/big.ts", "-r", "1000-1048575")
        assert r.status == 206 and r.body == big[1000:1_048_576]
        expected_from["big.ts"] += 1_047_576
        r = curl(f"{srv.base}/content/big.ts", "-r", "0-99,5000000-5999999")
        assert r.status == 206 and [b for *_, b in parse_multipart(r)] == [big[:100], big[5_000_000:6_000_000]]
        expected_from["big.ts"] += 100 + 1_000_000
        r = curl(f"{srv.base}/content/big.ts/range/7000000-99999999")
        assert r.status == 200 and r.body == big[7_000_000:]
        expected_from["big.ts"] += BIG - 7_000_000
        for _ in range(3):
            r = curl(f"{srv.base}/content/mid.mp4")
            assert r.status == 200 and r.body == mid
            expected_from["mid.mp4"] += len(mid)
        assert srv.stop() == 0
    sent_from = collections.Counter()
    sendfile_calls = collections.Counter()
    sendfile_pids = set()
    reads_of_content = []
    config_reads = 0  # the workers read their config: shows that reads and their paths are decoded
    config_path = os.path.realpath(cfg)
    for trace in trace_dir.glob("trace.*"):
        pid = int(trace.suffix[1:])
        for line in trace.read_text(errors="replace").splitlines():
            name = line.split("(", 1)[0]
            paths = dict((int(fd), path) for fd, path in _FD_PATH.findall(line))
            if name == "read" and config_path in paths.values() and int(pid) in worker_pids:
                config_reads += 1
            hits = [cid for cid, obj in objects.items() if obj in paths.values()]
            if not hits:
                continue
            result = _RESULT.search(line)
            if name == "sendfile":
                sendfile_calls[hits[0]] += 1
                sendfile_pids.add(pid)
                if result and int(result.group(1)) > 0:
                    sent_from[hits[0]] += int(result.group(1))
            else:
                reads_of_content.append(line)
    # Every body byte came out of the content files through sendfile, in the workers...
    assert sent_from == expected_from, (sent_from, expected_from)
    assert sendfile_pids and sendfile_pids <= set(worker_pids)
    assert sendfile_calls["big.ts"] >= 4 and sendfile_calls["mid.mp4"] >= 3
    # ...and no process read or mapped a content file (not even one byte),
    # although the same trace does show the workers reading other files.
    assert config_reads >= len(worker_pids)
    assert reads_of_content == []


# ================================================================ signed URLs, control allow-list, Cache-Control


@pytest.fixture(scope="module")
def signed(tmp_path_factory, files) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("signed")
    cfg, host, port = make_appliance(
        tmp, {"mid.mp4": files["mid.mp4"], "one.txt": files["one.txt"]}, workers=2, extra=SIGNING,
        extra_server=f'cache_control = "public, max-age=3600"\ncontrol_allow = ["10.0.0.0/8"]\ncontrol_token = "{CONTROL_TOKEN}"\n',
    )
    with ServerProcess(cfg, host, port) as srv:
        pids = wait_serving(srv, 2)
        yield Served("uvloop", srv, cfg, host, port, "", 0, files, pids)


def _sign(served: Served, content_id: str, ttl_s: int = 300) -> str:
    out = admin(served.cfg, "sign", content_id, "--ttl", str(ttl_s), check=True).stdout
    path = out.strip().splitlines()[-1]
    assert path.startswith(f"/content/{content_id}?") and "t=" in path
    return path


def test_signed_url_from_oca_admin_is_served(signed):
    data = signed.files["mid.mp4"]
    path = _sign(signed, "mid.mp4")
    r = curl(signed.base + path)
    assert r.status == 200 and r.body == data
    assert r.headers["cache-control"] == "public, max-age=3600"  # the configured value
    assert r.headers["etag"] == etag_of(data)


def test_one_signed_url_serves_every_range(signed):
    data = signed.files["mid.mp4"]
    path = _sign(signed, "mid.mp4")
    query = path.split("?", 1)[1]
    r = curl(signed.base + path, "-r", "100-199")
    assert r.status == 206 and r.body == data[100:200]
    r = curl(signed.base + path, "-r", "-10")
    assert r.status == 206 and r.body == data[-10:]
    r = curl(signed.base + path, "-r", "0-9,500-")
    assert r.status == 206 and [b for *_, b in parse_multipart(r)] == [data[:10], data[500:]]
    r = curl(f"{signed.base}/content/mid.mp4/range/1000-1999?{query}")
    assert r.status == 200 and r.body == data[1000:2000]
    r = signed.get(path, method="HEAD")
    assert r.status == 200 and r.body == b"" and int(r.headers["content-length"]) == len(data)
    r = signed.get(path, {"If-None-Match": etag_of(data)})
    assert r.status == 304 and r.headers["cache-control"] == "public, max-age=3600"


def _tamper_token(path: str) -> str:
    """The same path with one character of the token changed."""
    token = re.search(r"t=([A-Za-z0-9_-]+)", path).group(1)
    other = "A" if token[10] != "A" else "B"
    return path.replace(f"t={token}", f"t={token[:10]}{other}{token[11:]}")


def test_bad_signatures_get_403_with_a_one_line_reason(signed):
    good = _sign(signed, "mid.mp4")
    e = int(re.search(r"e=(\d+)", good).group(1))
    cases = [
        "/content/mid.mp4",  # unsigned
        _tamper_token(good),
        good.replace(f"e={e}", f"e={e + 1}"),  # expiry changed
        good.replace("/content/mid.mp4", "/content/one.txt"),  # token of another id
        good.replace("k=k1", "k=k2"),  # unknown key
        good.replace(f"e={e}", f"e=0{e}"),  # another spelling of the same expiry
        good.replace("/content/mid.mp4", "/content/mid.mp4/range/0-9", 1).replace("t=", "t=x", 1),
    ]
    for path in cases:
        r = curl(signed.base + path, "-r", "0-9")
        assert r.status == 403, path
        assert r.headers["cache-control"] == "no-store"
        assert r.body.count(b"\n") == 1 and r.body.endswith(b"\n") and len(r.body) > 1
    assert curl(signed.base + "/content/mid.mp4").body == b"missing token\n"


def test_expired_signature_gets_410(signed):
    secret = SECRET.encode()
    path = "/content/mid.mp4?" + sign_query("mid.mp4", int(time.time()) - 600, "k1", secret)
    r = curl(signed.base + path)
    assert r.status == 410
    assert r.headers["cache-control"] == "no-store"
    assert re.fullmatch(rb"expired \d+ s ago\n", r.body), r.body
    r = curl(f"{signed.base}/content/mid.mp4/range/0-9?" + path.split("?", 1)[1])
    assert r.status == 410


def test_control_token_is_required_even_from_loopback_but_content_is_served(signed):
    """Defect 8: with `control_token` set, control endpoints need the bearer token from every caller."""
    for path in ("/health", "/metrics", "/inventory", "/routes"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": CONTROL_TOKEN},
                        {"Authorization": f"Basic {CONTROL_TOKEN}"}):
            r = signed.get(path, headers)
            assert r.status == 403, (path, headers)
            assert r.headers["cache-control"] == "no-store"
            assert r.body == b"control endpoints need a valid bearer token\n"
        r = signed.get(path, {"Authorization": f"Bearer {CONTROL_TOKEN}"})
        assert r.status == 200, path
    r = signed.get(_sign(signed, "one.txt"))
    assert r.status == 200 and r.body == signed.files["one.txt"]


# ================================================================ metrics and the access log


COMBINED = re.compile(r'(\S+) - - \[([^\]]+)\] "(\S+) (\S+) HTTP/1\.1" (\d{3}) (\d+) "([^"]*)" "([^"]*)"')


def _log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_metrics_sum_across_workers_and_access_log_has_every_request(tmp_path, files):
    log_path = tmp_path / "access.log"
    cfg, host, port = make_appliance(tmp_path, {"mid.mp4": files["mid.mp4"], "big.ts": files["big.ts"]}, workers=2,
                                     extra_server=f'access_log = "{log_path}"\n')
    made: list[tuple[str, str, int, int, str]] = []  # (method, target, status, body bytes, user agent)
    conns: list[http.client.HTTPConnection] = []

    def do(conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        made.append((method, target, resp.status, len(body), (headers or {}).get("User-Agent", "-")))
        return body

    with running(cfg, host, port) as srv:
        pids = srv.worker_pids()
        owners = collections.Counter()
        try:
            # New connections until both workers hold some of ours.
            deadline = time.monotonic() + 20
            while len(owners) < 2 or len(conns) < 4:
                assert time.monotonic() < deadline and len(conns) < 200, f"connections all went to {owners}"
                conn = http.client.HTTPConnection(host, port, timeout=IO_TIMEOUT_S)
                conn.connect()
                conns.append(conn)
                owners[owner_of(conn.sock, pids, port)] += 1
                do(conn, "GET", "/content/mid.mp4")
            for i in range(30):
                conn = conns[i % len(conns)]
                do(conn, "GET", "/content/mid.mp4", {"User-Agent": "oca-test/1", "Referer": "http://ref.example/"})
                do(conn, "GET", "/content/big.ts", {"Range": f"bytes={i * 1000}-{i * 1000 + 4095}"})
                do(conn, "HEAD", "/content/big.ts")
                do(conn, "GET", "/content/mid.mp4/range/0-99")
                if i % 5 == 0:
                    do(conn, "GET", "/content/missing.bin")
                    do(conn, "GET", "/content/mid.mp4", {"If-None-Match": etag_of(files["mid.mp4"])})
            do(conns[0], "GET", "/content/big.ts")
        finally:
            for conn in conns:
                conn.close()

        by_class = collections.Counter(f"{status // 100}xx" for _m, _t, status, _b, _a in made)
        assert by_class["2xx"] > 100 and by_class["3xx"] and by_class["4xx"]
        # Scrape through each worker: both must report the whole appliance.
        scraped_by: dict[int, dict] = {}
        deadline = time.monotonic() + 20
        while len(scraped_by) < 2:
            assert time.monotonic() < deadline, f"could not reach both workers: {list(scraped_by)}"
            conn = http.client.HTTPConnection(host, port, timeout=IO_TIMEOUT_S)
            try:
                conn.connect()
                pid = owner_of(conn.sock, pids, port)
                if pid in scraped_by:
                    continue
                # Counters move right after each response is sent; allow a moment.
                for _ in range(50):
                    body = do(conn, "GET", "/metrics")
                    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
                    before = made[:-1]  # this scrape is counted after it is sent
                    want = collections.Counter(f"{status // 100}xx" for _m, _t, status, _b, _a in before)
                    if samples[("oca_http_requests_total", (("class", "2xx"),))] == want["2xx"]:
                        break
                    time.sleep(0.02)
                scraped_by[pid] = samples
                for cls in ("2xx", "3xx", "4xx", "5xx"):
                    assert samples[("oca_http_requests_total", (("class", cls),))] == want[cls], cls
                assert samples[("oca_http_sent_bytes_total", ())] == sum(b for _m, _t, _s, b, _a in before)
                codes = collections.Counter(status for _m, _t, status, _b, _a in before)
                for code in (200, 206, 304, 404):
                    assert samples[("oca_http_responses_by_code_total", (("code", str(code)),))] == codes[code], code
                assert samples[("oca_http_response_seconds_count", ())] == len(before)
                assert samples[("oca_http_connections_total", ())] >= len(conns)
                assert samples[("oca_worker_restarts_total", ())] == 0
            finally:
                conn.close()
        assert set(scraped_by) == set(pids)

        # The access log: one combined-format line per request, after the 1 s flush.
        lines = wait_for(lambda: len(ls := _log_lines(log_path)) >= len(made) and ls, 5, "the access log to be flushed")
        assert len(lines) == len(made)
        logged = collections.Counter()
        for line in lines:
            m = COMBINED.fullmatch(line)
            assert m, line
            peer, stamp, method, target, status, size, referer, agent = m.groups()
            assert peer == "127.0.0.1"
            time.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z")
            if agent == "oca-test/1":
                assert referer == "http://ref.example/"
            logged[(method, target, int(status), int(size), agent)] += 1
        assert logged == collections.Counter(made)


def test_sigusr1_reopens_the_access_log(tmp_path, files):
    log_path = tmp_path / "access.log"
    cfg, host, port = make_appliance(tmp_path, {"one.txt": files["one.txt"]}, workers=2, extra_server=f'access_log = "{log_path}"\n')
    with running(cfg, host, port) as srv:
        pids = srv.worker_pids()
        for _ in range(3):
            assert request(host, port, "/content/one.txt?before").status == 200
        wait_for(lambda: len(_log_lines(log_path)) == 3, 5, "3 lines in the access log")
        rotated = tmp_path / "access.log.1"
        log_path.rename(rotated)

        def open_logs(pid: int) -> set[str]:
            return {f.path for f in psutil.Process(pid).open_files() if "access.log" in f.path}

        assert all(open_logs(pid) == {str(rotated)} for pid in pids)  # still writing to the renamed file
        os.kill(srv.proc.pid, signal.SIGUSR1)
        wait_for(lambda: all(open_logs(pid) == {str(log_path)} for pid in pids), 5, "every worker to reopen the log")
        for _ in range(5):
            assert request(host, port, "/content/one.txt?after").status == 200
        wait_for(lambda: len(_log_lines(log_path)) == 5, 5, "5 lines in the new access log")
        assert all('"GET /content/one.txt?after HTTP/1.1" 200 1 ' in line for line in _log_lines(log_path))
        old = _log_lines(rotated)
        assert len(old) == 3 and all("?before" in line for line in old)


# ================================================================ signals and lifecycle


def test_sigterm_lets_the_response_in_flight_finish_then_exits_zero(tmp_path, files):
    data = files["big.ts"]
    cfg, host, port = make_appliance(tmp_path, {"big.ts": data}, workers=2)
    with running(cfg, host, port) as srv:
        pids = srv.worker_pids()
        dl = SlowDownload(host, port, "/content/big.ts")
        try:
            dl.read_some(256 * 1024)
            srv.proc.send_signal(signal.SIGTERM)
            # The idle worker goes; the busy one waits for its client.
            wait_for(lambda: len(srv.worker_pids()) == 1, 10, "the idle worker to exit")
            time.sleep(0.5)
            assert srv.proc.poll() is None, "the parent exited with a response in flight"
            assert dl.read_rest() == data
        finally:
            dl.close()
        assert srv.proc.wait(IO_TIMEOUT_S) == 0
        wait_for(lambda: gone(pids), 5, "every worker to be gone")
        assert "stopped" in srv.log_text()


def test_drain_survives_a_restart(tmp_path, files):
    cfg, host, port = make_appliance(tmp_path, {"one.txt": files["one.txt"]}, workers=1)
    with running(cfg, host, port, workers=1):
        admin(cfg, "drain", check=True)
        assert json.loads(request(host, port, "/health").body)["status"] == "draining"
    with running(cfg, host, port, workers=1):
        doc = json.loads(request(host, port, "/health").body)
        assert doc["status"] == "draining"
        assert [c["status"] for c in doc["conditions"]] == ["draining"]
        assert request(host, port, "/content/one.txt").status == 200
        admin(cfg, "undrain", check=True)
        assert json.loads(request(host, port, "/health").body)["status"] == "ok"


def test_sighup_reloads_config_replaces_every_worker_and_keeps_downloads(tmp_path, files):
    data = files["big.ts"]
    cfg, host, port = make_appliance(tmp_path, {"big.ts": data, "mid.mp4": files["mid.mp4"]}, workers=2)
    with running(cfg, host, port) as srv:
        old = srv.worker_pids()
        assert request(host, port, "/content/mid.mp4").headers["cache-control"] == "no-store"
        dl = SlowDownload(host, port, "/content/big.ts")
        try:
            dl.read_some(256 * 1024)
            dl.assert_in_flight()
            cfg.write_text(cfg.read_text().replace("[index]", 'cache_control = "public, max-age=600"\n[index]', 1))
            srv.proc.send_signal(signal.SIGHUP)
            # Reload done: two new workers, and no old worker still accepting.
            wait_for(lambda: len(set(srv.worker_pids()) - set(old)) == 2 and not listening_pids(old, port), 30,
                     "the new workers to take over")
            for _ in range(8):
                r = request(host, port, "/content/mid.mp4")
                assert r.status == 200 and r.body == files["mid.mp4"]
                assert r.headers["cache-control"] == "public, max-age=600"
            assert request(host, port, "/content/nope").headers["cache-control"] == "no-store"
            assert dl.read_rest() == data  # sent by an old worker across the reload
        finally:
            dl.close()
        new = wait_for(lambda: len(p := srv.worker_pids()) == 2 and not set(p) & set(old) and p, 15,
                       "the old workers to exit")
        assert gone(old) and len(set(new)) == 2
        assert "reloading" in srv.log_text()


def test_sighup_with_an_invalid_config_keeps_serving(tmp_path, files):
    cfg, host, port = make_appliance(tmp_path, {"mid.mp4": files["mid.mp4"]}, workers=2)
    with running(cfg, host, port) as srv:
        pids = srv.worker_pids()
        good = cfg.read_text()
        for broken in ("this is [not toml\n", good.replace('event_loop = "uvloop"', 'event_loop = "twisted"')):
            cfg.write_text(broken)
            refusals = srv.log_text().count("reload refused")
            srv.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: srv.log_text().count("reload refused") > refusals, 10, "the reload to be refused")
            assert sorted(srv.worker_pids()) == sorted(pids)
            for _ in range(4):
                r = request(host, port, "/content/mid.mp4")
                assert r.status == 200 and r.body == files["mid.mp4"]
        cfg.write_text(good)


def test_a_killed_worker_is_replaced_and_serving_continues(tmp_path, files):
    cfg, host, port = make_appliance(tmp_path, {"mid.mp4": files["mid.mp4"]}, workers=2)
    with running(cfg, host, port) as srv:
        pids = srv.worker_pids()
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: len(p := srv.worker_pids()) == 2 and victim not in p and p, 10, "a replacement worker")
        assert pids[1] in new
        assert "died with status -9; restarting" in srv.log_text()
        for _ in range(10):
            r = request(host, port, "/content/mid.mp4")
            assert r.status == 200 and r.body == files["mid.mp4"]
        # The replacement is serving, not just alive: reach it.
        owners = set()
        deadline = time.monotonic() + 20
        while set(new) - owners:
            assert time.monotonic() < deadline, f"the replacement never accepted a connection ({owners})"
            with socket.create_connection((host, port), timeout=IO_TIMEOUT_S) as sock:
                owner = owner_of(sock, new, port)
                sock.sendall(raw_request("GET", "/content/mid.mp4", {"Connection": "close"}))
                assert RawReader(sock).response().body == files["mid.mp4"]
                owners.add(owner)
        # ...and it stays up: one death in the log, the one we caused.
        assert srv.log_text().count("died with status") == 1
        assert sorted(srv.worker_pids()) == sorted(new)
        metrics = request(host, port, "/metrics").body.decode()
        restarts = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples if s.name == "oca_worker_restarts_total"]
        assert restarts == [1]


def test_two_appliances_side_by_side_agree_on_etag_and_last_modified(tmp_path, files):
    data = files["mid.mp4"]
    cfg_a, host_a, port_a = make_appliance(tmp_path / "a", {"mid.mp4": data}, workers=2, appliance_id="oca-a", stores=2,
                                           extra_server='cache_control = "max-age=60"\n')
    cfg_b, host_b, port_b = make_appliance(tmp_path / "b", {"mid.mp4": data}, workers=1, appliance_id="oca-b", stores=1,
                                           event_loop="asyncio")
    assert port_a != port_b
    with running(cfg_a, host_a, port_a) as a, running(cfg_b, host_b, port_b, workers=1) as b:
        assert a.proc.poll() is None and b.proc.poll() is None
        ra = request(host_a, port_a, "/content/mid.mp4")
        rb = request(host_b, port_b, "/content/mid.mp4")
        assert ra.status == rb.status == 200 and ra.body == rb.body == data
        assert ra.headers["etag"] == rb.headers["etag"] == etag_of(data)
        assert ra.headers["last-modified"] == rb.headers["last-modified"] == http_date(MTIME)
        assert ra.headers["cache-control"] == "max-age=60" and rb.headers["cache-control"] == "no-store"
        assert json.loads(request(host_a, port_a, "/health").body)["appliance"] == "oca-a"
        assert json.loads(request(host_b, port_b, "/health").body)["appliance"] == "oca-b"
        # A validator from one appliance is honoured by the other.
        assert request(host_b, port_b, "/content/mid.mp4", {"If-None-Match": ra.headers["etag"]}).status == 304
        r = request(host_a, port_a, "/content/mid.mp4", {"Range": "bytes=0-9", "If-Range": rb.headers["etag"]})
        assert r.status == 206 and r.body == data[:10]
