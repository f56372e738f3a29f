"""AES-256-GCM for sealing at rest (gateway.crypto.seal): the compiled gateway._native.aes_gcm (AES-NI
and PCLMULQDQ), or its pure twin, cryptography's AESGCM, chosen once at import.

It owns only that choice: `AESGCM(key)` with `encrypt(nonce, data, associated_data)` and `decrypt`,
12-byte nonces. It must never pick the native class on a CPU without its instructions or where it
disagrees with cryptography on a self-test (a sealed record must open under either).
"""
from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as _CryptographyAESGCM

from gateway._native import choose

__all__ = ["AESGCM", "IMPLEMENTATION", "NATIVE_AVAILABLE", "load"]


def _agrees(cls) -> bool:
    """Both ways, against cryptography, on lengths around the block size, and a wrong tag refused."""
    key, nonce = bytes(range(32)), bytes(range(12))
    ours, ref = cls(key), _CryptographyAESGCM(key)
    for n, a in ((0, 0), (15, 17), (16, 16), (33, 5), (100, 70)):  # (the last: four blocks at a time)
        data, aad = bytes(range(n)), bytes(range(100, 100 + a))
        sealed = ref.encrypt(nonce, data, aad)
        if ours.encrypt(nonce, data, aad) != sealed or ours.decrypt(nonce, sealed, aad) != data:
            return False
    try:
        ours.decrypt(nonce, bytes(16), b"")
    except InvalidTag:
        return True
    return False


def load(implementation: str) -> type:
    """The AESGCM class of `implementation` ("native" or "pure"); ImportError if unavailable (for
    "native": not built, or this CPU lacks AES-NI, PCLMULQDQ or SSSE3)."""
    if implementation == "pure":
        return _CryptographyAESGCM
    if implementation == "native":
        from gateway._native import aes_gcm as native  # noqa: PLC0415 - optional extension

        if not native.AVAILABLE:
            raise ImportError("gateway._native.aes_gcm: this CPU lacks AES-NI, PCLMULQDQ or SSSE3")
        if not _agrees(native.AESGCM):
            raise ImportError("gateway._native.aes_gcm disagrees with cryptography on the self-test")
        return native.AESGCM
    raise ValueError(f"unknown AES-GCM implementation {implementation!r}")


IMPLEMENTATION, NATIVE_AVAILABLE, AESGCM = choose("aes_gcm", load)
