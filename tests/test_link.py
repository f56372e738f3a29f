"""Specification of the gateway's NetworkLink, exercised against a real in-process netsim on 127.0.0.1."""

import socket

import pytest
import trio

from gateway.network.frames import Ack, Receipt, ReceiptAck, Submit
from gateway.network.link import LinkDown, NetworkLink, parse_url
from loadtest.netsim.config import NetsimConfig
from loadtest.netsim.server import NetsimServer, fetch_stats

FAST = NetsimConfig(latency_ms_median=1.0, latency_sigma=0.0, read_share=1.0, read_delay_ms_median=5.0, e2e=False)


class Recorder:
    """Collects what the link hands over and lets a test wait for it."""

    def __init__(self) -> None:
        self.frames: list = []
        self.connected_calls = 0
        self.changed = trio.Event()

    async def on_connected(self) -> None:
        self.connected_calls += 1
        self._poke()

    async def on_frames(self, batch: list) -> None:
        self.frames.extend(batch)
        self._poke()

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate, timeout_s: float = 5.0) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await self.changed.wait()

    def receipts(self, status: str) -> list:
        return [f for f in self.frames if isinstance(f, Receipt) and f.status == status]


async def start_server(nursery, config: NetsimConfig = FAST) -> tuple[NetsimServer, int]:
    server = NetsimServer(config)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return server, port


async def start_link(nursery, port: int, rec: Recorder) -> NetworkLink:
    link = NetworkLink("127.0.0.1", port, on_connected=rec.on_connected, on_frames=rec.on_frames,
                       backoff_min_s=0.01, backoff_max_s=0.05)
    await nursery.start(link.run)
    with trio.fail_after(5):
        await link.wait_connected()
    return link


def submit(msg_id: str) -> Submit:
    return Submit(id=msg_id, sender="+15550000000", recipient="+15551234567", payload=b"\x81\xa4type\xa4text")


class SubmitPeer:
    """A network that answers the hello and records the ids of the Submit frames it reads."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self._more = trio.Event()
        self.port = 0

    @classmethod
    async def start(cls, nursery) -> "SubmitPeer":
        peer = cls()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        peer.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, peer._serve, listeners)
        return peer

    async def _serve(self, stream: trio.SocketStream) -> None:
        from gateway.network.frames import FrameDecoder, HelloOk, encode_frames

        decoder = FrameDecoder()
        while not decoder.feed(await stream.receive_some(65536)):
            pass
        await stream.send_all(encode_frames([HelloOk(server="p")]))
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            self.got.extend(f.id for f in decoder.feed(data) if isinstance(f, Submit))
            self._more.set()

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            await self._more.wait()
            self._more = trio.Event()


async def link_resending_after(nursery, peer: SubmitPeer, go: trio.Event) -> NetworkLink:
    """A connected link to `peer` whose on_connected resends its outbox (m1, m2) once `go` is set."""
    box: list[NetworkLink] = []

    async def resend_outbox() -> None:
        await go.wait()
        await box[0].send([submit("m1"), submit("m2")])

    link = NetworkLink("127.0.0.1", peer.port, on_connected=resend_outbox,
                       on_frames=Recorder().on_frames, backoff_min_s=0.01, backoff_max_s=0.05)
    box.append(link)
    nursery.start_soon(link.run)
    with trio.fail_after(5):
        await link.wait_connected()
    return link


def test_parse_url_accepts_tcp_scheme_bare_host_port_and_ipv6():
    assert parse_url("tcp://127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_url("netsim.local:7001") == ("netsim.local", 7001)
    assert parse_url("tcp://[::1]:7002") == ("::1", 7002)


@pytest.mark.parametrize("bad", ["http://x:1", "tcp://x", "tcp://x:99999", ""])
def test_parse_url_rejects_anything_else(bad):
    with pytest.raises(ValueError):
        parse_url(bad)


async def test_link_says_hello_and_runs_on_connected(nursery):
    server, port = await start_server(nursery)
    rec = Recorder()
    link = await start_link(nursery, port, rec)
    await rec.wait_for(lambda: rec.connected_calls == 1)
    assert link.connected
    assert link.server_name == "netsim"


async def test_submit_gets_an_ack_then_delivered_and_read_receipts(nursery):
    server, port = await start_server(nursery)
    rec = Recorder()
    link = await start_link(nursery, port, rec)
    await link.send([submit("m1")])
    await rec.wait_for(lambda: rec.receipts("read"))
    assert [f for f in rec.frames if isinstance(f, Ack)] == [Ack(id="m1")]
    assert [r.id for r in rec.receipts("delivered")] == ["m1"]


async def test_send_raises_link_down_when_not_connected():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    rec = Recorder()
    link = NetworkLink("127.0.0.1", port, on_connected=rec.on_connected, on_frames=rec.on_frames)
    assert not link.connected
    with pytest.raises(LinkDown):
        await link.send([submit("m1")])


async def test_a_network_it_cannot_reach_is_logged_once_per_reason(nursery, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    rec = Recorder()
    link = NetworkLink("127.0.0.1", port, on_connected=rec.on_connected, on_frames=rec.on_frames,
                       backoff_min_s=0.01, backoff_max_s=0.02)
    with caplog.at_level("WARNING", logger="gateway.network"):
        nursery.start_soon(link.run)
        await trio.sleep(0.3)  # several tries
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.network"]
    assert len(said) == 1 and f"127.0.0.1:{port}: cannot connect" in said[0], said


async def test_link_reconnects_after_the_server_drops_it_and_runs_on_connected_again(nursery):
    server, port = await start_server(nursery)
    rec = Recorder()
    link = await start_link(nursery, port, rec)
    await rec.wait_for(lambda: rec.connected_calls == 1)
    assert server.disconnect_all() == 1
    await rec.wait_for(lambda: rec.connected_calls == 2)
    assert link.connected and link.connects == 2
    await link.send([submit("after-reconnect")])
    await rec.wait_for(lambda: Ack(id="after-reconnect") in rec.frames)


async def test_unacked_receipts_are_resent_after_reconnect_until_acknowledged(nursery):
    server, port = await start_server(nursery)
    rec = Recorder()
    link = await start_link(nursery, port, rec)
    await link.send([submit("m1")])
    await rec.wait_for(lambda: rec.receipts("read"))  # seen, but deliberately not acknowledged
    server.disconnect_all()
    await rec.wait_for(lambda: len(rec.receipts("read")) == 2)
    assert [r.id for r in rec.receipts("delivered")] == ["m1", "m1"]
    await link.send([ReceiptAck(ids=["m1", "m1"])])
    with trio.fail_after(5):
        while (await fetch_stats("127.0.0.1", port))["unacked_receipts"]:
            await trio.sleep(0.01)


async def test_receipts_due_while_no_client_is_connected_arrive_on_the_next_hello(nursery):
    server, port = await start_server(nursery)
    rec = Recorder()
    async with trio.open_nursery() as inner:
        link = await start_link(inner, port, rec)
        await link.send([submit("m1")])
        await rec.wait_for(lambda: Ack(id="m1") in rec.frames)
        inner.cancel_scope.cancel()
    await trio.sleep(0.05)  # the receipts fall due with nobody connected
    late = Recorder()
    await start_link(nursery, port, late)
    await late.wait_for(lambda: late.receipts("delivered") and late.receipts("read"))


async def test_concurrent_senders_never_interleave_frames(nursery):
    server, port = await start_server(nursery)
    rec = Recorder()
    link = await start_link(nursery, port, rec)

    async def sender(k: int) -> None:
        for j in range(20):
            await link.send([submit(f"s{k}-{j}-{i}") for i in range(50)])

    async with trio.open_nursery() as senders:
        for k in range(5):
            senders.start_soon(sender, k)
    await rec.wait_for(lambda: sum(isinstance(f, Ack) for f in rec.frames) == 5000)
    assert link.connects == 1
    assert (await fetch_stats("127.0.0.1", port))["unique"] == 5000


async def test_an_observer_connection_does_not_take_receipts_away_from_the_gateway(nursery):
    server, port = await start_server(nursery, NetsimConfig(latency_ms_median=50.0, latency_sigma=0.0, e2e=False,
                                                            read_share=0.0))
    rec = Recorder()
    link = await start_link(nursery, port, rec)
    observer = NetworkLink("127.0.0.1", port, on_connected=Recorder().on_connected,
                           on_frames=Recorder().on_frames, client_name="observer:test")
    await nursery.start(observer.run)
    with trio.fail_after(5):
        await observer.wait_connected()
    await link.send([submit("m1")])
    await rec.wait_for(lambda: rec.receipts("delivered"))


async def test_when_the_receipt_target_drops_the_previous_connection_gets_its_unacked_receipts(nursery):
    server, port = await start_server(nursery)
    first, second = Recorder(), Recorder()
    link1 = await start_link(nursery, port, first)
    async with trio.open_nursery() as inner:
        await start_link(inner, port, second)  # the most recent connection receives receipts
        await link1.send([submit("m1")])
        await second.wait_for(lambda: second.receipts("read"))
        inner.cancel_scope.cancel()
    await first.wait_for(lambda: first.receipts("delivered") and first.receipts("read"))


async def test_a_peer_that_writes_its_answers_before_it_reads_on_cannot_deadlock_the_resend(nursery):
    """After a reconnect the gateway writes its whole outbox (on_connected) while the peer may be
    writing a backlog of receipts without reading: the link keeps reading meanwhile, so neither
    side stays blocked in a write (both backlogs here far exceed the loopback socket buffers)."""
    from gateway.network.frames import FrameDecoder, HelloOk, encode_frames

    backlog = 24_000  # frames each way, ~24 MB
    receipts = encode_frames([Receipt(id=f"r{i}", status="delivered", at_ms=i) for i in range(backlog)])
    padded = [Submit(id=f"m{i}", sender="+15550000000", recipient="+15551234567", payload=bytes(1000))
              for i in range(backlog)]
    taken = trio.Event()
    got = []

    async def peer(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while not decoder.feed(await stream.receive_some(65536)):
            pass  # the hello
        await stream.send_all(encode_frames([HelloOk(server="stubborn")]))
        await stream.send_all(receipts)  # the whole backlog before reading anything more
        while len(got) < backlog:
            data = await stream.receive_some(1 << 20)
            if not data:
                return
            got.extend(decoder.feed(data))
        taken.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, peer, listeners)
    rec = Recorder()
    link_box = []

    async def resend_everything() -> None:
        await link_box[0].send(padded)

    link = NetworkLink("127.0.0.1", port, on_connected=resend_everything, on_frames=rec.on_frames,
                       backoff_min_s=0.01, backoff_max_s=0.05)
    link_box.append(link)
    nursery.start_soon(link.run)
    with trio.fail_after(30):
        await taken.wait()
        await rec.wait_for(lambda: len(rec.frames) == backlog, timeout_s=30)
    assert [f.id for f in got[:2]] == ["m0", "m1"] and len(got) == backlog


async def test_a_peer_that_resets_the_connection_during_the_resend_is_reconnected_to(nursery):
    """The connection dies while on_connected is still writing (its write fails and the reader's
    socket is closed or reset under it): the link ends that session and reconnects; nothing escapes."""
    import struct

    from gateway.network.frames import FrameDecoder, HelloOk, encode_frames

    hellos = []

    async def peer(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while not decoder.feed(await stream.receive_some(65536)):
            pass
        hellos.append(1)
        await stream.send_all(encode_frames([HelloOk(server="flaky")]))
        if len(hellos) == 1:  # the first connection: reset it while the gateway writes
            await stream.receive_some(65536)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()
            return
        await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, peer, listeners)
    big = [Submit(id=f"m{i}", sender="+15550000000", recipient="+15551234567", payload=bytes(1000))
           for i in range(24_000)]
    box = []

    async def resend_everything() -> None:
        await box[0].send(big)

    link = NetworkLink("127.0.0.1", port, on_connected=resend_everything, on_frames=Recorder().on_frames,
                       backoff_min_s=0.01, backoff_max_s=0.05)
    box.append(link)
    nursery.start_soon(link.run)
    with trio.fail_after(20):
        while link.connects < 2:
            await trio.sleep(0.01)


async def test_the_resend_on_connect_skips_what_was_already_sent_on_that_connection(nursery):
    """While on_connected resends the outbox, a dispatch may already have sent a message on the new
    connection (it was committed to the outbox before the resend read it): the network gets it once.
    Outside on_connected nothing is filtered (a throttled message is sent again on purpose)."""
    peer = await SubmitPeer.start(nursery)
    dispatched = trio.Event()  # the outbox is read after m1 went out
    link = await link_resending_after(nursery, peer, dispatched)
    with trio.fail_after(5):
        await link.send([submit("m1")])  # the dispatch path, on the new connection
        dispatched.set()
        await peer.wait_for(2)
        await trio.sleep(0.05)
        assert peer.got == ["m1", "m2"]
        await link.send([submit("m2")])  # after on_connected: sent again, as asked
        await peer.wait_for(3)
    assert peer.got == ["m1", "m2", "m2"]


async def test_a_message_throttled_while_on_connected_resends_is_not_skipped_as_sent(nursery):
    """Found when key files moved off the event loop and on_connected waited for them: a dispatch
    sent m1 on the new connection, the network throttled it, and the resend (which takes over every
    throttle retry) skipped m1 as already sent: it stayed in the outbox, never sent again."""
    peer = await SubmitPeer.start(nursery)
    throttled = trio.Event()
    link = await link_resending_after(nursery, peer, throttled)
    with trio.fail_after(5):
        await link.send([submit("m1")])  # the dispatch path, on the new connection
        link.unsent(["m1"])  # the network answered it with throttled
        throttled.set()
        await peer.wait_for(3)
    assert peer.got == ["m1", "m1", "m2"]
