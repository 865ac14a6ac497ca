"""The appliance's request handling: routing, content responses, control endpoints.

Rules kept here:
- Every decision about status and ranges is made by the pure functions in
  `oca.http.ranges` before any byte is sent; this module only gathers their
  inputs (one index lookup, the cached descriptor) and builds the head.
  One exception, for speed: a GET whose only range field is a plain
  `bytes=<first>-<last>` that `ranges.decide` would answer with that one
  range (206) is answered in `content` without calling it (about 3.5 µs
  less per request); any other input goes through `ranges.decide`.
- URLs: GET/HEAD `/content/<id>` (with `Range`), `/content/<id>/range/<s>-<e>`
  (Open Connect's path form: 200 with the clamped bytes), OPTIONS for CORS
  preflight, and the control endpoints `/health`, `/inventory`, `/metrics`.
  A malformed id or path is 400, an unknown id 404; a client's path never
  becomes a file path (the index maps ids to files).
- Signed URLs (`e`, `k`, `t`) are checked whenever `[signing] required` is
  set or a token is present: 403 bad or missing, 410 expired, each with a
  one-line reason in the body.
- Content responses carry the configured Cache-Control; errors always carry
  `no-store`. ETag is the content's xxh3-128 checksum, identical on every
  appliance; Last-Modified is the origin's modification time.
- A file-side I/O error fails the store (in a thread: an LMDB write does not
  belong on the serving loop) and drops its cached descriptors.
- Control endpoints are cheap: `/health` and `/metrics` read counters from
  shared memory and store states from the index; `/inventory` walks the
  index in a thread and is cached by generation. An optional CIDR allow-list
  guards them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import mimetypes
import os
import re
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

from oca import __version__
from oca.admin import DRAIN_FLAG
from oca.config import Config
from oca.http import ranges
from oca.http.dates import format_http_date
from oca.http.protocol import HttpConnection, Request, Response
from oca.ids import is_valid_id
from oca.server import stats as S
from oca.server.accesslog import AccessLog
from oca.server.fdcache import CachedFile, FdCache, SizeMismatch
from oca.signing import verify
from oca.store.content import ContentStore

REASONS = {
    200: "OK", 204: "No Content", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 410: "Gone",
    412: "Precondition Failed", 413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}
CORS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Expose-Headers: Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified\r\n"
)
CONTENT_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".m4a": "audio/mp4", ".m4s": "video/iso.segment",
    ".ts": "video/mp2t", ".m3u8": "application/vnd.apple.mpegurl", ".mpd": "application/dash+xml",
    ".webm": "video/webm", ".mkv": "video/x-matroska", ".vtt": "text/vtt", ".aac": "audio/aac",
    ".mp3": "audio/mpeg", ".json": "application/json", ".jpg": "image/jpeg", ".png": "image/png",
}
RANGE_HEADERS = ("range", "if-range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since")
CONDITIONAL_HEADERS = frozenset(RANGE_HEADERS[1:])
# The one Range form video players send, `bytes=<first>-<last>`, decided
# here without building a Representation and a Decision. Only inputs on
# which `ranges.decide` is known to answer 206 (first <= last < 10^18,
# first inside the file, no conditional field, GET, ranges enabled) take
# this path; everything else goes through `ranges.decide`.
_SIMPLE_RANGE = re.compile(r"bytes=([0-9]{1,18})-([0-9]{1,18})", re.ASCII)


def content_type_for(content_id: str) -> str:
    dot = content_id.rfind(".")
    if dot <= 0:
        return "application/octet-stream"
    ext = content_id[dot:].lower()
    known = CONTENT_TYPES.get(ext)
    if known:
        return known
    guess, _enc = mimetypes.guess_type("x" + ext, strict=False)
    return guess or "application/octet-stream"


class DateCache:
    """The `Date` header line, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self.line = f"Date: {format_http_date(now)}\r\n".encode()
        return self.line


class App:
    def __init__(self, cfg: Config, store: ContentStore, stats: S.SharedStats, log: AccessLog, loop: asyncio.AbstractEventLoop):
        self.cfg = cfg
        self.store = store
        self.stats = stats
        self.log = log
        self.loop = loop
        self.fds = FdCache(cfg.server.fd_cache_size, cfg.server.fd_cache_inactive_s)
        self.dates = DateCache()
        self.server_line = f"Server: oca/{__version__}\r\n".encode()
        self.cache_control = f"Cache-Control: {cfg.server.cache_control}\r\n".encode()
        self.keys = cfg.signing.secrets()
        self.signing_required = cfg.signing.required
        self.skew = cfg.signing.clock_skew_s
        self.max_ranges = cfg.server.max_ranges
        self.control_nets = [ipaddress.ip_network(c) for c in cfg.server.control_allow]
        self._inventory_cache: tuple[int, bytes] | None = None
        self._inventory_task: asyncio.Future | None = None
        self.shutting_down = False
        self.started_s = time.time()

    # ------------------------------------------------------------ plumbing

    def error_response(self, status: int, reason: str, close: bool, extra: bytes = b"") -> Response:
        body = (reason + "\n").encode("utf-8", "replace")
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n".encode()
            + self.dates.get()
            + self.server_line
            + b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
            + CORS
            + extra
            + f"Content-Length: {len(body)}\r\n".encode()
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\n"
        )
        return Response(status, head, [body], len(body), close)

    def _simple(self, status: int, content_type: str, body: bytes, req: Request, extra: bytes = b"") -> Response:
        close = not req.keep_alive
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\n".encode()
            + self.dates.get()
            + self.server_line
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Cache-Control: no-store\r\n"
            + extra
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\n"
        )
        return Response(status, head, [] if req.method == "HEAD" else [body], len(body), close)

    def finished(self, req: Request, conn: HttpConnection, status: int, body_bytes: int, complete: bool) -> None:
        now = self.loop.time()
        duration = now - req.started if req.started else 0.0
        self.stats.observe(status if complete else 499 if status < 500 else status, duration, body_bytes)
        if self.log.enabled:
            h = req.headers
            self.log.log(
                conn.peer, req.method or "-", req.target.decode("latin-1") if req.target else "-", req.version,
                status if complete else 499, body_bytes, h.get("referer", ""), h.get("user-agent", ""), duration, time.time(),
            )

    # ------------------------------------------------------------ routing

    def handle(self, req: Request, conn: HttpConnection) -> Response | asyncio.Future:
        path = req.path
        method = req.method
        if path.startswith("/content/"):
            if method == "GET" or method == "HEAD":
                return self.content(req, path)
            if method == "OPTIONS":
                return self.preflight(req)
            return self.error_response(405, f"method {method} not allowed", not req.keep_alive, b"Allow: GET, HEAD, OPTIONS\r\n")
        if path in ("/health", "/inventory", "/metrics", "/routes"):
            if method not in ("GET", "HEAD"):
                return self.error_response(405, f"method {method} not allowed", not req.keep_alive, b"Allow: GET, HEAD\r\n")
            if self.control_nets and not self._control_allowed(conn.peer):
                return self.error_response(403, "control endpoints are not open to this address", not req.keep_alive)
            if path == "/health":
                return self.health(req)
            if path == "/metrics":
                return self.metrics(req)
            if path == "/routes":
                return self.routes(req)
            return self.inventory(req)
        if method == "OPTIONS" and path == "*":
            return self.preflight(req)
        if not path.startswith("/"):
            return self.error_response(400, "malformed request target", not req.keep_alive)
        return self.error_response(404, "no such path", not req.keep_alive)

    def _control_allowed(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.control_nets)

    def preflight(self, req: Request) -> Response:
        head = (
            b"HTTP/1.1 204 No Content\r\n"
            + self.dates.get()
            + self.server_line
            + b"Access-Control-Allow-Origin: *\r\n"
            b"Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
            b"Access-Control-Allow-Headers: Range, If-Range, If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since\r\n"
            b"Access-Control-Max-Age: 86400\r\n"
            b"Allow: GET, HEAD, OPTIONS\r\n"
            b"Cache-Control: no-store\r\nContent-Length: 0\r\n"
            + (b"Connection: close\r\n" if not req.keep_alive else b"")
            + b"\r\n"
        )
        return Response(204, head, [], 0, not req.keep_alive)

    # ------------------------------------------------------------ content

    def content(self, req: Request, path: str) -> Response:
        close = not req.keep_alive
        rest = path[9:]
        slash = rest.find("/")
        path_range: tuple[int, int] | None = None
        if slash >= 0:
            tail = rest[slash + 1 :]
            rest = rest[:slash]
            if not tail.startswith("range/"):
                return self.error_response(400, "malformed path: expected /content/<id>/range/<start>-<end>", close)
            start_text, dash, end_text = tail[6:].partition("-")
            if not dash or not start_text.isdigit() or not end_text.isdigit() or not start_text.isascii() or not end_text.isascii() or len(start_text) > 19 or len(end_text) > 19:
                return self.error_response(400, "malformed range in path: expected <start>-<end> in decimal", close)
            path_range = (int(start_text), int(end_text))
        content_id = unquote(rest) if "%" in rest else rest
        if not is_valid_id(content_id):
            return self.error_response(400, "malformed content id", close)
        if self.signing_required or (req.query and "t=" in req.query):
            verdict = self._check_signature(content_id, req.query)
            if verdict is not None:
                return self.error_response(verdict[0], verdict[1], close)
        loc = self.store.lookup(content_id)
        if loc is None:
            return self.error_response(404, "no such content on this appliance", close)
        entry = self.fds.get(loc.path)
        if entry is None:
            try:
                entry = self.fds.open(loc.path, loc.size, lambda fd, size: self._make_entry(fd, size, content_id, loc.checksum, loc.mtime_s, loc.store_uuid))
            except SizeMismatch as exc:
                return self.error_response(503, f"content unavailable: {exc.args[0].split(': ', 1)[-1]}", close)
            except OSError as exc:
                self._file_error(loc.store_uuid, exc, "opening")
                return self.error_response(503, "content unavailable: store error", close)
        entry.used = self.loop.time()
        size = entry.size
        headers = req.headers
        if path_range is not None:
            decision = ranges.decide_path_range(path_range[0], path_range[1], size)
            if decision.status == 200:
                start, end = decision.ranges[0]
                return self._file_response(req, entry, 200, start, end - start + 1, None)
        else:
            if headers.keys().isdisjoint(CONDITIONAL_HEADERS):
                range_value = headers.get("range")
                if range_value is None:
                    return self._file_response(req, entry, 200, 0, size, None)
                if req.method == "GET" and self.max_ranges > 0:
                    m = _SIMPLE_RANGE.fullmatch(range_value)
                    if m is not None:
                        start = int(m[1])
                        last = int(m[2])
                        if start <= last and start < size:
                            end = last if last < size else size - 1
                            return self._file_response(req, entry, 206, start, end - start + 1, f"bytes {start}-{end}/{size}")
            rep = ranges.Representation(size, entry.etag, entry.last_modified_s)
            decision = ranges.decide(
                req.method, headers.get("range"), headers.get("if-range"), headers.get("if-none-match"),
                headers.get("if-modified-since"), headers.get("if-match"), headers.get("if-unmodified-since"),
                rep, self.max_ranges,
            )
        status = decision.status
        if status == 200:
            return self._file_response(req, entry, 200, 0, size, None)
        if status == 206:
            if len(decision.ranges) == 1:
                start, end = decision.ranges[0]
                return self._file_response(req, entry, 206, start, end - start + 1, ranges.content_range(start, end, size))
            return self._multipart(req, entry, decision.ranges)
        if status == 304:
            head = (
                b"HTTP/1.1 304 Not Modified\r\n" + self.dates.get() + self.server_line
                + f"ETag: {entry.etag}\r\nLast-Modified: {entry.last_modified}\r\n".encode()
                + self.cache_control + CORS + (b"Connection: close\r\n" if close else b"") + b"\r\n"
            )
            return Response(304, head, [], 0, close)
        if status == 416:
            return self.error_response(416, "range not satisfiable", close, f"Content-Range: {ranges.unsatisfied_range(size)}\r\n".encode())
        if status == 400:
            return self.error_response(400, decision.reason or "bad range", close)
        return self.error_response(status, decision.reason or REASONS.get(status, "error"), close)

    def _check_signature(self, content_id: str, query: str) -> tuple[int, str] | None:
        params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        v = verify(content_id, params.get("e"), params.get("k"), params.get("t"), self.keys, time.time(), self.skew)
        return None if v.ok else (v.status, v.reason)

    def _make_entry(self, fd: int, size: int, content_id: str, checksum: str, mtime_s: int, store_uuid: str) -> CachedFile:
        etag = f'"{checksum}"'
        last_modified = format_http_date(mtime_s)
        ctype = content_type_for(content_id)
        block = (
            self.server_line
            + f"Content-Type: {ctype}\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\nLast-Modified: {last_modified}\r\n".encode()
            + self.cache_control
            + CORS
        )
        return CachedFile(fd, size, block, etag, last_modified, mtime_s, store_uuid, ctype)

    def _file_response(self, req: Request, entry: CachedFile, status: int, offset: int, count: int, content_range: str | None) -> Response:
        close = not req.keep_alive
        head = (
            (b"HTTP/1.1 200 OK\r\n" if status == 200 else b"HTTP/1.1 206 Partial Content\r\n")
            + self.dates.get()
            + entry.block
            + (f"Content-Range: {content_range}\r\n".encode() if content_range else b"")
            + f"Content-Length: {count}\r\n".encode()
            + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        )
        if req.method == "HEAD" or count == 0:
            return Response(status, head, [], 0, close)
        resp = Response(status, head, [(entry.fd, offset, count)], count, close)
        self._hold(resp, entry)
        return resp

    def _multipart(self, req: Request, entry: CachedFile, chosen: tuple[tuple[int, int], ...]) -> Response:
        close = not req.keep_alive
        boundary = os.urandom(12).hex()
        parts, closing, total = ranges.multipart_layout(chosen, entry.size, entry.content_type, boundary)
        head = (
            b"HTTP/1.1 206 Partial Content\r\n" + self.dates.get()
            + entry.block.replace(f"Content-Type: {entry.content_type}\r\n".encode(), f"Content-Type: multipart/byteranges; boundary={boundary}\r\n".encode())
            + f"Content-Length: {total}\r\n".encode()
            + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        )
        if req.method == "HEAD":
            return Response(206, head, [], 0, close)
        segments: list[Any] = []
        for part_head, start, length in parts:
            segments.append(part_head)
            segments.append((entry.fd, start, length))
        segments.append(closing)
        resp = Response(206, head, segments, total, close)
        self._hold(resp, entry)
        return resp

    def _hold(self, resp: Response, entry: CachedFile) -> None:
        entry.refs += 1
        released = False

        def done() -> None:
            nonlocal released
            if not released:
                released = True
                self.fds.release(entry)

        def error(exc: OSError) -> None:
            self.stats.add(S.C_SENDFILE_ERRORS)
            done()
            self._file_error(entry.store_uuid, exc, "sending")

        resp.on_done = done
        resp.on_error = error

    def _file_error(self, store_uuid: str, exc: OSError, doing: str) -> None:
        disk = self.store.disk(store_uuid)
        if disk is None:
            return
        self.fds.drop_store(store_uuid)

        def report() -> None:
            self.store.report_io_error(disk, exc, doing)

        self.loop.run_in_executor(None, report)

    # ------------------------------------------------------------ control

    def health_document(self) -> dict:
        cfg = self.cfg
        records = self.store.index.stores()
        stores = []
        conditions = []
        working = 0
        for disk in self.store.disks:
            rec = records.get(disk.uuid or "")
            state = rec.state if rec is not None else disk.state
            reason = (rec.reason if rec is not None and state != "ok" else disk.reason) if state != "ok" else ""
            cap = disk.capacity()
            stores.append({"path": disk.path, "uuid": disk.uuid, "state": state, "reason": reason, **cap.as_dict()})
            if state == "ok":
                working += 1
            else:
                conditions.append({"status": "degraded", "reason": f"store {disk.path} failed: {reason}"})
        drain = self.store.index.get_flag(DRAIN_FLAG)
        if drain is not None:
            conditions.append({"status": "draining", "reason": "drained by operator"})
        if working == 0:
            conditions.append({"status": "down", "reason": "no working store"})
        if self.shutting_down:
            conditions.append({"status": "down", "reason": "shutting down"})
        order = {"ok": 0, "degraded": 1, "draining": 2, "down": 3}
        status = max((c["status"] for c in conditions), key=order.__getitem__, default="ok")
        h = self.stats.header
        nic_util = h[S.H_NIC_UTIL]
        return {
            "status": status,
            "conditions": conditions,
            "appliance": cfg.appliance.id,
            "site": cfg.appliance.site,
            "version": __version__,
            "time": time.time(),
            "uptime_s": round(time.time() - self.started_s, 3),
            "stores": stores,
            "load": {
                "bytes_per_s": h[S.H_BYTES_PER_S],
                "open_connections": self.stats.total(S.C_CONNECTIONS_OPEN),
                "cpu_percent": h[S.H_CPU_PERCENT],
                "nic_utilisation": None if nic_util < 0 else nic_util,
                "nic_capacity_bps": None if h[S.H_NIC_CAPACITY_BPS] < 0 else h[S.H_NIC_CAPACITY_BPS],
                "sampled_at": h[S.H_SAMPLED_AT],
            },
            "generation": self.store.index.generation(),
            "fill": _fill_status(self.store.index.get_flag("fill_status")),
        }

    def health(self, req: Request) -> Response:
        doc = self.health_document()
        body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        return self._simple(503 if doc["status"] == "down" else 200, "application/json", body, req)

    def metrics(self, req: Request) -> Response:
        from oca.server.metrics import render

        body = render(self)
        return self._simple(200, "text/plain; version=0.0.4; charset=utf-8", body, req)

    def routes(self, req: Request) -> Response:
        """The client prefixes this appliance serves (static + kernel), with a generation."""
        raw = self.store.index.get_flag("routes")
        doc = json.loads(raw) if raw else {"generation": 0, "prefixes": []}
        params = dict(parse_qsl(req.query, keep_blank_values=True)) if req.query else {}
        since = params.get("since")
        out: dict[str, Any] = {"appliance": self.cfg.appliance.id, "site": self.cfg.appliance.site, "generation": doc.get("generation", 0)}
        if since is not None and since.isdigit() and int(since) == out["generation"]:
            out["kind"] = "unchanged"
        else:
            out["kind"] = "full"
            out["prefixes"] = doc.get("prefixes", [])
        return self._simple(200, "application/json", json.dumps(out).encode() + b"\n", req)

    def inventory(self, req: Request) -> Response | asyncio.Future:
        params = dict(parse_qsl(req.query, keep_blank_values=True)) if req.query else {}
        since_text = params.get("since")
        if since_text is not None:
            if not since_text.isdigit() or len(since_text) > 19:
                return self.error_response(400, "since must be a generation number", not req.keep_alive)
            changes = self.store.index.changes_since(int(since_text))
            if changes.kind != "full":
                doc = {"appliance": self.cfg.appliance.id, "generation": changes.generation, "since": int(since_text), "kind": changes.kind}
                if changes.kind == "delta":
                    doc["added"] = list(changes.added)
                    doc["removed"] = list(changes.removed)
                return self._simple(200, "application/json", json.dumps(doc).encode() + b"\n", req)
        generation = self.store.index.generation()
        cached = self._inventory_cache
        if cached is not None and cached[0] == generation:
            return self._simple(200, "application/json", cached[1], req)
        fut = self.loop.create_future()

        def build() -> bytes:
            gen, ids = self.store.index.inventory()
            body = json.dumps({"appliance": self.cfg.appliance.id, "generation": gen, "kind": "full", "count": len(ids), "ids": ids}).encode() + b"\n"
            self._inventory_cache = (gen, body)
            return body

        def done(task: asyncio.Future) -> None:
            try:
                fut.set_result(self._simple(200, "application/json", task.result(), req))
            except Exception as exc:  # index trouble: answer, don't hang
                fut.set_result(self.error_response(503, f"inventory unavailable: {type(exc).__name__}", True))

        self.loop.run_in_executor(None, build).add_done_callback(done)
        return fut


def _fill_status(raw: str | None) -> dict | None:
    """The fill agent's record of its last and current run (written by oca-fill)."""
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return {"last": doc.get("last"), "current": doc.get("current")}
