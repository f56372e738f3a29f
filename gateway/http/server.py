"""Thin HTTP/1.1 server on trio + httptools: owns connections, framing, limits and keep-alive.

It hands each complete request to one handler, in order, and writes the responses back; it must
never route, authenticate or interpret bodies, and one connection's failure must never crash it.
A handler may answer with a `Deferred` (a response decided later, e.g. after a group commit): the
connection task goes on without waiting, and whoever decides writes it out through `resolve()`,
still in request order, without waking the connection task.

Who reads: every connection has a task, but a connection that waits for its next request is parked
in the one `_Mux` task, which waits on its own epoll set for all of them. When requests arrive, the
mux reads, parses and answers them itself through the synchronous `handle_now` (a request costs a
recv and a send, no task switch and no epoll registration); whatever needs more (an awaitable
answer, a partial or malformed request, Connection: close, a peer that does not read its answers)
goes back to the connection's task, which goes on from exactly that point.
"""

from __future__ import annotations

import http
import logging
import math
import os
import select
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter

import httptools
import msgspec
import orjson
import trio
from trio.lowlevel import (Abort, checkpoint, current_task, notify_closing, reschedule, wait_readable,
                           wait_task_rescheduled, wait_writable)

logger = logging.getLogger("gateway.http")


def _native_reader():
    """gateway._native.http1.parse_request, the one-pass reader of plainly formed requests, or None:
    then (not built, or GATEWAY_PURE_PYTHON=1) httptools, its pure twin, reads every request."""
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        return None
    try:
        from gateway._native.http1 import parse_request  # noqa: PLC0415 - optional extension
    except ImportError:
        return None
    return parse_request


_parse_request = _native_reader()
IMPLEMENTATION = "native" if _parse_request is not None else "pure"

_RECV_SIZE = 65536
_LINGER_S = 1.0
_LINGER_MAX_BYTES = 4 * 1_048_576
_CACHE_MAX = 512
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MUX_SLICE_S = 0.002  # requests served by the reading task before the other tasks get a turn
_QUEUE_MAX = 256  # pending answers on one connection before its task stops reading more requests

# Connection phases, read by the reaper task.
_IDLE = 0      # waiting for the first byte of the next request
_READING = 1   # a request has started but is not complete
_BUSY = 2      # running handlers / writing responses; never timed out by the reaper
_CLOSING = 3   # answered everything and closing (a linger): owes nothing


class Request:
    """One parsed HTTP request, as handed to the handler."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "remote", "started",
                 "memo", "label", "_echo_keepalive")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool, remote: str, started: float, memo: dict | None = None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.remote = remote
        self.started = started
        # One dict per connection, shared by its requests, for the handler's own use (the server
        # never reads it): e.g. the credential this connection was last verified with.
        self.memo = memo if memo is not None else {}
        self.label = ""  # set by the handler (e.g. the route pattern) for on_response; never read here
        self._echo_keepalive = False  # HTTP/1.0 keep-alive must be confirmed in the response

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} from {self.remote}>"


class Response:
    """A complete response; the server adds Content-Length and framing headers."""

    __slots__ = ("status", "body", "content_type", "headers", "code")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json",
                 headers: list[tuple[str, str]] | None = None, code: str = "") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.code = code  # an error's stable code (for metrics); "" for a success

    @staticmethod
    def json(status: int, obj) -> Response:
        return Response(status, orjson.dumps(obj))

    @staticmethod
    def error(status: int, code: str, message: str, details: dict | None = None,
              retry_after: int | None = None) -> Response:
        body = orjson.dumps({"error": {"code": code, "message": message, "details": details or {}}})
        headers = None if retry_after is None else [("Retry-After", str(int(retry_after)))]
        return Response(status, body, headers=headers, code=code)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)}B>"


class Deferred:
    """A response decided after the handler returned: whoever decides calls `resolve(response)` once
    (from the event loop's thread, any task). The server writes it, and every response after it on
    the same connection, in request order; if the connection is gone by then, it is dropped."""

    __slots__ = ("response", "_conn", "_req")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._conn: _Conn | None = None
        self._req: Request | None = None

    def resolve(self, response: Response) -> None:
        if self.response is not None:
            return
        self.response = response
        conn = self._conn
        if conn is not None:
            conn.flush()

    def __repr__(self) -> str:
        return f"<Deferred {self.response!r}>"


Handler = Callable[[Request], Awaitable["Response | Deferred"]]
# The synchronous entry: an answer now, or an awaitable (not started yet) that the connection's task
# awaits for it. Never awaits anything itself: it runs in the mux, on behalf of every connection.
HandleNow = Callable[[Request], "Response | Deferred | Awaitable[Response | Deferred]"]


class ServerLimits(msgspec.Struct, frozen=True):
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 16_384
    request_timeout_s: float = 10.0     # a started request must be complete within this
    keepalive_timeout_s: float = 75.0   # an idle keep-alive connection is closed after this


# ---------------------------------------------------------------------------------------------
# Response encoding (precomputed status lines and content-type lines)

def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


_STATUS_LINES: dict[int, bytes] = {s.value: _status_line(s.value) for s in http.HTTPStatus}
_CONTENT_TYPES: dict[str, bytes] = {}


def _content_type_line(content_type: str) -> bytes:
    line = _CONTENT_TYPES.get(content_type)
    if line is None:
        line = b"Content-Type: %s\r\n" % content_type.encode("latin-1")
        if len(_CONTENT_TYPES) < _CACHE_MAX:
            _CONTENT_TYPES[content_type] = line
    return line


def _extra_headers(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)


def _encode(resp: Response, connection: bytes, head_only: bool) -> bytes:
    """Serialise a response; `connection` is an already-formatted Connection header line or b""."""
    line = _STATUS_LINES.get(resp.status) or _status_line(resp.status)
    ctype = _CONTENT_TYPES.get(resp.content_type) or _content_type_line(resp.content_type)
    body = resp.body
    if not body and resp.status in (204, 304):  # no content, and no Content-Length (RFC 9110 8.6)
        extra = _extra_headers(resp.headers) if resp.headers else b""
        return b"%s%s%s\r\n" % (line, extra, connection)
    if not (resp.headers or connection or head_only):
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (line, ctype, len(body), body)
    extra = _extra_headers(resp.headers) if resp.headers else b""
    return b"%s%sContent-Length: %d\r\n%s%s\r\n%s" % (
        line, ctype, len(body), extra, connection, b"" if head_only else body)


_CLOSE = b"Connection: close\r\n"
_KEEP = b"Connection: keep-alive\r\n"
_INTERNAL_ERROR = Response.error(500, "internal_error", "internal server error")


def _limit_error(status: int) -> Response:
    if status == 413:
        return Response.error(413, "payload_too_large", "request body is too large")
    if status == 431:
        return Response.error(431, "headers_too_large", "request headers are too large")
    if status == 408:
        return Response.error(408, "request_timeout", "request was not completed in time")
    return Response.error(400, "bad_request", "malformed HTTP request")




# ---------------------------------------------------------------------------------------------
# Per-connection parser protocol

class _Reject(Exception):
    """Raised from a parser callback to stop parsing and answer with `status` (413/431)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_HEADER_NAMES: dict[bytes, str] = {}
_TARGETS: dict[bytes, tuple[str, str]] = {}
_METHODS: dict[bytes, str] = {m: m.decode() for m in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE",
                                                      b"HEAD", b"OPTIONS")}


def _header_name(raw: bytes) -> str:
    name = raw.decode("latin-1").lower()
    if len(_HEADER_NAMES) < _CACHE_MAX:
        _HEADER_NAMES[raw] = name
    return name


def _split_target(url: bytes) -> tuple[str, str]:
    """Request target → (path as sent, raw query); short targets are memoised."""
    target = url
    if url[:1] != b"/" and b"://" in url:
        rest = url.split(b"://", 1)[1]
        cuts = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
        url = rest[min(cuts):] if cuts else b""
        if url[:1] != b"/":  # "http://host?q" has the path "/"
            url = b"/" + url
    raw_path, sep, raw_query = url.partition(b"?")
    # routed as sent: "%2F" is not a "/", and a route's handler decodes each parameter once
    path = raw_path.decode("utf-8", "replace")
    result = (path, raw_query.decode("latin-1") if sep else "")
    if len(target) <= 256 and len(_TARGETS) < 4 * _CACHE_MAX:
        _TARGETS[target] = result
    return result


# Parser states of the message being received.
_BETWEEN, _HEADERS, _BODY = 0, 1, 2


class _Conn:
    """httptools protocol + connection state; completed requests accumulate in `ready`."""

    __slots__ = ("sock", "remote", "parser", "ready", "scope", "phase", "mark", "now", "nread",
                 "max_body", "max_header", "state", "started", "url", "headers", "body", "hraw",
                 "method", "keep_alive", "echo", "expect", "continued", "memo", "queue", "backlog",
                 "closed", "waiter", "waiting_input", "draining", "on_response", "spawn", "fd", "task",
                 "handoff", "fail", "pending", "trailer")

    def __init__(self, sock: socket.socket, remote: str, limits: ServerLimits,
                 on_response: Callable[[Request, Response, float], None] | None = None,
                 spawn: Callable | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.remote = remote
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[Request] = []
        self.memo: dict = {}
        # Answers not written yet, in request order: encoded bytes, or a Deferred still undecided at
        # the head. Only ever non-empty while a Deferred is pending.
        self.queue: deque[bytes | Deferred] = deque()
        self.backlog: deque[bytes] = deque()  # bytes the socket did not take yet (a drain task sends them)
        self.closed = False
        self.waiter: trio.Event | None = None  # the connection task waiting for queue and backlog to empty
        self.waiting_input = False  # the connection task is between reads (not running handlers)
        self.draining = False
        self.on_response = on_response
        self.spawn = spawn
        self.scope = trio.CancelScope()
        self.phase = _IDLE
        self.mark = self.now = self.started = perf_counter()
        self.nread = self.hraw = self.trailer = 0
        self.max_body = limits.max_body_bytes
        self.max_header = limits.max_header_bytes
        self.state = _BETWEEN
        self.url = b""
        self.method = ""
        self.headers: dict[str, str] = {}
        self.body: bytes | bytearray = b""
        self.keep_alive = True
        self.echo = self.expect = self.continued = False
        self.task: trio.lowlevel.Task | None = None  # the connection's task, while parked in the mux
        # Set by the mux when it hands a read over to the task: the parse failure (status, as
        # _parse_failure gives it) and the awaitable answer to ready[0] it did not await.
        self.handoff = False
        self.fail = 0
        self.pending: Awaitable | None = None

    def take(self, data: bytes) -> int:
        """One read's bytes into the parser: 0, or the status to fail the connection with."""
        self.waiting_input = False
        self.now = perf_counter()
        self.nread = len(data)
        try:
            self.feed(data)
        except httptools.HttpParserError as exc:  # (an Upgrade ask is handled in `feed`)
            return _parse_failure(exc)
        return 0

    def answer(self, req: Request, resp: Response | Deferred, out: list[bytes]) -> list[bytes]:
        """Put the answer to `req` in request order: into `out` (sent once this read's requests are
        answered), or into `queue` behind a Deferred still undecided; returns the `out` to go on with."""
        queue = self.queue
        try:
            if type(resp) is not Response:  # a Deferred
                if resp.response is None:
                    if out:  # everything before it goes out first
                        self.write(b"".join(out))
                        out = []
                    resp._conn, resp._req = self, req
                    queue.append(resp)
                    return out
                resp = resp.response
            data = _encode(resp, _connection_line(req), req.method == "HEAD")
        except Exception:
            resp = _handler_failed(req)
            data = _encode(resp, _connection_line(req), False)
        if queue:
            queue.append(data)
        else:
            out.append(data)
        if self.on_response is not None:
            self.on_response(req, resp, perf_counter() - req.started)
        return out

    def send_out(self, out: list[bytes]) -> None:
        """After a read's requests: send what is decided, then what a Deferred may have freed."""
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
        queue = self.queue
        if queue and (type(queue[0]) is bytes or queue[0].response is not None):
            self.flush()

    def feed(self, data: bytes) -> None:
        """Parse one read: plainly formed complete requests in one native pass each while the
        parser is between requests, the rest (from the first request it declines) by httptools."""
        parse = _parse_request
        if parse is not None and self.state == _BETWEEN:
            pos, end = 0, len(data)
            ready, targets = self.ready, _TARGETS
            while True:
                got = parse(data, pos, self.max_header, self.max_body)
                if got is None:
                    break
                method, url, headers, body, pos = got
                path, query = targets.get(url) or _split_target(url)
                ready.append(Request(method, path, query, headers, body, True, self.remote, self.now,
                                     self.memo))
                if pos == end:
                    return
            if pos:
                data = data[pos:]
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # a request without a body asked for another protocol (or was a CONNECT): it is
                # answered as plain HTTP, and parsing goes on with a fresh parser where it stopped
                data = data[exc.args[0]:]
                self.parser = httptools.HttpRequestParser(self)
                if not data:
                    return

    # -- httptools callbacks (hot path: keep them lean) ------------------------------------------
    def on_message_begin(self) -> None:
        self.state = _HEADERS
        self.started = self.now
        self.url = b""
        self.headers = {}
        self.body = b""
        self.hraw = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state == _BODY:  # a trailer field (after a chunked body): never a header, only counted
            self.trailer += len(name) + len(value) + 4
            if self.trailer > self.max_header:
                raise _Reject(431)
            return
        key = _HEADER_NAMES.get(name) or _header_name(name)
        headers = self.headers
        text = value.decode("latin-1")
        if text[-1:] in (" ", "\t"):  # a field value has no trailing whitespace (RFC 9110 5.5)
            text = text.rstrip(" \t")
        if key in headers:
            if key == "host":  # one Host, never a list (RFC 9112 3.2)
                raise _Reject(400)
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        self.state = _BODY
        headers = self.headers
        if self.hraw + self.nread > self.max_header and self.header_bytes() > self.max_header:
            raise _Reject(431)
        self.hraw = self.trailer = 0  # from here on: the bytes read since body data last came, of trailer fields
        length = headers.get("content-length")
        if length is not None and int(length) > self.max_body:
            raise _Reject(413)
        parser = self.parser
        if "host" not in headers and parser.get_http_version() == "1.1":  # RFC 9112 3.2
            raise _Reject(400)
        if parser.should_upgrade() and (length not in (None, "0") or "transfer-encoding" in headers):
            # httptools would skip the body of a request that asks for another protocol; the gateway
            # speaks no other, so it ignores the ask (RFC 9110 7.8) where no body is lost by that
            raise _Reject(400)
        raw = parser.get_method()
        self.method = _METHODS.get(raw) or raw.decode("latin-1")
        self.keep_alive = parser.should_keep_alive()
        if "connection" in headers or "expect" in headers:
            self.special_headers()
        else:
            self.echo = self.expect = False

    def on_body(self, chunk: bytes) -> None:
        self.hraw = 0  # body data came: what `after_read` bounds is the bytes since (framing, trailers)
        body = self.body
        if len(body) + len(chunk) > self.max_body:
            raise _Reject(413)
        if not body:
            self.body = chunk
        elif type(body) is bytearray:
            body += chunk
        else:
            self.body = bytearray(body) + chunk

    def on_message_complete(self) -> None:
        self.state = _BETWEEN
        url = self.url
        path, query = _TARGETS.get(url) or _split_target(url)
        body = self.body
        req = Request(self.method, path, query, self.headers,
                      body if type(body) is bytes else bytes(body),
                      self.keep_alive, self.remote, self.started, self.memo)
        if self.echo:
            req._echo_keepalive = True
        self.ready.append(req)

    # -- rarely needed helpers ----------------------------------------------------------------
    def final(self, status: int) -> bytes:
        """The answer before a close that no handler gave (a malformed request, a limit, a timeout),
        reported to `on_response` like any other, unrouted."""
        resp = _limit_error(status)
        if self.on_response is not None:
            req = Request(self.method, "", "", {}, b"", False, self.remote, self.started, self.memo)
            self.on_response(req, resp, perf_counter() - self.started)
        return _encode(resp, _CLOSE, False)

    def header_bytes(self) -> int:
        """Size of the request line + header block, as parsed (exact up to whitespace)."""
        return 16 + len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers.items())

    def special_headers(self) -> None:
        http10 = self.parser.get_http_version() == "1.0"
        self.echo = http10 and self.keep_alive
        expect = self.headers.get("expect")
        self.expect = not http10 and expect is not None and expect.lower() == "100-continue"
        self.continued = False

    # -- writing: from any task on the event loop's thread, never blocking ----------------------
    def write(self, data: bytes) -> None:
        """Send what the socket takes now; the rest goes to `backlog`, sent by a drain task."""
        if self.closed:
            return
        if self.backlog:
            self.backlog.append(data)
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:  # the peer is gone: the connection task finds out on its next read
            self.closed = True
            self.wake()
            return
        if sent < len(data):
            self.backlog.append(data[sent:])
            if not self.draining and self.spawn is not None:
                self.draining = True
                self.spawn(self.drain)

    def flush(self) -> None:
        """Write the answers at the head of the queue that are decided (a Deferred just resolved)."""
        queue = self.queue
        if self.closed:
            queue.clear()
            self.wake()
            return
        chunks = []
        on_response = self.on_response
        while queue:
            entry = queue[0]
            if type(entry) is bytes:
                chunks.append(entry)
            else:
                resp = entry.response
                if resp is None:
                    break
                req = entry._req
                entry._conn = entry._req = None
                data, resp = _encode_or_500(resp, req)
                chunks.append(data)
                if on_response is not None:
                    on_response(req, resp, perf_counter() - req.started)
            queue.popleft()
        if chunks:
            self.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if queue:
            return
        if self.waiting_input:
            self.phase = _IDLE if self.state == _BETWEEN else _READING
            self.mark = perf_counter()
        if not self.backlog:
            self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()

    async def wait_flushed(self) -> None:
        """Until every answer so far is decided and handed to the socket (or the peer is gone)."""
        while (self.queue or self.backlog) and not self.closed:
            self.waiter = trio.Event()
            await self.waiter.wait()

    async def drain(self) -> None:
        """Send the backlog as the socket takes it; a peer that stops reading is reaped as idle."""
        sock, backlog = self.sock, self.backlog
        try:
            while backlog and not self.closed:
                self.phase = _IDLE
                self.mark = perf_counter()
                await wait_writable(sock)
                data = backlog[0]
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    continue
                if sent < len(data):
                    backlog[0] = data[sent:]
                else:
                    backlog.popleft()
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed = True
            self.scope.cancel()
        except Exception:
            logger.exception("HTTP connection from %s failed while writing", self.remote)
            self.closed = True
            self.scope.cancel()
        finally:
            self.draining = False
            self.wake()

    def after_read(self, out: list[bytes]) -> int:
        """A request is still incomplete after a read: bound its header block, send 100 Continue."""
        if self.state == _HEADERS:
            self.hraw += self.nread
            return 431 if self.hraw > self.max_header + _RECV_SIZE else 0
        if self.state == _BODY:  # the body is bounded by on_body; reads with no body data (a trailer
            self.hraw += self.nread  # section, chunk framing alone) by this
            if self.hraw > self.max_header + _RECV_SIZE:
                return 431
        if self.expect and not self.continued:
            self.continued = True
            out.append(_CONTINUE)
        return 0


# ---------------------------------------------------------------------------------------------
# Server

class _Server:
    __slots__ = ("limits", "on_response", "conns", "nursery", "mux")

    def __init__(self, handler: Handler, limits: ServerLimits,
                 on_response: Callable[[Request, Response, float], None] | None,
                 handle_now: HandleNow | None = None) -> None:
        self.limits = limits
        self.on_response = on_response
        self.conns: set[_Conn] = set()
        self.nursery: trio.Nursery | None = None
        # Every request goes through handle_now, in the mux or in its connection's task. Without it,
        # the handler's coroutine is what it hands back: the task awaits it for every request, and
        # the mux only saves the tasks their own epoll waits.
        self.mux = _Mux(handle_now or handler)

    def in_progress(self) -> int:
        """Connections that owe an answer: busy with a request, holding an answer that waits (a
        Deferred), or holding bytes the peer has not taken yet."""
        n = 0
        for conn in self.conns:
            if conn.phase == _BUSY or conn.backlog or conn.queue:
                n += 1
        return n

    async def accept_loop(self, lsock: socket.socket, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        while True:
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                await wait_readable(lsock)
                continue
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                logger.warning("accept failed: %s", exc)
                await trio.sleep(0.05)
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            nursery.start_soon(self.serve_conn, sock, f"{addr[0]}:{addr[1]}")
            await checkpoint()

    async def reap(self) -> None:
        """Cancel connections idle past keepalive_timeout_s or stuck mid-request past request_timeout_s."""
        limits = self.limits
        keepalive, request = limits.keepalive_timeout_s, limits.request_timeout_s
        tick = min(0.5, max(0.005, min(keepalive, request) / 10))
        while True:
            await trio.sleep(tick)
            now = perf_counter()
            for conn in self.conns:
                phase = conn.phase
                if ((phase == _IDLE and now - conn.mark >= keepalive)
                        or (phase == _READING and now - conn.started >= request)):
                    conn.scope.cancel()

    async def serve_conn(self, sock: socket.socket, remote: str) -> None:
        spawn = self.nursery.start_soon if self.nursery is not None else None
        conn = _Conn(sock, remote, self.limits, self.on_response, spawn)
        self.conns.add(conn)
        try:
            with conn.scope:
                linger = await self.conn_loop(conn)
            if conn.scope.cancelled_caught:
                linger = conn.phase == _READING
                if linger and not conn.backlog:
                    sock.send(conn.final(408))
            if linger:
                conn.phase = _CLOSING
                await _linger_close(sock)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("HTTP connection from %s failed", remote)
        finally:
            conn.closed = True
            conn.queue.clear()
            self.conns.discard(conn)
            self.mux.forget(conn)
            if conn.pending is not None:  # an answer handed over but never awaited (cancelled first)
                close = getattr(conn.pending, "close", None)
                if close is not None:
                    close()
            notify_closing(sock)
            sock.close()

    async def conn_loop(self, conn: _Conn) -> bool:
        """Serve requests until the peer leaves (→ False) or we answered and must close (→ True).

        Every request completed by one read is answered in order and the answers go out in one send.
        An answer that is a pending Deferred is written when it resolves (Deferred.resolve), and so
        is everything after it; meanwhile this task goes back to reading. Waiting for input, the
        connection is parked in the mux, which may answer many requests before it hands a read back.
        """
        recv = conn.sock.recv
        ready = conn.ready
        queue = conn.queue
        mux = self.mux
        handle_now = mux.handle_now
        while True:
            if conn.backlog or len(queue) > _QUEUE_MAX:
                await conn.wait_flushed()  # a peer that does not read its answers is not read from
            pending = None
            if conn.handoff:  # the mux read and parsed; go on from where it stopped
                conn.handoff = False
                fail, pending = conn.fail, conn.pending
                conn.fail, conn.pending = 0, None
            else:
                try:
                    data = recv(_RECV_SIZE)
                except BlockingIOError:
                    await mux.park(conn)
                    continue
                if not data:
                    await conn.wait_flushed()  # a half-closed peer still gets its answers
                    return False
                fail = conn.take(data)
            conn.phase = _BUSY
            out: list[bytes] = []
            close = False
            for req in ready:
                try:
                    if pending is not None:
                        resp, pending = pending, None
                    else:
                        resp = handle_now(req)
                    if not isinstance(resp, (Response, Deferred)):
                        resp = await resp
                except Exception:
                    resp = _handler_failed(req)
                out = conn.answer(req, resp, out)
                if not req.keep_alive:
                    close = True
                    break
            ready.clear()
            tail: list[bytes] = []
            if close:
                pass
            elif fail:
                close = True
                tail.append(conn.final(fail))
            elif conn.state != _BETWEEN and conn.after_read(tail) == 431:
                close = True
                tail.append(conn.final(431))
            if tail:
                if queue:
                    queue.extend(tail)
                else:
                    out.extend(tail)
            conn.send_out(out)
            if close:
                await conn.wait_flushed()
                return True
            conn.waiting_input = True
            if not queue:
                conn.mark = perf_counter()
                conn.phase = _IDLE if conn.state == _BETWEEN else _READING
                await checkpoint()  # fairness: once per read this task went through


class _Mux:
    """Reads for every connection that waits for input: one task, one epoll set of their sockets.

    A connection's task parks here (`park`) when its socket has nothing to read. When requests come
    in, `serve` reads and parses them and, while each is plainly formed and answered synchronously by
    `handle_now`, answers them itself: the connection stays parked and its task sleeps on. Anything
    else (a partial, malformed or closing request, an awaitable answer, end of input, a peer that
    does not read its answers) is handed back to the task, with what was read and parsed, and the
    socket leaves the set until the task parks again."""

    __slots__ = ("ep", "parked", "handle_now")

    def __init__(self, handle_now: HandleNow) -> None:
        self.ep = select.epoll()
        self.parked: dict[int, _Conn] = {}
        self.handle_now = handle_now

    async def park(self, conn: _Conn) -> None:
        """Until the mux hands this connection's input back to its task (or the task is cancelled)."""
        fd = conn.fd
        self.ep.register(fd, select.EPOLLIN)
        self.parked[fd] = conn
        conn.task = current_task()

        def abort(_raise_cancel) -> Abort:
            self.forget(conn)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def forget(self, conn: _Conn) -> None:
        if self.parked.pop(conn.fd, None) is not None:
            conn.task = None
            try:
                self.ep.unregister(conn.fd)
            except OSError:  # closed meanwhile: the kernel dropped it from the set already
                pass

    def hand_back(self, conn: _Conn) -> None:
        task = conn.task
        self.forget(conn)
        reschedule(task)

    async def run(self) -> None:
        poll, parked, serve = self.ep.poll, self.parked, self.serve
        fd = self.ep.fileno()
        try:
            while True:
                await wait_readable(fd)
                ready = poll(0)
                last = len(ready) - 1
                slice_end = perf_counter() + _MUX_SLICE_S
                for i, (cfd, _) in enumerate(ready):
                    conn = parked.get(cfd)  # (again after a turn: handed back, closed or parked anew)
                    if conn is None:
                        continue
                    try:
                        serve(conn)
                    except Exception:  # one connection's failure ends that connection only
                        logger.exception("HTTP connection from %s failed", conn.remote)
                        conn.closed = True
                        conn.scope.cancel()
                    if i < last and perf_counter() > slice_end:
                        # the others get a turn: the writer commits what was accepted so far, and
                        # its answers go out, instead of waiting for hundreds more requests
                        await checkpoint()
                        slice_end = perf_counter() + _MUX_SLICE_S
        finally:
            notify_closing(fd)
            self.ep.close()

    def serve(self, conn: _Conn) -> None:
        if conn.backlog or len(conn.queue) > _QUEUE_MAX:
            self.hand_back(conn)  # its task waits for the peer to read first
            return
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:  # the task's own read meets the error (or end of input) and closes
            self.hand_back(conn)
            return
        if not data:
            self.hand_back(conn)
            return
        fail = conn.take(data)
        conn.handoff = True  # unless all of it is answered below
        if fail or conn.state != _BETWEEN:
            conn.fail = fail
            self.hand_back(conn)
            return
        conn.phase = _BUSY
        ready = conn.ready
        handle_now = self.handle_now
        out: list[bytes] = []
        for i, req in enumerate(ready):
            if not req.keep_alive:  # its task answers it and closes
                resp = None
            else:
                try:
                    resp = handle_now(req)
                except Exception:
                    resp = _handler_failed(req)
            if not isinstance(resp, (Response, Deferred)):  # to be awaited (or closing): the task goes on
                conn.send_out(out)
                del ready[:i]
                conn.pending = resp  # None for the closing request: the task calls handle_now for it
                self.hand_back(conn)
                return
            out = conn.answer(req, resp, out)
        ready.clear()
        conn.handoff = False
        conn.send_out(out)
        conn.waiting_input = True
        if not conn.queue:
            conn.mark = perf_counter()
            conn.phase = _IDLE


def _parse_failure(exc: Exception) -> int:
    """Parser exception → status to answer with before closing."""
    cause = exc.__context__
    return cause.status if isinstance(cause, _Reject) else 400


def _connection_line(req: Request) -> bytes:
    if not req.keep_alive:
        return _CLOSE
    return _KEEP if req._echo_keepalive else b""


def _encode_or_500(resp: Response, req: Request) -> tuple[bytes, Response]:
    """The bytes of `resp`, or of a 500 when it cannot be encoded; and the response they are."""
    try:
        return _encode(resp, _connection_line(req), req.method == "HEAD"), resp
    except Exception:
        failed = _handler_failed(req)
        return _encode(failed, _connection_line(req), False), failed


def _handler_failed(req: Request) -> Response:
    logger.exception("handler failed for %s %s from %s", req.method, req.path, req.remote)
    return _INTERNAL_ERROR


async def _linger_close(sock: socket.socket) -> None:
    """Half-close and drain briefly so the final response is not destroyed by a TCP reset."""
    sock.shutdown(socket.SHUT_WR)
    drained = 0
    with trio.move_on_after(_LINGER_S):
        while drained < _LINGER_MAX_BYTES:
            await wait_readable(sock)
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                continue
            if not data:
                return
            drained += len(data)


def _listen_socket(host: str, port: int) -> socket.socket:
    family, type_, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    lsock = socket.socket(family, type_, proto)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(addr)
        lsock.listen(1024)
        lsock.setblocking(False)
    except BaseException:
        lsock.close()
        raise
    return lsock


class ServerControl:
    """A running server's handle for a graceful stop: `stop_accepting` closes the listening socket
    (new connections are refused; open ones go on), `requests_in_progress` counts the connections
    that owe an answer (a request being handled, an answer waiting on a commit, or bytes the peer
    has not taken yet)."""

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._accepting: trio.CancelScope | None = None

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()

    def requests_in_progress(self) -> int:
        return self._server.in_progress() if self._server is not None else 0


async def serve_http(handler: Handler, host: str, port: int, limits: ServerLimits, *,
                     on_response: Callable[[Request, Response, float], None] | None = None,
                     handle_now: HandleNow | None = None, control: ServerControl | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Bind host:port (0 = ephemeral), report the bound port via task_status, serve until cancelled.
    `handle_now`, when given, takes every request instead of `handler` (see HandleNow): it answers
    what it can without awaiting and hands back an awaitable for the rest. `control`, when given, is
    bound to this server (see ServerControl)."""
    if not (math.isfinite(limits.request_timeout_s) and math.isfinite(limits.keepalive_timeout_s)):
        raise ValueError("server timeouts must be finite")
    lsock = _listen_socket(host, port)
    server = _Server(handler, limits, on_response, handle_now)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.reap)
            nursery.start_soon(server.mux.run)
            with trio.CancelScope() as accepting:
                if control is not None:
                    control._server, control._accepting = server, accepting
                task_status.started(lsock.getsockname()[1])
                await server.accept_loop(lsock, nursery)
            _close_listener(lsock)  # stopped accepting: refuse new connections from now on
            await trio.sleep_forever()  # the open connections are served until cancelled
    finally:
        _close_listener(lsock)


def _close_listener(lsock: socket.socket) -> None:
    if lsock.fileno() != -1:
        notify_closing(lsock)
        lsock.close()
