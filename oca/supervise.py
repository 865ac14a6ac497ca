"""Supervised long-lived tasks: a loop that raises is logged, counted and restarted.

Rules kept here:
- Every task that lives as long as its process runs under a `Supervisor`.
  When it raises, the traceback is logged, the failure is counted per task
  name, and the task is started again after a back-off (`restart_delay_s`,
  pure: doubling from `first_s` up to `max_s`, back to the start once a run
  lasted `stable_s`).
- While a task is down (between its failure and its restart) it is listed by
  `down()`, with the reason; the process's `/health` reports `degraded`,
  naming it. A task that returns normally is finished, not failed.
- Cancellation is not a failure: `stop()` cancels every task and waits.
- The clock is passed in (`monotonic`), so back-off and stability are
  testable without sleeping on the real clock for long.
- Threads (pyroute2 must run off the uvloop loop) use `supervise_thread`,
  with the same rules and the same counters.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Awaitable, Callable

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
STABLE_S = 60.0


def restart_delay_s(failures_in_a_row: int, first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S) -> float:
    """Back-off before restart number `failures_in_a_row` (1 for the first failure)."""
    if failures_in_a_row <= 0:
        return 0.0
    return min(max_s, first_s * (2 ** min(failures_in_a_row - 1, 32)))


@dataclass
class TaskState:
    name: str
    failures: int = 0  # total, for metrics
    in_a_row: int = 0
    down_reason: str = ""  # set while waiting to restart
    last_error: str = ""
    running: bool = False


class Supervisor:
    """Runs named coroutine factories forever, restarting them when they raise."""

    def __init__(self, log: Callable[[str], None], *, first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S,
                 stable_s: float = STABLE_S, monotonic: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[str], None] | None = None):
        self.log = log
        self.first_s = first_s
        self.max_s = max_s
        self.stable_s = stable_s
        self.monotonic = monotonic
        self.on_failure = on_failure
        self.states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ asyncio tasks

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run `factory()` under supervision as task `name`."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"task {name!r} is already supervised")
        self.states.setdefault(name, TaskState(name))
        task = asyncio.get_running_loop().create_task(self._run(name, factory), name=f"supervised:{name}")
        self._tasks[name] = task
        return task

    async def _run(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        st = self.states[name]
        while True:
            started = self.monotonic()
            st.running = True
            st.down_reason = ""
            try:
                await factory()
                st.running = False
                return
            except asyncio.CancelledError:
                st.running = False
                raise
            except BaseException as exc:  # noqa: BLE001 - a supervised loop must not die silently
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                st.running = False
                delay = self._failed(st, exc, self.monotonic() - started)
            await asyncio.sleep(delay)

    def _failed(self, st: TaskState, exc: BaseException, ran_s: float) -> float:
        with self._lock:
            st.failures += 1
            st.in_a_row = 1 if ran_s >= self.stable_s else st.in_a_row + 1
            delay = restart_delay_s(st.in_a_row, self.first_s, self.max_s)
            st.last_error = f"{type(exc).__name__}: {exc}"
            st.down_reason = f"{st.last_error} (restarting in {delay:.1f} s)"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
        self.log(f"task {st.name} failed ({st.failures} so far), restarting in {delay:.1f} s:\n{tb}")
        if self.on_failure is not None:
            try:
                self.on_failure(st.name)
            except Exception:  # noqa: BLE001 - counting must not stop supervision
                pass
        return delay

    # ------------------------------------------------------------ threads

    def start_thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Run `target()` in a daemon thread, restarting it when it raises."""
        self.states.setdefault(name, TaskState(name))
        stop = threading.Event()

        def body() -> None:
            st = self.states[name]
            while not stop.is_set():
                started = self.monotonic()
                st.running = True
                st.down_reason = ""
                try:
                    target()
                    st.running = False
                    return
                except BaseException as exc:  # noqa: BLE001
                    st.running = False
                    delay = self._failed(st, exc, self.monotonic() - started)
                if stop.wait(delay):
                    return

        thread = threading.Thread(target=body, name=f"supervised:{name}", daemon=True)
        thread.stop_event = stop  # type: ignore[attr-defined]
        thread.start()
        return thread

    # ------------------------------------------------------------ reporting

    def down(self) -> dict[str, str]:
        """Tasks waiting to be restarted after a failure: name → reason."""
        with self._lock:
            return {n: s.down_reason for n, s in self.states.items() if s.down_reason}

    def failures(self) -> dict[str, int]:
        with self._lock:
            return {n: s.failures for n, s in self.states.items()}

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
