"""The fill agent over HTTPS: real `oca-fill` and `oca-server` processes, loopback, a private CA.

The HTTPS side is the project's own appliance serving TLS (`[tls]`), with a
leaf certificate for "localhost" from a throwaway CA (`tests.tlscerts`):
as an origin (its `/content/<id>`, the manifest ingested as content too)
and as a peer of the same site. The plain good origin is the nginx of
test_fill.py. Covered: a fill whose manifest and origin are HTTPS trusted
through `fill.ca_file`; an HTTPS origin whose certificate does not verify,
from an unknown CA or for another host name (refused for that source with the reason, never retried, the next source
used) and an HTTPS manifest that does not verify (the run refuses); peer
fill from an HTTPS appliance, and the same peer refused without the CA.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.test_fill import (  # noqa: F401 - origin and site are fixtures
    MiB, appliance_cfg, build_manifest, expected, held, make_files, oca_fill, origin, publish, signing_table, site,
)
from tests.nginx import nginx_unavailable_reason
from tests.server_proc import ServerProcess, appliance, free_port, wait_port
from tests.support import admin
from tests.tlscerts import make_ca, make_leaf

pytestmark = pytest.mark.skipif(nginx_unavailable_reason() is not None, reason=nginx_unavailable_reason() or "")


def leaf_for_other_host(ca, directory: Path) -> tuple[Path, Path]:
    """A leaf from the same CA, but for "origin.example.net" only: valid, trusted, and for another host."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin.example.net")]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("origin.example.net")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    crt, keyfile = directory / "other-host.crt", directory / "other-host.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    return crt, keyfile


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("fill-pki")
    ca = make_ca(d)
    return {"ca": ca, "leaf": make_leaf(ca, d, "leaf"), "other-host": leaf_for_other_host(ca, d)}


def https_appliance(tmp: Path, pki, files: dict[str, bytes], leaf: str = "leaf", **kw) -> tuple[Path, str, int, int]:
    """An appliance config serving HTTPS on a port of its own, files ingested; (config, host, plain port, tls port)."""
    tls_port = free_port()
    crt, key = pki[leaf]
    tls = f'[tls]\nlisten = ["127.0.0.1:{tls_port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n'
    cfg, host, port = appliance(tmp, files=files, workers=1, extra=tls + kw.pop("extra", ""), **kw)
    return cfg, host, port, tls_port


def origin_files(site, names: dict[str, int], seed: int) -> tuple[dict, dict[str, bytes]]:
    make_files(site.files_dir, names, seed=seed)
    doc = build_manifest(site.files_dir, site.files_url)
    return doc, {n: (site.files_dir / n).read_bytes() for n in names}


def test_fill_from_an_https_origin_trusted_through_ca_file(tmp_path, site, pki):
    """Manifest and every file over HTTPS from a private CA, trusted with fill.ca_file; nginx is never asked."""
    doc, datas = origin_files(site, {f"t{i}.mp4": MiB + 777 * i for i in range(3)}, seed=61)
    tls_port = free_port()  # known before the manifest is ingested as content
    base = f"https://localhost:{tls_port}"
    for f in doc["files"]:
        f["sources"] = [f"{base}/content/{f['id']}"]
    manifest = json.dumps(doc).encode()
    crt, key = pki["leaf"]
    tls = f'[tls]\nlisten = ["127.0.0.1:{tls_port}"]\ncert_file = "{crt}"\nkey_file = "{key}"\n'
    cfg_o, host_o, port_o = appliance(tmp_path / "origin", files={**datas, "manifest-1": manifest}, workers=1,
                                      appliance_id="oca-origin", site="site-z", extra=tls)
    cfg = appliance_cfg(tmp_path, site, ca_file=str(pki["ca"].path))
    cfg.write_text(cfg.read_text().replace(site.manifest_url, f"{base}/content/manifest-1"))
    with ServerProcess(cfg_o, host_o, port_o):
        wait_port("127.0.0.1", tls_port)
        run = oca_fill(cfg, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert held(cfg) == expected(doc)
    assert admin(cfg, "verify").returncode == 0
    for f in doc["files"]:
        assert f"added {f['id']}" in run.stderr and f"from {base}/content/{f['id']}" in run.stderr
    assert "certificate" not in run.stderr
    assert site.entries() == []


# (case, leaf the origin serves, whether fill.ca_file trusts the CA, the reason expected)
UNVERIFIED = [
    # The leaf's chain ends in the private CA, which the system store does not hold.
    ("unknown-ca", "leaf", False, "certificate verify failed: self-signed certificate in certificate chain"),
    ("wrong-host-name", "other-host", True, "certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost'"),
]


@pytest.mark.parametrize("leaf,trusted,reason", [c[1:] for c in UNVERIFIED], ids=[c[0] for c in UNVERIFIED])
def test_https_origin_that_does_not_verify_is_refused_and_the_next_source_used(tmp_path, site, pki, leaf, trusted, reason):
    """Each file fails over to nginx, with the reason logged once; an HTTPS manifest there refuses the run."""
    doc, datas = origin_files(site, {f"u{i}.mp4": MiB + 333 * i for i in range(2)}, seed=62)
    cfg_o, host_o, port_o, tls_port = https_appliance(tmp_path / "origin", pki, datas, leaf=leaf, appliance_id="oca-origin",
                                                      site="site-z")
    fill = {"ca_file": str(pki["ca"].path)} if trusted else {}
    base = f"https://localhost:{tls_port}"
    for f in doc["files"]:
        f["sources"] = [f"{base}/content/{f['id']}"] + f["sources"]
    publish(doc, site.manifest_path)
    cfg = appliance_cfg(tmp_path, site, retries=3, **fill)
    with ServerProcess(cfg_o, host_o, port_o):
        wait_port("127.0.0.1", tls_port)
        run = oca_fill(cfg, "run")
        # The manifest itself over HTTPS that does not verify: the run refuses it, naming why.
        bad = appliance_cfg(tmp_path / "bad-manifest", site, **fill)
        bad.write_text(bad.read_text().replace(site.manifest_url, f"{base}/content/u0.mp4"))
        refused = oca_fill(bad, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert held(cfg) == expected(doc)
    for f in doc["files"]:
        cid = f["id"]
        failed = [line for line in run.stderr.splitlines() if f" {cid}: {base}/content/{cid}: " in line]
        assert len(failed) == 1, run.stderr  # not retried: the same certificate would answer again
        assert reason in failed[0], failed[0]
        assert f"added {cid}" in run.stderr and f"from {site.files_url}{cid}" in run.stderr
    assert sorted(e.uri.rsplit("/", 1)[1] for e in site.entries()) == sorted(f["id"] for f in doc["files"])
    assert refused.returncode == 1
    assert "manifest refused" in refused.stderr and reason in refused.stderr, refused.stderr


@pytest.mark.parametrize("trusted", [True, False], ids=["ca_file", "no-ca_file"])
def test_peer_fill_over_https(tmp_path, site, pki, trusted):
    """A peer whose url is https: with ca_file its /inventory and content are fetched over verified TLS;
    without, the peer is refused as a source with the reason and the origin is used."""
    names = {f"p{i}.mp4": MiB + 1000 * i for i in range(3)}
    doc, datas = origin_files(site, names, seed=63 if trusted else 64)
    cfg_b, host_b, port_b, tls_b = https_appliance(tmp_path / "b", pki, datas, appliance_id="oca-b", site="site-a",
                                                   extra=signing_table(required=True))
    peer = f"https://localhost:{tls_b}"
    # A weighs a thousand times B, so every file is placed on A; B holds them all.
    doc["sites"] = {"site-a": [{"id": "oca-a", "url": "http://127.0.0.1:9", "weight": 1000.0},
                               {"id": "oca-b", "url": peer, "weight": 0.001}]}
    publish(doc, site.manifest_path)
    fill = {"ca_file": str(pki["ca"].path)} if trusted else {}
    cfg_a = appliance_cfg(tmp_path, site, extra=signing_table(), appliance_id="oca-a", **fill)
    with ServerProcess(cfg_b, host_b, port_b):
        wait_port("127.0.0.1", tls_b)
        run = oca_fill(cfg_a, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert held(cfg_a) == expected(doc)
    for n in names:
        assert f"added {n}" in run.stderr
    if trusted:
        for n in names:
            assert f"from {peer}/content/{n}" in run.stderr, run.stderr
        assert site.entries() == []  # the origin was never asked for a file
    else:
        assert "peer oca-b is no source this run: inventory refused: certificate verify failed" in run.stderr, run.stderr
        assert sorted(e.uri.rsplit("/", 1)[1] for e in site.entries()) == sorted(names)


def test_redirect_from_https_to_http_is_refused_and_the_next_source_used(tmp_path, site, pki):
    """An HTTPS source answering 302 to http:// is a bad redirect of that source (never followed, not
    retried); the file comes from the next source."""
    from tests.origin import OriginProcess

    doc, _datas = origin_files(site, {"d0.mp4": MiB + 555}, seed=65)
    with OriginProcess(site.files_dir, free_port(), "redirect-http", tls=pki["leaf"]) as bad:
        for f in doc["files"]:
            f["sources"] = [bad.url(f["id"])] + f["sources"]
        publish(doc, site.manifest_path)
        cfg = appliance_cfg(tmp_path, site, retries=3, ca_file=str(pki["ca"].path))
        run = oca_fill(cfg, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert held(cfg) == expected(doc)
    for f in doc["files"]:
        cid = f["id"]
        failed = [line for line in run.stderr.splitlines() if f" {cid}: {bad.url(cid)}: " in line]
        assert len(failed) == 1, run.stderr  # not retried: the source would redirect again
        assert "refused a redirect from https to http" in failed[0] and "http://127.0.0.1:9/" in failed[0], failed[0]
        assert f"added {cid}" in run.stderr and f"from {site.files_url}{cid}" in run.stderr
