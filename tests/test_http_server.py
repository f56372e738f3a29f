"""Specification of gateway.http.server: framing, keep-alive, pipelining, limits and failure handling."""

from __future__ import annotations

from functools import partial

import httptools
import orjson
import pytest
import trio

from gateway.http.server import Deferred, Request, Response, ServerLimits, serve_http

FAST = ServerLimits(max_body_bytes=1024, max_header_bytes=1024, request_timeout_s=0.3,
                    keepalive_timeout_s=0.3)


async def echo(req: Request) -> Response:
    return Response.json(200, {"method": req.method, "path": req.path, "query": req.query,
                               "body": req.body.decode(), "remote": req.remote})


async def start(nursery, handler=echo, limits=FAST, **kw) -> int:
    return await nursery.start(partial(serve_http, handler, "127.0.0.1", 0, limits, **kw))


class Raw:
    """A raw TCP client that parses whatever responses come back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""

    @classmethod
    async def connect(cls, port: int) -> Raw:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.responses.append((self.parser.get_status_code(), self._headers, self._body))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read(self, n: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
        with trio.fail_after(5):
            while len(self.responses) < n:
                data = await self.stream.receive_some(65536)
                assert data, "server closed the connection early"
                self.parser.feed_data(data)
        got, self.responses = self.responses[:n], self.responses[n:]
        return got

    async def closed_by_peer(self) -> bool:
        with trio.fail_after(5):
            try:
                return await self.stream.receive_some(65536) == b""
            except trio.BrokenResourceError:
                return True


def get(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def error_code(body: bytes) -> str:
    return orjson.loads(body)["error"]["code"]


async def test_keep_alive_connection_serves_sequential_requests(nursery):
    c = await Raw.connect(await start(nursery))
    remotes = set()
    for i in range(3):
        await c.send(get(f"/n{i}"))
        [(status, headers, body)] = await c.read()
        assert status == 200 and orjson.loads(body)["path"] == f"/n{i}"
        assert "connection" not in headers
        remotes.add(orjson.loads(body)["remote"])
    assert len(remotes) == 1


async def test_pipelined_requests_are_answered_in_order(nursery):
    async def slow_first(req: Request) -> Response:
        if req.path == "/0":
            await trio.sleep(0.05)
        return Response(200, req.path.encode(), "text/plain")

    c = await Raw.connect(await start(nursery, slow_first))
    await c.send(b"".join(get(f"/{i}") for i in range(5)))
    assert [body for _, _, body in await c.read(5)] == [b"/0", b"/1", b"/2", b"/3", b"/4"]


async def test_pipelined_plain_and_unusual_requests_in_one_read_keep_their_order(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(post("/a", b"one") + b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\ntwo\r\n0\r\n\r\n" + post("/c", b"three") + get("/d", "X-A: 1\r\nX-A: 2\r\n")
                 + post("/e", b"five"))
    answers = [orjson.loads(body) for _, _, body in await c.read(5)]
    assert [(a["path"], a["body"]) for a in answers] == [
        ("/a", "one"), ("/b", "two"), ("/c", "three"), ("/d", ""), ("/e", "five")]


async def test_a_request_split_across_reads_after_a_complete_one_is_served(nursery):
    c = await Raw.connect(await start(nursery))
    second = post("/second", b"0123456789")
    await c.send(post("/first", b"x") + second[:20])
    [(_, _, body)] = await c.read()
    assert orjson.loads(body)["path"] == "/first"
    await c.send(second[20:])
    [(_, _, body)] = await c.read()
    assert orjson.loads(body) | {"remote": ""} == {"method": "POST", "path": "/second", "query": "",
                                                    "body": "0123456789", "remote": ""}


async def test_request_fields_are_parsed(nursery):
    seen: list[Request] = []

    async def capture(req: Request) -> Response:
        seen.append(req)
        return Response(204)

    c = await Raw.connect(await start(nursery, capture))
    await c.send(post("/v1/a%20b", b"hi", "X-Tag: one\r\nx-tag: two\r\n").replace(
        b"/v1/a%20b", b"/v1/a%20b?x=1&y=%20"))
    [(status, headers, body)] = await c.read()
    req = seen[0]
    # the path as sent: decoding is the route's, once per parameter ("%2F" is not a "/")
    assert (req.method, req.path, req.query, req.body) == ("POST", "/v1/a%20b", "x=1&y=%20", b"hi")
    assert req.headers["x-tag"] == "one, two" and req.headers["host"] == "t"
    assert req.keep_alive and req.remote.startswith("127.0.0.1:") and req.started > 0
    assert status == 204 and "content-length" not in headers  # RFC 9110 8.6


async def test_responses_carry_length_type_and_extra_headers(nursery):
    async def handler(req: Request) -> Response:
        return Response(202, b"ok", "text/plain", headers=[("X-Request-Id", "abc")])

    c = await Raw.connect(await start(nursery, handler))
    await c.send(get())
    [(status, headers, body)] = await c.read()
    assert (status, body) == (202, b"ok")
    assert headers["content-type"] == "text/plain" and headers["content-length"] == "2"
    assert headers["x-request-id"] == "abc"


def test_error_response_has_standard_body_and_retry_after():
    resp = Response.error(429, "rate_limited", "slow down", {"limit": 5}, retry_after=3)
    assert resp.status == 429 and resp.headers == [("Retry-After", "3")]
    assert orjson.loads(resp.body) == {"error": {"code": "rate_limited", "message": "slow down",
                                                 "details": {"limit": 5}}}
    assert orjson.loads(Response.error(400, "x", "y").body)["error"]["details"] == {}


async def test_large_response_is_written_completely(nursery):
    big = bytes(range(256)) * 16384  # 4 MiB: far more than one socket send takes

    async def handler(req: Request) -> Response:
        return Response(200, big, "application/octet-stream")

    c = await Raw.connect(await start(nursery, handler))
    await c.send(get("/1") + get("/2"))
    assert [body for _, _, body in await c.read(2)] == [big, big]


async def test_body_exactly_at_limit_is_accepted(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(post("/max", b"x" * FAST.max_body_bytes))
    [(status, _, body)] = await c.read()
    assert status == 200 and len(orjson.loads(body)["body"]) == FAST.max_body_bytes


async def test_chunked_request_body_is_reassembled(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    [(status, _, body)] = await c.read()
    assert status == 200 and orjson.loads(body)["body"] == "hello world"


async def test_trailer_fields_are_never_headers_and_are_bounded(nursery):
    seen: list[Request] = []

    async def capture(req: Request) -> Response:
        seen.append(req)
        return Response(200, b"ok")

    c = await Raw.connect(await start(nursery, capture))
    await c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\nhi\r\n0\r\nAuthorization: Bearer stolen\r\nHost: other\r\n\r\n")
    [(status, _, _)] = await c.read()
    assert status == 200 and seen[0].body == b"hi"
    assert "authorization" not in seen[0].headers and seen[0].headers["host"] == "t"
    # a trailer section past the header limit is refused like a head past it
    await c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                 + b"X: a\r\n" * 400 + b"\r\n")
    [(status, _, body)] = await c.read()
    assert status == 431 and error_code(body) == "headers_too_large"
    assert await c.closed_by_peer()


@pytest.mark.parametrize("native", [True, False], ids=["plain", "httptools"])
async def test_header_values_lose_their_trailing_blanks(nursery, native):
    seen: list[Request] = []

    async def capture(req: Request) -> Response:
        seen.append(req)
        return Response(200, b"ok")

    c = await Raw.connect(await start(nursery, capture))
    # an Expect header sends the request down the httptools path
    extra = "" if native else "Expect: 100-continue\r\n"
    await c.send(post("/p", b"x", f"Idempotency-Key: k-1 \t \r\n{extra}"))
    await c.read()
    assert seen[0].headers["idempotency-key"] == "k-1"


async def test_a_chunked_body_in_small_chunks_is_bounded_by_its_data_not_its_framing(nursery):
    limits = ServerLimits(max_body_bytes=200_000, max_header_bytes=1024)
    c = await Raw.connect(await start(nursery, limits=limits))
    body = b"x" * 100_000  # in 2-byte chunks: 3.5x that on the wire, framing included
    chunks = b"".join(b"2\r\n" + body[i:i + 2] + b"\r\n" for i in range(0, len(body), 2))
    await c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    [(status, _, reply)] = await c.read()
    assert status == 200 and len(orjson.loads(reply)["body"]) == len(body)


async def test_an_upgrade_ask_is_ignored_without_a_body_and_refused_with_one(nursery):
    seen: list[Request] = []

    async def capture(req: Request) -> Response:
        seen.append(req)
        return Response.json(200, {"body": req.body.decode()})

    c = await Raw.connect(await start(nursery, capture))
    up = "Connection: Upgrade\r\nUpgrade: websocket\r\n"
    # answered as plain HTTP, and the request pipelined behind it is parsed and answered too
    await c.send(get("/u", up) + post("/after", b"body"))
    [(first, _, _), (second, _, body)] = await c.read(2)
    assert (first, second) == (200, 200) and orjson.loads(body) == {"body": "body"}
    assert [r.path for r in seen] == ["/u", "/after"]
    # its body would be skipped by the parser: refused before any handler runs
    await c.send(post("/lost", b"payload", up))
    [(status, headers, body)] = await c.read()
    assert status == 400 and error_code(body) == "bad_request" and headers["connection"] == "close"
    assert await c.closed_by_peer()
    assert [r.path for r in seen] == ["/u", "/after"]


@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
                         ids=["none", "two"])
async def test_an_http11_request_needs_exactly_one_host(nursery, head):
    c = await Raw.connect(await start(nursery))
    await c.send(head)
    [(status, _, body)] = await c.read()
    assert status == 400 and error_code(body) == "bad_request"
    assert await c.closed_by_peer()


async def test_an_http10_request_may_leave_host_out(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"GET /old HTTP/1.0\r\n\r\n")
    [(status, _, _)] = await c.read()
    assert status == 200


async def test_an_absolute_form_target_keeps_its_query(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"GET http://t?a=1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"GET http://t/p/q?b=2 HTTP/1.1\r\nHost: t\r\n\r\n")
    [(_, _, one), (_, _, two)] = await c.read(2)
    assert (orjson.loads(one)["path"], orjson.loads(one)["query"]) == ("/", "a=1")
    assert (orjson.loads(two)["path"], orjson.loads(two)["query"]) == ("/p/q", "b=2")


async def test_answers_no_handler_gave_are_reported_too(nursery):
    reported: list[tuple[str, int, str]] = []
    port = await start(nursery, on_response=lambda req, resp, s: reported.append((req.path, resp.status, resp.code)))
    for raw in (b"\x00 not http\r\n\r\n", get("/", "X-Big: " + "a" * 2000 + "\r\n"),
                b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
                b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf"):
        c = await Raw.connect(port)
        await c.send(raw)
        await c.read()
        assert await c.closed_by_peer()
    assert reported == [("", 400, "bad_request"), ("", 431, "headers_too_large"),
                        ("", 413, "payload_too_large"), ("", 408, "request_timeout")]


async def test_content_length_above_limit_gets_413_and_close(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
    [(status, headers, body)] = await c.read()
    assert status == 413 and error_code(body) == "payload_too_large"
    assert headers["connection"] == "close"
    assert await c.closed_by_peer()


async def test_chunked_body_growing_past_limit_gets_413(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        await c.send(b"200\r\n" + b"x" * 0x200 + b"\r\n")
    [(status, _, body)] = await c.read()
    assert status == 413 and error_code(body) == "payload_too_large"
    assert await c.closed_by_peer()


async def test_oversized_headers_get_431(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(get("/", "X-Big: " + "a" * 2000 + "\r\n"))
    [(status, _, body)] = await c.read()
    assert status == 431 and error_code(body) == "headers_too_large"
    assert await c.closed_by_peer()


async def test_header_block_trickling_past_limit_gets_431(nursery):
    c = await Raw.connect(await start(nursery, limits=ServerLimits(max_header_bytes=1024)))
    await c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    with trio.fail_after(5):
        while not c.responses:
            await c.send(b"a" * 8192)
            await trio.sleep(0.001)
            with trio.move_on_after(0.001):
                c.parser.feed_data(await c.stream.receive_some(65536))
    assert c.responses[0][0] == 431


async def test_incomplete_request_gets_408_after_request_timeout(nursery):
    c = await Raw.connect(await start(nursery))
    started = trio.current_time()
    await c.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhalf")
    [(status, _, body)] = await c.read()
    assert status == 408 and error_code(body) == "request_timeout"
    assert 0.25 <= trio.current_time() - started < 2
    assert await c.closed_by_peer()


async def test_garbage_gets_400_and_close(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"\x00\x01 not http at all\r\n\r\n")
    [(status, _, body)] = await c.read()
    assert status == 400 and error_code(body) == "bad_request"
    assert await c.closed_by_peer()


async def test_requests_before_a_parse_error_are_still_answered(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(get("/ok") + b"BROKEN\r\n\r\n")
    [(first, _, _), (second, _, _)] = await c.read(2)
    assert (first, second) == (200, 400)


async def test_handler_exception_gets_500_and_connection_stays_usable(nursery, caplog):
    async def flaky(req: Request) -> Response:
        if req.path == "/boom":
            raise RuntimeError("kaboom")
        return Response(200, b"fine", "text/plain")

    c = await Raw.connect(await start(nursery, flaky))
    await c.send(get("/boom"))
    [(status, _, body)] = await c.read()
    assert status == 500 and error_code(body) == "internal_error"
    assert any(r.name == "gateway.http" and r.exc_info for r in caplog.records)
    await c.send(get("/fine"))
    assert (await c.read())[0][2] == b"fine"


async def test_connection_close_is_honoured_and_echoed(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(get("/", "Connection: close\r\n"))
    [(status, headers, _)] = await c.read()
    assert status == 200 and headers["connection"] == "close"
    assert await c.closed_by_peer()


async def test_http10_closes_by_default(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"GET /old HTTP/1.0\r\n\r\n")
    [(status, headers, _)] = await c.read()
    assert status == 200 and headers["connection"] == "close"
    assert await c.closed_by_peer()


async def test_http10_keep_alive_is_kept_and_echoed(nursery):
    c = await Raw.connect(await start(nursery))
    for _ in range(2):
        await c.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        [(status, headers, _)] = await c.read()
        assert status == 200 and headers["connection"] == "keep-alive"


async def test_expect_100_continue_gets_interim_response(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    with trio.fail_after(5):
        interim = await c.stream.receive_some(65536)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await c.send(b"body")
    [(status, _, body)] = await c.read()
    assert status == 200 and orjson.loads(body)["body"] == "body"


async def test_idle_keepalive_connection_is_closed(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(get())
    await c.read()
    started = trio.current_time()
    assert await c.closed_by_peer()
    assert 0.25 <= trio.current_time() - started < 2


async def test_head_response_has_length_but_no_body(nursery):
    c = await Raw.connect(await start(nursery))
    await c.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + get("/after"))
    with trio.fail_after(5):
        data = b""
        while b"/after" not in data:
            data += await c.stream.receive_some(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"Content-Length: " in head and rest.startswith(b"HTTP/1.1 200 OK")


async def test_on_response_reports_each_response_with_its_latency(nursery):
    reported: list[tuple[str, int, float]] = []
    port = await start(nursery, on_response=lambda req, resp, s: reported.append((req.path, resp.status, s)))
    c = await Raw.connect(port)
    await c.send(get("/a") + get("/b"))
    await c.read(2)
    assert [(p, st) for p, st, _ in reported] == [("/a", 200), ("/b", 200)]
    assert all(0 <= s < 1 for _, _, s in reported)


async def test_client_disconnect_mid_request_does_not_disturb_the_server(nursery):
    port = await start(nursery)
    c = await Raw.connect(port)
    await c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npartial")
    await c.stream.aclose()
    other = await Raw.connect(port)
    await other.send(get("/still-up"))
    assert (await other.read())[0][0] == 200


async def test_server_binds_ephemeral_port_and_stops_when_cancelled():
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        assert port > 0
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


class Decider:
    """A handler that answers /d... with a Deferred it resolves only when told, everything else at once."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred]] = []
        self.arrived = trio.Event()

    async def __call__(self, req: Request) -> Response | Deferred:
        if not req.path.startswith("/d"):
            return Response(200, req.path.encode(), "text/plain")
        answer = Deferred()
        self.pending.append((req.path, answer))
        self.arrived.set()
        return answer

    async def wait_for(self, n: int) -> None:
        with trio.fail_after(5):
            while len(self.pending) < n:
                self.arrived = trio.Event()
                await self.arrived.wait()

    def resolve_all(self) -> None:
        for path, answer in self.pending:
            answer.resolve(Response(202, path.encode(), "text/plain"))
        self.pending.clear()


async def test_deferred_answer_is_written_when_resolved(nursery):
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/d1"))
    await decider.wait_for(1)
    await trio.sleep(0.01)
    assert c.responses == []  # nothing written before the decision
    decider.resolve_all()
    [(status, _, body)] = await c.read()
    assert (status, body) == (202, b"/d1")
    await c.send(get("/next"))  # the connection goes on as usual
    assert (await c.read())[0][2] == b"/next"


async def test_answers_behind_a_pending_deferred_keep_request_order(nursery):
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/a") + get("/d1") + get("/b") + get("/d2") + get("/c"))
    await decider.wait_for(2)
    [(_, _, first)] = await c.read()
    assert first == b"/a"
    decider.resolve_all()
    assert [body for _, _, body in await c.read(4)] == [b"/d1", b"/b", b"/d2", b"/c"]


async def test_a_deferred_resolved_out_of_order_waits_for_the_one_before(nursery):
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/d1") + get("/d2"))
    await decider.wait_for(2)
    (_, first), (_, second) = decider.pending
    second.resolve(Response(202, b"second", "text/plain"))
    await trio.sleep(0.01)
    assert c.responses == []
    first.resolve(Response(202, b"first", "text/plain"))
    assert [body for _, _, body in await c.read(2)] == [b"first", b"second"]


async def test_a_half_closed_peer_still_gets_its_deferred_answer(nursery):
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/d1"))
    await c.stream.send_eof()
    await decider.wait_for(1)
    await trio.sleep(0.01)
    decider.resolve_all()
    [(status, _, body)] = await c.read()
    assert (status, body) == (202, b"/d1")
    assert await c.closed_by_peer()


async def test_connection_close_waits_for_the_deferred_answer(nursery):
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/d1", "Connection: close\r\n"))
    await decider.wait_for(1)
    decider.resolve_all()
    [(status, headers, body)] = await c.read()
    assert (status, body, headers["connection"]) == (202, b"/d1", "close")
    assert await c.closed_by_peer()


async def test_a_parse_error_behind_a_deferred_is_answered_after_it(nursery):
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/d1") + b"BROKEN\r\n\r\n")
    await decider.wait_for(1)
    decider.resolve_all()
    [(first, _, _), (second, _, body)] = await c.read(2)
    assert (first, second, error_code(body)) == (202, 400, "bad_request")
    assert await c.closed_by_peer()


async def test_a_deferred_for_a_departed_peer_is_dropped_quietly(nursery):
    decider = Decider()
    port = await start(nursery, decider)
    c = await Raw.connect(port)
    await c.send(get("/d1"))
    await decider.wait_for(1)
    await c.stream.aclose()
    await trio.sleep(0.05)
    decider.resolve_all()  # nobody to write to: no error
    other = await Raw.connect(port)
    await other.send(get("/still-up"))
    assert (await other.read())[0][2] == b"/still-up"


async def test_on_response_reports_deferred_answers_when_written(nursery):
    decider = Decider()
    reported: list[tuple[str, int]] = []
    port = await start(nursery, decider, on_response=lambda req, resp, s: reported.append((req.path, resp.status)))
    c = await Raw.connect(port)
    await c.send(get("/d1"))
    await decider.wait_for(1)
    await trio.sleep(0.01)
    assert reported == []
    decider.resolve_all()
    await c.read()
    assert reported == [("/d1", 202)]


async def test_a_large_deferred_answer_is_written_completely(nursery):
    big = b"x" * 8_000_000
    decider = Decider()
    c = await Raw.connect(await start(nursery, decider))
    await c.send(get("/d1") + get("/after"))
    await decider.wait_for(1)
    decider.pending[0][1].resolve(Response(200, big, "text/plain"))
    [(_, _, body), (_, _, after)] = await c.read(2)
    assert body == big and after == b"/after"
