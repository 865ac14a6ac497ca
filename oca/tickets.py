"""Session-ticket keys shared by every worker of one appliance.

Workers are fork+exec'd, so each builds its own SSLContext, and OpenSSL
gives each context its own random ticket key: a client that reconnects
to another worker cannot resume (measured with 2 workers: ~56% of TLS 1.2
and ~9% of TLS 1.3 resumptions succeeded). The parent makes one key and
hands it to every worker, which installs it in its context.

Rules kept here:
- The key is 80 bytes. A `[tls] ticket_key_file` is read in nginx's
  `ssl_session_ticket_key` layout (16 name, 32 AES, 32 HMAC) so one file
  can be shared by the boxes behind one name; `openssl_order` reorders it
  for `SSL_CTRL_SET_TLSEXT_TICKET_KEYS` (16 name, 32 HMAC, 32 AES).
  Without the file the parent draws a key from `os.urandom` at start and
  keeps it across SIGHUP reloads, so tickets survive a reload; it changes
  when the parent restarts, or when the file changes and SIGHUP follows.
- The key never touches a file system: the parent writes it into a sealed
  memfd that the workers inherit (`key_fd`/`read_fd`).
- Python's `ssl` cannot set ticket keys, so `install` calls OpenSSL through
  ctypes, on the SSL_CTX that the `_ssl` module itself uses. It checks
  everything it relies on before writing anything: CPython, the libssl
  mapped into this process is the one `_ssl` reports (same version
  number), the SSL_CTX pointer read from the PySSLContext object answers
  `SSL_CTX_get_options` with `ctx.options` (twice, with a bit flipped in
  between), and the key read back equals the key written. If any check
  fails it raises `TicketKeyUnavailable` saying which, and the context
  keeps OpenSSL's own per-worker key: resumption then works only on the
  same worker, and /health and /metrics say so.
- Rejected: a key callback (`SSL_CTX_set_tlsext_ticket_key_evp_cb`) that
  could hold current + previous keys across a rotation. It would run
  Python inside every handshake through ctypes; the one-key control is a
  plain memory copy.
"""

from __future__ import annotations

import ctypes
import os
import ssl
import sys

KEY_BYTES = 80
SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59


class TicketKeyError(ValueError):
    """A ticket key file that cannot be used (the operator's to fix)."""


class TicketKeyUnavailable(RuntimeError):
    """This process cannot install a shared key; workers keep their own."""


def openssl_order(nginx_key: bytes) -> bytes:
    """nginx's 80-byte layout (name, AES, HMAC) → OpenSSL's (name, HMAC, AES)."""
    if len(nginx_key) != KEY_BYTES:
        raise TicketKeyError(f"a ticket key is {KEY_BYTES} bytes, not {len(nginx_key)}")
    return nginx_key[:16] + nginx_key[48:80] + nginx_key[16:48]


def read_key_file(path: str) -> bytes:
    """The key in `path` (nginx layout), in OpenSSL order; `TicketKeyError` names the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(KEY_BYTES + 1)
    except OSError as exc:
        raise TicketKeyError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) != KEY_BYTES:
        found = f"more than {KEY_BYTES}" if len(raw) > KEY_BYTES else str(len(raw))
        raise TicketKeyError(f"{path}: a ticket key file holds exactly {KEY_BYTES} random bytes "
                             f"(e.g. openssl rand 80 > {path}), not {found}")
    return openssl_order(raw)


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def key_fd(key: bytes) -> int:
    """A sealed, inheritable memfd holding `key` (never on a file system)."""
    fd = os.memfd_create("oca-ticket-key", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, key)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        os.set_inheritable(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int) -> bytes:
    key = os.pread(fd, KEY_BYTES + 1, 0)
    if len(key) != KEY_BYTES:
        raise TicketKeyUnavailable(f"the ticket key descriptor held {len(key)} bytes, not {KEY_BYTES}")
    return key


def _linked_libssl() -> str:
    """The path of the libssl mapped into this process (by `_ssl`), or why none."""
    paths = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and "/libssl.so" in parts[5]:
                paths.add(parts[5].strip())
    if len(paths) != 1:
        raise TicketKeyUnavailable(f"expected one libssl mapped into the process, found {len(paths)}" +
                                   (f" ({', '.join(sorted(paths))})" if paths else " (is _ssl statically linked?)"))
    return paths.pop()


def _ctx_pointer(ctx: ssl.SSLContext) -> int:
    # PySSLContext is {PyObject_HEAD; SSL_CTX *ctx; ...} in CPython 3.7-3.13.
    return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value or 0


def _checked(ctx: ssl.SSLContext):
    """(libssl, SSL_CTX pointer) of `ctx`, once every check below has passed; `TicketKeyUnavailable` otherwise."""
    if sys.implementation.name != "cpython" or not (3, 7) <= sys.version_info[:2] <= (3, 13):
        raise TicketKeyUnavailable(f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}: "
                                   "the SSLContext layout is not known here")
    try:
        path = _linked_libssl()
        lib = ctypes.CDLL(path)
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    except (OSError, AttributeError) as exc:
        raise TicketKeyUnavailable(f"cannot load OpenSSL's libssl: {exc}") from None
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise TicketKeyUnavailable(f"{path} is OpenSSL {lib.OpenSSL_version_num():#x}, "
                                   f"but the ssl module uses {ssl.OPENSSL_VERSION_NUMBER:#x}")
    ptr = _ctx_pointer(ctx)
    if not ptr:
        raise TicketKeyUnavailable("the SSLContext holds no SSL_CTX pointer where expected")
    probe = ssl.OP_NO_TICKET if not ctx.options & ssl.OP_NO_TICKET else 0
    seen = []
    for flip in (False, True):
        if flip:
            if not probe:
                break
            ctx.options |= probe
        seen.append((lib.SSL_CTX_get_options(ptr), int(ctx.options)))
    if probe:
        ctx.options &= ~probe
    if any(a != b for a, b in seen):
        raise TicketKeyUnavailable("the SSL_CTX pointer read from the SSLContext does not answer with its options")
    return lib, ptr


def install(ctx: ssl.SSLContext, key: bytes) -> None:
    """Make `ctx` encrypt and decrypt tickets with `key`; `TicketKeyUnavailable` says why not."""
    if len(key) != KEY_BYTES:
        raise TicketKeyUnavailable(f"a ticket key is {KEY_BYTES} bytes, not {len(key)}")
    lib, ptr = _checked(ctx)
    key_buf = ctypes.create_string_buffer(key, KEY_BYTES)
    if lib.SSL_CTX_ctrl(ptr, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, KEY_BYTES, key_buf) != 1:
        raise TicketKeyUnavailable("OpenSSL refused SSL_CTRL_SET_TLSEXT_TICKET_KEYS")
    back = ctypes.create_string_buffer(KEY_BYTES)
    if lib.SSL_CTX_ctrl(ptr, SSL_CTRL_GET_TLSEXT_TICKET_KEYS, KEY_BYTES, back) != 1 or back.raw != key:
        raise TicketKeyUnavailable("the ticket key read back from OpenSSL differs from the one written")
