"""The HTTP server under faults and abuse: a real `oca-server` on loopback.

Every test talks to real processes over real sockets; nothing is mocked.
Most tests share one module-scoped server (2 workers, uvloop) configured
with short timeouts (header 3 s, send 2 s, keep-alive 75 s), so the last
test can check that, after all the abuse, the workers hold no more
descriptors than when they started. Tests that kill a worker, need other
timeouts or a FUSE store start a server of their own.

What must hold after every fault: the workers did not crash (same pids,
except where a test kills one on purpose), `/health` answers, no byte that
reaches a client is wrong (a transfer may be cut short, never corrupted),
and nothing leaks (descriptors, orphaned sockets).

Every loop has a count and a deadline. Figures (latencies, RSS) are
printed; run with `-s` (or `-rP`) to see them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oca.config import load_config
from oca.store.content import ContentStore
from tests.server_proc import ServerProcess, appliance, free_port
from tests.support import needs_root, write_config

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
MiB = 1 << 20
SEED = 20240612
HEADER_TIMEOUT_S = 3.0
SEND_TIMEOUT_S = 2.0
SWEEP_S = 1.0  # the worker's sweep period: deadlines are checked once a second
LINGER_S = 2.0  # oca.http.protocol.LINGER_S
FD_CACHE_SIZE = 1000
MODULE_SERVER = (
    f"header_timeout_s = {HEADER_TIMEOUT_S}\n"
    f"send_timeout_s = {SEND_TIMEOUT_S}\n"
    "keepalive_timeout_s = 75\n"
    f"fd_cache_size = {FD_CACHE_SIZE}\n"
)
TCP_ESTABLISHED = 1
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10

root_only = needs_root("FUSE mounts (and dropping the page cache) need root")


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- HTTP on raw sockets


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_one(buf: bytes | bytearray, head_only: bool = False) -> tuple[Resp, int] | None:
    """One complete response at the start of `buf` and its length, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    total = end + 4 + length
    if len(buf) < total:
        return None
    return Resp(status, headers, bytes(buf[end + 4 : total])), total


def request(port: int, raw: bytes, *, head_only: bool = False, timeout: float = 15.0) -> Resp:
    """Send `raw` on a new connection and return the first response."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(raw)
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = parse_one(buf, head_only)
            if got is not None:
                return got[0]
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"closed after {len(buf)} bytes: {bytes(buf[:200])!r}")
            buf += chunk
        raise TimeoutError(f"no complete response within {timeout} s")


def get(port: int, path: str, headers: str = "") -> Resp:
    return request(port, f"GET {path} HTTP/1.1\r\nHost: oca\r\n{headers}Connection: close\r\n\r\n".encode())


def metrics(port: int) -> dict[str, float]:
    resp = get(port, "/metrics")
    assert resp.status == 200
    out: dict[str, float] = {}
    for line in resp.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def health(port: int) -> tuple[int, dict]:
    resp = get(port, "/health")
    return resp.status, json.loads(resp.body)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


class AConn:
    """An asyncio client connection with a response parser (keep-alive, pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int, local: str | None = None, ssl=None) -> "AConn":
        # ssl: a client SSLContext, for the same exchanges over HTTPS (tests/integration/test_server_tls.py).
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(local, 0) if local else None, limit=1 << 22,
                                                       ssl=ssl, server_hostname="localhost" if ssl is not None else None)
        return cls(reader, writer)

    async def response(self, head_only: bool = False) -> Resp:
        while True:
            got = parse_one(self.buf, head_only)
            if got is not None:
                resp, used = got
                del self.buf[:used]
                return resp
            chunk = await self.reader.read(1 << 20)
            if not chunk:
                raise ConnectionError(f"EOF after {len(self.buf)} bytes of a response")
            self.buf += chunk

    async def exchange(self, raw: bytes, timeout: float = 15.0) -> Resp:
        self.writer.write(raw)
        return await asyncio.wait_for(self.response(), timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def aget(port: int, path: str, timeout: float = 15.0) -> tuple[Resp, float]:
    """GET on a new connection; returns the response and its latency."""
    t0 = time.monotonic()
    conn = await AConn.open(port)
    try:
        resp = await conn.exchange(f"GET {path} HTTP/1.1\r\nHost: oca\r\nConnection: close\r\n\r\n".encode(), timeout)
    finally:
        await conn.close()
    return resp, time.monotonic() - t0


# ---------------------------------------------------------------- processes, descriptors, sockets


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_workers(srv: ServerProcess, n: int, timeout: float = 20.0) -> list[int]:
    """The worker pids once the parent says all `n` started (each signalled it was ready)."""

    def ready():
        pids = srv.worker_pids()
        return sorted(pids) if len(pids) == n and f"with {n}/{n} workers" in srv.log_text() else None

    return wait_for(ready, timeout, what=f"{n} workers ready")


@dataclass
class Census:
    sockets: int
    store_files: list[str]
    other: int

    def __str__(self) -> str:
        return f"{self.sockets} sockets, {len(self.store_files)} store files, {self.other} other"


def fd_census(pid: int, store_roots: list[str]) -> Census:
    sockets = other = 0
    store_files = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:"):
            sockets += 1
        elif any(target.startswith(r.rstrip("/") + "/") for r in store_roots):
            store_files.append(target)
        else:
            other += 1
    return Census(sockets, store_files, other)


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def tcp_table() -> list[tuple[int, int, int, int, int]]:
    """(state, local port, remote port, send queue bytes, inode) of every IPv4 TCP socket."""
    out = []
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            lport = int(f[1].split(":")[1], 16)
            rport = int(f[2].split(":")[1], 16)
            txq = int(f[4].split(":")[0], 16)
            out.append((int(f[3], 16), lport, rport, txq, int(f[9])))
    return out


def server_side_conns(port: int) -> list[tuple[int, int, int, int, int]]:
    """Server-side sockets of `port` other than the listener and TIME-WAIT (which hold nothing)."""
    return [e for e in tcp_table() if e[1] == port and e[0] not in (TCP_LISTEN, TCP_TIME_WAIT)]


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


# ---------------------------------------------------------------- the shared server


@dataclass
class Srv:
    proc: ServerProcess
    port: int
    files: dict[str, bytes]
    pids: list[int]
    store_roots: list[str]
    baseline: dict[int, Census] = field(default_factory=dict)

    def census(self) -> dict[int, Census]:
        return {pid: fd_census(pid, self.store_roots) for pid in self.pids}


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Srv:
    nofile = raise_nofile()  # inherited by the server, whose parent raises its own to the hard limit
    tmp = tmp_path_factory.mktemp("server-faults")
    files = {"small.bin": payload(1024, 1), "mid.bin": payload(MiB, 2), "big.bin": payload(64 * MiB, 3)}
    cfg, host, port = appliance(tmp, files=files, extra_server=MODULE_SERVER)
    for name in files:
        (tmp / f"src-{name}").unlink()
    store_roots = [str(tmp / "store0"), str(tmp / "store1")]
    with ServerProcess(cfg, host, port) as proc:
        pids = wait_workers(proc, 2)
        assert get(port, "/health").status == 200
        wait_for(lambda: not server_side_conns(port), 10, 0.1, "the warm-up connection closed (lingering close)")
        s = Srv(proc, port, files, pids, store_roots)
        s.baseline = s.census()
        print(f"\nmodule server: port {port}, workers {pids}, open-files limit {nofile}, baseline fds "
              + "; ".join(f"{p}: {c}" for p, c in s.baseline.items()))
        yield s
        assert proc.proc.poll() is None, "the server parent died"


def assert_workers_alive(s: Srv) -> None:
    assert sorted(s.proc.worker_pids()) == s.pids, "a worker was restarted: it crashed"
    status, doc = health(s.port)
    assert status == 200 and doc["status"] == "ok", doc


# ---------------------------------------------------------------- 1. slowloris


@dataclass
class Slow:
    first_byte: float = 0.0
    bytes_sent: int = 0
    status: int | None = None
    answered: float | None = None
    closed: float | None = None
    error: str = ""


async def _slowloris(port: int, head: bytes, rec: Slow, started: list, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    conn = await AConn.open(port)
    try:
        conn.writer.write(head[:1])
        rec.first_byte = loop.time()
        rec.bytes_sent = 1
        started.append(rec)
        read = asyncio.ensure_future(conn.reader.read(65536))
        while True:
            done, _ = await asyncio.wait({read}, timeout=1.0)
            if done:
                break
            if loop.time() > rec.first_byte + limit_s:
                read.cancel()
                rec.error = "never closed"
                return
            if rec.bytes_sent < len(head):  # a byte a second, never the end of the head
                conn.writer.write(head[rec.bytes_sent : rec.bytes_sent + 1])
                rec.bytes_sent += 1
        try:
            data = read.result()
        except ConnectionResetError:
            data = b""
        now = loop.time()
        if data:
            rec.answered = now
            rec.status = int(data.split(b" ", 2)[1])
            try:
                await asyncio.wait_for(conn.reader.read(), LINGER_S + 3)  # the rest, then EOF
            except ConnectionResetError:
                pass
            rec.closed = loop.time()
        else:
            rec.closed = now
    except asyncio.TimeoutError:
        rec.error = "answered but not closed"
    finally:
        await conn.close()


async def _slowloris_attack(s: Srv, n: int) -> tuple[list[Slow], list[tuple[Resp, float]], float, float]:
    """n slowloris connections, and 50 normal GETs while they all hang on."""
    loop = asyncio.get_running_loop()
    head = b"GET /content/small.bin HTTP/1.1\r\nHost: oca\r\nUser-Agent: slowloris\r\nX-Padding: " + b"x" * 200
    recs = [Slow() for _ in range(n)]
    started: list[Slow] = []
    tasks = [asyncio.ensure_future(_slowloris(s.port, head, r, started, HEADER_TIMEOUT_S + 8)) for r in recs]
    deadline = loop.time() + 20
    while len(started) < n and loop.time() < deadline and not any(t.done() and t.exception() for t in tasks):
        await asyncio.sleep(0.05)
    assert len(started) == n, f"only {len(started)} of {n} slowloris connections got going"
    # The gauge is refreshed by each worker's once-a-second sweep: read it until it counts them all (bounded).
    gauge_deadline = loop.time() + SWEEP_S + 0.5
    while True:
        open_gauge = (await loop.run_in_executor(None, metrics, s.port))["oca_http_open_connections"]
        if open_gauge >= n or loop.time() >= gauge_deadline:
            break
        await asyncio.sleep(0.1)
    # Normal clients while all of them hang on: 50 parallel GETs of 1 MiB.
    normal = await asyncio.gather(*(aget(s.port, "/content/mid.bin") for _ in range(50)))
    normal_done = loop.time()
    await asyncio.gather(*tasks)
    return recs, normal, normal_done, open_gauge


def test_slowloris_1000_connections_time_out_while_others_are_served(srv: Srv) -> None:
    n = 1000

    async def quiet():  # the same 50 GETs without an attack, for comparison
        return await asyncio.gather(*(aget(srv.port, "/content/mid.bin") for _ in range(50)))

    base = sorted(t for _, t in asyncio.run(quiet()))
    before = metrics(srv.port)
    t0 = time.monotonic()
    recs, normal, normal_done, open_gauge = asyncio.run(_slowloris_attack(srv, n))
    after = metrics(srv.port)

    # Normal requests went through, fast and intact, while the 1,000 hung on.
    lat = sorted(t for _, t in normal)
    assert all(r.status == 200 and r.body == srv.files["mid.bin"] for r, _ in normal)
    first_close = min(r.closed for r in recs if r.closed is not None)
    print(f"\nslowloris: {n} connections; 50 parallel 1 MiB GETs meanwhile: p50 {lat[25] * 1000:.1f} ms, "
          f"max {lat[-1] * 1000:.1f} ms (without the attack: p50 {base[25] * 1000:.1f} ms, max {base[-1] * 1000:.1f} ms); "
          f"open-connections gauge during the attack {open_gauge:.0f}")
    assert lat[-1] < max(2.0, 4 * base[-1]), f"normal requests were slow under slowloris: max {lat[-1]:.3f} s"
    assert open_gauge >= n, "the slowloris connections were not all open at the same time"
    assert normal_done < first_close, "the normal requests were not served while all slowloris connections hung on"

    # Every slowloris connection was answered 408 (or just closed) around header_timeout_s.
    errors = [r.error for r in recs if r.error]
    assert not errors, Counter(errors)
    statuses = Counter(r.status for r in recs)
    assert set(statuses) <= {408, None}, statuses
    waits = sorted(r.closed - r.first_byte for r in recs)
    print(f"slowloris: statuses {dict(statuses)}; closed {waits[0]:.2f}..{waits[-1]:.2f} s after the first byte "
          f"(header_timeout_s {HEADER_TIMEOUT_S}); bytes sent per connection {min(r.bytes_sent for r in recs)}.."
          f"{max(r.bytes_sent for r in recs)}; test took {time.monotonic() - t0:.1f} s")
    assert waits[0] >= HEADER_TIMEOUT_S - 0.25, "closed before header_timeout_s"
    assert waits[-1] <= HEADER_TIMEOUT_S + SWEEP_S + 2.0, "not closed soon after header_timeout_s"
    key = 'oca_http_timeouts_total{kind="header"}'
    assert n <= after[key] - before[key] <= n + 5, (before[key], after[key])
    assert_workers_alive(srv)


# ---------------------------------------------------------------- 2. clients that stop reading


def test_clients_that_stop_reading_are_reset_after_send_timeout(srv: Srv) -> None:
    n = 6
    big = srv.files["big.bin"]
    before_fds = srv.census()
    before = metrics(srv.port)
    stalled = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # set before connect: a tiny window
        s.connect((HOST, srv.port))
        s.sendall(b"GET /content/big.bin HTTP/1.1\r\nHost: oca\r\n\r\n")
        stalled.append(s)
    t0 = time.monotonic()
    ports = {s.getsockname()[1] for s in stalled}
    try:
        # The server keeps serving others while they hang.
        for _ in range(10):
            r = get(srv.port, "/content/mid.bin")
            assert r.status == 200 and r.body == srv.files["mid.bin"]
        served_by = time.monotonic() - t0
        assert served_by < SEND_TIMEOUT_S, "normal requests took as long as the send timeout"
        # Within a few seconds, each stalled connection is reset (never read a byte: TCP state CLOSE).
        closed_at: dict[int, float] = {}
        deadline = t0 + SEND_TIMEOUT_S + SWEEP_S + 5
        while len(closed_at) < n and time.monotonic() < deadline:
            for i, s in enumerate(stalled):
                if i not in closed_at and tcp_state(s) == TCP_CLOSE:
                    closed_at[i] = time.monotonic() - t0
            time.sleep(0.05)
        assert len(closed_at) == n, f"only {len(closed_at)} of {n} stalled clients were cut off"
        # What they did receive is a correct prefix, and then a reset.
        for s in stalled:
            s.setblocking(False)
            buf = bytearray()
            outcome = "eof"
            while True:
                try:
                    chunk = s.recv(1 << 20)
                except BlockingIOError:
                    outcome = "blocked"
                    break
                except ConnectionResetError:
                    outcome = "reset"
                    break
                if not chunk:
                    break
                buf += chunk
            assert outcome in ("reset", "eof"), outcome
            got = parse_one(buf, head_only=True)
            assert got is not None and got[0].status == 200
            body = bytes(buf[got[1] :])
            assert 0 < len(body) < len(big) and body == big[: len(body)]
    finally:
        for s in stalled:
            s.close()
    times = sorted(closed_at.values())
    print(f"\nstalled readers: {n} reset {times[0]:.2f}..{times[-1]:.2f} s after their request "
          f"(send_timeout_s {SEND_TIMEOUT_S}); 10 normal 1 MiB GETs meanwhile took {served_by:.2f} s")
    assert times[0] >= SEND_TIMEOUT_S - 0.25
    assert times[-1] <= SEND_TIMEOUT_S + SWEEP_S + 3
    after = metrics(srv.port)
    key = 'oca_http_timeouts_total{kind="send"}'
    assert after[key] - before[key] == n
    # No orphaned server-side socket still holds the unsent megabytes (a plain
    # close() would leave them in FIN-WAIT-1 for minutes).
    leftovers = [e for e in server_side_conns(srv.port) if e[2] in ports]
    assert not leftovers, f"server-side sockets of the stalled clients remain: {leftovers}"
    # No descriptor leak: sockets and others back to where they were; the
    # only new descriptors a worker may hold are the files served here, in its fd cache.
    def settled():
        now = srv.census()
        return now if all(now[p].sockets <= before_fds[p].sockets and now[p].other == before_fds[p].other for p in srv.pids) else None

    now = wait_for(settled, 10, 0.2, "worker descriptors back to their count before the test")
    for pid in srv.pids:
        extra = set(now[pid].store_files) - set(before_fds[pid].store_files)
        assert len(now[pid].store_files) == len(set(now[pid].store_files)), now[pid].store_files
        assert all("/big.bin@" in p or "/mid.bin@" in p for p in extra), extra  # what this test served
    assert_workers_alive(srv)


# ---------------------------------------------------------------- 3. garbage, oversized heads, smuggling, fuzz

ANY4XX = "4xx"
CLOSE = "close"


def _ranges(count: int) -> str:
    return ",".join(f"{i}-{i}" for i in range(count))


HOSTILE: list[tuple[str, bytes, set]] = [
    ("random bytes", random.Random(SEED).randbytes(2048), {ANY4XX, CLOSE}),
    ("NULs", b"\x00" * 512, {400, CLOSE}),
    ("CRLFs only then garbage", b"\r\n" * 100 + b"\x01\x02", {400, CLOSE}),
    ("TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + random.Random(1).randbytes(150), {400, CLOSE}),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {ANY4XX, CLOSE}),
    ("invalid method", b"BREW /content/small.bin HTTP/1.1\r\nHost: oca\r\n\r\n", {400}),
    ("lowercase method", b"get /content/small.bin HTTP/1.1\r\nHost: oca\r\n\r\n", {400}),
    ("unsupported method", b"DELETE /content/small.bin HTTP/1.1\r\nHost: oca\r\nConnection: close\r\n\r\n", {405}),
    ("method with NUL", b"G\x00T /content/small.bin HTTP/1.1\r\n\r\n", {400}),
    ("bad version 9.9", b"GET /health HTTP/9.9\r\n\r\n", {400}),
    ("bad version 1.x", b"GET /health HTTP/1.x\r\n\r\n", {400}),
    ("bad version HTTPS", b"GET /health HTTPS/1.1\r\n\r\n", {400}),
    ("version trailing space", b"GET /health HTTP/1.1 \r\n\r\n", {400}),
    ("LF-only line endings", b"GET /content/small.bin HTTP/1.1\nHost: oca\n\n", {400}),
    ("CR-only line endings", b"GET /content/small.bin HTTP/1.1\rHost: oca\r\r", {400, CLOSE}),
    ("huge request line", b"GET /content/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: oca\r\n\r\n", {414}),
    ("huge query", b"GET /content/small.bin?" + b"q" * 9000 + b" HTTP/1.1\r\n\r\n", {414}),
    ("one header over max_header_bytes", b"GET /content/small.bin HTTP/1.1\r\nX-Big: " + b"v" * 17000 + b"\r\n\r\n", {431}),
    ("endless header, never terminated", b"GET /content/small.bin HTTP/1.1\r\nX-Big: " + b"v" * 100_000, {431}),
    ("too many headers", b"GET /content/small.bin HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", {431}),
    ("10,000 comma ranges (too big a header)", f"GET /content/small.bin HTTP/1.1\r\nRange: bytes={_ranges(10000)}\r\n\r\n".encode(), {431}),
    ("negative Content-Length", b"GET /content/small.bin HTTP/1.1\r\nContent-Length: -1\r\n\r\n", {400}),
    ("overflowing Content-Length", b"GET /content/small.bin HTTP/1.1\r\nContent-Length: 184467440737095516160\r\n\r\n", {400}),
    ("Content-Length with sign", b"POST /content/small.bin HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", {400}),
    ("two different Content-Lengths", b"POST /content/small.bin HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", {400}),
    ("body over 64 KiB", b"POST /content/small.bin HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"b" * 100000, {413}),
    ("chunk size overflow", b"GET /content/small.bin HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffffffff\r\n", {400}),
    ("bad chunk size", b"GET /content/small.bin HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", {400}),
    ("CL.TE smuggling", b"POST /content/small.bin HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", {400}),
    ("TE.CL smuggling", b"POST /content/small.bin HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", {400}),
    ("TE chunked, identity", b"POST /content/small.bin HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", {400}),
    ("TE xchunked", b"POST /content/small.bin HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", {400}),
    ("TE with space before colon", b"POST /content/small.bin HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", {400}),
    ("obs-fold header", b"GET /content/small.bin HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", {400}),
    ("header name not ASCII", b"GET /content/small.bin HTTP/1.1\r\n\xff\xfe: x\r\n\r\n", {400}),
    ("NUL in a header value", b"GET /content/small.bin HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", {400}),
    ("header without colon", b"GET /content/small.bin HTTP/1.1\r\nNoColonHere\r\n\r\n", {400}),
    ("absolute-form URI", b"GET http://evil.example/content/small.bin HTTP/1.1\r\nHost: oca\r\nConnection: close\r\n\r\n", {400}),
    ("authority-form CONNECT", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", {400}),
    ("asterisk-form GET", b"GET * HTTP/1.1\r\nHost: oca\r\nConnection: close\r\n\r\n", {400}),
    ("protocol upgrade", b"GET /health HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", {400}),
    ("id ..", b"GET /content/.. HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("id %2e%2e", b"GET /content/%2e%2e HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("path traversal", b"GET /content/../../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("%2F in id", b"GET /content/a%2Fb HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("encoded traversal", b"GET /content/..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("%00 in id", b"GET /content/small.bin%00.mp4 HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("raw UTF-8 in path", "GET /content/vidéo.mp4 HTTP/1.1\r\nConnection: close\r\n\r\n".encode(), {400}),
    ("latin-1 byte in path", b"GET /content/caf\xe9 HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("percent-encoded UTF-8 id", b"GET /content/vid%C3%A9o.mp4 HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("bad percent escape", b"GET /content/small%zz.bin HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("over-long id", b"GET /content/" + b"a" * 200 + b" HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("path range 10^30", b"GET /content/small.bin/range/0-1000000000000000000000000000000 HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
    ("path range reversed", b"GET /content/small.bin/range/9-1 HTTP/1.1\r\nConnection: close\r\n\r\n", {ANY4XX, 200}),
    ("Range start 10^30", b"GET /content/small.bin HTTP/1.1\r\nRange: bytes=1000000000000000000000000000000-\r\nConnection: close\r\n\r\n", {416}),
    ("Range suffix 10^30", b"GET /content/small.bin HTTP/1.1\r\nRange: bytes=-1000000000000000000000000000000\r\nConnection: close\r\n\r\n", {206}),
    ("Range end 10^30", b"GET /content/small.bin HTTP/1.1\r\nRange: bytes=0-1000000000000000000000000000000\r\nConnection: close\r\n\r\n", {206}),
    ("Range 5000-digit number", b"GET /content/small.bin HTTP/1.1\r\nRange: bytes=" + b"9" * 5000 + b"-\r\nConnection: close\r\n\r\n", {416}),
    ("1,500 comma ranges (fits the header limit)", f"GET /content/small.bin HTTP/1.1\r\nRange: bytes={_ranges(1500)}\r\nConnection: close\r\n\r\n".encode(), {200}),
    ("1,500 overlapping ranges", f"GET /content/small.bin HTTP/1.1\r\nRange: bytes={','.join(['0-1023'] * 1500)}\r\nConnection: close\r\n\r\n".encode(), {200}),
    ("Range of another unit", b"GET /content/small.bin HTTP/1.1\r\nRange: lines=1-2\r\nConnection: close\r\n\r\n", {200}),
    ("Range garbage", b"GET /content/small.bin HTTP/1.1\r\nRange: bytes=\xff\xfe-\x00\r\nConnection: close\r\n\r\n", {400, 200}),
    ("If-Modified-Since garbage", b"GET /content/small.bin HTTP/1.1\r\nIf-Modified-Since: " + b"9" * 300 + b"\r\nConnection: close\r\n\r\n", {200}),
    ("inventory since 10^30", b"GET /inventory?since=1000000000000000000000000000000 HTTP/1.1\r\nConnection: close\r\n\r\n", {400}),
]


def _check_hostile(name: str, raw: bytes, allowed: set, data: bytes, outcome: str, files: dict[str, bytes]) -> str:
    """The verdict on one hostile exchange: '' when allowed, else what was wrong."""
    got = parse_one(data, head_only=False)
    if got is None:
        if data:
            return f"{name}: an incomplete or unparsable answer {data[:120]!r} ({outcome})"
        return "" if CLOSE in allowed and outcome in ("eof", "reset") else f"{name}: no answer ({outcome})"
    resp, used = got
    status = resp.status
    if not (status in allowed or (ANY4XX in allowed and 400 <= status < 500)):
        return f"{name}: status {status}, expected {sorted(map(str, allowed))}"
    if status >= 400 and resp.headers.get("cache-control") != "no-store":
        return f"{name}: error without Cache-Control: no-store"
    small = files["small.bin"]
    if status == 200 and b"/content/small.bin" in raw and resp.body != small:
        return f"{name}: 200 with wrong bytes"
    if status == 206:
        first, _, rest = resp.headers["content-range"].removeprefix("bytes ").partition("-")
        if resp.body != small[int(first) : int(rest.partition("/")[0]) + 1]:
            return f"{name}: 206 with wrong bytes"
    rest = data[used:]
    if b"HTTP/1.1" in rest:
        return f"{name}: a second response followed (smuggled request?): {rest[:120]!r}"
    return ""


async def _hostile_exchange(port: int, raw: bytes, timeout: float, ssl=None) -> tuple[bytes, str]:
    """Send raw (without half-closing), read until EOF, reset or timeout (over TLS with `ssl`)."""
    conn = await AConn.open(port, ssl=ssl)
    data = bytearray()
    outcome = "eof"
    try:
        conn.writer.write(raw)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                outcome = "timeout"
                break
            # Stop at the first complete response when the connection stays open (keep-alive).
            got = parse_one(data)
            if got is not None and b"Connection: close" not in data[: got[1]]:
                try:
                    more = await asyncio.wait_for(conn.reader.read(65536), 0.5)
                except asyncio.TimeoutError:
                    outcome = "kept-alive"
                    break
            else:
                try:
                    more = await asyncio.wait_for(conn.reader.read(65536), left)
                except asyncio.TimeoutError:
                    outcome = "timeout"
                    break
            if not more:
                break
            data += more
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    finally:
        await conn.close()
    return bytes(data), outcome


def test_hostile_requests_get_4xx_or_close(srv: Srv) -> None:
    async def run():
        sem = asyncio.Semaphore(32)

        async def one(raw):
            async with sem:
                return await _hostile_exchange(srv.port, raw, HEADER_TIMEOUT_S + SWEEP_S + 4)

        return await asyncio.gather(*(one(raw) for _name, raw, _allowed in HOSTILE))

    before = metrics(srv.port)
    t0 = time.monotonic()
    results = asyncio.run(run())
    problems = []
    seen = {}
    for (name, raw, allowed), (data, outcome) in zip(HOSTILE, results):
        got = parse_one(data)
        seen[name] = (got[0].status if got else None, outcome)
        verdict = _check_hostile(name, raw, allowed, data, outcome, srv.files)
        if verdict:
            problems.append(verdict)
        if outcome == "timeout":
            problems.append(f"{name}: the connection hung")
    print(f"\nhostile inputs: {len(HOSTILE)} cases in {time.monotonic() - t0:.1f} s: "
          + ", ".join(f"{n}={st}/{o}" for n, (st, o) in seen.items()))
    assert not problems, "\n".join(problems)
    after = metrics(srv.port)
    assert after["oca_http_bad_requests_total"] > before["oca_http_bad_requests_total"]
    assert after['oca_http_requests_total{class="5xx"}'] == before['oca_http_requests_total{class="5xx"}']
    assert_workers_alive(srv)


def test_smuggling_and_pipelining_keep_framing(srv: Srv) -> None:
    """A chunked body on GET is read and discarded, never taken for a request;
    3,000 pipelined requests, arriving in reads that end mid-request, are all
    answered, in order (this found two bugs: a RecursionError after a few
    hundred, and a 431 whenever a read ended inside a request)."""
    small = srv.files["small.bin"]
    n = 3000
    fake = b"GET /content/smuggled HTTP/1.1\r\nHost: oca\r\n\r\n"
    chunked = (
        b"GET /content/small.bin HTTP/1.1\r\nHost: oca\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(fake) + fake + b"\r\n0\r\n\r\n"
        + b"GET /content/small.bin/range/0-9 HTTP/1.1\r\nHost: oca\r\nConnection: close\r\n\r\n"
    )

    async def run():
        conn = await AConn.open(srv.port)
        try:
            conn.writer.write(chunked)
            first = await asyncio.wait_for(conn.response(), 10)
            second = await asyncio.wait_for(conn.response(), 10)
            tail = await asyncio.wait_for(conn.reader.read(), 10)
        finally:
            await conn.close()
        conn = await AConn.open(srv.port)
        try:
            reqs = b"".join(b"GET /content/small.bin/range/%d-%d HTTP/1.1\r\nHost: oca\r\n\r\n" % (i % 1000, i % 1000 + 9)
                            for i in range(n))

            async def send():  # odd-sized writes, so reads end in the middle of requests
                for off in range(0, len(reqs), 30_001):
                    conn.writer.write(reqs[off : off + 30_001])
                    await conn.writer.drain()
                    await asyncio.sleep(0.005)

            sender = asyncio.ensure_future(send())
            pipelined = [await asyncio.wait_for(conn.response(), 10) for _ in range(n)]
            await sender
        finally:
            await conn.close()
        return first, second, tail, pipelined

    first, second, tail, pipelined = asyncio.run(run())
    assert first.status == 200 and first.body == small
    assert second.status == 200 and second.body == small[:10]
    assert tail == b"", f"a third response: the chunked body was taken for a request: {tail[:100]!r}"
    assert [r.status for r in pipelined] == [200] * len(pipelined)
    assert all(r.body == small[i % 1000 : i % 1000 + 10] for i, r in enumerate(pipelined))
    assert_workers_alive(srv)


def test_half_closed_client_gets_its_answer_then_a_close(srv: Srv) -> None:
    """A client that shuts its write side after the request (as the fuzz loop
    does) gets the whole answer and then EOF, also when the answer was still
    in flight at its FIN (an /inventory built in a thread, a 64 MiB transfer),
    instead of an idle keep-alive connection for keepalive_timeout_s (75 s)."""
    for path, expect in (("/inventory", None), ("/content/big.bin", srv.files["big.bin"]), ("/health", None)):
        with socket.create_connection((HOST, srv.port), timeout=10) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: oca\r\n\r\n".encode())
            s.shutdown(socket.SHUT_WR)
            buf = bytearray()
            while True:
                chunk = s.recv(1 << 20)  # a hang is a socket.timeout after 10 s
                if not chunk:
                    break
                buf += chunk
        got = parse_one(buf)
        assert got is not None and got[0].status == 200 and got[1] == len(buf), path
        assert expect is None or got[0].body == expect


CORPUS = [
    b"GET /content/small.bin HTTP/1.1\r\nHost: oca\r\nRange: bytes=0-99\r\n\r\n",
    b"HEAD /content/mid.bin HTTP/1.1\r\nHost: oca\r\nIf-None-Match: \"abc\"\r\n\r\n",
    b"GET /content/small.bin/range/0-10 HTTP/1.1\r\nHost: oca\r\nUser-Agent: fuzz\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: oca\r\nConnection: close\r\n\r\n",
    b"GET /content/mid.bin HTTP/1.1\r\nRange: bytes=0-0,5-9,-3\r\nIf-Range: \"abc\"\r\n\r\n",
    b"OPTIONS /content/small.bin HTTP/1.1\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    b"POST /content/small.bin HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /content/small.bin HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /inventory?since=3 HTTP/1.1\r\nHost: oca\r\n\r\n",
    b"GET /content/small.bin?e=1&k=a&t=zz HTTP/1.0\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
    b"GET /content/small.bin HTTP/1.1\r\nRange: bytes=10-20\r\n\r\nGET /content/mid.bin/range/5-9 HTTP/1.1\r\n\r\n",
]
INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b":", b"%", b"%00", b"\xff", b"9" * 25, b",", b"-", b"/", b"..", b"\t",
               b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"HTTP/1.1", b"-1"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1) if b else 0
        if op == 0 and b:  # flip one byte
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        elif op == 1:  # insert something interesting
            b[pos:pos] = rng.choice(INTERESTING)
        elif op == 2:  # insert random bytes
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and b:  # delete a slice
            del b[pos : pos + rng.randint(1, 8)]
        elif op == 4 and b:  # duplicate a slice
            end = min(len(b), pos + rng.randint(1, 32))
            b[end:end] = b[pos:end]
        elif op == 5:  # splice with another request
            other = rng.choice(CORPUS)
            cut = rng.randrange(len(other))
            b = b[:pos] + bytearray(other[cut:])
        elif op == 6 and len(b) > 4:  # truncate
            del b[rng.randrange(len(b)) :]
    return bytes(b)


async def _fuzz_one(port: int, raw: bytes, timeout: float) -> tuple[bytes, str]:
    conn = await AConn.open(port)
    data = bytearray()
    outcome = "eof"
    try:
        conn.writer.write(raw)
        await conn.writer.drain()
        conn.writer.write_eof()  # no more requests: every exchange must end by itself
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                outcome = "hang"
                break
            try:
                more = await asyncio.wait_for(conn.reader.read(1 << 20), left)
            except asyncio.TimeoutError:
                outcome = "hang"
                break
            if not more:
                break
            data += more
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    finally:
        await conn.close()
    return bytes(data), outcome


def test_seeded_random_fuzz(srv: Srv) -> None:
    count, budget_s = 2000, 60.0
    rng = random.Random(SEED)
    cases = [mutate(rng, rng.choice(CORPUS)) for _ in range(count)]
    before = metrics(srv.port)

    async def run():
        sem = asyncio.Semaphore(250)
        stop_at = time.monotonic() + budget_s

        async def one(raw):
            async with sem:
                if time.monotonic() > stop_at:
                    return None
                return await _fuzz_one(srv.port, raw, HEADER_TIMEOUT_S + SWEEP_S + LINGER_S + 3)

        return await asyncio.gather(*(one(raw) for raw in cases))

    t0 = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - t0
    done = [(raw, r) for raw, r in zip(cases, results) if r is not None]
    outcomes = Counter(r[1] for _, r in done)
    statuses: Counter = Counter()
    problems = []
    for raw, (data, outcome) in done:
        if outcome == "hang":
            problems.append(f"hang: {raw[:100]!r}")
        got = parse_one(data)
        statuses[got[0].status if got else None] += 1
        if b"HTTP/1.1 5" in data:
            problems.append(f"5xx: {raw[:100]!r} -> {data[:100]!r}")
    print(f"\nfuzz: {len(done)} of {count} mutated requests in {elapsed:.1f} s; outcomes {dict(outcomes)}; "
          f"first statuses {dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))}")
    assert not problems, "\n".join(problems[:20])
    assert len(done) >= min(count, 1000), "the fuzz loop ran out of time too early"
    after = metrics(srv.port)
    assert after['oca_http_requests_total{class="5xx"}'] == before['oca_http_requests_total{class="5xx"}']
    assert_workers_alive(srv)


# ---------------------------------------------------------------- 6. 10,000 idle keep-alive connections


def need_nofile(n: int) -> None:
    # The client holds n sockets; each worker holds two descriptors per
    # connection (the socket and the dup it writes through), about n in all.
    limit = raise_nofile()
    if limit < n + 2000:
        pytest.skip(f"open-files limit {limit} is too low for {n} client connections (hard limit: ulimit -Hn)")


def _local_addresses(n: int) -> list[str]:
    return [f"127.0.0.{2 + i}" for i in range(n)]


async def _open_idle(port: int, n: int, path: str, body: bytes, on_answer=None):
    """Open n keep-alive connections, one request each.

    Returns the connections, when each request was sent and answered (client
    clock), and the errors by kind. `on_answer(i, conn)` is called as soon as
    connection i has its answer.
    """
    loop = asyncio.get_running_loop()
    addrs = _local_addresses(10)
    sem = asyncio.Semaphore(500)
    raw = f"GET {path} HTTP/1.1\r\nHost: oca\r\n\r\n".encode()
    conns: list[AConn | None] = [None] * n
    answered = [0.0] * n
    sent = [0.0] * n

    async def one(i):
        async with sem:
            conn = await AConn.open(port, addrs[i % len(addrs)])
            conns[i] = conn
            sent[i] = loop.time()
            resp = await conn.exchange(raw, 30)
            assert resp.status == 200 and resp.body == body, resp.status
            answered[i] = loop.time()
            if on_answer is not None:
                on_answer(i, conn)

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = Counter(repr(r)[:120] for r in results if isinstance(r, BaseException))
    return conns, sent, answered, errors


async def _close_all(conns) -> None:
    for c in conns:
        if c is not None:
            c.writer.close()
    await asyncio.gather(*(c.writer.wait_closed() for c in conns if c is not None), return_exceptions=True)


def test_10000_idle_keepalive_connections_stay_open_and_small(srv: Srv) -> None:
    n, hold_s = 10_000, 10.0
    need_nofile(n)
    small = srv.files["small.bin"]
    raw2 = b"GET /content/small.bin/range/0-99 HTTP/1.1\r\nHost: oca\r\n\r\n"
    rss_before = {pid: vm_rss_kib(pid) for pid in srv.pids}

    async def run():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conns, _sent, _answered, errors = await _open_idle(srv.port, n, "/content/small.bin", small)
        opened_s = loop.time() - t0
        try:
            assert not errors, errors
            await asyncio.sleep(hold_s)
            closed = sum(1 for c in conns if c.reader.at_eof() or c.reader.exception() is not None or c.writer.is_closing())
            gauge = (await loop.run_in_executor(None, metrics, srv.port))["oca_http_open_connections"]
            rss = {pid: vm_rss_kib(pid) for pid in srv.pids}
            fds = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in srv.pids}
            sample = random.Random(SEED).sample(range(n), 200)
            t1 = loop.time()
            second = await asyncio.gather(*(conns[i].exchange(raw2, 30) for i in sample))
            second_s = loop.time() - t1
            return opened_s, closed, gauge, rss, fds, second, second_s
        finally:
            await _close_all(conns)

    opened_s, closed, gauge, rss, fds, second, second_s = asyncio.run(run())
    print(f"\n10k idle: opened and answered {n} in {opened_s:.1f} s; after {hold_s:.0f} s idle {n - closed} still open; "
          f"open-connections gauge {gauge:.0f}; worker RSS "
          + ", ".join(f"{p}: {rss_before[p] / 1024:.1f} -> {rss[p] / 1024:.1f} MiB ({fds[p]} fds)" for p in srv.pids)
          + f"; 200 second requests in {second_s * 1000:.0f} ms")
    assert closed == 0, f"{closed} idle connections were closed before keepalive_timeout_s"
    assert gauge >= n
    assert all(r.status == 200 and r.body == small[:100] for r in second)  # the path form answers 200
    for pid, kib in rss.items():
        assert kib < 150 * 1024, f"worker {pid} uses {kib / 1024:.1f} MiB with {n} idle connections"
    # The server notices the clients' close and lets go of them all.
    wait_for(lambda: not [e for e in server_side_conns(srv.port) if e[0] == TCP_ESTABLISHED], 15, 0.25,
             "server-side connections closed after the clients left")
    assert_workers_alive(srv)


def test_idle_keepalive_connections_are_swept_after_keepalive_timeout(tmp_path: Path) -> None:
    n, keepalive = 10_000, 3.0
    need_nofile(n)
    small = payload(1024, 1)
    cfg, host, port = appliance(tmp_path, files={"small.bin": small},
                                extra_server=f"keepalive_timeout_s = {keepalive}\nheader_timeout_s = 5\n")
    with ServerProcess(cfg, host, port) as proc:
        pids = wait_workers(proc, 2)

        async def run():
            loop = asyncio.get_running_loop()
            eof_at = [0.0] * n
            watchers = []

            async def watch(conn, i):
                try:
                    more = await conn.reader.read(1)
                except ConnectionResetError:
                    more = b""
                eof_at[i] = loop.time() if more == b"" else -1.0

            # Each connection is watched from its answer on: the EOF is timed as it comes.
            conns, sent, answered, errors = await _open_idle(
                port, n, "/content/small.bin", small, lambda i, conn: watchers.append(asyncio.ensure_future(watch(conn, i))))
            try:
                assert not errors, errors
                await asyncio.wait_for(asyncio.gather(*watchers), keepalive + SWEEP_S + 20)
                # The idle timer starts between the request being sent and the answer being read.
                return [e - s for e, s in zip(eof_at, sent)], [e - a for e, a in zip(eof_at, answered)], eof_at
            finally:
                await _close_all(conns)

        before = metrics(port)
        t0 = time.monotonic()
        since_sent, since_answer, eof_at = asyncio.run(run())
        after = metrics(port)
        assert min(eof_at) > 0, "a connection got data instead of being closed"
        print(f"\nkeep-alive sweep: {n} idle connections closed {min(since_sent):.2f}..{max(since_sent):.2f} s after "
              f"their request, {min(since_answer):.2f}..{max(since_answer):.2f} s after the client read the answer "
              f"(keepalive_timeout_s {keepalive}); test body {time.monotonic() - t0:.1f} s")
        assert min(since_sent) >= keepalive - 0.05, "closed before keepalive_timeout_s"
        assert max(since_answer) <= keepalive + SWEEP_S + 5, "not closed soon after keepalive_timeout_s"
        key = 'oca_http_timeouts_total{kind="idle"}'
        assert after[key] - before[key] >= n
        assert sorted(proc.worker_pids()) == pids


# ---------------------------------------------------------------- 5. kill -9 of a worker under load


def owner_of(port: int, client_port: int, pids: list[int]) -> int | None:
    """The worker holding the server side of the connection from `client_port`."""
    inodes = {e[4] for e in tcp_table() if e[1] == port and e[2] == client_port and e[0] == TCP_ESTABLISHED}
    for pid in pids:
        if inodes & socket_inodes(pid):
            return pid
    return None


def test_kill_9_of_a_worker_under_load(tmp_path: Path) -> None:
    data = payload(8 * MiB, 5)
    cfg, host, port = appliance(tmp_path, files={"load.bin": data})
    per_worker, duration_s, kill_at_s, chunk = 6, 5.0, 2.0, 65536
    with ServerProcess(cfg, host, port) as proc:
        pids = wait_workers(proc, 2)
        victim = pids[0]
        ok_at: list[tuple[int, float]] = []
        failures: list[tuple[int, float, str]] = []
        wrong: list[str] = []
        info: dict = {}

        def range_get(start: int) -> bytes:
            return f"GET /content/load.bin HTTP/1.1\r\nHost: oca\r\nRange: bytes={start}-{start + chunk - 1}\r\n\r\n".encode()

        async def spread() -> list[tuple[AConn, int]]:
            """Keep-alive connections, `per_worker` on each worker (the kernel picks; we keep or drop)."""
            held: dict[int, list[AConn]] = {pid: [] for pid in pids}
            attempts = 0
            deadline = time.monotonic() + 15
            while any(len(v) < per_worker for v in held.values()) and attempts < 1000 and time.monotonic() < deadline:
                batch = await asyncio.gather(*(AConn.open(port) for _ in range(8)))  # at once: both workers accept
                for conn in batch:
                    attempts += 1
                    resp = await conn.exchange(range_get(0), 5)
                    assert resp.status == 206
                    owner = owner_of(port, conn.writer.get_extra_info("sockname")[1], pids)
                    if owner is not None and len(held[owner]) < per_worker:
                        held[owner].append(conn)
                    else:
                        await conn.close()
            info["attempts"] = attempts
            assert all(len(v) == per_worker for v in held.values()), {p: len(v) for p, v in held.items()}
            return [(conn, pid) for pid in pids for conn in held[pid]]

        async def client(i: int, conn: AConn | None, end: float):
            loop = asyncio.get_running_loop()
            rng = random.Random(SEED + i)
            while loop.time() < end:
                try:
                    if conn is None:
                        conn = await AConn.open(port)
                    start = rng.randrange(0, len(data) - chunk)
                    resp = await conn.exchange(range_get(start), 5)
                    if resp.status != 206 or resp.body != data[start : start + chunk]:
                        wrong.append(f"client {i}: {resp.status}, {len(resp.body)} bytes")
                    ok_at.append((i, loop.time()))
                except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                    failures.append((i, loop.time(), repr(exc)[:100]))
                    if conn is not None:
                        await conn.close()
                    conn = None  # reconnect: the listening socket never went away
            if conn is not None:
                await conn.close()

        async def killer():
            loop = asyncio.get_running_loop()
            await asyncio.sleep(kill_at_s)
            info["failures_before"] = len(failures)
            info["killed_at"] = loop.time()
            os.kill(victim, signal.SIGKILL)
            info["new"] = await loop.run_in_executor(None, lambda: wait_for(
                lambda: [p for p in proc.worker_pids() if p not in pids] or None, 10, 0.05, "a replacement worker"))
            info["restarted_at"] = loop.time()

        async def run():
            held = await spread()
            info["owners"] = [pid for _conn, pid in held]
            end = asyncio.get_running_loop().time() + duration_s
            await asyncio.gather(killer(), *(client(i, conn, end) for i, (conn, _pid) in enumerate(held)))

        asyncio.run(run())
        on_victim = {i for i, pid in enumerate(info["owners"]) if pid == victim}
        survivors = set(range(len(info["owners"]))) - on_victim
        failed_clients = Counter(i for i, _, _ in failures)
        killed_at, restarted_at = info["killed_at"], info["restarted_at"]
        after_restart = [(i, t) for i, t in ok_at if t > restarted_at]
        print(f"\nkill -9: clients spread {per_worker} per worker in {info['attempts']} connection attempts; "
              f"{len(ok_at)} range GETs in {duration_s:.0f} s; killed worker {victim} holding clients {sorted(on_victim)}; "
              f"{len(failures)} failed requests, on clients {dict(failed_clients)}; replacement {info['new']} up "
              f"{restarted_at - killed_at:.2f} s after the kill; {len(after_restart)} requests after it")
        assert not wrong, wrong[:5]
        assert info["failures_before"] == 0
        assert set(failed_clients) <= on_victim, f"clients of the surviving worker failed: {failures}"
        assert all(c == 1 for c in failed_clients.values()), f"a client failed more than once: {failures}"
        assert all(killed_at <= t <= killed_at + 1.0 for _, t, _ in failures), failures
        assert restarted_at - killed_at < 5.0
        # Every client, on either worker, went on being served after the restart.
        assert {i for i, _ in after_restart} == on_victim | survivors, "a client stopped getting answers"
        new_pids = sorted(proc.worker_pids())
        assert len(new_pids) == 2 and victim not in new_pids and pids[1] in new_pids
        for _ in range(20):
            r = get(port, "/content/load.bin/range/0-99")
            assert r.status == 200 and r.body == data[:100]
        m = metrics(port)
        assert m["oca_worker_restarts_total"] == 1
        assert f"worker {victim} (slot 0) died with status -9; restarting" in proc.log_text()


# ---------------------------------------------------------------- 4. a store that returns EIO mid-transfer


@root_only
def test_store_returning_eio_mid_transfer(tmp_path: Path) -> None:
    from tests.fusefs import fuse_mount, set_mode

    big = payload(64 * MiB, 7)
    fuse_small, other_small = payload(4096, 8), payload(4096, 9)
    src, mnt, ctl, other = tmp_path / "fuse-src", tmp_path / "fuse-mnt", tmp_path / "control", tmp_path / "store1"
    src.mkdir()
    port = free_port(HOST)
    cfg = write_config(tmp_path, store_paths=[mnt, other], listen=[f"{HOST}:{port}"])
    cfg.write_text(cfg.read_text().replace("[index]", 'event_loop = "uvloop"\nworkers = 2\n[index]', 1))
    with fuse_mount(src, mnt, ctl):
        cs = ContentStore.open(load_config(str(cfg)), writable=True)
        try:
            disks = {d.path: d for d in cs.disks}
            assert all(d.working for d in cs.disks), [(d.path, d.reason) for d in cs.disks]
            for content_id, data, disk in (("big.bin", big, disks[str(mnt)]), ("fuse-small.bin", fuse_small, disks[str(mnt)]),
                                           ("other-small.bin", other_small, disks[str(other)])):
                ingest = cs.begin_ingest(content_id, len(data), disk=disk)
                for off in range(0, len(data), 4 * MiB):
                    ingest.write(data[off : off + 4 * MiB])
                ingest.commit(mtime_s=1_700_000_000)
        finally:
            cs.close()
        with ServerProcess(cfg, HOST, port) as proc:
            pids = wait_workers(proc, 2)
            assert get(port, "/content/fuse-small.bin").body == fuse_small
            subprocess.run(["sync"], check=False)
            with open("/proc/sys/vm/drop_caches", "w") as fh:  # nothing of big.bin may come from the page cache
                fh.write("3\n")
            before = metrics(port)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.settimeout(10)
            s.connect((HOST, port))
            s.sendall(b"GET /content/big.bin HTTP/1.1\r\nHost: oca\r\n\r\n")
            buf = bytearray()
            flipped_at = None
            outcome = "deadline"
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        outcome = "reset"
                        break
                    except socket.timeout:
                        outcome = "stalled"
                        break
                    if not chunk:
                        outcome = "eof"
                        break
                    buf += chunk
                    if flipped_at is None:
                        time.sleep(0.002)  # slowly: the server stays only its buffers ahead
                        if len(buf) >= 4 * MiB:
                            set_mode(ctl, "eio")
                            flipped_at = len(buf)
            finally:
                s.close()
            got = parse_one(buf, head_only=True)
            assert got is not None and got[0].status == 200 and int(got[0].headers["content-length"]) == len(big)
            body = bytes(buf[got[1] :])
            print(f"\nEIO mid-transfer: flipped to eio after {flipped_at} bytes; the client got {len(body)} of "
                  f"{len(big)} body bytes, then {outcome}")
            assert flipped_at is not None
            assert outcome in ("reset", "eof"), f"the transfer was not cut off ({outcome})"
            assert len(body) < len(big), "all bytes arrived although the store failed"
            assert body == big[: len(body)], "wrong bytes were sent"

            def failed():
                m = metrics(port)
                return m if m[f'oca_store_up{{store="{mnt}"}}'] == 0 else None

            m = wait_for(failed, 10, 0.2, "the FUSE store marked failed")
            assert m["oca_sendfile_errors_total"] - before["oca_sendfile_errors_total"] >= 1
            assert m[f'oca_store_up{{store="{other}"}}'] == 1
            status, doc = health(port)
            assert status == 200 and doc["status"] == "degraded", doc
            states = {st["path"]: st for st in doc["stores"]}
            assert states[str(mnt)]["state"] == "failed" and "Input/output error" in states[str(mnt)]["reason"], states
            assert states[str(other)]["state"] == "ok"
            # The other store keeps serving; the failed store's content is gone from lookups.
            for _ in range(10):
                r = get(port, "/content/other-small.bin")
                assert r.status == 200 and r.body == other_small
            assert get(port, "/content/fuse-small.bin").status == 404
            assert sorted(proc.worker_pids()) == pids, "a worker crashed"
            assert "Traceback" not in proc.log_text(), proc.log_text()[-3000:]
            set_mode(ctl, "")


# ---------------------------------------------------------------- 7. no descriptor leak after all of the above


def test_no_descriptor_leak_after_the_abuse(srv: Srv) -> None:
    """Runs last in this module: the shared server took every attack above."""
    limit = FD_CACHE_SIZE

    def settled():
        now = srv.census()
        ok = all(now[p].sockets == srv.baseline[p].sockets and now[p].other == srv.baseline[p].other for p in srv.pids)
        return now if ok else None

    now = wait_for(settled, 15, 0.25, "worker descriptors back to baseline")
    for pid in srv.pids:
        files = now[pid].store_files
        assert len(files) <= min(limit, len(srv.files)), files
        assert len(files) == len(set(files)), f"worker {pid} holds one file twice (a leaked retired entry): {files}"
    assert not server_side_conns(srv.port), server_side_conns(srv.port)
    print("\nfds after the abuse: " + "; ".join(f"{p}: {now[p]} (baseline {srv.baseline[p]})" for p in srv.pids))
    assert_workers_alive(srv)
