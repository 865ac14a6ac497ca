"""Memory OpenSSL keeps per idle HTTPS connection, given back through ctypes.

The TLS transports (uvloop's and asyncio's) encrypt into a memory BIO and
send what it holds. OpenSSL's memory BIO never shrinks: once a 64 KiB block
has gone through it, it keeps an 86 KiB buffer for the life of the
connection. Measured (benchmarks/tls_memory.py --idle 2000 --body 262144):
91 KiB of worker RSS per idle connection after one 256 KiB response,
against 27 KiB after a 1 KiB one, so 10,000 player connections resting
between segments would hold ~900 MiB. nginx frees its buffers when a
connection goes idle (SSL_MODE_RELEASE_BUFFERS, and its own buffers).

Rules kept here:
- `BioTrimmer.trim` gives an idle connection's outgoing BIO a fresh, empty
  buffer (`BIO_set_mem_buf`, OpenSSL's public control, which frees the old
  one). It acts only when the BIO holds nothing (`BIO_ctrl_pending` is 0),
  so no byte waiting to be sent is lost; the caller also checks that the
  transport has nothing queued.
- The SSL pointer is read from the `_ssl` object behind an SSLObject, the
  way `oca.tickets` reads the SSL_CTX pointer, and is believed only after
  checks: the libssl mapped is the one `_ssl` reports (`oca.tickets`), and
  at start a throwaway SSLObject made from the serving context must show,
  through that pointer, the context's own SSL_CTX and the very BIO its
  MemoryBIO object wraps. On each trim, `SSL_get_SSL_CTX` must again be
  the serving context's; anything else and nothing is touched.
- If a check fails, `BioTrimmer.create` raises `MemoryControlUnavailable`
  saying why; connections then keep their buffers (memory grows as above,
  serving is unchanged), and /health says so.
- A trimmed buffer is freed into the C heap, which keeps its pages: without
  more, RSS stays at the peak number of buffers ever held (measured, 10,000
  idle connections after one 256 KiB response each: 238 MiB in the largest
  worker). Every RELEASE_EVERY trims the worker calls glibc's
  `malloc_trim(0)` off the event loop (`release_due`/`release_freed`):
  150 MiB, as after 1 KiB responses.
- Rejected: trimming at the end of every response (back-to-back requests
  would pay a free and a regrowth, with its zero-fill, each time); writing
  in 16 KiB pieces so the BIO stays small (four sends per block instead of
  one: more CPU per byte); SSL_MODE_RELEASE_BUFFERS, which frees OpenSSL's
  own record buffers, not the memory BIO's.
"""

from __future__ import annotations

import ctypes
import ssl

from oca import tickets

BIO_CTRL_PENDING = 10
BIO_C_SET_BUF_MEM = 114
BIO_CLOSE = 1


class MemoryControlUnavailable(RuntimeError):
    """This process cannot trim TLS buffers; connections keep theirs."""


def _ssl_pointer(sslobj: ssl.SSLObject) -> int:
    # PySSLSocket is {PyObject_HEAD; PyObject *Socket; SSL *ssl; ...} in CPython 3.7-3.13.
    inner = sslobj._sslobj
    return ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)).value or 0


def _bio_pointer(bio: ssl.MemoryBIO) -> int:
    # PySSLMemoryBIO is {PyObject_HEAD; BIO *bio; int eof_written;}.
    return ctypes.c_void_p.from_address(id(bio) + object.__basicsize__).value or 0


# Freed buffers go back to the C heap, which keeps the pages; past this many
# (~5.5 MiB) since the last time, `release_freed` hands the free pages to the kernel.
RELEASE_EVERY = 64


class BioTrimmer:
    """Trims the outgoing memory BIO of idle connections served from one context."""

    def __init__(self, lib, crypto, ctx_ptr: int):
        self._lib, self._crypto, self._ctx_ptr = lib, crypto, ctx_ptr
        self.trimmed = 0
        self._released_at = 0
        try:
            self._malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc
            self._malloc_trim.restype, self._malloc_trim.argtypes = ctypes.c_int, [ctypes.c_size_t]
        except AttributeError:
            self._malloc_trim = None

    def release_due(self) -> bool:
        """Whether RELEASE_EVERY buffers were trimmed since the last `release_freed` (which it then counts as done)."""
        if self.trimmed - self._released_at < RELEASE_EVERY or self._malloc_trim is None:
            return False
        self._released_at = self.trimmed
        return True

    def release_freed(self) -> None:
        """Hand the C heap's free pages back to the kernel (glibc's malloc_trim; thread-safe, releases the GIL)."""
        if self._malloc_trim is not None:
            self._malloc_trim(0)

    @classmethod
    def create(cls, ctx: ssl.SSLContext) -> "BioTrimmer":
        """A trimmer for connections of `ctx`, once every check has passed; `MemoryControlUnavailable` says why not."""
        try:
            lib, ctx_ptr = tickets._checked(ctx)
            crypto = ctypes.CDLL(tickets._linked("libcrypto"))
            vp = ctypes.c_void_p
            lib.SSL_get_SSL_CTX.restype, lib.SSL_get_SSL_CTX.argtypes = vp, [vp]
            lib.SSL_get_wbio.restype, lib.SSL_get_wbio.argtypes = vp, [vp]
            lib.SSL_get_rbio.restype, lib.SSL_get_rbio.argtypes = vp, [vp]
            crypto.BIO_ctrl.restype, crypto.BIO_ctrl.argtypes = ctypes.c_long, [vp, ctypes.c_int, ctypes.c_long, vp]
            crypto.BUF_MEM_new.restype, crypto.BUF_MEM_new.argtypes = vp, []
            crypto.BUF_MEM_free.restype, crypto.BUF_MEM_free.argtypes = None, [vp]
        except tickets.TicketKeyUnavailable as exc:
            raise MemoryControlUnavailable(str(exc)) from None
        except (OSError, AttributeError) as exc:
            raise MemoryControlUnavailable(f"cannot load OpenSSL's BIO functions: {exc}") from None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        probe = ctx.wrap_bio(incoming, outgoing, server_side=True)
        ssl_ptr = _ssl_pointer(probe)
        if not ssl_ptr or lib.SSL_get_SSL_CTX(ssl_ptr) != ctx_ptr:
            raise MemoryControlUnavailable("the SSL pointer read from an SSLObject does not lead to its context")
        if lib.SSL_get_wbio(ssl_ptr) != _bio_pointer(outgoing) or lib.SSL_get_rbio(ssl_ptr) != _bio_pointer(incoming):
            raise MemoryControlUnavailable("the SSL pointer read from an SSLObject does not lead to its MemoryBIOs")
        trimmer = cls(lib, crypto, ctx_ptr)
        outgoing.write(b"x" * 70000)
        outgoing.read()
        if not trimmer.trim(probe) or outgoing.pending or (outgoing.write(b"ok"), outgoing.read())[1] != b"ok":
            raise MemoryControlUnavailable("a trial trim of a memory BIO did not leave it empty and working")
        trimmer.trimmed = 0
        return trimmer

    def trim(self, sslobj: ssl.SSLObject | None) -> bool:
        """Give `sslobj`'s outgoing BIO an empty buffer if it holds nothing; whether it did."""
        if sslobj is None:
            return False
        ssl_ptr = _ssl_pointer(sslobj)
        if not ssl_ptr or self._lib.SSL_get_SSL_CTX(ssl_ptr) != self._ctx_ptr:
            return False
        bio = self._lib.SSL_get_wbio(ssl_ptr)
        crypto = self._crypto
        if not bio or crypto.BIO_ctrl(bio, BIO_CTRL_PENDING, 0, None) != 0:
            return False
        fresh = crypto.BUF_MEM_new()
        if not fresh:
            return False
        if crypto.BIO_ctrl(bio, BIO_C_SET_BUF_MEM, BIO_CLOSE, fresh) != 1:
            crypto.BUF_MEM_free(fresh)
            return False
        self.trimmed += 1
        return True
