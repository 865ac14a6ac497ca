"""`oca-server` over HTTPS: real processes, real sockets, Python's `ssl` and curl.

Certificates come from a throwaway CA made per module (`tests.tlscerts`).
The range conformance tests of test_server.py run here unchanged, over
HTTPS: they are imported, and this module's `served` fixture hands them an
HTTPS appliance (curl trusts the test CA through CURL_CA_BUNDLE). Servers
with particular settings (timeouts, limits, redirects, reloads) are started
per test. Every wait is bounded; everything listens on loopback only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.test_server import (  # noqa: F401 - collected here, over HTTPS
    IO_TIMEOUT_S, RawReader, Reply, Served, _headers, make_appliance, owner_of, payloads, raw_request, wait_for, wait_serving,
    test_conditional_requests_get_304, test_cors_preflight, test_if_range, test_malformed_or_foreign_range_is_ignored,
    test_multi_range_with_curl, test_path_range_form, test_ranges_adding_up_to_the_whole_file_get_200,
    test_single_range_with_curl, test_unsatisfiable_range_is_416,
    CONTROL_TOKEN, SIGNING, test_bad_signatures_get_403_with_a_one_line_reason, test_expired_signature_gets_410,
    test_control_token_is_required_even_from_loopback_but_content_is_served, test_one_signed_url_serves_every_range,
    test_signed_url_from_oca_admin_is_served,
)
from tests.server_proc import ServerProcess, free_port, wait_port
from tests.support import ROOT
from tests.tlscerts import make_ca, make_leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    out = {"ca": ca, "dir": d}
    out["ecdsa"] = make_leaf(ca, d, "ecdsa", "ecdsa")
    out["rsa"] = make_leaf(ca, d, "rsa", "rsa")
    out["ecdsa2"] = make_leaf(ca, d, "ecdsa2", "ecdsa")
    out["expired"] = make_leaf(ca, d, "expired", "ecdsa", days=-1, start_days=-30)
    out["soon"] = make_leaf(ca, d, "soon", "ecdsa", days=3)
    return out


def tls_table(port: int, pair: tuple[Path, Path], extra: str = "") -> str:
    crt, key = pair
    return f'[tls]\nlisten = ["127.0.0.1:{port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n{extra}'


def client_context(pki, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"].path))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost", rcvbuf: int | None = None) -> ssl.SSLSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(IO_TIMEOUT_S)
    sock.connect(("127.0.0.1", port))
    return ctx.wrap_socket(sock, server_hostname=server_hostname)


def https_get(pki, port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    conn = http.client.HTTPSConnection("localhost", port, timeout=IO_TIMEOUT_S, context=client_context(pki))
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, _headers(resp.getheaders()), resp.read())
    finally:
        conn.close()


class HttpsServed(Served):
    pki: dict = {}

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        return https_get(self.pki, self.port, path, headers, method)


def start_tls_appliance(tmp: Path, pki, pair="ecdsa", files=None, extra_server: str = "", tls_extra: str = "",
                        workers: int = 2, event_loop: str = "uvloop") -> tuple[Path, int, int]:
    tls_port = free_port()
    cfg, _host, port = make_appliance(tmp, files or {}, workers=workers, extra_server=extra_server, event_loop=event_loop,
                                      extra=tls_table(tls_port, pki[pair], tls_extra))
    return cfg, port, tls_port


@pytest.fixture(scope="module")
def served(tmp_path_factory, pki) -> Iterator[HttpsServed]:
    """An HTTPS appliance (uvloop, 2 workers, ECDSA P-256) for the imported conformance tests."""
    files = payloads()
    tmp = tmp_path_factory.mktemp("served-https")
    cfg, port, tls_port = start_tls_appliance(tmp, pki, files=files)
    old = os.environ.get("CURL_CA_BUNDLE")
    os.environ["CURL_CA_BUNDLE"] = str(pki["ca"].path)
    try:
        with ServerProcess(cfg, "127.0.0.1", port) as srv:
            pids = wait_serving(srv, 2)
            wait_port("127.0.0.1", tls_port)
            s = HttpsServed("uvloop", srv, cfg, "127.0.0.1", tls_port, "", 0, files, pids)
            s.pki = pki
            yield s
    finally:
        if old is None:
            os.environ.pop("CURL_CA_BUNDLE", None)
        else:
            os.environ["CURL_CA_BUNDLE"] = old


@pytest.fixture(scope="module")
def signed(tmp_path_factory, pki, served) -> Iterator[HttpsServed]:
    """test_server.py's signed-URL appliance, over HTTPS (curl's CA bundle is set by `served`)."""
    files = served.files
    tmp = tmp_path_factory.mktemp("signed-https")
    tls_port = free_port()
    cfg, host, port = make_appliance(
        tmp, {"mid.mp4": files["mid.mp4"], "one.txt": files["one.txt"]}, workers=2,
        extra=SIGNING + tls_table(tls_port, pki["ecdsa"]),
        extra_server=f'cache_control = "public, max-age=3600"\ncontrol_allow = ["10.0.0.0/8"]\ncontrol_token = "{CONTROL_TOKEN}"\n',
    )
    with ServerProcess(cfg, host, port) as srv:
        pids = wait_serving(srv, 2)
        s = HttpsServed("uvloop", srv, cfg, host, tls_port, "", 0, files, pids)
        s.pki = pki
        yield s


def cert_fingerprint(port: int, pki) -> str:
    with tls_connect(port, client_context(pki)) as s:
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


# ================================================================ handshakes


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12_and_tls13_handshakes_offer_http11(served, version):
    v = getattr(ssl.TLSVersion, version)
    ctx = client_context(served.pki, minimum_version=v, maximum_version=v)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(served.port, ctx) as s:
        assert s.version() == version.replace("_", ".")
        assert s.selected_alpn_protocol() == "http/1.1"
        assert s.compression() is None
        s.sendall(raw_request("GET", "/content/mid.mp4", {"Range": "bytes=0-99"}))
        r = RawReader(s).response()
        assert r.status == 206 and r.body == served.files["mid.mp4"][:100]


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls10_and_tls11_refused(served, version):
    with warnings.catch_warnings():
        # Building a TLS 1.0/1.1 client is deprecated in Python's ssl; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = getattr(ssl.TLSVersion, version)
        ctx.maximum_version = getattr(ssl.TLSVersion, version)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer the old protocol at all
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(served.port, ctx):
            pass


def test_wrong_sni_still_served_with_the_one_certificate(served):
    ctx = client_context(served.pki)
    ctx.check_hostname = False  # the name asked for is not the certificate's; the chain still verifies
    with tls_connect(served.port, ctx, server_hostname="not-this-box.example") as s:
        s.sendall(raw_request("GET", "/content/one.txt"))
        r = RawReader(s).response()
        assert r.status == 200 and r.body == served.files["one.txt"]


def test_keep_alive_and_pipelining_over_https(served):
    files = served.files
    with tls_connect(served.port, client_context(served.pki)) as s:
        reader = RawReader(s)
        for _ in range(3):  # keep-alive: one request after the other on one connection
            s.sendall(raw_request("GET", "/content/big.ts", {"Range": "bytes=100-300099"}))
            r = reader.response()
            assert r.status == 206 and r.body == files["big.ts"][100:300100]
        # pipelining: several requests in one write, answered in order
        paths = ["/content/mid.mp4", "/content/one.txt", "/content/big.ts", "/content/empty.bin", "/health"]
        s.sendall(b"".join(raw_request("GET", p) for p in paths))
        got = [reader.response() for _ in paths]
        assert [g.status for g in got] == [200, 200, 200, 200, 200]
        assert got[0].body == files["mid.mp4"] and got[2].body == files["big.ts"]
        assert b'"tls"' in got[4].body


def test_health_and_metrics_report_expiry_and_ktls(served):
    r = served.get("/health")
    doc = __import__("json").loads(r.body)
    assert doc["status"] == "ok"
    assert doc["tls"]["days_left"] > 80
    assert doc["tls"]["ktls"].startswith(("available", "unavailable: "))
    m = served.get("/metrics").body.decode()
    line = next(x for x in m.splitlines() if x.startswith("oca_tls_certificate_expiry_timestamp_seconds "))
    assert abs(float(line.split()[1]) - doc["tls"]["not_after"]) < 1
    assert "oca_tls_ktls_available{" in m
    assert doc["tls"]["session_tickets"] == "shared" and 'oca_tls_shared_ticket_key{status="shared"} 1.0' in m
    assert doc["tls"]["key_file_warning"] is None  # tests.tlscerts writes keys 0600, owned by us
    assert doc["tls"]["idle_buffers"] == "released"  # oca.sslmem's checks passed in the worker
    assert doc["tls"]["ticket_keys"] == {"configured": 1, "decrypting": 1, "status": "ok"}


def test_rsa_2048_pair(tmp_path, pki):
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, pair="rsa", files={"x.bin": b"x" * 70_000}, workers=1)
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        wait_serving(srv, 1)
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with tls_connect(tls_port, client_context(pki, minimum_version=v, maximum_version=v)) as s:
                assert s.getpeercert()["subject"] == ((("commonName", "localhost"),),)
                s.sendall(raw_request("GET", "/content/x.bin"))
                assert RawReader(s).response().body == b"x" * 70_000


# ================================================================ key pairs refused at start and at reload


def _check_config(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oca.server.main", "--config", str(cfg), "--check-config"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("which", ["expired", "mismatched", "unreadable"])
def test_bad_pair_refused_at_start_naming_the_file(tmp_path, pki, which):
    crt, key = pki["ecdsa"]
    if which == "expired":
        crt, key = pki["expired"]
        expect = f"{crt}: the certificate expired at"
    elif which == "mismatched":
        key = pki["ecdsa2"][1]
        expect = f"{key}: the key does not match the certificate in {crt}"
    else:
        key = tmp_path / "missing.key"
        expect = f"{key}: cannot read: No such file or directory"
    cfg, port, _tls_port = start_tls_appliance(tmp_path, pki)
    text = cfg.read_text()
    cfg.write_text(text.replace(str(pki["ecdsa"][0]), str(crt)).replace(str(pki["ecdsa"][1]), str(key)))
    r = _check_config(cfg)
    assert r.returncode == 1 and expect in r.stderr, r.stderr
    started = subprocess.run([sys.executable, "-m", "oca.server.main", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert started.returncode == 1 and expect in started.stderr


def test_reload_with_a_bad_pair_keeps_the_old_one_then_a_good_one_is_taken(tmp_path, pki):
    import json
    import shutil

    live = tmp_path / "live"
    live.mkdir()
    crt, key = live / "cert.pem", live / "key.pem"
    shutil.copy(pki["ecdsa"][0], crt)
    shutil.copy(pki["ecdsa"][1], key)
    cfg, port, tls_port = start_tls_appliance(tmp_path / "a", pki, files={"x.bin": b"y" * 1000})
    cfg.write_text(cfg.read_text().replace(str(pki["ecdsa"][0]), str(crt)).replace(str(pki["ecdsa"][1]), str(key)))
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        wait_serving(srv, 2)
        first = cert_fingerprint(tls_port, pki)
        held = tls_connect(tls_port, client_context(pki))  # a connection open across the reloads
        for bad in ("mismatched", "expired"):
            shutil.copy(pki["ecdsa2"][0] if bad == "mismatched" else pki["expired"][0], crt)
            if bad == "expired":
                shutil.copy(pki["expired"][1], key)
            refused_before = srv.log_text().count("reload refused")
            srv.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: srv.log_text().count("reload refused") > refused_before, 15, "the reload to be refused")
            assert str(key if bad == "mismatched" else crt) in srv.log_text().splitlines()[-1]
            assert cert_fingerprint(tls_port, pki) == first  # the old pair is still served
            doc = json.loads(https_get(pki, tls_port, "/health").body)
            assert doc["status"] == "degraded"
            assert any("TLS reload refused" in c["reason"] for c in doc["conditions"]), doc["conditions"]
            assert doc["tls"]["reload_refused"]
        held.sendall(raw_request("GET", "/content/x.bin"))
        assert RawReader(held).response().body == b"y" * 1000
        held.close()
        # A good new pair is taken at the next SIGHUP, and /health is ok again.
        shutil.copy(pki["ecdsa2"][0], crt)
        shutil.copy(pki["ecdsa2"][1], key)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: cert_fingerprint(tls_port, pki) != first, 30, "the new certificate to be served")
        wait_for(lambda: json.loads(https_get(pki, tls_port, "/health").body)["status"] == "ok", 15, "/health ok again")


def test_certificate_close_to_expiry_degrades_health_and_an_exposed_key_is_warned_about(tmp_path, pki):
    import json
    import shutil

    key = tmp_path / "exposed.key"
    shutil.copy(pki["soon"][1], key)
    key.chmod(0o644)
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, pair="soon", workers=1)
    cfg.write_text(cfg.read_text().replace(str(pki["soon"][1]), str(key)))
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        wait_serving(srv, 1)
        doc = json.loads(https_get(pki, tls_port, "/health").body)
        assert doc["status"] == "degraded"
        assert any("TLS certificate expires" in c["reason"] for c in doc["conditions"])
        # A key others can read is served, and warned about in the log and on /health.
        assert f"the TLS private key is exposed: {key}: mode 0644" in srv.log_text()
        assert doc["tls"]["key_file_warning"].startswith(f"{key}: mode 0644")


# ================================================================ session resumption across workers


def resumption(port: int, pki, version: ssl.TLSVersion, n: int, session=None, pids: list[int] | None = None):
    """Connect `n` times, each offering the last session got; (resumed count, owners of resumed conns, (context, last session)).

    Each connection sends one request and reads the answer, so a TLS 1.3
    ticket (sent after the handshake) has arrived before the session is taken.
    """
    ctx = session[0] if session is not None else client_context(pki, minimum_version=version, maximum_version=version)
    session = session[1] if session is not None else None
    resumed, owners = 0, set()
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
        with ctx.wrap_socket(sock, server_hostname="localhost", session=session) as s:
            s.sendall(raw_request("GET", "/content/x.bin"))
            assert RawReader(s).response().status == 200
            if s.session_reused:
                resumed += 1
                if pids is not None and owners != set(pids):
                    owners.add(owner_of(s, pids, port))
            session = s.session
    return resumed, owners, (ctx, session)


def test_sessions_resume_on_every_worker_and_after_sighup(tmp_path, pki):
    """One ticket key for all workers: a session resumes whichever worker accepts, and across a reload.

    With a key per worker, 70% of TLS 1.2 and 53% of TLS 1.3 resumptions
    succeeded in one measurement (benchmarks/tls_handshake.py --resumption).
    """
    import json

    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files={"x.bin": b"y" * 100})
    versions = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        pids = wait_serving(srv, 2)
        sessions = {}
        for version in versions:
            resumed, owners, sessions[version] = resumption(tls_port, pki, version, 12, pids=pids)
            assert resumed == 11, f"{version.name}: {resumed}/11 resumed"  # all but the first, full, handshake
            assert owners == set(pids), f"{version.name}: resumed sessions were not spread over both workers"
        assert json.loads(https_get(pki, tls_port, "/health").body)["tls"]["session_tickets"] == "shared"
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not set(srv.worker_pids()) & set(pids) and len(srv.worker_pids()) == 2, 30, "the workers to be replaced")
        for version in versions:
            resumed, _, _ = resumption(tls_port, pki, version, 3, session=sessions[version])
            assert resumed == 3, f"{version.name}: {resumed}/3 resumed after SIGHUP with a ticket from before it"


def test_ticket_key_file_is_shared_between_appliances_and_checked(tmp_path, pki):
    """Two appliances with one ticket_key_file resume each other's sessions; a bad file is refused naming it."""
    key = tmp_path / "ticket.key"
    key.write_bytes(os.urandom(80))
    key.chmod(0o600)
    extra = f'ticket_key_file = "{key}"\n'
    a = start_tls_appliance(tmp_path / "a", pki, files={"x.bin": b"y" * 100}, tls_extra=extra, workers=1)
    b = start_tls_appliance(tmp_path / "b", pki, files={"x.bin": b"y" * 100}, tls_extra=extra, workers=1)
    with ServerProcess(a[0], "127.0.0.1", a[1]) as sa, ServerProcess(b[0], "127.0.0.1", b[1]) as sb:
        wait_serving(sa, 1)
        wait_serving(sb, 1)
        _, _, session = resumption(a[2], pki, ssl.TLSVersion.TLSv1_3, 1)
        resumed, _, _ = resumption(b[2], pki, ssl.TLSVersion.TLSv1_3, 1, session=session)
        assert resumed == 1, "a session from appliance a did not resume on appliance b"
    key.write_bytes(os.urandom(79))
    done = _check_config(a[0])
    assert done.returncode != 0 and str(key) in done.stderr and "80" in done.stderr, done.stderr


def test_previous_ticket_key_resumes_after_a_rotation_and_not_once_dropped(tmp_path, pki):
    """Key A issues a ticket; SIGHUP makes B current and A previous: it resumes; SIGHUP without A: it does not."""
    import json

    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    for path in (key_a, key_b):
        path.write_bytes(os.urandom(80))
        path.chmod(0o600)
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files={"x.bin": b"y" * 100},
                                              tls_extra=f'ticket_key_file = "{key_a}"\n', workers=1)
    text = cfg.read_text()
    versions = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)

    def reload(tls_extra: str, pids: list[int]) -> list[int]:
        cfg.write_text(text.replace(f'ticket_key_file = "{key_a}"\n', tls_extra))
        srv.proc.send_signal(signal.SIGHUP)
        return wait_for(lambda: (p := srv.worker_pids()) and not set(p) & set(pids) and p, 30, "the worker to be replaced")

    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        pids = wait_serving(srv, 1)
        under_a = {v: resumption(tls_port, pki, v, 1)[2] for v in versions}
        pids = reload(f'ticket_key_file = "{key_b}"\nprevious_ticket_key_files = ["{key_a}"]\n', pids)
        doc = json.loads(https_get(pki, tls_port, "/health").body)["tls"]
        assert doc["session_tickets"] == "shared" and doc["ticket_keys"] == {"configured": 2, "decrypting": 2, "status": "ok"}
        assert 'oca_tls_ticket_keys_decrypting{status="ok"} 2.0' in https_get(pki, tls_port, "/metrics").body.decode()
        renewed = {}
        for v in versions:
            resumed, _, renewed[v] = resumption(tls_port, pki, v, 1, session=under_a[v])
            assert resumed == 1, f"{v.name}: a ticket under the previous key did not resume"
        pids = reload(f'ticket_key_file = "{key_b}"\n', pids)
        for v in versions:
            assert resumption(tls_port, pki, v, 1, session=under_a[v])[0] == 0, f"{v.name}: a ticket under a dropped key resumed"
            assert resumption(tls_port, pki, v, 1, session=renewed[v])[0] == 1, f"{v.name}: the ticket renewed under B did not resume"
    cfg.write_text(text.replace(f'ticket_key_file = "{key_a}"\n', f'ticket_key_file = "{key_b}"\nprevious_ticket_key_files = ["{key_b}.gone"]\n'))
    done = _check_config(cfg)
    assert done.returncode != 0 and f"tls.previous_ticket_key_files[0]: {key_b}.gone: cannot read" in done.stderr, done.stderr


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_https_under_the_stock_asyncio_loop(tmp_path, pki):
    """`event_loop = "asyncio"`: ranges and keep-alive, a reload, idle memory, a slow reader cut off.

    Its TLS transport is asyncio's own (sslproto), not uvloop's: the send
    path must work on either, since both are in the config's choices.
    """
    data = payloads()["big.ts"]
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files={"big.ts": data}, workers=1, event_loop="asyncio",
                                              extra_server="send_timeout_s = 1\n")
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        pids = wait_serving(srv, 1)
        with tls_connect(tls_port, client_context(pki)) as held:
            reader = RawReader(held)
            for first, last in ((0, 99), (len(data) - 70000, len(data) - 1), (12345, 12345 + 300000)):
                held.sendall(raw_request("GET", "/content/big.ts", {"Range": f"bytes={first}-{last}"}))
                reply = reader.response()
                assert reply.status == 206 and reply.body == data[first:last + 1], (first, last, reply.status)
            held.sendall(raw_request("GET", "/content/big.ts"))
            assert hashlib.sha256(reader.response().body).digest() == hashlib.sha256(data).digest()
            srv.proc.send_signal(signal.SIGHUP)
            # The old worker closes its idle connections (close_notify) and exits; the new one serves.
            with pytest.raises((EOFError, ConnectionError, ssl.SSLError, OSError)):
                reader._fill()
        wait_for(lambda: (p := srv.worker_pids()) and not set(p) & set(pids), 20, "the worker to be replaced")
        assert https_get(pki, tls_port, "/content/big.ts", {"Range": "bytes=0-9"}).body == data[:10]
        # Idle connections do not each hold asyncio's default 256 KiB read buffer (oca.http.tlsconn).
        (worker,) = srv.worker_pids()
        before = _rss_kib(worker)
        idle = []
        try:
            for _ in range(40):
                c = tls_connect(tls_port, client_context(pki))
                idle.append(c)
                c.sendall(raw_request("GET", "/content/big.ts", {"Range": "bytes=0-9"}))
                assert RawReader(c).response().status == 206
            grown = _rss_kib(worker) - before
            assert grown < 40 * 150, f"{grown} KiB for 40 idle TLS connections"
        finally:
            for c in idle:
                c.close()
        slow = tls_connect(tls_port, client_context(pki), rcvbuf=64 * 1024)
        try:
            slow.sendall(raw_request("GET", "/content/big.ts"))
            reader = RawReader(slow)
            assert reader.read_head()[0] == 200
            time.sleep(2.5)  # send_timeout_s = 1, plus the once-a-second sweep
            with pytest.raises((EOFError, ConnectionError, ssl.SSLError, OSError)):
                while True:
                    reader._fill()
            assert len(reader.buf) < len(data)
        finally:
            slow.close()


# ================================================================ hostile and slow clients


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (made in memory, nothing sent)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def closed_within(sock: socket.socket, limit_s: float, trickle: bytes = b"", every_s: float = 0.3) -> float:
    """Seconds until the server closes `sock` (trickling `trickle` a byte at a time meanwhile); fails past limit_s."""
    t0 = time.monotonic()
    sock.settimeout(every_s)
    i = 0
    while time.monotonic() - t0 < limit_s:
        if i < len(trickle):
            try:
                sock.send(trickle[i : i + 1])
            except OSError:
                return time.monotonic() - t0
            i += 1
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
    raise AssertionError(f"connection still open after {limit_s} s")


@pytest.fixture
def strict(tmp_path, pki):
    """An HTTPS appliance with header_timeout_s = 1, send_timeout_s = 1 and a small max_connections."""
    data = payloads()["big.ts"]
    cfg, port, tls_port = start_tls_appliance(
        tmp_path, pki, files={"big.ts": data}, workers=1,
        extra_server="header_timeout_s = 1\nsend_timeout_s = 1\nmax_connections = 16\n",
    )
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        wait_serving(srv, 1)
        yield srv, port, tls_port, data


def test_handshake_never_started_or_trickled_is_closed_within_header_timeout(strict, pki):
    _srv, _port, tls_port, _data = strict
    silent = socket.create_connection(("127.0.0.1", tls_port))
    trickle = socket.create_connection(("127.0.0.1", tls_port))
    try:
        hello = client_hello()
        assert closed_within(silent, 4.0) < 2.5  # header_timeout_s = 1
        assert closed_within(trickle, 4.0, trickle=hello[:-1]) < 2.5
    finally:
        silent.close()
        trickle.close()


def test_handshakes_count_towards_max_connections(strict, pki):
    _srv, _port, tls_port, _data = strict
    stalled = [socket.create_connection(("127.0.0.1", tls_port)) for _ in range(16)]
    try:
        time.sleep(0.3)
        # The 17th is refused: reset once its handshake is done (or during it),
        # without ever being answered.
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
            with tls_connect(tls_port, client_context(pki)) as extra:
                extra.sendall(raw_request("GET", "/health"))
                RawReader(extra).response()
    finally:
        for s in stalled:
            s.close()
    # Once the stalled ones are gone, clients are served again.
    wait_for(lambda: _try_get(pki, tls_port), 10, "a handshake to succeed again")


def _try_get(pki, port: int) -> bool:
    try:
        return https_get(pki, port, "/health").status == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False


def test_client_that_stops_reading_mid_body_hits_the_send_timeout(strict, pki):
    _srv, _port, tls_port, data = strict
    s = tls_connect(tls_port, client_context(pki), rcvbuf=64 * 1024)
    try:
        s.sendall(raw_request("GET", "/content/big.ts"))
        reader = RawReader(s)
        status, headers = reader.read_head()
        assert status == 200 and int(headers["content-length"]) == len(data)
        time.sleep(3.5)  # send_timeout_s = 1, plus the once-a-second sweep
        got = len(reader.buf)
        with pytest.raises((EOFError, ConnectionError, ssl.SSLError, OSError)):
            while True:
                reader._fill()
                got = len(reader.buf)
        assert got < len(data)
    finally:
        s.close()


def test_hostile_requests_over_https_get_4xx_or_close(tmp_path, pki):
    """tests/fault/test_server_faults.py's table of hostile requests, each sent inside a TLS session."""
    import asyncio
    import random

    from tests.fault.test_server_faults import HOSTILE, _check_hostile, _hostile_exchange

    files = {"small.bin": random.Random(1).randbytes(1024)}
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files=files, extra_server="header_timeout_s = 3\n")
    ctx = client_context(pki)

    async def run():
        sem = asyncio.Semaphore(32)

        async def one(raw):
            async with sem:
                return await _hostile_exchange(tls_port, raw, 3 + 1 + 4, ssl=ctx)

        return await asyncio.gather(*(one(raw) for _name, raw, _allowed in HOSTILE))

    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        pids = wait_serving(srv, 2)
        results = asyncio.run(run())
        problems = []
        for (name, raw, allowed), (data, outcome) in zip(HOSTILE, results):
            verdict = _check_hostile(name, raw, allowed, data, outcome, files)
            if verdict:
                problems.append(verdict)
            if outcome == "timeout":
                problems.append(f"{name}: the connection hung")
        assert not problems, "\n".join(problems)
        assert sorted(srv.worker_pids()) == sorted(pids), "a worker crashed"
        assert https_get(pki, tls_port, "/content/small.bin").body == files["small.bin"]


@pytest.mark.serial  # loads both cores with handshakes
def test_kill_9_of_a_worker_under_tls_load(tmp_path, pki):
    """Keep-alive HTTPS clients on both workers; one worker is killed: only its clients see one failed
    request each (then reconnect), nobody hangs, every client is served after the restart, no byte is wrong."""
    import asyncio
    import random
    from collections import Counter

    from tests.fault.test_server_faults import AConn, owner_of as holder

    data = random.Random(5).randbytes(4 << 20)
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files={"load.bin": data})
    ctx = client_context(pki)
    per_worker, duration_s, kill_at_s, chunk = 4, 2.5, 0.8, 65536
    clients = 2 * per_worker
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        pids = wait_serving(srv, 2)
        victim = pids[0]
        ok_at: list[tuple[int, float]] = []
        failures: list[tuple[int, float, str]] = []
        wrong: list[str] = []
        info: dict = {}

        async def spread() -> list:
            """Keep-alive connections, `per_worker` on each worker (the kernel picks; we keep or drop)."""
            held: dict[int, list] = {pid: [] for pid in pids}
            for _ in range(20):
                if all(len(v) == per_worker for v in held.values()):
                    break
                for conn in await asyncio.gather(*(AConn.open(tls_port, ssl=ctx) for _ in range(8))):
                    owner = holder(tls_port, conn.writer.get_extra_info("sockname")[1], pids)
                    if owner is not None and len(held[owner]) < per_worker:
                        held[owner].append(conn)
                    else:
                        conn.writer.transport.abort()
            assert all(len(v) == per_worker for v in held.values()), {p: len(v) for p, v in held.items()}
            info["on_victim"] = set(range(per_worker))
            return held[victim] + held[pids[1]]

        async def client(i: int, conn, end: float) -> None:
            loop = asyncio.get_running_loop()
            rng = random.Random(i)
            while loop.time() < end:
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(AConn.open(tls_port, ssl=ctx), 5)
                    start = rng.randrange(0, len(data) - chunk)
                    req = f"GET /content/load.bin HTTP/1.1\r\nHost: oca\r\nRange: bytes={start}-{start + chunk - 1}\r\n\r\n"
                    resp = await conn.exchange(req.encode(), 5)
                    if resp.status != 206 or resp.body != data[start : start + chunk]:
                        wrong.append(f"client {i}: {resp.status}, {len(resp.body)} bytes")
                    ok_at.append((i, loop.time()))
                except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                    failures.append((i, loop.time(), repr(exc)[:100]))
                    if conn is not None:
                        conn.writer.transport.abort()
                    conn = None
            if conn is not None:
                conn.writer.transport.abort()

        async def killer() -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(kill_at_s)
            info["killed_at"] = loop.time()
            os.kill(victim, signal.SIGKILL)
            info["new"] = await loop.run_in_executor(None, lambda: wait_for(
                lambda: [p for p in srv.worker_pids() if p not in pids] or None, 10, "a replacement worker"))
            info["restarted_at"] = loop.time()

        async def run() -> None:
            held = await spread()
            end = asyncio.get_running_loop().time() + duration_s
            await asyncio.gather(killer(), *(client(i, conn, end) for i, conn in enumerate(held)))

        asyncio.run(run())
        killed_at, restarted_at = info["killed_at"], info["restarted_at"]
        per_client = Counter(i for i, _, _ in failures)
        assert not wrong, wrong[:5]
        assert not [f for f in failures if "Timeout" in f[2]], f"a client hung: {failures}"
        assert all(n == 1 for n in per_client.values()), f"a client failed more than once: {failures}"
        assert all(killed_at <= t <= killed_at + 1.0 for _, t, _ in failures), failures
        assert set(per_client) <= info["on_victim"], f"clients of the surviving worker failed: {failures}"
        assert restarted_at - killed_at < 5.0
        assert {i for i, t in ok_at if t > restarted_at} == set(range(clients)), "a client stopped getting answers"
        new_pids = srv.worker_pids()
        assert len(new_pids) == 2 and victim not in new_pids
        assert https_get(pki, tls_port, "/content/load.bin", {"Range": "bytes=0-99"}).body == data[:100]


def test_plain_http_on_the_tls_port_is_closed_cleanly(served):
    s = socket.create_connection(("127.0.0.1", served.port), timeout=IO_TIMEOUT_S)
    try:
        s.sendall(raw_request("GET", "/content/one.txt"))
        t0 = time.monotonic()
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        assert time.monotonic() - t0 < 5
        assert not data.startswith(b"HTTP/")  # at most a TLS alert, never an HTTP answer in clear
    finally:
        s.close()
    assert https_get(served.pki, served.port, "/content/one.txt").status == 200  # the server is fine


@pytest.mark.serial  # a flood that loads both cores; the served clients are timed
def test_1000_stalled_handshakes_while_50_clients_are_served(tmp_path, pki):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))  # 1,000 stalled sockets + 50 clients here
    data = os.urandom(256 * 1024)
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files={"f.bin": data}, extra_server="header_timeout_s = 20\n")
    hello = client_hello()
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        wait_serving(srv, 2)
        stalled = []
        try:
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", tls_port))
                s.sendall(hello[:20])  # a ClientHello that never completes
                stalled.append(s)
            errors: list[BaseException] = []
            done = [0]

            def client() -> None:
                try:
                    with tls_connect(tls_port, client_context(pki)) as c:
                        reader = RawReader(c)
                        for i in range(5):
                            c.sendall(raw_request("GET", "/content/f.bin", {"Range": f"bytes={i * 1000}-{i * 1000 + 65535}"}))
                            r = reader.response()
                            assert r.status == 206 and r.body == data[i * 1000 : i * 1000 + 65536]
                            done[0] += 1
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=client) for _ in range(50)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors[:3]
            assert done[0] == 250
            assert time.monotonic() - t0 < 15
        finally:
            for s in stalled:
                s.close()


def test_redirect_http_sends_content_to_https_and_keeps_control_plain(tmp_path, pki):
    cfg, port, tls_port = start_tls_appliance(tmp_path, pki, files={"x.bin": b"z" * 100}, tls_extra="redirect_http = true\n", workers=1)
    with ServerProcess(cfg, "127.0.0.1", port) as srv:
        wait_serving(srv, 1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
        try:
            conn.request("GET", "/content/x.bin?e=1&k=a", headers={"Host": f"localhost:{port}", "Range": "bytes=0-1"})
            r = conn.getresponse()
            r.read()
            assert r.status == 308
            assert r.getheader("Location") == f"https://localhost:{tls_port}/content/x.bin?e=1&k=a"
            conn.request("GET", "/health")  # same keep-alive connection: control stays plain
            r = conn.getresponse()
            assert r.status == 200 and b'"status"' in r.read()
        finally:
            conn.close()
        assert https_get(pki, tls_port, "/content/x.bin").body == b"z" * 100
