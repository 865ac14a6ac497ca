"""One fill run per appliance: an exclusive `flock` on a file in the index directory.

Rules kept here:
- The lock is taken before anything is read or written and held until the
  run has written its final status; the kernel drops it when the process
  dies (kill -9 included), so a crash never leaves a stale lock.
- A second run does not wait: it raises `RunLocked` (the command line exits
  75, EX_TEMPFAIL), so a timer's run and a hand run never share a partial.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator

from fill.errors import RunLocked

LOCK_NAME = "oca-fill.lock"
EX_TEMPFAIL = 75


@contextlib.contextmanager
def run_lock(index_dir: str) -> Iterator[None]:
    path = os.path.join(index_dir, LOCK_NAME)
    os.makedirs(index_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunLocked(f"another oca-fill run holds {path}; try again when it has finished") from None
            raise
        yield
    finally:
        os.close(fd)
