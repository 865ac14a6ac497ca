"""Throwaway certificates for the TLS tests: a private CA and leaf certificates.

Made with the `cryptography` package: ECDSA P-256 or RSA-2048 leaves for
"localhost" and 127.0.0.1, signed by a CA that exists only in a temp dir.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DAY = dt.timedelta(days=1)


def _key(kind: str):
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass
class CA:
    key: object
    cert: x509.Certificate
    path: Path  # the CA certificate (PEM), for clients' trust


def make_ca(directory: Path, kind: str = "ecdsa") -> CA:
    key = _key(kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oca test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(key, cert, path)


def make_leaf(ca: CA, directory: Path, name: str, kind: str = "ecdsa", days: float = 90, start_days: float = -1,
              ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """Write `<name>.crt` (leaf then CA, for "localhost" and `ips`) and `<name>.key`; returns their paths."""
    key = _key(kind)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + start_days * DAY).not_valid_after(now + days * DAY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    crt = directory / f"{name}.crt"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM))
    keyfile = directory / f"{name}.key"
    keyfile.write_bytes(_pem_key(key))
    keyfile.chmod(0o600)
    return crt, keyfile
