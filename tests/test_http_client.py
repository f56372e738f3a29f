"""Specification of gateway.http.client: requests, keep-alive reuse, response framing and errors."""

from __future__ import annotations

import socket
from functools import partial

import orjson
import pytest
import trio

from gateway.http.client import ConnectError, HttpClient, ProtocolError, RequestTimeout
from gateway.http.server import Request, Response, ServerLimits, serve_http


async def echo(req: Request) -> Response:
    return Response.json(200, {"method": req.method, "path": req.path, "query": req.query,
                               "body": req.body.decode(), "remote": req.remote,
                               "signature": req.headers.get("x-signature")})


async def start_server(nursery, limits: ServerLimits = ServerLimits()) -> int:
    return await nursery.start(partial(serve_http, echo, "127.0.0.1", 0, limits))


async def start_raw(nursery, handler) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
async def client():
    c = HttpClient()
    yield c
    await c.aclose()


async def test_get_returns_status_headers_and_body(nursery, client):
    port = await start_server(nursery)
    resp = await client.request("GET", f"http://127.0.0.1:{port}/v1/ping?x=1")
    assert resp.status == 200 and resp.headers["content-type"] == "application/json"
    assert orjson.loads(resp.body)["path"] == "/v1/ping" and orjson.loads(resp.body)["query"] == "x=1"


async def test_post_sends_body_and_headers(nursery, client):
    port = await start_server(nursery)
    resp = await client.request("POST", f"http://127.0.0.1:{port}/hook", body=b'{"a":1}',
                                headers=[("X-Signature", "sig")])
    got = orjson.loads(resp.body)
    assert (got["method"], got["body"], got["signature"]) == ("POST", '{"a":1}', "sig")


async def test_sequential_requests_reuse_one_connection(nursery, client):
    port = await start_server(nursery)
    remotes = {orjson.loads((await client.request("GET", f"http://127.0.0.1:{port}/")).body)["remote"]
               for _ in range(5)}
    assert len(remotes) == 1


async def test_concurrent_requests_are_capped_per_host(nursery):
    port = await start_server(nursery)
    client = HttpClient(max_connections_per_host=2)
    remotes: set[str] = set()

    async def one() -> None:
        resp = await client.request("GET", f"http://127.0.0.1:{port}/")
        remotes.add(orjson.loads(resp.body)["remote"])

    async with trio.open_nursery() as inner:
        for _ in range(10):
            inner.start_soon(one)
    await client.aclose()
    assert 1 <= len(remotes) <= 2


async def test_chunked_response_is_decoded(nursery, client):
    async def chunked(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        await trio.sleep_forever()

    port = await start_raw(nursery, chunked)
    resp = await client.request("GET", f"http://127.0.0.1:{port}/")
    assert (resp.status, resp.body) == (200, b"abcdefg")


async def test_response_delimited_by_close_is_read_to_eof(nursery, client):
    async def until_close(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await stream.aclose()

    port = await start_raw(nursery, until_close)
    resp = await client.request("GET", f"http://127.0.0.1:{port}/")
    assert resp.body == b"all of it"


async def test_stale_pooled_connection_is_retried_on_a_fresh_one(nursery, client):
    # Long enough that the first request reaches the server on a busy machine (with 50 ms, a stalled
    # VM once had the new connection reaped before its first request), short enough to wait out.
    port = await start_server(nursery, ServerLimits(keepalive_timeout_s=0.25))
    first = orjson.loads((await client.request("GET", f"http://127.0.0.1:{port}/")).body)["remote"]
    await trio.sleep(1.0)  # let the server close the idle pooled connection
    second = orjson.loads((await client.request("GET", f"http://127.0.0.1:{port}/")).body)["remote"]
    assert first != second


async def test_connection_dropped_mid_response_raises_protocol_error(nursery, client):
    async def truncate(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await stream.aclose()

    port = await start_raw(nursery, truncate)
    with pytest.raises(ProtocolError):
        await client.request("GET", f"http://127.0.0.1:{port}/")


async def test_upgrade_answer_raises_protocol_error(nursery, client):
    async def upgrade(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
        await trio.sleep_forever()

    port = await start_raw(nursery, upgrade)
    with pytest.raises(ProtocolError):
        await client.request("POST", f"http://127.0.0.1:{port}/hooks", body=b"{}")


def flooding(head: bytes, piece: bytes):
    """A server that answers with `head`, then `piece` again and again (for up to 5 s)."""
    async def flood(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(head)
        with trio.move_on_after(5):
            while True:
                await stream.send_all(piece)
    return flood


async def test_an_oversized_body_is_cut_and_the_answer_is_its_status(nursery, client):
    port = await start_raw(nursery, flooding(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n", b"x" * 65536))
    with trio.fail_after(5):
        resp = await client.request("GET", f"http://127.0.0.1:{port}/")
    assert resp.status == 200 and resp.truncated and len(resp.body) <= 1 << 20


async def test_an_endless_header_section_raises_protocol_error(nursery, client):
    port = await start_raw(nursery, flooding(b"HTTP/1.1 200 OK\r\n", b"X-R: a\r\n" * 8192))
    with trio.fail_after(5), pytest.raises(ProtocolError):
        await client.request("GET", f"http://127.0.0.1:{port}/")


async def test_refused_port_raises_connect_error(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError):
        await client.request("GET", f"http://127.0.0.1:{port}/")


async def test_silent_server_raises_request_timeout(nursery, client):
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await start_raw(nursery, silent)
    started = trio.current_time()
    with pytest.raises(RequestTimeout):
        await client.request("POST", f"http://127.0.0.1:{port}/", body=b"x", timeout_s=0.2)
    assert trio.current_time() - started < 2


async def test_https_handshake_failure_raises_connect_error(nursery, client):
    port = await start_server(nursery)  # plain HTTP: the TLS handshake cannot succeed
    with pytest.raises(ConnectError):
        await client.request("GET", f"https://127.0.0.1:{port}/", timeout_s=2)
