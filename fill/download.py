"""One verified, resumable download into a store's partial directory.

Rules kept here:
- A download lives in `<store>/partial/<id>@<checksum>.part` with a sidecar
  `.part.json` that records the checkpoint: the byte count known to be
  fsynced. The data is fsynced and the sidecar replaced atomically often
  enough that received bytes not yet covered by a checkpoint (the unsynced
  tail, the batch being written, the batch in memory) stay under
  `CHECKPOINT_BYTES` (8 MiB), so after a crash or a kill -9 at most 8 MiB
  already had is fetched again. A clean stop (the window's end, the budget,
  SIGTERM) first waits for the write in progress, writes the batch in
  memory and checkpoints, so it loses nothing it had.
- Resuming truncates to the checkpoint, re-hashes those bytes from disk (no
  network), and asks for the rest with `Range`; with the same source it
  sends the validator it saw in `If-Range`, so a changed file answers 200
  and the download starts over.
- The checksum is computed while streaming (in the writer thread, with the
  write). Only a file whose size and xxh3-128 match the manifest is handed
  to the store's atomic publish; a mismatch deletes the partial. A resumed
  download is hashed again from disk before it is handed over: the streamed
  hash vouches for the bytes as they passed, not for the file.
- What a source answers is judged by `fill.resume.resume_action` (status,
  Content-Range, Content-Length) before a byte is written; nothing is
  written before `on_answer` (where the agent makes room) has returned.
- Disk writes, hashing and checkpoints go to a worker thread in batches of
  WRITE_BATCH, so the event loop only moves network buffers. One batch is
  written while the next is received (at most one write in flight per
  download, so they stay in order): waiting for each write and its fsync
  left a single download at 0.7x curl's speed (benchmarks/fill.py). A batch
  is the list of buffers as aiohttp handed them over, written with one
  `writev`: gathering them into a bytearray first cost a copy of every byte
  on the event loop.
- Every failure of the source (status, length, truncation, stall, a
  redirect loop or to another scheme, a malformed answer) is a
  `SourceError` naming the source and the cause, so the agent can retry,
  escalate to the next source, and report; store-side failures are
  `DiskFullError` or the OSError itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp
import xxhash

from fill.errors import ChecksumMismatch, DiskFullError, FillError, SourceError
from fill.fetch import MAX_REDIRECTS, tls_reason
from fill.manifest import ManifestFile
from fill.resume import FAIL, RESTART, resume_action

__all__ = ["ChecksumMismatch", "DiskFullError", "SourceError", "Partial", "Writer", "download"]

CHECKPOINT_BYTES = 8 << 20
WRITE_BATCH = 1 << 20
READ_CHUNK = 256 << 10  # the most one network read hands over (asyncio reads 256 KiB)
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
# Received bytes not covered by a checkpoint are the file's unsynced tail,
# the batch the thread is writing and the batch filling in memory (each under
# WRITE_BATCH + READ_CHUNK); syncing once the tail reaches this keeps them
# all under CHECKPOINT_BYTES.
SYNC_AFTER_BYTES = CHECKPOINT_BYTES - 2 * (WRITE_BATCH + READ_CHUNK)


_CONNECT_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", ())  # aiohttp >= 3.10


@dataclass
class Partial:
    data_path: str
    meta_path: str
    checkpoint: int = 0
    validator: str | None = None
    source: str | None = None

    @classmethod
    def at(cls, partial_dir: str, f: ManifestFile) -> "Partial":
        base = os.path.join(partial_dir, f"{f.content_id}@{f.checksum}.part")
        p = cls(base, base + ".json")
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            with open(p.meta_path, encoding="utf-8") as fh:
                doc = json.load(fh)
            p.checkpoint = int(doc["checkpoint"])
            p.validator = doc.get("validator")
            p.source = doc.get("source")
        if p.checkpoint and not os.path.exists(p.data_path):
            p.checkpoint = 0
        return p

    def save(self) -> None:
        tmp = self.meta_path + ".new"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"checkpoint": self.checkpoint, "validator": self.validator, "source": self.source, "saved_s": time.time()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.meta_path)
        except OSError:
            # A full disk fails the sidecar too: no .new is left behind.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def discard(self) -> None:
        # .new: a sidecar whose save was cut short (kill -9, full disk).
        for path in (self.data_path, self.meta_path, self.meta_path + ".new"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class Writer:
    """Appends to the partial file and hashes, in a thread."""

    def __init__(self, partial: Partial, f: ManifestFile):
        self.partial = partial
        self.f = f
        self.hasher = xxhash.xxh3_128()
        self.size = 0
        self.fd = -1
        self.synced = 0

    def open_resumed(self) -> int:
        """Open, truncate to the checkpoint and re-hash what is kept. Returns the offset."""
        p = self.partial
        self.fd = os.open(p.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        keep = min(p.checkpoint, os.fstat(self.fd).st_size, self.f.size)
        os.ftruncate(self.fd, keep)
        buf = bytearray(WRITE_BATCH)
        view = memoryview(buf)
        pos = 0
        while pos < keep:
            n = os.preadv(self.fd, [view[: min(len(buf), keep - pos)]], pos)
            if n <= 0:
                break
            self.hasher.update(view[:n])
            pos += n
        self.size = pos
        self.synced = pos
        os.lseek(self.fd, pos, os.SEEK_SET)
        return pos

    def hash_from_disk(self) -> str:
        """The xxh3-128 of the file as it is on disk now (not as it was streamed)."""
        hasher = xxhash.xxh3_128()
        buf = bytearray(WRITE_BATCH)
        view = memoryview(buf)
        pos = 0
        while True:
            n = os.preadv(self.fd, [view], pos)
            if n <= 0:
                break
            hasher.update(view[:n])
            pos += n
        return hasher.hexdigest()

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.hasher = xxhash.xxh3_128()
        self.size = 0
        self.synced = 0
        self.partial.checkpoint = 0

    def write(self, chunks: list[bytes]) -> None:
        views = [memoryview(c) for c in chunks if c]
        total = sum(len(v) for v in views)
        try:
            first = 0
            while first < len(views):
                n = os.writev(self.fd, views[first : first + IOV_MAX])
                while first < len(views) and n >= len(views[first]):
                    n -= len(views[first])
                    first += 1
                if n:
                    views[first] = views[first][n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full writing {self.partial.data_path}") from exc
            raise
        for c in chunks:
            self.hasher.update(c)
        self.size += total
        if self.size - self.synced >= SYNC_AFTER_BYTES:
            try:
                self.checkpoint()
            except OSError as exc:
                # The sidecar can be what meets the full disk: that is a
                # full disk for this file, like a failed data write.
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(f"disk full checkpointing {self.partial.data_path}") from exc
                raise

    def checkpoint(self) -> None:
        os.fsync(self.fd)
        self.synced = self.size
        self.partial.checkpoint = self.size
        self.partial.save()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def download(
    session: aiohttp.ClientSession,
    url: str,
    f: ManifestFile,
    partial: Partial,
    *,
    throttle: Callable[[int], "asyncio.Future | None"],
    on_bytes: Callable[[int], None],
    read_timeout_s: float,
    on_answer: Callable[[int], Awaitable[None]] | None = None,
) -> str:
    """Fetch `url` into `partial`, resuming; verify; return the checksum. Raises SourceError.

    `on_answer(offset)` is awaited once the source has answered as
    `resume_action` wants and its first body bytes are in, before anything
    is written; what it raises ends the download (the agent makes room
    there, and refuses when it may not).
    """
    loop = asyncio.get_running_loop()
    writer = Writer(partial, f)
    await loop.run_in_executor(None, writer.open_resumed)
    batch: list[bytes] = []  # received, not yet handed to the writer thread
    batch_bytes = 0
    pending: asyncio.Future | None = None  # a write running in the worker thread
    resumed_from = writer.size
    try:
        offset = writer.size
        headers = {"Accept-Encoding": "identity"}
        if 0 < offset < f.size:
            headers["Range"] = f"bytes={offset}-"
            if partial.validator and partial.source == url:
                headers["If-Range"] = partial.validator
        elif offset >= f.size and f.size > 0:
            # Everything is on disk already (open_resumed hashed it from disk); just verify it.
            return await _verify(writer, f, url, loop)
        elif on_answer is not None and f.size == 0:
            await on_answer(0)
        try:
            async with session.get(url, headers=headers, max_redirects=MAX_REDIRECTS,
                                   timeout=aiohttp.ClientTimeout(total=None, sock_connect=read_timeout_s, sock_read=read_timeout_s)) as resp:
                length = resp.content_length
                action = resume_action(resp.status, resp.headers.get("Content-Range"), length, offset, f.size)
                if action.kind == FAIL:
                    if action.start_over:
                        await loop.run_in_executor(None, writer.restart)
                        resumed_from = 0
                    raise SourceError(url, action.reason, retry=action.retry)
                if action.kind == RESTART:
                    await loop.run_in_executor(None, writer.restart)
                    offset = resumed_from = 0
                partial.validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                partial.source = url
                received = offset  # the thread updates writer.size; this loop counts its own
                answered = on_answer is None or f.size == 0
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    if received + len(chunk) > f.size:
                        raise SourceError(url, f"sent more than the {f.size} bytes expected", retry=False)
                    if not answered:
                        answered = True
                        await on_answer(offset)
                    received += len(chunk)
                    batch.append(chunk)
                    batch_bytes += len(chunk)
                    on_bytes(len(chunk))
                    wait = throttle(len(chunk))
                    if wait is not None:
                        await wait
                    if batch_bytes >= WRITE_BATCH:
                        if pending is not None:
                            # Shielded: a cancelled download waits for this write in
                            # `finally` rather than closing the file under the thread.
                            await asyncio.shield(pending)
                        data, batch, batch_bytes = batch, [], 0
                        pending = loop.run_in_executor(None, writer.write, data)
                if pending is not None:
                    await asyncio.shield(pending)
                    pending = None
                if batch:
                    data, batch, batch_bytes = batch, [], 0
                    pending = loop.run_in_executor(None, writer.write, data)
                    await asyncio.shield(pending)
                    pending = None
        except FillError:
            raise
        except aiohttp.ClientPayloadError as exc:
            raise SourceError(url, f"truncated body: {exc}") from None
        except (aiohttp.TooManyRedirects, aiohttp.RedirectClientError, aiohttp.InvalidURL) as exc:
            # A redirect loop, or a redirect to another scheme or a malformed URL:
            # this source will answer the same again.
            raise SourceError(url, f"bad redirect: {type(exc).__name__}: {str(exc)[:200]}", retry=False) from None
        except aiohttp.ClientSSLError as exc:
            # The certificate does not verify against fill.ca_file, or no TLS
            # at all: asking again gets the same answer. Never retried unverified.
            raise SourceError(url, tls_reason(exc) or str(exc), retry=False) from None
        except aiohttp.ClientError as exc:
            # aiohttp's read timeout (SocketTimeoutError) is a ClientConnectionError
            # and an asyncio.TimeoutError: a stall, unless it was the connect.
            if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, _CONNECT_TIMEOUT):
                raise SourceError(url, f"stalled: nothing received for {read_timeout_s:g} s") from None
            raise SourceError(url, f"{type(exc).__name__}: {str(exc)[:200]}") from None
        except asyncio.TimeoutError:
            raise SourceError(url, f"stalled: nothing received for {read_timeout_s:g} s") from None
        except ValueError as exc:
            # yarl and aiohttp raise bare ValueError for some unparsable answers (a Location that is not a URL).
            raise SourceError(url, f"unusable answer: {type(exc).__name__}: {str(exc)[:200]}", retry=False) from None
        if writer.size != f.size:
            raise SourceError(url, f"truncated: {writer.size} of {f.size} bytes")
        if resumed_from > 0:
            # The streamed hash covers what open_resumed read and what this run
            # wrote, not what the file holds now: check the file itself.
            return await _verify_from_disk(writer, f, url, loop)
        return await _verify(writer, f, url, loop)
    finally:
        # Keep what we have for resuming (the window's end, the budget, SIGTERM,
        # a source failure): let the thread's write finish, write what is still
        # in memory, checkpoint; never close the file under the thread.
        written = True
        if pending is not None:
            try:
                await pending
            except Exception:
                written = False  # the file may hold part of it: append nothing after
        if written and batch and writer.fd >= 0 and writer.size + batch_bytes <= f.size:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, writer.write, batch)
        with contextlib.suppress(OSError):
            if writer.fd >= 0 and writer.size > writer.synced and writer.size <= f.size:
                await asyncio.shield(loop.run_in_executor(None, writer.checkpoint))
        writer.close()


async def _verify(writer: Writer, f: ManifestFile, url: str, loop: asyncio.AbstractEventLoop) -> str:
    digest = writer.hasher.hexdigest()
    if digest != f.checksum:
        writer.close()
        await loop.run_in_executor(None, writer.partial.discard)
        raise ChecksumMismatch(url, f"checksum mismatch: got {digest}, manifest says {f.checksum}", retry=True)
    return digest


async def _verify_from_disk(writer: Writer, f: ManifestFile, url: str, loop: asyncio.AbstractEventLoop) -> str:
    digest = await loop.run_in_executor(None, writer.hash_from_disk)
    if digest != f.checksum:
        writer.close()
        await loop.run_in_executor(None, writer.partial.discard)
        raise ChecksumMismatch(url, f"checksum mismatch on disk after resuming: got {digest}, manifest says {f.checksum}", retry=True)
    return digest
