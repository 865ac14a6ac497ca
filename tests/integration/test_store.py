"""The content store on real LMDB and real directories, several stores, no root.

Each test builds an appliance under tmp_path: a config file, an index
directory and two or three store directories on the same file system.
`oca-admin` runs as a real subprocess where its output or exit code is the
point; otherwise the store is driven in-process through its public face.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import xxhash

from oca.config import load_config
from oca.store import index as index_module
from oca.store import maintenance
from oca.store.content import ContentStore
from oca.store.disks import Disk, StoreFullError
from oca.store.index import (
    STATE_FAILED,
    STATE_OK,
    Entry,
    Index,
    SchemaError,
    StoreRecord,
    create_v1_index_for_tests,
)
from oca.store.layout import MARKER_NAME, OBJECTS_DIR, PARTIAL_DIR, QUARANTINE_DIR, TMP_DIR, STORE_DIRS, tmp_name
from tests.support import ROOT, admin

MTIME = 1_700_000_000
FAKE_NOW = 2_000_000_000.0  # the clock handed to check(); file times are set against it


# ---------------------------------------------------------------- helpers


def write_cfg(base: Path, reserves: list[float] | int = 2, *, extra: str = "") -> Path:
    """A config with one store per entry of `reserves` (their reserve_percent)."""
    if isinstance(reserves, int):
        reserves = [0.0] * reserves
    base.mkdir(parents=True, exist_ok=True)
    lines = [
        "[appliance]",
        'id = "oca-test-1"',
        "[server]",
        'listen = ["127.0.0.1:18080"]',
        "[index]",
        f'path = "{base / "index"}"',
        "map_size_gb = 1",
    ]
    for i, reserve in enumerate(reserves):
        (base / f"store{i}").mkdir(exist_ok=True)
        lines += ["[[stores]]", f'path = "{base / f"store{i}"}"', f"reserve_percent = {reserve}"]
    cfg = base / "oca.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra)
    return cfg


def open_cs(cfg: Path) -> ContentStore:
    return ContentStore.open(load_config(str(cfg)))


def payload(n: int, seed: int = 0) -> bytes:
    block = xxhash.xxh3_128_digest(seed.to_bytes(8, "little")) * 4096
    return (block * (n // len(block) + 1))[:n]


def publish(cs: ContentStore, content_id: str, data: bytes, *, disk: Disk | None = None, mtime_s: int = MTIME) -> Entry:
    ingest = cs.begin_ingest(content_id, len(data), disk=disk)
    ingest.write(data)
    return ingest.commit(mtime_s=mtime_s)


def read_located(cs: ContentStore, content_id: str) -> bytes | None:
    loc = cs.lookup(content_id)
    if loc is None:
        return None
    with open(loc.path, "rb") as fh:
        return fh.read()


def store_files(store: Path, sub: str) -> list[str]:
    root = store / sub
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def entry_key(e: Entry) -> tuple:
    return (e.content_id, e.store_uuid, e.relpath, e.size, e.checksum, e.mtime_s)


def assert_one_line_error(proc: subprocess.CompletedProcess, *, contains: str, code: int = 1) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("oca-admin: error: "), lines[0]
    assert contains in lines[0], lines[0]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- placement


def test_placement_honours_reserve(tmp_path):
    cfg = write_cfg(tmp_path, [99.9, 0])
    cs = open_cs(cfg)
    try:
        s0, s1 = cs.disks
        cap = s0.capacity()
        if cap.free_bytes >= cap.reserve_bytes:
            pytest.skip("the test file system is almost empty: a 99.9% reserve leaves room")
        rooms = {r.uuid: r for r in cs.rooms()}
        assert rooms[s0.uuid].usable_bytes == 0
        assert rooms[s1.uuid].usable_bytes > 0
        for i in range(5):
            entry = cs.publish_file(_src(tmp_path, f"f{i}", payload(10_000, i)), f"id-{i}")
            assert entry.store_uuid == s1.uuid
        assert store_files(tmp_path / "store0", OBJECTS_DIR) == []
        assert len(store_files(tmp_path / "store1", OBJECTS_DIR)) == 5
        # The only store with room fails: nothing is placed in a reserve.
        cs.mark_failed(s1, "test")
        with pytest.raises(StoreFullError, match=r"no store has 10000 bytes free above its reserve"):
            cs.publish_file(_src(tmp_path, "g", payload(10_000)), "id-g")
        assert store_files(tmp_path / "store0", TMP_DIR) == []
        assert cs.lookup("id-g") is None
    finally:
        cs.close()


def test_placement_when_every_store_is_in_reserve(tmp_path):
    cfg = write_cfg(tmp_path, [99.9, 99.9])
    cs = open_cs(cfg)
    try:
        if any(d.capacity().free_bytes >= d.capacity().reserve_bytes for d in cs.disks):
            pytest.skip("the test file system is almost empty: a 99.9% reserve leaves room")
        with pytest.raises(StoreFullError, match="no store has 1 bytes free above its reserve"):
            cs.publish_file(_src(tmp_path, "one", b"x"), "one")
        for i in range(2):
            assert store_files(tmp_path / f"store{i}", TMP_DIR) == []
        assert cs.index.count() == 0
    finally:
        cs.close()


def test_placement_skips_failed_store(tmp_path):
    cs = open_cs(write_cfg(tmp_path, 2))
    try:
        s0, s1 = cs.disks
        cs.mark_failed(s0, "test")
        for i in range(3):
            assert cs.publish_file(_src(tmp_path, f"f{i}", payload(100, i)), f"id-{i}").store_uuid == s1.uuid
    finally:
        cs.close()


def _src(base: Path, name: str, data: bytes) -> str:
    path = base / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------- identity


def _marker(store: Path) -> dict:
    return json.loads((store / MARKER_NAME).read_text())


def test_new_empty_dirs_are_initialised(tmp_path):
    cfg = write_cfg(tmp_path, 3)
    (tmp_path / "store2" / "lost+found").mkdir()  # a fresh ext4 file system still counts as empty
    cs = open_cs(cfg)
    try:
        uuids = []
        for i, disk in enumerate(cs.disks):
            store = tmp_path / f"store{i}"
            assert disk.working, disk.reason
            marker = _marker(store)
            assert marker["format"] == 1
            assert marker["uuid"].replace("-", "") == disk.uuid
            for name in STORE_DIRS:
                assert (store / name).is_dir()
            uuids.append(disk.uuid)
        records = cs.index.stores()
        assert {r.uuid: (r.path, r.state) for r in records.values()} == {
            u: (str(tmp_path / f"store{i}"), STATE_OK) for i, u in enumerate(uuids)
        }
    finally:
        cs.close()
    cs = open_cs(cfg)  # a restart keeps the identities
    try:
        assert [d.uuid for d in cs.disks] == uuids
        assert all(d.working for d in cs.disks)
    finally:
        cs.close()


def test_non_empty_dir_without_marker_is_failed(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    (tmp_path / "store1" / "someone-elses-file").write_text("keep me")
    cs = open_cs(cfg)
    try:
        s0, s1 = cs.disks
        assert s0.working
        assert not s1.working
        assert "not empty and has no store marker" in s1.reason
        assert not (tmp_path / "store1" / MARKER_NAME).exists()
        assert sorted(os.listdir(tmp_path / "store1")) == ["someone-elses-file"]
        assert cs.publish_file(_src(tmp_path, "a", b"abc"), "a").store_uuid == s0.uuid
    finally:
        cs.close()


def test_known_path_with_missing_marker_is_failed_and_never_reinitialised(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    cs = open_cs(cfg)
    s0, s1 = cs.disks
    uuid1 = s1.uuid
    publish(cs, "on-s1", b"one", disk=s1)
    publish(cs, "on-s0", b"zero", disk=s0)
    cs.close()
    # The disk vanishes: what is left is an empty mount point.
    os.rename(tmp_path / "store1", tmp_path / "store1.disk")
    (tmp_path / "store1").mkdir()
    for _restart in range(2):
        cs = open_cs(cfg)
        try:
            s0, s1 = cs.disks
            assert not s1.working and s1.uuid == uuid1
            assert "marker missing" in s1.reason
            assert os.listdir(tmp_path / "store1") == []  # nothing written: never re-initialised
            rec = cs.index.stores()[uuid1]
            assert rec.state == STATE_FAILED and "marker missing" in rec.reason
            assert cs.lookup("on-s1") is None
            assert read_located(cs, "on-s0") == b"zero"
            assert cs.inventory()[1] == ["on-s0"]
            assert cs.index.get("on-s1") is not None  # kept until the disk returns or is replaced
        finally:
            cs.close()
    # The disk comes back: still failed (the state was written down) until an operator says so.
    os.rmdir(tmp_path / "store1")
    os.rename(tmp_path / "store1.disk", tmp_path / "store1")
    cs = open_cs(cfg)
    try:
        s1 = cs.disks[1]
        assert not s1.working
        assert "enable-store" in s1.reason
        assert cs.lookup("on-s1") is None
        assert cs.enable_store(str(tmp_path / "store1")) == f"{tmp_path / 'store1'}: enabled"
        assert read_located(cs, "on-s1") == b"one"
    finally:
        cs.close()
    cs = open_cs(cfg)
    try:
        assert all(d.working for d in cs.disks)
    finally:
        cs.close()


def test_marker_with_another_uuid_is_failed(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    open_cs(cfg).close()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    foreign_uuid = Disk(str(foreign), 0).initialise()
    shutil.copy(foreign / MARKER_NAME, tmp_path / "store1" / MARKER_NAME)
    cs = open_cs(cfg)
    try:
        s0, s1 = cs.disks
        assert s0.working
        assert not s1.working
        assert f"another disk is mounted here (uuid {foreign_uuid}" in s1.reason
        assert cs.index.stores()[s1.uuid].state == STATE_FAILED
        with pytest.raises(Exception, match="holds another disk"):
            cs.enable_store(str(tmp_path / "store1"))
    finally:
        cs.close()


def test_two_stores_swapped_between_slots_are_both_failed(tmp_path):
    cfg = write_cfg(tmp_path, 3)
    cs = open_cs(cfg)
    s0, s1, s2 = cs.disks
    uuids = [d.uuid for d in cs.disks]
    for i, disk in enumerate(cs.disks):
        publish(cs, f"id-{i}", f"data {i}".encode(), disk=disk)
    cs.close()
    os.rename(tmp_path / "store0", tmp_path / "swap")
    os.rename(tmp_path / "store1", tmp_path / "store0")
    os.rename(tmp_path / "swap", tmp_path / "store1")
    cs = open_cs(cfg)
    try:
        s0, s1, s2 = cs.disks
        assert not s0.working and not s1.working and s2.working
        assert f"another disk is mounted here (uuid {uuids[1]}, expected {uuids[0]})" in s0.reason
        assert f"another disk is mounted here (uuid {uuids[0]}, expected {uuids[1]})" in s1.reason
        assert cs.lookup("id-0") is None and cs.lookup("id-1") is None
        assert read_located(cs, "id-2") == b"data 2"
        states = {u: r.state for u, r in cs.index.stores().items()}
        assert states == {uuids[0]: STATE_FAILED, uuids[1]: STATE_FAILED, uuids[2]: STATE_OK}
    finally:
        cs.close()
    # Swapped back: still failed until enabled, then served again.
    os.rename(tmp_path / "store0", tmp_path / "swap")
    os.rename(tmp_path / "store1", tmp_path / "store0")
    os.rename(tmp_path / "swap", tmp_path / "store1")
    cs = open_cs(cfg)
    try:
        assert [d.working for d in cs.disks] == [False, False, True]
        cs.enable_store(str(tmp_path / "store0"))
        cs.enable_store(str(tmp_path / "store1"))
        assert [read_located(cs, f"id-{i}") for i in range(3)] == [b"data 0", b"data 1", b"data 2"]
    finally:
        cs.close()


def test_unknown_format_and_unreadable_markers_are_failed(tmp_path):
    cfg = write_cfg(tmp_path, 3)
    open_cs(cfg).close()
    m0 = _marker(tmp_path / "store0")
    (tmp_path / "store0" / MARKER_NAME).write_text(json.dumps({**m0, "format": 2}))
    (tmp_path / "store1" / MARKER_NAME).write_text("{not json")
    cs = open_cs(cfg)
    try:
        s0, s1, s2 = cs.disks
        assert not s0.working and "unknown store format 2" in s0.reason
        assert not s1.working and "unreadable" in s1.reason
        assert s2.working
        # Never "repaired": the markers are as the test left them.
        assert _marker(tmp_path / "store0")["format"] == 2
        assert (tmp_path / "store1" / MARKER_NAME).read_text() == "{not json"
    finally:
        cs.close()


def test_markers_on_paths_the_index_does_not_know(tmp_path):
    # Three cases on new paths: a known disk moved to a new slot, a disk from
    # another appliance (not in this index), and a disk of a future format.
    base = tmp_path / "a"
    cfg = write_cfg(base, 1)
    cs = open_cs(cfg)
    moved_uuid = cs.disks[0].uuid
    cs.close()
    for name in ("new0", "new1", "new2"):
        (base / name).mkdir()
    shutil.copy(base / "store0" / MARKER_NAME, base / "new0" / MARKER_NAME)
    other = Disk(str(base / "new1"), 0).initialise()
    Disk(str(base / "new2"), 0).initialise()
    m2 = _marker(base / "new2")
    (base / "new2" / MARKER_NAME).write_text(json.dumps({**m2, "format": 7}))
    extra = "".join(f'[[stores]]\npath = "{base / n}"\n' for n in ("new0", "new1", "new2"))
    cfg.write_text(cfg.read_text() + extra)
    cs = open_cs(cfg)
    try:
        _s, n0, n1, n2 = cs.disks
        assert not n0.working and f"this disk belongs in {base / 'store0'} (uuid {moved_uuid})" in n0.reason
        assert not n1.working and n1.uuid == other and "not in the index" in n1.reason
        assert not n2.working and "unknown store format 7" in n2.reason
    finally:
        cs.close()


# ---------------------------------------------------------------- publish and remove


def test_publish_replaces_old_version_and_deletes_it_only_after_commit(tmp_path):
    cs = open_cs(write_cfg(tmp_path, 2))
    try:
        s0, s1 = cs.disks
        v1 = publish(cs, "movie", payload(50_000, 1), disk=s0, mtime_s=MTIME)
        old_path = Path(s0.join(v1.relpath))
        seen_at_commit = []
        real_put = cs.index.put

        def spying_put(entry):
            # At commit time both files exist: the new one is in place, the old is not yet deleted.
            seen_at_commit.append((old_path.exists(), Path(cs.disk(entry.store_uuid).join(entry.relpath)).exists()))
            return real_put(entry)

        cs.index.put = spying_put  # type: ignore[method-assign]
        ingest = cs.begin_ingest("movie", 60_000, disk=s1)
        ingest.write(payload(60_000, 2))
        assert read_located(cs, "movie") == payload(50_000, 1)  # nothing visible before commit
        v2 = ingest.commit(mtime_s=MTIME + 10)
        assert seen_at_commit == [(True, True)]
        assert not old_path.exists()
        assert read_located(cs, "movie") == payload(60_000, 2)
        assert cs.lookup("movie").mtime_s == MTIME + 10
        assert v2.store_uuid == s1.uuid
        assert store_files(tmp_path / "store0", OBJECTS_DIR) == []
        # Same store, new version: one file remains.
        publish(cs, "movie", payload(70_000, 3), disk=s1, mtime_s=MTIME + 20)
        assert len(store_files(tmp_path / "store1", OBJECTS_DIR)) == 1
        # Publishing identical bytes with the same mtime lands on the same name: it must survive.
        publish(cs, "movie", payload(70_000, 3), disk=s1, mtime_s=MTIME + 20)
        assert read_located(cs, "movie") == payload(70_000, 3)
        assert maintenance.check(cs).consistent
    finally:
        cs.close()


def test_open_descriptor_of_a_removed_file_reads_to_the_end(tmp_path):
    cs = open_cs(write_cfg(tmp_path, 2))
    try:
        data = payload(3 << 20, 7)
        publish(cs, "big", data)
        loc = cs.lookup("big")
        with open(loc.path, "rb") as fh:
            head = fh.read(1 << 20)
            assert cs.remove("big") is not None
            assert cs.lookup("big") is None
            assert not os.path.exists(loc.path)
            assert head + fh.read() == data
        # The same for a file replaced by a new version.
        publish(cs, "big", data)
        loc = cs.lookup("big")
        with open(loc.path, "rb") as fh:
            publish(cs, "big", payload(1000, 8), mtime_s=MTIME + 1)
            assert not os.path.exists(loc.path)
            assert fh.read() == data
        assert cs.remove("missing") is None
    finally:
        cs.close()


def test_aborted_ingest_leaves_nothing(tmp_path):
    cs = open_cs(write_cfg(tmp_path, 1))
    try:
        with pytest.raises(RuntimeError):
            with cs.begin_ingest("x", 10) as ingest:
                ingest.write(b"0123456789")
                raise RuntimeError("caller gave up")
        ingest = cs.begin_ingest("y", 10)
        ingest.write(b"0123")
        with pytest.raises(Exception, match="expected 10"):
            ingest.commit(mtime_s=MTIME, expected_size=10)
        ingest = cs.begin_ingest("z", 4)
        ingest.write(b"0123")
        with pytest.raises(Exception, match="does not match expected"):
            ingest.commit(mtime_s=MTIME, expected_checksum="0" * 32)
        assert store_files(tmp_path / "store0", TMP_DIR) == []
        assert store_files(tmp_path / "store0", OBJECTS_DIR) == []
        assert cs.index.count() == 0
    finally:
        cs.close()


# ---------------------------------------------------------------- generation and changes


def test_generation_and_changes_since(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    cs = open_cs(cfg)
    try:
        s0, s1 = cs.disks
        g0, ids = cs.inventory()
        assert ids == []
        assert cs.index.changes_since(g0).kind == "unchanged"

        publish(cs, "a", b"a", disk=s0)
        publish(cs, "b", b"b", disk=s1)
        g1, ids = cs.inventory()
        assert g1 > g0 and ids == ["a", "b"]
        ch = cs.index.changes_since(g0)
        assert (ch.kind, ch.generation, ch.added, ch.removed) == ("delta", g1, ("a", "b"), ())
        assert cs.index.changes_since(g1).kind == "unchanged"

        cs.remove("a")
        publish(cs, "c", b"c", disk=s0)
        publish(cs, "gone", b"g", disk=s0)
        cs.remove("gone")
        g2, ids = cs.inventory()
        assert g2 > g1 and ids == ["b", "c"]
        ch = cs.index.changes_since(g1)
        assert (ch.kind, ch.added, ch.removed) == ("delta", ("c",), ("a", "gone"))
        ch = cs.index.changes_since(g0)  # the net effect from further back
        assert (ch.kind, ch.added, ch.removed) == ("delta", ("b", "c"), ("a", "gone"))

        # Popularity is not part of the servable set.
        cs.index.set_popularity("b", 5.0)
        assert cs.index.generation() == g2

        # A store failing moves many ids at once: a poller must fetch everything.
        cs.mark_failed(s0, "test")
        g3, ids = cs.inventory()
        assert g3 > g2 and ids == ["b"]
        assert cs.index.changes_since(g2) == index_module.Changes("full", g3)
        assert cs.index.changes_since(g0).kind == "full"
        cs.mark_failed(s0, "again")  # failed → failed: nothing servable changed
        assert cs.index.generation() == g3

        cs.enable_store(str(tmp_path / "store0"))
        g4, ids = cs.inventory()
        assert g4 > g3 and ids == ["b", "c"]
        assert cs.index.changes_since(g3).kind == "full"

        # Out-of-range generations.
        assert cs.index.changes_since(0).kind == "full"
        assert cs.index.changes_since(-5).kind == "full"
        assert cs.index.changes_since(g4 + 100).kind == "full"
    finally:
        cs.close()
    # A restart with nothing changed keeps the generation (pollers need no full fetch).
    cs = open_cs(cfg)
    try:
        assert cs.index.generation() == g4
    finally:
        cs.close()


def test_changes_since_beyond_the_trimmed_journal_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "JOURNAL_KEEP", 10)
    idx = Index(str(tmp_path / "index"), map_size_bytes=64 << 20)
    try:
        uuid = "ab" * 16
        idx.put_store(StoreRecord(uuid, str(tmp_path), STATE_OK))
        start = idx.generation()
        entries = [Entry(f"id-{i:04d}", uuid, f"objects/x/{i}", 1, "0" * 32, MTIME, 0.0, 0.0) for i in range(1100)]
        idx.put_many(entries)
        gen = idx.generation()
        assert gen == start + 1100 and gen > 1024
        # The trim at generation 1024 kept the journal from 1024 - 10 onwards.
        assert idx.changes_since(start).kind == "full"
        assert idx.changes_since(1012).kind == "full"
        ch = idx.changes_since(1013)
        assert ch.kind == "delta" and len(ch.added) == gen - 1013
        assert idx.changes_since(gen - 1).added == ("id-1099",)
    finally:
        idx.close()


# ---------------------------------------------------------------- schema


def _entries_for_schema_tests() -> tuple[list[Entry], list[StoreRecord]]:
    uuid = "cd" * 16
    entries = [Entry(f"v1-{i}", uuid, f"objects/aa/bb/v1-{i}@{'1' * 32}@{MTIME}", 10 + i, "1" * 32, MTIME, 1.0, 2.0) for i in range(3)]
    return entries, [StoreRecord(uuid, "/srv/oca/store0", STATE_OK, "", 1.0)]


def test_v1_index_is_migrated_at_open(tmp_path):
    path = str(tmp_path / "index")
    entries, stores = _entries_for_schema_tests()
    create_v1_index_for_tests(path, entries, stores)
    with pytest.raises(SchemaError, match="needs migrating"):
        Index(path, readonly=True)
    idx = Index(path, map_size_bytes=64 << 20)
    try:
        assert idx.schema_version() == index_module.SCHEMA_VERSION == 2
        assert idx.generation() == 1
        assert list(idx.entries()) == entries
        assert idx.stores() == {s.uuid: s for s in stores}
        assert idx.changes_since(1).kind == "unchanged"
        gen, ids = idx.inventory()
        assert (gen, ids) == (1, ["v1-0", "v1-1", "v1-2"])
        idx.delete("v1-0")
        assert idx.changes_since(1) == index_module.Changes("delta", 2, (), ("v1-0",))
    finally:
        idx.close()
    ro = Index(path, readonly=True)  # migrated for good: a reader now opens it
    try:
        assert ro.schema_version() == 2
    finally:
        ro.close()


def test_newer_schema_is_refused_untouched(tmp_path, tmp_path_factory):
    path = tmp_path / "index"
    Index(str(path), map_size_bytes=64 << 20).close()
    env = lmdb.open(str(path), max_dbs=8, map_size=64 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    before = (path / "data.mdb").read_bytes()
    for readonly in (False, True):
        with pytest.raises(SchemaError, match="schema version 99 is newer than this software's 2"):
            Index(str(path), map_size_bytes=64 << 20, readonly=readonly)
    assert (path / "data.mdb").read_bytes() == before
    # The operator sees one line, not a traceback.
    cfg = write_cfg(tmp_path, 1)
    assert_one_line_error(admin(cfg, "ls"), contains="schema version 99 is newer")
    assert (path / "data.mdb").read_bytes() == before


# ---------------------------------------------------------------- reader slots


def _spawn_reader(index_path: Path, hold_txn: bool) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from oca.store.index import Index\n"
        f"idx = Index({str(index_path)!r}, map_size_bytes=1 << 30)\n"
        + ("txn = idx.env.begin()\ntxn.get(b'x')\n" if hold_txn else "")
        + "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    ready, _w, _x = select.select([proc.stdout], [], [], 30)
    assert ready and proc.stdout.readline().strip() == "ready"
    return proc


def _reader_pids(env: lmdb.Environment) -> set[int]:
    lines = env.readers().strip().splitlines()[1:]
    return {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}


def test_reader_check_clears_slots_of_killed_readers(tmp_path):
    path = tmp_path / "index"
    Index(str(path), map_size_bytes=1 << 30).close()
    # A second process keeps the environment open throughout, as the server's
    # other workers would (the first process to open a lock file resets it).
    keeper = _spawn_reader(path, hold_txn=False)
    victim = _spawn_reader(path, hold_txn=True)
    try:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        env = lmdb.open(str(path), max_dbs=8, map_size=1 << 30)
        try:
            assert victim.pid in _reader_pids(env), env.readers()
        finally:
            env.close()
        idx = Index(str(path), map_size_bytes=1 << 30)
        try:
            assert victim.pid not in _reader_pids(idx.env), idx.env.readers()
        finally:
            idx.close()
    finally:
        for proc in (keeper, victim):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()


# ---------------------------------------------------------------- rebuild-index


def _populate(cfg: Path, n_per_store: int = 3) -> tuple[dict[str, tuple], list[str]]:
    cs = open_cs(cfg)
    try:
        for d_i, disk in enumerate(cs.disks):
            for i in range(n_per_store):
                publish(cs, f"s{d_i}-{i}", payload(1000 + 100 * i, d_i * 10 + i), disk=disk, mtime_s=MTIME + i)
        return {e.content_id: entry_key(e) for e in cs.index.entries()}, [d.uuid for d in cs.disks]
    finally:
        cs.close()


def _snapshot(cfg: Path) -> tuple[dict[str, tuple], dict[str, str], list[str]]:
    cs = open_cs(cfg)
    try:
        entries = {e.content_id: entry_key(e) for e in cs.index.entries()}
        states = {d.path: d.state for d in cs.disks}
        return entries, states, cs.inventory()[1]
    finally:
        cs.close()


def test_rebuild_index_keeps_failed_state_when_old_index_is_readable(tmp_path):
    cfg = write_cfg(tmp_path, 3)
    before, uuids = _populate(cfg)
    cs = open_cs(cfg)
    cs.mark_failed(cs.disks[2], "operator pulled it")
    cs.close()
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 9 entries" in proc.stdout
    assert "old index moved to" in proc.stdout
    entries, states, inventory = _snapshot(cfg)
    assert entries == before
    assert list(states.values()) == [STATE_OK, STATE_OK, STATE_FAILED]
    assert inventory == sorted(k for k in before if not k.startswith("s2-"))
    idx = Index(str(tmp_path / "index"), map_size_bytes=1 << 30)
    try:
        assert idx.stores()[uuids[2]].reason == "operator pulled it"
    finally:
        idx.close()


def test_rebuild_index_after_the_index_is_deleted(tmp_path):
    cfg = write_cfg(tmp_path, 3)
    before, _uuids = _populate(cfg)
    shutil.rmtree(tmp_path / "index")
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 9 entries" in proc.stdout
    entries, states, inventory = _snapshot(cfg)
    assert entries == before
    assert set(states.values()) == {STATE_OK}
    assert inventory == sorted(before)
    assert "consistent" in admin(cfg, "check", check=True).stdout


@pytest.mark.parametrize("how", ["meta pages", "whole file"])
def test_rebuild_index_after_data_mdb_is_corrupted(tmp_path, how):
    cfg = write_cfg(tmp_path, 3)
    before, _uuids = _populate(cfg)
    data = tmp_path / "index" / "data.mdb"
    size = data.stat().st_size
    with open(data, "r+b") as fh:
        junk = payload(size if how == "whole file" else 8192, 99)
        fh.write(junk)
    assert_one_line_error(admin(cfg, "ls"), contains="rebuild-index")
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 9 entries" in proc.stdout
    aside = proc.stdout.split("old index moved to ")[1].split()[0]
    assert Path(aside, "data.mdb").read_bytes()[:8192] == junk[:8192]  # moved aside, not deleted
    entries, states, inventory = _snapshot(cfg)
    assert entries == before
    assert set(states.values()) == {STATE_OK}
    assert inventory == sorted(before)
    ls = admin(cfg, "ls", check=True).stdout.splitlines()
    assert sorted(line.split()[0] for line in ls) == sorted(before)


def test_rebuild_index_quarantines_duplicates_and_strangers(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    cs = open_cs(cfg)
    s0, s1 = cs.disks
    old = publish(cs, "dup", b"old", disk=s0, mtime_s=MTIME)
    cs.close()
    # A copy of "dup" on the other store, newer on disk (as a crash between rename and unlink could leave).
    cs = open_cs(cfg)
    newer = publish(cs, "dup", b"newer", disk=cs.disks[1], mtime_s=MTIME + 5)
    cs.close()
    os.makedirs(tmp_path / "store0" / os.path.dirname(old.relpath), exist_ok=True)
    (tmp_path / "store0" / old.relpath).write_bytes(b"old")
    os.utime(tmp_path / "store0" / old.relpath, (MTIME, MTIME))
    (tmp_path / "store1" / "objects" / "00" / "00").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store1" / "objects" / "00" / "00" / "not-an-object-name").write_text("?")
    (tmp_path / "store1" / "objects" / "00" / "00" / f"bad@{'1' * 32}@--5").write_text("?")
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 1 entries" in proc.stdout
    assert proc.stdout.count("quarantined ") == 3
    entries, _states, _inv = _snapshot(cfg)
    assert entries == {"dup": entry_key(newer)}
    assert store_files(tmp_path / "store0", OBJECTS_DIR) == []
    assert len(store_files(tmp_path / "store0", QUARANTINE_DIR)) == 1


# ---------------------------------------------------------------- check


def test_check_counts_each_category(tmp_path):
    cfg = write_cfg(tmp_path, 2, extra="[check]\npartial_max_age_h = 1\n")
    cs = open_cs(cfg)
    live = subprocess.Popen(["sleep", "60"])
    try:
        s0, s1 = cs.disks
        for name in ("a", "b", "c", "d"):
            publish(cs, name, payload(5000, ord(name)), disk=s0)
        publish(cs, "e", b"on the other store", disk=s1)
        store0 = tmp_path / "store0"
        # tmp/: a dead ingest, a live one, and a stranger.
        (store0 / TMP_DIR / tmp_name("x", dead_pid(), "dead")).write_bytes(b"half")
        live_tmp = store0 / TMP_DIR / tmp_name("y", live.pid, "live")
        live_tmp.write_bytes(b"in progress")
        (store0 / TMP_DIR / "stranger").write_bytes(b"?")
        # partial/: one young, one old, judged by the injected clock.
        young, old = store0 / PARTIAL_DIR / "young.part", store0 / PARTIAL_DIR / "old.part"
        young.write_bytes(b"y")
        old.write_bytes(b"o")
        os.utime(young, (FAKE_NOW - 60, FAKE_NOW - 60))
        os.utime(old, (FAKE_NOW - 2 * 3600, FAKE_NOW - 2 * 3600))
        # objects/: a file missing, a file of the wrong size, a file nobody indexed.
        os.unlink(s0.join(cs.index.get("a").relpath))
        with open(s0.join(cs.index.get("b").relpath), "ab") as fh:
            fh.write(b"extra")
        orphan = store0 / OBJECTS_DIR / "00" / "00" / f"orphan@{'2' * 32}@{MTIME}"
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"nobody's")
        # An entry on a store the index has never heard of.
        cs.index.put(Entry("ghost", "ef" * 16, "objects/x/y/ghost", 1, "3" * 32, MTIME, 0.0, 0.0))

        report = maintenance.check(cs, now_s=FAKE_NOW)
        counts = (
            report.temp_removed,
            report.partial_kept,
            report.partial_removed,
            report.entries_dropped_missing,
            report.entries_dropped_size,
            report.orphans_quarantined,
            report.entries_ok,
        )
        assert counts == (2, 1, 1, 2, 1, 1, 3), report.lines()
        assert not report.consistent
        assert os.listdir(store0 / TMP_DIR) == [live_tmp.name]
        assert os.listdir(store0 / PARTIAL_DIR) == ["young.part"]
        quarantined = os.listdir(store0 / QUARANTINE_DIR)
        assert sorted(n.split(".")[-2] for n in quarantined) == ["badsize", "orphan"]
        assert cs.inventory()[1] == ["c", "d", "e"]
        assert any("ghost" in d for d in report.details)

        again = maintenance.check(cs, now_s=FAKE_NOW)
        assert again.consistent and again.entries_ok == 3 and again.partial_kept == 1
        assert again.lines()[0] == "temporary files removed: 0"
        cs.close()
        # The same, as the operator sees it (the live ingest is still alive).
        proc = admin(cfg, "check", check=True)
        assert proc.stdout.splitlines()[-1] == "consistent"
        assert "index entries ok: 3" in proc.stdout
        assert live_tmp.exists()
    finally:
        cs.close()
        live.kill()
        live.wait()


def test_check_leaves_failed_stores_alone(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    cs = open_cs(cfg)
    try:
        s0, s1 = cs.disks
        publish(cs, "keep", b"keep", disk=s1)
        cs.mark_failed(s1, "test")
        (tmp_path / "store1" / TMP_DIR / tmp_name("z", dead_pid(), "t")).write_bytes(b"x")
        os.unlink(s1.join(cs.index.get("keep").relpath))
        report = maintenance.check(cs)
        assert report.failed_stores == [f"{s1.path}: test"]
        assert report.consistent
        assert cs.index.get("keep") is not None  # kept until the store returns
        assert len(os.listdir(tmp_path / "store1" / TMP_DIR)) == 1
    finally:
        cs.close()


# ---------------------------------------------------------------- verify


def test_verify_finds_a_flipped_byte(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    cs = open_cs(cfg)
    try:
        for i in range(4):
            publish(cs, f"v{i}", payload(200_000, i), disk=cs.disks[i % 2])
        victim = cs.lookup("v2").path
    finally:
        cs.close()
    with open(victim, "r+b") as fh:
        fh.seek(123_456)
        byte = fh.read(1)
        fh.seek(123_456)
        fh.write(bytes([byte[0] ^ 0x01]))
    proc = admin(cfg, "verify")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    corrupt = [line for line in proc.stdout.splitlines() if line.startswith("corrupt: ")]
    assert len(corrupt) == 1 and corrupt[0].startswith("corrupt: v2: ")
    assert proc.stdout.splitlines()[-1].startswith("verified 4 objects")
    assert "1 corrupt, 0 unreadable" in proc.stdout
    ls = admin(cfg, "ls", check=True).stdout.splitlines()
    assert [line.split()[0] for line in ls] == ["v0", "v1", "v3"]
    assert not os.path.exists(victim)
    assert any(n.startswith(os.path.basename(victim) + ".corrupt.") for n in os.listdir(tmp_path / "store0" / QUARANTINE_DIR))
    again = admin(cfg, "verify")
    assert again.returncode == 0 and "verified 3 objects" in again.stdout
    assert admin(cfg, "check", check=True).stdout.splitlines()[-1] == "consistent"


# ---------------------------------------------------------------- oca-admin


def test_admin_happy_path(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    src = _src(tmp_path, "movie", payload(100_000, 1))
    proc = admin(cfg, "ingest", src, "--id", "movie", "--mtime", str(MTIME), check=True)
    content_id, size, store, checksum = proc.stdout.split()
    assert (content_id, int(size)) == ("movie", 100_000)
    assert checksum == xxhash.xxh3_128_hexdigest(payload(100_000, 1))
    assert store in (str(tmp_path / "store0"), str(tmp_path / "store1"))
    assert admin(cfg, "ls", check=True).stdout.split() == [content_id, size, store, checksum]
    stores = admin(cfg, "stores", check=True).stdout.splitlines()
    assert [line.split()[:2] for line in stores] == [[str(tmp_path / f"store{i}"), "ok"] for i in range(2)]
    assert admin(cfg, "rm", "movie", check=True).stdout == ""
    assert admin(cfg, "ls", check=True).stdout == ""


ADMIN_ERRORS = [
    # (case, how to build the config, argv, text in the one stderr line)
    ("missing config", "missing", ["ls"], "config file does not exist"),
    ("bad TOML", "bad-toml", ["ls"], "not valid TOML"),
    ("unknown key", "unknown-key", ["ls"], "appliance.colour: unknown key"),
    ("store dir missing", "missing-store", ["ls"], "stores[1].path: directory does not exist"),
    ("bad id on ingest", "good", ["ingest", "SRC", "--id", "../etc/passwd"], "content id '../etc/passwd' is invalid"),
    ("bad id on rm", "good", ["rm", "a@b"], "content id 'a@b' is invalid"),
    ("empty id", "good", ["rm", ""], "content id is empty"),
    ("rm of unknown id", "good", ["rm", "nothing-here"], "nothing-here: no such object"),
    ("ingest of a missing file", "good", ["ingest", "/nonexistent/file", "--id", "x"], "not a file"),
    ("ingest of a directory", "good", ["ingest", "/", "--id", "x"], "not a file"),
    ("enable unknown store", "good", ["enable-store", "/nonexistent"], "not a configured store"),
    ("enable on a path not configured", "good", ["enable-store", "/tmp"], "not a configured store"),
    ("sign without a key", "good", ["sign", "x", "--ttl", "60"], "signing.key_id is not set"),
    ("too big for any store", "reserve", ["ingest", "SRC", "--id", "x"], "bytes free above its reserve"),
]


@pytest.mark.parametrize("how,argv,message", [c[1:] for c in ADMIN_ERRORS], ids=[c[0] for c in ADMIN_ERRORS])
def test_admin_errors_are_one_line(tmp_path, how, argv, message):
    cfg = write_cfg(tmp_path, [99.9, 99.9] if how == "reserve" else 2)
    if how == "missing":
        cfg = tmp_path / "nowhere.toml"
    elif how == "bad-toml":
        cfg.write_text("[appliance\nid = 'x'\n")
    elif how == "unknown-key":
        cfg.write_text(cfg.read_text().replace("[appliance]\n", "[appliance]\ncolour = 'red'\n"))
    elif how == "missing-store":
        shutil.rmtree(tmp_path / "store1")
    src = _src(tmp_path, "file", b"some bytes")
    argv = [src if a == "SRC" else a for a in argv]
    if how == "reserve":
        probe = open_cs(cfg)
        roomy = any(d.capacity().free_bytes >= d.capacity().reserve_bytes for d in probe.disks)
        probe.close()
        if roomy:
            pytest.skip("the test file system is almost empty: a 99.9% reserve leaves room")
    proc = admin(cfg, *argv)
    assert_one_line_error(proc, contains=message)
    assert proc.stdout == ""
    if how == "good":
        assert store_files(tmp_path / "store0", TMP_DIR) + store_files(tmp_path / "store1", TMP_DIR) == []


def test_admin_usage_error_exits_2(tmp_path):
    cfg = write_cfg(tmp_path, 1)
    for argv in ([], ["no-such-command"], ["ingest", "f"]):
        proc = subprocess.run(
            [sys.executable, "-m", "oca.admin", "--config", str(cfg), *argv],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "usage: oca-admin" in proc.stderr


def test_admin_stores_shows_failed_with_reason(tmp_path):
    cfg = write_cfg(tmp_path, 2)
    open_cs(cfg).close()
    os.rename(tmp_path / "store1", tmp_path / "store1.gone")
    (tmp_path / "store1").mkdir()
    lines = admin(cfg, "stores", check=True).stdout.splitlines()
    assert lines[0].split()[:2] == [str(tmp_path / "store0"), "ok"]
    assert lines[1].split()[:2] == [str(tmp_path / "store1"), "failed"]
    assert "reason='marker missing" in lines[1]
    assert_one_line_error(admin(cfg, "enable-store", str(tmp_path / "store1")), contains="has no marker")
    out = admin(cfg, "enable-store", "--new-disk", str(tmp_path / "store1"), check=True).stdout
    assert "new disk initialised" in out
    lines = admin(cfg, "stores", check=True).stdout.splitlines()
    assert lines[1].split()[:2] == [str(tmp_path / "store1"), "ok"]


def test_read_only_index_reads_what_a_writer_commits(tmp_path):
    # py-lmdb refuses a second environment on one path in one process, so the
    # reader (as a server worker would be) is its own process.
    path = str(tmp_path / "index")
    reader_code = (
        "import json, sys\n"
        "from oca.store.index import Index, IndexError_\n"
        f"r = Index({path!r}, readonly=True)\n"
        "for line in sys.stdin:\n"
        "    if line.strip() == 'delete':\n"
        "        try:\n"
        "            r.delete('first')\n"
        "        except IndexError_ as exc:\n"
        "            print(json.dumps(str(exc)), flush=True)\n"
        "        continue\n"
        "    found = r.lookup('second')\n"
        "    print(json.dumps([r.schema_version(), *r.inventory(), found and found[0].size]), flush=True)\n"
    )
    writer = Index(path, map_size_bytes=64 << 20)
    uuid = "ab" * 16
    writer.put_store(StoreRecord(uuid, str(tmp_path), STATE_OK))
    writer.put(Entry("first", uuid, "objects/a/b/first", 1, "0" * 32, MTIME, 0.0, 0.0))
    reader = subprocess.Popen(
        [sys.executable, "-c", reader_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )

    def ask(line: str):
        reader.stdin.write(line + "\n")
        reader.stdin.flush()
        ready, _w, _x = select.select([reader.stdout], [], [], 30)
        assert ready, "the reader did not answer"
        return json.loads(reader.stdout.readline())

    try:
        assert ask("look") == [2, writer.generation(), ["first"], None]
        writer.put(Entry("second", uuid, "objects/a/b/second", 2, "0" * 32, MTIME, 0.0, 0.0))
        assert ask("look") == [2, writer.generation(), ["first", "second"], 2]
        assert "read-only" in ask("delete")
    finally:
        writer.close()
        reader.stdin.close()
        reader.wait(timeout=30)
        reader.stdout.close()
    assert reader.returncode == 0
    with pytest.raises(index_module.IndexError_, match="does not exist"):
        Index(str(tmp_path / "nowhere"), readonly=True)


# ---------------------------------------------------------------- issue 10: defects 12, 14, 15, 20


def admin_without_dac_override(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    """`oca-admin` that file permissions apply to, as they would for the `oca` user.

    As root the process is started without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (setpriv), so a mode-000 directory cannot be listed;
    it stays uid 0, so everything else root-owned is still its own.
    """
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's file-permission override")
    return subprocess.run(
        [*prefix, sys.executable, "-m", "oca.admin", "--config", str(cfg), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def _entry_keys(cfg: Path) -> dict[str, tuple]:
    idx = Index(str(cfg.parent / "index"), map_size_bytes=1 << 30)
    try:
        return {e.content_id: entry_key(e) for e in idx.entries()}
    finally:
        idx.close()


def test_rebuild_index_is_refused_while_a_server_holds_the_index(tmp_path):
    """Defect 12: a rebuild under a running server left its workers on the moved-aside index."""
    from tests.server_proc import ServerProcess, appliance
    import urllib.request

    cfg, host, port = appliance(tmp_path, files={"before": b"b" * 1000})
    with ServerProcess(cfg, host, port):
        with urllib.request.urlopen(f"http://{host}:{port}/content/before", timeout=10) as resp:
            assert resp.read() == b"b" * 1000  # the workers have the index open
        proc = admin(cfg, "rebuild-index")
        assert_one_line_error(proc, contains="open in other processes")
        assert "stop oca-server" in proc.stderr
        assert not list(tmp_path.glob("index.old.*")), "the index was moved aside under the server"
        # The server still serves from the one index, including what is published now.
        src = tmp_path / "after.bin"
        src.write_bytes(b"a" * 2000)
        admin(cfg, "ingest", str(src), "--id", "after", check=True)
        with urllib.request.urlopen(f"http://{host}:{port}/content/after", timeout=10) as resp:
            assert resp.read() == b"a" * 2000
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 2 entries" in proc.stdout


def test_an_open_during_a_rebuild_is_refused(tmp_path):
    from oca.store.index import IndexBusyError, hold_index

    cfg = write_cfg(tmp_path, 1)
    open_cs(cfg).close()
    fd = hold_index(str(tmp_path / "index"), exclusive=True)
    try:
        with pytest.raises(IndexBusyError, match="being rebuilt"):
            open_cs(cfg)
        assert_one_line_error(admin(cfg, "ls"), contains="being rebuilt")
    finally:
        os.close(fd)
    open_cs(cfg).close()


def _three_files_one_locked(tmp_path: Path) -> tuple[Path, dict[str, tuple], Path]:
    """Three published files on one store; the fan-out directory of "b" made mode 000."""
    cfg = write_cfg(tmp_path, 1)
    cs = open_cs(cfg)
    try:
        for name in ("a", "b", "c"):
            publish(cs, name, payload(3000, ord(name)))
        locked = Path(cs.disks[0].join(cs.index.get("b").relpath)).parent
    finally:
        cs.close()
    before = _entry_keys(cfg)
    locked.chmod(0)
    return cfg, before, locked


def test_check_fails_a_store_with_an_unreadable_fanout_dir_and_drops_nothing(tmp_path):
    """Defect 14: os.walk swallowed the error, so check dropped the entries as missing."""
    cfg, before, locked = _three_files_one_locked(tmp_path)
    try:
        proc = admin_without_dac_override(cfg, "check")
        assert proc.returncode == 0, proc.stderr
        assert "stores failed by this check: 1" in proc.stdout, proc.stdout
        assert "index entries dropped (file missing): 0" in proc.stdout, proc.stdout
        assert "cannot list objects/" in proc.stdout and "Permission denied" in proc.stdout
        assert _entry_keys(cfg) == before
        assert store_files(tmp_path / "store0", QUARANTINE_DIR) == []
        stores = admin(cfg, "stores", check=True).stdout
        assert " failed " in stores and "cannot list objects/" in stores
    finally:
        locked.chmod(0o755)
    # Repaired by the operator: back in service, with every entry.
    admin(cfg, "enable-store", str(tmp_path / "store0"), check=True)
    proc = admin(cfg, "check", check=True)
    assert proc.stdout.splitlines()[-1] == "consistent" and "index entries ok: 3" in proc.stdout
    assert _entry_keys(cfg) == before


def test_rebuild_index_with_an_unreadable_fanout_dir_fails_the_store(tmp_path):
    cfg, before, locked = _three_files_one_locked(tmp_path)
    try:
        proc = admin_without_dac_override(cfg, "rebuild-index")
        assert proc.returncode == 0, proc.stderr
        assert "state failed" in proc.stdout and "cannot list objects/" in proc.stdout
    finally:
        locked.chmod(0o755)
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 3 entries" in proc.stdout
    assert _entry_keys(cfg) == before


def test_a_full_index_map_grows_and_no_file_is_left_unindexed(tmp_path):
    """Defect 15: lmdb.MapFullError escaped `_commit` and left the renamed file unindexed."""
    from oca.store.disks import attach

    index = Index(str(tmp_path / "index"), map_size_bytes=64 << 10)
    (tmp_path / "store0").mkdir()
    disks = [Disk(str(tmp_path / "store0"), 0.0)]
    attach(disks, index)
    cs = ContentStore(index, disks)
    try:
        first = index.env.info()["map_size"]
        for i in range(400):
            publish(cs, f"id-{i:04d}-{'x' * 60}", b"%d" % i)
        assert index.env.info()["map_size"] > first
        assert index.count() == 400
        indexed = {e.relpath.split("/", 1)[1] for e in index.entries()}
        assert set(store_files(tmp_path / "store0", OBJECTS_DIR)) == indexed
        assert maintenance.check(cs, now_s=FAKE_NOW).consistent
    finally:
        cs.close()


def test_symlinks_under_objects_are_never_indexed(tmp_path):
    """Defect 20: rebuild-index indexed a symbolic link, and the server then served its target."""
    cfg = write_cfg(tmp_path, 1)
    cs = open_cs(cfg)
    try:
        real = publish(cs, "real", b"real bytes")
    finally:
        cs.close()
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for clients")
    checksum = xxhash.xxh3_128_hexdigest(b"not for clients")
    fan = tmp_path / "store0" / os.path.dirname(real.relpath)
    (fan / f"link@{checksum}@{MTIME}").symlink_to(secret)
    (fan / "dirlink").symlink_to(tmp_path)
    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 1 entries" in proc.stdout, proc.stdout
    assert proc.stdout.count("quarantined ") == 2
    assert set(_entry_keys(cfg)) == {"real"}
    assert sorted(n.split(".")[1] for n in os.listdir(tmp_path / "store0" / QUARANTINE_DIR)) == ["notfile", "notfile"]
    assert secret.read_bytes() == b"not for clients"
    # check treats a link the same way, indexed or not.
    cs = open_cs(cfg)
    try:
        link = fan / f"late@{checksum}@{MTIME}"
        link.symlink_to(secret)
        cs.index.put(Entry("late", cs.disks[0].uuid, str(link.relative_to(tmp_path / "store0")), 15, checksum, MTIME, 0.0, 0.0))
        report = maintenance.check(cs, now_s=FAKE_NOW)
        assert report.not_files_quarantined == 1 and not report.consistent
        assert cs.index.get("late") is None and cs.lookup("real") is not None
        assert maintenance.check(cs, now_s=FAKE_NOW).consistent
    finally:
        cs.close()


def test_rebuild_index_skips_a_store_whose_marker_is_unreadable(tmp_path):
    """One bad marker must not abort a rebuild halfway, after the old index was moved aside."""
    cfg = write_cfg(tmp_path, 2)
    before, _uuids = _populate(cfg, n_per_store=2)
    (tmp_path / "store1" / MARKER_NAME).write_text("{not json")
    proc = admin(cfg, "rebuild-index", check=True)
    assert f"{tmp_path / 'store1'}: skipped (" in proc.stdout and "unreadable" in proc.stdout
    assert "index rebuilt: 2 entries" in proc.stdout
    assert set(_entry_keys(cfg)) == {k for k in before if k.startswith("s0-")}


def test_remembered_lookups_follow_writes_by_other_processes(tmp_path):
    """`lookup` remembers answers per id; a commit by another process (here `oca-admin`) must end them."""
    cfg = write_cfg(tmp_path, 1)
    cs = open_cs(cfg)
    try:
        publish(cs, "film", payload(10_000, 1), mtime_s=MTIME)
        first = cs.lookup("film")
        assert cs.lookup("film") is first  # remembered: the same answer object
        assert cs.lookup("absent") is None
        src = tmp_path / "src"
        src.write_bytes(payload(20_000, 2))
        admin(cfg, "ingest", str(src), "--id", "film", check=True)  # a replacement, by another process
        replaced = cs.lookup("film")
        assert replaced is not None and replaced.size == 20_000 and replaced.path != first.path
        assert read_located(cs, "film") == payload(20_000, 2)
        admin(cfg, "ingest", str(src), "--id", "absent", check=True)  # a remembered miss ends too
        assert cs.lookup("absent") is not None
        admin(cfg, "rm", "film", check=True)
        assert cs.lookup("film") is None
        # Bounded: a full cache is emptied rather than grown.
        for i in range(index_module.LOCATED_MAX + 10):
            cs.lookup(f"miss-{i}")
        assert len(cs.index._located) <= index_module.LOCATED_MAX
    finally:
        cs.close()
