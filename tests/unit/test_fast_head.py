"""The compiled head parser against httptools: the same requests, or it declines.

`oca.http._head.parse_head` is a fast path in front of httptools (see
oca/http/speedups.py). For every input here, a connection with it and a
connection without it must queue the same requests (every field) and
answer the same bytes; and the plain heads players send must actually take
the fast path (else the fast path would be dead code that passes). Inputs:
a table of normal heads, a table of hostile ones (the fault tests' kinds:
bad methods, versions, line ends, framing, limits, smuggling), pipelined
runs, every split point of a run, and seeded random mutations.
"""

from __future__ import annotations

import random
import socket

import pytest

from oca.http import speedups
from oca.http.messages import Request, Response
from oca.http.protocol import HttpConnection, Limits

# Imported directly, not through speedups: these tests hold the compiled
# module to httptools under OCA_PURE=1 too (and fail if it is not built).
from oca.http._head import parse_head as COMPILED

LIMITS = dict(header_timeout_s=10.0, keepalive_timeout_s=75.0, send_timeout_s=60.0,
              max_request_line_bytes=256, max_header_bytes=512, max_headers=8, max_pipelined=64)


class Loop:
    def time(self) -> float:
        return 5.0

    def add_writer(self, fd, cb) -> None:
        raise AssertionError("a small answer never waits")

    def remove_writer(self, fd) -> None:
        pass


class Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    def get_extra_info(self, name: str):
        return {"peername": ("127.0.0.1", 1), "socket": self.sock}.get(name)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Recorder:
    """Answers every request with its fields, so the bytes on the wire show the whole request."""

    def handle(self, req: Request, conn) -> Response:
        body = repr((req.method, req.target, req.path, req.query, sorted(req.headers.items()), req.version,
                     req.keep_alive, req.error, req.started)).encode()
        close = not req.keep_alive
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close else b"")
        return Response(200, head, [body], len(body), close)

    def error_response(self, status: int, reason: str, close: bool) -> Response:
        body = reason.encode()
        return Response(status, b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)), [body], len(body), True)

    def finished(self, req, conn, resp, sent, complete) -> None:
        pass

    def file_failed(self, resp, exc) -> None:
        pass


class Pure(HttpConnection):
    __slots__ = ()
    fast_head = None


class Counting(HttpConnection):
    __slots__ = ()
    taken = [0]

    @staticmethod
    def fast_head(data, start, *limits):
        got = COMPILED(data, start, *limits)
        if got is not None:
            Counting.taken[0] += 1
        return got


def exchange(cls: type[HttpConnection], chunks: list[bytes]) -> tuple[bytes, int, bool]:
    """(bytes answered, bad-request count, closed) for `chunks` fed in order."""
    server, client = socket.socketpair()
    server.setblocking(False)
    client.setblocking(False)
    stats: list = []
    conn = cls(Recorder(), Limits(**LIMITS), set(), Loop(), lambda i, n: stats.append(i))  # type: ignore[arg-type]
    transport = Transport(server)
    try:
        conn.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            conn.data_received(chunk)
        out = b""
        while True:
            try:
                got = client.recv(1 << 20)
            except BlockingIOError:
                break
            if not got:
                break
            out += got
        return out, len(stats), transport.closed
    finally:
        conn.connection_lost(None)
        client.close()
        server.close()


def same_both_ways(chunks: list[bytes]) -> int:
    """Asserts both paths give the same; returns how many heads the fast path took."""
    before = Counting.taken[0]
    fast = exchange(Counting, chunks)
    pure = exchange(Pure, chunks)
    assert fast == pure, f"fast {fast!r}\npure {pure!r}\ninput {chunks!r}"
    return Counting.taken[0] - before


SIGNED = "/content/title-1080p.mp4?e=4102444800&k=k1&t=Zm9vYmFyYmF6cXV4LXF1dXgtZm9vYmFyYmF6cXV4LXE"
NORMAL = [
    ("player range", f"GET {SIGNED} HTTP/1.1\r\nHost: oca-1.example\r\nRange: bytes=0-65535\r\n"
     "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0\r\nAccept: */*\r\nReferer: https://p.example/w?v=1\r\n\r\n"),
    ("HEAD", "HEAD /content/a.bin HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("no fields", "GET /health HTTP/1.1\r\n\r\n"),
    ("HTTP/1.0 keep-alive", "GET /content/a.bin HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
    ("HTTP/1.1 keep-alive", "GET /content/a.bin HTTP/1.1\r\nconnection: keep-alive\r\n\r\n"),
    ("repeated field", "GET /a HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-a: three\r\n\r\n"),
    ("spaces before value", "GET /a HTTP/1.1\r\nX-A:    spaced  inside\r\n\r\n"),
    ("no space before value", "GET /a HTTP/1.1\r\nX-A:v\r\n\r\n"),
    ("token punctuation in name", "GET /a HTTP/1.1\r\nX!#$%&'*+-.^_`|~9: v\r\n\r\n"),
    ("percent-encoded path", "GET /content/a%20b.bin?x=%2F HTTP/1.1\r\n\r\n"),
    ("path form range", "GET /content/a.bin/range/0-99 HTTP/1.1\r\n\r\n"),
    ("pchar punctuation", "GET /a-._~!$&'()*+,;=:@/b?c=/?d HTTP/1.1\r\n\r\n"),
    ("empty query", "GET /a? HTTP/1.1\r\n\r\n"),
    ("two question marks", "GET /a?b?c HTTP/1.1\r\n\r\n"),
    ("root", "GET / HTTP/1.1\r\n\r\n"),
    ("at the limits", "GET /" + "u" * 255 + " HTTP/1.1\r\n" + "".join(f"X-{i}: {'v' * 55}\r\n" for i in range(8)) + "\r\n"),
]

HOSTILE = [
    # Plain, but the connection ends after them: llhttp refuses any byte that follows.
    ("HTTP/1.0", b"GET /content/a.bin HTTP/1.0\r\n\r\n"),
    ("HTTP/1.1 close", b"GET /content/a.bin HTTP/1.1\r\nConnection: close\r\n\r\n"),
    ("HTTP/1.1 CLOSE then more", b"GET /a HTTP/1.1\r\nCONNECTION: CLOSE\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
    ("random bytes", random.Random(7).randbytes(600)),
    ("NULs", b"\x00" * 64),
    ("CRLFs then garbage", b"\r\n" * 10 + b"\x01\x02"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("lowercase method", b"get /a HTTP/1.1\r\n\r\n"),
    ("other method", b"DELETE /a HTTP/1.1\r\n\r\n"),
    ("OPTIONS", b"OPTIONS * HTTP/1.1\r\n\r\n"),
    ("method with NUL", b"G\x00T /a HTTP/1.1\r\n\r\n"),
    ("two spaces after method", b"GET  /a HTTP/1.1\r\n\r\n"),
    ("version 9.9", b"GET /a HTTP/9.9\r\n\r\n"),
    ("version 1.x", b"GET /a HTTP/1.x\r\n\r\n"),
    ("version 1.2", b"GET /a HTTP/1.2\r\n\r\n"),
    ("version 2.0", b"GET /a HTTP/2.0\r\n\r\n"),
    ("HTTPS/1.1", b"GET /a HTTPS/1.1\r\n\r\n"),
    ("version trailing space", b"GET /a HTTP/1.1 \r\n\r\n"),
    ("no version", b"GET /a\r\n\r\n"),
    ("LF only", b"GET /a HTTP/1.1\nHost: x\n\n"),
    ("CR only", b"GET /a HTTP/1.1\rHost: x\r\r"),
    ("LF inside head", b"GET /a HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"),
    ("target too long", b"GET /" + b"u" * 256 + b" HTTP/1.1\r\n\r\n"),
    ("query too long", b"GET /a?" + b"q" * 300 + b" HTTP/1.1\r\n\r\n"),
    ("header bytes over", b"GET /a HTTP/1.1\r\nX-Big: " + b"v" * 600 + b"\r\n\r\n"),
    ("header bytes at +1", b"GET /a HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 55) for i in range(7)) + b"X-7: " + b"v" * 56 + b"\r\n\r\n"),
    ("too many headers", b"GET /a HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(9)) + b"\r\n"),
    ("Content-Length 0", b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
    ("Content-Length body", b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n"),
    ("negative Content-Length", b"GET /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
    ("chunked GET", b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
    ("smuggled in chunk", b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1c\r\nGET /s HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n"),
    ("TE with space before colon", b"GET /a HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("space before colon", b"GET /a HTTP/1.1\r\nHost : x\r\n\r\n"),
    ("obs-fold", b"GET /a HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n"),
    ("name not ASCII", b"GET /a HTTP/1.1\r\n\xff\xfe: x\r\n\r\n"),
    ("value not ASCII", b"GET /a HTTP/1.1\r\nX-A: caf\xe9\r\n\r\n"),
    ("NUL in value", b"GET /a HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"),
    ("tab in value", b"GET /a HTTP/1.1\r\nX-A: a\tb\r\n\r\n"),
    ("tab before value", b"GET /a HTTP/1.1\r\nX-A:\tb\r\n\r\n"),
    ("trailing space in value", b"GET /a HTTP/1.1\r\nX-A: b \r\n\r\n"),
    ("empty value", b"GET /a HTTP/1.1\r\nX-A:\r\n\r\n"),
    ("blank value", b"GET /a HTTP/1.1\r\nX-A:   \r\n\r\n"),
    ("no colon", b"GET /a HTTP/1.1\r\nNoColonHere\r\n\r\n"),
    ("empty name", b"GET /a HTTP/1.1\r\n: x\r\n\r\n"),
    ("absolute form", b"GET http://evil.example/a HTTP/1.1\r\n\r\n"),
    ("asterisk form", b"GET * HTTP/1.1\r\n\r\n"),
    ("fragment", b"GET /a#frag HTTP/1.1\r\n\r\n"),
    ("raw UTF-8 in path", "GET /vidéo HTTP/1.1\r\n\r\n".encode()),
    ("quote in path", b'GET /a"b HTTP/1.1\r\n\r\n'),
    ("backslash in path", b"GET /a\\b HTTP/1.1\r\n\r\n"),
    ("brace in path", b"GET /a{b} HTTP/1.1\r\n\r\n"),
    ("upgrade", b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    ("connection upgrade alone", b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\n\r\n"),
    ("connection list", b"GET /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"),
    ("two connection fields", b"GET /a HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"),
    ("proxy-connection close", b"GET /a HTTP/1.1\r\nProxy-Connection: close\r\n\r\n"),
    ("HTTP/1.0 connection close", b"GET /a HTTP/1.0\r\nConnection: close\r\n\r\n"),
    ("CR not followed by LF at end", b"GET /a HTTP/1.1\r\nX: y\r\n\rX"),
    ("incomplete head", b"GET /a HTTP/1.1\r\nHost: x\r\n"),
    ("incomplete line", b"GET /a HT"),
]


@pytest.mark.parametrize("name,text", NORMAL, ids=[n for n, _ in NORMAL])
def test_normal_heads_take_the_fast_path_and_give_the_same_request(name, text):
    assert same_both_ways([text.encode()]) == 1


@pytest.mark.parametrize("name,raw", HOSTILE, ids=[n for n, _ in HOSTILE])
def test_hostile_heads_give_the_same_answer(name, raw):
    same_both_ways([raw])
    same_both_ways([NORMAL[0][1].encode() + raw])  # behind a plain head in the same read


def test_pipelined_runs_split_at_every_byte_give_the_same_answers():
    run = b"".join(t.encode() for _, t in NORMAL[:6]) + b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + NORMAL[0][1].encode()
    assert same_both_ways([run]) == 6  # the chunked request and everything after it go to httptools
    for cut in range(1, len(run)):
        same_both_ways([run[:cut], run[cut:]])


def test_seeded_mutations_give_the_same_answers():
    rng = random.Random(16)
    alphabet = b"\x00\t\n\r :;?#%/\\\"'(),=@[]{}\x7f\x80\xff-_.~AaZz09"
    seeds = [t.encode() for _, t in NORMAL] + [raw for _, raw in HOSTILE]
    taken = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data) + 1)
            op = rng.randrange(3)
            if op == 0:
                data[i:i] = bytes([rng.choice(alphabet)])
            elif op == 1 and i < len(data):
                del data[i]
            elif i < len(data):
                data[i] = rng.choice(alphabet)
        taken += same_both_ways([bytes(data)])
    assert taken > 150, "many mutated heads stay plain (207 with this seed): the fast path is exercised"


def test_parse_head_declines_what_is_not_bytes_and_bad_offsets():
    head = NORMAL[1][1].encode()
    assert COMPILED(bytearray(head), 0, 256, 512, 8) is None
    assert COMPILED(memoryview(head), 0, 256, 512, 8) is None
    assert COMPILED(head, len(head) + 1, 256, 512, 8) is None
    assert COMPILED(head, -1, 256, 512, 8) is None
    assert COMPILED(head, len(head), 256, 512, 8) is None
    with pytest.raises(TypeError):
        COMPILED(head, 0, 256, 512)


def test_the_hot_path_is_chosen_from_the_environment():
    assert speedups.choose({"OCA_PURE": "1"}) == (None, None, "pure", "OCA_PURE=1")
    assert speedups.choose({"OCA_PURE": "yes"}).reason == "OCA_PURE=yes"
    assert speedups.choose({})[::2] == (COMPILED, "compiled")
    assert speedups.choose({"OCA_PURE": "0"}).kind == "compiled"


def test_a_request_taken_by_the_fast_path_has_every_field_set_as_httptools_sets_it():
    """The fast path skips Request.__init__: a field added to Request must be set there too."""
    seen: dict[str, list[dict]] = {"fast": [], "pure": []}

    class Fields(Recorder):
        def __init__(self, into: list) -> None:
            self.into = into

        def handle(self, req, conn):
            self.into.append({slot: getattr(req, slot) for slot in Request.__slots__ if slot != "started"})
            return super().handle(req, conn)

    head = b"GET /content/a.mp4?e=1&k=k1&t=x HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9\r\n\r\n"
    for name, cls in (("fast", Counting), ("pure", Pure)):
        server, client = socket.socketpair()
        conn = cls(Fields(seen[name]), Limits(**LIMITS), set(), Loop(), lambda i, n: None)  # type: ignore[arg-type]
        conn.connection_made(Transport(server))  # type: ignore[arg-type]
        before = Counting.taken[0]
        conn.data_received(head)
        conn.connection_lost(None)
        client.close()
        server.close()
        assert (Counting.taken[0] - before) == (1 if name == "fast" else 0)
    assert seen["fast"] == seen["pure"] and len(seen["fast"]) == 1
