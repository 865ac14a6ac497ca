"""The run's progress: a live line on a terminal, plain log lines otherwise.

Rules kept here: every line goes to one stream (stderr) with a timestamp and
the program name; the live line is redrawn at most four times a second and
never on a non-terminal.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """A live line on a terminal, plain log lines otherwise."""

    def __init__(self, status, stream=sys.stderr):
        self.status = status
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0

    def log(self, msg: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"{time.strftime('%H:%M:%S')} oca-fill: {msg}\n")
        self.stream.flush()

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.25:
            return
        self.last_draw = now
        s = self.status
        elapsed = max(1e-3, now - self.started)
        rate = s.bytes_filled / elapsed
        left = max(0, s.bytes_planned - s.bytes_filled)
        eta = time.strftime("%H:%M:%S", time.gmtime(left / rate)) if rate > 0 else "--:--:--"
        current = ", ".join(s.current[:2]) + ("..." if len(s.current) > 2 else "")
        line = (
            f"[{s.files_added + s.files_failed + s.files_skipped}/{s.files_total}] {s.bytes_filled / 1e9:.2f}/{s.bytes_planned / 1e9:.2f} GB "
            f"{rate * 8 / 1e6:.0f} Mb/s ETA {eta}  {current}"
        )
        self.stream.write("\r\x1b[K" + line[: 160])
        self.stream.flush()
