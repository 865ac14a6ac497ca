"""The fill agent against hostile origins, peers and manifests, and against itself (two runs at once).

Real processes on loopback: `oca-fill` and `oca-admin` as subprocesses,
tests/origin.py as the hostile origin (and as a hostile peer, serving a
file named `inventory`), a real tmpfs for a full store. After every case:
every file the plan chose ended as added, failed or skipped with a line
naming it and the reason; the last line's counts add up; nothing held was
deleted beyond `fill.max_delete_share`; nothing unverified was published
(`oca-admin verify` and `check` are clean).
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from fill.manifest import sign
from tests.fault.test_fill_faults import (  # noqa: F401 - the tmpfs fixture is used by name
    FillProcess,
    Tmpfs,
    appliance_cfg,
    assert_store_sound,
    part_files,
    set_fill,
    tmpfs,
    wait_until,
)
from tests.integration.test_fill import (
    KEY,
    build_manifest,
    expected,
    held,
    make_files,
    oca_fill,
    publish,
    signing_table,
    status,
)
from tests.origin import OriginProcess
from tests.server_proc import free_port
from tests.support import needs_root, write_config

MB = 1_000_000
MiB = 1 << 20
root_only = needs_root("mounting a tmpfs store needs root")
LAST_LINE = re.compile(r"run ended \((?P<why>[^)]*)\): (?P<added>\d+) added, (?P<deleted>\d+) deleted, "
                       r"(?P<failed>\d+) failed, (?P<skipped>\d+) skipped")


def last_line(stderr: str) -> dict[str, int | str]:
    lines = [m for m in (LAST_LINE.search(x) for x in stderr.splitlines()) if m]
    assert lines, stderr
    m = lines[-1]
    return {k: (v if k == "why" else int(v)) for k, v in m.groupdict().items()}


def assert_every_file_accounted(run_stderr: str, last: dict, ids: list[str]) -> None:
    """Every chosen file ended added, failed or skipped, with a line naming it; the totals add up."""
    counts = last_line(run_stderr)
    assert counts["added"] + counts["failed"] + counts["skipped"] == last["files_total"] == len(ids), (counts, last)
    assert (counts["added"], counts["failed"], counts["skipped"]) == (last["files_added"], last["files_failed"], last["files_skipped"])
    for cid in ids:
        assert re.search(rf"(added|failed|skipped) {re.escape(cid)}\b", run_stderr), f"no line for {cid}:\n{run_stderr}"


# ---------------------------------------------------------------- hostile origins: every file ends with a reason

# mode -> what each file's failure line must say
HOSTILE = {
    "redirect-loop": "bad redirect: TooManyRedirects",
    "redirect-ftp": "bad redirect: NonHttpUrlRedirectClientError",
    "redirect-javascript": "bad redirect: NonHttpUrlRedirectClientError",
    "redirect-malformed": "bad redirect",
    "truncate": "truncated body",
    "oversize": "sent more than the",
    "wrong-length": "wrong length:",
    "stall": "stalled: nothing received for 1 s",
}


@pytest.mark.parametrize("mode", list(HOSTILE))
def test_every_file_ends_failed_with_its_reason_whatever_the_origin_does(tmp_path, mode):
    """Defect 5: a redirect to another scheme or a malformed URL ended the
    download workers; the run said "done", exit 0, 0 failed, files never tried."""
    www = tmp_path / "www"
    sizes = {f"x{i}.mp4": 2 * MiB + 1000 * i for i in range(5)}
    make_files(www / "files", sizes, seed=300 + list(HOSTILE).index(mode))
    with OriginProcess(www, free_port(), mode) as bad, OriginProcess(www, free_port(), "ok") as good:
        doc = build_manifest(www / "files", bad.url("files/"))
        publish(doc, www / "manifest.json")
        cfg = appliance_cfg(tmp_path / "a", good.url("manifest.json"), concurrency=2, retries=2, backoff_s=0.05, read_timeout_s=1)
        run = oca_fill(cfg, "run", timeout=120)
    last = status(cfg)["last"]
    assert run.returncode == 1, run.stderr
    assert last["ended_because"] == "done"
    assert (last["files_added"], last["files_failed"], last["files_skipped"]) == (0, 5, 0), last
    assert_every_file_accounted(run.stderr, last, sorted(sizes))
    for cid in sizes:
        line = next(x for x in last["failures"] if x.startswith(f"{cid}: "))
        assert HOSTILE[mode] in line and "every source failed" in line, line
    assert_store_sound(cfg, {})


# ---------------------------------------------------------------- the deletion guard on a full appliance


def full_appliance(tmp_path: Path, tmpfs: Tmpfs, www: Path, origin: OriginProcess, n: int, size: int, **fill) -> tuple[Path, dict]:
    """A 32 MiB store holding `n` files of `size` bytes (the manifest of the day before), nearly full."""
    store = tmpfs.mount(tmp_path / "store0", "32m")
    old = {f"old-{i}.mp4": size for i in range(n)}
    make_files(www / "files", old, seed=400)
    doc = build_manifest(www / "files", origin.url("files/"), {n: 1.0 for n in old})
    publish(doc, www / "manifest.json")
    cfg = appliance_cfg(tmp_path / "a", origin.url("manifest.json"), store_paths=[store], concurrency=1,
                        retries=1, backoff_s=0.05, read_timeout_s=2, **fill)
    oca_fill(cfg, "run", check=True)
    assert held(cfg) == expected(doc)
    return cfg, doc


def reshuffle(www: Path, origin_of_new: OriginProcess, old_doc: dict, size: int) -> dict:
    """Four new, far more popular titles (only `origin_of_new` has them); the old ones stay listed, unchosen."""
    new = {f"new-{i}.mp4": size for i in range(4)}
    make_files(www / "new", new, seed=401)
    new_doc = build_manifest(www / "new", origin_of_new.url("new/"), {n: 1000.0 for n in new})
    doc = dict(old_doc, files=old_doc["files"] + new_doc["files"], generated_s=int(time.time()))
    publish(doc, www / "manifest.json")
    return doc


@root_only
@pytest.mark.parametrize("mode,most_deleted", [("truncate", 2), ("500", 0)])
def test_a_bad_origin_cannot_empty_a_full_appliance(tmp_path, tmpfs, mode, most_deleted):
    """Defect 4: make_room deleted held files before the download; a
    reshuffled manifest plus an origin that truncates emptied the store.
    Room is made only once the source has sent its first bytes (a 500 costs
    nothing), and never past max_delete_share (a truncating origin sends some)."""
    www = tmp_path / "www"
    with OriginProcess(www, free_port(), "ok") as good, OriginProcess(www, free_port(), mode) as bad:
        # Four 8 MB files, 1.5 MB free; four new 8 MB titles replace them all in the plan.
        cfg, old_doc = full_appliance(tmp_path, tmpfs, www, good, 4, 8 * MB, max_delete_share=0.5)
        doc = reshuffle(www, bad, old_doc, 8 * MB)
        plan = oca_fill(cfg, "plan", check=True).stdout
        assert plan.count("delete-if-needed old-") == 4 and plan.count("add new-") == 4 and "deletes now: 0 files" in plan, plan
        run = oca_fill(cfg, "run", timeout=120)
    last = status(cfg)["last"]
    left = held(cfg)
    print(f"after the reshuffle with a {mode} origin: {last['files_deleted']} of 4 held deleted, {len(left)} left, "
          f"{last['files_added']} added, {last['files_failed']} failed, {last['files_skipped']} skipped")
    assert last["files_deleted"] <= most_deleted, last  # max_delete_share 0.5 of 4 files, every path counted
    assert len(left) >= 4 - most_deleted and all(cid.startswith("old-") for cid in left)
    if mode == "truncate":
        assert "deletion budget" in run.stderr, run.stderr
    assert last["files_added"] == 0
    assert_every_file_accounted(run.stderr, last, [f["id"] for f in doc["files"] if f["id"].startswith("new-")])
    assert_store_sound(cfg, {k: v for k, v in expected(old_doc).items() if k in left})


@root_only
def test_a_full_appliance_still_fills_deleting_within_the_budget(tmp_path, tmpfs):
    www = tmp_path / "www"
    with OriginProcess(www, free_port(), "ok") as good:
        # Five 6 MB files, 3.5 MB free: four new 6 MB titles need four deletions.
        cfg, old_doc = full_appliance(tmp_path, tmpfs, www, good, 5, 6 * MB, max_delete_share=0.8)
        doc = reshuffle(www, good, old_doc, 6 * MB)
        run = oca_fill(cfg, "run", timeout=120)
    assert run.returncode == 0, run.stderr
    last = status(cfg)["last"]
    got = held(cfg)
    assert {cid for cid in got if cid.startswith("new-")} == {f"new-{i}.mp4" for i in range(4)}, (last, run.stderr)
    assert last["files_deleted"] == 4 and len(got) == 5
    assert_every_file_accounted(run.stderr, last, [f"new-{i}.mp4" for i in range(4)])
    assert_store_sound(cfg, {k: v for k, v in expected(doc).items() if k in got})


# ---------------------------------------------------------------- two runs at once; a resumed file checked on disk


def test_a_second_run_exits_75_while_the_first_holds_the_lock(tmp_path):
    """Defect 6: two runs at once shared one partial file."""
    www = tmp_path / "www"
    make_files(www / "files", {"c0.mp4": 12 * MB}, seed=500)
    with OriginProcess(www, free_port(), "ok") as good:
        publish(build_manifest(www / "files", good.url("files/")), www / "manifest.json")
        cfg = appliance_cfg(tmp_path / "a", good.url("manifest.json"), concurrency=1, rate_limit_mbps=24)
        with FillProcess(cfg) as first:
            first.wait_for("oca-fill: plan:")
            second = oca_fill(cfg, "run", timeout=60)
            plan = oca_fill(cfg, "plan", timeout=60)  # read-only: never locked out
            assert first.wait(60) == 0, first.text()
    assert second.returncode == 75, (second.returncode, second.stderr)
    assert "another oca-fill run holds" in second.stderr and "oca-fill.lock" in second.stderr
    assert plan.returncode == 0, plan.stderr
    assert status(cfg)["last"]["files_added"] == 1
    assert_store_sound(cfg, expected(json.loads((www / "manifest.json").read_text())))


def test_a_resumed_download_is_hashed_from_disk_before_it_is_published(tmp_path):
    """Defect 6: the streamed hash of a resumed download covers what was read
    at the start and what was written, not what the file holds at the end."""
    www = tmp_path / "www"
    make_files(www / "files", {"r0.mp4": 20 * MB}, seed=501)
    with OriginProcess(www, free_port(), "ok") as good:
        doc = build_manifest(www / "files", good.url("files/"))
        publish(doc, www / "manifest.json")
        cfg = appliance_cfg(tmp_path / "a", good.url("manifest.json"), concurrency=1, rate_limit_mbps=40, retries=2, backoff_s=0.05)
        with FillProcess(cfg) as first:  # leave a partial of a few MB
            wait_until(lambda: any(p.stat().st_size > 4 * MiB for p in part_files(cfg)), 30, "a partial")
            first.signal(signal.SIGTERM)
            assert first.wait(30) == 0, first.text()
        part = part_files(cfg)[0]
        kept = part.stat().st_size
        with FillProcess(cfg) as second:
            wait_until(lambda: part.exists() and part.stat().st_size > kept + 2 * MiB, 30, "the resumed download to write")
            with open(part, "r+b") as fh:  # bytes already hashed at the resume change under the download
                fh.write(b"\0" * 4096)
            assert second.wait(60) == 0, second.text()
            text = second.text()
    assert "checksum mismatch on disk after resuming" in text, text
    assert_store_sound(cfg, expected(doc))  # published only once a clean attempt verified


# ---------------------------------------------------------------- manifests: replay, age, signature, size


def signed(doc: dict, generated_s: int) -> dict:
    return sign(dict(doc, generated_s=generated_s), "k1", KEY.encode())


def test_a_replayed_or_stale_manifest_is_refused_and_nothing_changes(tmp_path):
    """Defect 7: generated_s was never checked; an old signed manifest rolled the appliance back."""
    www = tmp_path / "www"
    make_files(www / "files", {f"m{i}.mp4": MiB + i for i in range(4)}, seed=502)
    with OriginProcess(www, free_port(), "ok") as good:
        base = build_manifest(www / "files", good.url("files/"))
        cfg = write_config(tmp_path / "a", appliance_id="oca-a", site="site-a", reserve_percent=0.0,
                           extra=f'[fill]\nmanifest_url = "{good.url("manifest.json")}"\nbackoff_s = 0.05\n' + signing_table())
        assert oca_fill(cfg, "--check-config").returncode == 0  # http, unset: signatures required, and there is a key
        now = int(time.time())
        old = signed(dict(base, files=base["files"][:1]), now - 3600)  # yesterday's: one title
        new = signed(base, now - 60)  # today's: four titles
        publish(new, www / "manifest.json")
        oca_fill(cfg, "run", check=True)
        assert set(held(cfg)) == {f"m{i}.mp4" for i in range(4)}
        assert status(cfg)["last"]["newest_manifest_s"] == now - 60

        publish(old, www / "manifest.json")  # replayed: validly signed, older
        replay = oca_fill(cfg, "run")
        plan = oca_fill(cfg, "plan")
        stale = signed(base, now - 73 * 3600)
        publish(stale, www / "manifest.json")
        too_old = oca_fill(cfg, "run")
        publish(dict(base, generated_s=now), www / "manifest.json")
        unsigned = oca_fill(cfg, "run")
    assert replay.returncode == 1 and "older than the newest manifest accepted" in replay.stderr, replay.stderr
    assert plan.returncode == 1 and "older than the newest manifest accepted" in plan.stderr
    assert too_old.returncode == 1 and "h old (limit 72 h)" in too_old.stderr
    assert unsigned.returncode == 1 and "signature: the manifest is not signed" in unsigned.stderr
    assert set(held(cfg)) == {f"m{i}.mp4" for i in range(4)}  # nothing deleted
    assert status(cfg)["last"]["newest_manifest_s"] == now - 60  # refusals do not move the guard
    assert_store_sound(cfg, expected(base))


def test_unsigned_over_http_when_explicitly_allowed_warns_in_log_and_status(tmp_path):
    www = tmp_path / "www"
    make_files(www / "files", {"w.mp4": MiB}, seed=503)
    with OriginProcess(www, free_port(), "ok") as good:
        publish(build_manifest(www / "files", good.url("files/")), www / "manifest.json")
        cfg = appliance_cfg(tmp_path / "a", good.url("manifest.json"))  # require_signed_manifest = false
        run = oca_fill(cfg, "run", check=True)
    warning = "fill.require_signed_manifest = false with an http manifest_url"
    assert f"warning: {warning}" in run.stderr
    st = status(cfg)
    assert any(warning in w for w in st["warnings"]) and any(warning in w for w in st["last"]["warnings"])


def test_oversized_manifest_and_hostile_peer_inventories_are_refused(tmp_path):
    """Defect 21 (fill): no size limit on the manifest and peer inventory fetches."""
    www = tmp_path / "www"
    make_files(www / "files", {"p0.mp4": MiB, "p1.mp4": MiB + 1}, seed=504)
    # Peers are directories of the ok origin that serve a file named "inventory".
    peers = {
        "oca-big": b'{"appliance": "oca-big", "generation": 1, "ids": ["' + b"x" * 3_000_000 + b'"]}',
        "oca-bad": b'{"appliance": "oca-bad", "generation": 1, "ids": [1, 2]}',
        "oca-other": b'{"appliance": "oca-9", "generation": 1, "ids": ["p0.mp4"]}',
    }
    for name, body in peers.items():
        (www / name).mkdir(parents=True)
        (www / name / "inventory").write_bytes(body)
    with OriginProcess(www, free_port(), "ok") as good:
        doc = build_manifest(www / "files", good.url("files/"))
        doc["sites"] = {"site-a": [{"id": "oca-a", "url": "http://127.0.0.1:9", "weight": 1000.0}]
                        + [{"id": name, "url": good.url(name), "weight": 0.001} for name in peers]}
        publish(doc, www / "manifest.json")
        cfg = appliance_cfg(tmp_path / "a", good.url("manifest.json"), max_response_mb=2)
        run = oca_fill(cfg, "run", timeout=60)
        assert run.returncode == 0, run.stderr
        for name, words in (("oca-big", "over the 2000000-byte limit"), ("oca-bad", "ids[0]: '1' is not a valid content id"),
                            ("oca-other", "appliance: 'oca-9' is not the peer asked")):
            assert f"peer {name} is no source this run: inventory refused: " in run.stderr and words in run.stderr, run.stderr
        assert held(cfg) == expected(doc)  # from the origin

        padded = json.dumps(doc).encode()[:-1] + b" " * 2_100_000 + b"}"  # valid JSON, 2.1 MB
        publish(padded, www / "manifest.json")
        refused = oca_fill(cfg, "run", timeout=60)
    assert refused.returncode == 1
    assert "manifest refused: manifest" in refused.stderr and "over the 2000000-byte limit" in refused.stderr


# ---------------------------------------------------------------- a brand-new appliance's plan


def test_plan_on_a_brand_new_appliance_counts_the_stores_a_run_would_initialise(tmp_path):
    """Also found: `plan` before any writer ran said "adds: 0 files"."""
    www = tmp_path / "www"
    sizes = {f"n{i}.mp4": MiB + i for i in range(3)}
    make_files(www / "files", sizes, seed=505)
    with OriginProcess(www, free_port(), "ok") as good:
        publish(build_manifest(www / "files", good.url("files/")), www / "manifest.json")
        cfg = write_config(tmp_path / "a", appliance_id="oca-a", site="site-a",
                           extra=f'[fill]\nmanifest_url = "{good.url("manifest.json")}"\nrequire_signed_manifest = false\n')
        plan = oca_fill(cfg, "plan", check=True).stdout
        assert not any(p.name == ".oca-store" for d in (tmp_path / "a").glob("store*") for p in d.iterdir())  # plan changed nothing
        run = oca_fill(cfg, "run", check=True)
    assert f"adds: 3 files, {sum(sizes.values())} bytes" in plan, plan
    assert plan.count("is not initialised yet; a run initialises it, so its space is counted") == 2, plan
    assert "added n0.mp4" in run.stderr and len(held(cfg)) == 3


# ---------------------------------------------------------------- the daemon's loop is supervised


def test_the_daemon_loop_survives_a_failure_and_shows_it_in_status(tmp_path):
    """Rule 2: a failing daemon loop is logged with its traceback, counted,
    restarted with back-off and visible in `oca-fill status`."""
    www = tmp_path / "www"
    make_files(www / "files", {"d.mp4": MiB}, seed=506)
    with OriginProcess(www, free_port(), "ok") as good:
        publish(build_manifest(www / "files", good.url("files/")), www / "manifest.json")
        cfg = appliance_cfg(tmp_path / "a", good.url("manifest.json"))
        set_fill(cfg, "window", "99:00-01:00")  # the loop's config load fails
        proc = FillProcess(cfg, "--daemon")
        with proc:
            wait_until(lambda: "task fill-loop failed (2 so far)" in proc.text(), 30, "two supervised failures")
            st = status_raw(cfg)
            assert proc.proc.poll() is None, proc.text()
            set_fill(cfg, "window", None)  # fixed: the next restart fills
            wait_until(lambda: "d.mp4" in held(cfg), 60, "the fill after the restart")
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.text()
            text = proc.text()
    assert "Traceback" in text and "fill.window" in text
    assert st["daemon"]["failures"]["fill-loop"] >= 2, st
    assert "fill.window" in st["daemon"]["down"].get("fill-loop", "") or st["daemon"]["failures"]["fill-loop"] >= 2


def status_raw(cfg: Path) -> dict:
    proc = oca_fill(cfg, "status")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
