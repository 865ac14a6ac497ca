"""Per-file request counters on a real appliance: real requests to a real oca-server, its
workers' flushes, a clean restart, kill -9 and `oca-admin rebuild-index`; read on /popularity."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request

from tests.server_proc import ServerProcess, appliance
from tests.support import admin

A = os.urandom(3000)
B = os.urandom(500)


def _popularity(base: str, query: str = "") -> dict:
    with urllib.request.urlopen(base + "/popularity" + query, timeout=5) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def _counts(base: str) -> dict[str, tuple[int, int, int, int]]:
    doc = _popularity(base)
    assert doc["fields"][:5] == ["id", "requests", "bytes", "requests_since_mark", "bytes_since_mark"]
    assert doc["count"] == len(doc["rows"])
    return {row[0]: tuple(row[1:5]) for row in doc["rows"]}


def _wait_counts(base: str, want: dict, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        got = {k: v[:2] for k, v in _counts(base).items()}
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"counts {got} never became {want}")


def _requests(host: str, port: int, plan: list[tuple[str, str, dict]]) -> list[int]:
    """Each (method, path, headers) on one keep-alive connection; the statuses."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    out = []
    try:
        for method, path, headers in plan:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            r.read()
            out.append(r.status)
    finally:
        conn.close()
    return out


def _set_flush(cfg, flush_s: float) -> None:
    text = cfg.read_text()
    head, _sep, _rest = text.partition("[popularity]")
    cfg.write_text(head + f"[popularity]\nflush_s = {flush_s}\n")


def test_counts_are_exact_and_survive_restart_kill_and_rebuild_index(tmp_path):
    cfg, host, port = appliance(tmp_path, files={"movie-a": A, "movie-b": B}, workers=2, extra="[popularity]\nflush_s = 0.1\n")
    first = [("GET", "/content/movie-a", {})] * 5 + [("HEAD", "/content/movie-a", {})] * 2
    first += [("GET", "/content/movie-b", {"Range": "bytes=0-9"})] * 3 + [("GET", "/content/movie-b/range/100-199", {})]
    first += [("GET", "/content/missing-c", {})] * 3  # wanted but not here: counted, 0 bytes
    first += [("GET", "/content/../etc", {}), ("GET", "/nothing", {})]  # no content id: not counted
    want = {"movie-a": (7, 5 * len(A)), "movie-b": (4, 30 + 100), "missing-c": (3, 0)}
    with ServerProcess(cfg, host, port) as srv:
        statuses = _requests(host, port, first)
        assert statuses == [200] * 7 + [206] * 3 + [200] + [404] * 3 + [400, 404]
        _wait_counts(srv.base, want)  # flushed by the workers' loops, while serving
        # Only the top ids, most requested first.
        assert [row[0] for row in _popularity(srv.base, "?top=2")["rows"]] == ["movie-a", "movie-b"]
        for query in ("?top=0", "?top=x", "?top=1&top=2"):
            try:
                urllib.request.urlopen(srv.base + "/popularity" + query, timeout=5)
                raise AssertionError(f"{query} accepted")
            except urllib.error.HTTPError as exc:
                assert exc.code == 400 and b"top" in exc.read()
        # kill -9 of the workers loses at most what they had not flushed: here, nothing.
        old = set(srv.worker_pids())
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while len(set(srv.worker_pids()) - old) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _wait_counts(srv.base, want)
        with urllib.request.urlopen(srv.base + "/health", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"

    # A long interval: only the flush after serving ends writes these.
    _set_flush(cfg, 3600)
    with ServerProcess(cfg, host, port) as srv:
        assert {k: v[:2] for k, v in _counts(srv.base).items()} == want  # a restart keeps them
        _requests(host, port, [("GET", "/content/movie-b", {})] * 2)
    want["movie-b"] = (6, 130 + 2 * len(B))

    proc = admin(cfg, "rebuild-index", check=True)
    assert "index rebuilt: 2 entries" in proc.stdout
    with ServerProcess(cfg, host, port) as srv:
        assert {k: v[:2] for k, v in _counts(srv.base).items()} == want


def test_counters_on_disk_are_bounded_and_marked(tmp_path):
    from oca.store.counters import RequestCounters, counters_path

    path = counters_path(str(tmp_path / "index"))
    c = RequestCounters(path, max_ids=100, now_s=10.0)
    c.add({"hot": (50, 5000)}, 20.0)
    evicted = sum(c.add({f"scan-{i}-{j}": (1, 0) for j in range(10)}, 30.0 + i) for i in range(30))  # 300 one-off ids
    snap = c.snapshot()
    assert len(snap.records) <= 100 and evicted == 301 - len(snap.records)
    assert snap.records["hot"].requests == 50 and snap.created_s == 10.0
    mark = c.set_mark(100.0)
    c.add({"hot": (2, 20), "new": (3, 0)}, 110.0)
    c.close()
    c = RequestCounters(path, max_ids=100, now_s=999.0)  # reopened: the same counts, the same creation time
    snap = c.snapshot()
    assert snap.mark == mark and snap.created_s == 10.0
    assert (snap.records["hot"].requests, snap.records["hot"].requests_since_mark, snap.records["hot"].bytes_since_mark) == (52, 2, 20)
    assert snap.records["new"].requests_since_mark == 3
    assert all(d.requests_since_mark == 0 for cid, d in snap.records.items() if cid.startswith("scan-"))
    c.close()
