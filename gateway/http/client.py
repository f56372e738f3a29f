"""Small async HTTP/1.1 client on trio (webhook delivery): keep-alive pools per origin, http and https.

It owns connecting, framing and connection reuse only; it must never retry on its own except once,
when a pooled keep-alive connection turns out stale before any response byte (delivery policy is the caller's).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from time import monotonic
from urllib.parse import urlsplit

import httptools
import msgspec
import trio

_IDLE_MAX_S = 30.0          # pooled connections idle longer than this are discarded, not reused
_RECV_SIZE = 65536
MAX_RESPONSE_BYTES = 1 << 20  # webhook answers are read, never trusted to be small
MAX_HEADER_BYTES = 64 * 1024  # nor are their header sections
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class HttpClientError(Exception):
    """Base class of every error raised by HttpClient."""


class ConnectError(HttpClientError):
    """The connection could not be established (refused, DNS failure, unreachable, TLS failure)."""


class RequestTimeout(HttpClientError):
    """The whole exchange (connect + send + response) did not finish within timeout_s."""


class ProtocolError(HttpClientError):
    """The peer broke the connection or sent something that is not a valid HTTP/1.1 response."""


class ClientResponse(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool = False  # the body went past MAX_RESPONSE_BYTES: `body` is its start


class _StaleConnection(Exception):
    """A reused connection failed before any response byte arrived (safe to retry once)."""


class _ResponseReader:
    """httptools protocol collecting one final (non-1xx) response."""

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = self.head_size = 0
        self.status = 0
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self.truncated = False

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = []
        self.size = self.head_size = 0
        self.headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEADER_BYTES:  # raised through httptools as HttpParserCallbackError
            raise ValueError(f"response header section over {MAX_HEADER_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()
        if self.head_only and self.status >= 200:
            self.finish()

    def on_body(self, chunk: bytes) -> None:
        if self.truncated:
            return
        self.size += len(chunk)
        if self.size > MAX_RESPONSE_BYTES:  # the answer is its status: the rest is not read, and the
            self.truncated = self.done = True  # connection not used again
            self.keep_alive = False
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if not self.done:
            self.finish()

    def finish(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim response: keep reading for the final one
        self.done = True
        self.keep_alive = self.parser.should_keep_alive() and not self.head_only

    def eof(self) -> bool:
        """Peer closed: the response is complete only if it was delimited by the close."""
        if self.done:
            return True
        delimited_by_close = (self.headers_done and "content-length" not in self.headers
                              and "chunked" not in self.headers.get("transfer-encoding", "").lower())
        if delimited_by_close:
            self.done = True
            self.keep_alive = False
        return self.done

    def response(self) -> ClientResponse:
        return ClientResponse(self.status, self.headers, b"".join(self.body), self.truncated)


class _Connection:
    __slots__ = ("stream", "idle_since")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.idle_since = monotonic()


def _split_url(url: str) -> tuple[str, str, int, str, str]:
    """→ (scheme, host, port, request target, Host header value)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise HttpClientError(f"unsupported URL: {url!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header = f"{host_header}:{port}"
    return scheme, host, port, target, host_header


def _encode_request(method: str, target: str, host_header: str, headers: Sequence[tuple[str, str]],
                    body: bytes) -> bytes:
    names = {k.lower() for k, _ in headers}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host_header}")
    for key, value in headers:
        if "\r" in key or "\n" in key or "\r" in value or "\n" in value:
            raise HttpClientError(f"invalid header {key!r}")
        lines.append(f"{key}: {value}")
    if "content-length" not in names and "transfer-encoding" not in names \
            and (body or method in _BODY_METHODS):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpClient:
    """Keep-alive HTTP/1.1 client; one instance is shared by many concurrent tasks."""

    def __init__(self, *, max_connections_per_host: int = 64, connect_timeout_s: float = 5.0) -> None:
        self._max = max_connections_per_host
        self._connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots: dict[tuple[str, str, int], trio.Semaphore] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(self, method: str, url: str, *, headers: Sequence[tuple[str, str]] = (),
                      body: bytes = b"", timeout_s: float = 10.0) -> ClientResponse:
        if self._closed:
            raise HttpClientError("client is closed")
        scheme, host, port, target, host_header = _split_url(url)
        method = method.upper()
        payload = _encode_request(method, target, host_header, headers, body)
        key = (scheme, host, port)
        with trio.move_on_after(timeout_s):
            async with self._slot(key):
                return await self._exchange(key, payload, method == "HEAD")
        raise RequestTimeout(f"{method} {url} did not complete within {timeout_s}s")

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)

    # -- internals ----------------------------------------------------------------------------
    def _slot(self, key: tuple[str, str, int]) -> trio.Semaphore:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = trio.Semaphore(self._max)
        return slot

    async def _exchange(self, key: tuple[str, str, int], payload: bytes, head_only: bool) -> ClientResponse:
        conn = self._pooled(key)
        if conn is not None:
            try:
                return await self._roundtrip(key, conn, payload, head_only, reused=True)
            except _StaleConnection:
                pass
        conn = await self._connect(key)
        try:
            return await self._roundtrip(key, conn, payload, head_only, reused=False)
        except _StaleConnection as exc:
            raise ProtocolError("connection closed before any response byte") from exc

    def _pooled(self, key: tuple[str, str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        now = monotonic()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since < _IDLE_MAX_S:
                return conn
            _close_now(conn)
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        with trio.move_on_after(self._connect_timeout_s):
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
            if scheme == "https":
                stream = await self._tls(stream, host)
            return _Connection(stream)
        raise ConnectError(f"connecting to {host}:{port} timed out after {self._connect_timeout_s}s")

    async def _tls(self, stream: trio.SocketStream, host: str) -> trio.SSLStream:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        tls = trio.SSLStream(stream, self._ssl, server_hostname=host, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            await trio.aclose_forcefully(tls)
            raise ConnectError(f"TLS handshake with {host} failed: {exc}") from exc
        return tls

    async def _roundtrip(self, key: tuple[str, str, int], conn: _Connection, payload: bytes,
                         head_only: bool, *, reused: bool) -> ClientResponse:
        reader = _ResponseReader(head_only)
        got_bytes = False
        keep = False
        try:
            await conn.stream.send_all(payload)
            while not reader.done:
                data = await conn.stream.receive_some(_RECV_SIZE)
                if not data:
                    if reader.eof():
                        break
                    raise ProtocolError("connection closed mid-response") if got_bytes \
                        else _StaleConnection()
                got_bytes = True
                reader.parser.feed_data(data)
            keep = reader.keep_alive
            return reader.response()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if reused and not got_bytes:
                raise _StaleConnection() from exc
            raise ProtocolError(f"connection lost: {exc}") from exc
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            raise ProtocolError(f"invalid HTTP response: {exc!r}") from exc
        finally:
            if keep and not self._closed:
                conn.idle_since = monotonic()
                self._idle.setdefault(key, []).append(conn)
            else:
                _close_now(conn)


def _close_now(conn: _Connection) -> None:
    """Close without awaiting (safe inside cancelled scopes and finally blocks)."""
    stream = conn.stream
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock_stream.socket.close()
