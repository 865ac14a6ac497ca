"""The request and response values passed between the connection and the application.

Rules kept here:
- Nothing here performs I/O or imports an I/O module: these are values.
- `Request` is filled in by the parser while a head arrives (one object per
  request, fields set once each) and is read-only once handed to the
  application. `Response` is decided by the application before any byte is
  sent: a head, and body segments that are bytes or (fd, offset, count)
  ranges of a file.
- Both are `__slots__` classes, not frozen dataclasses: they are made once
  per request on the hot path, where a frozen dataclass's `__init__`
  (object.__setattr__ per field) cost about 1 µs more per request.
"""

from __future__ import annotations

from typing import Union

# A body segment: bytes, or a range of an open file (fd, offset, count).
Segment = Union[bytes, memoryview, "tuple[int, int, int]"]


class Request:
    __slots__ = ("method", "target", "path", "query", "headers", "version", "keep_alive", "started", "error")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.path = ""
        self.query = ""
        self.headers: dict[str, str] = {}  # lower-case names; repeated fields joined with ", "
        self.version = "1.1"
        self.keep_alive = True
        self.started = 0.0  # loop time of the request's first byte
        self.error: tuple[int, str] | None = None  # (status, reason) when the head broke a rule


class Response:
    """What to send: `head` (status line and headers) and body `segments`."""

    __slots__ = ("status", "head", "segments", "body_bytes", "close", "held")

    def __init__(self, status: int, head: bytes, segments: list, body_bytes: int, close: bool = False):
        self.status = status
        self.head = head
        self.segments = segments
        self.body_bytes = body_bytes
        self.close = close
        # What the handler holds while this response is sent (a cached file
        # descriptor), opaque to the connection; the handler lets it go in
        # `finished` or `file_failed`. An attribute, not a callback: a
        # closure pair made per request cost about 1 us.
        self.held: object | None = None
