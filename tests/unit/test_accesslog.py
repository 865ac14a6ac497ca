"""The combined access-log line: fields, escaping of quoted fields, buffering."""

from __future__ import annotations

import pytest

from oca.server.accesslog import FLUSH_BYTES, AccessLog

NOW = 1_700_000_000.0


@pytest.mark.parametrize("agent, written", [
    ("curl/8.0", '"curl/8.0"'),
    ("", '"-"'),
    ('quote"inside', '"quote\\"inside"'),
    ('"', '"\\""'),
    ("back\\slash", '"back\\\\slash"'),
    ('\\"', '"\\\\\\""'),  # a backslash then a quote: neither may end the field
    ("ctl\x01\x1f", '"ctl\\x01\\x1f"'),
    ("new\nline", '"new\\nline"'),
    ("caf\u00e9", '"caf\u00e9"'),
])
def test_quoted_fields_never_end_early(tmp_path, agent, written):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "combined")
    log.log("192.0.2.1", "GET", "/content/a?x=1", "1.1", 206, 100, "", agent, 0.001, NOW)
    log.close()
    line = path.read_text(encoding="utf-8")
    assert line.count("\n") == 1
    assert line.endswith(f' "-" {written}\n')
    # The line splits into the combined format's quoted fields exactly.
    fields, inside, i, text = [], False, 0, line.rstrip("\n")
    start = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and inside:
            i += 2
            continue
        if c == '"':
            if inside:
                fields.append(text[start:i])
            else:
                start = i + 1
            inside = not inside
        i += 1
    assert not inside and len(fields) == 3 and fields[0] == "GET /content/a?x=1 HTTP/1.1"


def test_lines_are_buffered_until_a_flush_or_the_size_limit(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "combined")
    log.log("192.0.2.1", "GET", "/a", "1.1", 200, 1, "", "", 0.0, NOW)
    assert path.read_text() == ""
    log.flush()
    assert path.read_text().count("\n") == 1
    n = 0
    while path.stat().st_size < FLUSH_BYTES:  # passing the size limit writes without a flush
        log.log("192.0.2.1", "GET", "/a" * 50, "1.1", 200, 1, "", "", 0.0, NOW)
        n += 1
        assert n < 10_000
    log.close()
    assert path.read_text().count("\n") == n + 1


def test_escaped_values_are_remembered_bounded_and_equal_to_a_fresh_escape():
    from oca.server import accesslog

    tricky = 'agent "quoted" \\ back\x01slash'
    first = accesslog._esc(tricky)
    assert first == 'agent \\"quoted\\" \\\\ back\\x01slash'
    assert accesslog._esc(tricky) == first and accesslog._esc("") == "-"
    for i in range(2 * accesslog.ESCAPED_KEPT):
        assert accesslog._esc(f'ua-{i}"') == f'ua-{i}\\"'
    assert len(accesslog._ESCAPED) <= accesslog.ESCAPED_KEPT
    assert accesslog._esc("x" * (accesslog.ESCAPED_MAX_CHARS + 1)) == "x" * (accesslog.ESCAPED_MAX_CHARS + 1)
