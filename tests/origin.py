"""A small, hostile HTTP/1.1 origin for fill tests. Run it as its own process:

    python -m tests.origin --root DIR --port P --mode MODE [--flaky-n N] [--log FILE]

It serves the files directly in DIR at ``/<name>`` (and ``/<sub>/<name>``
below DIR), with keep-alive, and misbehaves as MODE says:

    ok            correct: single byte ranges (RFC 9110 14.2), If-Range with
                  a strong ETag or the Last-Modified date (13.1.5: a stale
                  validator gets 200 with the whole file), 416 when
                  unsatisfiable
    corrupt       like ok, with one byte flipped in every 64 KiB of the body
                  (status and lengths are right; only a checksum can tell)
    truncate      Content-Length says the whole body, half is sent, then the
                  connection is closed
    500           every request gets 500
    stall         headers and the first 64 KiB, then nothing, forever
    wrong-length  200 with the file plus 4 KiB of junk, Content-Length to
                  match (a consistent response for a different file)
    flaky         the first N requests (--flaky-n, default 2) get 500, then ok
    oversize      200 without Content-Length (the body ends at close), the file
                  plus 4 KiB of junk
    redirect-loop       302 to the same path, forever
    redirect-ftp        302 to ftp://127.0.0.1/<path>
    redirect-javascript 302 to javascript:alert(1)
    redirect-malformed  302 to a Location that is not a URL (http://[::1/x)
    redirect-http       302 to http://127.0.0.1:9/<path> (with --tls-cert: a
                        downgrade from https to http)

``--tls-cert``/``--tls-key`` serve HTTPS instead of HTTP (`OriginProcess(tls=...)`).

Plain asyncio streams, no framework, so that every byte on the wire is
chosen here. ``GET /_stats`` answers a JSON object with the requests seen,
the body bytes written to sockets, and the most requests ever in flight at
once; `--log` also appends one JSON line per finished request. SIGTERM
ends the process at once. `OriginProcess` is the test-side context manager.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

REDIRECTS = {
    "redirect-loop": "{path}",
    "redirect-ftp": "ftp://127.0.0.1{path}",
    "redirect-javascript": "javascript:alert(1)",
    "redirect-malformed": "http://[::1{path}",
    "redirect-http": "http://127.0.0.1:9{path}",
}
MODES = ("ok", "corrupt", "truncate", "500", "stall", "wrong-length", "flaky", "oversize", *REDIRECTS)
CHUNK = 256 << 10
CORRUPT_EVERY = 64 << 10
STALL_AFTER = 64 << 10
JUNK = 4096
MAX_HEAD = 64 << 10


class Origin:
    def __init__(self, root: Path, mode: str, flaky_n: int, log_path: str | None):
        self.root = root.resolve()
        self.mode = mode
        self.flaky_n = flaky_n
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.requests = 0
        self.content_requests = 0
        self.bytes_sent = 0
        self.in_flight = 0
        self.max_in_flight = 0

    # ------------------------------------------------------------ connection

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                keep = await self.respond(head, writer)
                if not keep:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def respond(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            await self.simple(writer, 400, b"bad request line\n", close=True)
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        keep = headers.get("connection", "").lower() != "close"
        path = unquote(urlsplit(target).path)
        self.requests += 1
        if path == "/_stats":
            body = json.dumps({
                "requests": self.requests, "content_requests": self.content_requests,
                "bytes_sent": self.bytes_sent, "max_in_flight": self.max_in_flight, "mode": self.mode,
            }).encode() + b"\n"
            await self.simple(writer, 200, body, close=not keep, ctype="application/json")
            return keep
        self.content_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = time.time()
        record = {"path": path, "range": headers.get("range"), "if_range": headers.get("if-range"), "status": 0, "bytes": 0}
        try:
            return await self.content(method, path, headers, keep, writer, record)
        finally:
            self.in_flight -= 1
            if self.log is not None:
                record["started_s"] = started
                record["ended_s"] = time.time()
                self.log.write(json.dumps(record) + "\n")

    async def simple(self, writer: asyncio.StreamWriter, status: int, body: bytes, *, close: bool, ctype: str = "text/plain") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 416: "Range Not Satisfiable", 500: "Internal Server Error"}.get(status, "X")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n".encode("latin-1") + body
        )
        await writer.drain()

    # ------------------------------------------------------------ content

    def locate(self, path: str) -> Path | None:
        candidate = (self.root / path.lstrip("/")).resolve()
        if not str(candidate).startswith(str(self.root) + os.sep) or not candidate.is_file():
            return None
        return candidate

    async def content(self, method: str, path: str, headers: dict[str, str], keep: bool,
                      writer: asyncio.StreamWriter, record: dict) -> bool:
        if self.mode == "500" or (self.mode == "flaky" and self.content_requests <= self.flaky_n):
            record["status"] = 500
            await self.simple(writer, 500, b"origin trouble\n", close=not keep)
            return keep
        if self.mode in REDIRECTS:
            record["status"] = 302
            location = REDIRECTS[self.mode].format(path=path)
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))
            await writer.drain()
            return keep
        file = self.locate(path)
        if file is None:
            record["status"] = 404
            await self.simple(writer, 404, b"not found\n", close=not keep)
            return keep
        st = file.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end = 0, size  # [start, end)
        status = 200
        rng = headers.get("range")
        if_range = headers.get("if-range")
        if rng is not None and self.mode not in ("wrong-length", "oversize"):
            # RFC 9110 13.1.5: a validator that does not match means "send it all".
            honour = if_range is None or if_range == etag or if_range == last_modified
            parsed = parse_single_range(rng, size)
            if honour and parsed == "unsatisfiable":
                record["status"] = 416
                writer.write(
                    f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                return keep
            if honour and parsed is not None:
                start, end = parsed
                status = 206
        extra = JUNK if self.mode in ("wrong-length", "oversize") else 0
        length = end - start + extra
        lines = [
            f"HTTP/1.1 {status} {'Partial Content' if status == 206 else 'OK'}",
            "Content-Type: application/octet-stream",
            "Connection: close" if self.mode == "oversize" else f"Content-Length: {length}",
            f"ETag: {etag}",
            f"Last-Modified: {last_modified}",
            "Accept-Ranges: bytes",
        ]
        if status == 206:
            lines.append(f"Content-Range: bytes {start}-{end - 1}/{size}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        record["status"] = status
        if method == "HEAD":
            await writer.drain()
            return keep
        send_until = end
        if self.mode == "truncate":
            send_until = start + (end - start) // 2
        elif self.mode == "stall":
            send_until = min(end, start + STALL_AFTER)
        with open(file, "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < send_until:
                data = fh.read(min(CHUNK, send_until - pos))
                if not data:
                    break
                if self.mode == "corrupt":
                    data = corrupt(data, pos)
                writer.write(data)
                await writer.drain()
                pos += len(data)
                self.bytes_sent += len(data)
                record["bytes"] += len(data)
        if self.mode in ("wrong-length", "oversize"):
            writer.write(b"\0" * JUNK)
            await writer.drain()
            self.bytes_sent += JUNK
            record["bytes"] += JUNK
        if self.mode in ("truncate", "oversize"):
            writer.transport.close()  # FIN: after half the promised body, or the end of an undelimited one
            return False
        if self.mode == "stall":
            await asyncio.sleep(24 * 3600)  # headers and a little body, then silence
            return False
        return keep


def parse_single_range(value: str, size: int) -> tuple[int, int] | str | None:
    """A half-open [start, end) for one 'bytes=' range, 'unsatisfiable', or None (ignore the header)."""
    if not value.startswith("bytes=") or "," in value:
        return None
    first, sep, last = value[6:].strip().partition("-")
    if not sep:
        return None
    if first == "":
        if not last.isdigit() or int(last) == 0:
            return "unsatisfiable" if last == "0" else None
        n = min(int(last), size)
        return (size - n, size) if size else "unsatisfiable"
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


def corrupt(data: bytes, offset: int) -> bytes:
    """Flip one byte at every absolute offset that is a multiple of CORRUPT_EVERY (plus 7)."""
    buf = bytearray(data)
    for pos in range(offset + (7 - offset) % CORRUPT_EVERY, offset + len(buf), CORRUPT_EVERY):
        buf[pos - offset] ^= 0xFF
    return bytes(buf)


async def serve(args: argparse.Namespace) -> None:
    origin = Origin(Path(args.root), args.mode, args.flaky_n, args.log)
    ctx = None
    if args.tls_cert:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    server = await asyncio.start_server(origin.handle, "127.0.0.1", args.port, limit=MAX_HEAD, reuse_address=True, ssl=ctx)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.origin", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=MODES, default="ok")
    p.add_argument("--flaky-n", type=int, default=2, help="requests answered 500 in 'flaky' mode before it behaves")
    p.add_argument("--log", help="append one JSON line per finished content request")
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM chain (and --tls-key)")
    p.add_argument("--tls-key")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------- test side


class OriginProcess:
    """`with OriginProcess(root, port, "corrupt") as o:` — tests.origin as a subprocess."""

    def __init__(self, root: str | os.PathLike, port: int, mode: str = "ok", *, flaky_n: int = 2, log: str | os.PathLike | None = None,
                 tls: tuple[os.PathLike, os.PathLike] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.root = Path(root)
        self.port = port
        self.mode = mode
        self.flaky_n = flaky_n
        self.log = log
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"

    def url(self, relpath: str) -> str:
        return f"{self.base}/{relpath.lstrip('/')}"

    def start(self, timeout_s: float = 10.0) -> "OriginProcess":
        argv = [sys.executable, "-m", "tests.origin", "--root", str(self.root), "--port", str(self.port),
                "--mode", self.mode, "--flaky-n", str(self.flaky_n)]
        if self.log:
            argv += ["--log", str(self.log)]
        if self.tls:
            argv += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        self.proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tests.origin ({self.mode}) did not start on port {self.port}")
                time.sleep(0.02)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url("_stats"), timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> "OriginProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    main()
