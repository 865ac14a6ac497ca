"""Availability hysteresis and the blip guard (steering/health.py) with an injected clock.

Pure: poll results and `now_s` are arguments; the clock is a counter that
the tests advance themselves.
"""

from __future__ import annotations

import pytest

from steering.health import Availability, PollResult, Thresholds, apply_round, step

T = Thresholds(fail_after=3, recover_after=2, overload_percent=85.0)
OK = PollResult(True, "", "ok", 0.10, 1e6, 10, 2)
FAIL = PollResult(False, "ConnectionRefused")
T0 = 1_800_000_000.0
INTERVAL_S = 2.0


class Clock:
    """Poll times, advanced by the test."""

    def __init__(self, start: float = T0):
        self.now = start

    def tick(self, dt: float = INTERVAL_S) -> float:
        self.now += dt
        return self.now


def run(results, t: Thresholds = T, start: Availability | None = None, clock: Clock | None = None) -> list[Availability]:
    """The state after each poll result in turn."""
    clock = clock or Clock()
    st = start or Availability()
    out = []
    for r in results:
        st = step(st, r, clock.tick(), t)
        out.append(st)
    return out


def up_state() -> Availability:
    return run([OK] * T.recover_after)[-1]


def test_new_appliance_is_not_available_until_polled():
    st = Availability()
    assert not st.up and not st.serves_new_clients
    assert st.reason == "not polled yet" and st.state == "down"
    assert st.last_poll_s is None and st.last_ok_s is None


# ---------------------------------------------------------------- N-of-M

HYSTERESIS_CASES = [
    # (name, thresholds, start up?, results, expected `up` after each)
    ("recover after 2", T, False, [OK, OK, OK], [False, True, True]),
    ("recover after 1", Thresholds(3, 1), False, [OK], [True]),
    ("recover after 4", Thresholds(3, 4), False, [OK] * 5, [False, False, False, True, True]),
    ("fail after 3", T, True, [FAIL] * 4, [True, True, False, False]),
    ("fail after 1", Thresholds(1, 2), True, [FAIL], [False]),
    ("a good poll resets the fail count", T, True, [FAIL, FAIL, OK, FAIL, FAIL, OK], [True] * 6),
    ("a failed poll resets the good count", T, False, [OK, FAIL, OK, FAIL, OK], [False] * 5),
    ("down needs recover_after in a row", T, False, [OK, FAIL, OK, OK], [False, False, False, True]),
    ("up, down, up", T, True, [FAIL, FAIL, FAIL, OK, OK], [True, True, False, False, True]),
]


@pytest.mark.parametrize("name,t,start_up,results,expected", HYSTERESIS_CASES, ids=[c[0] for c in HYSTERESIS_CASES])
def test_hysteresis(name, t, start_up, results, expected):
    start = run([OK] * t.recover_after, t)[-1] if start_up else Availability()
    assert start.up == start_up
    assert [s.up for s in run(results, t, start)] == expected


def test_no_flapping_on_alternating_polls():
    """An appliance answering every other poll neither goes down (from up) nor comes up (from down)."""
    pattern = [OK, FAIL] * 50
    assert all(s.up for s in run(pattern, start=up_state()))
    assert not any(s.up for s in run([FAIL, OK] * 50, start=Availability()))
    # two out of three failing still never reaches three in a row
    assert all(s.up for s in run([FAIL, FAIL, OK] * 30, start=up_state()))


def test_reasons_and_poll_times():
    clock = Clock()
    st = Availability()
    st = step(st, OK, clock.tick(), T)
    assert st.reason == "recovering: 1 of 2 good polls" and st.last_poll_s == st.last_ok_s == T0 + 2
    st = step(st, OK, clock.tick(), T)
    assert st.up and st.reason == "ok" and st.last_ok_s == T0 + 4
    st = step(st, FAIL, clock.tick(), T)
    assert st.up and st.reason == "ConnectionRefused (1 failed poll)"
    assert st.last_poll_s == T0 + 6 and st.last_ok_s == T0 + 4  # the last good poll is kept
    st = step(st, FAIL, clock.tick(), T)
    assert st.reason == "ConnectionRefused (2 failed polls)"
    st = step(st, PollResult(False, "no answer within 0.5 s"), clock.tick(), T)
    assert not st.up and st.reason == "no answer within 0.5 s (3 failed polls)"
    assert st.status == "unreachable" and st.state == "down"
    assert st.last_poll_s == T0 + 10 and st.last_ok_s == T0 + 4


def test_failed_poll_while_still_up_keeps_the_last_status():
    st = step(up_state(), FAIL, T0 + 100, T)
    assert st.up and st.status == "ok"


def test_appliance_reason_is_reported():
    st = step(up_state(), PollResult(True, "store /srv/d1 failed: EIO", "degraded"), T0 + 100, T)
    assert st.up and st.serves_new_clients and st.status == "degraded"
    assert st.reason == "store /srv/d1 failed: EIO"


def test_counts_are_kept_when_a_poll_does_not_carry_them():
    st = step(up_state(), PollResult(True, "", "ok", None, None, None, None), T0 + 100, T)
    assert st.content_count == 10 and st.route_count == 2
    assert st.nic_utilisation is None and st.bytes_per_s is None


# ---------------------------------------------------------------- draining, overload, down

def test_draining_is_up_but_takes_no_new_clients():
    st = step(up_state(), PollResult(True, "drained by operator", "draining"), T0 + 100, T)
    assert st.up and st.draining and not st.serves_new_clients
    assert st.state == "draining" and st.reason == "drained by operator"
    st = step(st, OK, T0 + 102, T)
    assert st.up and not st.draining and st.serves_new_clients and st.state == "up"


def test_draining_appliance_recovering_from_down_stays_unserving():
    st = run([PollResult(True, "", "draining")] * 3)[-1]
    assert st.up and st.draining and not st.serves_new_clients


OVERLOAD_CASES = [
    (None, False),
    (0.0, False),
    (0.849, False),
    (0.85, True),
    (0.99, True),
    (1.2, True),
]


@pytest.mark.parametrize("util,overloaded", OVERLOAD_CASES)
def test_overload_threshold(util, overloaded):
    st = step(up_state(), PollResult(True, "", "ok", util), T0 + 100, T)
    assert st.overloaded is overloaded
    assert st.up and st.serves_new_clients  # overloaded appliances stay in answers
    assert st.state == ("overloaded" if overloaded else "up")


def test_overload_threshold_is_configurable():
    t = Thresholds(3, 2, overload_percent=50.0)
    assert step(up_state(), PollResult(True, "", "ok", 0.5), T0, t).overloaded
    assert not step(up_state(), PollResult(True, "", "ok", 0.49), T0, t).overloaded


def test_status_down_takes_it_down_at_once():
    st = step(up_state(), PollResult(True, "no working store", "down"), T0 + 100, T)
    assert not st.up and st.state == "down" and st.reason == "no working store"
    st = step(up_state(), PollResult(True, "", "down"), T0 + 100, T)
    assert st.reason == "appliance reports down"


def test_after_status_down_recovery_needs_recover_after_good_polls():
    """Polls that report `down` are not good polls: one `ok` after them must not bring it back."""
    down = PollResult(True, "shutting down", "down")
    states = run([OK, OK, down, down, down, OK, OK])
    assert [s.up for s in states] == [False, True, False, False, False, False, True]


# ---------------------------------------------------------------- the blip guard


def fleet(n: int = 3) -> dict[str, Availability]:
    return {f"oca-{i}": up_state() for i in range(n)}


def test_blip_guard_keeps_the_last_good_state_when_all_fail():
    prev = fleet()
    for i in range(10):  # many rounds of everything failing: nothing goes down
        out = apply_round(prev, {aid: FAIL for aid in prev}, T0 + 100 + i, T)
        assert out.blip
        assert "all 3 appliances failed" in out.blip_reason
        for aid, st in out.states.items():
            assert st.up and st.serves_new_clients
            assert st.bad_streak == prev[aid].bad_streak  # the round is not counted
            assert st.last_poll_s == T0 + 100 + i
        prev = out.states


def test_blip_guard_ends_when_one_answers_and_counting_resumes():
    prev = apply_round(fleet(), {aid: FAIL for aid in fleet()}, T0 + 100, T).states
    results = {"oca-0": OK, "oca-1": FAIL, "oca-2": FAIL}
    clock = Clock(T0 + 100)
    for _ in range(T.fail_after):
        out = apply_round(prev, results, clock.tick(), T)
        assert not out.blip and out.blip_reason == ""
        prev = out.states
    assert prev["oca-0"].up and not prev["oca-1"].up and not prev["oca-2"].up


def test_no_blip_guard_for_a_single_appliance():
    prev = {"only": up_state()}
    for i in range(T.fail_after):
        out = apply_round(prev, {"only": FAIL}, T0 + i, T)
        assert not out.blip
        prev = out.states
    assert not prev["only"].up


def test_one_failing_appliance_is_counted():
    prev = fleet()
    for i in range(T.fail_after):
        prev = apply_round(prev, {"oca-0": FAIL, "oca-1": OK, "oca-2": OK}, T0 + i, T).states
    assert not prev["oca-0"].up and prev["oca-1"].up and prev["oca-2"].up


def test_blip_guard_keeps_states_that_were_already_down():
    prev = fleet()
    for i in range(T.fail_after):
        prev = apply_round(prev, {"oca-0": FAIL, "oca-1": OK, "oca-2": OK}, T0 + i, T).states
    out = apply_round(prev, {aid: FAIL for aid in prev}, T0 + 50, T)
    assert out.blip
    assert not out.states["oca-0"].up and out.states["oca-1"].up


def test_new_appliance_in_a_round_starts_from_not_polled():
    out = apply_round({}, {"new": OK, "other": OK}, T0, T)
    assert not out.states["new"].up and out.states["new"].good_streak == 1


# Issue 10 defect 3: appliances already down count neither way.
BLIP_CASES = [
    # (name, up before the round, results this round, blip?)
    ("two up, both fail", {"a": True, "b": True}, {"a": False, "b": False}, True),
    ("A long dead, B up and failing: B's own failure", {"a": False, "b": True}, {"a": False, "b": False}, False),
    ("A long dead, B up and answering", {"a": False, "b": True}, {"a": False, "b": True}, False),
    ("two dead, one up failing", {"a": False, "b": False, "c": True}, {"a": False, "b": False, "c": False}, False),
    ("two up failing, one dead answering", {"a": True, "b": True, "c": False}, {"a": False, "b": False, "c": True}, True),
    ("two up failing, one dead failing", {"a": True, "b": True, "c": False}, {"a": False, "b": False, "c": False}, True),
    ("three up, one answers", {"a": True, "b": True, "c": True}, {"a": False, "b": False, "c": True}, False),
    ("nobody up, all fail", {"a": False, "b": False}, {"a": False, "b": False}, False),
    ("new appliances only", {}, {"a": False, "b": False}, False),
]


@pytest.mark.parametrize("name,up_before,ok,blip", BLIP_CASES, ids=[c[0] for c in BLIP_CASES])
def test_blip_needs_two_appliances_that_were_up_and_all_of_them_failing(name, up_before, ok, blip):
    down = run([FAIL] * T.fail_after, start=up_state())[-1]
    prev = {aid: (up_state() if up else down) for aid, up in up_before.items()}
    out = apply_round(prev, {aid: OK if good else FAIL for aid, good in ok.items()}, T0 + 1000, T)
    assert out.blip is blip, out.blip_reason


def test_one_live_appliance_beside_a_long_dead_one_goes_down():
    down = run([FAIL] * T.fail_after, start=up_state())[-1]
    prev = {"dead": down, "live": up_state()}
    clock = Clock(T0 + 1000)
    for _ in range(T.fail_after):
        out = apply_round(prev, {"dead": FAIL, "live": FAIL}, clock.tick(), T)
        assert not out.blip
        prev = out.states
    assert not prev["live"].up and "failed poll" in prev["live"].reason
