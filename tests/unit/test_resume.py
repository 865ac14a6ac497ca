"""`fill.resume.resume_action`: a source's answer → append, start over, or fail. Pure; a table of cases."""

from __future__ import annotations

import pytest

from fill.resume import APPEND, FAIL, RESTART, ResumeAction, resume_action

SIZE = 1000

# (case, status, Content-Range, Content-Length, offset, expected kind, retry, start_over, words in the reason)
CASES = [
    ("fresh 200", 200, None, SIZE, 0, APPEND, True, False, ""),
    ("fresh 200 without a length (chunked)", 200, None, None, 0, APPEND, True, False, ""),
    ("fresh 200, wrong length", 200, None, SIZE + 4096, 0, FAIL, False, False, "wrong length: 5096 bytes offered, 1000 expected"),
    ("fresh 200, short length", 200, None, 10, 0, FAIL, False, False, "wrong length"),
    ("fresh 206 to no Range", 206, "bytes 0-999/1000", SIZE, 0, FAIL, False, False, "206 to a request without Range"),
    ("resume 206 exact", 206, "bytes 400-999/1000", 600, 400, APPEND, True, False, ""),
    ("resume 206 without a length", 206, "bytes 400-999/1000", None, 400, APPEND, True, False, ""),
    ("resume 206, spaces around", 206, " bytes 400-999/1000 ", 600, 400, APPEND, True, False, ""),
    ("resume 206 from elsewhere", 206, "bytes 0-999/1000", SIZE, 400, FAIL, True, False, "unexpected Content-Range"),
    ("resume 206, other total", 206, "bytes 400-1999/2000", 1600, 400, FAIL, True, False, "unexpected Content-Range"),
    ("resume 206, short range", 206, "bytes 400-499/1000", 100, 400, FAIL, True, False, "unexpected Content-Range"),
    ("resume 206, no Content-Range", 206, None, 600, 400, FAIL, True, False, "unexpected Content-Range ''"),
    ("resume 206, range right, length wrong", 206, "bytes 400-999/1000", 700, 400, FAIL, False, False, "wrong length"),
    ("resume 206, multipart", 206, None, 600, 400, FAIL, True, False, "unexpected"),
    ("resume 206, garbage range", 206, "bytes ¤-¤/¤", 600, 400, FAIL, True, False, "unexpected"),
    ("resume, 200: the validator changed", 200, None, SIZE, 400, RESTART, True, False, ""),
    ("resume, 200 with a wrong length", 200, None, 600, 400, FAIL, False, False, "wrong length: 600 bytes offered, 1000"),
    ("resume, 416", 416, "bytes */900", 0, 400, FAIL, True, True, "416 on resume; starting over"),
    ("fresh 416", 416, "bytes */1000", 0, 0, FAIL, False, False, "HTTP 416"),
    ("500", 500, None, 10, 0, FAIL, True, False, "HTTP 500"),
    ("503 on resume", 503, None, 10, 400, FAIL, True, False, "HTTP 503"),
    ("408", 408, None, None, 0, FAIL, True, False, "HTTP 408"),
    ("429", 429, None, None, 0, FAIL, True, False, "HTTP 429"),
    ("404", 404, None, 9, 0, FAIL, False, False, "HTTP 404"),
    ("403", 403, None, 9, 400, FAIL, False, False, "HTTP 403"),
    ("304 (never asked for)", 304, None, None, 0, FAIL, False, False, "HTTP 304"),
    ("302 left unfollowed", 302, None, 0, 0, FAIL, False, False, "HTTP 302"),
    ("204", 204, None, 0, 0, FAIL, False, False, "HTTP 204"),
    ("999", 999, None, 0, 0, FAIL, False, False, "HTTP 999"),
    ("empty file, 200, length 0", 200, None, 0, 0, APPEND, True, False, ""),
]


@pytest.mark.parametrize("status,crange,length,offset,kind,retry,start_over,words",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resume_action(status, crange, length, offset, kind, retry, start_over, words):
    size = 0 if length == 0 and status == 200 and offset == 0 and kind == APPEND else SIZE
    got = resume_action(status, crange, length, offset, size)
    assert isinstance(got, ResumeAction)
    assert (got.kind, got.retry, got.start_over) == (kind, retry, start_over), got
    assert words in got.reason
    assert (got.reason == "") == (kind != FAIL)
