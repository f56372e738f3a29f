"""The bytes of a Submit payload under end-to-end encryption: a version, a kind, the X3DH/PQXDH
initial header while the session is unconfirmed, and the Double Ratchet message.

Pure encoding only; it must never hold keys or decide anything about sessions.

    0x01 | 0x01 | ratchet message                                   (kind 1: message)
    0x01 | 0x02 | header length (uint16 big-endian) | InitialHeader | ratchet message   (kind 2: prekey)
"""
from __future__ import annotations

VERSION = 1
KIND_MESSAGE = 1
KIND_PREKEY = 2
_MSG_PREFIX = bytes((VERSION, KIND_MESSAGE))
_PREKEY_PREFIX = bytes((VERSION, KIND_PREKEY))
MAX_HEADER = 0xFFFF


class EnvelopeError(ValueError):
    """Bytes that are not an envelope of a version and kind we know."""


def encode(header: bytes | None, message: bytes) -> bytes:
    if header is None:
        return _MSG_PREFIX + message
    if len(header) > MAX_HEADER:
        raise EnvelopeError("initial header too long")
    return _PREKEY_PREFIX + len(header).to_bytes(2, "big") + header + message


def decode(data: bytes) -> tuple[bytes | None, bytes]:
    """(initial header or None, ratchet message)."""
    if len(data) < 2 or data[0] != VERSION:
        raise EnvelopeError("not an envelope of version 1")
    kind = data[1]
    if kind == KIND_MESSAGE:
        return None, bytes(data[2:])
    if kind != KIND_PREKEY:
        raise EnvelopeError(f"unknown envelope kind {kind}")
    if len(data) < 4:
        raise EnvelopeError("truncated prekey envelope")
    end = 4 + int.from_bytes(data[2:4], "big")
    if end > len(data):
        raise EnvelopeError("truncated initial header")
    return bytes(data[4:end]), bytes(data[end:])
