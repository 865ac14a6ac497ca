"""xxh3-128, the content checksum used everywhere (index, ETag, manifest).

Files are hashed in 4 MiB reads: xxhash releases the GIL above 64 KiB per
call and streams at tens of GB/s with large chunks (STACK-NOTES), so the
disk, not the hash, sets the pace.
"""

from __future__ import annotations

import xxhash

HASH_CHUNK_BYTES = 4 << 20


def hash_file(path: str) -> tuple[str, int]:
    """(xxh3-128 hex digest, size in bytes) of a file."""
    h = xxhash.xxh3_128()
    size = 0
    buf = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size
