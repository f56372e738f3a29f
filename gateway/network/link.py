"""Gateway-side client shell for the network link: connect, hello, hand frame batches to callbacks, reconnect.

It owns the TCP connection and its backoff only; it must never keep an outbox, retry submits, or interpret frames
beyond the hello handshake (the callbacks own all message state).
"""

from __future__ import annotations

import logging
import random
import re
from typing import Awaitable, Callable

import trio

from gateway.network.frames import FrameDecoder, FrameError, Hello, HelloOk, Submit, encode_frames

log = logging.getLogger("gateway.network")

__all__ = ["LinkDown", "NetworkLink", "parse_url"]

RECV_SIZE = 256 * 1024
_URL = re.compile(r"^(?:tcp://)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+)):(?P<port>\d{1,5})/?$")


async def handshake(stream: trio.abc.Stream, client: str) -> tuple[FrameDecoder, HelloOk, list]:
    """Send Hello, wait for HelloOk; returns the decoder and any frames that followed it."""
    decoder = FrameDecoder()
    await stream.send_all(encode_frames([Hello(client=client)]))
    frames: list = []
    while not frames:
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            raise ConnectionError("closed during hello")
        frames = decoder.feed(data)
    if not isinstance(frames[0], HelloOk):
        raise ConnectionError(f"expected hello_ok, got {type(frames[0]).__name__}")
    return decoder, frames[0], frames[1:]


class LinkDown(Exception):
    """The link is not connected, or a write on it failed; nothing may be assumed sent."""


# How a connection ends without anything being wrong with the gateway: run() reconnects after these.
_SESSION_ENDED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, FrameError, trio.TooSlowError,
                  ConnectionError, LinkDown)


def parse_url(url: str) -> tuple[str, int]:
    """Split "tcp://host:port" (scheme optional, IPv6 as [addr]) into (host, port)."""
    m = _URL.match(url.strip())
    if m is None or int(m["port"]) > 65535:
        raise ValueError(f"expected tcp://host:port, got {url!r}")
    return (m["v6"] or m["host"]), int(m["port"])


class NetworkLink:
    """A persistent, self-healing connection to the network (or netsim)."""

    def __init__(self, host: str, port: int, *, on_connected: Callable[[], Awaitable[None]],
                 on_frames: Callable[[list], Awaitable[None]], client_name: str = "gateway",
                 backoff_min_s: float = 0.05, backoff_max_s: float = 5.0, connect_timeout_s: float = 5.0,
                 rng: random.Random | None = None) -> None:
        self.host = host
        self.port = port
        self._on_connected = on_connected
        self._on_frames = on_frames
        self._client_name = client_name
        self._backoff_min = backoff_min_s
        self._backoff_max = backoff_max_s
        self._connect_timeout = connect_timeout_s
        self._rng = rng if rng is not None else random.Random()
        self._stream: trio.SocketStream | None = None
        self._send_lock = trio.Lock()
        self._sent_early: set[str] | None = None  # Submit ids others sent on this connection during on_connected
        self._announcer: trio.lowlevel.Task | None = None
        self._up = trio.Event()
        self.connects = 0  # successful hellos so far
        self.server_name = ""

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def wait_connected(self) -> None:
        while self._stream is None:
            await self._up.wait()

    async def send(self, frames: list) -> None:
        """Write all frames in one send_all; raise LinkDown if not connected or the write fails."""
        if not frames:
            return
        data = encode_frames(frames)
        async with self._send_lock:
            stream = self._stream
            if stream is None:
                raise LinkDown("network link is not connected")
            early = self._sent_early
            if early is not None:  # on_connected is still running on this connection
                if trio.lowlevel.current_task() is self._announcer:
                    # its resend skips what others already sent on this connection (a dispatch that
                    # went out while the outbox was being read): never the same message twice on one link
                    kept = [f for f in frames if type(f) is not Submit or f.id not in early]
                    if len(kept) < len(frames):
                        if not kept:
                            return
                        data = encode_frames(kept)
                else:
                    early.update(f.id for f in frames if type(f) is Submit)
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._drop(stream)
                raise LinkDown(f"write failed: {exc!r}") from exc
            except BaseException:
                self._drop(stream)  # cancelled mid-write: the byte stream may hold half a frame
                raise

    def unsent(self, ids) -> None:
        """Messages the network answered with `throttled` on this connection: they must go again,
        so an on_connected resend still running does not skip them as sent already (it clears the
        throttle retries it takes over, and such a message would then never go again)."""
        early = self._sent_early
        if early is not None:
            early.difference_update(ids)

    def _drop(self, stream: trio.SocketStream) -> None:
        if self._stream is stream:
            self._mark_down()
        stream.socket.close()  # wakes the reader with ClosedResourceError without cancelling a callback mid-way

    def _mark_down(self) -> None:
        self._stream = None
        if self._up.is_set():
            self._up = trio.Event()

    def _backoff_sleep_s(self, backoff: float) -> float:
        return backoff * (0.5 + 0.5 * self._rng.random())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Connect and reconnect forever; returns only by cancellation."""
        task_status.started()
        backoff = self._backoff_min
        said = None  # the last failure logged: said once until it changes or a connection holds
        while True:
            try:
                with trio.fail_after(self._connect_timeout):
                    stream = await trio.open_tcp_stream(self.host, self.port)
            except (OSError, trio.TooSlowError) as exc:
                why = "timed out" if isinstance(exc, trio.TooSlowError) else (exc.strerror or str(exc))
                if why != said:
                    log.warning("network %s:%d: cannot connect (%s); retrying with backoff", self.host, self.port, why)
                    said = why
                await trio.sleep(self._backoff_sleep_s(backoff))
                backoff = min(backoff * 2, self._backoff_max)
                continue
            connects_before = self.connects
            try:
                await self._session(stream)
            except _SESSION_ENDED as exc:
                if self.connects == connects_before:
                    why = f"handshake failed: {type(exc).__name__}"
                    if why != said:
                        log.warning("network %s:%d: %s; retrying with backoff", self.host, self.port, why)
                        said = why
                else:
                    said = None
            finally:
                if self._stream is stream:
                    self._mark_down()
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            if self.connects > connects_before:
                backoff = self._backoff_min
            await trio.sleep(self._backoff_sleep_s(backoff))
            backoff = min(backoff * 2, self._backoff_max)

    async def _session(self, stream: trio.SocketStream) -> None:
        with trio.fail_after(self._connect_timeout):
            decoder, hello, frames = await handshake(stream, self._client_name)
        self.server_name = hello.server
        self.connects += 1
        self._stream = stream
        self._sent_early, self._announcer = set(), None
        self._up.set()
        ended: BaseException | None = None
        async with trio.open_nursery() as nursery:
            # on_connected may write a lot (every bundle, the whole outbox); the peer answers while it
            # reads, so this connection keeps reading meanwhile: a peer that writes its answers before
            # it reads on must never find both sides blocked in a write.
            nursery.start_soon(self._announce)
            try:
                await self._read(stream, decoder, frames)
            except _SESSION_ENDED as exc:
                ended = exc  # raised below, outside the nursery: run() reconnects on it, not on a group
            nursery.cancel_scope.cancel()
        if ended is not None:
            raise ended

    async def _read(self, stream: trio.SocketStream, decoder: FrameDecoder, frames: list) -> None:
        if frames:
            await self._on_frames(frames)
        while True:
            data = await stream.receive_some(RECV_SIZE)
            if not data:
                return
            frames = decoder.feed(data)
            if frames:
                await self._on_frames(frames)

    async def _announce(self) -> None:
        early = self._sent_early
        self._announcer = trio.lowlevel.current_task()
        try:
            await self._on_connected()
        except LinkDown:
            pass  # the write failed and dropped the stream: the reader ends this session
        finally:
            if self._sent_early is early:
                self._sent_early, self._announcer = None, None
