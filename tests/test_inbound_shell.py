"""The inbound shell against a real store and writer, the link replaced by a recorder: every inbound
frame is acknowledged after its commit, stored once, and what cannot be read changes nothing."""
import msgspec

from gateway.e2e.sessions import session_key
from gateway.network.frames import Inbound, InboundAck
from gateway.store import records as R
from loadtest.netsim.devices import Devices
from tests.inproc import with_gateway

SENDER = "+15550000001"
CUSTOMER = "+18880000042"
def customer_of(gw) -> Devices:
    devices = Devices(4)
    frame = gw.keyring.book(SENDER).publish_frame(replace=True)
    assert devices.publish(SENDER, frame.bundle, frame.one_time_prekeys, True)
    return devices


def text(s: str) -> bytes:
    return msgspec.msgpack.encode({"type": "text", "body": s})


def inbound_record(gw, network_id: str) -> R.InboundRecord:
    msg_id = gw.store.get("inbound_ids", network_id.encode())
    return R.inbound_decoder.decode(gw.store.get("inbound", msg_id))


async def test_garbage_is_stored_as_undecryptable_acknowledged_and_a_resend_is_dropped(tmp_path):
    async def body(gw, link):
        frame = Inbound("net-1", CUSTOMER, SENDER, b"\x01\x01" + bytes(100), 5)
        await gw.delivery.on_frames([frame])
        assert link.sent == [InboundAck(["net-1"])]
        rec = inbound_record(gw, "net-1")
        assert (rec.status, rec.reason, rec.payload) == ("undecryptable", "undecryptable_no_session", b"")
        await gw.delivery.on_frames([frame])
        assert link.sent[-1] == InboundAck(["net-1"]) and gw.store.count("inbound") == 1
        assert b'gateway_inbound_undecryptable_total{reason="no_session"} 1' in gw.metrics.registry.render()

    await with_gateway(tmp_path, body)


async def test_unusable_ids_and_numbers_are_acknowledged_and_dropped(tmp_path):
    async def body(gw, link):
        frames = [Inbound("x" * 300, CUSTOMER, SENDER, b""), Inbound("net-2", "+1" + "9" * 600, SENDER, b""),
                  Inbound("net-3", CUSTOMER, "not-a-number\0", b"")]
        await gw.delivery.on_frames(frames)
        assert link.sent == [InboundAck([f.id for f in frames])] and gw.store.count("inbound") == 0

    await with_gateway(tmp_path, body)


async def test_a_new_session_is_stored_with_its_message_and_its_one_time_prekey_is_used_once(tmp_path):
    async def body(gw, link):
        devices = customer_of(gw)
        book = gw.keyring.book(SENDER)
        before = len(book.all_one_time_public())
        payload, _ = devices.compose(CUSTOMER, SENDER, text("hello"))
        await gw.delivery.on_frames([Inbound("net-10", CUSTOMER, SENDER, payload, 7)])
        assert link.sent == [InboundAck(["net-10"])]
        rec = inbound_record(gw, "net-10")
        assert rec.status == "received" and b"hello" not in rec.payload
        assert gw.store.get("sessions", session_key(SENDER, CUSTOMER)) is not None
        assert len(gw.store.scan("used_prekeys")) == 1 and len(book.all_one_time_public()) == before - 1
        # the same envelope again under another network id: a replay, refused, the session unchanged
        session = gw.delivery.sessions.get(session_key(SENDER, CUSTOMER))
        state = session.to_bytes()
        await gw.delivery.on_frames([Inbound("net-11", CUSTOMER, SENDER, payload, 8)])
        assert inbound_record(gw, "net-11").reason == "undecryptable_replay"
        assert session.to_bytes() == state

    await with_gateway(tmp_path, body)


async def test_a_stop_keyword_opts_out_and_queues_the_confirmation_in_the_same_commit(tmp_path):
    async def body(gw, link):
        devices = customer_of(gw)
        payload, _ = devices.compose(CUSTOMER, SENDER, text("Stop!"))
        await gw.delivery.on_frames([Inbound("net-20", CUSTOMER, SENDER, payload)])
        assert gw.policy.opted_out("default", SENDER, CUSTOMER)
        [(msg_id, raw)] = gw.store.scan("pending")
        assert R.pending_decoder.decode(raw).recipient == CUSTOMER
        assert gw.store.message(msg_id.decode()).priority == R.URGENT

    await with_gateway(tmp_path, body)


async def test_an_authentic_message_whose_text_cannot_be_read_is_stored_as_such_and_acknowledged(tmp_path):
    not_utf8 = msgspec.msgpack.encode({"type": "text", "body": "@@"}).replace(b"\xa2@@", b"\xa2\xff\xfe")
    no_body = msgspec.msgpack.encode({"type": "text"})

    async def body(gw, link):
        devices = customer_of(gw)
        for n, plaintext in enumerate([not_utf8, no_body, text("still in step")]):
            payload, _ = devices.compose(CUSTOMER, SENDER, plaintext)
            await gw.delivery.on_frames([Inbound(f"net-3{n}", CUSTOMER, SENDER, payload, 9)])
            assert link.sent[-1] == InboundAck([f"net-3{n}"])
        assert [inbound_record(gw, f"net-3{n}").reason for n in range(2)] == ["undecryptable_bad_plaintext"] * 2
        assert inbound_record(gw, "net-32").status == "received"  # the ratchet kept its steps

    await with_gateway(tmp_path, body)
