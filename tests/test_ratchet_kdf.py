"""The ratchet's HMAC-SHA256 key derivations: the native (SHA-NI) functions and their pure twin give
the standard HMAC-SHA256 and HKDF-SHA256 bytes, libsignal's vector, and refuse keys that are not
32 bytes."""
import hmac
import os
import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.crypto import ratchet_kdf
from tests.twins import IMPLEMENTATIONS, load_accelerator


@pytest.fixture(params=IMPLEMENTATIONS)
def kdf(request):
    return load_accelerator(ratchet_kdf, request.param, "SHANI")


def test_hmac_is_hmac_sha256_across_block_boundaries(kdf):
    rng = random.Random(5)
    for n in list(range(0, 200)) + [rng.randrange(200, 5000) for _ in range(50)]:
        key, msg = rng.randbytes(32), rng.randbytes(n)
        assert kdf.hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256"), n


def test_chain_kdf_is_hmac_with_constants_2_and_1(kdf):
    rng = random.Random(6)
    for _ in range(200):
        ck = rng.randbytes(32)
        assert kdf.kdf_ck(ck) == (hmac.digest(ck, b"\x02", "sha256"), hmac.digest(ck, b"\x01", "sha256"))


def test_message_keys_are_hkdf_with_zero_salt(kdf):
    rng = random.Random(7)
    for _ in range(200):
        mk = rng.randbytes(32)
        okm = HKDF(hashes.SHA256(), 80, bytes(32), b"WhisperMessageKeys").derive(mk)
        assert kdf.message_keys(mk) == (okm[:32], okm[32:64], okm[64:])


def test_libsignal_chain_key_vector(kdf):
    # libsignal rust/protocol/src/ratchet/keys.rs, test_chain_key_derivation
    next_ck, mk = kdf.kdf_ck(bytes.fromhex("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f"))
    cipher_key, mac_key, _ = kdf.message_keys(mk)
    assert next_ck.hex() == "28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d"
    assert cipher_key.hex() == "bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217"
    assert mac_key.hex() == "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b"


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_keys_other_than_32_bytes_are_refused(kdf, size):
    key = bytes(size)
    for call in (lambda: kdf.hmac_sha256(key, b"m"), lambda: kdf.kdf_ck(key), lambda: kdf.message_keys(key)):
        with pytest.raises(ValueError):
            call()


def test_the_gateway_uses_the_native_ones_where_built_and_the_cpu_has_sha_ni():
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        assert ratchet_kdf.IMPLEMENTATION == "pure"
        return
    from gateway._native import ratchet_kdf as native

    assert ratchet_kdf.IMPLEMENTATION == ("native" if native.SHANI else "pure")
