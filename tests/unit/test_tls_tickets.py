"""`oca.tickets`: the shared session-ticket key, installed in real OpenSSL contexts.

The resumption cases run real handshakes in memory (Python's ssl over
memory BIOs, no socket): a session from one server context resumes on
another context only when both hold the same installed key.
"""

from __future__ import annotations

import os
import ssl

import pytest

from oca import tickets
from tests.tlscerts import make_ca, make_leaf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    crt, key = make_leaf(ca, d, "leaf")
    return ca.path, crt, key


def server_ctx(pair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair[1], pair[2])
    return ctx


def _pump(a: ssl.SSLObject, a_in, a_out, b: ssl.SSLObject, b_in, b_out) -> None:
    for _ in range(20):
        done = 0
        for obj in (a, b):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        b_in.write(a_out.read())
        a_in.write(b_out.read())
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, session=None):
    """One in-memory handshake plus a byte each way; (reused, client's session)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    _pump(cli, c_in, c_out, srv, s_in, s_out)
    srv.write(b"x")  # TLS 1.3 tickets go out after the handshake: let the client read them
    c_in.write(s_out.read())
    assert cli.read(1) == b"x"
    return cli.session_reused, cli.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_installed_key_lets_another_context_resume(pair, version):
    client = ssl.create_default_context(cafile=str(pair[0]))
    client.minimum_version = client.maximum_version = version
    key = tickets.new_key()
    a, b, c = server_ctx(pair), server_ctx(pair), server_ctx(pair)
    tickets.install(a, key)
    tickets.install(b, key)
    reused, session = handshake(a, client)
    assert not reused
    assert handshake(b, client, session)[0], "same key: the session resumes on the other context"
    assert not handshake(c, client, session)[0], "a context with its own key cannot resume it"


def test_install_keeps_the_context_options_and_checks_the_key_length(pair):
    ctx = server_ctx(pair)
    before = ctx.options
    tickets.install(ctx, os.urandom(80))
    assert ctx.options == before
    with pytest.raises(tickets.TicketKeyUnavailable, match="80 bytes"):
        tickets.install(ctx, b"k" * 48)


def test_key_travels_through_a_sealed_memfd():
    key = tickets.new_key()
    fd = tickets.key_fd(key)
    try:
        assert tickets.read_fd(fd) == key
        with pytest.raises(OSError):
            os.pwrite(fd, b"x", 0)  # sealed: nobody can change what workers read
        assert os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_nginx_layout_is_reordered_for_openssl():
    raw = bytes(range(80))
    out = tickets.openssl_order(raw)
    assert out[:16] == raw[:16]  # name
    assert out[16:48] == raw[48:80]  # HMAC (nginx keeps it last)
    assert out[48:80] == raw[16:48]  # AES


KEY_FILE_CASES = [
    # (content, None for missing, or "dir" for a directory; mode; expected fragment)
    (None, 0o600, "cannot read"),
    ("dir", 0o700, "cannot read"),
    (b"", 0o600, "not 0"),
    (b"k" * 48, 0o600, "not 48"),  # nginx's 48-byte (AES-128) keys: OpenSSL here takes 80
    (b"k" * 79, 0o600, "not 79"),
    (b"k" * 81, 0o600, "more than 80"),
    (b"k" * 200, 0o600, "more than 80"),
]


@pytest.mark.parametrize("content,mode,fragment", KEY_FILE_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_key_files_are_refused_naming_the_file(tmp_path, content, mode, fragment):
    path = tmp_path / "ticket.key"
    if content == "dir":
        path.mkdir(mode=mode)
    elif content is not None:
        path.write_bytes(content)
        path.chmod(mode)
    with pytest.raises(tickets.TicketKeyError) as info:
        tickets.read_key_file(str(path))
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_good_key_file_is_read_in_openssl_order(tmp_path):
    raw = os.urandom(80)
    path = tmp_path / "ticket.key"
    path.write_bytes(raw)
    assert tickets.read_key_file(str(path)) == tickets.openssl_order(raw)


def test_install_refuses_an_ssl_ctx_pointer_that_does_not_answer_with_the_contexts_options(pair, monkeypatch):
    """The pointer check works: another context's SSL_CTX (other options) is refused before any write.

    The wrong pointer is a real SSL_CTX of another live context (reading a
    random address could crash the test run instead of failing it).
    """
    ctx, other = server_ctx(pair), server_ctx(pair)
    other.options |= ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_NO_RENEGOTIATION
    wrong = tickets._ctx_pointer(other)
    monkeypatch.setattr(tickets, "_ctx_pointer", lambda _ctx: wrong)
    with pytest.raises(tickets.TicketKeyUnavailable, match="does not answer with its options"):
        tickets.install(ctx, tickets.new_key())
