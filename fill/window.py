"""The fill window: local wall-clock hours in which downloads may run.

Nothing here performs I/O or reads the clock: `now_s` (unix seconds) and the
time zone are arguments. Rules kept here:
- A window is "HH:MM-HH:MM" in local time. An end earlier than the start
  crosses midnight ("22:00-06:00"); equal start and end mean all day.
- Wall-clock times are turned into instants with `zoneinfo`, so a window
  keeps its local hours across DST changes: on the night clocks go forward
  a 02:00-14:00 window is one hour shorter in real time, and a local time
  that does not exist (02:30 on that night) maps forward as zoneinfo does
  with fold=0; on the night clocks go back, the repeated hour is counted once
  (the first occurrence starts the window).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

_WINDOW = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")


@dataclass(frozen=True, slots=True)
class Window:
    start_min: int  # minutes after local midnight
    end_min: int

    @property
    def all_day(self) -> bool:
        return self.start_min == self.end_min


def parse_window(text: str) -> Window:
    m = _WINDOW.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} must look like 'HH:MM-HH:MM'")
    sh, sm, eh, em = (int(g) for g in m.groups())
    for h, mi in ((sh, sm), (eh, em)):
        if h > 23 or mi > 59:
            raise ValueError(f"{text!r}: {h:02d}:{mi:02d} is not a time of day")
    return Window(sh * 60 + sm, eh * 60 + em)


def _local_instant(day: dt.date, minutes: int, tz: dt.tzinfo) -> float:
    naive = dt.datetime(day.year, day.month, day.day, minutes // 60, minutes % 60)
    return naive.replace(tzinfo=tz, fold=0).timestamp()


def current_or_next(window: Window, now_s: float, tz: dt.tzinfo) -> tuple[float, float]:
    """(start, end) instants of the window that contains `now_s`, or else the next one."""
    if window.all_day:
        return float("-inf"), float("inf")
    today = dt.datetime.fromtimestamp(now_s, tz).date()
    for offset in (-1, 0, 1, 2):
        day = today + dt.timedelta(days=offset)
        start = _local_instant(day, window.start_min, tz)
        end_day = day if window.end_min > window.start_min else day + dt.timedelta(days=1)
        end = _local_instant(end_day, window.end_min, tz)
        if now_s < end:
            return start, end
    raise AssertionError("unreachable: a window recurs every day")


def in_window(window: Window | None, now_s: float, tz: dt.tzinfo) -> bool:
    if window is None:
        return True
    start, end = current_or_next(window, now_s, tz)
    return start <= now_s < end


def seconds_left(window: Window | None, now_s: float, tz: dt.tzinfo) -> float:
    """Seconds until the current window ends (inf without a window; 0 when outside)."""
    if window is None:
        return float("inf")
    start, end = current_or_next(window, now_s, tz)
    return end - now_s if start <= now_s < end else 0.0


def seconds_until_open(window: Window | None, now_s: float, tz: dt.tzinfo) -> float:
    if window is None:
        return 0.0
    start, _end = current_or_next(window, now_s, tz)
    return max(0.0, start - now_s)


_TIME = re.compile(r"([0-9]{2}):([0-9]{2})")


def parse_time(text: str) -> int:
    """'HH:MM' as minutes after local midnight."""
    m = _TIME.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} must look like 'HH:MM'")
    h, mi = int(m[1]), int(m[2])
    if h > 23 or mi > 59:
        raise ValueError(f"{text!r} is not a time of day")
    return h * 60 + mi


def minute_in_window(window: Window, minute: int) -> bool:
    """Whether local time `minute` falls strictly after the window's start and before its end."""
    if window.all_day:
        return minute != window.start_min
    if window.start_min < window.end_min:
        return window.start_min < minute < window.end_min
    return minute > window.start_min or minute < window.end_min


def pass_instants(window: Window | None, minutes: list[int] | tuple[int, ...], now_s: float, tz: dt.tzinfo) -> list[float]:
    """The instants of the intra-day passes (local minutes) in the window that contains `now_s`, or the next one.

    Without a window (or an all-day one), the passes of the local day of `now_s`.
    Sorted; a local time that does not exist that night maps as `_local_instant` does.
    """
    if window is None or window.all_day:
        day = dt.datetime.fromtimestamp(now_s, tz).date()
        return sorted(_local_instant(day, m, tz) for m in minutes)
    start, _end = current_or_next(window, now_s, tz)
    first_day = dt.datetime.fromtimestamp(start, tz).date()
    out = []
    for m in minutes:
        day = first_day if m > window.start_min else first_day + dt.timedelta(days=1)
        out.append(_local_instant(day, m, tz))
    return sorted(out)
