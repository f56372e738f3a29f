"""Specification of the Double Ratchet session (gateway.crypto.ratchet), after Signal's spec revision 4.

Keys come from fixed seeds so every run is the same; time is a plain float passed as `now`.
"""
import hashlib
import hmac
import os
import random
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.padding import PKCS7

from gateway.crypto.ratchet import (
    MAX_SKIP,
    BadHeader,
    BadTag,
    RatchetError,
    Replay,
    Session,
    TooManySkipped,
    kdf_rk,
)

AD = b"alice-identity|bob-identity"
SK = bytes(range(32))


def _key(seed: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(hashlib.sha256(b"key%d" % seed).digest())


def pair(**limits) -> tuple[Session, Session]:
    bob_key = _key(1)
    alice = Session.init_alice(SK, bob_key.public_key().public_bytes_raw(), rng_private=_key(2), **limits)
    bob = Session.init_bob(SK, bob_key, **limits)
    return alice, bob


def talking_pair(**limits) -> tuple[Session, Session]:
    """Alice and Bob after one message each way: both have sending and receiving chains."""
    alice, bob = pair(**limits)
    bob.decrypt(alice.encrypt(b"hello", AD), AD)
    alice.decrypt(bob.encrypt(b"hi", AD), AD)
    return alice, bob


def _hkdf(salt: bytes | None, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


# --- KDFs and the message format ---------------------------------------------------------------


def test_root_kdf_is_hkdf_salted_with_root_key_info_whisper_ratchet():
    rk, dh_out = bytes(range(32)), bytes(range(32, 64))
    okm = _hkdf(rk, dh_out, b"WhisperRatchet", 64)
    assert kdf_rk(rk, dh_out) == (okm[:32], okm[32:])


def test_first_message_decrypts_with_independent_primitives():
    # Re-derive Alice's first message key with cryptography's HKDF and open the wire format by hand:
    # header = DHs public (32) || PN u32 BE || N u32 BE; then AES-256-CBC/PKCS#7; then a 32-byte
    # HMAC-SHA256 over AD || header || ciphertext.
    bob_key, alice_key = _key(1), _key(2)
    alice = Session.init_alice(SK, bob_key.public_key().public_bytes_raw(), rng_private=alice_key)
    plaintext = b"x" * 100
    wire = alice.encrypt(plaintext, AD)

    okm = _hkdf(SK, alice_key.exchange(bob_key.public_key()), b"WhisperRatchet", 64)
    cks = okm[32:]
    mk = hmac.digest(cks, b"\x01", "sha256")
    keys = _hkdf(bytes(32), mk, b"WhisperMessageKeys", 80)
    header, ciphertext, tag = wire[:40], wire[40:-32], wire[-32:]
    assert header == alice_key.public_key().public_bytes_raw() + struct.pack(">II", 0, 0)
    assert len(ciphertext) == 112
    assert tag == hmac.digest(keys[32:64], AD + header + ciphertext, "sha256")
    dec = Cipher(algorithms.AES(keys[:32]), modes.CBC(keys[64:])).decryptor()
    unpadder = PKCS7(128).unpadder()
    assert unpadder.update(dec.update(ciphertext) + dec.finalize()) + unpadder.finalize() == plaintext


def test_header_counts_messages_and_previous_chain_length():
    alice, bob = pair()
    for _ in range(3):
        bob.decrypt(alice.encrypt(b"a", AD), AD)
    reply = bob.encrypt(b"b", AD)
    alice.decrypt(reply, AD)
    second = alice.encrypt(b"c", AD)
    assert struct.unpack(">II", second[32:40]) == (3, 0)  # PN = 3 sent on Alice's previous chain
    assert struct.unpack(">II", alice.encrypt(b"d", AD)[32:40]) == (3, 1)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 4096])
def test_plaintexts_of_any_length_round_trip(size):
    alice, bob = pair()
    plaintext = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    wire = alice.encrypt(plaintext, AD)
    assert len(wire) == 40 + (size // 16 + 1) * 16 + 32
    assert bob.decrypt(wire, AD) == plaintext


# --- conversations ----------------------------------------------------------------------------


def test_in_order_messages_both_ways():
    alice, bob = pair()
    for i in range(5):
        assert bob.decrypt(alice.encrypt(b"a%d" % i, AD), AD) == b"a%d" % i
    for i in range(5):
        assert alice.decrypt(bob.encrypt(b"b%d" % i, AD), AD) == b"b%d" % i
    for i in range(5):
        assert bob.decrypt(alice.encrypt(b"c%d" % i, AD), AD) == b"c%d" % i


def test_bob_cannot_send_before_receiving():
    _, bob = pair()
    with pytest.raises(RatchetError):
        bob.encrypt(b"too early", AD)


def test_each_change_of_direction_steps_the_dh_ratchet():
    alice, bob = pair()
    keys = set()
    for i in range(6):
        sender, receiver = (alice, bob) if i % 2 == 0 else (bob, alice)
        wire = sender.encrypt(b"m", AD)
        keys.add(wire[:32])
        receiver.decrypt(wire, AD)
    assert len(keys) == 6


def test_out_of_order_messages_within_a_chain():
    alice, bob = talking_pair()
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(6)]
    for i in (3, 0, 5, 1, 4, 2):
        assert bob.decrypt(wires[i], AD) == b"m%d" % i


def test_out_of_order_messages_across_dh_steps():
    alice, bob = talking_pair()
    old = [alice.encrypt(b"old%d" % i, AD) for i in range(3)]
    bob.decrypt(old[1], AD)
    alice.decrypt(bob.encrypt(b"reply", AD), AD)  # Alice steps her ratchet
    new = [alice.encrypt(b"new%d" % i, AD) for i in range(2)]
    assert bob.decrypt(new[1], AD) == b"new1"  # skips old[2] (via PN) and new[0]
    assert bob.decrypt(old[2], AD) == b"old2"
    assert bob.decrypt(new[0], AD) == b"new0"
    assert bob.decrypt(old[0], AD) == b"old0"


def test_lost_messages_do_not_stop_the_conversation():
    alice, bob = talking_pair()
    for i in range(10):
        wire = alice.encrypt(b"m%d" % i, AD)
        if i % 3 == 0:
            assert bob.decrypt(wire, AD) == b"m%d" % i
    assert alice.decrypt(bob.encrypt(b"ok", AD), AD) == b"ok"
    alice.encrypt(b"lost", AD)
    assert bob.decrypt(alice.encrypt(b"after", AD), AD) == b"after"
    assert bob.skipped_count == 7


def test_long_ping_pong_with_random_direction_changes():
    rng = random.Random(2024)
    alice, bob = pair()
    sender, receiver = alice, bob
    for round_ in range(200):
        if round_ and rng.random() < 0.5:
            sender, receiver = receiver, sender
        burst = [b"%d/%d" % (round_, k) + rng.randbytes(rng.randrange(0, 64)) for k in range(rng.randrange(1, 4))]
        wires = [sender.encrypt(p, AD) for p in burst]
        order = list(range(len(wires)))
        rng.shuffle(order)
        for k in order:
            assert receiver.decrypt(wires[k], AD) == burst[k]
    assert alice.skipped_count == 0 and bob.skipped_count == 0


def test_messages_from_another_session_are_rejected():
    alice, bob = talking_pair()
    other_alice, _ = talking_pair()
    with pytest.raises(RatchetError):
        bob.decrypt(other_alice.encrypt(b"x", AD), AD)


def test_wrong_associated_data_is_rejected_and_changes_nothing():
    alice, bob = talking_pair()
    wire = alice.encrypt(b"m", AD)
    before = bob.to_bytes()
    with pytest.raises(BadTag):
        bob.decrypt(wire, AD + b"!")
    assert bob.to_bytes() == before
    assert bob.decrypt(wire, AD) == b"m"


# --- rejection leaves the state unchanged -------------------------------------------------------


@pytest.mark.parametrize("new_chain", [False, True], ids=["current-chain", "new-chain"])
def test_any_flipped_bit_is_rejected_and_changes_nothing(new_chain):
    alice, bob = talking_pair()
    if new_chain:
        bob.decrypt(alice.encrypt(b"step", AD), AD)
        alice.decrypt(bob.encrypt(b"step", AD), AD)
    else:
        bob.decrypt(alice.encrypt(b"same chain", AD), AD)
    wire = alice.encrypt(b"p" * 20, AD)
    before = bob.to_bytes()
    for bit in range(len(wire) * 8):
        tampered = bytearray(wire)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RatchetError):
            bob.decrypt(bytes(tampered), AD)
        assert bob.to_bytes() == before, f"bit {bit} changed the state"
    assert bob.decrypt(wire, AD) == b"p" * 20


def test_too_many_skipped_in_one_chain_is_rejected_and_changes_nothing():
    alice, bob = talking_pair()
    bob.decrypt(alice.encrypt(b"first", AD), AD)  # Bob receives on Alice's current chain, Nr = 1
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(MAX_SKIP + 2)]
    before = bob.to_bytes()
    with pytest.raises(TooManySkipped):
        bob.decrypt(wires[MAX_SKIP + 1], AD)  # would skip MAX_SKIP + 1 keys
    assert bob.to_bytes() == before
    assert bob.decrypt(wires[MAX_SKIP], AD) == b"m%d" % MAX_SKIP  # skipping exactly MAX_SKIP is allowed
    assert bob.skipped_count == MAX_SKIP


def test_too_many_skipped_on_the_previous_chain_is_rejected_and_changes_nothing():
    alice, bob = talking_pair()
    bob.decrypt(alice.encrypt(b"first", AD), AD)  # Bob now receives on Alice's second chain, Nr = 1
    for _ in range(MAX_SKIP + 1):
        alice.encrypt(b"lost", AD)
    alice.decrypt(bob.encrypt(b"reply", AD), AD)  # Alice steps; her next header says PN = MAX_SKIP + 2
    wire = alice.encrypt(b"new chain", AD)
    assert struct.unpack(">II", wire[32:40]) == (MAX_SKIP + 2, 0)
    before = bob.to_bytes()
    with pytest.raises(TooManySkipped):
        bob.decrypt(wire, AD)
    assert bob.to_bytes() == before


def test_too_many_skipped_at_the_start_of_a_new_chain_is_rejected_and_changes_nothing():
    alice, bob = talking_pair()
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(MAX_SKIP + 2)]  # Alice's second chain
    before = bob.to_bytes()
    with pytest.raises(TooManySkipped):
        bob.decrypt(wires[MAX_SKIP + 1], AD)
    assert bob.to_bytes() == before
    assert bob.decrypt(wires[MAX_SKIP], AD) == b"m%d" % MAX_SKIP


def test_malformed_messages_are_bad_headers():
    alice, bob = talking_pair()
    wire = alice.encrypt(b"m", AD)
    before = bob.to_bytes()
    for bad in (b"", wire[:40], wire[:-1], wire + b"\x00", wire[:-32]):
        with pytest.raises(BadHeader):
            bob.decrypt(bad, AD)
    with pytest.raises(BadHeader):
        bob.decrypt(bytes(32) + wire[32:], AD)  # all-zero (low-order) DH public key
    assert bob.to_bytes() == before


def test_replayed_message_is_rejected_and_changes_nothing():
    alice, bob = talking_pair()
    wire = alice.encrypt(b"once", AD)
    bob.decrypt(wire, AD)
    before = bob.to_bytes()
    with pytest.raises(Replay):
        bob.decrypt(wire, AD)
    assert bob.to_bytes() == before


def test_replayed_out_of_order_message_is_rejected():
    alice, bob = talking_pair()
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(3)]
    bob.decrypt(wires[2], AD)
    bob.decrypt(wires[0], AD)  # uses, and deletes, a skipped key
    with pytest.raises(Replay):
        bob.decrypt(wires[0], AD)
    assert bob.decrypt(wires[1], AD) == b"m1"


def test_replay_from_an_earlier_chain_is_rejected_and_changes_nothing():
    alice, bob = talking_pair()
    old = alice.encrypt(b"old", AD)
    bob.decrypt(old, AD)
    alice.decrypt(bob.encrypt(b"reply", AD), AD)
    bob.decrypt(alice.encrypt(b"new", AD), AD)
    before = bob.to_bytes()
    with pytest.raises(RatchetError):
        bob.decrypt(old, AD)
    assert bob.to_bytes() == before


# --- skipped-key limits -------------------------------------------------------------------------


def test_skipped_key_expires_after_max_age():
    alice, bob = talking_pair(max_skipped_age=100.0)
    late, kept, current = (alice.encrypt(b"m%d" % i, AD) for i in range(3))
    bob.decrypt(current, AD, now=1000.0)  # skips both earlier keys, stored at t=1000
    assert bob.decrypt(kept, AD, now=1100.0) == b"m1"  # exactly max age: still usable
    with pytest.raises(Replay):
        bob.decrypt(late, AD, now=1100.5)


def test_successful_decryption_drops_expired_skipped_keys():
    alice, bob = talking_pair(max_skipped_age=100.0)
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(5)]
    bob.decrypt(wires[2], AD, now=0.0)  # skips 0 and 1 at t=0
    bob.decrypt(wires[4], AD, now=50.0)  # skips 3 at t=50
    assert bob.skipped_count == 3
    bob.decrypt(alice.encrypt(b"later", AD), AD, now=120.0)
    assert bob.skipped_count == 1
    assert bob.decrypt(wires[3], AD, now=120.0) == b"m3"


def test_failed_decryption_does_not_expire_skipped_keys():
    alice, bob = talking_pair(max_skipped_age=100.0)
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(4)]
    bob.decrypt(wires[1], AD, now=0.0)  # skips 0 at t=0
    bob.decrypt(wires[3], AD, now=90.0)  # skips 2 at t=90
    before = bob.to_bytes()
    with pytest.raises(BadTag):
        bob.decrypt(wires[2], b"wrong ad", now=150.0)  # key 2 is live, key 0 has expired
    with pytest.raises(BadTag):
        bob.decrypt(alice.encrypt(b"x", AD), b"wrong ad", now=150.0)  # the current chain
    assert bob.to_bytes() == before


def test_skipped_keys_are_capped_per_session_dropping_the_oldest():
    alice, bob = talking_pair(max_skipped_keys=5)
    wires = [alice.encrypt(b"m%d" % i, AD) for i in range(9)]
    bob.decrypt(wires[8], AD)  # skips 8 keys, keeps the newest 5 (3..7)
    assert bob.skipped_count == 5
    for i in range(3):
        with pytest.raises(Replay):
            bob.decrypt(wires[i], AD)
    for i in range(3, 8):
        assert bob.decrypt(wires[i], AD) == b"m%d" % i


# --- persistence ------------------------------------------------------------------------------


def test_state_round_trips_mid_conversation_and_continues():
    alice, bob = talking_pair()
    pending = [alice.encrypt(b"p%d" % i, AD) for i in range(4)]
    bob.decrypt(pending[3], AD, now=5.0)  # leaves three skipped keys in Bob's state
    raw_a, raw_b = alice.to_bytes(), bob.to_bytes()
    alice, bob = Session.from_bytes(raw_a), Session.from_bytes(raw_b)
    assert (alice.to_bytes(), bob.to_bytes()) == (raw_a, raw_b)
    assert [bob.decrypt(pending[i], AD, now=6.0) for i in (2, 0, 1)] == [b"p2", b"p0", b"p1"]
    for i in range(4):
        assert alice.decrypt(bob.encrypt(b"b%d" % i, AD), AD) == b"b%d" % i
        assert bob.decrypt(alice.encrypt(b"a%d" % i, AD), AD) == b"a%d" % i


def test_fresh_bob_state_round_trips_before_first_message():
    alice, bob = pair()
    bob = Session.from_bytes(bob.to_bytes())
    assert bob.decrypt(alice.encrypt(b"first", AD), AD) == b"first"
    assert alice.decrypt(bob.encrypt(b"second", AD), AD) == b"second"


def test_state_is_compact():
    alice, _ = talking_pair()
    assert len(alice.to_bytes()) <= 220  # seven 32-byte fields, three counters, msgpack framing


@pytest.mark.parametrize("raw", [b"", b"\x91\x01", b"garbage"])
def test_corrupt_state_is_a_ratchet_error(raw):
    with pytest.raises(RatchetError):
        Session.from_bytes(raw)


def test_unknown_state_version_is_a_ratchet_error():
    alice, _ = talking_pair()
    raw = bytearray(alice.to_bytes())
    assert raw[1] == 1  # array header, then the version
    raw[1] = 2
    with pytest.raises(RatchetError):
        Session.from_bytes(bytes(raw))


@pytest.mark.parametrize("body_len", [0, 15, 33])
def test_an_authentic_message_that_is_not_whole_blocks_is_refused_not_crashed(body_len):
    """A body under a valid MAC that CBC cannot decrypt (no sound peer sends one) is BadTag."""
    from gateway.crypto import ratchet

    mk, ad = os.urandom(32), b"A" * 66
    _, mac_key, _ = ratchet.message_keys(mk)
    body = os.urandom(ratchet.HEADER_LEN) + os.urandom(body_len)
    message = body + hmac.digest(mac_key, ad + body, "sha256")
    with pytest.raises(BadTag):
        ratchet._open(mk, message, ad)
