"""HMAC-SHA256 and the Double Ratchet's per-message key derivations over hashlib: the pure twin of
gateway._native.ratchet_kdf (`hmac_sha256`, `kdf_ck`, `message_keys`), and the reference it is tested
against.

It owns only these functions, for 32-byte keys. HMAC (RFC 2104) is written out over hashlib: the same
function as hmac.digest(key, msg, "sha256"), about twice as fast because it skips OpenSSL's per-call
MAC set-up and lets the pads of one key serve several messages (tests check it against the stdlib).
"""
from __future__ import annotations

import hashlib

MESSAGE_KEYS_INFO = b"WhisperMessageKeys"

_sha256 = hashlib.sha256
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_ZERO32 = bytes(32)
_ZERO_INNER = _sha256(bytes(64).translate(_IPAD))  # HMAC state for HKDF's all-zero salt
_ZERO_OUTER = _sha256(bytes(64).translate(_OPAD))


def _check(key: bytes, what: str) -> None:
    if len(key) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(key)}")


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256(key, msg) for a 32-byte key."""
    _check(key, "key")
    block = key + _ZERO32
    inner = _sha256(block.translate(_IPAD))
    inner.update(msg)
    outer = _sha256(block.translate(_OPAD))
    outer.update(inner.digest())
    return outer.digest()


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """KDF_CK: (HMAC-SHA256(ck, 0x02) = next chain key, HMAC-SHA256(ck, 0x01) = message key)."""
    _check(ck, "chain key")
    block = ck + _ZERO32
    inner = _sha256(block.translate(_IPAD))
    outer = _sha256(block.translate(_OPAD))
    i1 = inner.copy()
    i1.update(b"\x01")
    o1 = outer.copy()
    o1.update(i1.digest())
    inner.update(b"\x02")
    outer.update(inner.digest())
    return outer.digest(), o1.digest()


def message_keys(mk: bytes) -> tuple[bytes, bytes, bytes]:
    """HKDF-SHA256(salt=32 zero bytes, ikm=mk, info="WhisperMessageKeys", 80) -> (AES key, MAC key, IV)."""
    _check(mk, "message key")
    inner = _ZERO_INNER.copy()
    inner.update(mk)
    outer = _ZERO_OUTER.copy()
    outer.update(inner.digest())
    block = outer.digest() + _ZERO32  # the PRK, padded to SHA-256's block
    inner = _sha256(block.translate(_IPAD))
    outer = _sha256(block.translate(_OPAD))
    i = inner.copy()
    i.update(MESSAGE_KEYS_INFO + b"\x01")
    o = outer.copy()
    o.update(i.digest())
    t1 = o.digest()
    i = inner.copy()
    i.update(t1 + MESSAGE_KEYS_INFO + b"\x02")
    o = outer.copy()
    o.update(i.digest())
    t2 = o.digest()
    inner.update(t2 + MESSAGE_KEYS_INFO + b"\x03")
    outer.update(inner.digest())
    return t1, t2, outer.digest()[:16]
