"""The machine's local time zone, for fill windows given without `timezone`.

The shell beside the pure `fill.window`: this reads the environment (`TZ`)
and `/etc/localtime`, and falls back to the clock's idea of the local zone.
"""

from __future__ import annotations

import datetime as dt
import os
from zoneinfo import ZoneInfo


def zone(name: str | None) -> dt.tzinfo:
    """The named IANA zone, or the machine's local zone."""
    if name:
        return ZoneInfo(name)
    return _system_zone() or dt.datetime.now().astimezone().tzinfo  # type: ignore[return-value]


def _system_zone() -> dt.tzinfo | None:
    tz = os.environ.get("TZ")
    if tz:
        try:
            return ZoneInfo(tz.lstrip(":"))
        except Exception:
            return None
    try:
        target = os.path.realpath("/etc/localtime")
        marker = "/zoneinfo/"
        if marker in target:
            return ZoneInfo(target.split(marker, 1)[1])
    except Exception:
        return None
    return None
