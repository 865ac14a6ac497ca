"""Signed URLs: token format, verification order, expiry with clock skew."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from urllib.parse import parse_qs, urlsplit

import pytest

from oca.signing import Verdict, make_token, sign_query, signed_path, verify

SECRET = b"k1-secret-0123456789abcdef"
OTHER_SECRET = b"k2-secret-fedcba9876543210"
KEYS = {"k1": SECRET, "k2": OTHER_SECRET}
CID = "title-42.seg0007"
EXPIRY = 1_700_000_000
SKEW = 30.0


def _query(content_id: str = CID, expiry: int = EXPIRY, key_id: str = "k1", secret: bytes = SECRET):
    q = parse_qs(sign_query(content_id, expiry, key_id, secret), strict_parsing=True)
    return q["e"][0], q["k"][0], q["t"][0]


def test_known_vector_message_format():
    digest = hmac.new(SECRET, f"{CID}\n{EXPIRY}".encode(), hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert make_token(CID, EXPIRY, SECRET) == expected
    assert len(expected) == 43 and "=" not in expected


def test_sign_query_and_signed_path_shape():
    token = make_token(CID, EXPIRY, SECRET)
    assert sign_query(CID, EXPIRY, "k1", SECRET) == f"e={EXPIRY}&k=k1&t={token}"
    assert signed_path(CID, EXPIRY, "k1", SECRET) == f"/content/{CID}?e={EXPIRY}&k=k1&t={token}"


def test_signed_path_escapes_id_as_one_segment():
    path = signed_path("a/b c?", EXPIRY, "k1", SECRET)
    assert urlsplit(path).path == "/content/a%2Fb%20c%3F"


def test_round_trip():
    e, k, t = _query()
    verdict = verify(CID, e, k, t, KEYS, now_s=EXPIRY - 100, clock_skew_s=SKEW)
    assert verdict == Verdict(True, 200, "ok")


def test_round_trip_with_second_key_and_unicode_id():
    cid = "film-\u00e9t\u00e9/\u2603"
    e, k, t = _query(content_id=cid, key_id="k2", secret=OTHER_SECRET)
    assert verify(cid, e, k, t, KEYS, now_s=0, clock_skew_s=0).ok


def test_random_round_trips():
    rng = random.Random(2)
    for _ in range(200):
        cid = "".join(rng.choice("abcdef0123456789-_.") for _ in range(rng.randrange(1, 40)))
        expiry = rng.randrange(0, 2**40)
        e, k, t = _query(content_id=cid, expiry=expiry)
        assert verify(cid, e, k, t, KEYS, now_s=expiry, clock_skew_s=0).ok


@pytest.mark.parametrize(
    ("content_id", "e", "k", "t", "status", "reason"),
    [
        pytest.param("title-43.seg0007", None, None, None, 403, "bad token", id="tampered-id"),
        pytest.param(CID, str(EXPIRY + 1), None, None, 403, "bad token", id="tampered-expiry"),
        pytest.param(CID, "0" + str(EXPIRY), None, None, 403, "bad token", id="expiry-leading-zero"),
        pytest.param(CID, None, "k2", None, 403, "bad token", id="other-key-id"),
        pytest.param(CID, None, "k3", None, 403, "unknown key id 'k3'", id="unknown-key-id"),
        pytest.param(CID, None, "", None, 403, "unknown key id ''", id="empty-key-id"),
        pytest.param(CID, None, None, "A" * 43, 403, "bad token", id="forged-token"),
        pytest.param(CID, None, None, "A" * 42, 403, "malformed token", id="short-token"),
        pytest.param(CID, None, None, "A" * 44, 403, "malformed token", id="long-token"),
        pytest.param(CID, None, None, "", 403, "malformed token", id="empty-token"),
        pytest.param(CID, None, None, "A" * 42 + "=", 403, "malformed token", id="padded-token"),
        pytest.param(CID, None, None, "A" * 42 + "+", 403, "malformed token", id="base64-not-url"),
        pytest.param(CID, None, None, "\xe9" * 43, 403, "malformed token", id="non-ascii-token"),
        pytest.param(CID, "", None, None, 403, "malformed expiry", id="empty-expiry"),
        pytest.param(CID, "-5", None, None, 403, "malformed expiry", id="negative-expiry"),
        pytest.param(CID, "1.5e9", None, None, 403, "malformed expiry", id="float-expiry"),
        pytest.param(CID, " 1700000000", None, None, 403, "malformed expiry", id="space-expiry"),
        pytest.param(CID, "\u0661\u0662", None, None, 403, "malformed expiry", id="arabic-digits"),
        pytest.param(CID, "9" * 5000, None, None, 403, "malformed expiry", id="huge-expiry"),
    ],
)
def test_rejected(content_id, e, k, t, status, reason):
    good_e, good_k, good_t = _query()
    verdict = verify(
        content_id,
        good_e if e is None else e,
        good_k if k is None else k,
        good_t if t is None else t,
        KEYS,
        now_s=EXPIRY - 100,
        clock_skew_s=SKEW,
    )
    assert verdict == Verdict(False, status, reason)


def test_tampered_token_every_position():
    e, k, t = _query()
    for i in range(len(t)):
        flipped = t[:i] + ("A" if t[i] != "A" else "B") + t[i + 1 :]
        verdict = verify(CID, e, k, flipped, KEYS, now_s=0, clock_skew_s=0)
        assert (verdict.ok, verdict.status) == (False, 403), i


@pytest.mark.parametrize(
    ("missing", "reason"),
    [("t", "missing token"), ("e", "missing expiry"), ("k", "missing key id")],
)
def test_missing_field(missing, reason):
    fields = dict(zip("ekt", _query()))
    fields[missing] = None
    verdict = verify(CID, fields["e"], fields["k"], fields["t"], KEYS, now_s=0, clock_skew_s=0)
    assert verdict == Verdict(False, 403, reason)


def test_unknown_key_id_reason_is_short():
    e, _, t = _query()
    verdict = verify(CID, e, "x" * 1000, t, KEYS, now_s=0, clock_skew_s=0)
    assert verdict.status == 403
    assert len(verdict.reason) < 80


@pytest.mark.parametrize(
    ("now_s", "status"),
    [
        pytest.param(EXPIRY - 1, 200, id="before"),
        pytest.param(EXPIRY, 200, id="at-expiry"),
        pytest.param(EXPIRY + SKEW, 200, id="at-expiry-plus-skew"),
        pytest.param(EXPIRY + SKEW + 0.001, 410, id="just-past-skew"),
        pytest.param(EXPIRY + 3600, 410, id="an-hour-late"),
    ],
)
def test_expiry_boundary_with_skew(now_s, status):
    e, k, t = _query()
    verdict = verify(CID, e, k, t, KEYS, now_s=now_s, clock_skew_s=SKEW)
    assert (verdict.ok, verdict.status) == (status == 200, status)


def test_expired_reason_counts_from_expiry():
    e, k, t = _query()
    verdict = verify(CID, e, k, t, KEYS, now_s=EXPIRY + 42, clock_skew_s=SKEW)
    assert verdict == Verdict(False, 410, "expired 42 s ago")


def test_zero_skew_boundary():
    e, k, t = _query()
    assert verify(CID, e, k, t, KEYS, now_s=EXPIRY, clock_skew_s=0).ok
    assert verify(CID, e, k, t, KEYS, now_s=EXPIRY + 1, clock_skew_s=0).status == 410


def test_signature_checked_before_expiry():
    # A forged URL that is also expired says 403, never 410.
    e, k, _ = _query()
    verdict = verify(CID, e, k, "A" * 43, KEYS, now_s=EXPIRY + 10**6, clock_skew_s=0)
    assert verdict == Verdict(False, 403, "bad token")
    # The same URL re-signed for another id is forged too.
    e, k, t = _query(content_id="other")
    assert verify(CID, e, k, t, KEYS, now_s=EXPIRY + 10**6, clock_skew_s=0).status == 403


def test_verify_never_raises_on_garbage():
    rng = random.Random(3)
    alphabet = "0123456789AZaz_-=+/ \xe9\x00\udcff"
    for _ in range(2000):
        vals = [
            None if rng.random() < 0.1 else "".join(rng.choice(alphabet) for _ in range(rng.randrange(50)))
            for _ in range(3)
        ]
        cid = "".join(rng.choice(alphabet) for _ in range(rng.randrange(10)))
        verdict = verify(cid, *vals, KEYS, now_s=0, clock_skew_s=0)
        assert verdict.status in (200, 403, 410)


@pytest.mark.parametrize("key_id", ["", "a&b", "a=b", "a b", "\xe9", "k" * 65])
def test_sign_query_rejects_bad_key_id(key_id):
    with pytest.raises(ValueError):
        sign_query(CID, EXPIRY, key_id, SECRET)


@pytest.mark.parametrize("expiry", [-1, 1.5, "1700000000", True])
def test_make_token_rejects_bad_expiry(expiry):
    with pytest.raises(ValueError):
        make_token(CID, expiry, SECRET)  # type: ignore[arg-type]


def test_verdict_is_frozen():
    with pytest.raises(AttributeError):
        Verdict(True, 200, "ok").ok = False  # type: ignore[misc]


# ---------------------------------------------------------------- the verified-token cache

from oca.signing import VerifiedTokens  # noqa: E402


def _fresh(content_id: str, query: str, keys, now_s: float, skew: float) -> Verdict:
    from urllib.parse import parse_qsl

    p = dict(parse_qsl(query, keep_blank_values=True))
    return verify(content_id, p.get("e"), p.get("k"), p.get("t"), keys, now_s, skew)


def test_cache_answers_what_verify_answers_on_a_table_of_queries():
    good = sign_query(CID, EXPIRY, "k1", SECRET)
    token = make_token(CID, EXPIRY, SECRET)
    queries = [
        good, good + "&x=1", f"t={token}&k=k1&e={EXPIRY}", f"e={EXPIRY}&k=k1&t={token}&t=forged",
        f"e={EXPIRY}&k=k2&t={token}", f"e=0{EXPIRY}&k=k1&t={token}", f"e={EXPIRY}&k=k1&t={token[:-1]}A",
        f"e={EXPIRY}&k=nope&t={token}", f"e={EXPIRY}&k=k1", "", "t=", f"e={EXPIRY}&k=k1&t={token}%3D", "e=&k=&t=",
        f"e={EXPIRY + 1}&k=k1&t={token}", f"e={EXPIRY}&k=k1&t={token}&e={EXPIRY}",
    ]
    cache = VerifiedTokens()
    for now in (EXPIRY - 100, EXPIRY + SKEW, EXPIRY + SKEW + 1, EXPIRY - 100):
        for q in queries:
            for cid in (CID, CID + "x"):
                want = _fresh(cid, q, KEYS, now, SKEW)
                # twice: the first may fill the cache, the second may hit it
                assert cache.verify_query(cid, q, KEYS, now, SKEW) == want, (cid, q, now)
                assert cache.verify_query(cid, q, KEYS, now, SKEW) == want, (cid, q, now)


def test_cache_honours_expiry_to_the_second():
    query = sign_query(CID, EXPIRY, "k1", SECRET)
    cache = VerifiedTokens()
    assert cache.verify_query(CID, query, KEYS, EXPIRY - 1000, 0).ok
    assert len(cache) == 1
    assert cache.verify_query(CID, query, KEYS, EXPIRY, 0).ok
    late = cache.verify_query(CID, query, KEYS, EXPIRY + 1, 0)
    assert (late.ok, late.status) == (False, 410)
    assert cache.verify_query(CID, query, KEYS, EXPIRY + 0.5, 0).status == 410  # now_s > e, to the fraction
    assert cache.verify_query(CID, query, KEYS, EXPIRY + 30, 30).ok  # the skew, as verify applies it


def test_cache_keeps_only_genuine_tokens_and_stays_bounded():
    cache = VerifiedTokens(max_entries=3)
    for i in range(50):
        forged = f"e={EXPIRY}&k=k1&t={'A' * 43}"
        assert cache.verify_query(f"id-{i}", forged, KEYS, 0, 0).status == 403
    assert len(cache) == 0
    for i in range(5):
        cid = f"id-{i}"
        assert cache.verify_query(cid, sign_query(cid, EXPIRY, "k1", SECRET), KEYS, 0, 0).ok
    assert len(cache) == 3
    # The oldest went first; the newest are still held (and still answer ok).
    assert ("id-0", sign_query("id-0", EXPIRY, "k1", SECRET)) not in cache._entries
    assert ("id-4", sign_query("id-4", EXPIRY, "k1", SECRET)) in cache._entries


def test_cache_forgets_tokens_of_a_key_that_a_reload_removes_or_changes():
    cache = VerifiedTokens()
    q1 = sign_query(CID, EXPIRY, "k1", SECRET)
    q2 = sign_query(CID, EXPIRY, "k2", OTHER_SECRET)
    assert cache.verify_query(CID, q1, KEYS, 0, 0).ok and cache.verify_query(CID, q2, KEYS, 0, 0).ok
    reloaded = {"k2": OTHER_SECRET}
    cache.keys_changed(reloaded)
    assert len(cache) == 1
    assert cache.verify_query(CID, q1, reloaded, 0, 0).status == 403
    assert cache.verify_query(CID, q2, reloaded, 0, 0).ok
    # A key id kept with a new secret: its old tokens are refused even without keys_changed.
    rotated = {"k2": b"k2-new-secret-0123456789"}
    assert cache.verify_query(CID, q2, rotated, 0, 0).status == 403
    assert len(cache) == 0
