"""The appliance's request handling: routing, content responses, control endpoints.

Rules kept here:
- Every decision about status and ranges is made by the pure functions in
  `oca.http.ranges` before any byte is sent; this module only gathers their
  inputs (one index lookup, the cached descriptor) and builds the head.
  One exception, for speed: a GET whose only range field is a plain
  `bytes=<first>-<last>` that `ranges.decide` would answer with that one
  range (206) is answered in `content` without calling it (about 3.5 µs
  less per request); any other input goes through `ranges.decide`. With the
  compiled hot path (`oca.http.speedups`), `file_head` builds that head,
  and the head of a plain 200, in one call, and declines the rest.
- URLs: GET/HEAD `/content/<id>` (with `Range`), `/content/<id>/range/<s>-<e>`
  (Open Connect's path form: 200 with the clamped bytes), OPTIONS for CORS
  preflight, and the control endpoints `/health`, `/inventory`, `/metrics`,
  `/routes`, `/popularity`.
  A malformed id or path is 400, an unknown id 404; a client's path never
  becomes a file path (the index maps ids to files).
- Signed URLs (`e`, `k`, `t`) are checked whenever `[signing] required` is
  set or a token is present: 403 bad or missing, 410 expired, each with a
  one-line reason in the body. A target that parsed and passed is
  remembered until its signature expires (`oca.server.targets`), so a
  player's URL reused for every range is parsed and checked once.
- Content responses carry the configured Cache-Control; errors always carry
  `no-store`. ETag is the content's xxh3-128 checksum, identical on every
  appliance; Last-Modified is the origin's modification time.
- A file-side I/O error fails the store if it means a dead disk (in a
  thread: an LMDB write does not belong on the serving loop) and drops its
  cached descriptors.
- Every response head is made by `build_head` (status line, Date, the
  caller's fields, Content-Length, Connection), so a field that belongs on
  every response is added in one place.
- When the index and the file disagree (file gone, a different size, or a
  symbolic link) the entry is taken out of service at once (in a thread:
  the index entry is deleted only if it still names that file), so later
  requests get 404 and `/inventory` stops listing the id.
- Control endpoints (`oca.server.control` decides who may use them) are
  cheap on the serving loop: `/health` and `/metrics` read counters from
  shared memory and store states from the index; `/inventory` reads the
  index (full listing or journal walk) only in a thread, one build per
  distinct answer however many ask at once, cached by generation;
  `/popularity` reads the request counters only in a thread.
- Each content request that passes the signing rules is counted for its id
  (`oca.server.popularity`): one dict lookup on the loop, written to the
  store's counters by the worker's flush loop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import time
from typing import TYPE_CHECKING, Any, Callable
from oca import __version__
from oca.config import Config
from oca.http import ranges, speedups
from oca.http.dates import format_http_date
from oca.http.messages import Request, Response
from oca.inventory_wire import CONTENT_TYPES, inventory_delta, inventory_full, inventory_unchanged, routes_answer
from oca.server import control
from oca.server import stats as S
from oca.server.accesslog import AccessLog
from oca.server.fdcache import CachedFile, FdCache, SizeMismatch
from oca.server.popularity import Tally
from oca.server.responses import (
    _ERROR_FIELDS,
    _PREFLIGHT_FIELDS,
    _SIMPLE_RANGE,
    CONDITIONAL_HEADERS,
    CORS,
    REASONS,
    DateCache,
    PathError,
    build_head,
    content_type_for,
    has_signature,
    parse_content_path,
)
from oca.server.targets import JudgedTargets
from oca.signing import VerifiedTokens
from oca.store.content import ContentStore

if TYPE_CHECKING:
    from oca.server.metrics import MetricsSnapshot

class App:
    def __init__(self, cfg: Config, store: ContentStore, stats: S.SharedStats, log: AccessLog, loop: asyncio.AbstractEventLoop,
                 tasks_down: Callable[[], dict[str, str]] = dict, task_failures: Callable[[], dict[str, int]] = dict,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.store = store
        self.stats = stats
        self.log = log
        self.log_enabled = log.enabled  # an attribute, not the property: read once per request
        self.loop = loop
        self.fds = FdCache(cfg.server.fd_cache_size, cfg.server.fd_cache_inactive_s)
        self.dates = DateCache()
        self.server_line = f"Server: oca/{__version__}\r\n".encode()
        self.cache_control = f"Cache-Control: {cfg.server.cache_control}\r\n".encode()
        self.keys = cfg.signing.secrets()
        # Keys change only by a reload, which replaces the workers, so this
        # cache never outlives its key table (keys_changed is not needed here).
        self.clock = clock  # unix seconds, for signatures' expiry
        self.tokens = VerifiedTokens()
        self.judged = JudgedTargets()  # content targets that parsed and passed signing, until they expire
        self.signing_required = cfg.signing.required
        self.skew = cfg.signing.clock_skew_s
        self.max_ranges = cfg.server.max_ranges
        # The compiled head of a plain 200 or single-range 206, or None (oca.http.speedups).
        self.file_head = speedups.file_head
        self.control_policy = control.ControlPolicy.from_config(cfg.server.control_allow, cfg.server.control_token)
        self.tasks_down = tasks_down  # this worker's supervised tasks that are down: name → reason
        self.tally = Tally(cfg.popularity.max_ids)  # requests per content id since the last flush
        self.task_failures = task_failures
        self._inventory_cache: dict[tuple, bytes] = {}  # (kind, ..., generation) → body; only the current generation
        self._building: dict[tuple, asyncio.Future] = {}  # the same keys, while a thread builds them
        self._withdrawing: set[str] = set()
        self.shutting_down = False
        self.started_s = time.time()
        # Set by the worker when [tls] is configured: {"not_after_s": float | None, "ktls": str}.
        self.tls_info: dict | None = None
        self._tls_refusal: tuple[float, str] = (0.0, "")  # (refused at, why), read once per refusal

    # ------------------------------------------------------------ plumbing

    def error_response(self, status: int, reason: str, close: bool, extra: bytes = b"") -> Response:
        body = (reason + "\n").encode("utf-8", "replace")
        head = build_head(status, self.dates.get(), self.server_line + _ERROR_FIELDS + extra, len(body), close)
        return Response(status, head, [body], len(body), close)

    def _simple(self, status: int, content_type: str, body: bytes, req: Request, extra: bytes = b"") -> Response:
        close = not req.keep_alive
        fields = self.server_line + f"Content-Type: {content_type}\r\n".encode() + b"Cache-Control: no-store\r\n" + extra
        head = build_head(status, self.dates.get(), fields, len(body), close)
        return Response(status, head, [] if req.method == "HEAD" else [body], len(body), close)

    def finished(self, req: Request, conn: Any, resp: Response | None, body_bytes: int, complete: bool) -> None:
        status = 0
        if resp is not None:
            status = resp.status
            held = resp.held
            if held is not None:
                resp.held = None
                self.fds.release(held)  # closes the descriptor if it was evicted meanwhile
        duration = self.loop.time() - req.started if req.started else 0.0
        if complete:
            self.stats.observe(status, duration, body_bytes)
        else:
            self.stats.observe(499 if status < 500 else status, duration, body_bytes)
            status = 499
        if self.log_enabled:
            h = req.headers
            self.log.log(
                conn.peer, req.method or "-", req.target.decode("latin-1") if req.target else "-", req.version,
                status, body_bytes, h.get("referer", ""), h.get("user-agent", ""), duration, time.time(),
            )

    # ------------------------------------------------------------ routing

    def handle(self, req: Request, conn: Any) -> Response | asyncio.Future:
        path = req.path
        method = req.method
        if path.startswith("/content/"):
            if method == "GET" or method == "HEAD":
                return self.content(req, path)
            if method == "OPTIONS":
                return self.preflight(req)
            return self.error_response(405, f"method {method} not allowed", not req.keep_alive, b"Allow: GET, HEAD, OPTIONS\r\n")
        if path in control.CONTROL_PATHS:
            if method not in ("GET", "HEAD"):
                return self.error_response(405, f"method {method} not allowed", not req.keep_alive, b"Allow: GET, HEAD\r\n")
            refusal = control.control_refusal(conn.peer, req.headers.get("authorization"), self.control_policy)
            if refusal is not None:
                return self.error_response(403, refusal, not req.keep_alive)
            try:
                if path == "/health":
                    return self.health(req)
                if path == "/metrics":
                    return self.metrics(req)
                if path == "/routes":
                    return self.routes(req)
                if path == "/popularity":
                    return self.popularity(req)
                return self.inventory(req)
            except control.QueryError as exc:
                return self.error_response(400, str(exc), not req.keep_alive)
        if method == "OPTIONS" and path == "*":
            return self.preflight(req)
        if not path.startswith("/"):
            return self.error_response(400, "malformed request target", not req.keep_alive)
        return self.error_response(404, "no such path", not req.keep_alive)

    def preflight(self, req: Request) -> Response:
        close = not req.keep_alive
        head = build_head(204, self.dates.get(), self.server_line + _PREFLIGHT_FIELDS, 0, close)
        return Response(204, head, [], 0, close)

    # ------------------------------------------------------------ content

    def content(self, req: Request, path: str) -> Response:
        close = not req.keep_alive
        now_s = self.clock()
        # A target already judged good (oca.server.targets): one probe instead
        # of parsing the path and checking the signature again.
        judged = self.judged.entries.get(req.target)
        if judged is not None and now_s <= judged[2]:
            content_id, path_range = judged[0], judged[1]
        else:
            try:
                content_id, path_range = parse_content_path(path)
            except PathError as exc:
                return self.error_response(400, str(exc), close)
            good_until_s = math.inf
            if self.signing_required or has_signature(req.query):
                verdict = self.tokens.verify_query(content_id, req.query, self.keys, now_s, self.skew)
                if not verdict.ok:
                    return self.error_response(verdict.status, verdict.reason, close)
                expiry_s = self.tokens.expiry_of(content_id, req.query)
                good_until_s = -math.inf if expiry_s is None else expiry_s + self.skew
            self.judged.remember(req.target, content_id, path_range, good_until_s)
        # Request counters (oca.server.popularity): one dict lookup, flushed off the loop.
        counted = self.tally.counts.get(content_id)
        if counted is None:
            counted = self.tally.slot(content_id) or [0, 0]
        counted[0] += 1
        loc = self.store.lookup(content_id)
        if loc is None:
            return self.error_response(404, "no such content on this appliance", close)
        entry = self.fds.get(loc.path)
        if entry is None:
            try:
                entry = self.fds.open(loc.path, loc.size, lambda fd, size: self._make_entry(fd, size, content_id, loc.checksum, loc.mtime_s, loc.store_uuid))
            except SizeMismatch as exc:
                self._withdraw(content_id, loc.path)
                return self.error_response(503, f"content unavailable: {exc.args[0].split(': ', 1)[-1]}", close)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP):
                    # Gone, or a symbolic link (never followed): the index is wrong about this id.
                    self._withdraw(content_id, loc.path)
                if exc.errno != errno.ELOOP:
                    self._file_error(loc.store_uuid, exc, "opening")
                return self.error_response(503, "content unavailable: store error", close)
        entry.used = self.loop.time()
        resp = self._content_response(req, entry, path_range, close)
        if resp.status < 300:
            counted[1] += resp.body_bytes  # the content's bytes, not an error's text
        if entry.retired and resp.held is None:
            self.fds.unused(entry)  # a body-less answer never holds the descriptor
        return resp

    def _content_response(self, req: Request, entry: CachedFile, path_range: tuple[int, int] | None, close: bool) -> Response:
        size = entry.size
        headers = req.headers
        if path_range is not None:
            decision = ranges.decide_path_range(path_range[0], path_range[1], size)
            if decision.status == 200:
                start, end = decision.ranges[0]
                return self._file_response(req, entry, 200, start, end - start + 1, b"")
        else:
            file_head = self.file_head
            if file_head is not None and req.method == "GET":
                # The compiled fast path: the same answer as the lines below for what it takes.
                got = file_head(headers, size, self.dates.get(), entry.block, close, self.max_ranges)
                if got is not None:
                    status, head, offset, count = got
                    resp = Response(status, head, [(entry.fd, offset, count)], count, close)
                    self._hold(resp, entry)
                    return resp
            if headers.keys().isdisjoint(CONDITIONAL_HEADERS):
                range_value = headers.get("range")
                if range_value is None:
                    return self._file_response(req, entry, 200, 0, size, b"")
                if req.method == "GET" and self.max_ranges > 0:
                    m = _SIMPLE_RANGE.fullmatch(range_value)
                    if m is not None:
                        start = int(m[1])
                        last = int(m[2])
                        if start <= last and start < size:
                            end = last if last < size else size - 1
                            return self._file_response(req, entry, 206, start, end - start + 1, b"Content-Range: bytes %d-%d/%d\r\n" % (start, end, size))
            rep = ranges.Representation(size, entry.etag, entry.last_modified_s)
            decision = ranges.decide(
                req.method, headers.get("range"), headers.get("if-range"), headers.get("if-none-match"),
                headers.get("if-modified-since"), headers.get("if-match"), headers.get("if-unmodified-since"),
                rep, self.max_ranges,
            )
        status = decision.status
        if status == 200:
            return self._file_response(req, entry, 200, 0, size, b"")
        if status == 206:
            if len(decision.ranges) == 1:
                start, end = decision.ranges[0]
                return self._file_response(req, entry, 206, start, end - start + 1, b"Content-Range: %s\r\n" % ranges.content_range(start, end, size).encode())
            return self._multipart(req, entry, decision.ranges)
        if status == 304:
            fields = self.server_line + f"ETag: {entry.etag}\r\nLast-Modified: {entry.last_modified}\r\n".encode() + self.cache_control + CORS
            return Response(304, build_head(304, self.dates.get(), fields, None, close), [], 0, close)
        if status == 416:
            return self.error_response(416, "range not satisfiable", close, f"Content-Range: {ranges.unsatisfied_range(size)}\r\n".encode())
        return self.error_response(status, decision.reason or REASONS.get(status, "error"), close)

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

    def _file_response(self, req: Request, entry: CachedFile, status: int, offset: int, count: int, more: bytes) -> Response:
        """`more`: the Content-Range line, or b"" (formatted by the caller: one bytes % on the fast path)."""
        close = not req.keep_alive
        head = build_head(status, self.dates.get(), entry.block, count, close, more)
        if req.method == "HEAD" or count == 0:
            return Response(status, head, [], 0, close)
        resp = Response(status, head, [(entry.fd, offset, count)], count, close)
        self._hold(resp, entry)
        return resp

    def _multipart(self, req: Request, entry: CachedFile, chosen: tuple[tuple[int, int], ...]) -> Response:
        close = not req.keep_alive
        boundary = os.urandom(12).hex()
        parts, closing, total = ranges.multipart_layout(chosen, entry.size, entry.content_type, boundary)
        fields = entry.block.replace(f"Content-Type: {entry.content_type}\r\n".encode(), f"Content-Type: multipart/byteranges; boundary={boundary}\r\n".encode())
        head = build_head(206, self.dates.get(), fields, total, close)
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
        """`resp` uses `entry`'s descriptor until `finished` (or `file_failed`) lets it go."""
        entry.refs += 1
        resp.held = entry

    def file_failed(self, resp: Response, exc: OSError) -> None:
        """Sending `resp`'s body failed on the file's side (the connection is being aborted)."""
        entry = resp.held
        if not isinstance(entry, CachedFile):
            return
        self.stats.add(S.C_SENDFILE_ERRORS)
        resp.held = None
        self.fds.release(entry)
        self._file_error(entry.store_uuid, exc, "sending")

    def _file_error(self, store_uuid: str, exc: OSError, doing: str) -> None:
        disk = self.store.disk(store_uuid)
        if disk is None:
            return
        self.fds.drop_store(store_uuid)

        def report() -> None:
            self.store.report_io_error(disk, exc, doing)

        self.loop.run_in_executor(None, report)

    def _withdraw(self, content_id: str, path: str) -> None:
        """Take `content_id` out of service (in a thread) while the index still maps it to `path`."""
        if content_id in self._withdrawing:
            return
        self._withdrawing.add(content_id)

        def work() -> None:
            self.store.withdraw(content_id, path)

        def done(fut: asyncio.Future) -> None:
            self._withdrawing.discard(content_id)
            fut.exception()  # retrieved: a failed withdrawal is retried by the next request

        self.loop.run_in_executor(None, work).add_done_callback(done)

    # ------------------------------------------------------------ control

    def task_conditions(self) -> list[dict]:
        """A `degraded` condition for each long-lived task that is down, in any of the server's processes."""
        out = []
        own = self.tasks_down()
        for name, reason in sorted(own.items()):
            out.append({"status": "degraded", "reason": f"task {name} is down in worker slot {self.stats.slot}: {reason}"})
        for slot, bits in enumerate(self.stats.counters[S.C_TASKS_DOWN :: S.SLOT_COUNTERS].tolist()):
            if not bits or slot == self.stats.slot:
                continue
            for name in S.bit_names(bits, S.WORKER_TASKS):
                out.append({"status": "degraded", "reason": f"task {name} is down in worker slot {slot}"})
        for name in S.bit_names(int(self.stats.header[S.H_PARENT_TASKS_DOWN]), S.PARENT_TASKS):
            out.append({"status": "degraded", "reason": f"task {name} is down in the parent process"})
        return out

    def health_document(self) -> dict:
        cfg = self.cfg
        records = self.store.store_records()
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
        conditions.extend(self.task_conditions())
        routes_down = self.store.routes().down
        if routes_down:
            conditions.append({"status": "degraded", "reason": f"task {routes_down} (parent process)"})
        tls_doc = self._tls_health(conditions) if self.tls_info is not None else None
        if self.store.drain() is not None:
            conditions.append({"status": "draining", "reason": "drained by operator"})
        if working == 0:
            conditions.append({"status": "down", "reason": "no working store"})
        if self.shutting_down:
            conditions.append({"status": "down", "reason": "shutting down"})
        order = {"ok": 0, "degraded": 1, "draining": 2, "down": 3}
        status = max((c["status"] for c in conditions), key=order.__getitem__, default="ok")
        h = self.stats.header
        nic_util = h[S.H_NIC_UTIL]
        fill = self.store.fill_status()
        return {
            "status": status,
            "conditions": conditions,
            "appliance": cfg.appliance.id,
            "site": cfg.appliance.site,
            "version": __version__,
            # The hot path in use (oca.http.speedups): "compiled", or "pure" and why.
            "hot_path": {"kind": speedups.HOT_PATH, "reason": speedups.HOT_PATH_REASON},
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
            "generation": self.store.generation(),
            # With `generation`, lets a poller skip /routes and /inventory when neither changed.
            "routes_generation": self.store.routes().generation,
            **({"tls": tls_doc} if tls_doc is not None else {}),
            "fill": None if fill.last is None and fill.current is None else {
                "last": None if fill.last is None else dict(fill.last),
                "current": None if fill.current is None else dict(fill.current),
            },
        }

    def _tls_health(self, conditions: list) -> dict:
        from oca.tls import expiry_condition, judge_pair, read_pair_ssl

        info = self.tls_info or {}
        tls = self.cfg.tls
        not_after = info.get("not_after_s")
        now = time.time()
        if not_after is not None and tls is not None:
            reason = expiry_condition(not_after, now, tls.expiry_warn_days)
            if reason is not None:
                conditions.append({"status": "degraded", "reason": reason})
        refused_at = self.stats.header[S.H_TLS_RELOAD_REFUSED_AT]
        refusal = ""
        if refused_at > 0 and tls is not None:
            if self._tls_refusal[0] != refused_at:
                # The parent logged the full reason; the files are judged again
                # here once per refusal (two small reads) to say why.
                why = judge_pair(read_pair_ssl(tls.cert_file, tls.key_file), now) or "see the server log"
                self._tls_refusal = (refused_at, why)
            refusal = self._tls_refusal[1]
            conditions.append({"status": "degraded", "reason": f"TLS reload refused, the previous key pair is still served: {refusal}"})
        return {
            "not_after": not_after,
            "days_left": None if not_after is None else round((not_after - now) / 86400, 2),
            "reload_refused": refusal or None,
            "ktls": info.get("ktls"),
            "session_tickets": info.get("session_tickets"),
            "ticket_keys": info.get("ticket_keys"),  # configured, decrypting, status ("ok" or why fewer decrypt)
            "idle_buffers": info.get("idle_buffers"),  # "released" (oca.sslmem), or "kept: <why>"
            "key_file_warning": info.get("key_file_warning"),  # a note: the key is readable by others (status unchanged)
        }

    def health(self, req: Request) -> Response:
        doc = self.health_document()
        body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        return self._simple(503 if doc["status"] == "down" else 200, "application/json", body, req)

    def metrics_snapshot(self) -> "MetricsSnapshot":
        # Imported on first scrape: prometheus-client costs a worker about 3 MiB.
        from oca.server.metrics import MetricsSnapshot, StoreFigures, TlsFigures

        records = self.store.store_records()
        figures = []
        for disk in self.store.disks:
            rec = records.get(disk.uuid or "")
            cap = disk.capacity()
            up = (rec.state if rec is not None else disk.state) == "ok"
            figures.append(StoreFigures(disk.path, up, cap.total_bytes, cap.used_bytes, cap.free_bytes, cap.reserve_bytes))
        totals = self.stats.totals()
        failures = {f"worker.{n}": 0 for n in S.WORKER_TASKS}
        failures["worker.sweep"] = totals[S.C_TASK_FAILURES]
        failures["parent"] = int(self.stats.header[S.H_PARENT_TASK_FAILURES])
        last = self.store.fill_status().last
        return MetricsSnapshot(
            __version__, self.cfg.appliance.id, self.cfg.appliance.site, tuple(totals), tuple(self.stats.header),
            tuple(figures), self.store.generation(), self.store.drain() is not None,
            dict(last) if last is not None else {}, failures,
            None if self.tls_info is None else TlsFigures(
                self.tls_info.get("not_after_s"), str(self.tls_info.get("ktls", "")),
                self.stats.header[S.H_TLS_RELOAD_REFUSED_AT] > 0, str(self.tls_info.get("session_tickets") or ""),
                self.tls_info.get("ticket_keys"),
            ),
            speedups.HOT_PATH,
        )

    def metrics(self, req: Request) -> Response:
        from oca.server.metrics import render

        body = render(self.metrics_snapshot())
        return self._simple(200, "text/plain; version=0.0.4; charset=utf-8", body, req)

    def routes(self, req: Request) -> Response:
        """The client prefixes this appliance serves (static + kernel), with a generation."""
        since = control.parse_routes_query(req.query)
        current = self.store.routes()
        body = routes_answer(self.cfg.appliance.id, self.cfg.appliance.site, current.generation, since, current.prefixes)
        return self._simple(200, "application/json", body, req)

    def inventory(self, req: Request) -> Response | asyncio.Future:
        q = control.parse_inventory_query(req.query)
        generation = self.store.generation()
        appliance = self.cfg.appliance.id
        ctype = CONTENT_TYPES[q.form]
        if q.since is not None and q.since == generation:
            return self._simple(200, ctype, inventory_unchanged(appliance, generation, q.since, q.form), req)
        key: tuple = ("full", q.form, generation) if q.since is None else ("delta", q.form, q.since, q.limit, q.paged, generation)
        body = self._inventory_cache.get(key)
        if body is not None:
            return self._simple(200, ctype, body, req)
        store = self.store

        def build() -> bytes:
            # A thread with its own read transactions: the serving loop never walks the index.
            if q.since is not None:
                changes = store.changes_since(q.since, q.limit)
                if changes.kind == "unchanged":
                    return inventory_unchanged(appliance, changes.generation, q.since, q.form)
                if changes.kind == "delta":
                    return inventory_delta(appliance, changes.generation, q.since, changes.added, changes.removed,
                                           changes.latest if q.paged else None, changes.more if q.paged else None, q.form)
            gen, ids = store.inventory()
            return inventory_full(appliance, gen, ids, q.form)

        shared = self._building.get(key)
        if shared is None:
            shared = self.loop.run_in_executor(None, build)
            self._building[key] = shared

            def built(task: asyncio.Future) -> None:
                self._building.pop(key, None)
                if not task.cancelled() and task.exception() is None:
                    if len(self._inventory_cache) >= 64 or any(k[-1] != key[-1] for k in self._inventory_cache):
                        self._inventory_cache.clear()  # keep only the current generation's answers
                    self._inventory_cache[key] = task.result()

            shared.add_done_callback(built)
        fut = self.loop.create_future()

        def answer(task: asyncio.Future) -> None:
            if fut.done():
                return
            try:
                fut.set_result(self._simple(200, ctype, task.result(), req))
            except Exception as exc:  # index trouble: answer, don't hang
                fut.set_result(self.error_response(503, f"inventory unavailable: {type(exc).__name__}", True))

        shared.add_done_callback(answer)
        return fut

    def popularity(self, req: Request) -> asyncio.Future:
        """The request counters per content id: totals and since the fill agent's mark (flushed counts)."""
        top = control.parse_popularity_query(req.query)
        store = self.store
        head = {"appliance": self.cfg.appliance.id, "site": self.cfg.appliance.site}

        def build() -> bytes:
            # A thread with its own read transaction: the serving loop never walks the counters.
            snap = store.demand()
            rows = sorted(snap.records.items(), key=lambda kv: (-kv[1].requests_since_mark, -kv[1].requests, kv[0]))
            if top is not None:
                rows = rows[:top]
            doc = {
                **head, "time": time.time(), "created_s": snap.created_s,
                "mark": snap.mark.number, "mark_s": snap.mark.since_s,
                "fields": ["id", "requests", "bytes", "requests_since_mark", "bytes_since_mark", "last_s"],
                "count": len(snap.records),
                "rows": [[cid, d.requests, d.bytes, d.requests_since_mark, d.bytes_since_mark, d.last_s] for cid, d in rows],
            }
            return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

        fut = self.loop.create_future()

        def answer(task: asyncio.Future) -> None:
            if fut.done():
                return
            try:
                fut.set_result(self._simple(200, "application/json", task.result(), req))
            except Exception as exc:  # counters trouble: answer, don't hang
                fut.set_result(self.error_response(503, f"popularity unavailable: {type(exc).__name__}", True))

        self.loop.run_in_executor(None, build).add_done_callback(answer)
        return fut
