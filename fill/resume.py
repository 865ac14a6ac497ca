"""What to do with a source's answer to one download request: a pure decision.

Nothing here performs I/O. `resume_action(status, content_range, length,
offset, size)` takes the status, the `Content-Range` and `Content-Length`
headers (None when absent), the bytes already on disk (`offset`: a `Range:
bytes=<offset>-` was sent when it is above 0) and the manifest's size, and
says whether to append the body, to start the file over, or to fail this
attempt (and whether retrying the same source may help). Rules kept here:
- 200 answers the whole file (RFC 9110 15.3.1): with offset 0 it is taken;
  while resuming it means the source ignored the Range or the If-Range
  validator no longer matches (13.1.5), so the partial starts over.
- 206 is taken only in answer to our Range, and only with exactly
  `bytes <offset>-<size-1>/<size>` (14.4): any other range is another file
  or another part of it.
- 416 while resuming (15.5.17): what we kept does not fit the source's file;
  the partial starts over and this attempt fails (the next one is clean).
- Content-Length, when present, must be exactly what is missing; a source
  offering another length serves another file, and asking again will not
  change that (no retry).
- 5xx, 408 and 429 may pass: retry. Other statuses will not: next source.
"""

from __future__ import annotations

from dataclasses import dataclass

APPEND = "append"
RESTART = "restart"
FAIL = "fail"


@dataclass(frozen=True, slots=True)
class ResumeAction:
    kind: str  # APPEND, RESTART (truncate the partial, then append the body), or FAIL
    reason: str = ""
    retry: bool = True
    start_over: bool = False  # FAIL only: truncate the partial before the next attempt


def _length_action(length: int | None, expected: int, kind: str) -> ResumeAction:
    if length is not None and length != expected:
        return ResumeAction(FAIL, f"wrong length: {length} bytes offered, {expected} expected", retry=False)
    return ResumeAction(kind)


def resume_action(status: int, content_range: str | None, length: int | None, offset: int, size: int) -> ResumeAction:
    """The action for a response to a request that asked for bytes `offset`.. of a `size`-byte file."""
    resuming = offset > 0
    if status == 200:
        return _length_action(length, size, RESTART if resuming else APPEND)
    if status == 206:
        if not resuming:
            return ResumeAction(FAIL, "HTTP 206 to a request without Range", retry=False)
        want = f"bytes {offset}-{size - 1}/{size}"
        if (content_range or "").strip() != want:
            return ResumeAction(FAIL, f"resumed with unexpected Content-Range {(content_range or '')[:80]!r} (wanted {want!r})")
        return _length_action(length, size - offset, APPEND)
    if status == 416 and resuming:
        return ResumeAction(FAIL, "416 on resume; starting over", start_over=True)
    if 500 <= status <= 599 or status in (408, 429):
        return ResumeAction(FAIL, f"HTTP {status}")
    return ResumeAction(FAIL, f"HTTP {status}", retry=False)
