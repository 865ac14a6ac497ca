"""A token bucket shared by every download of a fill run.

Nothing here reads the clock: callers pass `now_s` (monotonic seconds).
Rules kept here:
- The rate is in bits per second (10^6 per Mb/s, as `rate_limit_mbps`).
- The bucket holds at most half a second's worth of bytes (`burst_s`), so a burst after an
  idle spell is under one second's worth. It starts empty, so a run never
  begins with a burst; over any 10 s the bytes let through stay within the
  rate plus at most 5% (half a second in ten) after an idle spell.
- `take` never refuses: it debits the bytes (the bucket may go negative)
  and says how long to wait before the next read, so large reads and small
  reads are treated the same and concurrent downloads share fairly.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate_bps: float | None, now_s: float, burst_s: float = 0.5):
        self.rate_Bps = None if rate_bps is None else rate_bps / 8.0
        self.capacity = 0.0 if self.rate_Bps is None else self.rate_Bps * burst_s
        self.tokens = 0.0  # start empty: no burst at the start of a run
        self.last = now_s

    def take(self, nbytes: int, now_s: float) -> float:
        """Debit `nbytes`; return seconds to wait before reading more."""
        if self.rate_Bps is None:
            return 0.0
        elapsed = max(0.0, now_s - self.last)
        self.last = now_s
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_Bps)
        self.tokens -= nbytes
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate_Bps
