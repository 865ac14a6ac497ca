"""`oca.sslmem`: idle connections' outgoing memory BIO given an empty buffer, on real OpenSSL objects.

Handshakes run in memory (Python's ssl over memory BIOs, no socket), as
uvloop's and asyncio's TLS transports drive them.
"""

from __future__ import annotations

import ctypes
import ssl

import pytest

from oca import sslmem
from tests.tlscerts import make_ca, make_leaf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    crt, key = make_leaf(ca, d, "leaf")
    return ca.path, crt, key


class _BufMem(ctypes.Structure):
    _fields_ = [("length", ctypes.c_size_t), ("data", ctypes.c_void_p), ("max", ctypes.c_size_t), ("flags", ctypes.c_ulong)]


def capacity(trimmer: sslmem.BioTrimmer, bio: ssl.MemoryBIO) -> int:
    """The bytes the BIO's buffer has room for (BIO_get_mem_ptr → BUF_MEM.max)."""
    got = ctypes.c_void_p()
    trimmer._crypto.BIO_ctrl(sslmem._bio_pointer(bio), 115, 0, ctypes.byref(got))  # BIO_C_GET_BUF_MEM_PTR
    return _BufMem.from_address(got.value).max


def connected(pair):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pair[1], pair[2])
    client = ssl.create_default_context(cafile=str(pair[0]))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
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
            return server, srv, s_out, cli, c_in
    raise AssertionError("handshake did not finish")


def test_an_idle_connections_write_buffer_is_given_back_and_the_session_goes_on(pair):
    server, srv, s_out, cli, c_in = connected(pair)
    trimmer = sslmem.BioTrimmer.create(server)
    body = bytes(range(256)) * 256  # 64 KiB, as one block of the send path
    srv.write(body)
    c_in.write(s_out.read())
    assert cli.read(len(body) + 1) == body[:16384]  # one record at a time
    assert capacity(trimmer, s_out) >= len(body)  # what a memory BIO keeps after a block went through
    srv.write(b"pending")
    assert not trimmer.trim(srv), "a BIO holding bytes to send is left alone"
    c_in.write(s_out.read())
    assert trimmer.trim(srv)
    assert capacity(trimmer, s_out) == 0 and trimmer.trimmed == 1
    srv.write(b"after")
    c_in.write(s_out.read())
    got = b""
    while len(got) < len(body) - 16384 + len(b"pendingafter"):
        got += cli.read(65536)
    assert got.endswith(b"pendingafter"), "the session goes on over the fresh buffer"


def test_trim_ignores_objects_of_another_context_and_none(pair):
    server, srv, *_ = connected(pair)
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.load_cert_chain(pair[1], pair[2])
    trimmer = sslmem.BioTrimmer.create(other)
    assert not trimmer.trim(srv) and not trimmer.trim(None) and trimmer.trimmed == 0


def test_freed_pages_are_released_once_enough_buffers_were_trimmed(pair):
    server, *_ = connected(pair)
    trimmer = sslmem.BioTrimmer.create(server)
    trimmer.trimmed = sslmem.RELEASE_EVERY - 1
    assert not trimmer.release_due()
    trimmer.trimmed += 1
    assert trimmer.release_due() and not trimmer.release_due(), "due once per RELEASE_EVERY trims"
    trimmer.release_freed()  # glibc's malloc_trim, here for real
