"""Inbound messages without processes: the link frames, the responder side of the gateway's
sessions against netsim's simulated customers, netsim's inbound bookkeeping, and the commit that
stores, dedupes and raises events."""
import os

import msgspec
import pytest

from gateway.crypto.seal import Sealer
from gateway.e2e import envelope
from gateway.e2e.keys import SenderKeys
from gateway.e2e.responder import Undecryptable, open_envelope
from gateway.crypto.identity import PrekeyBundle
from gateway.e2e.sessions import LiveSession, start_session
from gateway.ids import IdGenerator
from gateway.network.frames import (CustomerSend, CustomerSendReply, FrameDecoder, FrameError, Inbound,
                                    InboundAck, encode_frames)
from gateway.store import ops
from gateway.store import records as R
from gateway.store.env import open_store
from loadtest.netsim.config import NetsimConfig
from loadtest.netsim.core import Network
from loadtest.netsim.devices import Devices

SENDER = "+15550000001"
CUSTOMER = "+18880000001"
NOW_MS = 1_800_000_000_000
text = msgspec.msgpack.Encoder().encode


def body(s: str) -> bytes:
    return text({"type": "text", "body": s})


@pytest.fixture
def world():
    book = SenderKeys.create(SENDER, NOW_MS, 5)
    devices = Devices(7)
    assert devices.publish(SENDER, book.bundle().encode(), book.all_one_time_public(), True) == 5
    return book, devices


# -- frames ------------------------------------------------------------------------------------

def test_inbound_frames_round_trip_with_defaults_omitted():
    frames = [Inbound("in-1", CUSTOMER, SENDER, b"\x01\x01xyz", 123), InboundAck(["in-1", "in-2"]),
              CustomerSend(CUSTOMER, SENDER, "STOP", n=4), CustomerSendReply(4, id="in-3"),
              CustomerSendReply(5, error="not_published")]
    assert FrameDecoder().feed(encode_frames(frames)) == frames
    assert b"at_ms" not in encode_frames([Inbound("i", "a", "b", b"")])


def test_an_inbound_frame_without_its_payload_is_a_frame_error():
    body_ = msgspec.msgpack.encode({"t": "inbound", "id": "x", "sender": "a", "recipient": "b"})
    with pytest.raises(FrameError):
        FrameDecoder().feed(len(body_).to_bytes(4, "big") + body_)


# -- the responder ---------------------------------------------------------------------------

def test_a_customer_starts_a_session_and_the_gateway_decrypts_it_with_a_one_time_prekey(world):
    book, devices = world
    payload, left = devices.compose(CUSTOMER, SENDER, body("hello gateway"))
    assert left == 4 and payload[1] == envelope.KIND_PREKEY
    opened = open_envelope(book, None, payload, NOW_MS)
    assert opened.plaintext == body("hello gateway") and opened.new
    assert opened.one_time_prekey_id is not None and book.peek_one_time(opened.one_time_prekey_id) is not None
    assert opened.session.header is None and opened.session.base_key is not None


def test_later_messages_of_the_customers_session_decrypt_in_it(world):
    book, devices = world
    session = open_envelope(book, None, devices.compose(CUSTOMER, SENDER, body("one"))[0], NOW_MS).session
    second, left = devices.compose(CUSTOMER, SENDER, body("two"))
    assert left is None  # no new bundle drawn
    opened = open_envelope(book, session, second, NOW_MS)
    assert (opened.plaintext, opened.new, opened.session) == (body("two"), False, session)


def test_the_gateway_answers_in_the_customers_session_and_the_customer_stops_sending_the_header(world):
    book, devices = world
    session = open_envelope(book, None, devices.compose(CUSTOMER, SENDER, body("hi"))[0], NOW_MS).session
    answer = session.encrypt(body("hello customer"))
    assert answer[1] == envelope.KIND_MESSAGE
    assert devices.receive(SENDER, CUSTOMER, answer, NOW_MS / 1000) == (body("hello customer"), None)
    after, _ = devices.compose(CUSTOMER, SENDER, body("thanks"))
    assert after[1] == envelope.KIND_MESSAGE
    assert open_envelope(book, session, after, NOW_MS).plaintext == body("thanks")


def test_a_customer_replies_within_a_session_the_gateway_started_and_confirms_it(world):
    book, devices = world
    bundle = PrekeyBundle.decode(devices.recipient_bundle(CUSTOMER))
    session = start_session(book.identity, bundle, NOW_MS)
    first = session.encrypt(body("your order shipped"))
    assert devices.receive(SENDER, CUSTOMER, first, NOW_MS / 1000)[1] is None
    reply, left = devices.compose(CUSTOMER, SENDER, body("thank you"))
    assert left is None and reply[1] == envelope.KIND_MESSAGE
    opened = open_envelope(book, session, reply, NOW_MS)
    assert opened.plaintext == body("thank you") and not opened.new
    assert session.header is None  # confirmed: later messages leave out the initial header


@pytest.mark.parametrize("garbage, kind", [
    (b"", "malformed_envelope"),
    (b"\x02\x01" + bytes(100), "malformed_envelope"),
    (b"\x01\x02\x00\x03abc" + bytes(88), "malformed_header"),
    (b"\x01\x01" + os.urandom(120), "no_session"),
])
def test_garbage_is_undecryptable_with_a_kind(world, garbage, kind):
    book, _ = world
    with pytest.raises(Undecryptable) as exc:
        open_envelope(book, None, garbage, NOW_MS)
    assert exc.value.kind == kind


def test_a_flipped_bit_is_refused_and_leaves_the_session_exactly_as_it_was(world):
    book, devices = world
    session = open_envelope(book, None, devices.compose(CUSTOMER, SENDER, body("a"))[0], NOW_MS).session
    payload = bytearray(devices.compose(CUSTOMER, SENDER, body("b"))[0])
    payload[-40] ^= 1
    before = session.to_bytes()
    with pytest.raises(Undecryptable) as exc:
        open_envelope(book, session, bytes(payload), NOW_MS)
    assert exc.value.kind == "bad_tag" and session.to_bytes() == before


def test_a_replayed_message_is_refused_and_leaves_the_session_as_it_was(world):
    book, devices = world
    first = devices.compose(CUSTOMER, SENDER, body("a"))[0]
    session = open_envelope(book, None, first, NOW_MS).session
    before = session.to_bytes()
    with pytest.raises(Undecryptable) as exc:
        open_envelope(book, session, first, NOW_MS)
    assert exc.value.kind == "replay" and session.to_bytes() == before


def test_a_one_time_prekey_already_used_is_refused(world):
    book, devices = world
    payload = devices.compose(CUSTOMER, SENDER, body("a"))[0]
    with pytest.raises(Undecryptable) as exc:
        open_envelope(book, None, payload, NOW_MS, prekey_used=lambda key_id: True)
    assert exc.value.kind == "unknown_prekey"


def test_a_prekey_message_for_another_identity_key_is_refused(world):
    book, devices = world
    other = SenderKeys.create(SENDER, NOW_MS, 1)  # keys the customer fetched are not this book's
    payload = devices.compose(CUSTOMER, SENDER, body("a"))[0]
    with pytest.raises(Undecryptable):
        open_envelope(other, None, payload, NOW_MS)


def test_a_session_record_round_trips_with_the_customers_base_key(world):
    book, devices = world
    session = open_envelope(book, None, devices.compose(CUSTOMER, SENDER, body("a"))[0], NOW_MS).session
    again = LiveSession.from_bytes(session.to_bytes())
    assert again.base_key == session.base_key
    nxt = devices.compose(CUSTOMER, SENDER, body("b"))[0]
    assert open_envelope(book, again, nxt, NOW_MS).plaintext == body("b")


# -- netsim's side ---------------------------------------------------------------------------

def _network(seed=5, customers=50) -> tuple[Network, SenderKeys]:
    net = Network(NetsimConfig(seed=seed, inbound_customers=customers), inbound_prefix="t")
    book = SenderKeys.create(SENDER, NOW_MS, 100)
    net.devices.publish(SENDER, book.bundle().encode(), book.all_one_time_public(), True)
    return net, book


def test_netsim_keeps_inbound_messages_until_acknowledged():
    net, _ = _network()
    frame, error, drawn = net.customer_send(CUSTOMER, SENDER, "STOP", NOW_MS)
    assert error == "" and frame.sender == CUSTOMER and frame.recipient == SENDER and drawn == (SENDER, 99)
    assert net.unacked_inbound() == [frame]
    net.on_inbound_ack([frame.id, "unknown"])
    assert net.unacked_inbound() == []
    stats = net.stats()
    assert (stats["inbound_sent"], stats["inbound_acks"], stats["inbound_stray_acks"]) == (1, 1, 1)


def test_netsim_refuses_to_send_to_a_number_without_published_keys():
    net, _ = _network()
    assert net.customer_send(CUSTOMER, "+15559999999", "hi", NOW_MS)[:2] == (None, "not_published")


def test_generated_inbound_traffic_is_the_same_for_the_same_seed_and_decrypts_at_the_gateway():
    runs = []
    for _ in range(2):
        net, book = _network(seed=9)
        frames, _ = net.generate_inbound(40, NOW_MS)
        runs.append([(f.sender, f.recipient) for f in frames])
    assert runs[0] == runs[1] and len(runs[0]) == 40 and len(set(runs[0])) > 1
    sessions = {}
    for f in frames:
        opened = open_envelope(book, sessions.get(f.sender), f.payload, NOW_MS)
        sessions[f.sender] = opened.session
        assert msgspec.msgpack.decode(opened.plaintext)["body"].startswith("netsim inbound ")


# -- the commit --------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "data"), 64)
    yield s
    s.close()


def _commit(store, arg):
    with store.env.begin(write=True) as txn:
        return ops.receive_inbound(txn, store.dbs, arg)


def test_an_inbound_message_is_stored_once_and_its_event_text_is_sealed(store):
    sealer = Sealer({1: os.urandom(32)}, 1)
    marker = "marker-7f3a9c"
    record = ops.encode(R.InboundRecord("default", CUSTOMER, SENDER, "in-1", NOW_MS, NOW_MS, "received", "",
                                        sealer.seal(ops.encode(R.TextPayload(marker)), b"M1")))
    item = ops.InboundItem("in-1", "M1", record, [([b"ep1"], "message.received", {"text": {"body": marker}}, True)])
    arg = ops.InboundArg([item], [(b"k", b"sealed-session")], [R.used_prekey_key(SENDER, 7)], NOW_MS,
                         IdGenerator(), sealer)
    assert _commit(store, arg) == (["in-1"], 0)
    assert _commit(store, arg._replace(items=[item._replace(id="M2")])) == ([], 0)  # replay: nothing stored
    assert store.get("inbound_ids", b"in-1") == b"M1" and store.get("inbound", b"M2") is None
    [(key, value)] = store.scan("webhook_outbox")
    assert value.startswith(ops.SEALED_EVENT) and marker.encode() not in value
    event = msgspec.json.decode(sealer.open(value[1:], key.split(b"\0", 1)[1]))
    assert event["type"] == "message.received" and event["data"]["text"]["body"] == marker
    assert store.get("used_prekeys", R.used_prekey_key(SENDER, 7)) is not None
    with store.env.begin() as txn:
        assert all(marker.encode() not in bytes(v) for db in store.dbs.values() for _, v in txn.cursor(db=db))


def test_mutated_envelopes_only_ever_fail_as_undecryptable(world):
    import random
    book, devices = world
    rng = random.Random(3)
    valid = devices.compose(CUSTOMER, SENDER, body("fuzz"))[0]
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        try:
            open_envelope(book, None, bytes(data), NOW_MS)
        except Undecryptable:
            pass


def test_crossed_first_messages_the_customers_device_reads_both_sessions_and_follows_the_gateway(world):
    """The gateway's first message and the customer's first message cross: each side starts its own
    session. The device keeps its own session beside the gateway's, reads the gateway's next message
    (sent in the customer's session, which the gateway took up on reading it) in it, and answers there."""
    book, devices = world
    gw = start_session(book.identity, PrekeyBundle.decode(devices.recipient_bundle(CUSTOMER)), NOW_MS)
    first = gw.encrypt(body("your order shipped"))  # in flight ...
    hello, _ = devices.compose(CUSTOMER, SENDER, body("hello"))  # ... while the customer starts a session
    assert devices.receive(SENDER, CUSTOMER, first, NOW_MS / 1000) == (body("your order shipped"), None)
    opened = open_envelope(book, gw, hello, NOW_MS)
    assert opened.new and opened.plaintext == body("hello")
    gw.replace_with(opened.session)  # as the inbound path does: the pair continues in the customer's session
    second = gw.encrypt(body("it arrives today"))
    assert devices.receive(SENDER, CUSTOMER, second, NOW_MS / 1000) == (body("it arrives today"), None)
    reply, left = devices.compose(CUSTOMER, SENDER, body("thanks"))
    assert left is None and reply[1] == envelope.KIND_MESSAGE  # in the session the gateway answered in
    assert open_envelope(book, gw, reply, NOW_MS).plaintext == body("thanks")
    assert devices.stats()["decrypt_failures"] == 0


def test_crossed_first_messages_the_gateway_reads_the_customer_in_the_session_it_replaced(world):
    """The other order: the gateway reads the customer's new session first and takes it up, while
    the device takes up the gateway's. The customer then writes in the gateway's first session; the
    gateway kept it aside, reads the message in it, makes it current again and answers there."""
    book, devices = world
    gw = start_session(book.identity, PrekeyBundle.decode(devices.recipient_bundle(CUSTOMER)), NOW_MS)
    first = gw.encrypt(body("your order shipped"))
    hello, _ = devices.compose(CUSTOMER, SENDER, body("hello"))
    opened = open_envelope(book, gw, hello, NOW_MS)
    gw.replace_with(opened.session)  # the gateway now answers in the customer's session ...
    customers_session = gw.base_key
    assert devices.receive(SENDER, CUSTOMER, first, NOW_MS / 1000)[1] is None  # ... the device in the gateway's
    later, _ = devices.compose(CUSTOMER, SENDER, body("are you there?"))
    opened = open_envelope(book, gw, later, NOW_MS)
    assert (opened.plaintext, opened.new, opened.session) == (body("are you there?"), False, gw)
    assert gw.base_key is None and [p.base_key for p in gw.previous] == [customers_session]
    assert devices.receive(SENDER, CUSTOMER, gw.encrypt(body("yes")), NOW_MS / 1000) == (body("yes"), None)


def test_a_message_in_no_session_of_the_pair_still_fails_and_changes_nothing(world):
    book, devices = world
    gw = start_session(book.identity, PrekeyBundle.decode(devices.recipient_bundle(CUSTOMER)), NOW_MS)
    assert devices.receive(SENDER, CUSTOMER, gw.encrypt(body("one")), NOW_MS / 1000)[1] is None
    gw.replace_with(start_session(book.identity, PrekeyBundle.decode(devices.recipient_bundle(CUSTOMER)), NOW_MS))
    before = gw.to_bytes()
    forged = envelope.encode(None, os.urandom(120))
    with pytest.raises(Undecryptable):
        open_envelope(book, gw, forged, NOW_MS)
    assert gw.to_bytes() == before


def test_previous_sessions_are_stored_with_the_pair_newest_first_and_capped(world):
    from gateway.e2e.sessions import PREVIOUS_MAX, SessionRecord

    book, devices = world
    fresh = lambda: start_session(book.identity, PrekeyBundle.decode(devices.recipient_bundle(CUSTOMER)), NOW_MS)  # noqa: E731
    gw = fresh()
    made = [gw.to_bytes()]
    for _ in range(PREVIOUS_MAX + 2):
        gw.replace_with(fresh())
        made.append(gw.to_bytes())
    assert len(gw.previous) == PREVIOUS_MAX
    again = LiveSession.from_bytes(gw.to_bytes())
    assert [p.to_bytes() for p in again.previous] == [p.to_bytes() for p in gw.previous]
    assert again.previous[0].ratchet.to_bytes() == LiveSession.from_bytes(made[-2]).ratchet.to_bytes()  # newest first
    # a record written before previous sessions existed (seven fields) still opens, with none
    old = msgspec.msgpack.encode(list(msgspec.msgpack.decode(made[0]))[:7])
    assert LiveSession.from_bytes(old).previous == []
    assert msgspec.msgpack.decode(old, type=SessionRecord).previous == []
