"""Counters shared by the server's processes, in one anonymous shared memory block.

Rules kept here:
- The block is a memfd made by the parent and handed to each worker as an
  inherited descriptor: it has no name in the file system, so several
  `oca-server` instances on one machine can never collide, and nothing is
  left behind after a crash (prometheus-client's multiprocess directory was
  rejected for both reasons, and because its scrape reads every dead
  worker's file on the event loop).
- Each worker owns one slot and is the only writer of it: no locks. A
  replacement worker continues in the slot of the one it replaces, so
  counters never go backwards. Gauges of a dead worker's slot (open
  connections) are zeroed by the parent when it reaps the worker.
- The parent writes the sampled load (bytes/s out, CPU, NIC utilisation)
  and the state of its own long-lived tasks into the header; workers only
  read it.
- The layout is fixed for the life of one parent: a change to it needs a
  restart, not a reload (workers exec'd by a reload map the parent's block).
- A scrape sums the slots: a few thousand integer reads, no I/O.
"""

from __future__ import annotations

import mmap
import os
from bisect import bisect_left

# Counter layout of one slot (int64 each).
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
C_STATUS = 0  # five counters, one per class
C_BYTES = 5
C_CONNECTIONS_OPEN = 6  # gauge
C_CONNECTIONS_TOTAL = 7
C_SENDFILE_ERRORS = 8
C_TIMEOUT_HEADER = 9
C_TIMEOUT_IDLE = 10
C_TIMEOUT_SEND = 11
C_REJECTED = 12  # connections refused at max_connections
C_BAD_REQUESTS = 13
C_HIST_SUM_US = 14
C_HIST_COUNT = 15
C_HIST = 16
# Response time histogram upper bounds in seconds (le). +Inf is the count.
HIST_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_HIST_BUCKETS = len(HIST_BOUNDS_S)
C_CODES = C_HIST + len(HIST_BOUNDS_S)
COUNTED_CODES = (200, 206, 304, 400, 403, 404, 405, 410, 412, 416, 431, 500, 503)
C_TASK_FAILURES = C_CODES + len(COUNTED_CODES)  # the worker's supervised tasks, all failures
C_TASKS_DOWN = C_TASK_FAILURES + 1  # gauge: bit i set while WORKER_TASKS[i] is down
_CODE_INDEX = {code: C_CODES + i for i, code in enumerate(COUNTED_CODES)}
# A slot's scratch counter: a status outside the five classes, or not in
# COUNTED_CODES, adds to it instead, so `observe` always adds two counters.
# Nothing reads it.
C_SCRATCH = C_TASKS_DOWN + 1
SLOT_COUNTERS = C_SCRATCH + 1


def _status_at(status: int) -> tuple[int, int]:
    """(class counter, code counter) for `status`, each C_SCRATCH when not counted."""
    cls_index = status // 100 - 1
    return (C_STATUS + cls_index if 0 <= cls_index < 5 else C_SCRATCH, _CODE_INDEX.get(status, C_SCRATCH))


_STATUS_AT = {code: _status_at(code) for code in range(100, 600)}

# Header doubles written by the parent.
H_BYTES_PER_S = 0
H_CPU_PERCENT = 1
H_NIC_UTIL = 2  # -1: unknown
H_NIC_CAPACITY_BPS = 3  # -1: unknown
H_SAMPLED_AT = 4
H_WORKER_RESTARTS = 5
H_PARENT_TASKS_DOWN = 6  # bit i set while PARENT_TASKS[i] is down (an integer below 2**53)
H_PARENT_TASK_FAILURES = 7
H_TLS_RELOAD_REFUSED_AT = 8  # time.time() of the last refused TLS reload; 0: the last one was fine
HEADER_DOUBLES = 9

# Long-lived tasks, by name; their down bits are shared so that any worker's
# /health can name a task that is down in another process.
WORKER_TASKS = ("sweep", "popularity")
PARENT_TASKS = ("reap", "spawn", "sample", "reload", "routes")


def task_bits(names: "set[str] | dict[str, str]", known: tuple[str, ...]) -> int:
    return sum(1 << i for i, n in enumerate(known) if n in names)


def bit_names(bits: int, known: tuple[str, ...]) -> list[str]:
    return [n for i, n in enumerate(known) if bits >> i & 1]


class SharedStats:
    """A view of the shared block; `slot` is the writer's own slot or None."""

    def __init__(self, fd: int, slots: int, slot: int | None = None):
        self.fd = fd
        self.slots = slots
        size = HEADER_DOUBLES * 8 + slots * SLOT_COUNTERS * 8
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.header = memoryview(self._mm)[: HEADER_DOUBLES * 8].cast("d")
        self.counters = memoryview(self._mm)[HEADER_DOUBLES * 8 :].cast("q")
        self.slot = slot
        self.base = (slot or 0) * SLOT_COUNTERS

    @classmethod
    def create(cls, slots: int) -> "SharedStats":
        fd = os.memfd_create("oca-stats", 0)  # inheritable is set by the spawner
        os.ftruncate(fd, HEADER_DOUBLES * 8 + slots * SLOT_COUNTERS * 8)
        stats = cls(fd, slots)
        stats.header[H_NIC_UTIL] = -1.0
        stats.header[H_NIC_CAPACITY_BPS] = -1.0
        return stats

    # ---------------------------------------------------------------- writers

    def add(self, index: int, amount: int = 1) -> None:
        self.counters[self.base + index] += amount

    def observe(self, status: int, seconds: float, body_bytes: int) -> None:
        """Count one finished response (runs once per request: one dict get, five increments)."""
        c = self.counters
        b = self.base
        at = _STATUS_AT.get(status)
        if at is None:
            at = _status_at(status)
        c[b + at[0]] += 1
        c[b + at[1]] += 1
        c[b + C_BYTES] += body_bytes
        c[b + C_HIST_SUM_US] += int(seconds * 1e6)
        c[b + C_HIST_COUNT] += 1
        i = bisect_left(HIST_BOUNDS_S, seconds)  # the first bound >= seconds (le buckets); past the last: +Inf only
        if i < _HIST_BUCKETS:
            c[b + C_HIST + i] += 1

    def zero_gauges(self, slot: int) -> None:
        self.counters[slot * SLOT_COUNTERS + C_CONNECTIONS_OPEN] = 0
        self.counters[slot * SLOT_COUNTERS + C_TASKS_DOWN] = 0

    # ---------------------------------------------------------------- readers

    def total(self, index: int) -> int:
        return sum(self.counters[index::SLOT_COUNTERS].tolist())

    def totals(self) -> list[int]:
        # One copy out of shared memory, then strided sums in C: the block has
        # a slot for every worker the config allows, mostly unused.
        values = self.counters.tolist()
        return [sum(values[i::SLOT_COUNTERS]) for i in range(SLOT_COUNTERS)]

    def slot_value(self, slot: int, index: int) -> int:
        return self.counters[slot * SLOT_COUNTERS + index]

    def close(self) -> None:
        self.header.release()
        self.counters.release()
        self._mm.close()
