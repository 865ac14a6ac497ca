"""Content ids, file names inside a store, and placement: tables of cases, no I/O."""

from __future__ import annotations

import pytest

from oca.errors import ContentIdError
from oca.ids import MAX_ID_LENGTH, check_id, is_valid_id
from oca.store.layout import (
    CHECKSUM_HEX_LENGTH,
    OBJECTS_DIR,
    StoreRoom,
    choose_store,
    fanout,
    object_name,
    object_relpath,
    parse_object_name,
    parse_tmp_pid,
    tmp_name,
)

CHECKSUM = "0123456789abcdef0123456789abcdef"
assert len(CHECKSUM) == CHECKSUM_HEX_LENGTH

# ---------------------------------------------------------------- content ids

VALID_IDS = [
    "a",
    "Z",
    "0",
    "movie-1080p.mp4",
    "a.b.c",
    "a_b-c.d",
    "0-leading-digit",
    "trailing-dash-",
    "trailing.dot.",
    "a..b",
    "x" * MAX_ID_LENGTH,
    "A" + "9" * (MAX_ID_LENGTH - 1),
]

INVALID_IDS = [
    ("", "empty"),
    ("x" * (MAX_ID_LENGTH + 1), "129 characters"),
    (".hidden", "leading dot"),
    ("..", "dot-dot"),
    ("-rf", "leading dash"),
    ("_under", "leading underscore"),
    ("a/b", "slash"),
    ("../etc/passwd", "path traversal"),
    ("/abs", "leading slash"),
    ("a@b", "at sign (the object-name separator)"),
    ("a\x00b", "NUL"),
    ("a b", "space"),
    ("a\tb", "tab"),
    ("a\nb", "newline"),
    ("a\\b", "backslash"),
    ("a%2fb", "percent"),
    ("a:b", "colon"),
    ("a+b", "plus"),
    ("a~", "tilde"),
    ("caf\u00e9", "latin-1 letter"),
    ("\u0430bc", "cyrillic a"),
    ("a\u200bb", "zero-width space"),
    ("\uff41", "fullwidth a"),
    ("\u0661\u0662", "arabic-indic digits"),
    ("\u00b2", "superscript two"),
    ("a\U0001f600", "emoji"),
    ("abc\n", "trailing newline"),
]

NON_STRINGS = [None, 1, 1.5, b"abc", bytearray(b"abc"), ["abc"], ("abc",), {"abc": 1}, True]


@pytest.mark.parametrize("content_id", VALID_IDS)
def test_valid_ids(content_id):
    assert is_valid_id(content_id)
    assert check_id(content_id) is content_id


@pytest.mark.parametrize("content_id,why", INVALID_IDS, ids=[w for _i, w in INVALID_IDS])
def test_invalid_ids(content_id, why):
    assert not is_valid_id(content_id)
    with pytest.raises(ContentIdError):
        check_id(content_id)


@pytest.mark.parametrize("value", NON_STRINGS, ids=[type(v).__name__ for v in NON_STRINGS])
def test_non_string_ids(value):
    assert not is_valid_id(value)
    with pytest.raises(ContentIdError, match="must be a string"):
        check_id(value)


def test_id_error_messages_say_why():
    with pytest.raises(ContentIdError, match="empty"):
        check_id("")
    with pytest.raises(ContentIdError, match="129 characters long; the limit is 128"):
        check_id("x" * 129)
    with pytest.raises(ContentIdError, match=r"must match"):
        check_id("a/b")
    # A long bad id is shortened in the message rather than echoed whole.
    with pytest.raises(ContentIdError) as info:
        check_id("/" + "x" * 100)
    assert "..." in str(info.value) and len(str(info.value)) < 150


def test_content_id_error_is_a_value_error():
    # Callers that only know ValueError (argparse, the config loader) still catch it.
    assert issubclass(ContentIdError, ValueError)


# ---------------------------------------------------------------- file names


@pytest.mark.parametrize("content_id", VALID_IDS)
def test_fanout_shape_and_stability(content_id):
    fan = fanout(content_id)
    first, second = fan.split("/")
    assert len(first) == len(second) == 2
    assert all(c in "0123456789abcdef" for c in first + second)
    assert fanout(content_id) == fan  # deterministic, no per-process salt


def test_fanout_does_not_follow_the_ids_characters():
    # Ids sharing a prefix still spread: the fan-out is a hash, not a prefix.
    fans = {fanout(f"movie-{i}") for i in range(512)}
    assert len(fans) > 300
    assert len({f.split("/")[0] for f in fans}) > 150


@pytest.mark.parametrize("content_id", VALID_IDS)
@pytest.mark.parametrize("mtime_s", [0, 1, 1_700_000_000, -1, 2**40])
def test_object_name_round_trip(content_id, mtime_s):
    name = object_name(content_id, CHECKSUM, mtime_s)
    assert parse_object_name(name) == (content_id, CHECKSUM, mtime_s)
    rel = object_relpath(content_id, CHECKSUM, mtime_s)
    assert rel == f"{OBJECTS_DIR}/{fanout(content_id)}/{name}"


def test_object_name_truncates_float_mtime():
    assert object_name("a", CHECKSUM, 12.9).endswith("@12")


@pytest.mark.parametrize(
    "content_id,checksum,why",
    [
        ("a/b", CHECKSUM, "bad id"),
        ("", CHECKSUM, "empty id"),
        ("a", CHECKSUM.upper(), "uppercase hex"),
        ("a", CHECKSUM[:-1], "31 digits"),
        ("a", CHECKSUM + "0", "33 digits"),
        ("a", "g" * 32, "not hex"),
        ("a", "", "empty checksum"),
    ],
)
def test_object_name_refuses(content_id, checksum, why):
    with pytest.raises(ValueError):
        object_name(content_id, checksum, 1)


NOT_OBJECT_NAMES = [
    ("", "empty"),
    ("a", "no separators"),
    (f"a@{CHECKSUM}", "two parts"),
    (f"a@{CHECKSUM}@1@2", "four parts"),
    (f"@{CHECKSUM}@1", "empty id"),
    (f".a@{CHECKSUM}@1", "bad id"),
    (f"a@{CHECKSUM.upper()}@1", "uppercase checksum"),
    (f"a@{CHECKSUM[:-1]}@1", "short checksum"),
    (f"a@{CHECKSUM}@", "empty mtime"),
    (f"a@{CHECKSUM}@x", "letters for mtime"),
    (f"a@{CHECKSUM}@1.5", "fractional mtime"),
    (f"a@{CHECKSUM}@-", "lone minus"),
    (f"a@{CHECKSUM}@--5", "double minus"),
    (f"a@{CHECKSUM}@5-", "trailing minus"),
    (f"a@{CHECKSUM}@\u00b2", "superscript digit"),
    (f"a@{CHECKSUM}@\u0661", "arabic-indic digit"),
    (f"a@{CHECKSUM}@ 1", "space"),
    (f"a@{CHECKSUM}@1.tmp", "temporary-file suffix"),
    ("a.1234.abcd.tmp", "a temporary file"),
]


@pytest.mark.parametrize("name,why", NOT_OBJECT_NAMES, ids=[w for _n, w in NOT_OBJECT_NAMES])
def test_parse_object_name_rejects(name, why):
    # Any name may turn up under objects/ (rebuild-index reads them all): never raise.
    assert parse_object_name(name) is None


TMP_NAMES = [
    (tmp_name("movie.mp4", 1234, "abcd"), 1234),
    (tmp_name("a", 1, "00"), 1),
    ("a.1234.abcd.tmp", 1234),
    ("a.1234.abcd.partial", None),
    ("a.x.abcd.tmp", None),
    ("1234.abcd.tmp", None),
    ("tmp", None),
    ("", None),
    ("a.-12.abcd.tmp", None),
    ("a.\u00b2.abcd.tmp", None),  # str.isdigit() is true for superscripts, int() refuses them
    ("a.\u0661\u0662.abcd.tmp", None),
]


@pytest.mark.parametrize("name,pid", TMP_NAMES)
def test_parse_tmp_pid(name, pid):
    # Any name may turn up in tmp/ (check reads them all): never raise.
    assert parse_tmp_pid(name) == pid


# ---------------------------------------------------------------- placement

MiB = 1 << 20


def room(uuid: str, free_mib: float, reserve_mib: float = 0, working: bool = True) -> StoreRoom:
    return StoreRoom(uuid, working, int(free_mib * MiB), int(reserve_mib * MiB))


PLACEMENT_CASES = [
    # (case id, rooms, size in MiB, expected uuid)
    ("only store", [room("a", 100)], 10, "a"),
    ("most room wins", [room("a", 100), room("b", 300), room("c", 200)], 10, "b"),
    ("most room wins, order does not matter", [room("c", 200), room("b", 300), room("a", 100)], 10, "b"),
    ("reserve counts against room", [room("a", 300, reserve_mib=250), room("b", 100)], 10, "b"),
    ("exact fit above the reserve", [room("a", 110, reserve_mib=100)], 10, "a"),
    ("one byte into the reserve is refused", [room("a", 110, reserve_mib=100.0 + 1 / MiB)], 10, None),
    ("reserve larger than free", [room("a", 10, reserve_mib=50)], 0.001, None),
    ("failed store skipped even if roomiest", [room("a", 999, working=False), room("b", 100)], 10, "b"),
    ("only failed stores", [room("a", 999, working=False)], 1, None),
    ("nothing fits", [room("a", 5), room("b", 9)], 10, None),
    ("no stores", [], 1, None),
    ("smaller store chosen when the big one is in reserve", [room("a", 100, 95), room("b", 20)], 10, "b"),
    ("tie goes to the lowest uuid", [room("b", 100), room("a", 100), room("c", 100)], 10, "a"),
    ("tie, reversed input", [room("c", 100), room("a", 100), room("b", 100)], 10, "a"),
    ("tie on usable room, not on free", [room("b", 200, 100), room("a", 150, 50)], 10, "a"),
    ("zero-byte file fits an empty-usable store", [room("a", 100, 100)], 0, "a"),
]


@pytest.mark.parametrize("rooms,size_mib,expected", [c[1:] for c in PLACEMENT_CASES], ids=[c[0] for c in PLACEMENT_CASES])
def test_choose_store(rooms, size_mib, expected):
    assert choose_store(rooms, int(size_mib * MiB)) == expected
    assert choose_store(tuple(rooms), int(size_mib * MiB)) == expected


def test_choose_store_is_deterministic_over_permutations():
    import itertools

    rooms = [room(u, 100) for u in ("9f" * 16, "0a" * 16, "5c" * 16)]
    answers = {choose_store(list(p), MiB) for p in itertools.permutations(rooms)}
    assert answers == {"0a" * 16}


def test_usable_bytes_never_negative():
    assert room("a", 1, reserve_mib=5).usable_bytes == 0
