"""The HTTPS send path: copy file blocks into reused buffers, encrypt, send.

Rules kept here:
- The send path is a strategy chosen per listening socket: plain HTTP
  connections are `HttpConnection` (head by `send` with MSG_MORE, body by
  `os.sendfile`, untouched by anything here); HTTPS connections are
  `TlsConnection`, which overrides only the send half (`_start`, `_pump`,
  closing). Kernel TLS would be a third strategy: an SSL object attached to
  the socket with `OP_ENABLE_KTLS`, then the plain `os.sendfile` pump. It is
  not written, because no kernel here has the `tls` module to test it on
  (`oca.tls.ktls_status`), and an untested path is not shipped.
- Without kTLS, file bytes must pass through user space. They are read
  with `os.preadv` in `BLOCK_BYTES` blocks into buffers the connection
  reuses; a whole range is never held in memory.
- A buffer handed to the TLS transport's `write` may still be queued there
  (during a handshake, at shutdown, or while OpenSSL must read first). A
  buffer is overwritten only when the transport's write buffer is empty,
  which means nothing it was given is still queued; otherwise the next
  buffer of a small ring is used (`RING_BUFFERS`), and past the ring a
  fresh one that is not kept.
- Back-pressure: the transport's high-water mark is `HIGH_WATER_BYTES`;
  above it the transport calls `pause_writing` and the pump stops reading
  the file until `resume_writing`. While paused the send timeout runs
  (a client that stops reading is reset after `send_timeout_s`, as on
  plain HTTP). Per connection this bounds what is buffered to about
  HIGH_WATER_BYTES of ciphertext in the TLS layer, what the TCP transport
  holds before it pauses the TLS layer, and the ring: measured
  (benchmarks/tls_memory.py) 282 KiB of worker RSS per slow reader with a
  64 KiB mark, against 671 KiB with 256 KiB, at the same throughput.
- An idle connection holds no buffer: the ring goes back to a per-process
  pool when a response ends with nothing queued, and once a connection that
  sent a body has rested `TRIM_AFTER_IDLE_S` with nothing queued, its TLS
  transport's outgoing memory BIO is given an empty buffer
  (`oca.sslmem`, through the `trim_bio` hook the worker sets).
- Under the stock asyncio loop (`event_loop = "asyncio"`) the TLS transport
  is asyncio's sslproto, which gives every connection a 256 KiB ciphertext
  read buffer at creation (`SSLProtocol.max_size`): 281 KiB of worker RSS
  per idle connection, measured (benchmarks/tls_memory.py --idle 2000
  --event-loop asyncio). Requests are small, so `ASYNCIO_READ_BYTES` is
  plenty; `shrink_asyncio_read_buffer` sets it before any connection.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

from oca.http.messages import Response
from oca.http.protocol import BUSY, CLOSING, IDLE, HttpConnection, LINGER_S

# 64 KiB: the prototype on this box found it fastest (2 MiB ranges at 1.01x
# nginx); 256 KiB blocks fell to 0.85x because each block is copied 3-4
# times (file, TLS record, BIO, socket) and no longer fits in L2.
BLOCK_BYTES = 64 * 1024
HIGH_WATER_BYTES = BLOCK_BYTES
LOW_WATER_BYTES = BLOCK_BYTES // 4
RING_BUFFERS = HIGH_WATER_BYTES // BLOCK_BYTES + 1
POOL_MAX = 256  # spare buffers kept per process (16 MiB)
# A connection's TLS write buffer is given back once it has been idle this
# long: a player resting between segments, not a busy client between two
# back-to-back requests (which would only grow it again).
TRIM_AFTER_IDLE_S = 1.0

_pool: list[bytearray] = []

# One TLS record (16 KiB plus its header and tag) fits: a request head is
# read in one or two calls, and the transport reads again while data is pending.
ASYNCIO_READ_BYTES = 17 * 1024


def shrink_asyncio_read_buffer() -> bool:
    """Give asyncio's SSL transports an ASYNCIO_READ_BYTES read buffer instead of 256 KiB; False if its layout is not the known one."""
    from asyncio import sslproto

    proto = getattr(sslproto, "SSLProtocol", None)
    if proto is None or getattr(proto, "max_size", None) != 256 * 1024:
        return False
    proto.max_size = ASYNCIO_READ_BYTES
    return True


_NO_RING: tuple = ()


class TlsConnection(HttpConnection):
    """An HTTP/1.1 connection over an asyncio/uvloop TLS transport."""

    # Slots, as in HttpConnection: 10,000 idle HTTPS connections are normal,
    # and a __dict__ here would cost each of them ~0.3 KiB for nothing. The
    # segment deque (~0.6 KiB even empty) and the ring list exist only while
    # a response is being sent.
    __slots__ = ("_ring", "_ring_next", "_write_paused", "_sent_body")

    # Set once by the worker before serving: gives an idle connection's
    # outgoing memory BIO an empty buffer (oca.sslmem.BioTrimmer.trim); None: never.
    trim_bio = None

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._segments = _NO_RING  # a deque during a response: this pump takes from the front of long block lists
        self._ring: list[bytearray] | tuple = _NO_RING
        self._ring_next = 0
        self._write_paused = False
        self._sent_body = False  # a block went through the TLS layer since the last trim

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=HIGH_WATER_BYTES, low=LOW_WATER_BYTES)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        # A TLS transport closes after EOF whatever we answer (close_notify
        # ends the session), so a half-closed client gets no more responses.
        self.closing_after = True
        return None

    # ------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._current is not None and self._response is not None and self.phase == BUSY:
            self._pump()

    # ------------------------------------------------------------ sending

    def _start(self, resp: Response) -> None:
        self._begin(resp)
        segments = self._segments = deque(resp.segments)
        segments.appendleft(resp.head)
        self._pump()

    def _buffer(self) -> bytearray:
        t = self.transport
        if t is not None and t.get_write_buffer_size() == 0:
            self._ring_next = 0  # nothing queued: every buffer of the ring is free
        i = self._ring_next
        self._ring_next = i + 1
        ring = self._ring
        if i < len(ring):
            return ring[i]
        buf = _pool.pop() if _pool else bytearray(BLOCK_BYTES)
        if i < RING_BUFFERS:
            if ring is _NO_RING:
                ring = self._ring = []
            ring.append(buf)
        return buf

    def _pump(self) -> None:
        t = self.transport
        segments = self._segments
        if t is None or t.is_closing() or self._lost:
            return
        pending: list = []  # bytes segments (the head, multipart delimiters) going out with the next block
        while segments:
            if self._write_paused:
                if pending:
                    t.writelines(pending)
                self.deadline = self.loop.time() + self.limits.send_timeout_s
                self.deadline_kind = "send"
                return
            seg = segments[0]
            if type(seg) is tuple:
                file_fd, offset, count = seg
                buf = self._buffer()
                view = memoryview(buf)
                if count < BLOCK_BYTES:
                    view = view[:count]
                try:
                    n = os.preadv(file_fd, [view], offset)
                except OSError as exc:
                    self._send_failed(exc, file_side=True)
                    return
                if n == 0:
                    self._send_failed(OSError(0, "file shrank while being sent"), file_side=True)
                    return
                if n < len(view):
                    view = view[:n]
                if pending:
                    # One write for the head and the first block: one TLS
                    # flush and one send instead of two (64 KiB ranges: fewer
                    # syscalls per request, the cost that shows at that size).
                    pending.append(view)
                    t.writelines(pending)
                    pending = []
                else:
                    t.write(view)
                self._sent += n
                self._sent_body = True
                if n < count:
                    segments[0] = (file_fd, offset + n, count - n)
                else:
                    segments.popleft()
            else:
                pending.append(seg)
                self._sent += len(seg)
                segments.popleft()
            if t.is_closing():
                return
        if pending:
            t.writelines(pending)
        self._response_sent()

    def _finish(self, complete: bool) -> None:
        super()._finish(complete)
        t = self.transport
        if self._ring and t is not None and not self._lost and t.get_write_buffer_size() == 0:
            room = POOL_MAX - len(_pool)
            if room > 0:
                _pool.extend(self._ring[:room])
        self._ring = _NO_RING
        self._ring_next = 0
        self._segments = _NO_RING

    def expire(self, now: float) -> str | None:
        kind = super().expire(now)
        if (self._sent_body and kind is None and self.phase == IDLE and self._current is None and self.deadline_kind == "idle"
                and now - (self.deadline - self.limits.keepalive_timeout_s) >= TRIM_AFTER_IDLE_S):
            t = self.transport
            trim = self.trim_bio
            if t is not None and trim is not None and not self._lost and not t.is_closing() and t.get_write_buffer_size() == 0:
                self._sent_body = False
                trim(t.get_extra_info("ssl_object"))
        return kind

    # ------------------------------------------------------------ closing

    def _linger(self) -> None:
        # TLS closes with close_notify after what is queued has gone; the
        # transport does the lingering (ssl_shutdown_timeout bounds it).
        self.phase = CLOSING
        self._queue.clear()
        if self.transport is None or self._lost:
            return
        self.deadline = self.loop.time() + LINGER_S + self.limits.send_timeout_s
        self.deadline_kind = "linger"
        self.transport.close()
