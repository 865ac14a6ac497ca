"""One HTTP/1.1 connection: parsing, limits, pipelining and the zero-copy pump.

Rules kept here:
- Requests are parsed with httptools (llhttp, in C). A plain keep-alive
  GET/HEAD head complete in one read is taken by the compiled fast path
  instead (`oca.http.speedups`: one call, no per-field callbacks), only
  while the httptools parser is between messages; it gives the same
  request, and what it declines goes to httptools. Responses are decided
  by the application (`Handler`), which returns a `Response`: a head and a
  list of segments, each either bytes or a (file descriptor, offset, count)
  range of a file.
- Bodies are never read into Python. File segments go to the socket with
  `os.sendfile`; bytes go with `socket.send`, using MSG_MORE when a file
  segment follows so the head and the first body bytes leave together
  (nginx's tcp_nopush). uvloop implements neither `loop.sendfile` nor
  `sock_sendfile` (STACK-NOTES), so the transport is used for reading only
  and all writes go straight to its socket; writability is polled on a
  `dup()` made only while a response waits (the transport's own fd cannot
  take `add_writer` under uvloop).
- Exactly one response is in flight per connection. Pipelined requests
  queue in order; reading pauses when `max_pipelined` are waiting.
- An idle keep-alive connection holds no parser and no per-request object:
  the sweep drops the parser of a connection idle between requests, and
  the next byte makes a new one (about 0.9 KiB less per idle connection).
- Limits: request line (414), header bytes and count (431), a header read
  timeout from a request's first byte (slowloris), an idle keep-alive
  timeout, and a send timeout for clients that stop reading. Deadlines are
  plain numbers checked by the worker's once-a-second sweep, so a request
  costs no timer handles.
- A `sendfile` that returns 0 means the file shrank under us: the
  connection is aborted, since Content-Length was already sent.
- Closing after a response shuts down the write side first and drains what
  the client still sends for a moment (lingering close), so the client is
  not reset before reading the response.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any, Callable, Protocol

import httptools

from oca.http import speedups
from oca.http.messages import Request, Response

MSG_MORE = getattr(socket, "MSG_MORE", 0)
# The head is sent with MSG_MORE (held back to leave in one segment with the
# first body bytes, as nginx's tcp_nopush) only for bodies this large. Measured
# on Linux 6.18 loopback, production profile, 2 workers under wrk: 64 KiB
# ranges cost 33-37 us of kernel CPU per request with MSG_MORE and 20-21 us
# without (+18% requests/s); 2 MiB ranges reach ~25% more bytes/s with it.
# Nothing was measured between the two sizes.
MORE_MIN_BYTES = 1 << 20
LINGER_S = 2.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST (see _abort)

# Field names as sent → lower-case str: one dict probe instead of a decode
# and a lower() per field. Clients send a few dozen spellings; the table
# stops growing at FIELD_NAMES_KEPT so hostile names cannot bloat it.
FIELD_NAMES_KEPT = 512
_FIELD_NAMES: dict[bytes, str] = {}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE")}
_new_request = Request.__new__

# Connection phases
IDLE = 0  # waiting for a request's first byte
HEAD = 1  # reading a request's head
BUSY = 2  # a response is being produced or sent
CLOSING = 3  # write side shut, draining input
PHASES = (IDLE, HEAD, BUSY, CLOSING)
DEADLINE_KINDS = ("header", "idle", "send", "linger")

# What a passed deadline does, by (phase, deadline kind). Pure data: the
# sweep looks the pair up and `expire` carries the action out.
NOTHING = "nothing"  # the deadline no longer applies (the phase moved on)
CLOSE = "close"  # close quietly (FIN)
ABORT = "abort"  # reset: unsent data is dropped (a client that stopped reading)
TIMEOUT = "timeout"  # answer 408 (the client sent part of a head), then linger
EXPIRY: dict[tuple[int, str], str] = {
    (IDLE, "header"): CLOSE,  # connected and sent nothing
    (HEAD, "header"): TIMEOUT,  # slowloris: part of a head, too slowly
    (IDLE, "idle"): CLOSE,  # keep-alive timeout
    **{(phase, "send"): ABORT for phase in PHASES},
    **{(phase, "linger"): CLOSE for phase in PHASES},
}


def expiry_action(phase: int, kind: str, busy: bool) -> str:
    """The action for a passed deadline of `kind` in `phase` (`busy`: a response is in flight).

    A header deadline never cuts a response in flight: the pipelined head
    being read meanwhile is timed again once the response is done.
    """
    if busy and kind == "header":
        return NOTHING
    return EXPIRY.get((phase, kind), NOTHING)


class Handler(Protocol):
    def handle(self, request: Request, conn: "HttpConnection") -> "Response | asyncio.Future[Response]": ...
    def error_response(self, status: int, reason: str, close: bool) -> Response: ...
    def finished(self, request: Request, conn: "HttpConnection", response: Response | None, body_bytes: int, complete: bool) -> None: ...
    def file_failed(self, response: Response, exc: OSError) -> None: ...


class Limits:
    __slots__ = (
        "header_timeout_s",
        "keepalive_timeout_s",
        "send_timeout_s",
        "max_request_line_bytes",
        "max_header_bytes",
        "max_headers",
        "max_pipelined",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class HttpConnection(asyncio.Protocol):
    # Slots, not a __dict__, and lists, not deques: an idle keep-alive
    # connection is mostly these objects, and 10,000 of them per appliance
    # are normal (a __dict__ of ~30 fields is ~1.5 KiB; an empty deque
    # ~0.6 KiB; an empty list 56 bytes). Queues here hold a few items at
    # most (max_pipelined requests, a head and a few segments).
    __slots__ = (
        "handler", "limits", "registry", "loop", "on_stat", "transport", "peer", "phase", "deadline", "deadline_kind",
        "closing_after", "shutting_down", "_parser", "_req", "_url_parts", "_url_len", "_head_bytes", "_header_count",
        "_header_bytes", "_body_bytes", "_in_head", "_queue", "_paused", "_fd", "_family", "_sock", "_writer_fd",
        "_current", "_response", "_segments", "_sent", "_lost", "_in_next", "_began_in_chunk", "__weakref__",
    )
    # The compiled head parser, or None for httptools alone (oca.http.speedups;
    # a subclass may set either, as the tests that run both ways do).
    fast_head: Callable[..., Any] | None = speedups.parse_head

    def __init__(self, handler: Handler, limits: Limits, registry: set, loop: asyncio.AbstractEventLoop, on_stat: Callable[[int, int], None]):
        self.handler = handler
        self.limits = limits
        self.registry = registry
        self.loop = loop
        self.on_stat = on_stat  # (counter index, amount)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.phase = IDLE
        self.deadline = 0.0
        self.deadline_kind = "header"
        self.closing_after = False  # close once the current response is done
        self.shutting_down = False
        self._parser: Any = None  # made on the first byte; dropped by the sweep while idle (`expire`)
        self._req: Request | None = None
        self._url_parts: list[bytes] = []
        self._url_len = 0
        self._head_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        self._body_bytes = 0
        self._in_head = False  # header callbacks now are head fields, not chunked trailers
        self._queue: list[Request] = []
        self._paused = False
        self._fd = -1
        self._family = socket.AF_INET
        self._sock: socket.socket | None = None
        self._writer_fd = -1
        self._current: Request | None = None
        self._response: Response | None = None
        self._segments: Any = []  # a list here; a subclass may keep a deque
        self._sent = 0
        self._lost = False
        self._in_next = False  # inside _next's loop (see _next)
        self._began_in_chunk = False  # a request began in the chunk being parsed

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno()
        self._family = sock.family
        self.registry.add(self)
        self.deadline = self.loop.time() + self.limits.header_timeout_s
        self.deadline_kind = "header"

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.registry.discard(self)
        # The parser holds this connection's bound callbacks: a reference
        # cycle that only the cyclic collector would free. Dropped here, a
        # closed connection is freed by reference counting at once.
        self._parser = None
        if self._current is not None:
            self._finish(complete=False)
        self._release_sock()

    def eof_received(self) -> bool | None:
        if self.phase == CLOSING or (self.phase == IDLE and not self._queue):
            self._close()
            return None
        # Half-closed client with responses still due: finish them, then close.
        self.closing_after = True
        return True

    def data_received(self, data: bytes) -> None:
        if self.phase == CLOSING:
            return
        if self.phase == IDLE and self._current is None and not self._queue:
            self.phase = HEAD
            self.deadline = self.loop.time() + self.limits.header_timeout_s
            self.deadline_kind = "header"
        if self.fast_head is not None and self._req is None and not self.closing_after:
            # The compiled fast path (oca.http.speedups): plain heads at the
            # start of this read, one call each. The first head it declines,
            # and everything after it, goes to httptools below, which is at a
            # message boundary here (no request half read, none failed).
            data = self._fast_heads(data)
            if not data:
                if self._queue and self._current is None:
                    self._next()
                return
        self._began_in_chunk = False
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrade is not supported")
            return
        except httptools.HttpParserError as exc:
            if self._req is not None and self._req.error is not None:
                status, reason = self._req.error
            else:
                status, reason = 400, f"malformed request: {exc}"
            self._fail(status, reason)
            return
        if self._req is not None and self._head_bytes:
            if self._began_in_chunk:
                # Only this head's bytes count: the chunk may also hold earlier
                # pipelined requests, which must not push a small head over the
                # limit. The new head starts after the last blank line in the
                # chunk (an over-estimate only by a previous body).
                end = data.rfind(b"\r\n\r\n")
                self._head_bytes += len(data) - (end + 4 if end >= 0 else 0)
            else:
                self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_request_line_bytes + self.limits.max_header_bytes:
                self._fail(431, "request header too large")
                return
        if self._queue and self._current is None:
            self._next()

    def _fast_heads(self, data: bytes) -> bytes:
        """Take the plain heads at the start of `data` (see `speedups`); returns the bytes left."""
        parse = self.fast_head
        limits = self.limits
        max_url, max_header_bytes, max_headers = limits.max_request_line_bytes, limits.max_header_bytes, limits.max_headers
        queue = self._queue
        pos = 0
        n = len(data)
        while pos < n:
            got = parse(data, pos, max_url, max_header_bytes, max_headers)
            if got is None:
                return data[pos:] if pos else data
            # Every field is set here, so Request.__init__'s defaults are skipped (about 0.4 us).
            req = _new_request(Request)
            pos, req.method, req.target, req.path, req.query, req.headers, req.version, req.keep_alive = got
            req.started = self.loop.time()
            req.error = None
            queue.append(req)
            if len(queue) >= limits.max_pipelined and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        return b""

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        req = Request()
        req.started = self.loop.time()
        self._req = req
        self._url_parts = []
        self._url_len = 0
        self._head_bytes = 1
        self._began_in_chunk = True  # see data_received
        self._header_count = 0
        self._header_bytes = 0
        self._body_bytes = 0
        self._in_head = True
        if self.phase == IDLE:
            self.phase = HEAD
            self.deadline = req.started + self.limits.header_timeout_s
            self.deadline_kind = "header"

    def on_url(self, url: bytes) -> None:
        self._url_len += len(url)
        if self._url_len > self.limits.max_request_line_bytes:
            assert self._req is not None
            self._req.error = (414, "request line too long")
            raise httptools.HttpParserError("request line too long")
        self._url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        req: Any = self._req
        count = self._header_count + 1
        size = self._header_bytes + len(name) + len(value) + 4
        self._header_count = count
        self._header_bytes = size
        limits = self.limits
        if size > limits.max_header_bytes:
            req.error = (431, "request header fields too large")
            raise httptools.HttpParserError("headers too large")
        if count > limits.max_headers:
            req.error = (431, "too many header fields")
            raise httptools.HttpParserError("too many headers")
        key = _FIELD_NAMES.get(name)
        if key is None:
            try:
                key = name.decode("ascii").lower()
            except UnicodeDecodeError:
                req.error = (400, "header name is not ASCII")
                raise httptools.HttpParserError("bad header name") from None
            if len(_FIELD_NAMES) < FIELD_NAMES_KEPT:
                _FIELD_NAMES[name] = key
        if not self._in_head:
            # A chunked trailer field (RFC 9112 §7.1.2): counted against the
            # limits above, never merged into the request's header fields,
            # which were decided on when the head ended (RFC 9110 §6.5.1).
            return
        text = value.decode("latin-1")
        headers = req.headers
        old = headers.get(key)
        # RFC 9110 §5.3: repeated fields combine as a comma-separated list.
        headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        p = self._parser
        method = p.get_method()
        req.method = _METHODS.get(method) or method.decode("ascii", "replace")
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        self._in_head = False
        target = b"".join(self._url_parts)
        req.target = target
        path, _, query = target.partition(b"?")
        try:
            req.path = path.decode("ascii")
            req.query = query.decode("ascii")
        except UnicodeDecodeError:
            req.error = (400, "request target is not ASCII")
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > 65536 and self._req is not None:
            self._req.error = (413, "request body too large")
            raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        req = self._req
        self._req = None
        if req is None:
            return
        self._queue.append(req)
        if len(self._queue) >= self.limits.max_pipelined and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    # ------------------------------------------------------------ responses

    def _next(self) -> None:
        """Start the next queued response, if no response is in flight."""
        # Iterative, never recursive: a response sent at once calls
        # _response_sent -> _next from inside this loop; the nested call
        # returns and this loop picks up the next request, so any number of
        # pipelined requests uses constant stack.
        if self._in_next:
            return
        self._in_next = True
        try:
            self._next_loop()
        finally:
            self._in_next = False

    def _next_loop(self) -> None:
        while self._queue and self._current is None and not self._lost:
            req = self._queue.pop(0)
            if self._paused and len(self._queue) < self.limits.max_pipelined // 2 + 1 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            self._current = req
            self.phase = BUSY
            if self.shutting_down or (self.closing_after and not self._queue):
                req.keep_alive = False
            if req.error is not None:
                resp: Any = self.handler.error_response(req.error[0], req.error[1], True)
            else:
                try:
                    resp = self.handler.handle(req, self)
                except Exception as exc:  # a bug must not kill the worker
                    resp = self.handler.error_response(500, f"internal error: {type(exc).__name__}", True)
            if isinstance(resp, Response):
                self._start(resp)
            else:
                resp.add_done_callback(self._on_async_response)
                return

    def _on_async_response(self, fut: "asyncio.Future[Response]") -> None:
        if self._lost:
            return
        try:
            resp = fut.result()
        except Exception as exc:
            resp = self.handler.error_response(500, f"internal error: {type(exc).__name__}", True)
        self._start(resp)
        self._next()

    def _begin(self, resp: Response) -> None:
        """Make `resp` the response being sent for the current request (plain and TLS alike)."""
        req = self._current
        assert req is not None
        if not req.keep_alive:
            resp.close = True
        self._response = resp
        self._sent = 0

    def _start(self, resp: Response) -> None:
        self._begin(resp)
        self._segments = [resp.head, *resp.segments]
        if self._sock is None:
            if self.transport is None or self.transport.is_closing():
                return
            # A second socket object on the transport's own descriptor (for
            # send with MSG_MORE), not a dup: an idle keep-alive connection then
            # costs one descriptor, not two. It is detached before the transport
            # closes the descriptor (`_detach`), and never used once the
            # transport is closing, so it can never write to a reused number.
            self._sock = socket.socket(self._family, socket.SOCK_STREAM, 0, self._fd)
        self._pump()

    def _pump(self) -> None:
        sock = self._sock
        segments = self._segments
        if sock is None or self.transport is None or self.transport.is_closing():
            return
        while segments:
            seg = segments[0]
            if type(seg) is tuple:
                file_fd, offset, count = seg
                try:
                    n = os.sendfile(self._fd, file_fd, offset, count)
                except BlockingIOError:
                    self._wait_writable()
                    return
                except OSError as exc:
                    self._send_failed(exc, file_side=True)
                    return
                if n == 0:
                    self._send_failed(OSError(0, "file shrank while being sent"), file_side=True)
                    return
                self._sent += n
                if n < count:
                    segments[0] = (file_fd, offset + n, count - n)
                else:
                    del segments[0]
            else:
                try:
                    n = sock.send(seg, MSG_MORE if len(segments) > 1 and self._response.body_bytes >= MORE_MIN_BYTES else 0)
                except BlockingIOError:
                    self._wait_writable()
                    return
                except OSError as exc:
                    self._send_failed(exc, file_side=False)
                    return
                self._sent += n
                if n < len(seg):
                    segments[0] = memoryview(seg)[n:]
                else:
                    del segments[0]
        self._response_sent()

    def _wait_writable(self) -> None:
        if self._writer_fd < 0:
            # uvloop refuses add_writer on the transport's own descriptor, so
            # writability is polled on a dup, made only while a response waits.
            try:
                self._writer_fd = os.dup(self._fd)
            except OSError:
                self._abort()
                return
            self.loop.add_writer(self._writer_fd, self._on_writable)
        self.deadline = self.loop.time() + self.limits.send_timeout_s
        self.deadline_kind = "send"

    def _on_writable(self) -> None:
        self._stop_writer()
        self._pump()

    def _stop_writer(self) -> None:
        if self._writer_fd >= 0:
            fd, self._writer_fd = self._writer_fd, -1
            self.loop.remove_writer(fd)
            os.close(fd)

    def _send_failed(self, exc: OSError, file_side: bool) -> None:
        resp = self._response
        # Only errors that are not the client's socket going away are the file's fault.
        if file_side and resp is not None and exc.errno not in (32, 104, 110):  # EPIPE, ECONNRESET, ETIMEDOUT
            self.handler.file_failed(resp, exc)
        self._abort()

    def _response_sent(self) -> None:
        resp = self._response
        assert resp is not None
        close = resp.close
        self._finish(complete=True)
        # A client that half-closed while this response was in flight sends
        # nothing more: close now instead of idling until keepalive_timeout_s.
        if close or self.shutting_down or (self.closing_after and not self._queue):
            self._linger()
            return
        if self._queue:
            self.phase = BUSY
            self._next()
        else:
            self.phase = IDLE
            self.deadline = self.loop.time() + self.limits.keepalive_timeout_s
            self.deadline_kind = "idle"

    def _finish(self, complete: bool) -> None:
        req, resp = self._current, self._response
        self._current = None
        self._response = None
        if req is not None:
            # Once per response, complete or not: the handler counts it and
            # lets go of what it held for it (a file descriptor).
            body = max(0, self._sent - len(resp.head)) if resp is not None else 0
            self.handler.finished(req, self, resp, body, complete)

    # ------------------------------------------------------------ closing

    def _fail(self, status: int, reason: str) -> None:
        """A request we cannot parse: answer once and close."""
        self.on_stat(13, 1)  # C_BAD_REQUESTS
        self._queue.clear()
        if self._current is not None:
            self.closing_after = True
            return
        req = self._req or Request()
        req.keep_alive = False
        req.error = (status, reason)
        self._req = None
        self._current = req
        self.phase = BUSY
        self._start(self.handler.error_response(status, reason, True))

    def _linger(self) -> None:
        self.phase = CLOSING
        self._queue.clear()
        if self.transport is None or self._lost:
            return
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close()
            return
        self.deadline = self.loop.time() + LINGER_S
        self.deadline_kind = "linger"

    def _close(self) -> None:
        self._stop_writer()
        self._detach()
        if self.transport is not None and not self._lost:
            self.transport.close()

    def _abort(self) -> None:
        self._stop_writer()
        if self.transport is not None and not self._lost:
            # Reset, not FIN: a socket closed with unsent data (a client that
            # stopped reading, send timeout) must not linger in FIN-WAIT-1
            # holding megabytes of kernel memory. SO_LINGER {on, 0} makes the
            # last close send RST and free the buffers at once.
            try:
                sock = self._sock if self._sock is not None else self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except (OSError, AttributeError):
                pass
            self._detach()
            self.transport.abort()

    def _release_sock(self) -> None:
        self._stop_writer()
        self._detach()

    def _detach(self) -> None:
        """Let go of the transport's descriptor without closing it."""
        if self._sock is not None:
            self._sock.detach()
            self._sock = None

    def expire(self, now: float) -> str | None:
        """Called by the sweep; acts on a passed deadline (see EXPIRY). Returns its kind if it acted."""
        if now < self.deadline:
            if self.phase == IDLE and self.deadline_kind == "idle" and self._req is None:
                # Between requests the parser holds no state (the last message
                # completed, no byte of the next has come): an idle connection
                # need not keep its ~0.9 KiB; the next byte makes a new one.
                self._parser = None
            return None
        kind = self.deadline_kind
        action = expiry_action(self.phase, kind, self._current is not None)
        if action == CLOSE:
            self._close()
        elif action == ABORT:
            self._abort()
        elif action == TIMEOUT:
            self._fail(408, "request header timeout")
            self.deadline = now + LINGER_S
            self.deadline_kind = "linger"
        else:
            return None
        return kind

    def shutdown(self) -> None:
        """Graceful stop: close if idle between requests, else close after the next response.

        A connection that has sent nothing yet is not idle: it was accepted for
        a request that is on its way (closing it would reset the client, who
        never got an answer), so that request is answered, with
        `Connection: close`; the header deadline bounds the wait.
        """
        self.shutting_down = True
        if self._current is None and not self._queue and self.phase == IDLE and self.deadline_kind == "idle":
            self._close()
