"""AES-256-CBC of whole blocks for the Double Ratchet. Encryption: the compiled gateway._native.aes_cbc
(AES-NI), or its pure twin on `cryptography`, chosen once at import; decryption: `cryptography`.

It owns only that choice and the twin; it must never pad (the caller does) and never pick the native
module on a CPU without AES-NI or where it disagrees with the twin on a self-test.
"""
from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway._native import choose

__all__ = ["IMPLEMENTATION", "NATIVE_AVAILABLE", "decrypt", "encrypt", "load"]

_AES = algorithms.AES
_CBC = modes.CBC


def _public_contexts():
    return (lambda key, iv: Cipher(_AES(key), _CBC(iv)).encryptor(),
            lambda key, iv: Cipher(_AES(key), _CBC(iv)).decryptor())


def _cbc_contexts():
    """(encryptor, decryptor) factories for AES-256-CBC. `Cipher(...).encryptor()` spends ~3 µs
    per message on isinstance checks against abstract classes before it reaches the Rust context
    constructor; with a fresh key for every message that is a sixth of a ratchet step. The
    constructor is taken directly when this `cryptography` build has it and it agrees with the
    public API on a self-test; otherwise the public API is used."""
    public = _public_contexts()
    try:
        from cryptography.hazmat.bindings._rust import openssl as _rust

        make_enc = _rust.ciphers.create_encryption_ctx
        make_dec = _rust.ciphers.create_decryption_ctx
        fast = (lambda key, iv: make_enc(_AES(key), _CBC(iv)), lambda key, iv: make_dec(_AES(key), _CBC(iv)))
        key, iv, text = bytes(range(32)), bytes(range(16)), bytes(range(48))
        e1, e2 = public[0](key, iv), fast[0](key, iv)
        wire = e1.update(text) + e1.finalize()
        if e2.update(text) + e2.finalize() != wire:
            return public
        d = fast[1](key, iv)
        if d.update(wire) + d.finalize() != text:
            return public
        return fast
    except Exception:  # a build without the binding: the public API is always right
        return public


_encryptor, _decryptor = _cbc_contexts()


def encrypt_py(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-256-CBC of whole blocks (the pure twin)."""
    if len(key) != 32 or len(iv) != 16:
        raise ValueError(f"AES-256-CBC takes a 32-byte key and a 16-byte IV, got {len(key)} and {len(iv)}")
    if not data or len(data) % 16:
        raise ValueError(f"AES-256-CBC encrypts whole 16-byte blocks, got {len(data)} bytes")
    enc = _encryptor(key, iv)
    return enc.update(data) + enc.finalize()


def decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-256-CBC decryption of whole blocks (always `cryptography`: received messages are few)."""
    dec = _decryptor(key, iv)
    return dec.update(data) + dec.finalize()


def load(implementation: str) -> Callable[[bytes, bytes, bytes], bytes]:
    """The encrypt function of `implementation` ("native" or "pure"); ImportError if unavailable
    (for "native": not built, or no AES-NI on this CPU)."""
    if implementation == "pure":
        return encrypt_py
    if implementation == "native":
        from gateway._native import aes_cbc as native  # noqa: PLC0415 - optional extension

        if not native.AESNI:
            raise ImportError("gateway._native.aes_cbc: this CPU has no AES-NI")
        key, iv, text = bytes(range(32)), bytes(range(16)), bytes(range(48))
        if native.cbc_encrypt(key, iv, text) != encrypt_py(key, iv, text):
            raise ImportError("gateway._native.aes_cbc disagrees with cryptography on the self-test")
        return native.cbc_encrypt
    raise ValueError(f"unknown AES-CBC implementation {implementation!r}")


IMPLEMENTATION, NATIVE_AVAILABLE, encrypt = choose("aes_cbc", load)
