# cython: language_level=3
"""Native HTTP/1.1 request reader for the common case: one complete, plainly formed request at a
given offset of a read, parsed in one C pass instead of httptools' callbacks into Python.

It owns only recognising that strict subset; anything outside it (HTTP/1.0, chunked or Expect or
Connection/Upgrade headers, repeated headers, no Host, limits reached, an incomplete request, any unusual
byte) is declined with None, and the caller feeds the bytes to httptools, its pure twin (the
server's httptools path), so every behaviour and error stays theirs. Whatever it accepts it must
return exactly as that path would.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Contains, PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1

cdef Py_ssize_t _NAME_CACHE_MAX = 512
cdef Py_ssize_t _MAX_LENGTH_DIGITS = 18

# Byte classes: 1 = tchar (RFC 9110 token), 2 = safe in a request target, 4 = header value byte.
cdef unsigned char _CLASS[256]


cdef void _init_classes():
    cdef int c
    cdef bytes tchar = b"!#$%&'*+-.^_`|~"
    cdef bytes target = b"-._~!$&'()*+,;=:@/?%"
    for c in range(256):
        _CLASS[c] = 0
    for c in range(0x30, 0x3A):
        _CLASS[c] |= 3
    for c in range(0x41, 0x5B):
        _CLASS[c] |= 3
    for c in range(0x61, 0x7B):
        _CLASS[c] |= 3
    for c in tchar:
        _CLASS[c] |= 1
    for c in target:
        _CLASS[c] |= 2
    for c in range(0x20, 0x7F):
        _CLASS[c] |= 4
    _CLASS[0x09] |= 4


_init_classes()

# Methods are handed out as the same str objects every time.
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
# Raw header name → lower-case str, for names seen before (bounded).
_NAMES = {}
# Headers whose meaning the httptools path handles (keep-alive, upgrades, 100-continue, chunking).
_DECLINED = frozenset(("transfer-encoding", "connection", "upgrade", "expect"))


def parse_request(bytes data not None, Py_ssize_t pos, Py_ssize_t max_header, Py_ssize_t max_body):
    """The request that starts at data[pos:] as (method, target bytes, headers, body, end offset),
    or None when it is not a complete request of the common, strictly formed kind.

    headers maps lower-case names to values decoded as latin-1 (leading blanks dropped, as
    httptools does, and trailing ones, as the server does after httptools); `max_header` and `max_body` decline what the httptools path would measure."""
    cdef const unsigned char* p = <const unsigned char*> PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = pos, start, end, vstart, vend, k
    cdef Py_ssize_t hbytes, length = 0
    cdef bint has_length = False, has_host = False
    cdef unsigned char c
    cdef PyObject* cached
    if pos < 0 or pos >= n:
        return None
    # method
    start = i
    while i < n and 0x41 <= p[i] <= 0x5A:
        i += 1
    if i >= n or p[i] != 0x20 or i - start > 7:
        return None
    cached = PyDict_GetItem(_METHODS, PyBytes_FromStringAndSize(<const char*> p + start, i - start))
    if cached is NULL:
        return None
    method = <object> cached
    i += 1
    # origin-form target
    start = i
    if i >= n or p[i] != 0x2F:
        return None
    while i < n and _CLASS[p[i]] & 2:
        i += 1
    end = i
    if n - i < 10 or p[i] != 0x20:
        return None
    if (p[i + 1] != b"H" or p[i + 2] != b"T" or p[i + 3] != b"T" or p[i + 4] != b"P" or p[i + 5] != b"/"
            or p[i + 6] != b"1" or p[i + 7] != b"." or p[i + 8] != b"1" or p[i + 9] != b"\r"):
        return None
    if i + 10 >= n or p[i + 10] != b"\n":
        return None
    target = PyBytes_FromStringAndSize(<const char*> p + start, end - start)
    hbytes = 16 + (end - start)
    i += 11
    headers = {}
    while True:
        if i + 1 >= n:
            return None
        if p[i] == b"\r":
            if p[i + 1] != b"\n":
                return None
            i += 2
            break
        # name
        start = i
        while i < n and _CLASS[p[i]] & 1:
            i += 1
        if i >= n or p[i] != b":" or i == start:
            return None
        raw = PyBytes_FromStringAndSize(<const char*> p + start, i - start)
        cached = PyDict_GetItem(_NAMES, raw)
        if cached is NULL:
            name = raw.decode("latin-1").lower()
            if len(_NAMES) < _NAME_CACHE_MAX:
                _NAMES[raw] = name
        else:
            name = <object> cached
        i += 1
        while i < n and (p[i] == 0x20 or p[i] == 0x09):
            i += 1
        vstart = i
        while i < n and _CLASS[p[i]] & 4:
            i += 1
        if i + 1 >= n or p[i] != b"\r" or p[i + 1] != b"\n" or i == vstart:
            return None
        vend = i  # the value without its trailing blanks (RFC 9110 5.5)
        while p[vend - 1] == 0x20 or p[vend - 1] == 0x09:
            vend -= 1
        if PyDict_Contains(headers, name) or name in _DECLINED:
            return None
        if name == "host":
            has_host = True
        elif name == "content-length":
            if vend != i or vend - vstart > _MAX_LENGTH_DIGITS:
                return None
            for k in range(vstart, vend):
                c = p[k]
                if c < 0x30 or c > 0x39:
                    return None
                length = length * 10 + (c - 0x30)
            has_length = True
        PyDict_SetItem(headers, name, PyUnicode_DecodeLatin1(<const char*> p + vstart, vend - vstart, NULL))
        hbytes += (vend - vstart) + len(name) + 4
        i += 2
    if not has_host or hbytes > max_header or (has_length and length > max_body) or n - i < length:
        return None  # (a request without Host is the httptools path's to refuse)
    if length:
        body = PyBytes_FromStringAndSize(<const char*> p + i, length)
    else:
        body = b""
    return method, target, headers, body, i + length
