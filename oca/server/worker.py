"""A worker process: one event loop serving the listening sockets it inherited.

Rules kept here:
- Started by the parent (`oca.server.main`) with fork+exec, so every worker
  runs the code on disk at the time it starts (a reload after an upgrade
  runs the new code) and nothing from the parent's memory, such as an LMDB
  environment, crosses a fork.
- The event loop is made here (uvloop by default) and the index is opened
  here, after the process started.
- Once a second a sweep closes connections past their deadline, closes
  idle cached descriptors, flushes the access log and publishes the number
  of open connections. The sweep runs under `oca.supervise.Supervisor`: one
  that raises is logged with its traceback, counted (`oca_task_failures`),
  shown as down in every worker's `/health` (through the shared block)
  and restarted with back-off.
- HTTPS sockets (`--tls-fds`) are served with an SSLContext built here
  from `[tls]` (`oca.tls.make_context`). Each TCP connection on them is
  counted towards `max_connections` from accept, through its handshake
  (`TlsGuarded`), and the handshake must finish within
  `header_timeout_s` (`ssl_handshake_timeout`). The connection then
  becomes a `TlsConnection` (the copying send path, `oca.http.tlsconn`).
  Content requests on plain sockets are answered with 308 by `Redirector`
  when `[tls] redirect_http` is set. The session-ticket keys the parent
  shares (`--ticket-key-fd`) are installed in that context
  (`oca.tickets.install`); if the previous keys cannot be, the first key
  alone is; if no key can be, the context keeps its own, and /health and
  /metrics say why (resumption then only on this worker). Idle HTTPS
  connections give back their TLS write buffer (`oca.sslmem`), or /health
  says why not.
- A second supervised task flushes the request counters
  (`oca.server.popularity`) every `[popularity] flush_s`, and once more
  after serving ends.
- SIGTERM (or SIGINT): stop accepting, close idle connections, let
  responses in flight finish until `shutdown_timeout_s`, then exit.
  SIGUSR1 reopens the access log; SIGHUP flushes it. The worker exits by itself if its parent
  dies.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import signal
import socket
import sys
import time

from oca.config import load_config
from oca.errors import OcaError
from oca.http.protocol import HttpConnection, Limits
from oca.http.tlsconn import TlsConnection, shrink_asyncio_read_buffer
from oca.server import popularity
from oca.server import stats as S
from oca.server.accesslog import AccessLog
from oca.server.app import App
from oca.store.content import ContentStore
from oca.supervise import Supervisor
from oca import sslmem, tickets
from oca.tls import ktls_status, make_context, read_pair_ssl, stat_key_file

PR_SET_PDEATHSIG = 1
# Tests only: while the file named by OCA_TEST_FAULT_SWEEP exists, the sweep
# raises, so the supervision of a real worker can be seen at work.
_FAULT_SWEEP = os.environ.get("OCA_TEST_FAULT_SWEEP")


def _log_line(slot: int):
    def log(msg: str) -> None:
        print(f"oca-server worker {slot}[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)

    return log


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cfg = load_config(args.config)
        self.conns: set[HttpConnection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.handshaking: dict[TlsConnection, float] = {}  # HTTPS connections in their handshake → accept time
        self.trimmer: sslmem.BioTrimmer | None = None  # gives idle HTTPS connections' write buffers back
        self.stopping = False
        self.parent = args.parent

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        self.stats = S.SharedStats(self.args.stats_fd, self.args.slots, self.args.slot)
        self.store = ContentStore.open(cfg, writable=False)
        try:
            self.store.open_counters()
        except OcaError as exc:  # serving goes on; the flush loop tries again and /health shows it down
            _log_line(self.args.slot)(f"request counters: {exc}")
        self.log = AccessLog(cfg.server.access_log, cfg.server.access_log_format)
        self.supervisor = Supervisor(_log_line(self.args.slot), on_failure=self._task_failed)
        self.app = App(cfg, self.store, self.stats, self.log, loop, tasks_down=self.supervisor.down, task_failures=self.supervisor.failures)
        served = make_context(cfg.tls, time.time(), read_pair_ssl) if cfg.tls is not None and self.args.tls_fds else None
        if cfg.tls is not None:
            shared, ticket_keys = self._share_tickets(served.context) if served else (None, None)
            self.app.tls_info = {"not_after_s": served.not_after_s if served else None, "ktls": ktls_status(),
                                 "session_tickets": shared, "ticket_keys": ticket_keys,
                                 "idle_buffers": self._trim_idle_buffers(served.context) if served else None,
                                 "key_file_warning": stat_key_file(cfg.tls.key_file)}
        sc = cfg.server
        limits = Limits(
            header_timeout_s=sc.header_timeout_s,
            keepalive_timeout_s=sc.keepalive_timeout_s,
            send_timeout_s=sc.send_timeout_s,
            max_request_line_bytes=sc.max_request_line_bytes,
            max_header_bytes=sc.max_header_bytes,
            max_headers=sc.max_headers,
            max_pipelined=sc.max_pipelined,
        )
        stats = self.stats
        conns = self.conns
        max_conns = sc.max_connections

        def on_stat(index: int, amount: int) -> None:
            stats.add(index, amount)

        def factory() -> asyncio.Protocol:
            return Guarded(self.app, limits, conns, loop, on_stat, max_conns, stats)

        plain_factory = factory
        if cfg.tls is not None and cfg.tls.redirect_http and self.args.tls_fds:
            port = cfg.tls.listen[0].rsplit(":", 1)[1]
            redirector = Redirector(self.app, port)

            def plain_factory() -> asyncio.Protocol:
                return Guarded(redirector, limits, conns, loop, on_stat, max_conns, stats)

        for fd in self.args.listen_fds:
            sock = socket.socket(fileno=fd)
            server = await loop.create_server(plain_factory, sock=sock, backlog=sc.backlog)
            self.servers.append(server)
        if served is not None:
            ctx = served.context

            handshaking = self.handshaking

            def tls_factory() -> asyncio.Protocol:
                refused = len(conns) + len(handshaking) >= max_conns or self.stopping
                conn = TlsGuarded(self.app, limits, conns, loop, on_stat, self, refused)
                if not refused:
                    handshaking[conn] = loop.time()
                return conn

            for fd in self.args.tls_fds:
                sock = socket.socket(fileno=fd)
                server = await loop.create_server(
                    tls_factory, sock=sock, backlog=sc.backlog, ssl=ctx, ssl_handshake_timeout=sc.header_timeout_s,
                )
                self.servers.append(server)
        self.done = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen)
        loop.add_signal_handler(signal.SIGHUP, self.log.flush)  # the parent reloads; nothing buffered is left behind
        self.supervisor.start("sweep", self.sweep)
        self.supervisor.start("popularity", lambda: popularity.flush(self.app.tally, self.store, cfg.popularity.flush_s))
        # Everything made so far (modules, config, the App, the context) lives
        # as long as the worker: move it out of the cyclic collector's sight,
        # so that each full collection walks only what connections made.
        gc.freeze()
        if self.args.ready_fd >= 0:
            try:
                os.write(self.args.ready_fd, b"R")
            except BrokenPipeError:
                # The parent is not waiting (a restart after a crash spawns with
                # wait_ready=False and closes its end; or it gave up waiting).
                # Nothing to report: keep serving instead of dying in a loop.
                pass
            finally:
                os.close(self.args.ready_fd)
        await self.done
        await self.supervisor.stop()
        try:  # serving has ended: what the last interval counted is written before the worker exits
            popularity.flush_now(self.app.tally, self.store)
        except OcaError as exc:
            _log_line(self.args.slot)(f"request counts of the last {cfg.popularity.flush_s:g} s lost: {exc}")
        self.log.close()
        self.app.fds.clear()
        stats.counters[stats.base + S.C_CONNECTIONS_OPEN] = 0
        return 0

    def _trim_idle_buffers(self, ctx) -> str:
        """'released', or 'kept: <why>' when idle HTTPS connections must keep their TLS write buffers."""
        try:
            self.trimmer = sslmem.BioTrimmer.create(ctx)
            TlsConnection.trim_bio = self.trimmer.trim
        except sslmem.MemoryControlUnavailable as exc:
            _log_line(self.args.slot)(f"idle HTTPS connections keep their TLS write buffers (~86 KiB each after a body): {exc}")
            return f"kept: {exc}"
        return "released"

    def _share_tickets(self, ctx) -> tuple[str, dict]:
        """('shared' or 'per-worker: <why>', what the ticket keys do) for the parent's keys in `ctx`.

        Several keys need the key callback; if it cannot be installed the first
        key alone still is (tickets under the previous keys then fall back to a
        full handshake), and the second part says why.
        """
        log = _log_line(self.args.slot)
        fd = self.args.ticket_key_fd
        keys: tuple[bytes, ...] = ()
        rotation: str | None = None
        try:
            if fd < 0:
                raise tickets.TicketKeyUnavailable("the parent handed no ticket key")
            try:
                keys = tickets.read_fd(fd)
            finally:
                os.close(fd)
                self.args.ticket_key_fd = -1
            try:
                tickets.install(ctx, keys)
            except tickets.TicketKeyUnavailable as exc:
                if len(keys) == 1:
                    raise
                rotation = f"previous keys ignored: {exc}"
                log(f"session tickets under the previous ticket keys will not resume ({exc}); the first key alone is used")
                tickets.install(ctx, keys[:1])
        except (tickets.TicketKeyUnavailable, OSError) as exc:
            log(f"session tickets stay per worker (resumption only on this worker): {exc}")
            return f"per-worker: {exc}", {"configured": len(keys), "decrypting": 0, "status": f"per-worker: {exc}"}
        decrypting = 1 if rotation else len(keys)
        return "shared", {"configured": len(keys), "decrypting": decrypting, "status": rotation or "ok"}

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.app.shutting_down = True
        for server in self.servers:
            server.close()
        for conn in list(self.conns):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        self.stop_deadline = loop.time() + self.cfg.server.shutdown_timeout_s

    def _task_failed(self, name: str) -> None:
        self.stats.add(S.C_TASK_FAILURES)
        self._publish_tasks_down()

    def _publish_tasks_down(self) -> None:
        self.stats.counters[self.stats.base + S.C_TASKS_DOWN] = S.task_bits(self.supervisor.down(), S.WORKER_TASKS)

    async def sweep(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        kinds = {"header": S.C_TIMEOUT_HEADER, "idle": S.C_TIMEOUT_IDLE, "send": S.C_TIMEOUT_SEND}
        self._publish_tasks_down()  # running again: this slot's bits clear
        while True:
            await asyncio.sleep(1.0 if not self.stopping else 0.1)
            now = loop.time()
            for conn in list(self.conns):
                kind = conn.expire(now)
                if kind in kinds:
                    stats.add(kinds[kind])
            self.app.fds.sweep(now)
            if self.trimmer is not None and self.trimmer.release_due():
                # Off the loop: it walks the C heap (0.3-0.9 ms typically, tens of ms
                # seen on a loaded box after thousands of trims).
                loop.run_in_executor(None, self.trimmer.release_freed)
            if self.handshaking:
                # Failed handshakes never reach connection_made; the transport
                # closed them by header_timeout_s (its handshake timeout).
                too_old = now - self.cfg.server.header_timeout_s - 2.0
                for conn in [c for c, t in self.handshaking.items() if t < too_old]:
                    del self.handshaking[conn]
            if _FAULT_SWEEP is not None and os.path.exists(_FAULT_SWEEP):
                raise RuntimeError(f"sweep fault injected by {_FAULT_SWEEP}")
            self.log.flush()
            stats.counters[stats.base + S.C_CONNECTIONS_OPEN] = len(self.conns)
            if os.getppid() != self.parent and not self.stopping:
                self.stop()
            if self.stopping:
                if not self.conns or now >= self.stop_deadline:
                    for conn in list(self.conns):
                        conn._abort()
                    if not self.done.done():
                        self.done.set_result(None)


class Guarded(HttpConnection):
    """A connection that counts itself and refuses to exceed max_connections."""

    __slots__ = ("_max", "_stats")

    def __init__(self, app, limits, registry, loop, on_stat, max_conns: int, stats: S.SharedStats):
        super().__init__(app, limits, registry, loop, on_stat)
        self._max = max_conns
        self._stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.registry) >= self._max:
            self._stats.add(S.C_REJECTED)
            transport.abort()
            return
        self._stats.add(S.C_CONNECTIONS_TOTAL)
        super().connection_made(transport)


class TlsGuarded(TlsConnection):
    """An HTTPS connection, counted towards max_connections from accept.

    The TLS transport (`create_server(ssl=..., ssl_handshake_timeout=
    header_timeout_s)`) calls the factory at accept and `connection_made`
    only once the handshake is done, so the worker counts the connections
    in their handshake itself (`Worker.handshaking`, accept time by
    connection). A handshake that fails never reaches `connection_made`:
    its entry is dropped by the sweep once `header_timeout_s` has passed,
    since the transport has closed it by then. One accepted beyond the
    limit still does its handshake (the factory cannot refuse a socket),
    then is reset at once.

    Rejected: `loop.start_tls` on a plain accepted transport, which would
    refuse before any crypto. uvloop starts reading right after the plain
    protocol's `connection_made`, so a ClientHello could reach the plain
    protocol before start_tls took the transport over (measured: 19 of 300
    handshakes stalled).
    """

    __slots__ = ("_worker", "_refused")

    def __init__(self, app, limits, registry, loop, on_stat, worker: "Worker", refused: bool):
        super().__init__(app, limits, registry, loop, on_stat)
        self._worker = worker
        self._refused = refused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        w = self._worker
        w.handshaking.pop(self, None)
        if self._refused or len(self.registry) >= w.cfg.server.max_connections:
            w.stats.add(S.C_REJECTED)
            transport.abort()
            return
        w.stats.add(S.C_CONNECTIONS_TOTAL)
        super().connection_made(transport)


class Redirector:
    """The handler of plain-HTTP connections under `[tls] redirect_http`.

    Content requests (`/content/...`) get 308 to the same path and query
    on the HTTPS port of the host they asked for; everything else (control
    endpoints, errors) is the App's answer, so monitoring keeps working on
    plain HTTP. Only plain sockets get this handler: nothing is added to
    the path of a server without redirect_http.
    """

    def __init__(self, app: App, https_port: str):
        self.app = app
        self.port = https_port
        self.error_response = app.error_response
        self.finished = app.finished

    def handle(self, req, conn):
        if not req.path.startswith("/content/"):
            return self.app.handle(req, conn)
        host = req.headers.get("host", "")
        if host.startswith("["):
            host = host[: host.find("]") + 1] if "]" in host else ""
        else:
            host = host.split(":", 1)[0]
        if not host or any(c in host for c in "\r\n /@?#"):
            return self.app.error_response(400, "a Host field is needed to redirect to HTTPS", not req.keep_alive)
        target = req.target.decode("latin-1")
        location = f"https://{host}{'' if self.port == '443' else ':' + self.port}{target}"
        return self.app.error_response(308, f"moved to {location}", not req.keep_alive, f"Location: {location}\r\n".encode("latin-1"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="oca-server-worker")
    p.add_argument("--config", required=True)
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--stats-fd", type=int, required=True)
    p.add_argument("--listen-fds", type=lambda s: [int(x) for x in s.split(",") if x], required=True)
    p.add_argument("--tls-fds", type=lambda s: [int(x) for x in s.split(",") if x], default=[])
    p.add_argument("--ready-fd", type=int, default=-1)
    p.add_argument("--ticket-key-fd", type=int, default=-1, help="a memfd holding the shared session-ticket key")
    p.add_argument("--parent", type=int, default=0, help="the parent's pid: exit if it is gone")
    args = p.parse_args(argv)
    _die_with_parent()
    if not args.parent:
        args.parent = os.getppid()
    elif os.getppid() != args.parent:
        # The parent died before prctl took effect: nobody will ever signal us.
        sys.exit(0)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        worker = Worker(args)
        if worker.cfg.server.event_loop == "uvloop":
            import uvloop

            code = uvloop.run(worker.run())
        else:
            if worker.cfg.tls is not None:
                shrink_asyncio_read_buffer()
            code = asyncio.run(worker.run())
    except OcaError as exc:
        print(f"oca-server worker {args.slot}: error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
