"""Appliance availability with N-of-M hysteresis, and the fleet-wide blip guard.

Nothing here performs I/O or reads the clock: poll results and `now_s` are
arguments. Rules kept here:
- A new appliance starts as not available ("not polled yet").
- An available appliance becomes unavailable after `fail_after` failed polls
  in a row; an unavailable one becomes available after `recover_after` good
  polls in a row. One good poll does not reset a down appliance to up, and
  one failed poll does not take an up appliance down: answers do not flap.
- A `draining` appliance is up but gets no new clients. An appliance whose
  NIC use is at or above `overload_percent` is overloaded: it stays in
  answers, ranked after equal matches that are not.
- Every state keeps its reason and the time of the last poll.
- The blip guard (Traffic Monitor's lesson): when every appliance that was
  up fails its poll in the same round, the likelier cause is steering's own
  network, so that round's failures are not counted and the last good states
  stand. A round is a blip only when at least two appliances were up before
  it and all of them failed; appliances already down count neither way (a
  long-dead appliance must not make one real failure look fleet-wide). The
  guard's state is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class PollResult:
    ok: bool
    reason: str = ""  # why it failed, or the appliance's own status
    status: str = "ok"  # the appliance's /health status
    nic_utilisation: float | None = None  # 0..1
    bytes_per_s: float | None = None
    content_count: int | None = None
    route_count: int | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    up: bool = False
    reason: str = "not polled yet"
    good_streak: int = 0
    bad_streak: int = 0
    last_poll_s: float | None = None
    last_ok_s: float | None = None
    status: str = "unknown"
    draining: bool = False
    overloaded: bool = False
    nic_utilisation: float | None = None
    bytes_per_s: float | None = None
    content_count: int | None = None
    route_count: int | None = None

    @property
    def serves_new_clients(self) -> bool:
        return self.up and not self.draining

    @property
    def state(self) -> str:
        if not self.up:
            return "down"
        if self.draining:
            return "draining"
        if self.overloaded:
            return "overloaded"
        return "up"


@dataclass(frozen=True, slots=True)
class Thresholds:
    fail_after: int = 3
    recover_after: int = 2
    overload_percent: float = 85.0


def step(prev: Availability, result: PollResult, now_s: float, t: Thresholds) -> Availability:
    """The state after one poll."""
    if result.ok:
        good = prev.good_streak + 1
        up = prev.up or good >= t.recover_after
        util = result.nic_utilisation
        overloaded = util is not None and util * 100 >= t.overload_percent
        draining = result.status == "draining"
        if not up:
            reason = f"recovering: {good} of {t.recover_after} good polls"
        elif result.status in ("ok", "degraded", "draining"):
            reason = result.reason or result.status
        else:
            reason = result.reason or result.status
        if result.status == "down":
            up = False
            reason = result.reason or "appliance reports down"
            # A poll that reports `down` is not a good poll: it ends the good
            # streak, so one `ok` after `down` answers does not bring it back.
            good = 0
        return replace(
            prev, up=up, reason=reason, good_streak=good, bad_streak=0, last_poll_s=now_s, last_ok_s=now_s,
            status=result.status, draining=draining, overloaded=overloaded, nic_utilisation=util,
            bytes_per_s=result.bytes_per_s,
            content_count=result.content_count if result.content_count is not None else prev.content_count,
            route_count=result.route_count if result.route_count is not None else prev.route_count,
        )
    bad = prev.bad_streak + 1
    up = prev.up and bad < t.fail_after
    reason = f"{result.reason} ({bad} failed poll{'s' if bad > 1 else ''})"
    return replace(prev, up=up, reason=reason, good_streak=0, bad_streak=bad, last_poll_s=now_s, status="unreachable" if not up else prev.status)


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    states: dict
    blip: bool
    blip_reason: str = ""


def apply_round(prev: dict[str, Availability], results: dict[str, PollResult], now_s: float, t: Thresholds) -> RoundOutcome:
    """Apply one polling round to every appliance, with the blip guard."""
    was_up = [aid for aid in results if aid in prev and prev[aid].up]
    if len(was_up) >= 2 and all(not results[aid].ok for aid in was_up):
        # Every appliance that was up failed at once: keep the last good states, note when we polled.
        kept = {aid: replace(st, last_poll_s=now_s) for aid, st in prev.items()}
        return RoundOutcome(kept, True, f"all {len(was_up)} appliances failed their polls at once (every one that was up); keeping the last good state")
    out = dict(prev)
    for aid, result in results.items():
        out[aid] = step(prev.get(aid, Availability()), result, now_s, t)
    return RoundOutcome(out, False)
