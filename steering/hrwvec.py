"""Rendezvous hashes of one content id for many appliances at once: `oca.rendezvous` in numpy.

Nothing here performs I/O. Rules kept here:
- `xxh3_many(prefixes, content_id)` is XXH3-64 (seed 0, the default
  secret) of `prefix + content_id` for every row of `prefixes`, equal to
  `xxhash.xxh3_64_intdigest` (tests/unit/test_hrwvec.py checks every
  length class against it). Inputs of 9 to 240 bytes are computed as
  arrays; other lengths (an id of 1-2 characters with a 6-character
  appliance id, or over 240 bytes in all) one by one with `xxhash`.
- `Registry.holder_order` orders appliances as `ranking.holder_order` does
  (tier, then rendezvous score highest first, then id), from their hashes:
  a popular file's 20,000 holders cost about a millisecond, where one
  `hrw_score` each cost 20.
- Scores use numpy's `log`, which may differ from `math.log` in the last
  bit; two holders whose scores are that close (about one pair in 10^15)
  could swap places. With equal weights the order is that of the hashes,
  exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xxhash

# XXH3's default secret, the bytes the inputs up to 240 bytes read (the reference's kSecret[0:152]).
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49")
_P64_1 = np.uint64(0x9E3779B185EBCA87)
_MX1 = np.uint64(0x165667919E3779F9)
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _secret64(at: int) -> np.uint64:
    return np.uint64(int.from_bytes(_SECRET[at : at + 8], "little"))


def _read64(rows: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(rows[:, at : at + 8]).view("<u8").ravel()


def _fold(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 128-bit product of a and b, its halves xored (XXH3_mul128_fold64), in 32-bit pieces."""
    a_lo, a_hi = a & _M32, a >> _S32
    b_lo, b_hi = b & _M32, b >> _S32
    ll, hl, lh, hh = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (ll >> _S32) + (hl & _M32) + lh
    upper = (hl >> _S32) + (cross >> _S32) + hh
    lower = (cross << _S32) | (ll & _M32)
    return lower ^ upper


def _avalanche(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(37))
    h = h * _MX1
    return h ^ (h >> _S32)


def _mix16(rows: np.ndarray, at: int, secret_at: int) -> np.ndarray:
    return _fold(_read64(rows, at) ^ _secret64(secret_at), _read64(rows, at + 8) ^ _secret64(secret_at + 8))


def _xxh3_rows(rows: np.ndarray) -> np.ndarray:
    """XXH3-64 of each row of a (m, n) uint8 array, 9 <= n <= 240."""
    n = rows.shape[1]
    with np.errstate(over="ignore"):
        if n <= 16:
            lo = _read64(rows, 0) ^ (_secret64(24) ^ _secret64(32))
            hi = _read64(rows, n - 8) ^ (_secret64(40) ^ _secret64(48))
            swapped = lo.byteswap()
            acc = np.uint64(n) + swapped + hi + _fold(lo, hi)
            return _avalanche(acc)
        acc = np.full(len(rows), np.uint64(n) * _P64_1, dtype=np.uint64)
        if n <= 128:
            if n > 32:
                if n > 64:
                    if n > 96:
                        acc += _mix16(rows, 48, 96)
                        acc += _mix16(rows, n - 64, 112)
                    acc += _mix16(rows, 32, 64)
                    acc += _mix16(rows, n - 48, 80)
                acc += _mix16(rows, 16, 32)
                acc += _mix16(rows, n - 32, 48)
            acc += _mix16(rows, 0, 0)
            acc += _mix16(rows, n - 16, 16)
            return _avalanche(acc)
        for i in range(8):
            acc += _mix16(rows, 16 * i, 16 * i)
        acc = _avalanche(acc)
        for i in range(8, n // 16):
            acc += _mix16(rows, 16 * i, 16 * (i - 8) + 3)
        acc += _mix16(rows, n - 16, 136 - 17)
        return _avalanche(acc)


class Registry:
    """The appliances' "<id>\\0" prefixes as byte matrices per length, their tiers, weights and id order: made once."""

    def __init__(self, ids: Sequence[str], tiers: Sequence[int], weights: Sequence[float]):
        self.n = len(ids)
        self.tiers = np.array(tiers, dtype=np.int64)
        self.weights = np.array(weights, dtype=np.float64)
        self.equal_weights = bool(self.n == 0 or np.all(self.weights == self.weights[0]))
        self.id_rank = np.empty(self.n, dtype=np.int64)
        self.id_rank[sorted(range(self.n), key=ids.__getitem__)] = np.arange(self.n)
        prefixes = [f"{a}\0".encode("ascii") for a in ids]
        self.length = np.array([len(p) for p in prefixes], dtype=np.int64)
        self.rows: dict[int, np.ndarray] = {}  # prefix length → (n, length) uint8, rows of other lengths unused
        for plen in set(self.length.tolist()):
            m = np.zeros((self.n, plen), dtype=np.uint8)
            for i in np.flatnonzero(self.length == plen).tolist():
                m[i] = np.frombuffer(prefixes[i], dtype=np.uint8)
            self.rows[plen] = m
        self.prefixes = prefixes

    def hashes(self, which: np.ndarray, content_id: str) -> np.ndarray:
        """XXH3-64 of "<id>\\0<content id>" for the appliances `which` (indexes)."""
        tail = np.frombuffer(content_id.encode("ascii"), dtype=np.uint8)
        out = np.empty(len(which), dtype=np.uint64)
        lengths = self.length[which]
        for plen, m in self.rows.items():
            pos = np.flatnonzero(lengths == plen)
            if not len(pos):
                continue
            n = plen + len(tail)
            sel = which[pos]
            if 9 <= n <= 240:
                rows = np.empty((len(sel), n), dtype=np.uint8)
                rows[:, :plen] = m[sel]
                rows[:, plen:] = tail
                out[pos] = _xxh3_rows(rows)
            else:
                out[pos] = [xxhash.xxh3_64_intdigest(self.prefixes[i] + tail.tobytes()) for i in sel.tolist()]
        return out

    def holder_order(self, which: np.ndarray, content_id: str) -> np.ndarray:
        """`which` (appliance indexes) in `ranking.holder_order`: tier, score (highest first), id."""
        if len(which) == 0:
            return which
        h = self.hashes(which, content_id)
        if self.equal_weights:
            key = ~h  # equal weights: the score grows with the hash; lexsort is ascending
        else:
            u = (h.astype(np.float64) + 0.5) / float(1 << 64)
            key = self.weights[which] / np.log(u)  # -score
        return which[np.lexsort((self.id_rank[which], key, self.tiers[which]))]


def xxh3_many(prefixes: Sequence[bytes], content_id: str) -> np.ndarray:
    """XXH3-64 of `prefix + content_id` (ASCII) for each prefix, as uint64."""
    tail = content_id.encode("ascii")
    out = np.empty(len(prefixes), dtype=np.uint64)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        by_length.setdefault(len(p), []).append(i)
    for plen, members in by_length.items():
        n = plen + len(tail)
        if 9 <= n <= 240:
            rows = np.frombuffer(b"".join(prefixes[i] + tail for i in members), dtype=np.uint8).reshape(len(members), n)
            out[members] = _xxh3_rows(rows)
        else:
            out[members] = [xxhash.xxh3_64_intdigest(prefixes[i] + tail) for i in members]
    return out
