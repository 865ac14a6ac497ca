"""The access log: one line per request, nginx's combined format or JSON.

Rules kept here:
- Lines are formatted with one f-string and buffered in memory; the buffer
  is written when it passes 64 KiB or at the worker's once-a-second sweep,
  so the hot path never waits for a `write` (aiohttp's logging-based access
  log cut a small-response benchmark by a factor of three: STACK-NOTES).
- Several workers append to the same file with O_APPEND; each write holds
  whole lines, so lines never interleave.
- `reopen` (SIGUSR1) flushes and opens the path again, for log rotation;
  the worker flushes on SIGHUP too, and at exit (SIGTERM), so only kill -9
  can lose lines: at most the last second's.
- A quoted field (referer, user agent) never ends early: a quote inside it
  is written as backslash-quote, a backslash doubled, a control character
  as backslash-x and two hex digits.
- A failing log (disk full) drops lines and counts them; it never stops serving.
"""

from __future__ import annotations

import json
import os
import re
import time

FLUSH_BYTES = 64 * 1024
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLog:
    def __init__(self, target: str, fmt: str):
        self.target = target
        self.json = fmt == "json"
        self._fd = -1
        self._buf: list[str] = []
        self._size = 0
        self._stamp_second = -1
        self._stamp = ""
        self.dropped = 0
        self.reopen()

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    def reopen(self) -> None:
        self.flush()
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
        if self.target == "-":
            self._fd = 1
        elif self.target:
            try:
                self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                self._fd = -1

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._stamp_second:
            t = time.localtime(second)
            off = t.tm_gmtoff
            sign = "+" if off >= 0 else "-"
            off = abs(off)
            self._stamp = (
                f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                f"{sign}{off // 3600:02d}{off % 3600 // 60:02d}"
            )
            self._stamp_second = second
        return self._stamp

    def log(self, peer: str, method: str, target: str, version: str, status: int, body_bytes: int,
            referer: str, agent: str, duration_s: float, now: float) -> None:
        if self.json:
            line = json.dumps(
                {"time": now, "remote_addr": peer, "method": method, "uri": target, "protocol": f"HTTP/{version}",
                 "status": status, "body_bytes_sent": body_bytes, "referer": referer, "user_agent": agent,
                 "request_time": round(duration_s, 6)},
                separators=(",", ":"),
            ) + "\n"
        else:
            line = (
                f'{peer} - - [{self._stamp if int(now) == self._stamp_second else self._time(now)}] '
                f'"{method} {target} HTTP/{version}" {status} {body_bytes} '
                f'"{_esc(referer)}" "{_esc(agent)}"\n'
            )
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        lines = len(self._buf)
        self._buf.clear()
        self._size = 0
        if self._fd < 0:
            self.dropped += lines
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            self.dropped += lines

    def close(self) -> None:
        self.flush()
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]').search
# Escaped field values, remembered: a worker sees a few dozen user agents
# and referers, each on thousands of lines. Bounded in count and length, so
# a client sending unique values cannot grow it (they are escaped each time).
ESCAPED_KEPT = 256
ESCAPED_MAX_CHARS = 512
_ESCAPED: dict[str, str] = {"": "-"}


def _esc(text: str) -> str:
    """`text` as it goes between quotes in a line ("-" when empty)."""
    done = _ESCAPED.get(text)
    if done is not None:
        return done
    if _NEEDS_ESCAPE(text) is not None:
        # unicode_escape doubles backslashes and writes control characters
        # as \xNN; quotes are escaped after it, so they stay escaped.
        done = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    else:
        done = text
    if len(_ESCAPED) < ESCAPED_KEPT and len(text) <= ESCAPED_MAX_CHARS:
        _ESCAPED[text] = done
    return done
