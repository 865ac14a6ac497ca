"""`HttpConnection` driven without a server: a fake transport and a manual clock.

The transport is a stand-in (it records close, abort and pause); the bytes
go through one end of a real `socketpair`, because the connection writes
with `socket.send` and `os.sendfile` on the transport's descriptor, and the
test reads the other end. Time is a number the test moves (`ManualLoop.now`);
the sweep is the test calling `expire(now)`. No event loop runs.

Every test that takes the `rig` fixture runs twice: with the compiled head
parser (oca.http.speedups) and with httptools alone (the pure path).
"""

from __future__ import annotations

import os
import socket
from typing import Iterator

import pytest

from oca.http import speedups
from oca.http.messages import Request, Response
from oca.http.protocol import CLOSING, IDLE, LINGER_S, HttpConnection, Limits

HEADER_TIMEOUT_S = 10.0
KEEPALIVE_S = 75.0
SEND_TIMEOUT_S = 60.0


class ManualLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self.writers: dict[int, object] = {}

    def time(self) -> float:
        return self.now

    def add_writer(self, fd: int, callback) -> None:
        self.writers[fd] = callback

    def remove_writer(self, fd: int) -> None:
        self.writers.pop(fd, None)


class FakeTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self.aborted = False
        self.paused = False

    def get_extra_info(self, name: str):
        return {"peername": ("127.0.0.1", 40000), "socket": self.sock}.get(name)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class EchoHandler:
    """Answers every request with its path as the body (or `body_for[path]`)."""

    def __init__(self) -> None:
        self.body_for: dict[str, bytes] = {}
        self.file_for: dict[str, tuple[int, int, int]] = {}
        self.file_errors: list[OSError] = []
        self.seen: list[Request] = []
        self.finished_log: list[tuple[int, bool]] = []

    def handle(self, req: Request, conn) -> Response:
        self.seen.append(req)
        if req.path in self.file_for:  # a range of a real file: the head, then sendfile
            fd, offset, count = self.file_for[req.path]
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % count
            resp = Response(200, head, [(fd, offset, count)], count)
            resp.held = fd
            return resp
        body = self.body_for.get(req.path, req.path.encode())
        close = not req.keep_alive
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode()
        return Response(200, head, [body], len(body), close)

    def error_response(self, status: int, reason: str, close: bool, extra: bytes = b"") -> Response:
        body = (reason + "\n").encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        return Response(status, head, [body], len(body), True)

    def finished(self, req, conn, resp: Response | None, sent: int, complete: bool) -> None:
        self.finished_log.append((resp.status if resp is not None else 0, complete))

    def file_failed(self, resp: Response, exc: OSError) -> None:
        assert resp.held is not None  # only responses with a file body fail on the file side
        self.file_errors.append(exc)


class PureConnection(HttpConnection):
    __slots__ = ()
    fast_head = None


def compiled_head():
    """The compiled parser: an ImportError (a failed test) when it is not built."""
    from oca.http._head import parse_head
    return parse_head


class CompiledConnection(HttpConnection):
    __slots__ = ()


# Under OCA_PURE=1 (CI's pure pass) only the pure path runs, nothing is skipped.
HOT_PATHS = ("pure",) if speedups.HOT_PATH_REASON.startswith(speedups.PURE_ENV) else ("compiled", "pure")


def connection_class(hot_path: str) -> type[HttpConnection]:
    if hot_path == "pure":
        return PureConnection
    CompiledConnection.fast_head = compiled_head()
    return CompiledConnection


class Rig:
    def __init__(self, hot_path: str = "pure", **limits) -> None:
        self.server, self.client = socket.socketpair()
        self.server.setblocking(False)
        self.client.settimeout(2.0)
        self.loop = ManualLoop()
        self.handler = EchoHandler()
        self.transport = FakeTransport(self.server)
        lim = dict(header_timeout_s=HEADER_TIMEOUT_S, keepalive_timeout_s=KEEPALIVE_S, send_timeout_s=SEND_TIMEOUT_S,
                   max_request_line_bytes=1024, max_header_bytes=2048, max_headers=20, max_pipelined=4)
        lim.update(limits)
        self.registry: set = set()
        self.stats: list[tuple[int, int]] = []
        self.hot_path = hot_path
        self.conn = connection_class(hot_path)(self.handler, Limits(**lim), self.registry, self.loop,  # type: ignore[arg-type]
                                   lambda i, n: self.stats.append((i, n)))
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        self.conn.data_received(data)

    def responses(self, n: int) -> list[tuple[int, bytes]]:
        """Read `n` responses (status, body) from the client end."""
        buf = b""
        out = []
        while len(out) < n:
            while b"\r\n\r\n" not in buf:
                chunk = self.client.recv(65536)
                assert chunk, f"EOF after {len(out)} responses"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
            while len(buf) < length:
                buf += self.client.recv(65536)
            out.append((int(lines[0].split()[1]), buf[:length]))
            buf = buf[length:]
        return out

    def client_sees_eof(self) -> bool:
        try:
            return self.client.recv(1) == b""
        except (TimeoutError, BlockingIOError):
            return False

    def close(self) -> None:
        self.conn.connection_lost(None)  # what a real transport does after close/abort
        self.client.close()
        self.server.close()


@pytest.fixture(params=HOT_PATHS)
def rig(request) -> Iterator[Rig]:
    r = Rig(request.param)
    yield r
    r.close()


def req(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def test_pipelined_requests_are_answered_in_order(rig):
    rig.feed(req("/a") + req("/b") + req("/c"))
    assert rig.responses(3) == [(200, b"/a"), (200, b"/b"), (200, b"/c")]
    assert rig.conn.phase == IDLE and rig.conn.deadline == rig.loop.now + KEEPALIVE_S


def test_pipelining_beyond_the_queue_limit_pauses_reading_then_resumes(rig):
    # A handler that answers nothing yet would be async; here the queue fills inside one feed.
    rig.feed(b"".join(req(f"/{i}") for i in range(10)))
    assert rig.responses(10) == [(200, f"/{i}".encode()) for i in range(10)]
    assert not rig.transport.paused


def test_request_split_byte_by_byte_is_one_request(rig):
    for b in req("/slow"):
        rig.feed(bytes([b]))
    assert rig.responses(1) == [(200, b"/slow")]


def test_request_line_too_long_is_414_and_closes(rig):
    rig.feed(req("/" + "x" * 2000))
    assert rig.responses(1)[0][0] == 414
    assert rig.conn.phase == CLOSING and rig.client_sees_eof()


def test_too_many_headers_is_431(rig):
    rig.feed(req("/h", "".join(f"X-{i}: v\r\n" for i in range(30))))
    assert rig.responses(1)[0][0] == 431


def test_header_bytes_over_the_limit_is_431(rig):
    rig.feed(req("/h", "X-Big: " + "v" * 3000 + "\r\n"))
    assert rig.responses(1)[0][0] == 431


def test_slowloris_gets_408_at_the_header_deadline_then_is_closed_after_linger(rig):
    rig.feed(b"GET /slow HTTP/1.1\r\nHost: t\r\n")  # never finishes its head
    rig.loop.now += HEADER_TIMEOUT_S - 0.1
    assert rig.conn.expire(rig.loop.now) is None
    rig.loop.now += 0.2
    assert rig.conn.expire(rig.loop.now) == "header"
    assert rig.responses(1)[0][0] == 408
    assert not rig.transport.closed
    rig.loop.now += LINGER_S + 0.1
    assert rig.conn.expire(rig.loop.now) == "linger"
    assert rig.transport.closed


def test_a_connection_that_sends_nothing_is_closed_quietly_at_the_header_deadline(rig):
    rig.loop.now += HEADER_TIMEOUT_S + 0.1
    assert rig.conn.expire(rig.loop.now) == "header"
    assert rig.transport.closed


def test_idle_keepalive_connection_is_closed_at_keepalive_timeout(rig):
    rig.feed(req("/a"))
    rig.responses(1)
    rig.loop.now += KEEPALIVE_S - 1
    assert rig.conn.expire(rig.loop.now) is None
    rig.loop.now += 2
    assert rig.conn.expire(rig.loop.now) == "idle"
    assert rig.transport.closed


def test_idle_connection_drops_its_parser_at_the_sweep_and_serves_the_next_request(rig):
    rig.feed(req("/a"))
    assert rig.responses(1) == [(200, b"/a")]
    # The compiled path takes a plain head without making a parser at all.
    assert (rig.conn._parser is None) == (rig.hot_path == "compiled")
    rig.loop.now += 1
    assert rig.conn.expire(rig.loop.now) is None
    assert rig.conn._parser is None  # idle between requests: nothing to keep
    rig.feed(req("/b")[:7])  # a new parser; a head split over two chunks
    rig.loop.now += 1
    assert rig.conn.expire(rig.loop.now) is None
    assert rig.conn._parser is not None  # a head in progress keeps its parser
    rig.feed(req("/b")[7:])
    assert rig.responses(1) == [(200, b"/b")]


def test_a_partial_pipelined_head_keeps_the_parser_when_the_connection_goes_idle(rig):
    rig.feed(req("/a") + b"GET /b HT")
    assert rig.responses(1) == [(200, b"/a")]
    rig.loop.now += 1
    rig.conn.expire(rig.loop.now)
    assert rig.conn._parser is not None
    rig.feed(b"TP/1.1\r\nHost: t\r\n\r\n")
    assert rig.responses(1) == [(200, b"/b")]


def test_an_idle_connection_keeps_no_per_connection_dict():
    # __slots__: a subclass may add a __dict__, the plain connection has none.
    assert not hasattr(HttpConnection.__new__(HttpConnection), "__dict__")


def test_client_that_stops_reading_is_reset_at_the_send_timeout():
    rig = Rig()
    try:
        rig.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        rig.handler.body_for["/big"] = b"x" * (4 << 20)
        rig.feed(req("/big"))
        assert rig.loop.writers, "the response waits for the socket to drain"
        rig.loop.now += SEND_TIMEOUT_S - 1
        assert rig.conn.expire(rig.loop.now) is None
        rig.loop.now += 2
        assert rig.conn.expire(rig.loop.now) == "send"
        assert rig.transport.aborted and not rig.loop.writers
    finally:
        rig.close()


def test_response_with_close_lingers_then_closes(rig):
    rig.feed(req("/bye", "Connection: close\r\n"))
    assert rig.responses(1) == [(200, b"/bye")]
    assert rig.conn.phase == CLOSING and rig.client_sees_eof()  # write side shut at once
    assert not rig.transport.closed  # but input is drained for a moment
    rig.feed(b"late bytes are ignored")
    rig.loop.now += LINGER_S + 0.1
    assert rig.conn.expire(rig.loop.now) == "linger" and rig.transport.closed


def test_chunked_trailer_fields_never_become_request_headers(rig):
    rig.feed(b"GET /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nRange: bytes=0-1\r\nX-Late: 1\r\n\r\n")
    assert rig.responses(1) == [(200, b"/t")]
    seen = rig.handler.seen[0].headers
    assert "range" not in seen and "x-late" not in seen and seen["transfer-encoding"] == "chunked"


def test_trailer_fields_still_count_against_the_header_limits(rig):
    trailers = "".join(f"X-{i}: v\r\n" for i in range(30))
    rig.feed(f"GET /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{trailers}\r\n".encode())
    assert rig.responses(1)[0][0] == 431


# ---------------------------------------------------------------- head + file: sendfile, partial sends, errors


@pytest.fixture
def data_file(tmp_path) -> Iterator[tuple[int, bytes]]:
    data = bytes(range(256)) * (16 << 10)  # 4 MiB
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def test_a_file_range_is_sent_whole(rig, data_file):
    fd, data = data_file
    rig.handler.file_for["/f"] = (fd, 1000, 65536)
    rig.feed(req("/f") + req("/a"))
    assert rig.responses(2) == [(200, data[1000:66536]), (200, b"/a")]


def test_a_file_range_larger_than_the_socket_buffer_waits_for_writability_then_completes(rig, data_file):
    fd, data = data_file
    rig.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.handler.file_for["/f"] = (fd, 7, len(data) - 7)
    rig.feed(req("/f"))
    assert rig.loop.writers, "the range waits for the socket to drain"
    got = bytearray()
    rig.client.setblocking(False)
    for _ in range(100_000):
        try:
            got += rig.client.recv(1 << 20)
        except BlockingIOError:
            if not rig.loop.writers:
                break
            for callback in list(rig.loop.writers.values()):
                callback()  # the socket drained: what the event loop would call
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == data[7:]
    assert rig.handler.finished_log == [(200, True)]


def test_a_file_that_shrank_aborts_the_connection(rig, data_file):
    fd, data = data_file
    rig.handler.file_for["/f"] = (fd, len(data) - 10, 100)  # 90 bytes past the end
    rig.feed(req("/f"))
    assert rig.transport.aborted
    assert [e.args[1] for e in rig.handler.file_errors] == ["file shrank while being sent"]


def test_a_client_gone_before_the_head_aborts_without_blaming_the_file(rig, data_file):
    fd, _data = data_file
    rig.handler.file_for["/f"] = (fd, 0, 100)
    rig.client.close()
    rig.feed(req("/f"))
    assert rig.transport.aborted and rig.handler.file_errors == []


def test_a_bad_file_descriptor_is_the_files_fault(rig, data_file):
    fd, _data = data_file
    spare = os.dup(fd)
    os.close(spare)  # a descriptor number that is closed now
    rig.handler.file_for["/f"] = (spare, 0, 100)
    rig.feed(req("/f"))
    assert rig.transport.aborted
    assert [e.errno for e in rig.handler.file_errors] == [9]  # EBADF
