"""`TlsConnection`'s copying send path, driven by a fake TLS transport: no loop, no socket.

The fake transport keeps every view it is given queued (as uvloop's TLS
transport may, during a handshake or at shutdown) until the test drains
it, and pauses the protocol above its high-water mark like the real one.
If a buffer still queued were overwritten, the bytes drained would not be
the file's: that is what these tests check, with a real file and preadv.
"""

from __future__ import annotations

import os
import socket

import pytest

from oca.http.messages import Request, Response
from oca.http.tlsconn import BLOCK_BYTES, HIGH_WATER_BYTES, LOW_WATER_BYTES, TlsConnection
from tests.unit.test_connection import EchoHandler, ManualLoop

SEND_TIMEOUT_S = 60.0


class QueueingTransport:
    """Holds written data by reference until `drain`; calls pause/resume_writing like uvloop's SSL transport."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.queue: list = []
        self.out = bytearray()
        self.protocol = None
        self.paused_writing = False
        self.closed = self.aborted = False
        self.high = self.low = 0

    def get_extra_info(self, name: str):
        return {"peername": ("127.0.0.1", 40000), "socket": self.sock}.get(name)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.high, self.low = high, low

    def get_write_buffer_size(self) -> int:
        return sum(len(x) for x in self.queue)

    def write(self, data) -> None:
        self.queue.append(data)  # by reference, not copied: the hazard under test
        if self.get_write_buffer_size() >= self.high and not self.paused_writing:
            self.paused_writing = True
            self.protocol.pause_writing()

    def writelines(self, items) -> None:
        for item in items:
            self.write(item)

    def drain(self, n: int | None = None) -> None:
        """Let the peer take up to n bytes (all by default)."""
        while self.queue and (n is None or n > 0):
            head = self.queue[0]
            take = len(head) if n is None else min(n, len(head))
            self.out += bytes(head[:take])
            if take == len(head):
                self.queue.pop(0)
            else:
                self.queue[0] = memoryview(head)[take:]
            if n is not None:
                n -= take
        if self.paused_writing and self.get_write_buffer_size() <= self.low:
            self.paused_writing = False
            self.protocol.resume_writing()

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FileHandler(EchoHandler):
    def __init__(self, fd: int, offset: int, count: int) -> None:
        super().__init__()
        self.fd, self.offset, self.count = fd, offset, count

    def handle(self, req: Request, conn) -> Response:
        head = f"HTTP/1.1 206 Partial Content\r\nContent-Length: {self.count}\r\n\r\n".encode()
        return Response(206, head, [(self.fd, self.offset, self.count)], self.count, False)


@pytest.fixture
def setup(tmp_path):
    data = os.urandom(5 * BLOCK_BYTES + 12345)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    a, b = socket.socketpair()
    yield data, fd, a
    os.close(fd)
    a.close()
    b.close()


def _conn(handler, sock) -> tuple[TlsConnection, QueueingTransport, ManualLoop]:
    from oca.http.protocol import Limits

    loop = ManualLoop()
    limits = Limits(header_timeout_s=10.0, keepalive_timeout_s=75.0, send_timeout_s=SEND_TIMEOUT_S,
                    max_request_line_bytes=8192, max_header_bytes=16384, max_headers=100, max_pipelined=8)
    conn = TlsConnection(handler, limits, set(), loop, lambda i, n: None)
    t = QueueingTransport(sock)
    t.protocol = conn
    conn.connection_made(t)  # type: ignore[arg-type]
    return conn, t, loop


@pytest.mark.parametrize("offset,count", [(0, 100), (7, BLOCK_BYTES), (1, 3 * BLOCK_BYTES + 5), (0, 5 * BLOCK_BYTES + 12345)])
@pytest.mark.parametrize("drain_bytes", [None, 1000, BLOCK_BYTES // 2])
def test_queued_buffers_are_never_overwritten(setup, offset, count, drain_bytes):
    data, fd, sock = setup
    handler = FileHandler(fd, offset, count)
    conn, t, loop = _conn(handler, sock)
    assert (t.high, t.low) == (HIGH_WATER_BYTES, LOW_WATER_BYTES)
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(10_000):
        if not t.queue:
            break
        assert t.get_write_buffer_size() <= HIGH_WATER_BYTES + BLOCK_BYTES + 200  # back-pressure holds
        t.drain(drain_bytes)
    head_end = t.out.index(b"\r\n\r\n") + 4
    assert bytes(t.out[head_end:]) == data[offset : offset + count]
    assert conn._current is None  # the response finished


def test_paused_writer_gets_the_send_deadline(setup):
    data, fd, sock = setup
    conn, t, loop = _conn(FileHandler(fd, 0, len(data)), sock)
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert t.paused_writing and conn.deadline_kind == "send" and conn.deadline == loop.now + SEND_TIMEOUT_S
    loop.now += SEND_TIMEOUT_S + 1
    assert conn.expire(loop.now) == "send" and t.aborted  # a client that stopped reading is reset
