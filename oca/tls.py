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
- `ktls_status` only probes: this code never enables kernel TLS, because
  no kernel it runs on here has the `tls` module to test it with (the send
  path keeps a seam for it, `oca.http.tlsconn`).
"""

from __future__ import annotations

import datetime as _dt
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


@dataclass(frozen=True, slots=True)
class Served:
    """A context ready to serve and the expiry of its certificate."""

    context: ssl.SSLContext
    not_after_s: float


def make_context(tls, now_s: float) -> Served:
    """The serving SSLContext for a `[tls]` table; `TlsError` names the file and the reason."""
    facts = read_pair(tls.cert_file, tls.key_file)
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
