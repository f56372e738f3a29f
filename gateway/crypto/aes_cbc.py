"""AES-256-CBC of whole blocks for the Double Ratchet: encryption and decryption by the compiled
gateway._native.aes_cbc (AES-NI), or by their pure twins on `cryptography`, chosen once at import.

It owns only that choice and the twins; it must never pad (the caller does) and never pick the native
module on a CPU without AES-NI or where it disagrees with the twin on a self-test.
"""
from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway._native import choose

__all__ = ["IMPLEMENTATION", "NATIVE_AVAILABLE", "decrypt", "encrypt", "load", "load_decrypt"]

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


def _check(key: bytes, iv: bytes, data: bytes, what: str) -> None:
    if len(key) != 32 or len(iv) != 16:
        raise ValueError(f"AES-256-CBC takes a 32-byte key and a 16-byte IV, got {len(key)} and {len(iv)}")
    if not data or len(data) % 16:
        raise ValueError(f"AES-256-CBC {what} whole 16-byte blocks, got {len(data)} bytes")


def encrypt_py(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-256-CBC of whole blocks (the pure twin)."""
    _check(key, iv, data, "encrypts")
    enc = _encryptor(key, iv)
    return enc.update(data) + enc.finalize()


def decrypt_py(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-256-CBC decryption of whole blocks (the pure twin; the padding stays)."""
    _check(key, iv, data, "decrypts")
    dec = _decryptor(key, iv)
    return dec.update(data) + dec.finalize()


def _native_module():
    from gateway._native import aes_cbc as native  # noqa: PLC0415 - optional extension

    if not native.AESNI:
        raise ImportError("gateway._native.aes_cbc: this CPU has no AES-NI")
    key, iv, text = bytes(range(32)), bytes(range(16)), bytes(range(48))
    wire = encrypt_py(key, iv, text)
    if native.cbc_encrypt(key, iv, text) != wire or native.cbc_decrypt(key, iv, wire) != text:
        raise ImportError("gateway._native.aes_cbc disagrees with cryptography on the self-test")
    return native


def load(implementation: str) -> Callable[[bytes, bytes, bytes], bytes]:
    """The encrypt function of `implementation` ("native" or "pure"); ImportError if unavailable
    (for "native": not built, or no AES-NI on this CPU)."""
    if implementation == "pure":
        return encrypt_py
    if implementation == "native":
        return _native_module().cbc_encrypt
    raise ValueError(f"unknown AES-CBC implementation {implementation!r}")


def load_decrypt(implementation: str) -> Callable[[bytes, bytes, bytes], bytes]:
    """The decrypt function of `implementation`, as `load`."""
    if implementation == "pure":
        return decrypt_py
    if implementation == "native":
        return _native_module().cbc_decrypt
    raise ValueError(f"unknown AES-CBC implementation {implementation!r}")


IMPLEMENTATION, NATIVE_AVAILABLE, encrypt = choose("aes_cbc", load)
_, _, decrypt = choose("aes_cbc", load_decrypt)
