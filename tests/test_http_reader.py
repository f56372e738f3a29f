"""The native request reader (gateway._native.http1) against its pure twin, the server's httptools path:
what it reads it reads exactly as httptools does, and what it declines is left to httptools whole."""
import os
import random
import socket

import httptools
import pytest

from gateway.http import server as S

LIMITS = S.ServerLimits(max_body_bytes=1000, max_header_bytes=600)


@pytest.fixture
def parse_request():
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        pytest.skip("GATEWAY_PURE_PYTHON=1: the native reader is deliberately disabled")
    try:
        from gateway._native.http1 import parse_request
    except ImportError as exc:
        pytest.fail(f"native http1 not built ({exc}); run `python setup.py build_ext --inplace`")
    return parse_request


def httptools_reads(data: bytes) -> list[tuple]:
    """What the httptools path makes of `data`: (method, path, query, headers, body, keep_alive) for
    each request it completes before the end of the data or its first error."""
    a, b = socket.socketpair()
    try:
        conn = S._Conn(a, "test", LIMITS)
        conn.nread = len(data)
        try:
            conn.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, S._Reject):
            pass
        return [(r.method, r.path, r.query, r.headers, r.body, r.keep_alive) for r in conn.ready]
    finally:
        a.close()
        b.close()


def native_reads(parse_request, data: bytes) -> list[tuple]:
    """The requests the native reader takes from the start of `data`, up to the first it declines."""
    out, pos = [], 0
    while pos < len(data):
        got = parse_request(data, pos, LIMITS.max_header_bytes, LIMITS.max_body_bytes)
        if got is None:
            break
        method, target, headers, body, pos = got
        path, query = S._split_target(target)
        out.append((method, path, query, headers, body, True))
    return out


ACCEPTED = [
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer gw_0123_abc\r\n"
    b"Content-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"to\":\"+1415\"}",
    b"GET /v1/messages/01ABC?x=1&y=%20z HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a%2Fb%C3%A9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nX-Odd-Name_1: \t  leading blanks dropped\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nX-Trailing: blanks dropped at the end too \t \r\n\r\n",
    b"PATCH /x HTTP/1.1\r\nHost: a\r\nCONTENT-LENGTH: 0\r\nX-Quote: \"a\\b\" (c) <d>\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n1234567",
    b"OPTIONS /*x HTTP/1.1\r\nHost: a\r\nA:b\r\n\r\n",
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_a_plain_request_is_read_exactly_as_httptools_reads_it(parse_request, data):
    native = native_reads(parse_request, data)
    assert len(native) == 1
    assert native == httptools_reads(data)


def test_a_value_has_no_blanks_at_either_end(parse_request):
    data = b"PUT /x HTTP/1.1\r\nHost: a\r\nIdempotency-Key: \t k-1 \t \r\n\r\n"
    assert parse_request(data, 0, 600, 1000)[2] == {"host": "a", "idempotency-key": "k-1"}
    assert httptools_reads(data)[0][3] == {"host": "a", "idempotency-key": "k-1"}


def test_pipelined_requests_are_read_one_after_another(parse_request):
    data = b"".join(ACCEPTED)
    assert native_reads(parse_request, data) == httptools_reads(data)


def test_the_accept_request_is_read_natively_with_its_end_offset(parse_request):
    body = b'{"to":"+14150000001","text":{"body":"Your code is 123456"},"priority":"urgent"}'
    data = (b"POST /v1/messages HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body))
    method, target, headers, got_body, end = parse_request(data + b"GET /", 0, 16384, 1 << 20)
    assert (method, target, got_body, end) == ("POST", b"/v1/messages", body, len(data))
    assert headers == {"host": "a", "authorization": "Bearer k", "content-length": str(len(body))}


DECLINED = {
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "expect": b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\na",
    "connection": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    "repeated header": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    "empty value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n\r\n",
    "head incomplete": b"GET / HTTP/1.1\r\nHost: a\r\n",
    "body incomplete": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc",
    "body over the limit": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"a" * 1001,
    "header block over the limit": b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n",
    "length not digits": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 \r\n\r\na",
    "length too long": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000001\r\n\r\na",
    "absolute-form target": b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "obs-text": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "unknown method": b"PURGE / HTTP/1.1\r\nHost: a\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n",
    "folded header": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_anything_else_is_left_to_httptools(parse_request, name):
    assert parse_request(DECLINED[name], 0, LIMITS.max_header_bytes, LIMITS.max_body_bytes) is None


def test_a_declined_request_after_plain_ones_starts_where_they_end(parse_request):
    first = ACCEPTED[1]
    data = first + DECLINED["chunked"]
    got = parse_request(data, 0, 600, 1000)
    assert got is not None and got[4] == len(first)
    assert parse_request(data, got[4], 600, 1000) is None


def test_offsets_outside_the_data_are_declined(parse_request):
    assert parse_request(ACCEPTED[1], len(ACCEPTED[1]), 600, 1000) is None
    assert parse_request(ACCEPTED[1], -1, 600, 1000) is None


_NOISE = [b"\r", b"\n", b"\r\n", b":", b" ", b"\t", b"0", b"9", b"-", b"a", b"Z", b"/", b"?", b"%", b"#",
          b"\x00", b"\x7f", b"\xe9", b"\xff", b",", b"\"", b"Content-Length: 3\r\n",
          b"Transfer-Encoding: chunked\r\n", b"HTTP/1.0", b"HTTP/1.1\r\n"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        kind = rng.randrange(3)
        if kind == 0 and out:  # delete a few bytes
            del out[at:at + rng.randint(1, 3)]
        elif kind == 1:  # insert noise
            out[at:at] = rng.choice(_NOISE)
        elif out:  # replace a byte
            out[min(at, len(out) - 1)] = rng.randrange(256)
    return bytes(out)


def test_on_mangled_requests_the_reader_never_reads_what_httptools_would_not(parse_request):
    """Differential check over thousands of mangled requests (seeded): whatever the native reader
    accepts is exactly what httptools reads from the same bytes, request for request."""
    rng = random.Random(20261206)
    bases = ACCEPTED + [b"".join(ACCEPTED[:3]), ACCEPTED[0] + ACCEPTED[0]]
    accepted = 0
    for _ in range(6000):
        data = _mutate(rng, rng.choice(bases))
        native = native_reads(parse_request, data)
        accepted += len(native)
        assert native == httptools_reads(data)[:len(native)], data
    assert accepted > 1000  # the mangling left plenty of requests the reader does take
