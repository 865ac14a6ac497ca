"""Offline maintenance: reconcile (`check`), re-hash (`verify`), `rebuild_index`.

Rules kept here:
- `check` holds the maintenance lock exclusively, so a concurrent publish is
  never half-seen (see `oca.store.content`). `rebuild_index` holds the index
  itself exclusively (`oca.store.index.hold_index`): it refuses while any
  other process has the index open, so no server keeps serving from the
  index it moves aside.
- A directory under `objects/` that cannot be listed fails the store, with
  the reason; its entries are never dropped as missing.
- Symbolic links and other non-files under `objects/` are never indexed:
  they are quarantined (a link would serve whatever it points at).
- `check` repairs and reports; it raises only when it cannot finish:
  * temporary files of ingests whose process is gone are removed;
  * the fill agent's partial downloads are left alone unless older than
    `[check] partial_max_age_h`;
  * index entries whose file is missing or has the wrong size are dropped;
  * files in `objects/` that no index entry names are moved to
    `quarantine/` (never deleted: an operator may want them back);
  * every category is reported with a count.
- `verify` re-hashes every servable file; a mismatch is taken out of service
  (entry dropped, file quarantined) and reported.
- `rebuild_index` needs nothing but the stores: each file's name carries its
  id, checksum and origin mtime (see `oca.store.layout`). A corrupt index is
  moved aside, not deleted. An entry's popularity (the manifest's forecast)
  restarts at 0 until the next fill sets it; the requests counted on the
  appliance (`oca.store.counters`, beside the index) are not touched. When two stores hold the same id, the newer
  file wins and the other is quarantined.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from oca.checksum import hash_file

from oca.store.content import ContentStore
from oca.store.disks import Disk, StoreUnreadableError
from oca.store.index import STATE_FAILED, STATE_OK, Entry, Index, StoreRecord, hold_index
from oca.store.layout import (
    OBJECTS_DIR,
    PARTIAL_DIR,
    QUARANTINE_DIR,
    TMP_DIR,
    parse_object_name,
    parse_tmp_pid,
)



@dataclass
class CheckReport:
    temp_removed: int = 0
    partial_removed: int = 0
    partial_kept: int = 0
    entries_dropped_missing: int = 0
    entries_dropped_size: int = 0
    orphans_quarantined: int = 0
    not_files_quarantined: int = 0
    entries_ok: int = 0
    stores_failed: int = 0  # by this run: a directory could not be listed
    failed_stores: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when this run found nothing to repair."""
        return not (
            self.temp_removed or self.entries_dropped_missing or self.entries_dropped_size or self.orphans_quarantined
            or self.not_files_quarantined or self.stores_failed
        )

    def lines(self) -> list[str]:
        out = [
            f"temporary files removed: {self.temp_removed}",
            f"partial downloads kept: {self.partial_kept}",
            f"partial downloads removed (too old): {self.partial_removed}",
            f"index entries dropped (file missing): {self.entries_dropped_missing}",
            f"index entries dropped (wrong size): {self.entries_dropped_size}",
            f"unindexed files quarantined: {self.orphans_quarantined}",
            f"links and other non-files quarantined: {self.not_files_quarantined}",
            f"index entries ok: {self.entries_ok}",
            f"stores failed by this check: {self.stores_failed}",
            f"failed stores skipped: {len(self.failed_stores) - self.stores_failed}",
        ]
        out.extend(f"  failed: {s}" for s in self.failed_stores)
        out.extend(f"  {d}" for d in self.details)
        return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _walk_objects(disk: Disk) -> Iterator[tuple[str, str, bool]]:
    """(relpath, name, regular) of every entry under objects/ that is not a directory, sorted.

    `regular` is False for symbolic links (never followed: a link would serve
    its target) and for anything else that is not a plain file. A directory
    that cannot be listed raises `StoreUnreadableError`: its files are
    unknown, and must never be taken for missing.
    """
    yield from _walk_dir(disk, OBJECTS_DIR)


def _walk_dir(disk: Disk, rel_dir: str) -> Iterator[tuple[str, str, bool]]:
    try:
        with os.scandir(disk.join(rel_dir)) as it:
            found = sorted(it, key=lambda e: e.name)
        kinds = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in found]
    except OSError as exc:
        raise StoreUnreadableError(f"cannot list {rel_dir}: {os.strerror(exc.errno or 0)}") from exc
    for name, link, is_dir, is_file in kinds:
        relpath = f"{rel_dir}/{name}"
        if is_dir and not link:
            yield from _walk_dir(disk, relpath)
        else:
            yield relpath, name, is_file and not link


def _unused_name(path: str) -> str:
    """`path`, or `path.N` with the smallest N that does not exist yet."""
    target, n = path, 0
    while os.path.lexists(target):
        n += 1
        target = f"{path}.{n}"
    return target


def quarantine(disk: Disk, relpath: str, why: str) -> str:
    """Move a file into the store's quarantine directory; returns its new name."""
    qdir = disk.join(QUARANTINE_DIR)
    os.makedirs(qdir, exist_ok=True)
    target = _unused_name(os.path.join(qdir, f"{os.path.basename(relpath)}.{why}.{int(time.time())}"))
    os.rename(disk.join(relpath), target)
    return target


def check(cs: ContentStore, *, now_s: float | None = None) -> CheckReport:
    """Reconcile the index with the disks (see the module docstring)."""
    now_s = time.time() if now_s is None else now_s
    report = CheckReport()
    cs.refresh_states()
    with cs.maintenance_lock(exclusive=True):
        entries_by_store: dict[str, dict[str, Entry]] = {}
        for entry in cs.index.entries():
            entries_by_store.setdefault(entry.store_uuid, {})[entry.relpath] = entry
        for disk in cs.disks:
            if not disk.working:
                report.failed_stores.append(f"{disk.path}: {disk.reason}")
                continue
            try:
                _check_disk(cs, disk, entries_by_store.pop(disk.uuid or "", {}), now_s, report)
            except StoreUnreadableError as exc:
                # Entries are dropped only after a complete listing; none were.
                cs.mark_failed(disk, f"check: {exc}")
                report.stores_failed += 1
                report.failed_stores.append(f"{disk.path}: {disk.reason}")
            except OSError as exc:
                if cs.report_io_error(disk, exc, "check"):
                    report.failed_stores.append(f"{disk.path}: {disk.reason}")
                else:
                    raise
        # Entries pointing at stores the index no longer knows at all.
        known = cs.index.stores()
        for uuid, entries in entries_by_store.items():
            if uuid in known:
                continue  # a failed or unconfigured store: kept until it returns
            for entry in entries.values():
                cs.index.delete(entry.content_id, only_if=entry)
                report.entries_dropped_missing += 1
                report.details.append(f"dropped {entry.content_id}: its store {uuid} is unknown")
    return report


def _check_disk(cs: ContentStore, disk: Disk, entries: dict[str, Entry], now_s: float, report: CheckReport) -> None:
    tmp_dir = disk.join(TMP_DIR)
    for name in sorted(os.listdir(tmp_dir)):
        pid = parse_tmp_pid(name)
        if pid is not None and _pid_alive(pid):
            continue
        path = os.path.join(tmp_dir, name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            report.temp_removed += 1
    partial_dir = disk.join(PARTIAL_DIR)
    for name in sorted(os.listdir(partial_dir)):
        path = os.path.join(partial_dir, name)
        try:
            age = now_s - os.stat(path).st_mtime
        except FileNotFoundError:
            continue
        if age > cs.partial_max_age_s:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            report.partial_removed += 1
        else:
            report.partial_kept += 1
    seen = set()
    for relpath, _name, regular in _walk_objects(disk):
        entry = entries.get(relpath)
        if not regular:
            if entry is not None:
                seen.add(relpath)
                cs.index.delete(entry.content_id, only_if=entry)
                report.details.append(f"dropped {entry.content_id}: {disk.path}/{relpath} is not a regular file")
            quarantine(disk, relpath, "notfile")
            report.not_files_quarantined += 1
            report.details.append(f"quarantined {disk.path}/{relpath}: a symbolic link or other non-file")
            continue
        if entry is None:
            quarantine(disk, relpath, "orphan")
            report.orphans_quarantined += 1
            report.details.append(f"quarantined unindexed {disk.path}/{relpath}")
            continue
        seen.add(relpath)
        size = os.lstat(disk.join(relpath)).st_size
        if size != entry.size:
            cs.index.delete(entry.content_id, only_if=entry)
            quarantine(disk, relpath, "badsize")
            report.entries_dropped_size += 1
            report.details.append(f"dropped {entry.content_id}: file has {size} bytes, index says {entry.size}")
        else:
            report.entries_ok += 1
    for relpath, entry in entries.items():
        if relpath not in seen:
            cs.index.delete(entry.content_id, only_if=entry)
            report.entries_dropped_missing += 1
            report.details.append(f"dropped {entry.content_id}: {disk.path}/{relpath} is missing")


@dataclass
class VerifyReport:
    checked: int = 0
    bytes_hashed: int = 0
    corrupt: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)




def verify(cs: ContentStore) -> VerifyReport:
    """Re-hash every servable file; take corrupt ones out of service."""
    report = VerifyReport()
    for entry in list(cs.index.entries()):
        disk = cs.disk(entry.store_uuid)
        if disk is None or not disk.working:
            continue
        path = disk.join(entry.relpath)
        try:
            digest, size = hash_file(path)
        except OSError as exc:
            cs.report_io_error(disk, exc, "verify")
            report.unreadable.append(f"{entry.content_id}: {path}: {exc.strerror or exc}")
            continue
        report.checked += 1
        report.bytes_hashed += size
        if digest != entry.checksum or size != entry.size:
            with cs.maintenance_lock(exclusive=False):
                if cs.index.delete(entry.content_id, only_if=entry) is not None:
                    with contextlib.suppress(OSError):
                        quarantine(disk, entry.relpath, "corrupt")
            report.corrupt.append(
                f"{entry.content_id}: {path}: xxh3-128 {digest} ({size} bytes), expected {entry.checksum} ({entry.size} bytes)"
            )
    return report


@dataclass
class RebuildReport:
    entries: int = 0
    stores: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    moved_aside: str | None = None


def rebuild_index(
    index_path: str, disks: list[Disk], *, map_size_bytes: int, max_readers: int, now_s: float | None = None
) -> RebuildReport:
    """Make a new index from the stores alone.

    Refused (`IndexBusyError`, nothing touched) while any other process has
    the index open. If opening the old index fails it is moved aside all the
    same. Stores keep their UUIDs and their failed state when the old index
    could still be read. A store with a directory that cannot be listed is
    recorded failed, with the reason: its files are on disk, and a rebuild
    after the repair finds them.
    """
    now_s = time.time() if now_s is None else now_s

    def open_index(path: str) -> Index:
        return Index(path, map_size_bytes=map_size_bytes, max_readers=max_readers, hold=False)

    hold_fd = hold_index(index_path, exclusive=True)
    try:
        return _rebuild(index_path, disks, open_index, now_s)
    finally:
        os.close(hold_fd)


def _rebuild(index_path: str, disks: list[Disk], open_index: Callable[[str], Index], now_s: float) -> RebuildReport:
    report = RebuildReport()
    old_states: dict[str, StoreRecord] = {}
    try:
        old = open_index(index_path)
        old_states = old.stores()
        old.close()
    except Exception:  # a corrupt index: whatever the error, start afresh
        old_states = {}
    if os.path.exists(index_path):
        aside = _unused_name(f"{index_path}.old.{int(now_s)}")
        os.rename(index_path, aside)
        report.moved_aside = aside
    index = open_index(index_path)
    best: dict[str, tuple[Entry, Disk]] = {}
    try:
        for disk in disks:
            seen = disk.inspect()
            if seen.problem is not None or seen.uuid is None:
                report.stores.append(f"{disk.path}: skipped ({seen.problem or 'no store marker'})")
                continue
            disk.uuid = seen.uuid
            prior = old_states.get(disk.uuid)
            state = prior.state if prior is not None and prior.path == disk.path else STATE_OK
            reason = prior.reason if prior is not None and state != STATE_OK else "rebuilt"
            found: list[tuple[Entry, str]] = []
            try:
                for relpath, name, regular in _walk_objects(disk):
                    found.append((_rebuilt_entry(disk, relpath, name, regular, report), relpath))
            except StoreUnreadableError as exc:
                state, reason = STATE_FAILED, f"rebuild-index: {exc}; fix it and run rebuild-index again"
            index.put_store(StoreRecord(disk.uuid, disk.path, state, reason, now_s))
            disk.state, disk.reason = state, reason
            count = 0
            for entry, relpath in found:
                if entry is None:
                    continue
                if entry.content_id in best:
                    other, other_disk = best[entry.content_id]
                    if other.added_s >= entry.added_s:
                        report.quarantined.append(quarantine(disk, relpath, "duplicate"))
                        continue
                    report.quarantined.append(quarantine(other_disk, other.relpath, "duplicate"))
                best[entry.content_id] = (entry, disk)
                count += 1
            report.stores.append(f"{disk.path}: uuid {disk.uuid}, state {state}, {count} files" + (
                f" ({reason})" if state != STATE_OK else ""))
        batch = [e for e, _d in best.values()]
        for i in range(0, len(batch), 5000):
            index.put_many(batch[i : i + 5000])
        report.entries = len(batch)
    finally:
        index.close()
    return report


def _rebuilt_entry(disk: Disk, relpath: str, name: str, regular: bool, report: RebuildReport) -> Entry | None:
    """The entry a file under objects/ stands for; None (and quarantined) when it stands for none."""
    parsed = parse_object_name(name) if regular else None
    if parsed is None:
        report.quarantined.append(quarantine(disk, relpath, "unnamed" if regular else "notfile"))
        return None
    content_id, checksum, mtime_s = parsed
    st = os.lstat(disk.join(relpath))
    assert disk.uuid is not None
    return Entry(content_id, disk.uuid, relpath, st.st_size, checksum, mtime_s, st.st_mtime, 0.0)
