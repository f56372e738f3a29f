"""Sealing at rest: AES-256-GCM under data keys identified by number, so that message text
never lies in LMDB in plaintext and `gateway keys rotate` can add a key while old records stay
readable. Pure: keys come in as bytes; this module never reads files or logs anything it seals.

Sealed layout: 0x01 (version) | key id (4 bytes, big-endian) | nonce (12 random bytes) |
AES-256-GCM ciphertext with its 16-byte tag. The associated data is supplied by the caller (the
record's key, e.g. the message id), so a sealed blob cannot be moved to another record.
"""
from __future__ import annotations

import os
import weakref

from cryptography.exceptions import InvalidTag

from gateway.crypto.aes_gcm import AESGCM  # AES-NI and PCLMULQDQ where built, else cryptography's

VERSION = 1
HEADER = 1 + 4 + 12
KEY_BYTES = 32
NONCE_BYTES = 12
_POOL_NONCES = 341  # nonces drawn from the OS in one call (4,092 bytes): one getrandom per 341 seals

_sealers: weakref.WeakSet[Sealer] = weakref.WeakSet()


def _forget_nonces_in_child() -> None:
    """A forked child must never use the nonces its parent may use too: it draws its own."""
    for sealer in list(_sealers):
        sealer._drop_nonces()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_nonces_in_child)


class SealError(Exception):
    """A sealed blob that cannot be opened: malformed, unknown key, or tampered with."""


class Sealer:
    def __init__(self, keys: dict[int, bytes], active: int, *, aead: type = AESGCM) -> None:
        """`aead`: the AES-GCM class (gateway.crypto.aes_gcm's choice; a benchmark or test picks one)."""
        if active not in keys:
            raise ValueError(f"active key {active} is not among the keys")
        for key_id, key in keys.items():
            if len(key) != KEY_BYTES or not 0 <= key_id < 1 << 32:
                raise ValueError(f"data key {key_id} must be {KEY_BYTES} bytes with an id below 2**32")
        self._aead = {key_id: aead(key) for key_id, key in keys.items()}
        self.active = active
        self._prefix = bytes((VERSION,)) + active.to_bytes(4, "big")
        # Random nonces, drawn from the OS in pools (a getrandom call costs as much as the AES-GCM
        # of a short text here); each is used once, and a forked child drops its copy.
        self._drop_nonces()
        _sealers.add(self)

    def _drop_nonces(self) -> None:
        self._nonces = b""
        self._at = 0

    @property
    def key_ids(self) -> list[int]:
        return sorted(self._aead)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        at = self._at
        if at == len(self._nonces):
            self._nonces = os.urandom(_POOL_NONCES * NONCE_BYTES)
            at = 0
        self._at = at + NONCE_BYTES
        nonce = self._nonces[at:at + NONCE_BYTES]
        return self._prefix + nonce + self._aead[self.active].encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < HEADER + 16 or blob[0] != VERSION:
            raise SealError("not a sealed record")
        key_id = int.from_bytes(blob[1:5], "big")
        aead = self._aead.get(key_id)
        if aead is None:
            raise SealError(f"sealed with data key {key_id}, which is not in the key directory")
        try:
            return aead.decrypt(blob[5:HEADER], blob[HEADER:], aad)
        except InvalidTag:
            raise SealError("sealed record failed authentication") from None


def key_id_of(blob: bytes) -> int:
    return int.from_bytes(blob[1:5], "big")
