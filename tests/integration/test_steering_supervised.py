"""Steering's long-lived loops run supervised (issue 10, rule 2).

The `Steering` shell runs in this process, on a real event loop, polling a
fake appliance on 127.0.0.x over real sockets. Every input that used to
kill a loop is now validated, so no real input is left that makes one raise:
the failure is injected by replacing one method of the running object with
one that raises once (the only way to exercise the supervision here). The
test checks what an operator sees: `/health` says `degraded` and names the
task while it is down, the failure is counted in
`steering_task_failures_total`, and the loop comes back by itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import generate_latest

from steering.config import load_steering_config
from steering.service import POLLER_TASK, TABLE_TASK, Steering, overall_status
from tests.fake_appliance import Fake, FakeFleet
from tests.server_proc import free_port

DEADLINE_S = 20.0


def _config(tmp: Path, fleet: FakeFleet, fake: Fake) -> Path:
    cfg = tmp / "steering.toml"
    cfg.write_text(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n"
        "[health]\ninterval_s = 0.2\ntimeout_s = 1.0\nfail_after = 2\nrecover_after = 1\n"
        f'[[appliances]]\nid = "{fake.aid}"\nurl = "{fleet.url(fake)}"\nsite = "alpha"\n'
    )
    return cfg


async def _until(predicate, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _failures(s: Steering, task: str) -> float:
    for family in s.registry_metrics.collect():
        for sample in family.samples:
            if sample.name == "steering_task_failures_total" and sample.labels.get("task") == task:
                return sample.value
    return -1.0


def test_a_loop_that_raises_is_reported_counted_and_restarted(tmp_path):
    fake = Fake("a", "127.0.0.101", "alpha", routes=["127.101.0.0/16"], holds=["m.mp4"])
    fleet = FakeFleet([fake], free_port("127.0.0.1")).start()
    try:
        asyncio.run(_scenario(tmp_path, fleet, fake))
    finally:
        fleet.stop()


async def _scenario(tmp: Path, fleet: FakeFleet, fake: Fake) -> None:
    cfg_path = _config(tmp, fleet, fake)
    s = Steering(str(cfg_path), load_steering_config(str(cfg_path)))
    s.supervisor.log = lambda line: None  # the traceback is expected here
    s.supervisor.start(POLLER_TASK, s.poller.run)
    s.supervisor.start(TABLE_TASK, s.table_keeper)
    try:
        await _until(lambda: s.health_doc()["status"] == "ok" and len(s.table) == 1, "a up and its route in the table")

        # The poller raises once, out of the round (not out of one appliance's poll).
        real_round = s.poller.poll_round
        raised = []

        async def failing_round() -> None:
            if not raised:
                raised.append(True)
                raise RuntimeError("injected failure")
            await real_round()

        s.poller.poll_round = failing_round  # type: ignore[method-assign]
        await _until(lambda: POLLER_TASK in s.health_doc()["tasks_down"], "the poller reported down")
        doc = s.health_doc()
        assert doc["status"] == "degraded"
        assert "RuntimeError: injected failure" in doc["tasks_down"][POLLER_TASK]
        assert _failures(s, POLLER_TASK) == 1
        rounds = s.poller.rounds
        await _until(lambda: s.poller.rounds > rounds + 1, "the poller restarted and polling again")
        assert s.health_doc()["status"] == "ok" and s.health_doc()["tasks_down"] == {}

        # The table keeper raises once while building; after its restart it builds what changed.
        real_items = s.coverage

        class Exploding(dict):
            def items(self):  # noqa: D401 - a coverage map whose reading fails once
                s.coverage = real_items
                raise RuntimeError("injected build failure")

        s.coverage = Exploding()
        fake.set_routes(["127.101.0.0/16", "127.102.0.0/16"])
        await _until(lambda: TABLE_TASK in s.health_doc()["tasks_down"], "the table keeper reported down")
        assert s.health_doc()["status"] == "degraded"
        await _until(lambda: len(s.table) == 2, "the restarted keeper building the new routes")
        assert s.health_doc()["tasks_down"] == {} and _failures(s, TABLE_TASK) == 1
        assert b'steering_task_failures_total{task="poller"} 1.0' in generate_latest(s.registry_metrics)
    finally:
        await s.supervisor.stop()


STATUS_CASES = [
    # (serving, appliances, tasks down, status)
    (3, 3, {}, "ok"),
    (2, 3, {}, "degraded"),
    (3, 3, {"poller": "RuntimeError"}, "degraded"),
    (0, 3, {}, "down"),
    (0, 3, {"poller": "x"}, "down"),
    (1, 1, {"table-keeper": "x"}, "degraded"),
]


def test_overall_status():
    for serving, appliances, down, status in STATUS_CASES:
        assert overall_status(serving, appliances, down) == status, (serving, appliances, down)

