"""A FUSE passthrough file system for tests that fails with EIO (or ENOSPC) on command.

Run as its own process, never inside the test process (a FUSE server that
the test's own I/O waits on can deadlock it)::

    python -m tests.fusefs SOURCE MOUNTPOINT CONTROLFILE

Every operation is passed through to SOURCE. Before each operation the
server looks at CONTROLFILE (a path outside the mount, re-read only when it
changes) and fails the operation when it says so:

    (empty or missing)  pass everything through
    ``eio``             every operation fails with EIO
    ``eio-read``        only `read` fails with EIO
    ``eio-write``       only `write`, `create`, `truncate` and `fsync` fail
                        with EIO
    ``enospc-write``    `write` fails with ENOSPC (a disk filling up behind
                        the store's back, at exactly the moment of writing)

Mount choices, and why:
- no ``direct_io``: the server sends files with sendfile, which on FUSE needs
  the page cache. Without ``keep_cache`` the kernel drops a file's cached
  pages at each open, so a new open after a flip to ``eio-read`` does reach
  the server.
- ``attr_timeout=0,entry_timeout=0,negative_timeout=0``: the kernel asks the
  server for every lookup and stat, so a flip takes effect at once instead
  of after the default one-second attribute cache.
- ``big_writes`` (libfuse 2): writes arrive in up to 128 KiB instead of 4 KiB.

`fuse_mount` is the test-side context manager: it starts the server, waits
(with a deadline) until the mount shows in /proc/mounts, and unmounts and
reaps the server on the way out, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

MODES = ("", "eio", "eio-read", "eio-write", "enospc-write")
MOUNT_TIMEOUT_S = 10.0
UNMOUNT_TIMEOUT_S = 10.0
_WRITE_OPS = frozenset({"write", "create", "truncate", "fsync"})
_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- test side


@functools.lru_cache(maxsize=1)
def fuse_unavailable_reason() -> str | None:
    """Why FUSE tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "FUSE tests need root (mounting, and the FUSE mount's default access rules)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount") is None and shutil.which("umount") is None:
        return "neither fusermount nor umount is installed"
    probe = subprocess.run(
        [sys.executable, "-c", "import mfusepy"], capture_output=True, text=True, timeout=30, cwd=_ROOT
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"libfuse cannot be loaded through mfusepy: {last}"
    return None


def is_mounted(mountpoint: Path) -> bool:
    """True when `mountpoint` is a mount point in /proc/mounts."""
    # Resolve the parent only: a stat of the mount point itself would ask the
    # (possibly failing) file system.
    path = os.path.abspath(mountpoint)
    target = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 2 and _unescape_mount_field(fields[1]) == target:
                return True
    return False


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def set_mode(control: Path, mode: str) -> None:
    """Tell a running server what to fail (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    tmp = control.with_name(control.name + ".new")
    tmp.write_text(mode + "\n")
    os.replace(tmp, control)


def unmount(mountpoint: Path, *, timeout_s: float = UNMOUNT_TIMEOUT_S) -> None:
    """Unmount, politely first (`fusermount -u`, `umount`), then lazily (`umount -l`)."""
    for cmd in (["fusermount", "-u", "-q", str(mountpoint)], ["umount", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if not is_mounted(mountpoint):
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    if is_mounted(mountpoint):
        raise RuntimeError(f"{mountpoint}: still mounted after fusermount -u and umount -l")


@contextlib.contextmanager
def fuse_mount(source: Path, mountpoint: Path, control: Path, *, timeout_s: float = MOUNT_TIMEOUT_S) -> Iterator[Path]:
    """Mount the passthrough of `source` on `mountpoint` for the body of the `with`.

    Skips the calling test (pytest.skip, with the reason) when FUSE cannot
    run here. `control` must lie outside the mount; it is created empty
    (pass everything through) if missing.
    """
    reason = fuse_unavailable_reason()
    if reason is not None:
        import pytest

        pytest.skip(reason)
    source, mountpoint, control = Path(source), Path(mountpoint), Path(control)
    if os.path.realpath(control).startswith(os.path.realpath(mountpoint) + "/"):
        raise ValueError("the control file must lie outside the mount")
    if not control.exists():
        control.write_text("")
    mountpoint.mkdir(parents=True, exist_ok=True)
    if is_mounted(mountpoint):
        raise RuntimeError(f"{mountpoint}: something is mounted there already")
    log_path = control.with_name(control.name + ".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fusefs", str(source), str(mountpoint), str(control)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=_ROOT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not is_mounted(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"FUSE server exited with {proc.returncode} before mounting: {log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mountpoint}: not mounted after {timeout_s} s")
            time.sleep(0.02)
        yield mountpoint
    finally:
        try:
            unmount(mountpoint)
        finally:
            try:
                proc.wait(timeout=UNMOUNT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=UNMOUNT_TIMEOUT_S)


# ---------------------------------------------------------------- server side


class _Control:
    """The control file's current mode, re-read only when the file changes."""

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._mode = ""
        self._lock = threading.Lock()

    def mode(self) -> str:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return ""
        with self._lock:
            if key != self._seen:
                try:
                    with open(self.path, encoding="ascii", errors="replace") as fh:
                        self._mode = fh.read().strip()
                except FileNotFoundError:
                    self._mode = ""
                self._seen = key
            return self._mode

    def error_for(self, op: str) -> int | None:
        """The errno `op` fails with now, or None to pass it through."""
        mode = self.mode()
        if mode == "eio":
            return errno.EIO
        if mode == "eio-read" and op == "read":
            return errno.EIO
        if mode == "eio-write" and op in _WRITE_OPS:
            return errno.EIO
        if mode == "enospc-write" and op == "write":
            return errno.ENOSPC
        return None


def _make_operations(source: str, control: _Control):
    import mfusepy

    def guarded(op_name: str):
        def wrap(method):
            def inner(self, *args):
                err = control.error_for(op_name)
                if err is not None:
                    raise mfusepy.FuseOSError(err)
                return method(self, *args)

            inner.__name__ = method.__name__
            inner.__doc__ = method.__doc__
            return inner

        return wrap

    class Passthrough(mfusepy.Operations):
        use_ns = True

        def _real(self, path: str) -> str:
            return os.path.join(source, path.lstrip("/"))

        @guarded("getattr")
        def getattr(self, path, fh=None):
            st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
            return {
                "st_mode": st.st_mode,
                "st_nlink": st.st_nlink,
                "st_uid": st.st_uid,
                "st_gid": st.st_gid,
                "st_size": st.st_size,
                "st_blocks": st.st_blocks,
                "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns,
            }

        @guarded("access")
        def access(self, path, amode):
            if not os.access(self._real(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        @guarded("readdir")
        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(self._real(path))

        @guarded("readlink")
        def readlink(self, path):
            return os.readlink(self._real(path))

        @guarded("mkdir")
        def mkdir(self, path, mode):
            os.mkdir(self._real(path), mode)
            return 0

        @guarded("rmdir")
        def rmdir(self, path):
            os.rmdir(self._real(path))
            return 0

        @guarded("unlink")
        def unlink(self, path):
            os.unlink(self._real(path))
            return 0

        @guarded("rename")
        def rename(self, old, new):
            os.rename(self._real(old), self._real(new))
            return 0

        @guarded("symlink")
        def symlink(self, target, source_):
            os.symlink(source_, self._real(target))
            return 0

        @guarded("link")
        def link(self, target, source_):
            os.link(self._real(source_), self._real(target))
            return 0

        @guarded("chmod")
        def chmod(self, path, mode):
            os.chmod(self._real(path), mode)
            return 0

        @guarded("chown")
        def chown(self, path, uid, gid):
            os.chown(self._real(path), uid, gid)
            return 0

        @guarded("utimens")
        def utimens(self, path, times=None):
            if times is None:
                os.utime(self._real(path))
            else:
                os.utime(self._real(path), ns=(int(times[0]), int(times[1])))
            return 0

        @guarded("truncate")
        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._real(path), length)
            return 0

        @guarded("open")
        def open(self, path, flags):
            return os.open(self._real(path), flags & ~os.O_CREAT)

        @guarded("create")
        def create(self, path, mode, flags):
            return os.open(self._real(path), flags | os.O_CREAT, mode)

        @guarded("read")
        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        @guarded("write")
        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        @guarded("flush")
        def flush(self, path, fh):
            return 0

        @guarded("fsync")
        def fsync(self, path, datasync, fh):
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
            return 0

        @guarded("fsyncdir")
        def fsyncdir(self, path, datasync, fh):
            fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return 0

        def release(self, path, fh):
            # Never fails: the descriptor must be closed whatever the mode.
            os.close(fh)
            return 0

        @guarded("statfs")
        def statfs(self, path):
            sv = os.statvfs(self._real(path))
            return {
                key: getattr(sv, key)
                for key in (
                    "f_bsize",
                    "f_frsize",
                    "f_blocks",
                    "f_bfree",
                    "f_bavail",
                    "f_files",
                    "f_ffree",
                    "f_favail",
                    "f_namemax",
                )
            }

    return Passthrough()


def serve(source: str, mountpoint: str, control_path: str) -> None:
    """Run the FUSE loop in the foreground until unmounted or signalled."""
    import mfusepy

    source = os.path.realpath(source)
    if not os.path.isdir(source):
        raise SystemExit(f"fusefs: {source}: not a directory")
    ops = _make_operations(source, _Control(os.path.abspath(control_path)))
    options = {"foreground": True, "fsname": "ocatestfs", "attr_timeout": 0, "entry_timeout": 0, "negative_timeout": 0}
    if mfusepy.fuse_version_major == 2:
        options["big_writes"] = True
    mfusepy.FUSE(ops, mountpoint, **options)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m tests.fusefs SOURCE MOUNTPOINT CONTROLFILE", file=sys.stderr)
        raise SystemExit(2)
    serve(*args)


if __name__ == "__main__":
    main()
