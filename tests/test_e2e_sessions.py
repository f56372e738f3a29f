"""Outbound sessions against netsim's devices, as pure cores: the envelope, PQXDH on first
contact, the ratchet state round-tripped through its sealed record, the hot cache, the new link
frames, and netsim's decryption (failures counted, sessions left unchanged)."""
import pytest

from gateway.crypto.agreement import EphemeralKeyPool, InitialHeader
from gateway.crypto.identity import PrekeyBundle
from gateway.crypto.seal import Sealer
from gateway.e2e import envelope
from gateway.e2e.bundles import BundleRequests, BundleTimeout
from gateway.e2e.keys import SenderKeys
from gateway.e2e.sessions import LiveSession, SessionCache, SessionRecordError, load_many, session_key, start_session
from gateway.network.frames import (BundleReply, BundleRequest, FrameDecoder, PrekeyCount, PublishKeys,
                                    encode_frames)
from loadtest.netsim.devices import Devices

SENDER = "+15550000001"
BOB = "+14155550100"


@pytest.fixture(scope="module")
def sender():
    return SenderKeys.create(SENDER, 0, 4)


def new_session(devices, sender, recipient=BOB):
    return start_session(sender.identity, PrekeyBundle.decode(devices.recipient_bundle(recipient)), 1000)


def test_envelope_round_trips_and_rejects_what_it_does_not_know():
    assert envelope.decode(envelope.encode(None, b"msg")) == (None, b"msg")
    assert envelope.decode(envelope.encode(b"hdr", b"msg")) == (b"hdr", b"msg")
    for bad in (b"", b"\x02\x01x", b"\x01\x07x", b"\x01\x02\x00", b"\x01\x02\x00\x09abc"):
        with pytest.raises(envelope.EnvelopeError):
            envelope.decode(bad)


def test_first_messages_carry_the_pqxdh_header_until_confirmed_and_all_decrypt(sender):
    devices = Devices(7)
    session = new_session(devices, sender)
    first = session.encrypt(b"one")
    assert envelope.decode(first)[0] is not None
    assert devices.receive(SENDER, BOB, first, 1.0) == (b"one", None)
    second = session.encrypt(b"two")  # still unconfirmed: the same header again, same session at netsim
    assert devices.receive(SENDER, BOB, second, 1.0) == (b"two", None)
    session.confirm()
    third = session.encrypt(b"three")
    assert envelope.decode(third)[0] is None
    assert devices.receive(SENDER, BOB, third, 1.0) == (b"three", None)
    assert devices.stats()["sessions"] == 1 and devices.stats()["decrypt_failures"] == 0


def test_a_session_started_from_a_key_pool_takes_two_distinct_keys_for_ek_and_the_ratchet(sender):
    class Recording(EphemeralKeyPool):
        def take(self):
            key = super().take()
            self.handed.append(key.public_key().public_bytes_raw())
            return key

    devices = Devices(7)
    pool = Recording(2)
    pool.handed = []
    pool.refill()
    session = start_session(sender.identity, PrekeyBundle.decode(devices.recipient_bundle(BOB)), 1000,
                            ephemerals=pool)
    assert len(pool) == 0 and len(set(pool.handed)) == 2
    header = InitialHeader.decode(session.header)
    ratchet_key = session.ratchet.encrypt(b"x", session.ad)[:32]  # a ratchet message starts with DHs
    assert [header.ephemeral_key[1:], ratchet_key] == pool.handed
    first = session.encrypt(b"one")
    assert devices.receive(SENDER, BOB, first, 1.0) == (b"one", None)


def test_session_state_round_trips_through_its_sealed_record(sender):
    devices = Devices(7)
    sealer = Sealer({1: b"k" * 32}, 1)
    session = new_session(devices, sender)
    devices.receive(SENDER, BOB, session.encrypt(b"a"), 1.0)
    key = session_key(SENDER, BOB)
    blob = session.seal(sealer, key)
    assert session.ratchet.to_bytes()[-40:] not in blob  # keys are sealed at rest
    restored = LiveSession.open(sealer, key, blob)
    assert restored.to_bytes() == session.to_bytes()
    assert devices.receive(SENDER, BOB, restored.encrypt(b"b"), 2.0) == (b"b", None)
    with pytest.raises(SessionRecordError):
        LiveSession.open(sealer, session_key(SENDER, "+14155550199"), blob)  # bound to its key


def test_a_flipped_bit_fails_with_a_reason_and_leaves_the_session_as_it_was(sender):
    devices = Devices(7)
    session = new_session(devices, sender)
    assert devices.receive(SENDER, BOB, session.encrypt(b"a"), 1.0)[1] is None
    session.confirm()
    good = session.encrypt(b"b")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert devices.receive(SENDER, BOB, bad, 1.0) == (None, "bad_tag")
    assert devices.receive(SENDER, BOB, good, 1.0) == (b"b", None)
    assert devices.receive(SENDER, BOB, good, 1.0) == (None, "replay")
    assert devices.stats()["decrypt_failure_reasons"] == {"bad_tag": 1, "replay": 1}


def test_netsim_refuses_a_message_without_a_session_and_a_reused_one_time_prekey(sender):
    devices = Devices(7)
    session = new_session(devices, sender)
    session.confirm()
    assert devices.receive(SENDER, BOB, session.encrypt(b"x"), 1.0) == (None, "no_session")
    bundle = devices.recipient_bundle("+14155550111")
    a = start_session(sender.identity, PrekeyBundle.decode(bundle), 0)
    assert devices.receive(SENDER, "+14155550111", a.encrypt(b"a"), 1.0)[1] is None
    b = start_session(sender.identity, PrekeyBundle.decode(bundle), 0)  # same one-time prekey again
    assert devices.receive(SENDER, "+14155550111", b.encrypt(b"b"), 1.0) == (None, "unknown_prekey")


def test_netsim_bundles_derive_from_the_seed_and_the_number():
    a, b, c = Devices(7), Devices(7), Devices(8)
    assert a.recipient_bundle(BOB) == b.recipient_bundle(BOB)
    assert PrekeyBundle.decode(a.recipient_bundle(BOB)).one_time_prekey_id == 2  # one per bundle served
    assert PrekeyBundle.decode(c.recipient_bundle(BOB)).identity_key != PrekeyBundle.decode(
        b.recipient_bundle(BOB)).identity_key


def test_a_published_sender_identity_must_match_the_header(sender):
    devices = Devices(7)
    other = SenderKeys.create(SENDER, 0, 1)
    assert devices.publish(SENDER, other.bundle().encode(), [], True) == 0
    session = new_session(devices, sender)
    assert devices.receive(SENDER, BOB, session.encrypt(b"a"), 1.0) == (None, "identity_mismatch")


def test_published_sender_bundles_hand_out_each_one_time_prekey_once(sender):
    devices = Devices(7)
    frame = sender.publish_frame(replace=True)
    assert devices.publish(SENDER, frame.bundle, frame.one_time_prekeys, True) == 4
    served = [devices.sender_bundle(SENDER) for _ in range(5)]
    ids = [PrekeyBundle.decode(b).one_time_prekey_id for b, _ in served]
    assert len(set(ids[:4])) == 4 and ids[4] is None and [left for _, left in served] == [3, 2, 1, 0, 0]
    assert devices.publish(SENDER, b"\x93bad", [], True) is None


def test_cache_keeps_its_capacity_oldest_first():
    cache = SessionCache(2)
    for key in (b"a", b"b", b"c"):
        cache.put(key, object())
    assert cache.trim() == 1 and b"a" not in cache and b"c" in cache


def test_load_many_reports_records_that_do_not_open(tmp_path, sender):
    import lmdb

    env = lmdb.open(str(tmp_path), max_dbs=2)
    db = env.open_db(b"sessions")
    sealer = Sealer({1: b"k" * 32}, 1)
    session = new_session(Devices(7), sender)
    with env.begin(write=True) as txn:
        txn.put(b"good", session.seal(sealer, b"good"), db=db)
        txn.put(b"bad", b"\x01garbage-garbage-garbage-garbage-garbage", db=db)
    with env.begin(db=db) as txn:
        found, bad = load_many(txn, db, sealer, [b"good", b"bad", b"missing"])
    assert list(found) == [b"good"] and bad == [b"bad"]
    env.close()


def test_key_and_bundle_frames_round_trip():
    frames = [PublishKeys(SENDER, b"bundle", [(1, b"\x05" + bytes(32))], True), PrekeyCount(SENDER, 3),
              BundleRequest(9, [BOB]), BundleReply(9, [(BOB, b"b")], ["+14155550199"])]
    assert FrameDecoder().feed(encode_frames(frames)) == frames


def test_frame_decoder_can_keep_the_exact_bytes_of_each_frame():
    data = encode_frames([BundleRequest(1, [BOB]), PrekeyCount(SENDER, 1)])
    decoder = FrameDecoder(keep_raw=True)
    assert len(decoder.feed(data[:-3])) == 1 and decoder.raw == [encode_frames([BundleRequest(1, [BOB])])]
    assert len(decoder.feed(data[-3:])) == 1 and b"".join(decoder.raw) == encode_frames([PrekeyCount(SENDER, 1)])


async def test_bundle_requests_gather_replies_until_every_number_is_answered():
    requests = BundleRequests()
    req_id, frame = requests.request([BOB, "+14155550199"])
    assert frame.numbers == [BOB, "+14155550199"]
    requests.on_reply(BundleReply(req_id, [(BOB, b"b")]))
    requests.on_reply(BundleReply(req_id + 1, [], ["+14155550199"]))  # another request: ignored
    with pytest.raises(BundleTimeout):
        await requests.wait(req_id, 0.01)
    req_id, _ = requests.request([BOB, "+14155550199"])
    requests.on_reply(BundleReply(req_id, [(BOB, b"b")]))
    requests.on_reply(BundleReply(req_id, [], ["+14155550199"]))
    assert await requests.wait(req_id, 1) == ({BOB: b"b"}, {"+14155550199"})
    req_id, _ = requests.request([BOB])
    requests.fail_all()
    with pytest.raises(BundleTimeout):
        await requests.wait(req_id, 1)
