"""The fill window (fill/window.py): parsing, midnight, all day, boundaries, DST.

Pure: `now_s` and the zone are arguments; nothing reads the clock.
"""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pytest

from fill.localzone import zone
from fill.window import (
    Window, current_or_next, in_window, minute_in_window, parse_time, parse_window, pass_instants, seconds_left,
    seconds_until_open,
)

UTC = ZoneInfo("UTC")
AMS = ZoneInfo("Europe/Amsterdam")
NYC = ZoneInfo("America/New_York")
H = 3600.0
M = 60.0


def at(tz: dt.tzinfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, fold: int = 0) -> float:
    """Unix seconds of a local wall-clock time (fold=1: the second of a repeated hour)."""
    return dt.datetime(y, mo, d, h, mi, s, fold=fold, tzinfo=tz).timestamp()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.timezone.utc).timestamp()


# --- parsing ----------------------------------------------------------------------------

PARSE_OK = [
    ("22:00-06:00", 22 * 60, 6 * 60),
    ("02:00-14:00", 2 * 60, 14 * 60),
    ("00:00-23:59", 0, 23 * 60 + 59),
    ("23:59-00:00", 23 * 60 + 59, 0),
    (" 01:30-05:45 ", 90, 345),
    ("03:00-03:00", 180, 180),
]


@pytest.mark.parametrize("text,start,end", PARSE_OK)
def test_parse(text, start, end):
    assert parse_window(text) == Window(start, end)


def test_equal_start_and_end_is_all_day():
    assert parse_window("00:00-00:00").all_day
    assert parse_window("13:37-13:37").all_day
    assert not parse_window("13:37-13:38").all_day


# (text, words the message must contain)
PARSE_ERRORS = [
    ("", ["''", "HH:MM-HH:MM"]),
    ("22:00", ["'22:00'", "HH:MM-HH:MM"]),
    ("2:00-06:00", ["'2:00-06:00'", "HH:MM-HH:MM"]),
    ("22:00-6:00", ["'22:00-6:00'", "HH:MM-HH:MM"]),
    ("22:00 - 06:00", ["'22:00 - 06:00'", "HH:MM-HH:MM"]),
    ("22h00-06h00", ["'22h00-06h00'", "HH:MM-HH:MM"]),
    ("22:00-06:00-07:00", ["'22:00-06:00-07:00'", "HH:MM-HH:MM"]),
    ("22:00-06:00:00", ["HH:MM-HH:MM"]),
    ("２２:００-０６:００", ["HH:MM-HH:MM"]),  # fullwidth digits are not [0-9]
    ("24:00-06:00", ["'24:00-06:00'", "24:00 is not a time of day"]),
    ("22:00-24:00", ["24:00 is not a time of day"]),
    ("22:60-06:00", ["22:60 is not a time of day"]),
    ("22:00-06:99", ["06:99 is not a time of day"]),
    (None, ["None", "HH:MM-HH:MM"]),
    (2200, ["2200", "HH:MM-HH:MM"]),
]


@pytest.mark.parametrize("text,words", PARSE_ERRORS, ids=[repr(t) for t, _ in PARSE_ERRORS])
def test_parse_errors_name_the_bad_text(text, words):
    with pytest.raises(ValueError) as info:
        parse_window(text)  # type: ignore[arg-type]
    for word in words:
        assert word in str(info.value)


# --- boundaries in a zone without DST -------------------------------------------------

DAY = utc(2025, 6, 10)  # a Tuesday, 00:00 UTC


def hms(h: int, mi: int = 0, s: int = 0) -> float:
    return DAY + h * H + mi * M + s


# (window, now, in window, seconds left, seconds until open)
BOUNDARY_CASES = [
    # across midnight
    ("22:00-06:00", hms(21, 59, 59), False, 0.0, 1.0),
    ("22:00-06:00", hms(22), True, 8 * H, 0.0),  # start inclusive
    ("22:00-06:00", hms(23), True, 7 * H, 0.0),
    ("22:00-06:00", hms(23, 59, 59), True, 6 * H + 1, 0.0),
    ("22:00-06:00", hms(0), True, 6 * H, 0.0),
    ("22:00-06:00", hms(5, 59, 59), True, 1.0, 0.0),
    ("22:00-06:00", hms(6), False, 0.0, 16 * H),  # end exclusive
    ("22:00-06:00", hms(12), False, 0.0, 10 * H),
    # within a day
    ("01:00-05:00", hms(0, 59), False, 0.0, M),
    ("01:00-05:00", hms(1), True, 4 * H, 0.0),
    ("01:00-05:00", hms(4, 59, 59), True, 1.0, 0.0),
    ("01:00-05:00", hms(5), False, 0.0, 20 * H),
    ("01:00-05:00", hms(23), False, 0.0, 2 * H),
    # ending at midnight, starting at midnight
    ("20:00-00:00", hms(23, 59, 59), True, 1.0, 0.0),
    ("20:00-00:00", hms(0), False, 0.0, 20 * H),
    ("00:00-02:00", hms(0), True, 2 * H, 0.0),
    ("00:00-02:00", hms(23, 59, 59), False, 0.0, 1.0),
    # one minute long, across midnight
    ("23:59-00:00", hms(23, 59, 30), True, 30.0, 0.0),
    ("23:59-00:00", hms(0), False, 0.0, 24 * H - M),
]


@pytest.mark.parametrize("text,now,inside,left,until", BOUNDARY_CASES)
def test_boundaries(text, now, inside, left, until):
    w = parse_window(text)
    assert in_window(w, now, UTC) is inside
    assert seconds_left(w, now, UTC) == pytest.approx(left)
    assert seconds_until_open(w, now, UTC) == pytest.approx(until)


def test_fractional_seconds_at_the_edges():
    w = parse_window("22:00-06:00")
    assert not in_window(w, hms(22) - 0.001, UTC)
    assert in_window(w, hms(6) - 0.001, UTC)
    assert seconds_until_open(w, hms(22) - 0.25, UTC) == pytest.approx(0.25)


@pytest.mark.parametrize("text", ["00:00-00:00", "03:00-03:00", "23:59-23:59"])
@pytest.mark.parametrize("now", [hms(0), hms(3), hms(23, 59, 59), at(AMS, 2025, 3, 30, 3), at(NYC, 2025, 11, 2, 1, 30, fold=1)])
def test_all_day_is_always_open(text, now):
    w = parse_window(text)
    for tz in (UTC, AMS, NYC):
        assert in_window(w, now, tz)
        assert seconds_left(w, now, tz) == math.inf
        assert seconds_until_open(w, now, tz) == 0.0


@pytest.mark.parametrize("now", [hms(0), hms(12), at(AMS, 2025, 3, 30, 2)])
def test_no_window_means_always(now):
    assert in_window(None, now, UTC)
    assert seconds_left(None, now, UTC) == math.inf
    assert seconds_until_open(None, now, UTC) == 0.0


def test_the_same_window_is_read_in_the_given_zone():
    w = parse_window("22:00-06:00")
    now = utc(2025, 6, 10, 21)  # 21:00 UTC = 23:00 in Amsterdam (CEST) = 17:00 in New York (EDT)
    assert not in_window(w, now, UTC)
    assert in_window(w, now, AMS)
    assert seconds_left(w, now, AMS) == pytest.approx(7 * H)
    assert not in_window(w, now, NYC)
    assert seconds_until_open(w, now, NYC) == pytest.approx(5 * H)


# --- DST ------------------------------------------------------------------------------
# 2025: Amsterdam springs forward 30 Mar 02:00 CET -> 03:00 CEST, falls back 26 Oct 03:00 CEST -> 02:00 CET.
# New York springs forward 9 Mar 02:00 EST -> 03:00 EDT, falls back 2 Nov 02:00 EDT -> 01:00 EST.

# (zone, window, a local time before it opens that night/day, real length in hours)
DST_LENGTHS = [
    ("spring AMS 02-14", AMS, "02:00-14:00", (2025, 3, 30, 0), 11),
    ("spring NYC 02-14", NYC, "02:00-14:00", (2025, 3, 9, 0), 11),
    ("spring AMS 01-13", AMS, "01:00-13:00", (2025, 3, 30, 0), 11),
    ("fall AMS 02-14", AMS, "02:00-14:00", (2025, 10, 26, 0), 13),
    ("fall NYC 01-13", NYC, "01:00-13:00", (2025, 11, 2, 0), 13),
    ("fall NYC 00-12", NYC, "00:00-12:00", (2025, 11, 1, 23), 13),
    # New York repeats 01:00-02:00, so a window opening at 02:00 misses the extra hour.
    ("fall NYC 02-14", NYC, "02:00-14:00", (2025, 11, 2, 0), 12),
    # crossing midnight on the DST nights
    ("spring AMS 22-06", AMS, "22:00-06:00", (2025, 3, 29, 12), 7),
    ("spring NYC 22-06", NYC, "22:00-06:00", (2025, 3, 8, 12), 7),
    ("fall AMS 22-06", AMS, "22:00-06:00", (2025, 10, 25, 12), 9),
    ("fall NYC 22-06", NYC, "22:00-06:00", (2025, 11, 1, 12), 9),
    # an ordinary day keeps its wall-clock length
    ("summer AMS 22-06", AMS, "22:00-06:00", (2025, 7, 5, 12), 8),
    ("winter NYC 02-14", NYC, "02:00-14:00", (2025, 1, 15, 0), 12),
]


@pytest.mark.parametrize("tz,text,before,hours", [c[1:] for c in DST_LENGTHS], ids=[c[0] for c in DST_LENGTHS])
def test_window_length_across_dst(tz, text, before, hours):
    w = parse_window(text)
    now = at(tz, *before)
    start, end = current_or_next(w, now, tz)
    assert end - start == pytest.approx(hours * H)
    assert start > now
    assert not in_window(w, now, tz)
    assert seconds_until_open(w, now, tz) == pytest.approx(start - now)
    # Once open, seconds_left counts real seconds to the end.
    assert in_window(w, start, tz)
    assert seconds_left(w, start, tz) == pytest.approx(hours * H)
    assert not in_window(w, end, tz)
    assert in_window(w, end - 1, tz)
    # The local clock reads the window's hours at both ends.
    sh, sm = divmod(w.start_min, 60)
    eh, em = divmod(w.end_min, 60)
    assert dt.datetime.fromtimestamp(end, tz).time() == dt.time(eh, em)
    if text != "02:00-14:00" or hours != 11:  # 02:00 does not exist on the spring-forward night
        assert dt.datetime.fromtimestamp(start, tz).time() == dt.time(sh, sm)


@pytest.mark.parametrize("tz,day", [(AMS, (2025, 3, 30)), (NYC, (2025, 3, 9))], ids=["AMS", "NYC"])
def test_spring_forward_opens_at_the_jump(tz, day):
    w = parse_window("02:00-14:00")
    jump = at(tz, *day, 3)  # 03:00 summer time, the instant after 01:59:59 winter time
    assert not in_window(w, jump - 1, tz)
    assert dt.datetime.fromtimestamp(jump - 1, tz).time() == dt.time(1, 59, 59)
    assert in_window(w, jump, tz)
    assert seconds_left(w, jump, tz) == pytest.approx(11 * H)
    assert seconds_until_open(w, at(tz, *day, 0), tz) == pytest.approx(2 * H)  # midnight to the jump


@pytest.mark.parametrize("tz,day", [(AMS, (2025, 3, 30)), (NYC, (2025, 3, 9))], ids=["AMS", "NYC"])
def test_a_start_that_does_not_exist_maps_forward_as_fold_zero(tz, day):
    # 02:30 does not exist that night; zoneinfo with fold=0 reads it with the
    # winter offset, which is 03:30 summer time.
    w = parse_window("02:30-06:00")
    opens = at(tz, *day, 3, 30)
    assert dt.datetime(*day, 2, 30, tzinfo=tz).timestamp() == opens
    assert not in_window(w, at(tz, *day, 3, 0), tz)
    assert not in_window(w, at(tz, *day, 3, 29, 59), tz)
    assert seconds_until_open(w, at(tz, *day, 3, 0), tz) == pytest.approx(30 * M)
    assert in_window(w, opens, tz)
    assert seconds_left(w, opens, tz) == pytest.approx(2.5 * H)
    # The next night is an ordinary one again.
    nxt = dt.date(*day) + dt.timedelta(days=1)
    start, end = current_or_next(w, at(tz, *day, 12), tz)
    assert start == at(tz, nxt.year, nxt.month, nxt.day, 2, 30)
    assert end - start == pytest.approx(3.5 * H)


def test_fall_back_counts_the_repeated_hour_once():
    # New York repeats 01:00-02:00 on 2 Nov 2025; a window opening at 01:30
    # opens at the first 01:30 (EDT) and stays open through the second.
    w = parse_window("01:30-05:00")
    first = at(NYC, 2025, 11, 2, 1, 30, fold=0)
    second = at(NYC, 2025, 11, 2, 1, 30, fold=1)
    assert second - first == H
    assert not in_window(w, first - 1, NYC)
    assert in_window(w, first, NYC)
    assert in_window(w, at(NYC, 2025, 11, 2, 1, 15, fold=1), NYC)
    assert in_window(w, second, NYC)
    assert seconds_left(w, first, NYC) == pytest.approx(4.5 * H)
    assert seconds_until_open(w, at(NYC, 2025, 11, 2, 0, 30), NYC) == pytest.approx(H)


def test_fall_back_window_ending_in_the_repeated_hour_ends_at_its_first_occurrence():
    w = parse_window("22:00-01:30")
    end = at(NYC, 2025, 11, 2, 1, 30, fold=0)
    start, stop = current_or_next(w, at(NYC, 2025, 11, 1, 23), NYC)
    assert stop == end
    assert stop - start == pytest.approx(3.5 * H)
    assert not in_window(w, at(NYC, 2025, 11, 2, 1, 15, fold=1), NYC)  # 01:15 again, but closed


@pytest.mark.parametrize(
    "tz,night,left_at_23",
    [
        (AMS, (2025, 3, 29), 6 * H),
        (NYC, (2025, 3, 8), 6 * H),
        (AMS, (2025, 10, 25), 8 * H),
        (NYC, (2025, 11, 1), 8 * H),
    ],
    ids=["spring AMS", "spring NYC", "fall AMS", "fall NYC"],
)
def test_window_across_midnight_on_dst_nights(tz, night, left_at_23):
    w = parse_window("22:00-06:00")
    now = at(tz, *night, 23)
    assert in_window(w, now, tz)
    assert seconds_left(w, now, tz) == pytest.approx(left_at_23)
    morning = dt.date(*night) + dt.timedelta(days=1)
    six = at(tz, morning.year, morning.month, morning.day, 6)
    assert in_window(w, six - 1, tz)
    assert not in_window(w, six, tz)
    assert seconds_until_open(w, six, tz) == pytest.approx(16 * H)


# Every quarter hour of a week around each change: in the window exactly when the
# local clock reads a time inside it (for windows whose ends are not in the
# skipped or repeated hour), and seconds_left/seconds_until_open land on the edges.
SWEEP_WINDOWS = ["22:00-06:00", "08:00-20:00", "00:00-04:00", "23:00-23:30", "04:00-01:00"]
SWEEP_WEEKS = [(AMS, (2025, 3, 27)), (AMS, (2025, 10, 23)), (NYC, (2025, 3, 6)), (NYC, (2025, 10, 30))]


def wall_inside(w: Window, now: float, tz: dt.tzinfo) -> bool:
    local = dt.datetime.fromtimestamp(now, tz)
    minute = local.hour * 60 + local.minute + local.second / 60
    if w.start_min < w.end_min:
        return w.start_min <= minute < w.end_min
    return minute >= w.start_min or minute < w.end_min


@pytest.mark.parametrize("text", SWEEP_WINDOWS)
@pytest.mark.parametrize("tz,first_day", SWEEP_WEEKS, ids=["AMS spring", "AMS fall", "NYC spring", "NYC fall"])
def test_sweep_across_dst_weeks(tz, first_day, text):
    w = parse_window(text)
    t0 = at(tz, *first_day)
    for step in range(7 * 24 * 4):
        now = t0 + step * 15 * M
        inside = in_window(w, now, tz)
        assert inside == wall_inside(w, now, tz), dt.datetime.fromtimestamp(now, tz)
        left = seconds_left(w, now, tz)
        until = seconds_until_open(w, now, tz)
        if inside:
            assert until == 0.0
            assert 0 < left <= 25 * H
            assert in_window(w, now + left - 1, tz)
            assert not in_window(w, now + left, tz)
        else:
            assert left == 0.0
            assert 0 < until <= 25 * H  # a fall-back day has 25 hours
            assert not in_window(w, now + until - 1, tz)
            assert in_window(w, now + until, tz)


def test_zone_by_name():
    assert zone("Europe/Amsterdam") == AMS
    assert zone("America/New_York") == NYC


# ---------------------------------------------------------------- intra-day passes

UTC = dt.timezone.utc


@pytest.mark.parametrize("text,minute", [("00:00", 0), ("09:30", 570), ("23:59", 1439), ("25:00", None), ("9:30", None), ("09:60", None), (" ", None)])
def test_parse_time(text, minute):
    if minute is None:
        with pytest.raises(ValueError):
            parse_time(text)
    else:
        assert parse_time(text) == minute


@pytest.mark.parametrize("window,minute,inside", [
    ("02:00-14:00", 180, True), ("02:00-14:00", 120, False), ("02:00-14:00", 840, False), ("02:00-14:00", 60, False),
    ("22:00-06:00", 1380, True), ("22:00-06:00", 180, True), ("22:00-06:00", 600, False), ("00:00-00:00", 5, True),
])
def test_minute_in_window(window, minute, inside):
    assert minute_in_window(parse_window(window), minute) is inside


def _utc(day: int, hour: int, minute: int = 0) -> float:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("window,passes,now,want", [
    # Inside the window: this window's passes, the past ones included (the caller skips them).
    ("02:00-14:00", [180, 540, 360], _utc(10, 4), [_utc(10, 3), _utc(10, 6), _utc(10, 9)]),
    # Before the window: the next window's.
    ("02:00-14:00", [180], _utc(10, 1), [_utc(10, 3)]),
    # After it: tomorrow's.
    ("02:00-14:00", [180], _utc(10, 15), [_utc(11, 3)]),
    # Across midnight: a pass after midnight is on the next day.
    ("22:00-06:00", [1380, 120], _utc(10, 23), [_utc(10, 23), _utc(11, 2)]),
    ("22:00-06:00", [1380, 120], _utc(11, 1), [_utc(10, 23), _utc(11, 2)]),
    (None, [600], _utc(10, 4), [_utc(10, 10)]),
])
def test_pass_instants(window, passes, now, want):
    w = parse_window(window) if window else None
    assert pass_instants(w, passes, now, UTC) == want
