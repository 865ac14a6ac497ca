"""The parent's loop guard (`oca.server.main.LoopGuard`): the synchronous loop's Supervisor rules, on a manual clock."""

from __future__ import annotations

import os

import pytest

from oca.server import stats as S
from oca.server.main import LoopGuard


@pytest.fixture
def stats():
    st = S.SharedStats.create(slots=2)
    yield st
    st.close()
    os.close(st.fd)


def test_a_failing_step_is_logged_counted_marked_down_and_retried_with_back_off(stats):
    logs: list[str] = []
    guard = LoopGuard(stats, logs.append, first_s=0.5, max_s=4.0)
    calls = []
    failing = [True]

    def step() -> None:
        calls.append(1)
        if failing[0]:
            raise OSError(11, "Resource temporarily unavailable")

    assert guard.run("spawn", step, now=100.0) is False
    assert "Traceback" in logs[0] and "task spawn failed (1 in a row), retrying in 0.5 s" in logs[0]
    assert stats.header[S.H_PARENT_TASK_FAILURES] == 1
    assert S.bit_names(int(stats.header[S.H_PARENT_TASKS_DOWN]), S.PARENT_TASKS) == ["spawn"]
    assert guard.down() == {"spawn": "BlockingIOError: [Errno 11] Resource temporarily unavailable"}
    assert guard.due() == 100.5
    guard.retry(100.4)
    assert len(calls) == 1  # not yet due
    guard.retry(100.5)
    assert len(calls) == 2 and guard.due() == 101.5  # doubled
    guard.retry(101.5)
    assert guard.due() == 103.5
    guard.retry(103.5)
    assert guard.due() == 107.5  # capped at max_s
    failing[0] = False
    guard.retry(107.5)
    assert guard.due() is None and guard.down() == {}
    assert stats.header[S.H_PARENT_TASKS_DOWN] == 0
    assert stats.header[S.H_PARENT_TASK_FAILURES] == 4


def test_steps_are_independent(stats):
    guard = LoopGuard(stats, lambda _m: None)

    def boom() -> None:
        raise RuntimeError("x")

    guard.run("sample", boom, now=0.0)
    assert guard.run("reap", lambda: None, now=0.0) is True
    assert list(guard.down()) == ["sample"]
    assert S.bit_names(int(stats.header[S.H_PARENT_TASKS_DOWN]), S.PARENT_TASKS) == ["sample"]
