"""The token bucket (fill/ratelimit.py), driven by a simulated clock.

Pure: every call gets `now_s`; consumers "sleep" by adding the returned wait.
A read is let through when it happens; `take` is called after it with its
size (as fill/download.py does), and the next read waits the returned time.
"""

from __future__ import annotations

import heapq
import random

import pytest

from fill.ratelimit import TokenBucket

MBPS = 1e6  # bits per second in one Mb/s, as rate_limit_mbps
KIB = 1024
MIB = 1024 * 1024
CHUNKS = (1, 1500, 16 * KIB, 64 * KIB, 100_000, 256 * KIB, 1 * MIB)  # READ_CHUNK is 1 MiB


def greedy(bucket: TokenBucket, start_s: float, stop_s: float, sizes, log: list[tuple[float, int]]) -> float:
    """Read as fast as the bucket allows from start_s until stop_s; return the time it stopped."""
    t = start_s
    for n in sizes:
        if t >= stop_s:
            break
        log.append((t, n))
        t += bucket.take(n, t)
    return t


def random_sizes(seed: int):
    rng = random.Random(seed)
    while True:
        yield rng.choice(CHUNKS)


def fixed_sizes(n: int):
    while True:
        yield n


def bytes_between(log, a: float, b: float) -> int:
    return sum(n for t, n in log if a <= t < b)


# --- no limit, units, start ------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [0, 1, MIB, 10**12])
@pytest.mark.parametrize("now", [0.0, 5.0, 1e9])
def test_without_a_limit_nothing_ever_waits(nbytes, now):
    bucket = TokenBucket(None, 0.0)
    assert bucket.take(nbytes, now) == 0.0
    assert bucket.take(nbytes, now) == 0.0


# (rate in bits/s, bytes taken at the start, wait in seconds)
START_CASES = [
    (8 * MBPS, 1_000_000, 1.0),  # 8 Mb/s is 1 MB/s
    (8 * MBPS, 1, 1e-6),
    (100 * MBPS, 12_500_000, 1.0),
    (100 * MBPS, 1 * MIB, MIB / 12.5e6),
    (1000 * MBPS, 125_000_000, 1.0),
]


@pytest.mark.parametrize("rate_bps,nbytes,wait", START_CASES)
def test_starts_empty_so_the_first_read_is_paid_for(rate_bps, nbytes, wait):
    bucket = TokenBucket(rate_bps, 100.0)
    assert bucket.take(nbytes, 100.0) == pytest.approx(wait)


def test_waiting_the_returned_time_clears_the_debt_exactly():
    bucket = TokenBucket(8 * MBPS, 0.0)
    assert bucket.take(500_000, 0.0) == pytest.approx(0.5)
    assert bucket.take(0, 0.5) == pytest.approx(0.0)
    assert bucket.take(250_000, 0.5) == pytest.approx(0.25)


def test_debts_add_up_and_reads_too_early_wait_longer():
    bucket = TokenBucket(8 * MBPS, 0.0)
    assert bucket.take(1_000_000, 0.0) == pytest.approx(1.0)
    # Back after only 0.25 s: 0.75 s of debt left, plus this read's 0.5 s.
    assert bucket.take(500_000, 0.25) == pytest.approx(1.25)


def test_a_clock_going_backwards_earns_nothing():
    bucket = TokenBucket(8 * MBPS, 10.0)
    assert bucket.take(1_000_000, 10.0) == pytest.approx(1.0)
    assert bucket.take(0, 5.0) == pytest.approx(1.0)
    assert bucket.take(0, 11.0) == pytest.approx(0.0)


# --- over ten seconds -------------------------------------------------------------------


@pytest.mark.parametrize("rate_mbps", [1, 10, 100, 1000])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ten_seconds_of_a_greedy_reader_stay_within_five_percent(rate_mbps, seed):
    rate_Bps = rate_mbps * MBPS / 8
    bucket = TokenBucket(rate_mbps * MBPS, 0.0)
    log: list[tuple[float, int]] = []
    # A slow link never sees 1 MiB reads: cap the read at a tenth of a second's worth.
    sizes = (min(n, max(1, int(rate_Bps / 10))) for n in random_sizes(seed))
    greedy(bucket, 0.0, 10.0, sizes, log)
    got = bytes_between(log, 0.0, 10.0)
    assert 0.95 * rate_Bps * 10 <= got <= 1.05 * rate_Bps * 10


@pytest.mark.parametrize("seed", [4, 5])
def test_every_ten_second_window_of_a_long_run_stays_within_five_percent(seed):
    rate_Bps = 100 * MBPS / 8
    bucket = TokenBucket(100 * MBPS, 0.0)
    log: list[tuple[float, int]] = []
    greedy(bucket, 0.0, 60.0, random_sizes(seed), log)
    for i in range(0, 200):  # windows starting every 0.25 s
        a = i * 0.25
        got = bytes_between(log, a, a + 10.0)
        assert 0.95 * rate_Bps * 10 <= got <= 1.05 * rate_Bps * 10, a


def test_the_rate_holds_for_reads_larger_than_the_burst():
    rate_Bps = 10 * MBPS / 8  # 1.25 MB/s; a 4 MiB read is over 3 s of it
    bucket = TokenBucket(10 * MBPS, 0.0)
    log: list[tuple[float, int]] = []
    end = greedy(bucket, 0.0, 100.0, fixed_sizes(4 * MIB), log)
    assert sum(n for _t, n in log) == pytest.approx(rate_Bps * end)


# --- bursts after an idle spell --------------------------------------------------------


@pytest.mark.parametrize("burst_s", [0.5, 0.25, 1.0, 0.0])
@pytest.mark.parametrize("idle_s", [0.1, 5.0, 3600.0])
def test_an_idle_spell_earns_at_most_burst_s_worth(burst_s, idle_s):
    rate_Bps = 100 * MBPS / 8
    bucket = TokenBucket(100 * MBPS, 0.0, burst_s=burst_s)
    log: list[tuple[float, int]] = []
    resume = greedy(bucket, 0.0, 3.0, random_sizes(9), log) + idle_s
    # Reads that are told not to wait at all are the burst.
    free = 0
    t = resume
    while (wait := bucket.take(64 * KIB, t)) == 0.0:
        free += 64 * KIB
    assert free <= burst_s * rate_Bps
    assert free <= min(idle_s, burst_s) * rate_Bps
    assert free >= min(idle_s, burst_s) * rate_Bps - 64 * KIB
    # The read that went over is paid back before the next one.
    earned = min(idle_s, burst_s) * rate_Bps
    assert wait == pytest.approx((free + 64 * KIB - earned) / rate_Bps)


def test_ten_seconds_after_an_idle_spell_exceed_the_rate_by_at_most_the_burst_and_one_read():
    # The docstring's "rate plus at most 5% (half a second in ten)": the burst is
    # the 5%; the read that overdraws the bucket is let through before its wait.
    rate_Bps = 100 * MBPS / 8
    bucket = TokenBucket(100 * MBPS, 0.0)
    log: list[tuple[float, int]] = []
    t = greedy(bucket, 0.0, 20.0, random_sizes(11), log)
    resume = t + 30.0  # idle
    greedy(bucket, resume, resume + 40.0, random_sizes(12), log)
    for i in range(-20, 120):
        a = resume + i * 0.25
        got = bytes_between(log, a, a + 10.0)
        assert got <= 1.05 * rate_Bps * 10 + max(CHUNKS), a
    assert bytes_between(log, resume, resume + 10.0) >= 1.05 * rate_Bps * 10 - max(CHUNKS)


# --- several downloads sharing one bucket ----------------------------------------------


def run_shared(bucket: TokenBucket, sizes: list[int], start_s: float, stop_s: float, offsets=None) -> tuple[list[int], list[int]]:
    """Consumers each read their own size and sleep what they are told; returns (bytes, reads) per consumer."""
    heap = [(start_s + (offsets[i] if offsets else 0.0), i) for i in range(len(sizes))]
    heapq.heapify(heap)
    got = [0] * len(sizes)
    reads = [0] * len(sizes)
    while heap:
        t, i = heapq.heappop(heap)
        if t >= stop_s:
            continue
        got[i] += sizes[i]
        reads[i] += 1
        heapq.heappush(heap, (t + bucket.take(sizes[i], t), i))
    return got, reads


@pytest.mark.parametrize("k", [2, 4, 16])
def test_equal_downloads_share_equally_and_together_keep_the_rate(k):
    rate_Bps = 100 * MBPS / 8
    bucket = TokenBucket(100 * MBPS, 0.0)
    got, _reads = run_shared(bucket, [64 * KIB] * k, 0.0, 30.0, offsets=[i * 0.001 for i in range(k)])
    assert 0.95 * rate_Bps * 30 <= sum(got) <= 1.05 * rate_Bps * 30
    for g in got:
        assert 0.9 * sum(got) / k <= g <= 1.1 * sum(got) / k


def test_mixed_read_sizes_share_turns_and_keep_the_rate():
    # Each read is debited alike, so every download gets a turn per cycle; byte
    # shares then follow read sizes. Nobody starves and the sum keeps the rate.
    rate_Bps = 100 * MBPS / 8
    bucket = TokenBucket(100 * MBPS, 0.0)
    sizes = [1 * MIB, 256 * KIB, 64 * KIB, 16 * KIB]
    got, reads = run_shared(bucket, sizes, 0.0, 30.0)
    assert 0.95 * rate_Bps * 30 <= sum(got) <= 1.05 * rate_Bps * 30
    assert max(reads) - min(reads) <= 1
    assert min(got) > 0


def test_a_download_joining_late_gets_its_turn_at_once():
    bucket = TokenBucket(100 * MBPS, 0.0)
    log: list[tuple[float, int]] = []
    greedy(bucket, 0.0, 5.0, fixed_sizes(MIB), log)
    # Joining at t=5 it is told to wait at most one read's worth of the debt.
    wait = bucket.take(64 * KIB, 5.0)
    assert 0 < wait <= (MIB + 64 * KIB) / (100 * MBPS / 8)
