/* The compiled fast path for one common request head, in one call.

Rules kept here:
- `parse_head(data, start, max_url, max_header_bytes, max_headers)` looks at
  one request head in `data` from `start`. It ACCEPTS only the plain form
  that players send: GET or HEAD, an origin-form target of RFC 3986 path
  and query characters, HTTP/1.1 or HTTP/1.0, CRLF line ends, header names
  of RFC 9110 token characters, values of visible ASCII and inner spaces,
  no body framing (Content-Length, Transfer-Encoding), no Upgrade, at most
  one Connection field saying exactly `keep-alive` (or none on HTTP/1.1):
  a head that ends its connection is left to llhttp, which refuses bytes
  after it ("Data after Connection: close") for as long as the connection
  lives. Within the limits. For anything else, a head not complete in `data` included, it
  DECLINES (returns None) and the caller feeds the bytes to httptools
  (llhttp), which decides on them as if this module did not exist.
- So one source of truth for behaviour stays the httptools path: what is
  accepted here must give exactly the request that path gives (method,
  target, path, query, lower-cased field names, repeated fields joined with
  ", ", version, keep-alive); tests/unit/test_fast_head.py holds the two to
  that on tables of normal and hostile heads and on seeded mutations.
- `file_head(headers, size, date, block, close, max_ranges)` builds the
  head of the two answers most content requests get: 200 with the whole
  file (no Range field) or 206 with one range (`bytes=<first>-<last>`,
  first <= last, first inside the file), for a GET with no conditional
  field. It returns (status, head, offset, count), or None for anything
  else, which `App._content_response` then decides in Python through
  `ranges.decide`. Its heads must equal `responses.build_head`'s byte for
  byte (tests/unit/test_app.py compares both on a table).
- Nothing here allocates beyond the returned values, keeps state between
  calls, or performs I/O.

parse_head returns (end offset, method, target bytes, path, query,
headers dict, version, keep_alive) on acceptance.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *s_get, *s_head, *s_v11, *s_v10, *s_empty;
static unsigned char tchar[256];  /* RFC 9110 §5.6.2 token characters */
static unsigned char uchar[256];  /* RFC 3986 pchar, "/" and "?" (no "#", no controls, no spaces) */
static unsigned char vchar[256];  /* visible ASCII and SP: a field value's inner bytes */

static void init_tables(void) {
    const char *extra_t = "!#$%&'*+-.^_`|~";
    const char *extra_u = "-._~!$&'()*+,;=:@%/?";
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        tchar[c] = alnum || (c && strchr(extra_t, c) != NULL);
        uchar[c] = alnum || (c && strchr(extra_u, c) != NULL);
        vchar[c] = c >= 0x20 && c <= 0x7e;
    }
}

static int name_is(const unsigned char *p, Py_ssize_t n, const char *lower) {
    Py_ssize_t k = (Py_ssize_t)strlen(lower);
    if (n != k) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

static PyObject *ascii_str(const unsigned char *p, Py_ssize_t n, int lower) {
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL) return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
    if (lower) {
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = p[i];
            out[i] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        }
    } else {
        memcpy(out, p, n);
    }
    return s;
}

#define CONN_NONE 0
#define CONN_CLOSE 1
#define CONN_KEEP 2

static PyObject *parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "parse_head(data: bytes, start, max_url, max_header_bytes, max_headers)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) Py_RETURN_NONE; /* a bytearray or memoryview: httptools takes it */
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_url = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_header_bytes = PyLong_AsSsize_t(args[3]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) return NULL;
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start > len) Py_RETURN_NONE;
    const unsigned char *p = buf + start, *end = buf + len;

    PyObject *method;
    if (end - p >= 4 && memcmp(p, "GET ", 4) == 0) {
        method = s_get;
        p += 4;
    } else if (end - p >= 5 && memcmp(p, "HEAD ", 5) == 0) {
        method = s_head;
        p += 5;
    } else {
        Py_RETURN_NONE;
    }
    const unsigned char *t0 = p;
    while (p < end && uchar[*p]) p++;
    Py_ssize_t url_len = p - t0;
    if (p == end || *p != ' ' || url_len == 0 || *t0 != '/' || url_len > max_url) Py_RETURN_NONE;
    p++;
    if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != '\r' || p[9] != '\n') Py_RETURN_NONE;
    int v11;
    if (p[7] == '1') v11 = 1;
    else if (p[7] == '0') v11 = 0;
    else Py_RETURN_NONE;
    p += 10;

    /* First pass: validate the fields and find the end, allocating nothing. */
    const unsigned char *fields = p;
    Py_ssize_t count = 0, size = 0;
    int conn = CONN_NONE;
    for (;;) {
        if (end - p < 2) Py_RETURN_NONE;
        if (p[0] == '\r') {
            if (p[1] != '\n') Py_RETURN_NONE;
            p += 2;
            break;
        }
        const unsigned char *n0 = p;
        while (p < end && tchar[*p]) p++;
        Py_ssize_t nlen = p - n0;
        if (p == end || *p != ':' || nlen == 0) Py_RETURN_NONE;
        p++;
        while (p < end && *p == ' ') p++;
        const unsigned char *v0 = p;
        while (p < end && vchar[*p]) p++;
        Py_ssize_t vlen = p - v0;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n' || vlen == 0 || v0[vlen - 1] == ' ') Py_RETURN_NONE;
        p += 2;
        count++;
        size += nlen + vlen + 4;
        if (count > max_headers || size > max_header_bytes) Py_RETURN_NONE;
        switch (nlen) {
        case 7:
            if (name_is(n0, nlen, "upgrade")) Py_RETURN_NONE;
            break;
        case 10:
            if (name_is(n0, nlen, "connection")) {
                if (conn != CONN_NONE) Py_RETURN_NONE;
                if (name_is(v0, vlen, "close")) conn = CONN_CLOSE;
                else if (name_is(v0, vlen, "keep-alive")) conn = CONN_KEEP;
                else Py_RETURN_NONE;
            }
            break;
        case 14:
            if (name_is(n0, nlen, "content-length")) Py_RETURN_NONE;
            break;
        case 16:
            if (name_is(n0, nlen, "proxy-connection")) Py_RETURN_NONE;
            break;
        case 17:
            if (name_is(n0, nlen, "transfer-encoding")) Py_RETURN_NONE;
            break;
        }
    }
    if (v11 ? conn == CONN_CLOSE : conn != CONN_KEEP) Py_RETURN_NONE;
    Py_ssize_t head_end = p - buf;

    /* Second pass: build the values. */
    PyObject *headers = PyDict_New(), *target = NULL, *path = NULL, *query = NULL, *result = NULL;
    if (headers == NULL) return NULL;
    p = fields;
    while (p[0] != '\r') {
        const unsigned char *n0 = p;
        while (*p != ':') p++;
        Py_ssize_t nlen = p - n0;
        p++;
        while (*p == ' ') p++;
        const unsigned char *v0 = p;
        while (*p != '\r') p++;
        Py_ssize_t vlen = p - v0;
        p += 2;
        PyObject *key = ascii_str(n0, nlen, 1);
        if (key == NULL) goto fail;
        PyObject *value = ascii_str(v0, vlen, 0);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *old = PyDict_GetItemWithError(headers, key);
        if (old != NULL) {
            /* RFC 9110 §5.3: repeated fields combine as a comma-separated list. */
            PyObject *joined = PyUnicode_FromFormat("%U, %U", old, value);
            Py_DECREF(value);
            value = joined;
        } else if (PyErr_Occurred()) {
            Py_DECREF(key);
            Py_DECREF(value);
            goto fail;
        }
        if (value == NULL || PyDict_SetItem(headers, key, value) < 0) {
            Py_DECREF(key);
            Py_XDECREF(value);
            goto fail;
        }
        Py_DECREF(key);
        Py_DECREF(value);
    }
    target = PyBytes_FromStringAndSize((const char *)t0, url_len);
    if (target == NULL) goto fail;
    const unsigned char *mark = memchr(t0, '?', url_len);
    if (mark == NULL) {
        path = ascii_str(t0, url_len, 0);
        query = s_empty;
        Py_INCREF(query);
    } else {
        path = ascii_str(t0, mark - t0, 0);
        query = ascii_str(mark + 1, url_len - (mark - t0) - 1, 0);
    }
    if (path == NULL || query == NULL) goto fail;
    {
        PyObject *end = PyLong_FromSsize_t(head_end);
        result = end == NULL ? NULL : PyTuple_New(8);
        if (result == NULL) {
            Py_XDECREF(end);
            goto fail;
        }
        PyObject *version = v11 ? s_v11 : s_v10;
        PyObject *items[8] = {end, method, target, path, query, headers, version, Py_True};
        for (int i = 1; i < 8; i++) Py_INCREF(items[i]);
        for (int i = 0; i < 8; i++) PyTuple_SET_ITEM(result, i, items[i]);
    }
fail:
    Py_DECREF(headers);
    Py_XDECREF(target);
    Py_XDECREF(path);
    Py_XDECREF(query);
    return result;
}

static PyObject *k_range, *k_conditional[5];

/* Write `v` (>= 0) in decimal at `o`; returns the digits written. snprintf
   cost about 2,000 instructions a call here (locale, format parsing). */
static int put_decimal(char *o, long long v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (int i = 0; i < n; i++) o[i] = tmp[n - 1 - i];
    return n;
}

/* Append the literal `text` at `o`; returns its length. */
static int put_text(char *o, const char *text) {
    int n = (int)strlen(text);
    memcpy(o, text, n);
    return n;
}

/* `text` as 1 to 18 ASCII digits: the value, or -1. */
static long long digits18(const char *p, Py_ssize_t n) {
    if (n < 1 || n > 18) return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static PyObject *file_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyDict_CheckExact(args[0]) || !PyBytes_Check(args[2]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "file_head(headers: dict, size, date: bytes, block: bytes, close, max_ranges)");
        return NULL;
    }
    PyObject *headers = args[0];
    long long size = PyLong_AsLongLong(args[1]);
    int close = PyObject_IsTrue(args[4]);
    long max_ranges = PyLong_AsLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (size <= 0) Py_RETURN_NONE;
    for (int i = 0; i < 5; i++) {
        if (PyDict_GetItemWithError(headers, k_conditional[i]) != NULL) Py_RETURN_NONE;
        if (PyErr_Occurred()) return NULL;
    }
    PyObject *range = PyDict_GetItemWithError(headers, k_range);
    if (range == NULL && PyErr_Occurred()) return NULL;
    long long first = 0, count = size;
    char more[96];
    int more_len = 0;
    const char *line = "HTTP/1.1 200 OK\r\n";
    int status = 200;
    if (range != NULL) {
        if (max_ranges <= 0 || !PyUnicode_Check(range)) Py_RETURN_NONE;
        Py_ssize_t n;
        const char *r = PyUnicode_AsUTF8AndSize(range, &n);
        if (r == NULL) {
            PyErr_Clear(); /* a lone surrogate: Python decides */
            Py_RETURN_NONE;
        }
        if (n < 9 || memcmp(r, "bytes=", 6) != 0) Py_RETURN_NONE;
        const char *dash = memchr(r + 6, '-', n - 6);
        if (dash == NULL) Py_RETURN_NONE;
        long long last = digits18(dash + 1, r + n - dash - 1);
        first = digits18(r + 6, dash - r - 6);
        if (first < 0 || last < 0 || first > last || first >= size) Py_RETURN_NONE;
        if (last > size - 1) last = size - 1;
        count = last - first + 1;
        status = 206;
        line = "HTTP/1.1 206 Partial Content\r\n";
        more_len = put_text(more, "Content-Range: bytes ");
        more_len += put_decimal(more + more_len, first);
        more[more_len++] = '-';
        more_len += put_decimal(more + more_len, last);
        more[more_len++] = '/';
        more_len += put_decimal(more + more_len, size);
        more_len += put_text(more + more_len, "\r\n");
    }
    char length[48];
    int length_len = put_text(length, "Content-Length: ");
    length_len += put_decimal(length + length_len, count);
    length_len += put_text(length + length_len, "\r\n");
    const char *tail = close ? "Connection: close\r\n\r\n" : "\r\n";
    Py_ssize_t line_len = (Py_ssize_t)strlen(line), tail_len = (Py_ssize_t)strlen(tail);
    Py_ssize_t date_len = PyBytes_GET_SIZE(args[2]), block_len = PyBytes_GET_SIZE(args[3]);
    PyObject *head = PyBytes_FromStringAndSize(NULL, line_len + date_len + block_len + more_len + length_len + tail_len);
    if (head == NULL) return NULL;
    char *o = PyBytes_AS_STRING(head);
    memcpy(o, line, line_len);
    o += line_len;
    memcpy(o, PyBytes_AS_STRING(args[2]), date_len);
    o += date_len;
    memcpy(o, PyBytes_AS_STRING(args[3]), block_len);
    o += block_len;
    memcpy(o, more, more_len);
    o += more_len;
    memcpy(o, length, length_len);
    o += length_len;
    memcpy(o, tail, tail_len);
    /* A tuple filled directly: Py_BuildValue parsed its format on every call. */
    PyObject *result = PyTuple_New(4);
    PyObject *st = PyLong_FromLong(status), *off = PyLong_FromLongLong(first), *cnt = PyLong_FromLongLong(count);
    if (result == NULL || st == NULL || off == NULL || cnt == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(st);
        Py_XDECREF(off);
        Py_XDECREF(cnt);
        Py_DECREF(head);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, st);
    PyTuple_SET_ITEM(result, 1, head);
    PyTuple_SET_ITEM(result, 2, off);
    PyTuple_SET_ITEM(result, 3, cnt);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(data, start, max_url, max_header_bytes, max_headers) -> (end, method, target, path, query, headers, "
     "version, keep_alive) for a plain GET/HEAD head complete in data, else None (see the module's rules)."},
    {"file_head", (PyCFunction)(void (*)(void))file_head, METH_FASTCALL,
     "file_head(headers, size, date, block, close, max_ranges) -> (status, head, offset, count) for a plain 200 or "
     "single-range 206 GET, else None (see the module's rules)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "oca.http._head", "The compiled request-head fast path.", -1, methods};

PyMODINIT_FUNC PyInit__head(void) {
    init_tables();
    s_get = PyUnicode_InternFromString("GET");
    s_head = PyUnicode_InternFromString("HEAD");
    s_v11 = PyUnicode_InternFromString("1.1");
    s_v10 = PyUnicode_InternFromString("1.0");
    s_empty = PyUnicode_InternFromString("");
    if (!s_get || !s_head || !s_v11 || !s_v10 || !s_empty) return NULL;
    const char *conditional[5] = {"if-range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since"};
    for (int i = 0; i < 5; i++) {
        k_conditional[i] = PyUnicode_InternFromString(conditional[i]);
        if (k_conditional[i] == NULL) return NULL;
    }
    k_range = PyUnicode_InternFromString("range");
    if (k_range == NULL) return NULL;
    return PyModule_Create(&module);
}
