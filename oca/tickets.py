"""Session-ticket keys shared by every worker of one appliance.

Workers are fork+exec'd, so each builds its own SSLContext, and OpenSSL
gives each context its own random ticket key: a client that reconnects
to another worker cannot resume (measured with 2 workers: ~56% of TLS 1.2
and ~9% of TLS 1.3 resumptions succeeded). The parent reads or makes the
keys and hands them to every worker, which installs them in its context.

Rules kept here:
- A key is 80 bytes in nginx's `ssl_session_ticket_key` layout: 16 name,
  32 HMAC-SHA256, 32 AES-256-CBC (nginx's ngx_ssl_session_ticket_keys
  reads buf+16 as the HMAC key and buf+48 as the AES key). OpenSSL's
  `SSL_CTRL_SET_TLSEXT_TICKET_KEYS` takes the same order, so a file goes
  to OpenSSL as it is read. Without a `[tls] ticket_key_file` the parent
  draws a key from `os.urandom` at start and keeps it across SIGHUP
  reloads, so tickets survive a reload; it changes when the parent
  restarts, or when the file changes and SIGHUP follows.
- Rotation, as nginx does with several `ssl_session_ticket_key` files:
  the first key (`ticket_key_file`) encrypts new tickets, the others
  (`previous_ticket_key_files`) only decrypt, and a ticket they decrypt is
  renewed under the first key. Key names must differ: the name in a
  ticket is how its key is found.
- The keys never touch a file system: the parent writes them, first key
  first, into a sealed memfd that the workers inherit (`keys_fd`/`read_fd`).
- Python's `ssl` cannot set ticket keys, so `install` calls OpenSSL through
  ctypes, on the SSL_CTX that the `_ssl` module itself uses. It checks
  everything it relies on before writing anything: CPython, the libssl
  (and libcrypto) mapped into this process is the one `_ssl` reports (same
  version number), the SSL_CTX pointer read from the PySSLContext object
  answers `SSL_CTX_get_options` with `ctx.options` (twice, with a bit
  flipped in between). One key is a plain memory copy into the context
  (`SSL_CTRL_SET_TLSEXT_TICKET_KEYS`), read back and compared. Several
  keys need OpenSSL 3's key callback (`SSL_CTX_set_tlsext_ticket_key_evp_cb`),
  a ctypes callback that runs in every handshake which issues or presents a
  ticket; `install` proves it with real handshakes in memory (a ticket it
  issues resumes) before it returns. If any check fails it
  raises `TicketKeyUnavailable` saying which; the caller then keeps one key
  (only the first) or OpenSSL's own per-worker key, and /health and
  /metrics say so.
- The callback never raises into OpenSSL: any failure inside it answers
  "no ticket" / "unknown key", so the worst case is a full handshake.
"""

from __future__ import annotations

import ctypes
import os
import ssl
import sys
from collections.abc import Sequence

KEY_BYTES = 80
NAME_BYTES = 16
SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_IV_BYTES = 16  # AES-CBC


class TicketKeyError(ValueError):
    """A ticket key file that cannot be used (the operator's to fix); `path` names it."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path


class TicketKeyUnavailable(RuntimeError):
    """This process cannot install the shared keys; see the message for why."""


def read_key_file(path: str) -> bytes:
    """The key in `path` (nginx's layout, which is OpenSSL's); `TicketKeyError` names the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(KEY_BYTES + 1)
    except OSError as exc:
        raise TicketKeyError(path, f"cannot read: {exc.strerror}") from None
    if len(raw) != KEY_BYTES:
        found = f"more than {KEY_BYTES}" if len(raw) > KEY_BYTES else str(len(raw))
        raise TicketKeyError(path, f"a ticket key file holds exactly {KEY_BYTES} random bytes "
                             f"(e.g. openssl rand 80 > {path}), not {found}")
    return raw


def read_key_files(paths: Sequence[str]) -> tuple[bytes, ...]:
    """The keys in `paths`, first (encrypting) key first; `TicketKeyError` names the file at fault."""
    keys: list[bytes] = []
    names: dict[bytes, str] = {}
    for path in paths:
        key = read_key_file(path)
        other = names.get(key[:NAME_BYTES])
        if other is not None:
            raise TicketKeyError(path, f"its key name (first {NAME_BYTES} bytes) is the same as {other}'s; "
                                 "a ticket names the key that decrypts it, so each key needs its own")
        names[key[:NAME_BYTES]] = path
        keys.append(key)
    return tuple(keys)


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def keys_fd(keys: Sequence[bytes]) -> int:
    """A sealed, inheritable memfd holding `keys`, first key first (never on a file system)."""
    if not keys or any(len(k) != KEY_BYTES for k in keys):
        raise ValueError(f"ticket keys are {KEY_BYTES} bytes each, and there is at least one")
    fd = os.memfd_create("oca-ticket-keys", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, b"".join(keys))
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        os.set_inheritable(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


MAX_KEYS = 16


def read_fd(fd: int) -> tuple[bytes, ...]:
    """The keys a `keys_fd` descriptor holds, first key first."""
    raw = os.pread(fd, KEY_BYTES * MAX_KEYS + 1, 0)
    if not raw or len(raw) % KEY_BYTES or len(raw) > KEY_BYTES * MAX_KEYS:
        held = f"more than {KEY_BYTES * MAX_KEYS}" if len(raw) > KEY_BYTES * MAX_KEYS else str(len(raw))
        raise TicketKeyUnavailable(f"the ticket key descriptor held {held} bytes, "
                                   f"not 1 to {MAX_KEYS} keys of {KEY_BYTES}")
    return tuple(raw[i:i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES))


def _linked(lib: str) -> str:
    """The path of `lib` (libssl, libcrypto) mapped into this process (by `_ssl`), or why none."""
    paths = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and f"/{lib}.so" in parts[5]:
                paths.add(parts[5].strip())
    if len(paths) != 1:
        raise TicketKeyUnavailable(f"expected one {lib} mapped into the process, found {len(paths)}" +
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
        path = _linked("libssl")
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


def install(ctx: ssl.SSLContext, keys: Sequence[bytes]) -> None:
    """Make `ctx` encrypt tickets with `keys[0]` and decrypt with any of `keys`; `TicketKeyUnavailable` says why not."""
    if not keys or any(len(k) != KEY_BYTES for k in keys):
        raise TicketKeyUnavailable(f"a ticket key is {KEY_BYTES} bytes, not {', '.join(str(len(k)) for k in keys) or 'absent'}")
    lib, ptr = _checked(ctx)
    if len(keys) == 1:
        key = keys[0]
        key_buf = ctypes.create_string_buffer(key, KEY_BYTES)
        if lib.SSL_CTX_ctrl(ptr, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, KEY_BYTES, key_buf) != 1:
            raise TicketKeyUnavailable("OpenSSL refused SSL_CTRL_SET_TLSEXT_TICKET_KEYS")
        back = ctypes.create_string_buffer(KEY_BYTES)
        if lib.SSL_CTX_ctrl(ptr, SSL_CTRL_GET_TLSEXT_TICKET_KEYS, KEY_BYTES, back) != 1 or back.raw != key:
            raise TicketKeyUnavailable("the ticket key read back from OpenSSL differs from the one written")
        return
    _install_callback(ctx, lib, ptr, keys)
    _prove(ctx)


# ---------------------------------------------------------------- several keys: OpenSSL 3's key callback


class _OsslParam(ctypes.Structure):
    # include/openssl/core.h: struct ossl_param_st
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint), ("data", ctypes.c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t)]


# int cb(SSL *s, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
#        EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)
_EVP_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class _Keys:
    """What the callback needs, kept alive as long as the context (an attribute of it)."""

    def __init__(self, crypto, keys: Sequence[bytes]):
        self.crypto = crypto
        self.cipher = crypto.EVP_aes_256_cbc()
        self.digest_name = ctypes.create_string_buffer(b"SHA256")
        self.by_name: dict[bytes, tuple[int, object, object, object]] = {}
        self.first_name = keys[0][:NAME_BYTES]
        self.first_name_buf = ctypes.create_string_buffer(self.first_name, NAME_BYTES)
        for i, key in enumerate(keys):
            hmac = ctypes.create_string_buffer(key[16:48], 32)
            aes = ctypes.create_string_buffer(key[48:80], 32)
            params = (_OsslParam * 3)(
                crypto.OSSL_PARAM_construct_octet_string(b"key", hmac, 32),
                crypto.OSSL_PARAM_construct_utf8_string(b"digest", self.digest_name, 6),
                crypto.OSSL_PARAM_construct_end(),
            )
            self.by_name[key[:NAME_BYTES]] = (i, hmac, aes, params)
        self.callback = _EVP_CB(self._callback)
        self.failures = 0  # callbacks that failed inside (each answered: no ticket / unknown key)

    def _callback(self, _ssl, key_name, iv, cipher_ctx, mac_ctx, enc):
        try:
            c = self.crypto
            if enc:
                _i, _hmac, aes, params = self.by_name[self.first_name]
                ctypes.memmove(key_name, self.first_name_buf, NAME_BYTES)
                if c.RAND_bytes(iv, _IV_BYTES) != 1:
                    raise OSError("RAND_bytes failed")
                if c.EVP_MAC_CTX_set_params(mac_ctx, params) != 1 or c.EVP_EncryptInit_ex(cipher_ctx, self.cipher, None, aes, iv) != 1:
                    raise OSError("EVP init failed")
                return 1
            found = self.by_name.get(ctypes.string_at(key_name, NAME_BYTES))
            if found is None:
                return 0  # not ours: a full handshake
            i, _hmac, aes, params = found
            if c.EVP_MAC_CTX_set_params(mac_ctx, params) != 1 or c.EVP_DecryptInit_ex(cipher_ctx, self.cipher, None, aes, iv) != 1:
                raise OSError("EVP init failed")
            return 1 if i == 0 else 2  # 2: valid, and renew the ticket under the first key
        except BaseException:  # never into OpenSSL: the worst outcome is a full handshake
            self.failures += 1
            return 0


def _load_crypto():
    try:
        crypto = ctypes.CDLL(_linked("libcrypto"))
        crypto.OpenSSL_version_num.restype = ctypes.c_ulong
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, res, args in (
            ("EVP_aes_256_cbc", vp, []),
            ("RAND_bytes", ctypes.c_int, [vp, ctypes.c_int]),
            ("EVP_MAC_CTX_set_params", ctypes.c_int, [vp, vp]),
            ("EVP_EncryptInit_ex", ctypes.c_int, [vp, vp, vp, vp, vp]),
            ("EVP_DecryptInit_ex", ctypes.c_int, [vp, vp, vp, vp, vp]),
            ("OSSL_PARAM_construct_octet_string", _OsslParam, [cp, vp, sz]),
            ("OSSL_PARAM_construct_utf8_string", _OsslParam, [cp, vp, sz]),
            ("OSSL_PARAM_construct_end", _OsslParam, []),
        ):
            fn = getattr(crypto, name)
            fn.restype, fn.argtypes = res, args
    except (OSError, AttributeError) as exc:
        raise TicketKeyUnavailable(f"cannot load OpenSSL 3's libcrypto functions for the ticket key callback: {exc}") from None
    if crypto.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise TicketKeyUnavailable(f"libcrypto is OpenSSL {crypto.OpenSSL_version_num():#x}, "
                                   f"but the ssl module uses {ssl.OPENSSL_VERSION_NUMBER:#x}")
    return crypto


def _install_callback(ctx: ssl.SSLContext, lib, ptr: int, keys: Sequence[bytes]) -> None:
    if ssl.OPENSSL_VERSION_INFO < (3, 0):
        raise TicketKeyUnavailable(f"{ssl.OPENSSL_VERSION}: the key callback used for several keys needs OpenSSL 3")
    crypto = _load_crypto()
    try:
        setter = lib.SSL_CTX_set_tlsext_ticket_key_evp_cb
    except AttributeError:
        raise TicketKeyUnavailable("libssl has no SSL_CTX_set_tlsext_ticket_key_evp_cb") from None
    setter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_void_p, _EVP_CB]
    names = {k[:NAME_BYTES] for k in keys}
    if len(names) != len(keys):
        raise TicketKeyUnavailable("two ticket keys share a name")
    state = _Keys(crypto, keys)
    ctx._oca_ticket_keys = state  # the callback and its buffers live as long as the context
    if setter(ptr, state.callback) != 1:
        raise TicketKeyUnavailable("OpenSSL refused SSL_CTX_set_tlsext_ticket_key_evp_cb")


def _prove(ctx: ssl.SSLContext) -> None:
    """Real handshakes in memory against `ctx`: a ticket it issues under the callback resumes."""
    if ctx.options & ssl.OP_NO_TICKET:
        return  # tickets are off ([tls] session_tickets = false): nothing is issued to try
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    state = ctx._oca_ticket_keys
    try:
        reused, session = _handshake(ctx, client)
        if reused or session is None or not session.has_ticket:
            raise TicketKeyUnavailable("a first handshake under the key callback got no session ticket")
        if not _handshake(ctx, client, session)[0]:
            raise TicketKeyUnavailable("a ticket issued under the key callback did not resume")
    except ssl.SSLError as exc:
        raise TicketKeyUnavailable(f"a handshake under the key callback failed: {exc}") from None
    if state.failures:
        raise TicketKeyUnavailable(f"the key callback failed {state.failures} times in a trial handshake")


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, session=None):
    """One handshake over memory BIOs and a byte from the server (TLS 1.3 tickets follow the handshake); (reused, the client's session)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, session=session)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for obj in (cli, srv):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            srv.write(b"x")
            c_in.write(s_out.read())
            cli.read(1)
            return cli.session_reused, cli.session
    raise TicketKeyUnavailable("a trial handshake did not finish")
