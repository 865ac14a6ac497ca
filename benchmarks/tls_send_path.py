#!/usr/bin/env python3
"""TLS send paths without kernel TLS: server CPU per GB of body, memory BIO against SSL on the socket.

Run: ``.venv/bin/python benchmarks/tls_send_path.py [--rounds 4] [--mib 512] [--block-kib 64]``.

Rules kept here:
- Every figure is measured in this run. One server process sends `--mib`
  MiB of the same 64 KiB block (`--block-kib`) over one loopback TLS 1.3
  connection (ECDSA P-256, a throwaway CA) to a client process that reads
  and discards; the figure is the server process's CPU time (user + system)
  per GB sent. The paths run one after the other, alternating order by
  round, and the ratios to `membio` are of the medians.
- Paths:
  - `membio`: what uvloop's and asyncio's TLS transports do, and so what
    oca's HTTPS send path does: `SSLObject.write(block)` into a memory BIO,
    then one `send` of everything it holds. Two copies more than nginx
    (record buffer to BIO, BIO to a bytes object) and a zero-fill of the
    BIO's new bytes, but one send per block.
  - `socket`: an `ssl.SSLSocket` on the descriptor (the seam kernel TLS
    needs): OpenSSL writes each 16 KiB record with its own `write`, as nginx
    does. No extra copy, four sends per 64 KiB block.
  - `buffered`: `socket`, with OpenSSL's buffering BIO (`BIO_f_buffer`,
    set through ctypes) in front of the socket and a flush per block: one
    send per block, but a copy into the buffer again.
- Measured on this 2-core box (shared, load average 8-14, two runs):
  `socket` 1.07x and 1.06x, `buffered` 1.16x and 1.02x the CPU per GB of
  `membio`: neither is a gain, which is why the HTTPS
  send path keeps the transports' memory BIO (oca.http.tlsconn), and why
  its remaining gap to nginx at 2 MiB ranges (about 7% of worker CPU in
  those copies and the zero-fill, by `perf`) waits for kernel TLS.
- Bounded and clean: loopback only, one client at a time, killed on error;
  the temp dir is removed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tlscerts import make_ca, make_leaf  # noqa: E402

CLIENT = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="localhost")
buf = bytearray(1 << 20)
while s.recv_into(buf):
    pass
"""
PATHS = ("membio", "socket", "buffered")
BIO_C_SET_BUFF_SIZE = 117
BIO_CTRL_FLUSH = 11


def _libs():
    maps = Path("/proc/self/maps").read_text().splitlines()
    path = lambda name: next(x.split()[-1] for x in maps if f"/{name}.so" in x)  # noqa: E731
    lib, crypto = ctypes.CDLL(path("libssl")), ctypes.CDLL(path("libcrypto"))
    vp = ctypes.c_void_p
    lib.SSL_get_wbio.restype, lib.SSL_get_wbio.argtypes = vp, [vp]
    lib.SSL_set0_wbio.restype, lib.SSL_set0_wbio.argtypes = None, [vp, vp]
    crypto.BIO_f_buffer.restype = vp
    crypto.BIO_new.restype, crypto.BIO_new.argtypes = vp, [vp]
    crypto.BIO_push.restype, crypto.BIO_push.argtypes = vp, [vp, vp]
    crypto.BIO_up_ref.argtypes = [vp]
    crypto.BIO_ctrl.restype, crypto.BIO_ctrl.argtypes = ctypes.c_long, [vp, ctypes.c_int, ctypes.c_long, vp]
    crypto.BIO_int_ctrl.restype, crypto.BIO_int_ctrl.argtypes = ctypes.c_long, [vp, ctypes.c_int, ctypes.c_long, ctypes.c_int]
    return lib, crypto


def send(path: str, ctx: ssl.SSLContext, ca: Path, block: bytearray, total: int) -> float:
    """Server CPU seconds per GB for `total` bytes sent by `path`."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(lst.getsockname()[1]), str(ca)])
    try:
        conn, _ = lst.accept()
        lst.close()
        view = memoryview(block)
        if path == "membio":
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if out := outgoing.read():
                        conn.sendall(out)
                    incoming.write(conn.recv(65536))
            if out := outgoing.read():
                conn.sendall(out)
            t0, sent = time.process_time(), 0
            while sent < total:
                obj.write(view)
                conn.sendall(outgoing.read())
                sent += len(view)
            cpu = time.process_time() - t0
            conn.close()
        else:
            s = ctx.wrap_socket(conn, server_side=True)
            buffered = None
            if path == "buffered":
                lib, crypto = _libs()
                inner = s._sslobj  # PySSLSocket: {PyObject_HEAD; PyObject *Socket; SSL *ssl; ...}
                ssl_ptr = ctypes.c_void_p.from_address(id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)).value
                sock_bio = lib.SSL_get_wbio(ssl_ptr)
                crypto.BIO_up_ref(sock_bio)  # it stays the read BIO too
                buffered = crypto.BIO_new(crypto.BIO_f_buffer())
                crypto.BIO_int_ctrl(buffered, BIO_C_SET_BUFF_SIZE, len(view) + 4096, 1)
                crypto.BIO_push(buffered, sock_bio)
                lib.SSL_set0_wbio(ssl_ptr, buffered)
            t0, sent = time.process_time(), 0
            while sent < total:
                s.sendall(view)
                if buffered is not None:
                    crypto.BIO_ctrl(buffered, BIO_CTRL_FLUSH, 0, None)
                sent += len(view)
            cpu = time.process_time() - t0
            s.close()
        cli.wait(60)
        return cpu / (total / 1e9)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--mib", type=int, default=512, help="MiB sent per run")
    p.add_argument("--block-kib", type=int, default=64)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tls-send-path-"))
    try:
        ca = make_ca(base)
        crt, key = make_leaf(ca, base, "leaf", "ecdsa")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        block = bytearray(os.urandom(args.block_kib * 1024))
        runs: dict[str, list[float]] = {x: [] for x in PATHS}
        for r in range(args.rounds):
            for path in PATHS if r % 2 == 0 else PATHS[::-1]:
                runs[path].append(send(path, ctx, ca.path, block, args.mib << 20))
        print(f"TLS 1.3 (ECDSA P-256) sends of {args.block_kib} KiB blocks, {args.mib} MiB per run, {args.rounds} rounds "
              f"alternating; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}:")
        print("| path | server CPU s/GB (median) | runs | ratio to membio |")
        print("|---|---|---|---|")
        ref = statistics.median(runs["membio"])
        for path, values in runs.items():
            med = statistics.median(values)
            print(f"| {path} | {med:.3f} | {' '.join(f'{x:.3f}' for x in values)} | {med / ref:.3f} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
