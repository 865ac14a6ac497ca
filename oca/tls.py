"""TLS for the appliance: the key pair, its SSLContext, and what the kernel offers.

Rules kept here:
- `judge_pair` is the one decision on whether a certificate and key may be
  served (readable, matching, inside their validity period): a pure
  function of the facts `read_pair` gathers and of `now`, so its cases are
  a table in tests/unit/test_tls.py. Every refusal names the file and the
  reason.
- `make_context` builds the serving context: TLS 1.2 at least (1.0 and 1.1
  are never offered), ALPN `http/1.1`, no compression, no renegotiation.
  It raises `TlsError` naming the file and the reason, and never half-
  builds: the caller keeps its old context when a reload fails.
- `key_file_warning` judges who may read the private key (a pure function
  of its mode and owner): readable by group or others, or owned by another
  user than the server's, is warned about at start and on /health, never
  refused (a root-owned 0600 key read by root is fine).
- Workers read the pair with `read_pair_ssl` (the standard `ssl` module
  and `cert_validity`, a small DER reader), never with the `cryptography`
  package: importing it costs each worker ~10 MiB of RSS, which is ~7% of
  a worker holding 5,000 idle HTTPS connections. The parent, which judges
  the pair before any worker starts and at every reload, keeps `read_pair`
  and its detailed parse errors.
- `ktls_status` only probes: this code never enables kernel TLS, because
  no kernel it runs on here has the `tls` module to test it with (the send
  path keeps a seam for it, `oca.http.tlsconn`).
"""

from __future__ import annotations

import base64
import calendar
import datetime as _dt
import re
import errno
import os
import socket
import ssl
from dataclasses import dataclass

from oca.errors import ConfigError
from oca.settings import check_abs_path, check_listen, check_positive, one_of, setting

ALPN = ("http/1.1",)
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
TCP_ULP = getattr(socket, "TCP_ULP", 31)


@dataclass(frozen=True, slots=True)
class TlsServingConfig:
    """A `[tls]` table as every HTTPS server here reads it (the appliance adds `redirect_http`)."""

    listen: tuple[str, ...] = setting(doc="HTTPS addresses to serve on, 'host:port' or '[v6]:port'.", check=check_listen)
    cert_file: str = setting(doc="PEM certificate chain, leaf first (reloaded on SIGHUP).", check=check_abs_path)
    key_file: str = setting(doc="PEM private key of the leaf certificate, unencrypted (reloaded on SIGHUP).", check=check_abs_path)
    min_version: str = setting(
        "TLSv1.2", doc="Oldest protocol accepted: 'TLSv1.2' or 'TLSv1.3' (1.0 and 1.1 are never offered).",
        check=lambda v: one_of(v, tuple(VERSIONS)),
    )
    ciphers: str = setting("", doc="OpenSSL cipher list for TLS 1.2 ('' : OpenSSL's defaults).")
    ciphersuites: str = setting(
        "", doc="TLS 1.3 suites; must stay '' with Python's ssl, which cannot set them (OpenSSL's defaults are used)."
    )
    session_tickets: bool = setting(
        True, doc="Issue session tickets so clients can resume (false: every connection makes a full handshake, as nginx's ssl_session_tickets off)."
    )
    expiry_warn_days: float = setting(14, doc="/health is degraded when the certificate expires within this many days.", check=check_positive)


class TlsError(ConfigError):
    """A key pair or TLS setting that cannot be served (the operator's to fix)."""


@dataclass(frozen=True, slots=True)
class PairFacts:
    """What `read_pair` found; `judge_pair` decides on it."""

    cert_file: str
    key_file: str
    cert_error: str | None = None  # reading or parsing the certificate failed: why
    key_error: str | None = None  # reading or parsing the key failed: why
    matches: bool = True  # the key is the certificate's
    not_before_s: float = 0.0
    not_after_s: float = 0.0


def judge_pair(facts: PairFacts, now_s: float) -> str | None:
    """Why this pair cannot be served, naming the file; None when it can."""
    if facts.cert_error is not None:
        return f"{facts.cert_file}: {facts.cert_error}"
    if facts.key_error is not None:
        return f"{facts.key_file}: {facts.key_error}"
    if not facts.matches:
        return f"{facts.key_file}: the key does not match the certificate in {facts.cert_file}"
    if now_s >= facts.not_after_s:
        return f"{facts.cert_file}: the certificate expired at {_iso(facts.not_after_s)}"
    if now_s < facts.not_before_s:
        return f"{facts.cert_file}: the certificate is not valid before {_iso(facts.not_before_s)}"
    return None


def expiry_condition(not_after_s: float, now_s: float, warn_days: float) -> str | None:
    """A `degraded` reason when the served certificate expires within `warn_days`."""
    left_s = not_after_s - now_s
    if left_s < warn_days * 86400:
        if left_s <= 0:
            return f"TLS certificate expired at {_iso(not_after_s)}"
        return f"TLS certificate expires at {_iso(not_after_s)}, in {left_s / 86400:.1f} days (tls.expiry_warn_days {warn_days:g})"
    return None


def key_file_warning(path: str, mode: int, owner_uid: int, running_uid: int) -> str | None:
    """Why the private key is exposed, or None when only the running user can read it."""
    problems = []
    if mode & 0o077:
        problems.append(f"mode {mode & 0o777:04o} lets {'group and others' if mode & 0o007 and mode & 0o070 else 'others' if mode & 0o007 else 'the group'} read or change it")
    if owner_uid != running_uid:
        problems.append(f"it is owned by uid {owner_uid}, not by the server's uid {running_uid}")
    if not problems:
        return None
    return f"{path}: {'; '.join(problems)} (chown the service user, chmod 0600)"


def stat_key_file(path: str) -> str | None:
    """`key_file_warning` for the file as it is now (I/O); None when it cannot be read (make_context says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return key_file_warning(path, st.st_mode, st.st_uid, os.geteuid())


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read: {exc.strerror}"
    return f"cannot parse: {exc}"


def read_pair(cert_file: str, key_file: str) -> PairFacts:
    """Read both files and gather the facts `judge_pair` needs (I/O; never raises)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        with open(cert_file, "rb") as fh:
            cert_pem = fh.read()
        certs = x509.load_pem_x509_certificates(cert_pem)
        leaf = certs[0]
    except (OSError, ValueError) as exc:
        return PairFacts(cert_file, key_file, cert_error=_why(exc))
    try:
        with open(key_file, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return PairFacts(cert_file, key_file, key_error=_why(exc))
    fmt, pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    matches = key.public_key().public_bytes(fmt, pub) == leaf.public_key().public_bytes(fmt, pub)
    return PairFacts(
        cert_file, key_file, matches=matches,
        not_before_s=leaf.not_valid_before_utc.timestamp(), not_after_s=leaf.not_valid_after_utc.timestamp(),
    )


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")


def _der_item(der: bytes, i: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER item at `i`; ValueError if it overruns `end`."""
    if i + 2 > end:
        raise ValueError("truncated DER")
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        width = n & 0x7F
        if not 1 <= width <= 4 or i + width > end:
            raise ValueError("bad DER length")
        n = int.from_bytes(der[i:i + width], "big")
        i += width
    if i + n > end:
        raise ValueError("truncated DER")
    return tag, i, i + n


def _der_time(tag: int, text: bytes) -> float:
    """UTCTime (0x17) or GeneralizedTime (0x18) in the Z form RFC 5280 §4.1.2.5 requires → Unix seconds."""
    if tag == 0x17 and re.fullmatch(rb"\d{12}Z", text):
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000  # RFC 5280 §4.1.2.5.1
        rest = text[2:]
    elif tag == 0x18 and re.fullmatch(rb"\d{14}Z", text):
        year, rest = int(text[:4]), text[4:]
    else:
        raise ValueError("bad validity time")
    mon, day, hh, mm, ss = (int(rest[k:k + 2]) for k in range(0, 10, 2))
    try:
        _dt.datetime(year, mon, day, hh, mm, ss)
    except ValueError:
        raise ValueError("bad validity time") from None
    return float(calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0)))


def cert_validity(der: bytes) -> tuple[float, float]:
    """(not_before_s, not_after_s) of a DER X.509 certificate (RFC 5280 §4.1); ValueError when malformed.

    Pure. Walks Certificate → tbsCertificate → [version], serialNumber,
    signature, issuer → validity, checking every length against its parent.
    """
    tag, s, e = _der_item(der, 0, len(der))
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, s, e = _der_item(der, s, e)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    i = s
    tag, _, nxt = _der_item(der, i, e)
    if tag == 0xA0:  # [0] version
        i = nxt
    for want in (0x02, 0x30, 0x30):  # serialNumber, signature, issuer
        tag, _, nxt = _der_item(der, i, e)
        if tag != want:
            raise ValueError("unexpected field before validity")
        i = nxt
    tag, vs, ve = _der_item(der, i, e)
    if tag != 0x30:
        raise ValueError("no validity")
    t1, a, b = _der_item(der, vs, ve)
    t2, c, d = _der_item(der, b, ve)
    return _der_time(t1, der[a:b]), _der_time(t2, der[c:d])


def read_pair_ssl(cert_file: str, key_file: str) -> PairFacts:
    """`read_pair` with the standard `ssl` module only (I/O; never raises).

    The leaf's validity comes from `cert_validity`; whether the key is
    readable and is the leaf's, from OpenSSL's own check in
    `load_cert_chain` (KEY_VALUES_MISMATCH).
    """
    try:
        with open(cert_file, "rb") as fh:
            pem = fh.read()
    except OSError as exc:
        return PairFacts(cert_file, key_file, cert_error=_why(exc))
    m = _PEM_CERT.search(pem)
    try:
        if m is None:
            raise ValueError("no PEM certificate found")
        not_before, not_after = cert_validity(base64.b64decode(m.group(1)))
    except ValueError as exc:
        return PairFacts(cert_file, key_file, cert_error=f"cannot parse: {exc}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):  # the second: a key of another type
            return PairFacts(cert_file, key_file, matches=False, not_before_s=not_before, not_after_s=not_after)
        return PairFacts(cert_file, key_file, key_error=f"cannot parse: {exc.reason or exc}")
    except OSError as exc:
        return PairFacts(cert_file, key_file, key_error=_why(exc))
    return PairFacts(cert_file, key_file, not_before_s=not_before, not_after_s=not_after)


@dataclass(frozen=True, slots=True)
class Served:
    """A context ready to serve and the expiry of its certificate."""

    context: ssl.SSLContext
    not_after_s: float


def make_context(tls, now_s: float, read=read_pair) -> Served:
    """The serving SSLContext for a `[tls]` table; `TlsError` names the file and the reason.

    `read` gathers the pair's facts: `read_pair`, or `read_pair_ssl` in workers.
    """
    facts = read(tls.cert_file, tls.key_file)
    problem = judge_pair(facts, now_s)
    if problem is not None:
        raise TlsError(problem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(ALPN))
    if not tls.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0  # TLS 1.3 would otherwise send stateful tickets
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{tls.cert_file}: {exc}") from None
    if tls.ciphers:
        try:
            ctx.set_ciphers(tls.ciphers)
        except ssl.SSLError as exc:
            raise TlsError(f"tls.ciphers: {exc}") from None
    if tls.ciphersuites:
        # Python's ssl has no setter for TLS 1.3 suites (SSL_CTX_set_ciphersuites
        # is not exposed up to 3.13): refuse rather than silently serve others.
        setter = getattr(ctx, "set_ciphersuites", None)
        if setter is None:
            raise TlsError("tls.ciphersuites: this Python's ssl module cannot set TLS 1.3 suites; leave it empty (OpenSSL's defaults)")
        setter(tls.ciphersuites)
    return Served(ctx, facts.not_after_s)


def ktls_status() -> str:
    """'available' or 'unavailable: <why>' (a probe on a loopback TCP pair; changes nothing)."""
    if not hasattr(ssl, "OP_ENABLE_KTLS"):
        py = f"Python {'.'.join(map(str, __import__('sys').version_info[:2]))} has no ssl.OP_ENABLE_KTLS"
    else:
        py = ""
    try:
        lst = socket.socket()
        try:
            lst.bind(("127.0.0.1", 0))
            lst.listen(1)
            cli = socket.create_connection(lst.getsockname(), timeout=1)
            srv, _ = lst.accept()
            try:
                srv.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
            finally:
                srv.close()
                cli.close()
        finally:
            lst.close()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "unavailable: the kernel has no tls module (TCP_ULP tls: ENOENT)" + (f"; {py}" if py else "")
        return f"unavailable: TCP_ULP tls: {os.strerror(exc.errno) if exc.errno else exc}" + (f"; {py}" if py else "")
    if py:
        return f"unavailable: {py} (the kernel has the tls module)"
    return "unavailable: the kernel has the tls module, but this server's send path does not use it yet"
