"""The parent's reaping of worker processes, with real child processes.

`Popen.send_signal` polls the child before signalling, and a poll that
finds it gone takes its exit status: `waitpid(-1)` then never reports it.
Before `Master.reap` counted such an exit, a worker signalled just after it
exited stayed in the list: a stop waited `shutdown_timeout_s` + 5 s for a
process that no longer existed, and a worker that had died was never
restarted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from oca.config import load_config
from oca.server import stats as S
from oca.server.main import Master, WorkerProc
from tests.support import write_config


@pytest.fixture
def master(tmp_path):
    cfg_path = write_config(tmp_path)
    stats = S.SharedStats.create(4)
    m = Master(str(cfg_path), load_config(str(cfg_path)), {}, stats)
    yield m
    for wp in m.workers:
        if wp.proc.poll() is None:
            wp.proc.kill()
            wp.proc.wait()
    stats.close()
    os.close(stats.fd)


def _exited_and_polled(slot: int, retiring: bool) -> WorkerProc:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while proc.poll() is None:  # what send_signal does: the status is taken here, not by waitpid(-1)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return WorkerProc(proc, slot, time.monotonic(), retiring=retiring)


@pytest.mark.parametrize("retiring", [True, False])
def test_a_worker_whose_exit_its_popen_took_is_reaped_all_the_same(master, retiring):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    master.workers = [_exited_and_polled(1, retiring), WorkerProc(live, 2, time.monotonic())]
    master.reap()
    assert [wp.slot for wp in master.workers] == [2]  # the live one stays
    # A retiring worker that exited is done; one that died is restarted (its slot is missing).
    assert master.missing == ([] if retiring else [1])


def test_stop_does_not_wait_for_a_worker_already_gone(master):
    master.workers = [_exited_and_polled(1, retiring=True)]
    t0 = time.monotonic()
    master.stop()
    assert master.workers == [] and time.monotonic() - t0 < 5.0  # it waited shutdown_timeout_s + 5 s before
