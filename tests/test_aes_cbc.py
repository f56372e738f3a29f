"""AES-256-CBC of the ratchet's messages: the native (AES-NI) encryption and decryption and their pure
twins give the same bytes as `cryptography`'s public API, on NIST's vectors and on random inputs, and
refuse what is not whole blocks under a 32-byte key."""
import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.crypto import aes_cbc
from tests.twins import IMPLEMENTATIONS, load_accelerator

# NIST SP 800-38A, F.2.5 CBC-AES256.Encrypt
KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
PLAIN = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
                      "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
CIPHER = bytes.fromhex("f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d"
                       "39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b")


def _public(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


@pytest.fixture(params=IMPLEMENTATIONS)
def encrypt(request):
    return load_accelerator(aes_cbc, request.param, "AESNI")


@pytest.fixture(params=IMPLEMENTATIONS)
def decrypt(request):
    load_accelerator(aes_cbc, request.param, "AESNI")  # skipped or failed as for encryption
    return aes_cbc.load_decrypt(request.param)


def test_nist_vector(encrypt):
    assert encrypt(KEY, IV, PLAIN) == CIPHER


def test_nist_vector_decrypts(decrypt):
    assert decrypt(KEY, IV, CIPHER) == PLAIN


def test_decrypts_what_the_public_api_encrypted_on_random_inputs(decrypt):
    rng = random.Random(12)
    for _ in range(500):
        key, iv = rng.randbytes(32), rng.randbytes(16)
        data = rng.randbytes(16 * rng.randrange(1, 70))
        assert decrypt(key, iv, _public(key, iv, data)) == data


def test_same_bytes_as_the_public_api_on_random_inputs(encrypt):
    rng = random.Random(11)
    for _ in range(500):
        key, iv = rng.randbytes(32), rng.randbytes(16)
        data = rng.randbytes(16 * rng.randrange(1, 70))
        assert encrypt(key, iv, data) == _public(key, iv, data)


def test_what_it_encrypts_decrypts_back(encrypt):
    key, iv, data = os.urandom(32), os.urandom(16), os.urandom(160)
    assert aes_cbc.decrypt(key, iv, encrypt(key, iv, data)) == data


BAD_INPUTS = pytest.mark.parametrize(
    "key, iv, data", [(KEY, IV, PLAIN[:15]), (KEY, IV, PLAIN + b"x"), (KEY, IV, b""), (KEY[:16], IV, PLAIN),
                      (KEY, IV[:8], PLAIN)],
    ids=["short block", "partial block", "empty", "AES-128 key", "short IV"])


@BAD_INPUTS
def test_refuses_partial_blocks_and_other_key_sizes(encrypt, key, iv, data):
    with pytest.raises(ValueError):
        encrypt(key, iv, data)


@BAD_INPUTS
def test_decryption_refuses_them_too(decrypt, key, iv, data):
    with pytest.raises(ValueError):
        decrypt(key, iv, data)


def test_the_gateway_uses_the_native_one_where_it_is_built_and_the_cpu_has_aes_ni():
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        assert aes_cbc.IMPLEMENTATION == "pure"
        return
    from gateway._native import aes_cbc as native

    assert aes_cbc.IMPLEMENTATION == ("native" if native.AESNI else "pure")
    assert aes_cbc.decrypt is (native.cbc_decrypt if native.AESNI else aes_cbc.decrypt_py)
