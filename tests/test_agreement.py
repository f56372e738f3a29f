"""X3DH / PQXDH agreement: Ed25519 identities used for DH through their X25519 twins, signed prekeys,
the wire bundle and header, one-time prekeys used once, and seeded derivation for simulated parties."""
import os

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519

from gateway.crypto.agreement import (
    PQXDH_INFO,
    EphemeralKeyPool,
    X3DH_INFO,
    InitialHeader,
    PqRequired,
    PrekeyStore,
    SignatureCache,
    UnknownPrekey,
    initiate,
    kdf,
    respond,
)
from gateway.crypto.identity import (
    BadSignature,
    IdentityKeyPair,
    InvalidKey,
    MalformedMessage,
    PrekeyBundle,
    derive_identity,
    derive_one_time_prekey,
    derive_pq_prekey,
    derive_signed_prekey,
    ed25519_public_to_x25519,
    ed25519_seed_to_x25519,
    encode_ec,
    make_bundle,
    make_one_time_prekey,
    make_pq_prekey,
    make_signed_prekey,
)

SEED = bytes(range(32))
GATEWAY_NUMBER = "+15550100001"
CUSTOMER_NUMBER = "+15550199999"


def _party(seed: bytes, number: str, opk_ids=(1, 2, 3)) -> PrekeyStore:
    store = PrekeyStore(derive_identity(seed, number))
    store.add_signed_prekey(derive_signed_prekey(seed, number, 1))
    store.add_pq_prekey(derive_pq_prekey(seed, number, 1))
    for i in opk_ids:
        store.add_one_time_prekey(derive_one_time_prekey(seed, number, i))
    return store


@pytest.fixture
def gateway() -> PrekeyStore:
    return _party(SEED, GATEWAY_NUMBER)


@pytest.fixture
def customer() -> PrekeyStore:
    return _party(SEED, CUSTOMER_NUMBER)


def _bundle(store: PrekeyStore, opk: bool, pq: bool) -> PrekeyBundle:
    return store.bundle(store.unused_one_time_prekey_ids[0] if opk else None, include_pq=pq)


def _forge(signature: bytes) -> bytes:
    return bytes([signature[0] ^ 1]) + signature[1:]


# --- Ed25519 -> X25519 ---

def test_converted_keys_agree_on_a_diffie_hellman_secret():
    for _ in range(20):
        a, b = IdentityKeyPair.generate(), IdentityKeyPair.generate()
        a_dh = X25519PrivateKey.from_private_bytes(ed25519_seed_to_x25519(a.seed))
        b_dh = X25519PrivateKey.from_private_bytes(ed25519_seed_to_x25519(b.seed))
        ab = a_dh.exchange(X25519PublicKey.from_public_bytes(ed25519_public_to_x25519(b.public.ed25519)))
        ba = b_dh.exchange(X25519PublicKey.from_public_bytes(ed25519_public_to_x25519(a.public.ed25519)))
        assert ab == ba


def test_converted_private_key_has_the_converted_public_key():
    for _ in range(20):
        k = IdentityKeyPair.generate()
        private = X25519PrivateKey.from_private_bytes(ed25519_seed_to_x25519(k.seed))
        assert private.public_key().public_bytes_raw() == ed25519_public_to_x25519(k.public.ed25519)


def test_conversion_matches_the_libsodium_ed25519_convert_vector():
    seed = bytes.fromhex("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
    k = IdentityKeyPair(seed)
    assert k.public.ed25519.hex() == "b5076a8474a832daee4dd5b4040983b6623b5f344aca57d4d6ee4baf3f259e6e"
    assert k.public.x25519.hex() == "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"
    assert ed25519_seed_to_x25519(seed).hex() == "8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166"


@pytest.mark.parametrize("encoded", [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
])
def test_small_order_ed25519_keys_are_rejected(encoded):
    with pytest.raises(InvalidKey, match="small order|identity"):
        ed25519_public_to_x25519(bytes.fromhex(encoded))


@pytest.mark.parametrize("encoded", [
    (2**255 - 19).to_bytes(32, "little").hex(),  # y = p
    (2**255 - 18).to_bytes(32, "little").hex(),  # y = p + 1
    "0100000000000000000000000000000000000000000000000000000000000080",  # x = 0 with the sign bit
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # x = 0 with the sign bit
])
def test_non_canonical_ed25519_keys_are_rejected(encoded):
    with pytest.raises(InvalidKey, match="non-canonical"):
        ed25519_public_to_x25519(bytes.fromhex(encoded))


def test_ed25519_keys_off_the_curve_are_rejected():
    with pytest.raises(InvalidKey, match="not a point"):
        ed25519_public_to_x25519((2).to_bytes(32, "little"))


def test_identity_key_of_the_wrong_length_is_rejected():
    with pytest.raises(InvalidKey):
        ed25519_public_to_x25519(b"\x09" * 31)


def test_conversion_agrees_with_libsodium_for_generated_keys():
    for _ in range(50):
        k = IdentityKeyPair.generate()
        assert ed25519_public_to_x25519(k.public.ed25519) == crypto_sign_ed25519_pk_to_curve25519(k.public.ed25519)


def test_a_y_is_refused_as_off_the_curve_exactly_when_euler_criterion_finds_no_x():
    p = 2**255 - 19
    d = -121665 * pow(121666, -1, p) % p
    for y in range(2, 300):
        has_x = pow((y * y - 1) * (d * y * y + 1) % p, (p - 1) // 2, p) == 1
        encoded = y.to_bytes(32, "little")
        if has_x:
            assert len(ed25519_public_to_x25519(encoded)) == 32
        else:
            with pytest.raises(InvalidKey, match="not a point"):
                ed25519_public_to_x25519(encoded)


# --- Encodings ---

def test_identity_is_encoded_as_type_5_and_its_x25519_twin():
    k = derive_identity(SEED, GATEWAY_NUMBER)
    assert k.public.encoded == b"\x05" + ed25519_public_to_x25519(k.public.ed25519)
    assert len(k.public.encoded) == 33


def test_signed_prekey_signature_covers_its_type_5_encoding():
    k = derive_identity(SEED, GATEWAY_NUMBER)
    spk = make_signed_prekey(k, 7)
    assert spk.encoded == b"\x05" + spk.public
    k.public.verify(spk.signature, spk.encoded)


def test_pq_prekey_is_encoded_as_type_0x0a_and_signed_over_that_encoding():
    k = derive_identity(SEED, GATEWAY_NUMBER)
    pq = make_pq_prekey(k, 7)
    assert pq.encoded[0] == 0x0A and pq.encoded[1:] == pq.public and len(pq.encoded) == 1569
    k.public.verify(pq.signature, pq.encoded)


# --- Signature verification ---

ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def test_a_signature_with_s_plus_the_group_order_is_refused():
    # S + L satisfies the verification equation too; RFC 8032 requires S < L, so it must not verify.
    k = derive_identity(SEED, GATEWAY_NUMBER)
    spk = make_signed_prekey(k, 7)
    s = int.from_bytes(spk.signature[32:], "little") + ED25519_ORDER
    assert s < 2**256
    with pytest.raises(BadSignature):
        k.public.verify(spk.signature[:32] + s.to_bytes(32, "little"), spk.encoded)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_a_signature_of_the_wrong_length_is_refused(length):
    k = derive_identity(SEED, GATEWAY_NUMBER)
    spk = make_signed_prekey(k, 7)
    with pytest.raises(BadSignature):
        k.public.verify((spk.signature * 2)[:length], spk.encoded)


def test_a_signature_does_not_verify_another_message():
    k = derive_identity(SEED, GATEWAY_NUMBER)
    spk, other = make_signed_prekey(k, 7), make_signed_prekey(k, 8)
    with pytest.raises(BadSignature):
        k.public.verify(spk.signature, other.encoded)


# --- Wire structs ---

def test_full_bundle_round_trips_through_msgpack(gateway):
    bundle = _bundle(gateway, opk=True, pq=True)
    assert PrekeyBundle.decode(bundle.encode()) == bundle


def test_minimal_bundle_round_trips_through_msgpack(gateway):
    bundle = _bundle(gateway, opk=False, pq=False)
    decoded = PrekeyBundle.decode(bundle.encode())
    assert decoded == bundle and decoded.one_time_prekey is None and not decoded.has_pq_prekey


def test_initial_header_round_trips_through_msgpack(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=True, pq=True)).header
    assert InitialHeader.decode(header.encode()) == header and header.is_pq


def test_bundle_with_a_truncated_key_does_not_decode(gateway):
    raw = msgspec.msgpack.decode(_bundle(gateway, opk=False, pq=False).encode())
    position = PrekeyBundle.__struct_fields__.index("signed_prekey")
    raw[position] = raw[position][:-1]
    with pytest.raises(MalformedMessage):
        PrekeyBundle.decode(msgspec.msgpack.encode(raw))


def test_bundle_with_a_pq_prekey_but_no_signature_does_not_decode(gateway):
    raw = msgspec.msgpack.decode(_bundle(gateway, opk=False, pq=True).encode())
    raw[PrekeyBundle.__struct_fields__.index("pq_prekey_signature")] = None
    with pytest.raises(MalformedMessage):
        PrekeyBundle.decode(msgspec.msgpack.encode(raw))


# --- Agreement ---

@pytest.mark.parametrize("pq", [False, True], ids=["x3dh", "pqxdh"])
@pytest.mark.parametrize("opk", [False, True], ids=["no-opk", "opk"])
@pytest.mark.parametrize("direction", ["customer-to-gateway", "gateway-to-customer"])
def test_both_sides_derive_the_same_key_and_ad(gateway, customer, direction, opk, pq):
    alice, bob = (customer, gateway) if direction == "customer-to-gateway" else (gateway, customer)
    sent = initiate(alice.identity, PrekeyBundle.decode(_bundle(bob, opk, pq).encode()))
    received = bob.respond(InitialHeader.decode(sent.header.encode()))
    assert received.shared_key == sent.session.shared_key and len(received.shared_key) == 32
    assert received.associated_data == sent.session.associated_data
    assert received.pq == sent.session.pq == pq
    assert received.remote_identity == alice.identity.public
    assert sent.session.remote_identity == bob.identity.public


def test_x3dh_key_is_hkdf_of_ff_prefix_and_dh1_to_dh4_in_spec_order(gateway, customer):
    ek = X25519PrivateKey.generate()
    bundle = _bundle(gateway, opk=True, pq=False)
    sent = initiate(customer.identity, bundle, ephemeral=ek)
    spk, opk = bundle.signed_prekey[1:], bundle.one_time_prekey[1:]
    ik_a = X25519PrivateKey.from_private_bytes(customer.identity.x25519_private)
    dh = [
        ik_a.exchange(X25519PublicKey.from_public_bytes(spk)),
        ek.exchange(X25519PublicKey.from_public_bytes(gateway.identity.public.x25519)),
        ek.exchange(X25519PublicKey.from_public_bytes(spk)),
        ek.exchange(X25519PublicKey.from_public_bytes(opk)),
    ]
    assert sent.session.shared_key == kdf(b"".join(dh), X3DH_INFO)
    assert kdf(b"k", X3DH_INFO) != kdf(b"k", PQXDH_INFO)


def test_pqxdh_key_appends_the_kem_secret_after_the_dh_outputs(gateway, customer):
    ek = X25519PrivateKey.generate()
    bundle = _bundle(gateway, opk=False, pq=True)
    sent = initiate(customer.identity, bundle, ephemeral=ek)
    spk = bundle.signed_prekey[1:]
    ik_a = X25519PrivateKey.from_private_bytes(customer.identity.x25519_private)
    ss = gateway.pq_prekey(bundle.pq_prekey_id).decapsulate(sent.header.pq_ciphertext)
    km = (ik_a.exchange(X25519PublicKey.from_public_bytes(spk))
          + ek.exchange(X25519PublicKey.from_public_bytes(gateway.identity.public.x25519))
          + ek.exchange(X25519PublicKey.from_public_bytes(spk)) + ss)
    assert sent.session.shared_key == kdf(km, PQXDH_INFO)


def test_pqxdh_is_used_whenever_the_bundle_has_a_pq_prekey(gateway, customer):
    sent = initiate(customer.identity, _bundle(gateway, opk=False, pq=True))
    assert sent.session.pq and sent.header.pq_prekey_id == 1 and len(sent.header.pq_ciphertext) == 1569
    plain = initiate(customer.identity, _bundle(gateway, opk=False, pq=False))
    assert not plain.session.pq and plain.header.pq_ciphertext is None


def test_associated_data_is_initiator_encoding_then_responder_encoding(gateway, customer):
    sent = initiate(customer.identity, _bundle(gateway, opk=False, pq=True))
    ad = sent.session.associated_data
    assert ad == customer.identity.public.encoded + gateway.identity.public.encoded
    assert len(ad) == 66 and ad[0] == ad[33] == 0x05


def test_header_names_the_prekeys_used_and_the_ephemeral_key(gateway, customer):
    ek = X25519PrivateKey.generate()
    bundle = _bundle(gateway, opk=True, pq=True)
    header = initiate(customer.identity, bundle, ephemeral=ek).header
    assert header.identity_key == customer.identity.public.ed25519
    assert header.ephemeral_key == encode_ec(ek.public_key().public_bytes_raw())
    assert (header.signed_prekey_id, header.one_time_prekey_id, header.pq_prekey_id) == (1, 1, 1)


def test_bad_signed_prekey_signature_is_rejected(gateway, customer):
    bundle = _bundle(gateway, opk=True, pq=True)
    forged = PrekeyBundle(**{**_fields(bundle), "signed_prekey_signature": _forge(bundle.signed_prekey_signature)})
    with pytest.raises(BadSignature):
        initiate(customer.identity, forged)


def test_bad_pq_prekey_signature_is_rejected(gateway, customer):
    bundle = _bundle(gateway, opk=True, pq=True)
    forged = PrekeyBundle(**{**_fields(bundle), "pq_prekey_signature": _forge(bundle.pq_prekey_signature)})
    with pytest.raises(BadSignature):
        initiate(customer.identity, forged)


def test_prekeys_signed_by_another_identity_are_rejected(gateway, customer):
    bundle = _bundle(gateway, opk=False, pq=True)
    impostor = PrekeyBundle(**{**_fields(bundle), "identity_key": customer.identity.public.ed25519})
    with pytest.raises(BadSignature):
        initiate(customer.identity, impostor)


def test_a_one_time_prekey_is_never_reused(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=True, pq=True)).header
    gateway.respond(header)
    assert gateway.is_used(header.one_time_prekey_id)
    with pytest.raises(UnknownPrekey, match="one-time"):
        gateway.respond(header)
    with pytest.raises(UnknownPrekey):
        gateway.bundle(header.one_time_prekey_id)


def test_a_used_one_time_prekey_id_cannot_be_issued_again(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=True, pq=False)).header
    gateway.respond(header)
    with pytest.raises(ValueError, match="already issued"):
        gateway.add_one_time_prekey(make_one_time_prekey(header.one_time_prekey_id))


def test_a_failed_response_leaves_the_one_time_prekey_unused(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=True, pq=False)).header
    unknown_spk = InitialHeader(**{**_fields(header), "signed_prekey_id": 99})
    with pytest.raises(UnknownPrekey, match="signed prekey 99"):
        gateway.respond(unknown_spk)
    assert not gateway.is_used(header.one_time_prekey_id)
    gateway.respond(header)


def test_unknown_pq_prekey_id_is_rejected(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=False, pq=True)).header
    with pytest.raises(UnknownPrekey, match="PQ prekey 42"):
        gateway.respond(InitialHeader(**{**_fields(header), "pq_prekey_id": 42}))


def test_a_responder_requiring_pq_refuses_an_x3dh_header(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=False, pq=False)).header
    with pytest.raises(PqRequired):
        gateway.respond(header, require_pq=True)


def test_stripping_the_kem_ciphertext_yields_a_different_key(gateway, customer):
    sent = initiate(customer.identity, _bundle(gateway, opk=False, pq=True))
    stripped = InitialHeader(**{**_fields(sent.header), "pq_prekey_id": None, "pq_ciphertext": None})
    assert gateway.respond(stripped).shared_key != sent.session.shared_key


def test_a_small_order_ephemeral_key_is_rejected_by_the_responder(gateway, customer):
    header = initiate(customer.identity, _bundle(gateway, opk=True, pq=False)).header
    bad = InitialHeader(**{**_fields(header), "ephemeral_key": b"\x05" + bytes(32)})
    with pytest.raises(InvalidKey):
        gateway.respond(bad)
    assert not gateway.is_used(header.one_time_prekey_id)


def test_responder_lookups_may_be_dicts_or_functions(gateway, customer):
    spk = derive_signed_prekey(SEED, GATEWAY_NUMBER, 1)
    opk = derive_one_time_prekey(SEED, GATEWAY_NUMBER, 1)
    pq = derive_pq_prekey(SEED, GATEWAY_NUMBER, 1)
    sent = initiate(customer.identity, make_bundle(gateway.identity, spk, opk, pq))
    session = respond(
        gateway.identity, sent.header,
        signed_prekeys={1: spk}, one_time_prekeys={1: opk}.get, pq_prekeys=lambda i: pq if i == 1 else None,
    )
    assert session.shared_key == sent.session.shared_key


def test_signature_cache_checks_a_bundle_once_and_still_rejects_forgeries(gateway, customer):
    cache = SignatureCache(capacity=8)
    bundle = _bundle(gateway, opk=False, pq=True)
    initiate(customer.identity, bundle, signatures=cache)
    initiate(customer.identity, bundle, signatures=cache)
    assert len(cache) == 2
    forged = PrekeyBundle(**{**_fields(bundle), "pq_prekey_signature": _forge(bundle.pq_prekey_signature)})
    with pytest.raises(BadSignature):
        initiate(customer.identity, forged, signatures=cache)


# --- Ephemeral keys made ahead ---

def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def test_an_ephemeral_key_pool_hands_out_each_key_once():
    pool = EphemeralKeyPool(5)
    assert pool.refill() == 5 and len(pool) == 5
    taken = {_public(pool.take()) for _ in range(5)}
    assert len(taken) == 5 and len(pool) == 0
    assert _public(pool.take()) not in taken  # empty: a fresh key made on the spot
    assert len(pool) == 0


def test_an_ephemeral_key_pool_refills_up_to_its_capacity_and_the_limit():
    pool = EphemeralKeyPool(4)
    assert pool.refill(limit=3) == 3
    assert pool.refill() == 1
    assert pool.refill() == 0 and len(pool) == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_takes_the_keys_its_parent_made():
    pool = EphemeralKeyPool(3)
    pool.refill()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what it holds and takes, then leave without running pytest's teardown
        try:
            held = len(pool)
            os.write(write, bytes([held]) + b"".join(_public(pool.take()) for _ in range(3)))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    assert len(out) == 97 and out[0] == 0
    assert len(pool) == 3
    parents = {_public(pool.take()) for _ in range(3)}
    assert len(pool) == 0
    assert not {out[i:i + 32] for i in range(1, 97, 32)} & parents


def test_an_ephemeral_key_pool_needs_a_positive_capacity():
    with pytest.raises(ValueError):
        EphemeralKeyPool(0)


# --- Deterministic derivation ---

def test_derivation_gives_the_same_keys_for_the_same_seed_and_number():
    n = CUSTOMER_NUMBER
    assert derive_identity(SEED, n).seed == derive_identity(SEED, n).seed
    assert derive_signed_prekey(SEED, n, 3).public == derive_signed_prekey(SEED, n, 3).public
    assert derive_one_time_prekey(SEED, n, 3).public == derive_one_time_prekey(SEED, n, 3).public
    assert derive_pq_prekey(SEED, n, 3).public == derive_pq_prekey(SEED, n, 3).public


def test_derivation_differs_by_number_seed_and_prekey_id():
    n = CUSTOMER_NUMBER
    base = derive_identity(SEED, n).seed
    assert derive_identity(SEED, GATEWAY_NUMBER).seed != base
    assert derive_identity(b"another seed", n).seed != base
    assert derive_one_time_prekey(SEED, n, 1).public != derive_one_time_prekey(SEED, n, 2).public


def test_derived_prekeys_are_signed_by_the_derived_identity():
    identity = derive_identity(SEED, CUSTOMER_NUMBER).public
    spk = derive_signed_prekey(SEED, CUSTOMER_NUMBER, 1)
    pq = derive_pq_prekey(SEED, CUSTOMER_NUMBER, 1)
    identity.verify(spk.signature, spk.encoded)
    identity.verify(pq.signature, pq.encoded)


def _fields(struct) -> dict:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}
