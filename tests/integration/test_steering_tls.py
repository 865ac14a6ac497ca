"""`oca-steering` over HTTPS, against a real `oca-server` appliance with `[tls]`.

Real processes on loopback, certificates from a throwaway CA
(`tests.tlscerts`). One HTTPS appliance (1 worker) holds one file; two
steering processes poll it over HTTPS every 0.3 s:
- `trusting` has `[health] ca_file` = the test CA and serves `/steer` on
  HTTPS itself (`[tls]`), so players verify it with the same CA;
- `doubting` has `ca_file` = another CA, so the appliance's certificate
  does not verify: the appliance is never up, and the reason says why.
A bad pair is refused by `--check-config`, and a bad pair at SIGHUP keeps
the old one.
"""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from tests.server_proc import ServerProcess, appliance, free_port, wait_port
from tests.support import BIN, ROOT
from tests.tlscerts import make_ca, make_leaf

T = TypeVar("T")
IO_TIMEOUT_S = 10.0
WITHIN_S = 20.0  # a shared, noisy machine; the poll interval is 0.3 s
CONTENT = "movie-tls.mp4"
AID = "tls-a1"
SITE = "alpha"


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    other = make_ca(d / "other")
    return {
        "ca": ca, "other": other, "dir": d,
        "appliance": make_leaf(ca, d, "appliance"),
        "steering": make_leaf(ca, d, "steering"),
        "steering2": make_leaf(ca, d, "steering2"),
        "expired": make_leaf(ca, d, "expired", days=-1, start_days=-30),
        "mismatch": (make_leaf(ca, d, "m1")[0], make_leaf(ca, d, "m2")[1]),
    }


def https_context(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"].path))


def https_get(pki, port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, timeout=IO_TIMEOUT_S, context=https_context(pki))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Appl:
    url: str
    tls_port: int


@pytest.fixture(scope="module")
def https_appliance(tmp_path_factory, pki) -> Iterator[Appl]:
    tmp = tmp_path_factory.mktemp("appliance")
    tls_port = free_port()
    crt, key = pki["appliance"]
    extra = f'[tls]\nlisten = ["127.0.0.1:{tls_port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n'
    cfg, host, port = appliance(tmp, files={CONTENT: b"t" * 50_000}, extra=extra, appliance_id=AID, site=SITE, workers=1)
    with ServerProcess(cfg, host, port):
        wait_port("127.0.0.1", tls_port)
        yield Appl(f"https://127.0.0.1:{tls_port}", tls_port)


def steering_toml(port: int | None, appliance_url: str, ca_file: Path | None, tls: tuple[int, Path, Path] | None = None) -> str:
    lines = [
        f'fallback_sites = ["{SITE}"]',
        "[server]",
        f'listen = ["127.0.0.1:{port}"]' if port is not None else "listen = []",
        "[health]",
        "interval_s = 0.3",
        "timeout_s = 2.0",
        "fail_after = 2",
        "recover_after = 1",
    ]
    if ca_file is not None:
        lines.append(f'ca_file = "{ca_file}"')
    if tls is not None:
        tls_port, crt, key = tls
        lines += ["[tls]", f'listen = ["127.0.0.1:{tls_port}"]', f'cert_file = "{crt}"', f'key_file = "{key}"']
    lines += ["[[appliances]]", f'id = "{AID}"', f'url = "{appliance_url}"', f'site = "{SITE}"']
    return "\n".join(lines) + "\n"


@dataclass
class SteeringProc:
    cfg: Path
    port: int
    tls_port: int | None
    log: Path
    proc: subprocess.Popen

    def health(self) -> dict:
        return json.loads(http_get(self.port, "/health")[1])

    def appliance_state(self) -> dict:
        return self.health()["by_appliance"][AID]


def start_steering(tmp: Path, text: str, port: int | None, tls_port: int | None) -> SteeringProc:
    cfg = tmp / "steering.toml"
    cfg.write_text(text)
    log = tmp / "steering.log"
    fh = open(log, "ab")
    proc = subprocess.Popen([str(BIN / "oca-steering"), "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    fh.close()
    s = SteeringProc(cfg, port, tls_port, log, proc)
    try:
        if port is not None:
            wait_port("127.0.0.1", port, timeout=15)
        if tls_port is not None:
            wait_port("127.0.0.1", tls_port, timeout=15)
    except TimeoutError:
        stop(s)
        raise AssertionError(f"steering did not start: {log.read_text()[-2000:]}")
    return s


def stop(s: SteeringProc) -> None:
    if s.proc.poll() is None:
        s.proc.terminate()
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(5)


@pytest.fixture(scope="module")
def trusting(tmp_path_factory, pki, https_appliance) -> Iterator[SteeringProc]:
    tmp = tmp_path_factory.mktemp("trusting")
    port, tls_port = free_port(), free_port()
    crt, key = pki["steering"]
    # Copies, so the SIGHUP test can replace them in place (as a renewal does).
    (tmp / "s.crt").write_bytes(crt.read_bytes())
    (tmp / "s.key").write_bytes(key.read_bytes())
    (tmp / "s.key").chmod(0o600)
    s = start_steering(tmp, steering_toml(port, https_appliance.url, pki["ca"].path, (tls_port, tmp / "s.crt", tmp / "s.key")),
                       port, tls_port)
    try:
        yield s
    finally:
        stop(s)


@pytest.fixture(scope="module")
def doubting(tmp_path_factory, pki, https_appliance) -> Iterator[SteeringProc]:
    tmp = tmp_path_factory.mktemp("doubting")
    port = free_port()
    s = start_steering(tmp, steering_toml(port, https_appliance.url, pki["other"].path), port, None)
    try:
        yield s
    finally:
        stop(s)


def test_https_appliance_polled_with_ca_file_is_up_and_steer_hands_out_its_https_url(trusting, https_appliance, pki):
    wait_for(lambda: trusting.appliance_state()["state"] == "up", WITHIN_S, "the https appliance to be up")
    status, body = https_get(pki, trusting.tls_port, f"/steer?content={CONTENT}")
    assert status == 200, body
    urls = json.loads(body)["urls"]
    assert [u["appliance"] for u in urls] == [AID]
    assert urls[0]["url"].startswith(f"{https_appliance.url}/content/{CONTENT}")
    # The URL handed out is a real HTTPS URL that verifies with the same CA and serves the file.
    conn = http.client.HTTPSConnection("127.0.0.1", https_appliance.tls_port, timeout=IO_TIMEOUT_S, context=https_context(pki))
    try:
        conn.request("GET", urls[0]["url"].removeprefix(https_appliance.url))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"t" * 50_000
    finally:
        conn.close()


def test_steering_serves_steer_over_https_verified_with_the_test_ca(trusting, pki):
    wait_for(lambda: trusting.appliance_state()["state"] == "up", WITHIN_S, "the https appliance to be up")
    ctx = https_context(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with _tls(ctx, trusting.tls_port) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert s.selected_alpn_protocol() == "http/1.1"
    status, body = https_get(pki, trusting.tls_port, f"/steer?content={CONTENT}")
    assert status == 200 and json.loads(body)["urls"]
    # A client that does not trust the CA is refused by its own verification: nothing is served unverified.
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls(ssl.create_default_context(cafile=str(pki["other"].path)), trusting.tls_port)
    tls = trusting.health()["tls"]
    assert tls["days_left"] > 80 and tls["reload_error"] == ""


def _tls(ctx: ssl.SSLContext, port: int) -> ssl.SSLSocket:
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    try:
        return ctx.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def test_appliance_whose_certificate_does_not_verify_is_down_with_the_reason(doubting):
    st = wait_for(lambda: (lambda s: s if "certificate" in s["last_failure"] else None)(doubting.appliance_state()),
                  WITHIN_S, "a failed poll naming the certificate")
    assert st["state"] != "up"
    assert "TLS certificate not verified" in st["last_failure"]
    assert "certificate verify failed" in st["last_failure"]
    assert doubting.health()["serving"] == 0
    # Never a fallback: the appliance stays out of answers.
    status, body = http_get(doubting.port, f"/steer?content={CONTENT}")
    assert status == 503, body
    assert "TLS certificate not verified" in doubting.log.read_text()


def _fingerprint(pki, port: int) -> bytes:
    with _tls(https_context(pki), port) as s:
        return s.getpeercert(binary_form=True)


def test_sighup_reloads_the_pair_and_keeps_the_old_one_when_the_new_is_bad(trusting, pki):
    tmp = trusting.cfg.parent
    first = _fingerprint(pki, trusting.tls_port)
    bad_crt, bad_key = pki["expired"]
    (tmp / "s.key").write_bytes(bad_key.read_bytes())
    (tmp / "s.crt").write_bytes(bad_crt.read_bytes())
    trusting.proc.send_signal(signal.SIGHUP)
    err = wait_for(lambda: trusting.health()["tls"]["reload_error"], WITHIN_S, "the refused reload on /health")
    assert "s.crt" in err and "expired" in err, err
    assert trusting.health()["status"] == "degraded"
    assert _fingerprint(pki, trusting.tls_port) == first
    crt2, key2 = pki["steering2"]
    (tmp / "s.key").write_bytes(key2.read_bytes())
    (tmp / "s.crt").write_bytes(crt2.read_bytes())
    trusting.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: trusting.health()["tls"]["reload_error"] == "", WITHIN_S, "the good reload")
    assert _fingerprint(pki, trusting.tls_port) != first
    status, _ = https_get(pki, trusting.tls_port, f"/steer?content={CONTENT}")
    assert status == 200


def test_https_only_steering_serves_health_and_metrics_with_the_expiry_gauge(tmp_path, pki, https_appliance):
    """[server] listen = [] with [tls]: everything, control endpoints included, is on HTTPS."""
    tls_port = free_port()
    crt, key = pki["steering"]
    s = start_steering(tmp_path, steering_toml(None, https_appliance.url, pki["ca"].path, (tls_port, crt, key)), None, tls_port)
    try:
        status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(https_get(pki, tls_port, "/health")),
                                WITHIN_S, "HTTPS-only steering to see its appliance up")
        assert json.loads(body)["tls"]["days_left"] > 80
        status, body = https_get(pki, tls_port, "/metrics")
        assert status == 200
        line = next(x for x in body.decode().splitlines() if x.startswith("steering_tls_certificate_expiry_timestamp_seconds "))
        not_after = float(line.split()[1])
        assert abs(not_after - json.loads(https_get(pki, tls_port, "/health")[1])["tls"]["not_after"]) < 1
        assert "steering_tls_reload_refused 0.0" in body.decode()
        assert "no plain address" in s.log.read_text()
    finally:
        stop(s)


@pytest.mark.parametrize("which", ["expired", "mismatch", "missing"])
def test_check_config_refuses_a_bad_pair_naming_the_file(tmp_path, pki, which):
    if which == "missing":
        crt, key = tmp_path / "nope.crt", pki["steering"][1]
    else:
        crt, key = pki[which]
    text = steering_toml(free_port(), "https://127.0.0.1:9", pki["ca"].path, (free_port(), crt, key))
    cfg = tmp_path / "steering.toml"
    cfg.write_text(text)
    r = subprocess.run([str(BIN / "oca-steering"), "--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1, r.stdout
    reason = {"expired": "expired", "mismatch": "does not match", "missing": "cannot read"}[which]
    named = key if which == "mismatch" else crt
    assert str(named) in r.stderr and reason in r.stderr and "tls" in r.stderr, r.stderr


def test_check_config_refuses_an_unreadable_ca_file(tmp_path, pki):
    cfg = tmp_path / "steering.toml"
    cfg.write_text(steering_toml(free_port(), "https://127.0.0.1:9", tmp_path / "no-ca.pem"))
    r = subprocess.run([str(BIN / "oca-steering"), "--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "health.ca_file" in r.stderr and "no-ca.pem" in r.stderr, r.stderr
