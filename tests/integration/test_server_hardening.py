"""Regression tests for the server's hardening defects (issue 10), against real processes.

Each test runs a real `oca-server` (parent and workers) on loopback with a
real LMDB index and real store directories, and drives it with real
clients. The defect each one guards is named in its docstring.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.test_server import (
    IO_TIMEOUT_S,
    RawReader,
    Served,
    curl,
    ingest,
    make_appliance,
    payloads,
    raw_connect,
    raw_request,
    request,
    running,
    wait_for,
    wait_serving,
)
from tests.server_proc import ServerProcess


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return payloads()


@pytest.fixture(scope="module")
def app1(tmp_path_factory, files) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hardening")
    cfg, host, port = make_appliance(tmp, {"mid.mp4": files["mid.mp4"], "one.txt": files["one.txt"]}, workers=2)
    with ServerProcess(cfg, host, port) as srv:
        pids = wait_serving(srv, 2)
        yield Served("uvloop", srv, cfg, host, port, "", 0, files, pids)


def object_file(cfg: Path, content_id: str) -> Path:
    """The store file holding `content_id` (its name starts with the id; see oca.store.layout)."""
    found = [Path(d) / n for d, _, names in os.walk(cfg.parent) for n in names if n.startswith(content_id) and "/objects/" in f"{d}/"]
    assert len(found) == 1, found
    return found[0]


def inventory_ids(served: Served) -> list[str]:
    r = request(served.host, served.port, "/inventory")
    assert r.status == 200
    return json.loads(r.body)["ids"]


# ---------------------------------------------------------------- defect 17


@pytest.mark.parametrize("query", ["start=0", "format=t=1", "xt=1", "at=5&b=2"])
def test_unsigned_appliance_ignores_queries_that_merely_contain_t_equals(app1, query):
    """Defect 17: with signing off, only a `t` parameter is a signature; `?start=0` is served."""
    r = request(app1.host, app1.port, f"/content/one.txt?{query}")
    assert r.status == 200, r.body
    assert r.body == app1.files["one.txt"]


def test_unsigned_appliance_still_checks_a_token_that_is_present(app1):
    r = request(app1.host, app1.port, "/content/one.txt?e=1&k=x&t=abc")
    assert r.status in (403, 410), r.body


# ---------------------------------------------------------------- defect 18


@pytest.mark.parametrize("path", ["/inventory", "/routes"])
@pytest.mark.parametrize("since", ["%C2%B2", "1%C2%B2", "9" * 5000, "-1", "+1", "%201", "0x10", "", "1.0", "%D9%A3"])
def test_since_that_is_not_a_plain_number_is_400_with_a_reason(app1, path, since):
    """Defect 18: `since` of `²`, Arabic digits or 5,000 digits was a 500; now a 400 naming the parameter."""
    r = request(app1.host, app1.port, f"{path}?since={since}")
    assert r.status == 400, (path, since, r.status, r.body[:200])
    assert r.body.startswith(b"since: ")
    assert r.body.count(b"\n") == 1


def test_since_given_twice_is_400(app1):
    r = request(app1.host, app1.port, "/inventory?since=1&since=2")
    assert r.status == 400 and r.body == b"since: given more than once\n"


# ---------------------------------------------------------------- defect 19


def test_chunked_trailer_fields_are_not_request_headers(app1):
    """Defect 19: a trailer `Range` after a chunked body was merged into the headers and gave 206."""
    req = (b"GET /content/mid.mp4 HTTP/1.1\r\nHost: oca.test\r\nTransfer-Encoding: chunked\r\nTrailer: Range\r\n\r\n"
           b"3\r\nabc\r\n0\r\nRange: bytes=0-9\r\n\r\n")
    with raw_connect(app1.host, app1.port) as sock:
        sock.sendall(req + raw_request("GET", "/content/one.txt"))
        reader = RawReader(sock)
        r = reader.response()
        assert r.status == 200, r.headers
        assert "content-range" not in r.headers
        assert r.body == app1.files["mid.mp4"]
        r2 = reader.response()  # the connection goes on: the next request is answered
        assert r2.status == 200 and r2.body == app1.files["one.txt"]


def test_a_head_range_is_still_honoured_with_a_chunked_body(app1):
    req = (b"GET /content/mid.mp4 HTTP/1.1\r\nHost: oca.test\r\nRange: bytes=0-9\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0\r\nX-Trailer: 1\r\n\r\n")
    with raw_connect(app1.host, app1.port) as sock:
        sock.sendall(req)
        r = RawReader(sock).response()
        assert r.status == 206 and r.body == app1.files["mid.mp4"][:10]


# ---------------------------------------------------------------- defects 16 and 20


def _health_store_states(served: Served) -> list[str]:
    r = request(served.host, served.port, "/health")
    return [s["state"] for s in json.loads(r.body)["stores"]]


@pytest.mark.parametrize("damage", ["deleted", "truncated", "grown"])
def test_file_that_disagrees_with_the_index_is_taken_out_of_service(app1, damage):
    """Defect 16: a file gone or of the wrong size was a 503 forever and stayed in /inventory."""
    cid = f"damaged-{damage}.bin"
    data = os.urandom(5000)
    ingest(app1.cfg, cid, data)
    assert cid in inventory_ids(app1)
    path = object_file(app1.cfg, cid)
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        os.truncate(path, 100)
    else:
        with open(path, "ab") as fh:
            fh.write(b"x")
    r = request(app1.host, app1.port, f"/content/{cid}")
    assert r.status == 503, r.status
    wait_for(lambda: cid not in inventory_ids(app1), 5, "the damaged id to leave /inventory")
    for _ in range(4):  # every worker now agrees
        assert request(app1.host, app1.port, f"/content/{cid}").status == 404
    assert _health_store_states(app1) == ["ok", "ok"], "one damaged file must not fail its store"
    if path.exists():
        path.unlink()


def test_symbolic_link_in_a_store_is_never_followed(app1, tmp_path):
    """Defect 20: a file replaced by a symlink had its target served; O_NOFOLLOW refuses it."""
    cid = "linked.bin"
    data = os.urandom(4096)
    ingest(app1.cfg, cid, data)
    path = object_file(app1.cfg, cid)
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * len(data))  # same size: only the link itself gives it away
    path.unlink()
    path.symlink_to(secret)
    r = request(app1.host, app1.port, f"/content/{cid}")
    assert r.status == 503 and b"S" * 16 not in r.body
    wait_for(lambda: cid not in inventory_ids(app1), 5, "the linked id to leave /inventory")
    assert request(app1.host, app1.port, f"/content/{cid}").status == 404
    assert _health_store_states(app1) == ["ok", "ok"]
    path.unlink()


# ---------------------------------------------------------------- defect 11


def _open_fds(pids: list[int]) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def test_fd_cache_size_zero_closes_every_descriptor(tmp_path, files):
    """Defect 11: with fd_cache_size = 0, HEAD, 304, 412, 416 and empty files leaked one descriptor each."""
    cfg, host, port = make_appliance(tmp_path, {"mid.mp4": files["mid.mp4"], "empty.bin": b""}, workers=1,
                                     extra_server="fd_cache_size = 0\n")
    with running(cfg, host, port, workers=1) as srv:
        pids = srv.worker_pids()
        etag = request(host, port, "/content/mid.mp4").headers["etag"]
        before = _open_fds(pids)
        n = 40
        for _ in range(n):
            assert request(host, port, "/content/mid.mp4", method="HEAD").status == 200
            assert request(host, port, "/content/mid.mp4", {"If-None-Match": etag}).status == 304
            assert request(host, port, "/content/mid.mp4", {"If-Match": '"other"'}).status == 412
            assert request(host, port, "/content/mid.mp4", {"Range": "bytes=999999999-"}).status == 416
            assert request(host, port, "/content/empty.bin").status == 200
            assert request(host, port, "/content/mid.mp4", {"Range": "bytes=0-9"}).status == 206
        time.sleep(0.2)  # the last connections' close reaches the worker
        after = _open_fds(pids)
        assert after - before < 5, f"{after - before} descriptors leaked over {6 * n} responses"


# ---------------------------------------------------------------- defect 8: /inventory off the serving loop


def _fill_index(cfg: Path, entries: int, prefix: str) -> int:
    """Write `entries` index entries (no files: /inventory only lists ids) through the real index; returns the generation."""
    from oca.config import load_config
    from oca.store.content import ContentStore
    from oca.store.index import Entry

    cs = ContentStore.open(load_config(str(cfg)), writable=True)
    try:
        store_uuid = cs.disks[0].uuid
        batch = [Entry(f"{prefix}-{i:07d}.bin", store_uuid, f"objects/xx/{prefix}-{i:07d}", 1000, "0" * 32, 1_600_000_000, 0.0, 0.0)
                 for i in range(entries)]
        for i in range(0, entries, 5000):
            cs.index.put_many(batch[i : i + 5000])
        return cs.generation()
    finally:
        cs.close()


def _timed_get(host: str, port: int, path: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    r = request(host, port, path)
    return r.status, r.body, time.perf_counter() - t0


@pytest.mark.serial  # a measured latency: other tests must not share the CPU
def test_cold_inventory_walks_stay_off_the_serving_loop(tmp_path):
    """Defect 8: 30 concurrent cold `/inventory?since=` walked a 100k journal on the loop; /health waited seconds."""
    import threading

    cfg, host, port = make_appliance(tmp_path, {}, workers=2, stores=1)
    generation = _fill_index(cfg, 100_000, "inv")
    since = generation - 99_000
    with running(cfg, host, port):
        health: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                status, _, dt = _timed_get(host, port, "/health")
                assert status == 200
                health.append(dt)
                time.sleep(0.01)

        answers: list[bytes] = []

        def client() -> None:
            status, body, _ = _timed_get(host, port, f"/inventory?since={since}&limit=100000")
            assert status == 200
            answers.append(body)

        prober = threading.Thread(target=probe)
        prober.start()
        clients = [threading.Thread(target=client) for _ in range(30)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(60)
        stop.set()
        prober.join(10)
        assert len(answers) == 30 and len(set(answers)) == 1, "every client gets the same answer"
        doc = json.loads(answers[0])
        assert doc["kind"] == "delta" and len(doc["added"]) == 99_000 and doc["generation"] == generation
        assert max(health) < 0.6, f"/health took up to {max(health) * 1000:.0f} ms while inventories were built"


def test_inventory_delta_pages_add_up_to_the_whole_change(tmp_path):
    """Defect 8: `?since=G&limit=N` pages the journal; following `generation` until `latest` gives every change."""
    cfg, host, port = make_appliance(tmp_path, {}, workers=1, stores=1)
    g0 = _fill_index(cfg, 10, "early")
    generation = _fill_index(cfg, 2_500, "page")
    with running(cfg, host, port, workers=1):
        seen: list[str] = []
        g, pages = g0, 0
        while True:
            r = request(host, port, f"/inventory?since={g}&limit=1000")
            assert r.status == 200
            doc = json.loads(r.body)
            assert doc["kind"] == "delta" and doc["since"] == g
            seen += doc["added"]
            pages += 1
            assert doc["more"] == (doc["generation"] < doc["latest"])
            if not doc["more"]:
                break
            assert doc["generation"] == g + 1000
            g = doc["generation"]
        assert pages == 3 and doc["generation"] == generation == doc["latest"]
        assert sorted(seen) == [f"page-{i:07d}.bin" for i in range(2_500)]
        r = request(host, port, f"/inventory?since={generation}")
        assert json.loads(r.body)["kind"] == "unchanged"
