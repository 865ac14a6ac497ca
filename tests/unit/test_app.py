"""`App` against an in-memory store: routing, content answers, control access,
health conditions and descriptor handling, without sockets or processes.

The store is `MemoryStore`: a dict for the index and the serving face of
`ContentStore` (lookup, withdraw, flags, generation, inventory), with each
file's bytes in a temporary file, since the App sends from real descriptors.
The shared counters are a real memfd block; the clock is the loop's.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from oca.config import load_config
from oca.http.messages import Request, Response
from oca.server import stats as S
from oca.server.accesslog import AccessLog
from oca.server.app import App
from oca.store import flags
from oca.store.content import Located
from oca.store.disks import Capacity
from tests.support import write_config

MTIME = 1_600_000_000


class MemoryStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: dict[str, Located] = {}
        self.gen = 1
        self.disks = [SimpleNamespace(path=str(root), uuid="u1", state="ok", reason="", working=True,
                                      capacity=lambda: Capacity(1000, 10, 990, 50))]
        self.withdrawn: list[str] = []
        self.io_errors: list[str] = []
        self.drained: flags.Drain | None = None
        self.routes_down = ""

    def add(self, content_id: str, data: bytes) -> Path:
        path = self.root / content_id
        path.write_bytes(data)
        self.entries[content_id] = Located(str(path), len(data), "ab" * 16, MTIME, "u1")
        self.gen += 1
        return path

    def lookup(self, content_id: str) -> Located | None:
        return self.entries.get(content_id)

    def withdraw(self, content_id: str, path: str) -> bool:
        loc = self.entries.get(content_id)
        if loc is None or loc.path != path:
            return False
        del self.entries[content_id]
        self.withdrawn.append(content_id)
        self.gen += 1
        return True

    def disk(self, uuid: str):
        return SimpleNamespace(uuid=uuid)

    def report_io_error(self, disk, exc: OSError, doing: str) -> bool:
        self.io_errors.append(f"{doing}: {exc.errno}")
        return False

    def drain(self) -> flags.Drain | None:
        return self.drained

    def fill_status(self) -> flags.FillStatus:
        return flags.FillStatus()

    def routes(self) -> flags.Routes:
        return flags.Routes(3, ("192.0.2.0/24",), down=self.routes_down)

    def store_records(self) -> dict:
        return {}

    def changes_since(self, since: int, limit: int | None = None):
        from oca.store.index import Changes

        return Changes("full", self.gen, latest=self.gen)

    def inventory(self) -> tuple[int, list[str]]:
        return self.gen, sorted(self.entries)

    def generation(self) -> int:
        return self.gen

    def demand(self):
        from oca.store.demand import Demand, DemandSnapshot, Mark

        return DemandSnapshot(Mark(2, 100.0), 50.0, {"v.mp4": Demand(3, 30, 1, 10, 60.0, 110.0, 2)})


class Conn:
    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.peer = peer


@pytest.fixture
def rig(tmp_path) -> Iterator[SimpleNamespace]:
    cfg = load_config(str(write_config(tmp_path, stores=1, extra="")))
    cfg = _with_server(cfg, fd_cache_size=0, control_allow=("10.1.0.0/16",))
    loop = asyncio.new_event_loop()
    stats = S.SharedStats.create(slots=4)
    stats.slot, stats.base = 0, 0
    store = MemoryStore(tmp_path)
    down: dict[str, str] = {}
    app = App(cfg, store, stats, AccessLog("", "combined"), loop, tasks_down=lambda: dict(down))  # type: ignore[arg-type]
    yield SimpleNamespace(app=app, store=store, loop=loop, stats=stats, down=down)
    app.fds.clear()
    loop.close()
    stats.close()
    os.close(stats.fd)


def _with_server(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, **changes))


def make_request(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Request:
    r = Request()
    r.method = method
    p, _, q = path.partition("?")
    r.path, r.query = p, q
    r.target = path.encode()
    r.headers = {k.lower(): v for k, v in (headers or {}).items()}
    return r


def answer(rig, path: str, method: str = "GET", headers: dict | None = None, peer: str = "127.0.0.1") -> Response:
    resp = rig.app.handle(make_request(path, method, headers), Conn(peer))
    if not isinstance(resp, Response):
        resp = rig.loop.run_until_complete(resp)
    return resp


def body_of(resp: Response) -> bytes:
    out = b""
    for seg in resp.segments:
        if isinstance(seg, tuple):
            fd, offset, count = seg
            out += os.pread(fd, count, offset)
        else:
            out += bytes(seg)
    return out


def finish(resp: Response, app: App | None = None) -> None:
    """What the connection does when a response ends: the app lets go of the descriptor it held."""
    if resp.held is not None:
        assert app is not None, "a response holding a descriptor must be finished by its app"
        req = Request()
        app.finished(req, Conn(), resp, resp.body_bytes, True)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- content


CONTENT_CASES = [
    # (path, headers, method, status, body slice)
    ("/content/v.mp4", {}, "GET", 200, slice(None)),
    ("/content/v.mp4", {"Range": "bytes=0-9"}, "GET", 206, slice(0, 10)),
    ("/content/v.mp4", {"Range": "bytes=990-5000"}, "GET", 206, slice(990, 1000)),
    ("/content/v.mp4/range/10-19", {}, "GET", 200, slice(10, 20)),
    ("/content/v.mp4", {"Range": "bytes=5000-"}, "GET", 416, None),
    ("/content/v.mp4", {"If-None-Match": '"abababababababababababababababab"'}, "GET", 304, None),
    ("/content/v.mp4", {"If-Match": '"other"'}, "GET", 412, None),
    ("/content/v.mp4", {}, "HEAD", 200, slice(0, 0)),
    ("/content/v.mp4?start=0", {}, "GET", 200, slice(None)),  # defect 17
    ("/content/nope.mp4", {}, "GET", 404, None),
    ("/content/..", {}, "GET", 400, None),
    ("/content/v.mp4/range/%C2%B2-3", {}, "GET", 400, None),
    ("/content/v.mp4", {}, "POST", 405, None),
    ("/elsewhere", {}, "GET", 404, None),
]


@pytest.mark.parametrize("path,headers,method,status,part", CONTENT_CASES)
def test_content_answers(rig, path, headers, method, status, part):
    data = bytes(range(250)) * 4
    rig.store.add("v.mp4", data)
    resp = answer(rig, path, method, headers)
    assert resp.status == status, body_of(resp)
    if part is not None:
        assert body_of(resp) == data[part]
    assert resp.head.endswith(b"\r\n\r\n") and resp.head.count(b"Date: ") == 1
    finish(resp, rig.app)


# ---------------------------------------------------------------- the compiled file head, against Python

FILE_HEAD_RANGES = [
    None, "bytes=0-9", "bytes=0-0", "bytes=990-999", "bytes=999-999", "bytes=990-5000", "bytes=1000-1000",
    "bytes=1000-2000", "bytes=9-0", "bytes=0-", "bytes=-5", "bytes=-0", "bytes=0-9,20-29", "bytes= 0-9",
    "bytes=0-9 ", "BYTES=0-9", "bytes=00-09", "bytes=0--9", "bytes=-", "bytes=", "bytes=0-999999999999999999",
    "bytes=0-9999999999999999999", "bytes=999999999999999999-999999999999999999", "lines=0-9", "bytes=0-9\x00",
    "bytes=\u0661-\u0662", "bytes=0-\udcff", "bytes=+1-2", "bytes=1-+2", "bytes=0x1-2", "",
]


def test_compiled_file_head_answers_as_python_does(rig):
    from oca.http.speedups import choose
    from oca.server.responses import DateCache

    c_file_head = choose({}).file_head
    assert c_file_head is not None, "the compiled module is not built"
    taken = []

    def compiled(*args):
        got = c_file_head(*args)
        taken.append(got is not None)
        return got

    rig.store.add("v.mp4", bytes(1000))
    rig.store.add("w.mp4", bytes(1))
    rig.app.dates = DateCache(lambda: 1_700_000_000.0)
    seen = set()
    for path, range_value in [(p, r) for p in ("/content/v.mp4", "/content/w.mp4") for r in FILE_HEAD_RANGES]:
        for method in ("GET", "HEAD"):
            for extra in ({}, {"If-Range": '"x"'}, {"If-None-Match": "*"}, {"Connection": "close"}):
                for max_ranges in (200, 0):
                    headers = dict(extra, **({} if range_value is None else {"Range": range_value}))
                    got = []
                    for file_head in (compiled, None):
                        rig.app.file_head = file_head
                        rig.app.max_ranges = max_ranges
                        req = make_request(path, method, headers)
                        req.keep_alive = "Connection" not in extra
                        resp = answer_request(rig, req)
                        got.append(comparable(resp))
                        finish(resp, rig.app)
                    assert got[0] == got[1], (path, method, headers, max_ranges)
                    seen.add(got[0][0])
    assert {200, 206, 416} <= seen
    assert 20 < sum(taken) < len(taken)  # the compiled path answered some (30), and declined many


def test_compiled_file_head_agrees_on_seeded_random_ranges(rig):
    from oca.http.speedups import choose
    from oca.server.responses import DateCache
    import random

    compiled = choose({}).file_head
    rig.store.add("v.mp4", bytes(1000))
    rig.app.dates = DateCache(lambda: 1_700_000_000.0)
    rng = random.Random(16)
    taken = 0
    for _ in range(400):
        a, b = rng.choice([rng.randrange(1100), rng.randrange(10**19)]), rng.choice([rng.randrange(1100), rng.randrange(10**19)])
        value = f"bytes={a}-{b}"
        got = []
        for file_head in (compiled, None):
            rig.app.file_head = file_head
            resp = answer_request(rig, make_request("/content/v.mp4", "GET", {"Range": value}))
            got.append(comparable(resp))
            finish(resp, rig.app)
        assert got[0] == got[1], value
        taken += got[0][0] == 206
    assert taken > 50


def comparable(resp: Response) -> tuple:
    """Everything of a response but a multipart boundary (random) and the descriptor number."""
    import re

    def unbound(b: bytes) -> bytes:
        return re.sub(rb"[0-9a-f]{24}", b"BOUNDARY", b)

    return (resp.status, unbound(resp.head), [unbound(s) if isinstance(s, bytes) else s[1:] for s in resp.segments],
            resp.body_bytes, resp.close)


def answer_request(rig, req: Request) -> Response:
    resp = rig.app.handle(req, Conn())
    assert isinstance(resp, Response)
    return resp


def test_fd_cache_zero_closes_descriptors_of_bodyless_answers(rig):
    """Defect 11 without processes: every answer, with a body or not, leaves no descriptor open."""
    rig.store.add("v.mp4", b"x" * 1000)
    rig.store.add("empty.bin", b"")
    before = fd_count()
    for _ in range(20):
        for path, headers, method in [("/content/v.mp4", {}, "HEAD"), ("/content/v.mp4", {"Range": "bytes=5000-"}, "GET"),
                                      ("/content/v.mp4", {"If-None-Match": '"abababababababababababababababab"'}, "GET"),
                                      ("/content/empty.bin", {}, "GET"), ("/content/v.mp4", {"Range": "bytes=1-2"}, "GET")]:
            finish(answer(rig, path, method, headers), rig.app)
    assert fd_count() == before
    assert rig.app.fds.retired_count == 0


@pytest.mark.parametrize("damage", ["deleted", "truncated", "symlink"])
def test_damaged_file_is_withdrawn_and_answered_503(rig, tmp_path, damage):
    """Defects 16 and 20: the entry leaves service; a symlink is never followed and never fails the store."""
    path = rig.store.add("v.mp4", b"y" * 100)
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        os.truncate(path, 10)
    else:
        target = tmp_path / "target"
        target.write_bytes(b"T" * 100)
        path.unlink()
        path.symlink_to(target)
    resp = answer(rig, "/content/v.mp4")
    assert resp.status == 503 and b"T" not in body_of(resp)
    rig.loop.run_until_complete(asyncio.sleep(0.05))  # the withdrawal runs in a thread
    for _ in range(20):
        if rig.store.withdrawn:
            break
        rig.loop.run_until_complete(asyncio.sleep(0.05))
    assert rig.store.withdrawn == ["v.mp4"]
    assert answer(rig, "/content/v.mp4").status == 404
    if damage == "symlink":
        assert rig.store.io_errors == []  # ELOOP is this file's problem, not the disk's


# ---------------------------------------------------------------- control


@pytest.mark.parametrize("peer,status", [("127.0.0.1", 200), ("::1", 200), ("10.1.9.9", 200), ("10.2.0.1", 403), ("192.0.2.7", 403)])
def test_control_endpoints_open_to_loopback_and_the_allow_list(rig, peer, status):
    for path in ("/health", "/metrics", "/routes", "/inventory", "/popularity"):
        assert answer(rig, path, peer=peer).status == status, path


def test_content_requests_are_counted_per_id_with_their_body_bytes(rig):
    rig.store.add("v.mp4", bytes(1000))
    for path, headers, method, _status, _part in CONTENT_CASES:
        finish(answer(rig, path, method, headers), rig.app)
    # Every request that named an id and passed the signing rules (none here are signed): the 404 too;
    # a bad path (400) or a POST (405) names no servable request.
    assert rig.app.tally.take() == {"v.mp4": (9, 1000 + 10 + 10 + 10 + 1000), "nope.mp4": (1, 0)}
    assert rig.app.tally.take() == {}


def test_popularity_answers_the_counters_in_a_thread(rig):
    doc = json.loads(body_of(answer(rig, "/popularity")))
    assert (doc["mark"], doc["mark_s"], doc["created_s"], doc["count"]) == (2, 100.0, 50.0, 1)
    assert dict(zip(doc["fields"], doc["rows"][0])) == {
        "id": "v.mp4", "requests": 3, "bytes": 30, "requests_since_mark": 1, "bytes_since_mark": 10, "last_s": 110.0,
    }
    assert answer(rig, "/popularity?top=-1").status == 400


def test_health_is_degraded_naming_a_task_that_is_down(rig):
    doc = json.loads(body_of(answer(rig, "/health")))
    assert doc["status"] == "ok"
    rig.down["sweep"] = "RuntimeError: boom (restarting in 0.5 s)"
    doc = json.loads(body_of(answer(rig, "/health")))
    assert doc["status"] == "degraded"
    assert any("task sweep is down in worker slot 0: RuntimeError: boom" in c["reason"] for c in doc["conditions"])


def test_health_names_tasks_down_in_other_processes(rig):
    rig.stats.counters[2 * S.SLOT_COUNTERS + S.C_TASKS_DOWN] = S.task_bits({"sweep"}, S.WORKER_TASKS)
    rig.stats.header[S.H_PARENT_TASKS_DOWN] = S.task_bits({"spawn"}, S.PARENT_TASKS)
    reasons = [c["reason"] for c in json.loads(body_of(answer(rig, "/health")))["conditions"]]
    assert "task sweep is down in worker slot 2" in reasons
    assert "task spawn is down in the parent process" in reasons


def test_health_says_draining_from_the_typed_drain_record(rig):
    rig.store.drained = flags.Drain(5.0)
    doc = json.loads(body_of(answer(rig, "/health")))
    assert doc["status"] == "draining"


def test_health_is_degraded_while_the_parents_kernel_route_follower_is_down(rig):
    rig.store.routes_down = "kernel-routes: ConnectionResetError: netlink socket went away"
    doc = json.loads(body_of(answer(rig, "/health")))
    assert doc["status"] == "degraded"
    assert any(c["reason"].startswith("task kernel-routes: ConnectionResetError") for c in doc["conditions"])


def test_metrics_render_from_a_snapshot_with_task_failures(rig):
    rig.stats.counters[S.C_TASK_FAILURES] = 3
    rig.stats.header[S.H_PARENT_TASK_FAILURES] = 2
    text = body_of(answer(rig, "/metrics")).decode()
    assert 'oca_task_failures_total{task="worker.sweep"} 3.0' in text
    assert 'oca_task_failures_total{task="parent"} 2.0' in text


def test_routes_answer_from_the_typed_record(rig):
    doc = json.loads(body_of(answer(rig, "/routes")))
    assert doc["generation"] == 3 and doc["prefixes"] == ["192.0.2.0/24"]
    assert json.loads(body_of(answer(rig, "/routes?since=3")))["kind"] == "unchanged"
    assert answer(rig, "/routes?since=%C2%B2").status == 400


def test_concurrent_inventory_requests_share_one_build(rig):
    rig.store.add("a.bin", b"a")
    calls = []
    real = rig.store.inventory

    def counted():
        calls.append(1)
        return real()

    rig.store.inventory = counted
    futures = [rig.app.handle(make_request("/inventory"), Conn()) for _ in range(10)]
    answers = rig.loop.run_until_complete(asyncio.gather(*futures))
    assert {body_of(a) for a in answers} == {body_of(answers[0])} and len(calls) == 1
    assert isinstance(answer(rig, "/inventory"), Response) and len(calls) == 1  # cached for this generation


# ---------------------------------------------------------------- judged targets (oca.server.targets)

SIGN_SECRET = "judged-secret-0123456789"


@pytest.fixture
def signed_rig(tmp_path) -> Iterator[SimpleNamespace]:
    extra = f'[signing]\nrequired = true\nkey_id = "k1"\nclock_skew_s = 30\n[signing.keys]\nk1 = "{SIGN_SECRET}"\n'
    cfg = _with_server(load_config(str(write_config(tmp_path, stores=1, extra=extra))), fd_cache_size=0)
    loop = asyncio.new_event_loop()
    stats = S.SharedStats.create(slots=4)
    stats.slot, stats.base = 0, 0
    now = [1_000_000.0]
    app = App(cfg, MemoryStore(tmp_path), stats, AccessLog("", "combined"), loop, clock=lambda: now[0])  # type: ignore[arg-type]
    app.store.add("v.mp4", bytes(1000))
    yield SimpleNamespace(app=app, store=app.store, loop=loop, now=now)
    app.fds.clear()
    loop.close()
    stats.close()
    os.close(stats.fd)


def test_a_judged_signed_url_holds_to_the_second_of_its_expiry_plus_skew(signed_rig):
    from oca.signing import signed_path

    url = signed_path("v.mp4", 1_000_100, "k1", SIGN_SECRET.encode())
    rng = {"Range": "bytes=0-9"}
    for now, status in ((1_000_000.0, 206), (1_000_130.0, 206), (1_000_130.5, 410), (1_000_131.0, 410), (1_000_050.0, 206)):
        signed_rig.now[0] = now
        resp = answer(signed_rig, url, headers=rng)
        finish(resp, signed_rig.app)
        assert resp.status == status, now
    assert len(signed_rig.app.judged) == 1
    # Judged good once, the same target with another byte is judged again, in full.
    finish(resp := answer(signed_rig, url[:-1] + ("A" if url[-1] != "A" else "B"), headers=rng), signed_rig.app)
    assert resp.status == 403


def test_refused_targets_are_not_remembered_and_long_ones_not_kept(signed_rig):
    from oca.server.targets import MAX_TARGET_BYTES
    from oca.signing import signed_path

    for path in ("/content/v.mp4", "/content/v.mp4?e=1000100&k=k1&t=AAAA", "/content/nope?x"):
        finish(resp := answer(signed_rig, path), signed_rig.app)
        assert resp.status in (403, 404)
    assert len(signed_rig.app.judged) == 0
    good = signed_path("v.mp4", 1_000_100, "k1", SIGN_SECRET.encode())
    long_url = good + "&pad=" + "x" * MAX_TARGET_BYTES
    finish(resp := answer(signed_rig, long_url), signed_rig.app)
    assert resp.status == 200 and len(signed_rig.app.judged) == 0
    # The 404 of a good signature for an id the store lacks is decided after judging: the target is kept,
    # and the lookup still runs on every request (a later publish is served).
    missing = signed_path("later.mp4", 1_000_100, "k1", SIGN_SECRET.encode())
    finish(resp := answer(signed_rig, missing), signed_rig.app)
    assert resp.status == 404
    signed_rig.store.add("later.mp4", bytes(10))
    finish(resp := answer(signed_rig, missing), signed_rig.app)
    assert resp.status == 200


def test_judged_targets_are_bounded_oldest_first():
    from oca.server.targets import JudgedTargets

    judged = JudgedTargets(max_entries=3)
    for i in range(5):
        judged.remember(b"/content/a%d" % i, f"a{i}", None, 100.0)
    assert len(judged) == 3
    assert judged.lookup(b"/content/a0", 0.0) is None and judged.lookup(b"/content/a1", 0.0) is None
    assert judged.lookup(b"/content/a4", 100.0) == ("a4", None)
    assert judged.lookup(b"/content/a4", 100.001) is None
