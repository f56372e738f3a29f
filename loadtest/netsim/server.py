"""trio shell around netsim's Network: TCP listener, per-connection reader/writer, receipt timer, --record file.

It owns sockets, timing and the record file; it must never decide message outcomes (core.Network does) or look inside
payloads except to label record lines.
"""

from __future__ import annotations

import time
from typing import IO

import msgspec
import orjson
import trio

from gateway.network.frames import (
    Ack,
    BundleReply,
    BundleRequest,
    CustomerSend,
    CustomerSendReply,
    FrameDecoder,
    FrameError,
    Hello,
    HelloOk,
    InboundAck,
    Ping,
    Pong,
    PrekeyCount,
    PublishKeys,
    Receipt,
    ReceiptAck,
    StatsReply,
    StatsRequest,
    Submit,
    encode_frames,
)
from gateway.network.link import handshake
from loadtest.netsim.config import NetsimConfig
from loadtest.netsim.core import Network, text_digest

__all__ = ["NetsimServer", "bench_submits", "customer_send", "fetch_stats", "serve_netsim"]

SERVER_NAME = "netsim"
OBSERVER_PREFIX = "observer"  # a Hello.client starting with this gets no receipts (stats/ping only)
HELLO_TIMEOUT_S = 10.0
RECORD_FLUSH_S = 0.5
MAX_PENDING_FRAMES = 2_000_000  # a client this far behind on reading is dropped
RECV_SIZE = 256 * 1024
WRITE_CHUNK_FRAMES = 20_000  # bounds the time spent encoding before a write
BUNDLES_PER_REPLY = 400  # ~1.8 KB each with a PQ prekey: a reply frame stays well under 1 MiB
MAX_BUNDLE_NUMBERS = 65_536  # numbers honoured per bundle request
INBOUND_TICK_S = 0.02  # generated inbound traffic is produced in steps this far apart
INBOUND_MAX_STEP = 5000  # messages generated in one step at most (a long stall does not burst)
INBOUND_MAX_UNACKED = 200_000  # while this many wait for an InboundAck, generation pauses
_payload_decode = msgspec.msgpack.Decoder().decode


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Conn:
    """One client connection: frames queued here are written by its own writer task."""

    __slots__ = ("stream", "pending", "wakeup", "alive")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.pending: list = []
        self.wakeup = trio.Event()
        self.alive = True

    def queue(self, frames: list) -> None:
        if not self.alive:
            return
        self.pending.extend(frames)
        self.wakeup.set()
        if len(self.pending) > MAX_PENDING_FRAMES:
            self.alive = False  # the writer notices and closes the connection

    async def writer(self) -> None:
        while self.alive:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            if not self.alive:
                break
            frames, self.pending = self.pending, []
            for start in range(0, len(frames), WRITE_CHUNK_FRAMES):
                await self.stream.send_all(encode_frames(frames[start : start + WRITE_CHUNK_FRAMES]))
        await trio.aclose_forcefully(self.stream)


class NetsimServer:
    """One Network shared by every connection; receipts go to the most recent live non-observer connection."""

    def __init__(self, config: NetsimConfig, *, record_path: str | None = None, capture_path: str | None = None,
                 clock=_now_ms) -> None:
        self.network = Network(config, inbound_prefix=f"in{clock():x}")
        self._capture_path = capture_path
        self._capture = None
        self._capture_chunks: list[bytes] = []
        self._publishers: dict[str, _Conn] = {}  # sender -> the connection that published its keys
        self._clock = clock
        self._live: list[_Conn] = []  # in hello order; the last one receives receipts
        self._timer_wakeup = trio.Event()
        self._timer_target: int | None = None
        self._record_path = record_path
        self._record: IO[str] | None = None
        self._record_lines: list[str] = []
        self._connections_total = 0
        self._recorded = 0

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> dict:
        data = self.network.stats()
        data["connections_live"] = len(self._live)
        data["connections_total"] = self._connections_total
        data["recorded"] = self._recorded
        return data

    def disconnect_all(self) -> int:
        """Fault injection: drop every receipt-receiving connection (unacked receipts are re-sent on the next hello)."""
        live = list(self._live)
        for conn in live:
            conn.alive = False
            conn.wakeup.set()
            conn.stream.socket.close()
        return len(live)

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound_port = listeners[0].socket.getsockname()[1]
        if self._record_path is not None:
            self._record = open(self._record_path, "a", encoding="utf-8")
        if self._capture_path is not None:
            self._capture = open(self._capture_path, "ab")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer)
                if self.network.config.inbound_rate > 0 and self.network.devices is not None:
                    nursery.start_soon(self._inbound_generator, self.network.config.inbound_rate)
                if self._record is not None or self._capture is not None:
                    nursery.start_soon(self._record_flusher)
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(bound_port)
        finally:
            self._flush_record()
            if self._record is not None:
                self._record.close()
                self._record = None
            if self._capture is not None:
                self._capture.close()
                self._capture = None

    async def _record_flusher(self) -> None:
        while True:
            await trio.sleep(RECORD_FLUSH_S)
            self._flush_record()

    def _flush_record(self) -> None:
        if self._capture is not None:
            if self._capture_chunks:
                self._capture.write(b"".join(self._capture_chunks))
                self._capture_chunks.clear()
            self._capture.flush()
        if self._record is None:
            return
        if self._record_lines:
            self._record.write("".join(self._record_lines))
            self._record_lines.clear()
        self._record.flush()

    def _record_submit(self, sub: Submit, at_ms: int) -> None:
        line = {"id": sub.id, "sender": sub.sender, "recipient": sub.recipient, "at_ms": at_ms,
                "priority": sub.priority, "size": len(sub.payload)}
        try:
            body = _payload_decode(sub.payload)
        except (msgspec.DecodeError, ValueError):
            body = None
        if self.network.last_plaintext is not None:
            try:
                body = _payload_decode(self.network.last_plaintext)
            except (msgspec.DecodeError, ValueError):
                body = None
        if isinstance(body, dict) and isinstance(body.get("type"), str):
            line["type"] = body["type"]
            if isinstance(body.get("body"), str):  # what the recipient read, as a digest (checks compare it)
                line["digest"] = text_digest(body["body"])
        self._record_lines.append(orjson.dumps(line).decode() + "\n")
        self._recorded += 1

    # -- receipts ----------------------------------------------------------------------

    async def _timer(self) -> None:
        network = self.network
        while True:
            self._timer_wakeup = trio.Event()
            target = network.next_due_ms()
            self._timer_target = target
            if target is None:
                await self._timer_wakeup.wait()
                continue
            delay_ms = target - self._clock()
            if delay_ms > 0:
                with trio.move_on_after(delay_ms / 1000):
                    await self._timer_wakeup.wait()
                continue
            receipts = network.due(self._clock())
            if receipts and self._live:
                self._live[-1].queue(receipts)
            await trio.lowlevel.checkpoint()

    # -- inbound ------------------------------------------------------------------------

    async def _inbound_generator(self, rate: float) -> None:
        """Customers write to the senders at `rate` messages per second (deterministic content:
        Network.generate_inbound); frames go to the receipt connection, or wait for the next hello."""
        while not self.network.devices.published_numbers():
            await trio.sleep(INBOUND_TICK_S)  # customers write once some sender has published its keys
        started = trio.current_time()
        done = 0
        limit = self.network.config.inbound_count
        while not limit or done < limit:
            await trio.sleep(INBOUND_TICK_S)
            due = int((trio.current_time() - started) * rate) - done
            if limit:
                due = min(due, limit - done)
            if due <= 0:
                continue
            if self.network.inbound_backlog >= INBOUND_MAX_UNACKED:
                started += due / rate  # paused: the schedule moves on without a burst later
                continue
            step = min(due, INBOUND_MAX_STEP)
            done += step
            if step < due:
                started += (due - step) / rate
            frames, drawn = self.network.generate_inbound(step, self._clock())
            self._deliver_inbound(frames, drawn)

    def _deliver_inbound(self, frames: list, drawn) -> None:
        for sender, left in dict(drawn).items():
            publisher = self._publishers.get(sender)
            if publisher is not None and publisher.alive:
                publisher.queue([PrekeyCount(sender, left)])
        if frames and self._live:
            self._live[-1].queue(frames)

    def _customer_send(self, req: CustomerSend) -> CustomerSendReply:
        frame, error, drawn = self.network.customer_send(req.sender, req.recipient, req.text, self._clock())
        if frame is None:
            return CustomerSendReply(req.n, "", error)
        self._deliver_inbound([frame], [drawn] if drawn is not None else [])
        return CustomerSendReply(req.n, frame.id)

    def _poke_timer(self) -> None:
        next_due = self.network.next_due_ms()
        if next_due is not None and (self._timer_target is None or next_due < self._timer_target):
            self._timer_wakeup.set()

    # -- connections -------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._connections_total += 1
        try:
            await self._session(stream)
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _session(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(keep_raw=self._capture is not None)
        backlog: list = []
        with trio.move_on_after(HELLO_TIMEOUT_S):
            while not backlog:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    return
                backlog = decoder.feed(data)
        if not backlog or not isinstance(backlog[0], Hello) or backlog[0].version != 1:
            return
        conn = _Conn(stream)
        observer = backlog[0].client.startswith(OBSERVER_PREFIX)
        if not observer:
            self._live.append(conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer_guard, conn, nursery.cancel_scope)
                conn.queue([HelloOk(server=SERVER_NAME)])
                if not observer:
                    self._resend_unacked(conn)
                try:
                    self._on_frames(conn, backlog[1:], decoder.raw[1:] if decoder.raw is not None else None)
                    while conn.alive:
                        data = await stream.receive_some(RECV_SIZE)
                        if not data:
                            break
                        self._on_frames(conn, decoder.feed(data), decoder.raw)
                        await trio.lowlevel.checkpoint()
                except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()
        finally:
            conn.alive = False
            if not observer:
                was_target = self._live[-1] is conn
                self._live.remove(conn)
                if was_target and self._live:
                    self._resend_unacked(self._live[-1])  # what the dropped target never acknowledged

    def _bundle_replies(self, req: BundleRequest) -> list:
        found, unknown, drawn = self.network.bundles(req.numbers[:MAX_BUNDLE_NUMBERS])
        replies = [BundleReply(req.id, found[i:i + BUNDLES_PER_REPLY]) for i in range(0, len(found), BUNDLES_PER_REPLY)]
        if unknown or not replies:
            replies.append(BundleReply(req.id, [], unknown))
        for sender, left in drawn:
            publisher = self._publishers.get(sender)
            if publisher is not None and publisher.alive:
                publisher.queue([PrekeyCount(sender, left)])
        return replies

    def _resend_unacked(self, conn: _Conn) -> None:
        resend = self.network.unacked_receipts() + self.network.unacked_inbound()
        if resend:
            conn.queue(resend)

    async def _writer_guard(self, conn: _Conn, scope: trio.CancelScope) -> None:
        try:
            await conn.writer()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        conn.alive = False
        scope.cancel()

    def _on_frames(self, conn: _Conn, frames: list, raw: list[bytes] | None = None) -> None:
        if not frames:
            return
        network = self.network
        now = self._clock()
        replies: list = []
        submitted = False
        for i, frame in enumerate(frames):
            if type(frame) is Submit:
                if raw is not None:
                    self._capture_chunks.append(raw[i])
                answer = network.on_submit(frame, now)
                replies.extend(answer)
                submitted = True
                if self._record is not None and answer[0].code == "ok" and network.seen(frame.id) == 1:
                    self._record_submit(frame, now)
            elif type(frame) is ReceiptAck:
                network.on_receipt_ack(frame.ids)
            elif type(frame) is InboundAck:
                network.on_inbound_ack(frame.ids)
            elif type(frame) is CustomerSend:
                replies.append(self._customer_send(frame))
            elif type(frame) is StatsRequest:
                replies.append(StatsReply(data=self.stats()))
            elif type(frame) is Ping:
                replies.append(Pong(n=frame.n))
            elif type(frame) is BundleRequest:
                replies.extend(self._bundle_replies(frame))
            elif type(frame) is PublishKeys:
                left = None
                if network.devices is not None:
                    left = network.devices.publish(frame.sender, frame.bundle, frame.one_time_prekeys, frame.replace)
                if left is not None:
                    self._publishers[frame.sender] = conn
                    replies.append(PrekeyCount(frame.sender, left))
            # anything else (a second Hello, server-side frames) is ignored
        if replies:
            conn.queue(replies)
        if submitted:
            self._poke_timer()


async def serve_netsim(config: NetsimConfig, host: str, port: int, *, record_path: str | None = None,
                       capture_path: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run a netsim server until cancelled; task_status.started(bound_port) once it listens."""
    server = NetsimServer(config, record_path=record_path, capture_path=capture_path)
    await server.serve(host, port, task_status=task_status)


async def _open_session(host: str, port: int, client: str) -> tuple[trio.SocketStream, FrameDecoder, list]:
    stream = await trio.open_tcp_stream(host, port)
    decoder, _, frames = await handshake(stream, client)
    return stream, decoder, frames


async def fetch_stats(host: str, port: int, *, timeout_s: float = 5.0) -> dict:
    """Connect as an observer (no receipts are routed to it), ask for stats and return the StatsReply data."""
    with trio.fail_after(timeout_s):
        stream, decoder, frames = await _open_session(host, port, OBSERVER_PREFIX + ":netsim-stats")
        async with stream:
            await stream.send_all(encode_frames([StatsRequest()]))
            while True:
                for frame in frames:
                    if isinstance(frame, StatsReply):
                        return frame.data
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    raise ConnectionError("netsim closed the connection before replying")
                frames = decoder.feed(data)


async def customer_send(host: str, port: int, sender: str, recipient: str, text: str, *,
                        timeout_s: float = 5.0) -> dict:
    """Connect as an observer and have customer `sender` send `text` to `recipient`:
    {"id": inbound message id} or {"error": ...}."""
    with trio.fail_after(timeout_s):
        stream, decoder, frames = await _open_session(host, port, OBSERVER_PREFIX + ":netsim-send")
        async with stream:
            await stream.send_all(encode_frames([CustomerSend(sender, recipient, text, n=1)]))
            while True:
                for frame in frames:
                    if isinstance(frame, CustomerSendReply):
                        return {"id": frame.id} if frame.id else {"error": frame.error}
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    raise ConnectionError("netsim closed the connection before replying")
                frames = decoder.feed(data)


async def bench_submits(host: str, port: int, *, count: int, batch: int = 500, window: int = 20_000,
                        payload: bytes = b"", timeout_s: float = 120.0) -> dict:
    """Push `count` Submits (at most `window` unacked) and ack every receipt until all are accounted for.

    Returns timings; meant for a fresh netsim with no failures configured so every message ends "delivered".
    """
    if not payload:
        payload = msgspec.msgpack.encode({"type": "text", "text": {"body": "bench message body, about fifty bytes"}})
    run = f"b{time.time_ns():x}-"
    acked = 0
    delivered = 0
    receipts = 0
    can_send = trio.Event()
    done = trio.Event()
    send_lock = trio.Lock()
    t_acks = t_done = 0.0
    with trio.fail_after(timeout_s):
        stream, decoder, early = await _open_session(host, port, "netsim-bench")
        async with stream:
            t0 = time.perf_counter()

            async def reader() -> None:
                nonlocal acked, delivered, receipts, t_acks, t_done
                frames = early
                while True:
                    ack_ids = []
                    for frame in frames:
                        if type(frame) is Ack:
                            acked += 1
                        elif type(frame) is Receipt:
                            receipts += 1
                            ack_ids.append(frame.id)
                            if frame.status in ("delivered", "failed"):  # plaintext is undecryptable under e2e
                                delivered += 1
                    if ack_ids:
                        async with send_lock:
                            await stream.send_all(encode_frames([ReceiptAck(ids=ack_ids)]))
                    can_send.set()
                    if acked >= count and not t_acks:
                        t_acks = time.perf_counter() - t0
                    if acked >= count and delivered >= count:
                        t_done = time.perf_counter() - t0
                        done.set()
                        return
                    data = await stream.receive_some(RECV_SIZE)
                    if not data:
                        raise ConnectionError("netsim closed the connection")
                    frames = decoder.feed(data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                sent = 0
                while sent < count:
                    while sent - acked >= window:
                        can_send = trio.Event()
                        await can_send.wait()
                    n = min(batch, count - sent)
                    frames = [Submit(id=f"{run}{i}", sender="+15550000000", recipient=f"+1666{i % 100_000:07d}",
                                     payload=payload) for i in range(sent, sent + n)]
                    data = encode_frames(frames)
                    async with send_lock:
                        await stream.send_all(data)
                    sent += n
                await done.wait()
    return {"count": count, "acks_s": round(t_acks, 3), "all_delivered_s": round(t_done, 3),
            "submits_per_s_acked": round(count / t_acks), "receipts": receipts,
            "receipts_per_s": round(receipts / t_done)}
