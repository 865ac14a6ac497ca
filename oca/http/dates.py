"""HTTP-date formatting and parsing (RFC 9110 §5.6.7).

Rules this module keeps:

- Nothing here performs I/O or reads the clock. ``time.gmtime`` is used only
  as a calendar conversion of a number the caller passes in.
- Output is always IMF-fixdate, built by hand from fixed English name tables,
  so the result never depends on the process locale (``time.strftime('%a')``
  would).
- Input is accepted in all three forms a recipient MUST accept (§5.6.7):
  IMF-fixdate, the obsolete RFC 850 form and ANSI C asctime.  HTTP-date is
  case-sensitive (§5.6.7), so names must be spelled exactly as in the
  grammar; any deviation, an impossible calendar date (30 Feb) or an
  out-of-range time answers ``None``.  Parsing never raises.
- The day name must be a valid name but is not checked against the date;
  a sender's wrong weekday does not change the instant it names.
- RFC 850 two-digit years: when the caller supplies ``now_s`` the §5.6.7
  rule is applied (a year that appears more than 50 years in the future is
  the most recent past year with those digits; the date is thus always
  placed within 50 years of now).  Without ``now_s`` the
  POSIX/C ``%y`` pivot is used (00-68 -> 20xx, 69-99 -> 19xx).  Rejected
  alternative: reading the clock here, which would make the parser impure.
- A leap second (``:60``) is accepted and, like ``calendar.timegm``, counts
  as the first second of the next minute.
"""

from __future__ import annotations

import re
import time

__all__ = ["format_http_date", "parse_http_date"]

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}

_DAY = "|".join(_DAY_NAMES)
_LONG_DAY = "|".join(_LONG_DAY_NAMES)
_MONTH = "|".join(_MONTH_NAMES)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"

# IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
_IMF_FIXDATE = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
# rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT
_RFC850_DATE = re.compile(rf"(?:{_LONG_DAY}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
# asctime-date: Sun Nov  6 08:49:37 1994   (day is 2DIGIT or SP DIGIT)
_ASCTIME_DATE = re.compile(rf"(?:{_DAY}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SECONDS_PER_DAY = 86_400
_FIFTY_YEARS_S = 50 * 365 * _SECONDS_PER_DAY  # §5.6.7 "more than 50 years"; leap days do not matter here


def format_http_date(unix_s: int) -> str:
    """Return ``unix_s`` as an IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    t = time.gmtime(unix_s)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def parse_http_date(s: str, *, now_s: int | None = None) -> int | None:
    """Return the unix seconds an HTTP-date names, or ``None`` if ``s`` is not one.

    ``now_s`` only matters for RFC 850 dates (two-digit years); see the module
    docstring.  Surrounding spaces and tabs (OWS) are ignored.
    """
    if not isinstance(s, str):
        return None
    s = s.strip(" \t")
    m = _IMF_FIXDATE.fullmatch(s)
    if m is not None:
        day, month, year, hh, mm, ss = m.groups()
        return _to_unix(int(year), _MONTH_NUMBER[month], int(day), int(hh), int(mm), int(ss))
    m = _ASCTIME_DATE.fullmatch(s)
    if m is not None:
        month, day, hh, mm, ss, year = m.groups()
        return _to_unix(int(year), _MONTH_NUMBER[month], int(day), int(hh), int(mm), int(ss))
    m = _RFC850_DATE.fullmatch(s)
    if m is not None:
        day, month, yy, hh, mm, ss = m.groups()
        args = (_MONTH_NUMBER[month], int(day), int(hh), int(mm), int(ss))
        two = int(yy)
        if now_s is None:
            return _to_unix((2000 if two <= 68 else 1900) + two, *args)
        # §5.6.7: a date more than 50 years in the future means the most
        # recent past year with those digits; symmetrically, one more than 50
        # years in the past is taken from the next century.
        now_year = time.gmtime(now_s).tm_year
        year = now_year - now_year % 100 + two
        result = _to_unix(year, *args)
        if result is None:
            return None
        if result > now_s + _FIFTY_YEARS_S:
            return _to_unix(year - 100, *args)
        if result <= now_s - _FIFTY_YEARS_S:
            return _to_unix(year + 100, *args)
        return result
    return None


def _to_unix(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int | None:
    """Validated proleptic-Gregorian UTC date and time to unix seconds."""
    if year < 1 or hour > 23 or minute > 59 or second > 60:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day < 1 or day > _DAYS_IN_MONTH[month - 1] + (1 if month == 2 and leap else 0):
        return None
    return _days_from_civil(year, month, day) * _SECONDS_PER_DAY + hour * 3600 + minute * 60 + second


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 (H. Hinnant's days_from_civil, proleptic Gregorian)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468
