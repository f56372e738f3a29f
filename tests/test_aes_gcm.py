"""AES-256-GCM for sealing at rest: the native one (AES-NI and PCLMULQDQ) and its twin (cryptography's
AESGCM) give the same bytes on the GCM paper's vectors and on random inputs, open what the other
sealed, and refuse every tampered byte, a wrong key, a wrong nonce and other associated data."""
import os
import random

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as Reference

from gateway.crypto import aes_gcm
from gateway.crypto.seal import Sealer
from tests.twins import IMPLEMENTATIONS, load_accelerator

# The GCM specification's AES-256 test cases 13-16 (McGrew and Viega, "The Galois/Counter Mode of
# Operation", appendix B): key, nonce, plaintext, associated data, ciphertext, tag.
_K = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
_P = ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
_C = ("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad")
VECTORS = [
    ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"),
    (_K, "cafebabefacedbaddecaf888", _P, "", _C, "b094dac5d93471bdec1a502270e3cc6c"),
    (_K, "cafebabefacedbaddecaf888", _P[:120], "feedfacedeadbeeffeedfacedeadbeefabaddad2", _C[:120],
     "76fc6ece0f4e1768cddf8853bb2d551b"),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def cls(request):
    return load_accelerator(aes_gcm, request.param, "AVAILABLE")


@pytest.mark.parametrize("key, nonce, plain, aad, cipher, tag", VECTORS, ids=["13", "14", "15", "16"])
def test_the_gcm_papers_vectors(cls, key, nonce, plain, aad, cipher, tag):
    k, n, p, a = (bytes.fromhex(x) for x in (key, nonce, plain, aad))
    sealed = cls(k).encrypt(n, p, a)
    assert sealed.hex() == cipher + tag
    assert cls(k).decrypt(n, sealed, a) == p


def test_same_bytes_as_cryptography_on_random_inputs_and_either_opens_the_other(cls):
    rng = random.Random(7)
    for _ in range(3000):
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        n = rng.choice([0, 1, 15, 16, 17, 31, 32, 33, 64, rng.randrange(300), rng.randrange(5000)])
        data, aad = rng.randbytes(n), rng.randbytes(rng.choice([0, 1, 16, 26, rng.randrange(100)]))
        sealed = Reference(key).encrypt(nonce, data, aad)
        assert cls(key).encrypt(nonce, data, aad) == sealed
        assert cls(key).decrypt(nonce, sealed, aad) == data


def test_every_tampered_byte_and_every_wrong_input_is_refused(cls):
    key, nonce, aad, data = os.urandom(32), os.urandom(12), b"01J000MESSAGEID", os.urandom(45)
    sealer = cls(key)
    sealed = sealer.encrypt(nonce, data, aad)
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= bit
            with pytest.raises(InvalidTag):
                sealer.decrypt(nonce, bytes(tampered), aad)
    for wrong in ((cls(os.urandom(32)), nonce, sealed, aad), (sealer, os.urandom(12), sealed, aad),
                  (sealer, nonce, sealed, aad + b"x"), (sealer, nonce, sealed, None),
                  (sealer, nonce, sealed[:-1], aad), (sealer, nonce, sealed[:15], aad), (sealer, nonce, b"", aad)):
        with pytest.raises(InvalidTag):
            wrong[0].decrypt(*wrong[1:])


def test_takes_other_bytes_like_inputs_and_none_for_no_associated_data(cls):
    key, nonce, data = os.urandom(32), os.urandom(12), b"hello there"
    expected = Reference(key).encrypt(nonce, data, None)
    assert cls(key).encrypt(memoryview(nonce), bytearray(data), None) == expected
    assert cls(key).decrypt(nonce, memoryview(expected), b"") == data


def test_the_native_one_refuses_other_key_and_nonce_sizes():
    native = load_accelerator(aes_gcm, "native", "AVAILABLE")
    with pytest.raises(ValueError):
        native(os.urandom(16))
    with pytest.raises(ValueError):
        native(os.urandom(32)).encrypt(os.urandom(16), b"x", b"")
    with pytest.raises(ValueError):
        native(os.urandom(32)).decrypt(os.urandom(8), bytes(32), b"")


def test_records_sealed_by_one_open_with_the_other():
    """A data directory written with the native class is read by the twin and the other way round."""
    native = load_accelerator(aes_gcm, "native", "AVAILABLE")
    keys = {1: os.urandom(32)}
    by_native, by_twin = Sealer(keys, 1, aead=native), Sealer(keys, 1, aead=Reference)
    blob = by_native.seal(b"a customer's text", b"msg-1")
    assert by_twin.open(blob, b"msg-1") == b"a customer's text"
    assert by_native.open(by_twin.seal(b"and back", b"msg-2"), b"msg-2") == b"and back"


def test_the_gateway_uses_the_native_one_where_it_is_built_and_the_cpu_allows():
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        assert aes_gcm.IMPLEMENTATION == "pure"
        return
    from gateway._native import aes_gcm as native

    assert aes_gcm.IMPLEMENTATION == ("native" if native.AVAILABLE else "pure")
