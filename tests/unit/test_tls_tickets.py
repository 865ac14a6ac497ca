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
    tickets.install(a, [key])
    tickets.install(b, [key])
    reused, session = handshake(a, client)
    assert not reused
    assert handshake(b, client, session)[0], "same key: the session resumes on the other context"
    assert not handshake(c, client, session)[0], "a context with its own key cannot resume it"


def test_install_keeps_the_context_options_and_checks_the_key_length(pair):
    ctx = server_ctx(pair)
    before = ctx.options
    tickets.install(ctx, [os.urandom(80)])
    assert ctx.options == before
    with pytest.raises(tickets.TicketKeyUnavailable, match="80 bytes"):
        tickets.install(ctx, [b"k" * 48])


def test_keys_travel_through_a_sealed_memfd():
    keys = (tickets.new_key(), tickets.new_key(), tickets.new_key())
    fd = tickets.keys_fd(keys)
    try:
        assert tickets.read_fd(fd) == keys
        with pytest.raises(OSError):
            os.pwrite(fd, b"x", 0)  # sealed: nobody can change what workers read
        assert os.get_inheritable(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size,held", [(0, "0"), (79, "79"), (81, "81"), (80 * (tickets.MAX_KEYS + 1), "more than 1280")])
def test_a_descriptor_not_holding_whole_keys_is_refused(size, held):
    fd = os.memfd_create("bad")
    try:
        os.write(fd, b"k" * size)
        with pytest.raises(tickets.TicketKeyUnavailable, match=f"held {held} bytes"):
            tickets.read_fd(fd)
    finally:
        os.close(fd)


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


def test_good_key_file_goes_to_openssl_as_read(tmp_path):
    """nginx's 80-byte layout (name, HMAC, AES: ngx_ssl_session_ticket_keys) is OpenSSL's SET_TLSEXT_TICKET_KEYS order."""
    raw = os.urandom(80)
    path = tmp_path / "ticket.key"
    path.write_bytes(raw)
    assert tickets.read_key_file(str(path)) == raw


def test_key_files_are_read_in_order_and_a_shared_key_name_is_refused(tmp_path):
    a, b, c = tmp_path / "a.key", tmp_path / "b.key", tmp_path / "c.key"
    a.write_bytes(ka := os.urandom(80))
    b.write_bytes(kb := os.urandom(80))
    c.write_bytes(ka[:16] + os.urandom(64))
    assert tickets.read_key_files([str(b), str(a)]) == (kb, ka)
    with pytest.raises(tickets.TicketKeyError) as info:
        tickets.read_key_files([str(a), str(b), str(c)])
    assert info.value.path == str(c) and str(a) in str(info.value) and "key name" in str(info.value)


# ---------------------------------------------------------------- rotation: the first key encrypts, the others decrypt


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_a_ticket_under_a_previous_key_resumes_is_renewed_and_dies_with_its_key(pair, version):
    client = ssl.create_default_context(cafile=str(pair[0]))
    client.minimum_version = client.maximum_version = version
    key_a, key_b = tickets.new_key(), tickets.new_key()
    only_a, b_then_a, only_b = server_ctx(pair), server_ctx(pair), server_ctx(pair)
    tickets.install(only_a, [key_a])
    tickets.install(b_then_a, [key_b, key_a])
    tickets.install(only_b, [key_b])
    _, under_a = handshake(only_a, client)
    reused, renewed = handshake(b_then_a, client, under_a)
    assert reused, "a ticket under the previous key A resumes while A is still listed"
    assert handshake(only_b, client, renewed)[0], "the ticket it got back was issued under the current key B"
    assert not handshake(only_b, client, under_a)[0], "once A is dropped its tickets no longer resume"
    assert handshake(only_a, client, handshake(b_then_a, client)[1])[0] is False, "new tickets are never issued under A"
    assert b_then_a._oca_ticket_keys.failures == 0


def test_several_keys_with_tickets_off_install_without_a_trial(pair):
    ctx = server_ctx(pair)
    ctx.options |= ssl.OP_NO_TICKET
    tickets.install(ctx, [tickets.new_key(), tickets.new_key()])


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
        tickets.install(ctx, [tickets.new_key()])


# ---------------------------------------------------------------- what a worker reports


def _share(ctx, keys, capsys):
    """oca.server.worker.Worker._share_tickets on a real context and a real sealed memfd of `keys`."""
    from types import SimpleNamespace

    from oca.server.worker import Worker

    fake = SimpleNamespace(args=SimpleNamespace(ticket_key_fd=tickets.keys_fd(keys), slot=0))
    got = Worker._share_tickets(fake, ctx)
    assert fake.args.ticket_key_fd == -1  # the descriptor is closed once read
    return got, capsys.readouterr().err


def test_worker_reports_every_key_decrypting(pair, capsys):
    (shared, keys), _ = _share(server_ctx(pair), (tickets.new_key(), tickets.new_key()), capsys)
    assert shared == "shared" and keys == {"configured": 2, "decrypting": 2, "status": "ok"}


def test_worker_falls_back_to_the_first_key_when_the_callback_cannot_be_installed(pair, capsys, monkeypatch):
    """The callback refused (here: a forced refusal, as on a libssl without it): the first key still serves, and says why."""
    def refuse(*_a):
        raise tickets.TicketKeyUnavailable("libssl has no SSL_CTX_set_tlsext_ticket_key_evp_cb")

    monkeypatch.setattr(tickets, "_install_callback", refuse)
    first = tickets.new_key()
    ctx = server_ctx(pair)
    (shared, keys), err = _share(ctx, (first, tickets.new_key()), capsys)
    assert shared == "shared" and keys["decrypting"] == 1 and keys["configured"] == 2
    assert keys["status"].startswith("previous keys ignored: libssl has no") and "will not resume" in err
    client = ssl.create_default_context(cafile=str(pair[0]))
    only_first = server_ctx(pair)
    tickets.install(only_first, [first])
    assert handshake(only_first, client, handshake(ctx, client)[1])[0], "tickets are issued under the first key"
