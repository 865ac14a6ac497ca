"""The store under faults: kill -9 mid-ingest, a disk that vanishes, a disk
that returns EIO, a disk that fills up. Real subprocesses, real LMDB, real
mounts (tmpfs, bind and a FUSE passthrough from `tests.fusefs`).

After every fault the same things must hold: `oca-admin check` finishes
and a second run finds nothing to repair; every id the index shows has a
complete file of the right size and checksum (a partial object is never
visible); a failed store stays failed across restarts until an operator
enables it; the other stores keep serving.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import xxhash

from oca.config import load_config
from oca.store import maintenance
from oca.store.content import ContentStore
from oca.store.disks import Disk, StoreFullError
from oca.store.index import STATE_FAILED, STATE_OK, Entry, Index
from oca.store.layout import MARKER_NAME, OBJECTS_DIR, QUARANTINE_DIR, TMP_DIR
from tests.fusefs import fuse_mount, fuse_unavailable_reason, is_mounted, set_mode
from tests.support import ROOT, admin, is_root

MTIME = 1_700_000_000
MiB = 1 << 20
SEED = 20240611

needs_root = pytest.mark.skipif(not is_root(), reason="mounting tmpfs, bind and FUSE file systems needs root")


# ---------------------------------------------------------------- helpers


def write_cfg(base: Path, store_paths: list[Path], reserve_percent: float = 0.0) -> Path:
    lines = [
        "[appliance]",
        'id = "oca-fault-1"',
        "[server]",
        'listen = ["127.0.0.1:18081"]',
        "[index]",
        f'path = "{base / "index"}"',
        "map_size_gb = 1",
    ]
    for p in store_paths:
        p.mkdir(parents=True, exist_ok=True)
        lines += ["[[stores]]", f'path = "{p}"', f"reserve_percent = {reserve_percent}"]
    cfg = base / "oca.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def open_cs(cfg: Path) -> ContentStore:
    return ContentStore.open(load_config(str(cfg)))


def payload(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    block = rng.randbytes(64 * 1024)
    return (block * (n // len(block) + 1))[:n]


def write_source(path: Path, size: int, seed: int) -> str:
    """A source file of `size` bytes; returns its xxh3-128."""
    h = xxhash.xxh3_128()
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 4 * MiB))
            fh.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def publish(cs: ContentStore, content_id: str, data: bytes, disk: Disk, mtime_s: int = MTIME) -> Entry:
    ingest = cs.begin_ingest(content_id, len(data), disk=disk)
    ingest.write(data)
    return ingest.commit(mtime_s=mtime_s)


def files_under(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def hash_path(path: str) -> tuple[str, int]:
    return maintenance.hash_file(path)


def one_line_error(proc: subprocess.CompletedProcess, contains: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("oca-admin: error: ") and contains in lines[0], lines[0]
    return lines[0]


def store_line(cfg: Path, path: Path) -> str:
    """`oca-admin stores`'s line for one store, from a fresh process."""
    proc = admin(cfg, "stores", check=True)
    for line in proc.stdout.splitlines():
        if line.split()[0] == str(path):
            return line
    raise AssertionError(f"{path} not in: {proc.stdout}")


def ls_ids(cfg: Path) -> list[str]:
    return [line.split()[0] for line in admin(cfg, "ls", check=True).stdout.splitlines()]


def assert_index_consistent(cfg: Path, known: dict[str, set[str]] | None = None) -> list[Entry]:
    """Every entry names a complete, correct file. Returns the entries.

    `known` maps ids to the checksums of every version ever offered for them:
    what is visible must be one of those, byte for byte.
    """
    config = load_config(str(cfg))
    idx = Index(config.index.path, map_size_bytes=1 << 30)
    try:
        entries = list(idx.entries())
        stores = idx.stores()
    finally:
        idx.close()
    for e in entries:
        rec = stores[e.store_uuid]
        path = os.path.join(rec.path, e.relpath)
        assert os.path.isfile(path), f"{e.content_id}: {path} is missing"
        digest, size = hash_path(path)
        assert size == e.size, f"{e.content_id}: {size} bytes on disk, index says {e.size}"
        assert digest == e.checksum, f"{e.content_id}: partial or wrong bytes visible ({digest} != {e.checksum})"
        if known is not None:
            assert e.checksum in known[e.content_id], f"{e.content_id}: checksum of no version ever published"
    return entries


def assert_disks_clean(cfg: Path, entries: list[Entry]) -> None:
    """No temporary files, and nothing under objects/ that the index does not name."""
    config = load_config(str(cfg))
    named: dict[str, set[str]] = {}
    idx = Index(config.index.path, map_size_bytes=1 << 30)
    try:
        by_uuid = {u: r.path for u, r in idx.stores().items()}
    finally:
        idx.close()
    for e in entries:
        named.setdefault(by_uuid[e.store_uuid], set()).add(e.relpath)
    for store in config.stores:
        assert files_under(Path(store.path, TMP_DIR)) == [], f"{store.path}: tmp/ not empty"
        on_disk = {f"{OBJECTS_DIR}/{rel}" for rel in files_under(Path(store.path, OBJECTS_DIR))}
        assert on_disk == named.get(store.path, set()), f"{store.path}: objects/ and index disagree"


# ---------------------------------------------------------------- mounts


class Mounts:
    """Mounts made by one test; whatever is still mounted is detached at teardown."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def _mount(self, argv: list[str], target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            if not self.made:
                pytest.skip(f"cannot mount here ({' '.join(argv)}): {proc.stderr.strip()}")
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        self.made.append(target)
        assert is_mounted(target)
        return target

    def tmpfs(self, target: Path, options: str = "size=64m") -> Path:
        return self._mount(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], target)

    def bind(self, source: Path, target: Path) -> Path:
        return self._mount(["mount", "--bind", str(source), str(target)], target)

    @staticmethod
    def detach(target: Path) -> None:
        """`umount -l`: the file system leaves the tree; open descriptors keep working."""
        subprocess.run(["umount", "-l", str(target)], check=True, capture_output=True, timeout=30)
        assert not is_mounted(target)

    def cleanup(self) -> None:
        for target in reversed(self.made):
            while is_mounted(target):
                if subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30).returncode:
                    break


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    try:
        yield m
    finally:
        m.cleanup()


# ---------------------------------------------------------------- 1. kill -9 mid-ingest

# Publishes and removes small files across every store in a loop until killed:
# kills land in the copy, the fsyncs, the renames, the index commit and the
# unlink of a replaced or removed file.
LOOP_SCRIPT = r"""
import sys
from oca.config import load_config
from oca.store.content import ContentStore
cfg, seed, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cs = ContentStore.open(load_config(cfg))
datas = [open(s, "rb").read() for s in sources]
print("ready", flush=True)
i = seed
while True:
    data = datas[i % len(datas)]
    ingest = cs.begin_ingest(f"small-{i % 7}", len(data), disk=cs.disks[i % len(cs.disks)])
    ingest.write(data)
    ingest.commit(mtime_s=1_700_000_000 + i)
    if i % 4 == 3:
        cs.remove(f"small-{(i + 3) % 7}")
    i += 1
"""

KILLS = 30
BIG_BYTES = 96 * MiB


def _check_twice(cfg: Path, known: dict[str, set[str]]) -> str:
    """Run check, assert the invariants, run check again; returns the first run's output."""
    first = admin(cfg, "check")
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    entries = assert_index_consistent(cfg, known)
    assert_disks_clean(cfg, entries)
    second = admin(cfg, "check")
    assert second.returncode == 0 and second.stdout.splitlines()[-1] == "consistent", second.stdout
    return first.stdout


def _count(report: str, label: str) -> int:
    for line in report.splitlines():
        if line.startswith(label + ":"):
            return int(line.rsplit(":", 1)[1])
    raise AssertionError(f"no {label!r} in {report}")


@pytest.mark.slow
def test_kill_9_during_ingest_never_leaves_a_partial_object(tmp_path):
    rng = random.Random(SEED)
    stores = [tmp_path / f"store{i}" for i in range(3)]
    cfg = write_cfg(tmp_path, stores)
    src = tmp_path / "src"
    src.mkdir()
    known: dict[str, set[str]] = {}
    bigs = []
    for k in range(2):
        path = src / f"big{k}"
        bigs.append((str(path), write_source(path, BIG_BYTES, SEED + k)))
    smalls = []
    for k in range(5):
        path = src / f"small{k}"
        smalls.append((str(path), write_source(path, rng.randrange(64 * 1024, 1 * MiB), SEED + 10 + k)))
    for i in range(7):
        known[f"small-{i}"] = {c for _p, c in smalls}
    for i in range(3):
        known[f"big-{i}"] = {c for _p, c in bigs}

    # One uninterrupted ingest: initialises the stores and times an ingest.
    start = time.monotonic()
    admin(cfg, "ingest", bigs[0][0], "--id", "big-0", "--mtime", str(MTIME), check=True)
    full_s = time.monotonic() - start
    assert _check_twice(cfg, known)

    outcomes = {"temp removed": 0, "orphan quarantined": 0, "clean": 0}
    for n in range(KILLS):
        if n % 2 == 0:
            path, _sum = bigs[n % 4 // 2]
            argv = [sys.executable, "-m", "oca.admin", "--config", str(cfg), "ingest", path,
                    "--id", f"big-{n % 3}", "--mtime", str(MTIME + n)]
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            delay_s = rng.uniform(0, full_s * 1.1)
        else:
            argv = [sys.executable, "-c", LOOP_SCRIPT, str(cfg), str(n), *(p for p, _c in smalls)]
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout.readline().strip() == "ready"
            delay_s = rng.uniform(0, 0.3)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
        # Before any repair: whatever the index shows is complete and correct.
        assert_index_consistent(cfg, known)
        report = _check_twice(cfg, known)
        if _count(report, "temporary files removed"):
            outcomes["temp removed"] += 1
        if _count(report, "unindexed files quarantined"):
            outcomes["orphan quarantined"] += 1
        if "consistent" == report.splitlines()[-1]:
            outcomes["clean"] += 1
        for store in stores:  # quarantined copies are kept by design; the test frees the space
            shutil.rmtree(store / QUARANTINE_DIR)
            (store / QUARANTINE_DIR).mkdir()
    print(f"kill outcomes over {KILLS} kills (ingest takes {full_s:.2f} s): {outcomes}")
    # The kills did interrupt ingests: leftovers of dead processes were found and removed.
    assert outcomes["temp removed"] > 0, outcomes
    # And every store ended up holding published objects.
    entries = assert_index_consistent(cfg, known)
    cs = open_cs(cfg)
    try:
        assert {e.store_uuid for e in entries} == {d.uuid for d in cs.disks}
        assert all(d.working for d in cs.disks)
    finally:
        cs.close()


# ---------------------------------------------------------------- 2. a store disappears


@pytest.mark.root
@needs_root
def test_store_on_tmpfs_disappears(tmp_path, mounts):
    stores = [mounts.tmpfs(tmp_path / f"store{i}") for i in range(3)]
    cfg = write_cfg(tmp_path, stores)
    cs = open_cs(cfg)
    try:
        disks = cs.disks
        datas = {}
        for i, disk in enumerate(disks):
            for k in range(3):
                datas[f"s{i}-{k}"] = payload(512 * 1024 + k, seed=10 * i + k)
                publish(cs, f"s{i}-{k}", datas[f"s{i}-{k}"], disk)
        assert all(d.working for d in disks)
        held = open(cs.lookup("s1-0").path, "rb")
        try:
            head = held.read(1000)
            Mounts.detach(stores[1])
            assert os.listdir(stores[1]) == []  # the empty mount point
            # The serving path does no I/O, so it cannot know yet...
            loc = cs.lookup("s1-1")
            assert loc is not None
            # ...until a read fails: the store layer is told, checks the disk, fails it.
            with pytest.raises(FileNotFoundError) as info:
                open(loc.path, "rb")
            assert cs.report_io_error(disks[1], info.value, "opening")
            assert not disks[1].working and "marker missing" in disks[1].reason
            assert [cs.lookup(f"s1-{k}") for k in range(3)] == [None, None, None]
            for i in (0, 2):
                for k in range(3):
                    with open(cs.lookup(f"s{i}-{k}").path, "rb") as fh:
                        assert fh.read() == datas[f"s{i}-{k}"]
            assert sorted(cs.inventory()[1]) == sorted(k for k in datas if not k.startswith("s1-"))
            # The descriptor opened before the unmount reads to the end.
            assert head + held.read() == datas["s1-0"]
        finally:
            held.close()
    finally:
        cs.close()

    # A restart (fresh processes): still failed, with the reason.
    line = store_line(cfg, stores[1])
    assert line.split()[1] == "failed" and "reason='" in line and "marker missing" in line
    assert sorted(ls_ids(cfg)) == sorted(k for k in datas if not k.startswith("s1-"))

    # The slot gets an EMPTY tmpfs again (a dead disk's mount point): never initialised.
    mounts.tmpfs(stores[1])
    proc = admin(cfg, "check", check=True)
    assert "failed stores skipped: 1" in proc.stdout
    line = store_line(cfg, stores[1])
    assert line.split()[1] == "failed"
    assert os.listdir(stores[1]) == []
    assert sorted(ls_ids(cfg)) == sorted(k for k in datas if not k.startswith("s1-"))

    # Plain enable-store refuses an empty directory; --new-disk takes it as a new disk.
    one_line_error(admin(cfg, "enable-store", str(stores[1])), "has no marker")
    out = admin(cfg, "enable-store", "--new-disk", str(stores[1]), check=True).stdout
    assert "new disk initialised" in out and "3 entries of the old disk forgotten" in out
    assert store_line(cfg, stores[1]).split()[1] == "ok"
    assert (stores[1] / MARKER_NAME).exists()
    assert sorted(ls_ids(cfg)) == sorted(k for k in datas if not k.startswith("s1-"))
    assert admin(cfg, "check", check=True).stdout.splitlines()[-1] == "consistent"
    assert_disks_clean(cfg, assert_index_consistent(cfg))


@pytest.mark.root
@needs_root
def test_store_comes_back_with_its_content(tmp_path, mounts):
    """A bind mount of a kept directory: the disk goes away and returns intact."""
    disk_dir = tmp_path / "the-disk"
    disk_dir.mkdir()
    stores = [tmp_path / "store0", tmp_path / "store1"]
    mounts.bind(disk_dir, stores[1])
    cfg = write_cfg(tmp_path, stores)
    # A long-lived process, as a server worker would be.
    cs = open_cs(cfg)
    try:
        publish(cs, "here", b"on store0", cs.disks[0])
        for k in range(3):
            publish(cs, f"away-{k}", payload(100_000, k), cs.disks[1])
        assert cs.lookup("away-0") is not None
        Mounts.detach(stores[1])
        # Detected by another process: oca-admin check.
        proc = admin(cfg, "check", check=True)
        assert "failed stores skipped: 1" in proc.stdout and "marker missing" in proc.stdout
        # The long-lived process sees it at its next lookup (the index carries store states).
        assert cs.lookup("away-0") is None
        assert cs.lookup("here") is not None
        assert cs.inventory()[1] == ["here"]
    finally:
        cs.close()
    mounts.bind(disk_dir, stores[1])  # the disk is back, content and marker intact
    assert store_line(cfg, stores[1]).split()[1] == "failed"  # but nobody said so yet
    assert ls_ids(cfg) == ["here"]
    assert admin(cfg, "enable-store", str(stores[1]), check=True).stdout.strip() == f"{stores[1]}: enabled"
    assert ls_ids(cfg) == ["away-0", "away-1", "away-2", "here"]
    cs = open_cs(cfg)
    try:
        for k in range(3):
            with open(cs.lookup(f"away-{k}").path, "rb") as fh:
                assert fh.read() == payload(100_000, k)
    finally:
        cs.close()
    assert admin(cfg, "check", check=True).stdout.splitlines()[-1] == "consistent"


# ---------------------------------------------------------------- 3. a store returns EIO


@pytest.fixture
def fuse_store(tmp_path):
    """(store0 on FUSE over a source dir, store1 a plain dir, control file, cfg)."""
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(reason)
    source, mnt, control = tmp_path / "fuse-source", tmp_path / "store0", tmp_path / "fuse-control"
    source.mkdir()
    with fuse_mount(source, mnt, control):
        cfg = write_cfg(tmp_path, [mnt, tmp_path / "store1"])
        yield mnt, tmp_path / "store1", control, cfg


@pytest.mark.root
@needs_root
def test_store_returning_eio_on_read_is_failed_by_verify(fuse_store):
    mnt, plain, control, cfg = fuse_store
    cs = open_cs(cfg)
    try:
        fuse_disk, plain_disk = cs.disks
        assert fuse_disk.working and plain_disk.working
        datas = {}
        for i, disk in enumerate((fuse_disk, plain_disk)):
            for k in range(3):
                datas[f"d{i}-{k}"] = payload(300_000 + k, seed=i * 10 + k)
                publish(cs, f"d{i}-{k}", datas[f"d{i}-{k}"], disk)
        with open(cs.lookup("d0-1").path, "rb") as fh:
            assert fh.read() == datas["d0-1"]
        first = maintenance.verify(cs)
        assert (first.checked, first.corrupt, first.unreadable) == (6, [], [])

        set_mode(control, "eio-read")
        report = maintenance.verify(cs)
        assert not fuse_disk.working
        assert "Input/output error" in fuse_disk.reason
        assert report.corrupt == []
        assert len(report.unreadable) == 1  # the first failure takes the store out; the rest are skipped
        assert report.checked == 3  # the other store's objects were all verified
        assert [cs.lookup(f"d0-{k}") for k in range(3)] == [None] * 3
        for k in range(3):
            with open(cs.lookup(f"d1-{k}").path, "rb") as fh:
                assert fh.read() == datas[f"d1-{k}"]
        # Nothing was quarantined or dropped: the disk is suspect, not the data.
        assert cs.index.count() == 6
    finally:
        cs.close()

    # Persisted: fresh processes see it failed, even once the disk reads again.
    for mode in ("eio-read", ""):
        set_mode(control, mode)
        line = store_line(cfg, mnt)
        assert line.split()[1] == "failed" and "Input/output error" in line
        assert ls_ids(cfg) == ["d1-0", "d1-1", "d1-2"]
    assert admin(cfg, "enable-store", str(mnt), check=True).stdout.strip() == f"{mnt}: enabled"
    assert len(ls_ids(cfg)) == 6
    assert admin(cfg, "verify", check=True).stdout.splitlines()[-1].startswith("verified 6 objects")


@pytest.mark.root
@needs_root
def test_store_returning_eio_everywhere(fuse_store):
    mnt, plain, control, cfg = fuse_store
    cs = open_cs(cfg)
    try:
        fuse_disk, plain_disk = cs.disks
        publish(cs, "f0", b"on fuse", fuse_disk)
        publish(cs, "p0", b"on plain", plain_disk)
        loc = cs.lookup("f0")
        set_mode(control, "eio")
        # A read attempt through the located path: the error goes to the store layer.
        with pytest.raises(OSError) as info:
            open(loc.path, "rb")
        assert cs.report_io_error(fuse_disk, info.value, "opening")
        assert cs.lookup("f0") is None
        with open(cs.lookup("p0").path, "rb") as fh:
            assert fh.read() == b"on plain"
    finally:
        cs.close()
    # The operator's tools do not crash on a disk that answers every call with EIO,
    # and the other store is still usable from fresh processes.
    for command in ("verify", "check", "stores", "ls"):
        proc = admin(cfg, command)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        if command == "verify":  # the dead store's files were not checked, and verify says so
            assert f"store not verified: {mnt}" in proc.stdout, proc.stdout
    assert ls_ids(cfg) == ["p0"]
    line = store_line(cfg, mnt)
    assert line.split()[1] == "failed"
    # The reason names the I/O error, not a missing directory (a mount point that answers EIO exists).
    assert "Input/output error" in line and "does not exist" not in line, line


@pytest.mark.root
@needs_root
def test_verify_subprocess_on_a_fresh_eio_store(fuse_store):
    """`oca-admin verify` is the first process to meet the EIO."""
    mnt, plain, control, cfg = fuse_store
    cs = open_cs(cfg)
    try:
        fuse_disk, plain_disk = cs.disks
        for k in range(3):
            publish(cs, f"f{k}", payload(50_000, k), fuse_disk)
        publish(cs, "p0", b"on plain", plain_disk)
    finally:
        cs.close()
    set_mode(control, "eio-read")
    proc = admin(cfg, "verify")
    assert proc.returncode == 0, proc.stderr  # unreadable is not corrupt
    assert "Traceback" not in proc.stderr
    # The first read is the marker's, when verify attaches the stores: the
    # store is failed before any object is hashed, and its objects are skipped.
    assert proc.stdout.splitlines()[-1] == "verified 1 objects, 8 B; 0 corrupt, 0 unreadable"
    line = store_line(cfg, mnt)
    assert line.split()[1] == "failed" and "cannot read marker: Input/output error" in line
    assert ls_ids(cfg) == ["p0"]


# ---------------------------------------------------------------- 4. disk full


@pytest.fixture
def tiny_store(tmp_path, mounts):
    """One 2 MiB tmpfs store with no reserve, initialised."""
    store = mounts.tmpfs(tmp_path / "store0", "size=2m")
    cfg = write_cfg(tmp_path, [store], reserve_percent=0)
    admin(cfg, "check", check=True)
    return store, cfg


def _assert_nothing_left(store: Path, cfg: Path, content_id: str) -> None:
    assert files_under(store / TMP_DIR) == []
    assert files_under(store / OBJECTS_DIR) == []
    assert content_id not in ls_ids(cfg)
    assert store_line(cfg, store).split()[1] == "ok"


@pytest.mark.root
@needs_root
def test_too_big_for_any_store_is_refused_up_front(tmp_path, tiny_store):
    store, cfg = tiny_store
    big = tmp_path / "big"
    big.write_bytes(payload(3 * MiB, 1))
    err = one_line_error(admin(cfg, "ingest", str(big), "--id", "big"), f"no store has {3 * MiB} bytes free")
    assert "above its reserve" in err
    _assert_nothing_left(store, cfg, "big")
    small = tmp_path / "small"
    small.write_bytes(payload(512 * 1024, 2))
    admin(cfg, "ingest", str(small), "--id", "small", check=True)
    assert ls_ids(cfg) == ["small"]


@pytest.mark.root
@needs_root
def test_enospc_while_writing(tmp_path, tiny_store):
    """The disk fills up behind the store's back after placement chose it."""
    store, cfg = tiny_store
    filler = store / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 256 * 1024)  # leave 256 KiB
    assert 0 < os.statvfs(store).f_bavail * os.statvfs(store).f_frsize < MiB
    cs = open_cs(cfg)
    try:
        disk = cs.disks[0]
        ingest = cs.begin_ingest("too-big", MiB, disk=disk)
        with pytest.raises(StoreFullError, match="disk full while writing"):
            ingest.write(payload(MiB, 3))
        assert disk.working
        assert cs.lookup("too-big") is None and cs.index.get("too-big") is None
        assert cs.index.stores()[disk.uuid].state == STATE_OK
    finally:
        cs.close()
    _assert_nothing_left(store, cfg, "too-big")
    filler.unlink()
    small = tmp_path / "small"
    small.write_bytes(payload(MiB, 4))
    admin(cfg, "ingest", str(small), "--id", "small", check=True)
    assert ls_ids(cfg) == ["small"]
    assert admin(cfg, "check", check=True).stdout.splitlines()[-1] == "consistent"


@pytest.mark.root
@needs_root
def test_enospc_out_of_inodes_via_admin(tmp_path, mounts):
    """A real ENOSPC in `oca-admin ingest`: the tmpfs runs out of inodes at publish time."""
    store = mounts.tmpfs(tmp_path / "store0", "size=2m,nr_inodes=64")
    cfg = write_cfg(tmp_path, [store], reserve_percent=0)
    admin(cfg, "check", check=True)
    fillers = []
    with contextlib.suppress(OSError):
        while True:
            path = store / f"inode-filler-{len(fillers)}"
            path.touch()
            fillers.append(path)
    fillers.pop().unlink()  # one inode left: enough for the temporary file, not its fan-out directories
    src = tmp_path / "src"
    src.write_bytes(payload(100_000, 5))
    one_line_error(admin(cfg, "ingest", str(src), "--id", "no-inode"), "disk full while publishing")
    _assert_nothing_left(store, cfg, "no-inode")
    for path in fillers:
        path.unlink()
    admin(cfg, "ingest", str(src), "--id", "fits", check=True)
    assert ls_ids(cfg) == ["fits"]


@pytest.mark.root
@needs_root
def test_enospc_during_write_via_admin(tmp_path):
    """`oca-admin ingest` meets ENOSPC on write(2) itself (a FUSE store that says so)."""
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(reason)
    source, mnt, control = tmp_path / "fuse-source", tmp_path / "store0", tmp_path / "fuse-control"
    source.mkdir()
    with fuse_mount(source, mnt, control):
        cfg = write_cfg(tmp_path, [mnt], reserve_percent=0)
        admin(cfg, "check", check=True)
        src = tmp_path / "src"
        src.write_bytes(payload(300_000, 6))
        set_mode(control, "enospc-write")
        one_line_error(admin(cfg, "ingest", str(src), "--id", "full"), "disk full while writing")
        set_mode(control, "")
        _assert_nothing_left(mnt, cfg, "full")
        admin(cfg, "ingest", str(src), "--id", "fits", check=True)
        assert ls_ids(cfg) == ["fits"]
        assert STATE_FAILED not in store_line(cfg, mnt)


# ---------------------------------------------------------------- 5. index disk full


@pytest.mark.root
@needs_root
def test_index_disk_full_refuses_the_publish_and_leaves_no_unindexed_file(tmp_path, mounts):
    """Issue 10 defect 15: a commit the index cannot take removes the file it renamed into place."""
    from oca.store.disks import StoreError

    mounts.tmpfs(tmp_path / "index", "size=1m")
    cfg = write_cfg(tmp_path, [tmp_path / "store0"])
    cs = open_cs(cfg)
    published = []
    try:
        with pytest.raises(StoreError, match="not published: .*index write failed"):
            for i in range(20_000):
                publish(cs, f"item-{i:05d}-{'p' * 80}", b"%d" % i, cs.disks[0])
                published.append(i)
        assert published, "the index filled before anything was published"
        assert cs.disks[0].working
    finally:
        cs.close()
    entries = assert_index_consistent(cfg)
    assert len(entries) == len(published)
    assert_disks_clean(cfg, entries)
