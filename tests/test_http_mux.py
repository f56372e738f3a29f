"""Specification of the server's reading task (gateway.http.server._Mux): requests of connections
that wait for input are answered through the synchronous `handle_now`, and whatever it cannot
answer at once goes to the connection's own task without losing, repeating or reordering anything."""

from __future__ import annotations

import trio

from gateway.http.server import Deferred, Request, Response, ServerLimits, serve_http
from tests.test_http_server import FAST, Raw, get, post


class Counting:
    """handle_now + handler pair that records which requests each of them saw."""

    def __init__(self) -> None:
        self.now: list[str] = []
        self.awaited: list[str] = []
        self.deferred: list[Deferred] = []

    def handle_now(self, req: Request):
        self.now.append(req.path)
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        if req.path.startswith("/slow"):
            return self._slow(req)
        if req.path.startswith("/d"):
            answer = Deferred()
            self.deferred.append(answer)
            return answer
        return Response(200, req.path.encode() + b"|" + req.body, "text/plain")

    async def _slow(self, req: Request) -> Response:
        self.awaited.append(req.path)
        await trio.sleep(0.05)
        return Response(200, req.path.encode(), "text/plain")

    async def handler(self, req: Request):
        raise AssertionError("with handle_now given, the server never calls the handler")


async def start(nursery, app: Counting, limits=FAST, **kw) -> int:
    return await nursery.start(lambda task_status: serve_http(
        app.handler, "127.0.0.1", 0, limits, handle_now=app.handle_now, task_status=task_status, **kw))


async def test_pipelined_plain_requests_are_answered_by_handle_now_alone(nursery):
    app = Counting()
    c = await Raw.connect(await start(nursery, app))
    await c.send(b"".join(post(f"/p{i}", b"%d" % i) for i in range(50)))
    assert [body for _, _, body in await c.read(50)] == [b"/p%d|%d" % (i, i) for i in range(50)]
    for i in range(3):
        await c.send(get(f"/s{i}"))
        assert (await c.read())[0][2] == f"/s{i}|".encode()
    assert app.now == [f"/p{i}" for i in range(50)] + ["/s0", "/s1", "/s2"]
    assert app.awaited == []


async def test_an_awaitable_answer_goes_to_the_task_and_keeps_request_order(nursery):
    app = Counting()
    c = await Raw.connect(await start(nursery, app))
    await c.send(get("/a") + get("/slow1") + get("/b") + get("/slow2") + get("/c"))
    assert [body for _, _, body in await c.read(5)] == [b"/a|", b"/slow1", b"/b|", b"/slow2", b"/c|"]
    # every request went through handle_now exactly once (in the mux or in the connection's task)
    assert app.now == ["/a", "/slow1", "/b", "/slow2", "/c"]
    assert app.awaited == ["/slow1", "/slow2"]
    await c.send(get("/after"))  # parked in the mux again
    assert (await c.read())[0][2] == b"/after|"
    assert app.now[-1] == "/after"


async def test_deferred_answers_from_handle_now_keep_order_with_later_ones(nursery):
    app = Counting()
    c = await Raw.connect(await start(nursery, app))
    await c.send(get("/x") + get("/d1") + get("/y"))
    [(_, _, first)] = await c.read()
    assert first == b"/x|"
    await trio.sleep(0.02)
    assert c.responses == []  # /y waits behind the undecided /d1
    app.deferred[0].resolve(Response(202, b"decided", "text/plain"))
    assert [(s, b) for s, _, b in await c.read(2)] == [(202, b"decided"), (200, b"/y|")]


async def test_handle_now_failing_answers_500_and_the_connection_goes_on(nursery):
    app = Counting()
    c = await Raw.connect(await start(nursery, app))
    await c.send(get("/boom") + get("/ok"))
    (s1, _, _), (s2, _, b2) = await c.read(2)
    assert (s1, s2, b2) == (500, 200, b"/ok|")


async def test_split_and_closing_requests_are_answered_once_each_in_order(nursery):
    app = Counting()
    port = await start(nursery, app)
    c = await Raw.connect(port)
    second = post("/split", b"0123456789")
    await c.send(get("/one") + second[:20])  # a complete request, then half of one
    assert (await c.read())[0][2] == b"/one|"
    await c.send(second[20:])
    assert (await c.read())[0][2] == b"/split|0123456789"
    await c.send(get("/three"))
    assert (await c.read())[0][2] == b"/three|"
    await c.send(get("/slow", "Connection: close\r\n"))
    [(status, headers, body)] = await c.read()
    assert (status, headers.get("connection"), body) == (200, "close", b"/slow")
    assert await c.closed_by_peer()
    assert app.now == ["/one", "/split", "/three", "/slow"] and app.awaited == ["/slow"]


async def test_a_failure_while_the_mux_answers_ends_that_connection_only(nursery):
    def on_response(req, resp, seconds):
        if req.path == "/fatal":
            raise RuntimeError("metrics bug")

    app = Counting()
    port = await start(nursery, app, on_response=on_response)
    bad, good = await Raw.connect(port), await Raw.connect(port)
    await bad.send(get("/fatal"))
    assert await bad.closed_by_peer()
    await good.send(get("/fine"))
    assert (await good.read())[0][2] == b"/fine|"
    late = await Raw.connect(port)
    await late.send(get("/late"))
    assert (await late.read())[0][2] == b"/late|"


async def test_a_peer_that_does_not_read_its_answers_stalls_no_one_else(nursery):
    class Big(Counting):
        def handle_now(self, req: Request):
            self.now.append(req.path)
            body = b"x" * 1_000_000 if req.path.startswith("/big") else req.path.encode()
            return Response(200, body, "text/plain")

    app = Big()
    port = await start(nursery, app, ServerLimits(keepalive_timeout_s=5.0))  # FAST would reap the slow peer
    slow = await Raw.connect(port)
    await slow.send(b"".join(get(f"/big{i}") for i in range(20)))  # 20 MB of answers, none read yet
    await trio.sleep(0.2)
    await slow.send(b"".join(get(f"/big{i}") for i in range(20, 25)))
    other = await Raw.connect(port)
    with trio.fail_after(2):
        await other.send(get("/small"))
        assert (await other.read())[0][2] == b"/small"
    await trio.sleep(0.2)
    # what the slow peer sent after its answers backed up is not even read until it reads
    assert [p for p in app.now if p.startswith("/big")] == [f"/big{i}" for i in range(20)]
    answers = await slow.read(25)  # now read: every answer, whole and in order
    assert [len(body) for _, _, body in answers] == [1_000_000] * 25
    assert [p for p in app.now if p.startswith("/big")] == [f"/big{i}" for i in range(25)]


async def test_a_long_round_of_requests_lets_other_tasks_run_in_between(nursery, monkeypatch):
    """Requests of many connections that arrive at once are served in slices: between two slices
    the other tasks (the writer that commits what was accepted so far) get their turn."""
    import socket
    from time import perf_counter

    from gateway.http import server as server_module

    monkeypatch.setattr(server_module, "_MUX_SLICE_S", 0.001)
    served: list[str] = []
    seen: list[int] = []

    def handle_now(req: Request):
        end = perf_counter() + 0.0004  # a handler that takes a while: 40 of them ~16 ms
        while perf_counter() < end:
            pass
        served.append(req.path)
        return Response(200, b"ok", "text/plain")

    async def handler(req):
        raise AssertionError("plain requests never reach the task")

    async def watcher():
        while len(served) < 40:
            seen.append(len(served))
            await trio.sleep(0)

    port = await nursery.start(lambda task_status: serve_http(
        handler, "127.0.0.1", 0, FAST, handle_now=handle_now, task_status=task_status))
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    await trio.sleep(0.1)  # accepted, and parked in the reading task
    for i, sock in enumerate(socks):  # all 40 requests in, with no turn for the server in between
        sock.sendall(get(f"/c{i}"))
    nursery.start_soon(watcher)
    for sock in socks:
        with trio.socket.from_stdlib_socket(sock) as s:
            assert (await s.recv(4096)).endswith(b"ok")
    assert sorted(served) == sorted(f"/c{i}" for i in range(40))
    assert any(0 < n < 40 for n in seen), seen  # the watcher ran while the round was being served
