"""`oca-server`: the parent process that owns the sockets and the workers.

Rules kept here:
- One parent. It validates the config, raises its open-files limit as far
  as the hard limit allows, attaches the stores once (initialising new empty
  ones, so workers never race to do it), binds every `[server] listen`
  address and starts `[server] workers` workers as its direct children, in
  its own process group.
- Balance: every address has one listening socket per worker position
  (a "group"), all bound with SO_REUSEPORT, so the kernel hashes each new
  connection to one group and the workers get even shares. (One socket
  accepted from by all workers gave 2:1 splits: the busier worker wins
  more accept races.) The first socket of an address is bound before
  SO_REUSEPORT is set, so an address another process holds is refused as
  before. The parent keeps every group's socket open for its whole life:
  a worker that dies or is replaced leaves its queued connections waiting
  in the socket's backlog for the next worker of that group, never reset.
  A group's extra sockets are bound by the parent but listened on only by
  the worker (its `create_server` calls listen), so no connection is
  hashed to a group before a worker has opened it. If a dead worker's
  replacement cannot be spawned, its groups' sockets stop listening
  (shutdown SHUT_RD: still bound, out of the SO_REUSEPORT group) so new
  connections go to the live workers; what was queued on them is reset,
  or moved to the other sockets where `net.ipv4.tcp_migrate_req = 1`. The
  replacement, once spawned, listens on them again. Groups are never
  removed while their address is configured: after a reload lowers
  `workers`, the surplus groups are shared out among the remaining workers
  (group j to worker j mod workers).
- A worker that dies is restarted (with a pause if they keep dying). A
  spawn that fails (fork or exec refused: EAGAIN, EMFILE, ENOMEM, the
  interpreter gone) never ends the parent: the slot is remembered and
  spawned again with back-off, and the parent's `/health` shows `spawn`
  down meanwhile.
- Every step of the parent's loop (reap, spawn, sample, reload, routes)
  runs under `LoopGuard`, the synchronous loop's `Supervisor`: an exception
  is logged with its traceback and counted, the step is retried with the
  same back-off, and while it is down the workers' `/health` names it
  (bits in the shared block's header).
- SIGTERM/SIGINT: workers stop accepting and finish what they are sending,
  up to `shutdown_timeout_s`; then the parent exits.
- SIGHUP: reload the config and replace the workers one at a time; each
  new worker is serving before the old one is told to stop, and the old one
  finishes its responses. Workers are exec'd afresh, so a code upgrade
  followed by SIGHUP needs no downtime. A config that does not load is
  reported and the running workers stay. A refused reload changes nothing:
  the config, the sockets and the workers stay as they were. Stores the new
  config adds are attached (new empty ones initialised) by the parent
  before any new worker starts. The shared block has a slot for every
  worker `[server] workers` allows, twice over, so raising `workers` never
  blocks later reloads.
- `[tls]`: the parent binds the HTTPS addresses too and checks the key
  pair (`oca.tls.make_context`) before it starts, and at every SIGHUP
  before any worker is replaced: a pair that does not load refuses the
  reload (the workers keep the pair they loaded), is logged naming the
  file and the reason, and is flagged in the shared block so `/health`
  says so until a reload succeeds. Each worker builds its own SSLContext
  from the files after exec.
- Session tickets: the parent holds the ticket keys (`[tls] ticket_key_file`
  and `previous_ticket_key_files`, or random bytes made at start and kept
  across reloads) in a sealed memfd every worker inherits (`oca.tickets`),
  so a client resumes on any worker. A key file that cannot be read
  refuses the start, or the reload, naming the key and the file.
- SIGUSR1 is passed to the workers (they reopen the access log).
- Once a second the parent samples load (bytes/s out, CPU, NIC use) into
  shared memory for `/health` and `/metrics`.
- Runtime state lives in an anonymous memfd and the index, never in fixed
  paths, so several instances on one machine cannot collide.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

from oca import __version__
from oca.config import DEFAULT_CONFIG_PATH, Config, load_config, parse_host_port
from oca.sdnotify import notify_systemd
from oca.errors import OcaError
from oca.routes import RoutesManager
from oca.server import stats as S
from oca.store.content import ContentStore
from oca.store.index import Index
from oca.supervise import restart_delay_s
from oca import tickets
from oca.tls import make_context, stat_key_file

MAX_WORKERS = 256  # [server] workers' upper bound (oca.config)
SLOTS = 2 * MAX_WORKERS + 2  # every worker of a reload, and every one it replaces

READY_TIMEOUT_S = 30.0
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} oca-server[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def bind_sockets(listen: tuple[str, ...], backlog: int, key: str = "server.listen") -> dict[str, socket.socket]:
    socks = {}
    for item in listen:
        host, port = parse_host_port(item)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            infos = socket.getaddrinfo(host, port, family if ":" in host else socket.AF_UNSPEC, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OcaError(f"{key}: cannot resolve {item!r}: {exc}") from None
        fam, _type, _proto, _canon, addr = infos[0]
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(addr)  # without SO_REUSEPORT yet: an address held by anyone else is refused
        except OSError as exc:
            sock.close()
            for s in socks.values():
                s.close()
            raise OcaError(f"{key}: cannot bind {item}: {exc.strerror}") from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the groups' sockets join it
        sock.listen(backlog)
        sock.setblocking(False)
        sock.set_inheritable(True)
        socks[item] = sock
    return socks


def bind_group_socket(first: socket.socket) -> socket.socket:
    """Another socket on `first`'s address, in its SO_REUSEPORT group once listened on.

    Bound, not listening: the worker that serves it listens (see the module's rules).
    """
    sock = socket.socket(first.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if first.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(first.getsockname())
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def tcp_migrate_req() -> bool:
    """Whether the kernel moves a closed SO_REUSEPORT listener's queue to its group (Linux 5.14+)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as fh:
            return fh.read().strip() == "1"
    except OSError:
        return False


def groups_of(position: int, workers: int, groups: int) -> list[int]:
    """The socket groups the worker at `position` (of `workers`) accepts from: j mod workers == position."""
    return list(range(position, max(groups, workers), workers))


class LoopGuard:
    """The parent's synchronous loop's equivalent of `oca.supervise.Supervisor`.

    `run(name, step)` calls `step()`. If it raises, the traceback is logged,
    the failure counted (shared header, `oca_task_failures`), the task marked
    down (its bit in the header) and `step` kept to be retried when its
    back-off (`restart_delay_s`) has passed: `due()` tells the loop when,
    and `retry(now)` runs what is due. A success clears the mark. Time is
    passed in, so the rules are testable without sleeping.
    """

    def __init__(self, stats: S.SharedStats, log_fn=None, first_s: float = 0.5, max_s: float = 30.0):
        self.stats = stats
        self.log = log_fn or log
        self.first_s = first_s
        self.max_s = max_s
        self.in_a_row: dict[str, int] = {}
        self.pending: dict[str, tuple[float, object]] = {}  # name → (retry at, step)
        self.reasons: dict[str, str] = {}

    def run(self, name: str, step, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the parent's loop must not die
            import traceback

            n = self.in_a_row.get(name, 0) + 1
            self.in_a_row[name] = n
            delay = restart_delay_s(n, self.first_s, self.max_s)
            self.pending[name] = (now + delay, step)
            self.reasons[name] = f"{type(exc).__name__}: {exc}"
            self.stats.header[S.H_PARENT_TASK_FAILURES] += 1
            self._publish()
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
            self.log(f"task {name} failed ({n} in a row), retrying in {delay:.1f} s:\n{tb}")
            return False
        if name in self.pending or name in self.in_a_row:
            self.pending.pop(name, None)
            self.in_a_row.pop(name, None)
            self.reasons.pop(name, None)
            self._publish()
        return True

    def due(self) -> float | None:
        return min((t for t, _ in self.pending.values()), default=None)

    def retry(self, now: float) -> None:
        for name, (at, step) in list(self.pending.items()):
            if at <= now and name in self.pending:
                self.run(name, step, now)  # type: ignore[arg-type]

    def down(self) -> dict[str, str]:
        return dict(self.reasons)

    def _publish(self) -> None:
        self.stats.header[S.H_PARENT_TASKS_DOWN] = float(S.task_bits(self.reasons, S.PARENT_TASKS))


@dataclass
class WorkerProc:
    proc: subprocess.Popen
    slot: int
    started: float
    position: int = 0  # which socket groups it accepts from (groups_of)
    retiring: bool = False
    ready: bool = False


@dataclass
class Master:
    config_path: str
    cfg: Config
    socks: dict[str, socket.socket]
    stats: S.SharedStats
    workers: list[WorkerProc] = field(default_factory=list)
    crash_times: list[float] = field(default_factory=list)
    stopping: bool = False
    index: Index | None = None  # the parent's own index (routes, store attach on reload)
    missing: list[int] = field(default_factory=list)  # slots whose spawn failed, to spawn again
    tls_socks: dict[str, socket.socket] = field(default_factory=dict)  # [tls] listen
    ticket_keys: tuple[bytes, ...] = ()  # the session-ticket keys the workers share, the encrypting one first
    ticket_fd: int = -1  # a sealed memfd holding ticket_keys; -1: no [tls]
    # first socket's fd → the sockets of groups 1, 2, ... on its address (group 0 is the first socket)
    group_socks: dict[int, list[socket.socket]] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)  # slot → position, so a restart keeps its groups

    def _group_fds(self, firsts, position: int) -> list[int]:
        workers = self.cfg.server.workers
        groups = max(workers, 1 + max((len(v) for v in self.group_socks.values()), default=0))
        fds = []
        for first in firsts:
            extra = self.group_socks.setdefault(first.fileno(), [])
            for g in groups_of(position, workers, groups):
                if g == 0:
                    fds.append(first.fileno())
                    continue
                while len(extra) < g:
                    extra.append(bind_group_socket(first))
                fds.append(extra[g - 1].fileno())
        return fds

    def unlisten(self, position: int) -> None:
        """Take the groups of `position` out of service until a worker listens on them again."""
        workers = self.cfg.server.workers
        for first in [*self.socks.values(), *self.tls_socks.values()]:
            extra = self.group_socks.get(first.fileno(), [])
            for g in groups_of(position, workers, 1 + len(extra)):
                sock = first if g == 0 else extra[g - 1] if g <= len(extra) else None
                if sock is None:
                    continue
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass  # not listening (never opened by a worker, or already out)

    def close_socket(self, sock: socket.socket) -> None:
        """Close a first socket and its groups' sockets."""
        for extra in self.group_socks.pop(sock.fileno(), []):
            extra.close()
        sock.close()

    def free_slot(self) -> int:
        used = {w.slot for w in self.workers}
        for slot in range(self.stats.slots):
            if slot not in used:
                return slot
        raise OcaError("no free worker slot")

    def spawn(self, slot: int | None = None, wait_ready: bool = True, position: int | None = None) -> WorkerProc:
        slot = self.free_slot() if slot is None else slot
        position = self.positions.get(slot, 0) if position is None else position
        fds = self._group_fds(self.socks.values(), position)  # OSError (EMFILE) reaches the caller
        tls_fds = self._group_fds(self.tls_socks.values(), position)
        r, w = os.pipe()  # OSError (EMFILE) reaches the caller before anything is started
        args = [
            sys.executable, "-m", "oca.server.worker",
            "--config", self.config_path,
            "--slot", str(slot), "--slots", str(self.stats.slots),
            "--stats-fd", str(self.stats.fd),
            "--listen-fds", ",".join(map(str, fds)),
            "--tls-fds", ",".join(map(str, tls_fds)),
            "--ready-fd", str(w),
            "--parent", str(os.getpid()),
        ]
        key_fds = [self.ticket_fd] if self.ticket_fd >= 0 else []
        if key_fds:
            args += ["--ticket-key-fd", str(self.ticket_fd)]
        try:
            proc = subprocess.Popen(args, pass_fds=[*fds, *tls_fds, *key_fds, self.stats.fd, w], close_fds=True)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        os.close(w)
        wp = WorkerProc(proc, slot, time.monotonic(), position)
        self.positions[slot] = position
        self.workers.append(wp)
        if wait_ready:
            wp.ready = self._wait_ready(r, proc)
            if not wp.ready:
                log(f"worker {proc.pid} (slot {slot}) did not become ready")
        else:
            os.close(r)
        return wp

    def _wait_ready(self, r: int, proc: subprocess.Popen) -> bool:
        import select

        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([r], [], [], 0.2)
                if ready:
                    return os.read(r, 1) == b"R"
                if proc.poll() is not None:
                    return False
            return False
        finally:
            os.close(r)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for wp in self.workers:
                if wp.proc.pid == pid:
                    wp.proc.returncode = os.waitstatus_to_exitcode(status)
        # A worker can also have been reaped by its Popen: send_signal() polls
        # before signalling, and a poll that finds the child gone takes its
        # status, so waitpid(-1) never sees it. Such a worker was left in the
        # list: a stop then waited shutdown_timeout_s + 5 s for it, and a
        # worker that had died was never restarted. Any known exit counts.
        for wp in list(self.workers):
            if wp.proc.returncode is not None:
                self.workers.remove(wp)
                self.stats.zero_gauges(wp.slot)
                if wp.retiring or self.stopping:
                    log(f"worker {wp.proc.pid} (slot {wp.slot}) exited")
                    continue
                log(f"worker {wp.proc.pid} (slot {wp.slot}) died with status {wp.proc.returncode}; restarting")
                self.stats.header[S.H_WORKER_RESTARTS] += 1
                now = time.monotonic()
                self.crash_times = [t for t in self.crash_times if now - t < 10] + [now]
                if len(self.crash_times) > 5:
                    time.sleep(1.0)  # crash loop: do not spin
                self.missing.append(wp.slot)  # started by spawn_missing, under the loop's guard

    def spawn_missing(self) -> None:
        """Spawn the workers whose slots are empty; raises (after trying each) if one cannot start."""
        failed: list[int] = []
        error: OSError | None = None
        for slot in self.missing:
            if self.stopping:
                break
            try:
                self.spawn(slot, wait_ready=False)
            except OSError as exc:
                failed.append(slot)
                error = exc
                self.unlisten(self.positions.get(slot, 0))
        self.missing = failed
        if error is not None:
            raise OcaError(f"cannot start a worker for slot(s) {', '.join(map(str, failed))}: {error}") from error

    def stop(self) -> None:
        self.stopping = True
        for wp in self.workers:
            _signal(wp.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.server.shutdown_timeout_s + 5
        while self.workers and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for wp in self.workers:
            _signal(wp.proc, signal.SIGKILL)
        for s in [*self.socks.values(), *self.tls_socks.values()]:
            self.close_socket(s)

    def reload(self) -> None:
        try:
            cfg = load_config(self.config_path)
        except OcaError as exc:
            log(f"reload refused, keeping the running config: {exc}")
            return
        ticket_keys = self.ticket_keys
        if cfg.tls is not None:
            try:
                make_context(cfg.tls, time.time())
            except OcaError as exc:
                self.stats.header[S.H_TLS_RELOAD_REFUSED_AT] = time.time()
                log(f"reload refused, the workers keep the key pair they loaded: {exc}")
                return
            exposed = stat_key_file(cfg.tls.key_file)
            if exposed is not None:
                log(f"warning: the TLS private key is exposed: {exposed}")
            try:
                ticket_keys = ticket_keys_for(cfg, self.ticket_keys)
            except OcaError as exc:
                log(f"reload refused: {exc}")
                return
        self.stats.header[S.H_TLS_RELOAD_REFUSED_AT] = 0.0
        needed = cfg.server.workers
        if len(self.workers) + needed > self.stats.slots:
            log("reload refused: workers from the last reload are still finishing; try again shortly")
            return
        try:
            init_stores(cfg, self.index)
        except (OcaError, OSError) as exc:
            log(f"reload refused: stores: {exc}")
            return
        old_socks = self.socks
        if cfg.server.listen != self.cfg.server.listen:
            keep = {k: v for k, v in old_socks.items() if k in cfg.server.listen}
            try:
                fresh = bind_sockets(tuple(x for x in cfg.server.listen if x not in keep), cfg.server.backlog)
            except OcaError as exc:
                log(f"reload refused: {exc}")
                return
            self.socks = {**keep, **fresh}
        old_tls = self.tls_socks
        tls_listen = cfg.tls.listen if cfg.tls is not None else ()
        if tuple(old_tls) != tls_listen:
            keep = {k: v for k, v in old_tls.items() if k in tls_listen}
            try:
                fresh = bind_sockets(tuple(x for x in tls_listen if x not in keep), cfg.server.backlog, "tls.listen")
            except OcaError as exc:
                for key, sock in self.socks.items():
                    if key not in old_socks:
                        self.close_socket(sock)
                self.socks = old_socks
                log(f"reload refused: {exc}")
                return
            self.tls_socks = {**keep, **fresh}
        self.cfg = cfg
        self.set_ticket_keys(ticket_keys if cfg.tls is not None else ())
        old = [w for w in self.workers if not w.retiring]
        log(f"reloading: replacing {len(old)} workers with {needed}")
        for i in range(max(needed, len(old))):
            if i < needed:
                try:
                    new = self.spawn(position=i)
                except OSError as exc:
                    log(f"reload: cannot start a new worker ({exc}); the old ones keep serving")
                    return
                if not new.ready:
                    log("reload: a new worker failed to start; the old ones keep serving")
                    _signal(new.proc, signal.SIGTERM)
                    new.retiring = True
                    return
            if i < len(old):
                old[i].retiring = True
                _signal(old[i].proc, signal.SIGTERM)
        for key, sock in old_socks.items():
            if key not in self.socks:
                self.close_socket(sock)
        for key, sock in old_tls.items():
            if key not in self.tls_socks:
                self.close_socket(sock)

    def set_ticket_keys(self, keys: tuple[bytes, ...]) -> None:
        """Hold `keys` in a fresh sealed memfd for the workers started from now on."""
        if keys == self.ticket_keys and (self.ticket_fd >= 0) == bool(keys):
            return
        fd = tickets.keys_fd(keys) if keys else -1
        if self.ticket_fd >= 0:
            os.close(self.ticket_fd)
        self.ticket_keys, self.ticket_fd = keys, fd

    def forward(self, signum: int) -> None:
        for wp in self.workers:
            _signal(wp.proc, signum)


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


class LoadSampler:
    def __init__(self, stats: S.SharedStats, nic_capacity_mbps: float | None):
        self.stats = stats
        self.nic_capacity_mbps = nic_capacity_mbps
        self.last_t = time.monotonic()
        self.last_bytes = stats.total(S.C_BYTES)
        self.last_nic = self._nic_sent()
        psutil.cpu_percent(interval=None)

    @staticmethod
    def _nic_sent() -> int:
        counters = psutil.net_io_counters(pernic=True)
        return sum(c.bytes_sent for name, c in counters.items() if name != "lo")

    def capacity_bps(self) -> float | None:
        if self.nic_capacity_mbps:
            return self.nic_capacity_mbps * 1e6
        speeds = [s.speed for name, s in psutil.net_if_stats().items() if name != "lo" and s.isup and s.speed > 0]
        return sum(speeds) * 1e6 if speeds else None

    def sample(self) -> None:
        now = time.monotonic()
        dt = max(1e-3, now - self.last_t)
        total = self.stats.total(S.C_BYTES)
        nic = self._nic_sent()
        h = self.stats.header
        h[S.H_BYTES_PER_S] = (total - self.last_bytes) / dt
        h[S.H_CPU_PERCENT] = psutil.cpu_percent(interval=None)
        cap = self.capacity_bps()
        h[S.H_NIC_CAPACITY_BPS] = -1.0 if cap is None else cap
        h[S.H_NIC_UTIL] = -1.0 if cap is None else min(1.0, (nic - self.last_nic) * 8 / dt / cap)
        h[S.H_SAMPLED_AT] = time.time()
        self.last_t, self.last_bytes, self.last_nic = now, total, nic


def ticket_keys_for(cfg: Config, current: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The ticket keys `cfg` asks for, the encrypting one first: its files', else the running
    one, else a new one. `OcaError` names the key and the file at fault."""
    assert cfg.tls is not None
    if not cfg.tls.ticket_key_file:
        return current[:1] or (tickets.new_key(),)
    labels = {cfg.tls.ticket_key_file: "tls.ticket_key_file"}
    for i, path in enumerate(cfg.tls.previous_ticket_key_files):
        labels[path] = f"tls.previous_ticket_key_files[{i}]"
    try:
        return tickets.read_key_files(tuple(labels))
    except tickets.TicketKeyError as exc:
        raise OcaError(f"{labels.get(exc.path, 'tls.ticket_key_file')}: {exc}") from None


def init_stores(cfg: Config, index: Index | None = None) -> None:
    """Attach the configured stores, in the parent, initialising new empty ones.

    With `index` (the parent's own, open for routes) it is used and left open.
    """
    store = ContentStore.open(cfg, writable=True, index=index)
    failed = [f"{d.path} ({d.reason})" for d in store.disks if not d.working]
    if index is None:
        store.close()
    for f in failed:
        log(f"store failed: {f}")


def serve(config_path: str) -> int:
    cfg = load_config(config_path)
    nofile = raise_nofile_limit()
    init_stores(cfg)
    ticket_keys: tuple[bytes, ...] = ()
    if cfg.tls is not None:
        make_context(cfg.tls, time.time())  # refuse to start on a pair that cannot be served
        exposed = stat_key_file(cfg.tls.key_file)
        if exposed is not None:
            log(f"warning: the TLS private key is exposed: {exposed}")
        ticket_keys = ticket_keys_for(cfg, ())
    socks = bind_sockets(cfg.server.listen, cfg.server.backlog)
    try:
        tls_socks = bind_sockets(cfg.tls.listen, cfg.server.backlog, "tls.listen") if cfg.tls is not None else {}
    except OcaError:
        for s in socks.values():
            s.close()
        raise
    stats = S.SharedStats.create(slots=SLOTS)
    os.set_inheritable(stats.fd, True)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    master = Master(os.path.abspath(config_path), cfg, socks, stats, tls_socks=tls_socks)
    master.set_ticket_keys(ticket_keys)
    if cfg.server.pid_file:
        with open(cfg.server.pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    for position in range(cfg.server.workers):
        master.spawn(position=position)
    ready = sum(1 for w in master.workers if w.ready)
    log(
        f"oca {__version__} appliance {cfg.appliance.id} serving on {', '.join(cfg.server.listen) or '-'}"
        f"{' and HTTPS on ' + ', '.join(cfg.tls.listen) if cfg.tls is not None else ''} "
        f"with {ready}/{cfg.server.workers} workers ({cfg.server.event_loop}), open-files limit {nofile}"
    )
    notify_systemd(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving")
    if cfg.server.workers > 1 and not tcp_migrate_req():
        log("net.ipv4.tcp_migrate_req is not 1: if a dead worker cannot be respawned, the connections "
            "queued on its sockets are reset instead of moved to the other workers")
    routes_index = Index(cfg.index.path, map_size_bytes=int(cfg.index.map_size_gb * (1 << 30)), max_readers=cfg.index.max_readers)
    master.index = routes_index
    routes = RoutesManager(routes_index, log)
    routes.configure(cfg.routes.static, cfg.routes.kernel_table, cfg.routes.kernel_protocols)
    sampler = LoadSampler(stats, cfg.appliance.nic_capacity_mbps)
    guard = LoopGuard(stats)
    next_sample = time.monotonic() + 1.0

    def reload() -> None:
        notify_systemd("RELOADING=1")
        try:
            master.reload()
            sampler.nic_capacity_mbps = master.cfg.appliance.nic_capacity_mbps
        finally:
            notify_systemd("READY=1")

    def configure_routes() -> None:
        r = master.cfg.routes
        routes.configure(r.static, r.kernel_table, r.kernel_protocols)

    try:
        while True:
            now = time.monotonic()
            due = guard.due()
            wake = next_sample if due is None else min(next_sample, due)
            info = signal.sigtimedwait(SIGNALS, max(0.0, wake - now))
            now = time.monotonic()
            guard.retry(now)
            if now >= next_sample:
                guard.run("sample", sampler.sample, now)
                next_sample = now + 1.0
            if info is None:
                continue
            signum = info.si_signo
            if signum == signal.SIGCHLD:
                guard.run("reap", master.reap, now)
                if master.missing and "spawn" not in guard.pending:
                    guard.run("spawn", master.spawn_missing, now)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                log("stopping: letting responses in flight finish")
                notify_systemd("STOPPING=1")
                master.stop()
                break
            elif signum == signal.SIGHUP:
                guard.run("reload", reload, now)
                guard.run("routes", configure_routes, now)
            elif signum == signal.SIGUSR1:
                master.forward(signal.SIGUSR1)
    finally:
        routes.stop()
        routes_index.close()
        if cfg.server.pid_file:
            try:
                os.unlink(cfg.server.pid_file)
            except OSError:
                pass
    log("stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="oca-server", description="Serve the appliance's content over HTTP/1.1 with sendfile.")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"appliance config file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--version", action="version", version=f"oca {__version__}")
    args = p.parse_args(argv)
    try:
        if args.check_config:
            cfg = load_config(args.config)
            if cfg.tls is not None:
                make_context(cfg.tls, time.time())
                ticket_keys_for(cfg, ())
            print(f"{args.config}: ok")
            sys.exit(0)
        sys.exit(serve(args.config))
    except OcaError as exc:
        print(f"oca-server: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
