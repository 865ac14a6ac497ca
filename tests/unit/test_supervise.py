"""The supervisor: back-off table, restart after a raise, down() while waiting, counters."""

from __future__ import annotations

import asyncio
import threading

import pytest

from oca.supervise import Supervisor, restart_delay_s

DELAYS = [  # (failures in a row, first, max, expected)
    (0, 0.5, 30, 0.0),
    (1, 0.5, 30, 0.5),
    (2, 0.5, 30, 1.0),
    (3, 0.5, 30, 2.0),
    (7, 0.5, 30, 30.0),
    (10_000, 0.5, 30, 30.0),
]


@pytest.mark.parametrize("n,first,most,want", DELAYS)
def test_restart_delay(n, first, most, want):
    assert restart_delay_s(n, first, most) == want


async def test_a_raising_task_is_logged_counted_and_restarted():
    logs: list[str] = []
    failed: list[str] = []
    runs = 0
    sup = Supervisor(logs.append, first_s=0.05, max_s=0.05, on_failure=failed.append)
    resumed = asyncio.Event()

    async def loop():
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise AttributeError("'int' object has no attribute 'get'")
        resumed.set()
        await asyncio.sleep(3600)

    sup.start("poller", loop)
    await asyncio.sleep(0.01)
    assert "poller" in sup.down() and "AttributeError" in sup.down()["poller"]
    await asyncio.wait_for(resumed.wait(), 2)
    assert sup.down() == {}
    assert sup.failures() == {"poller": 2}
    assert failed == ["poller", "poller"]
    assert "Traceback" in logs[0] and "AttributeError" in logs[0]
    await sup.stop()


async def test_cancel_is_not_a_failure_and_return_is_final():
    sup = Supervisor(lambda _m: None)

    async def done():
        return None

    t = sup.start("once", done)
    await t
    assert sup.failures() == {"once": 0} and sup.down() == {}
    sup.start("forever", lambda: asyncio.sleep(3600))
    await sup.stop()
    assert sup.failures()["forever"] == 0


def test_thread_is_restarted():
    calls = []
    finished = threading.Event()

    def target():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("netlink went away")
        finished.set()

    sup = Supervisor(lambda _m: None, first_s=0.01, max_s=0.01)
    th = sup.start_thread("routes", target)
    assert finished.wait(2)
    th.join(2)
    assert sup.failures() == {"routes": 2} and sup.down() == {}
