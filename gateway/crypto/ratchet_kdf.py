"""Chooses the Double Ratchet's HMAC-SHA256 key derivations (`hmac_sha256`, `kdf_ck`, `message_keys`):
the compiled gateway._native.ratchet_kdf (SHA-NI), or the pure twin gateway.crypto.ratchet_kdf_py.

It owns only that choice (and reports it via IMPLEMENTATION / NATIVE_AVAILABLE); it must never derive
keys itself, never pick the native module on a CPU without SHA-NI or where it disagrees with the twin
on a self-test, nor fail to import when the native module is missing.
"""
from __future__ import annotations

from types import ModuleType

from gateway._native import choose
from gateway.crypto import ratchet_kdf_py

__all__ = ["IMPLEMENTATION", "NATIVE_AVAILABLE", "hmac_sha256", "kdf_ck", "load", "message_keys"]


def load(implementation: str) -> ModuleType:
    """The module of `implementation` ("native" or "pure"); ImportError if unavailable (for "native":
    not built, or no SHA-NI on this CPU)."""
    if implementation == "pure":
        return ratchet_kdf_py
    if implementation == "native":
        from gateway._native import ratchet_kdf as native  # noqa: PLC0415 - optional extension

        if not native.SHANI:
            raise ImportError("gateway._native.ratchet_kdf: this CPU has no SHA-NI")
        key, msg = bytes(range(32)), bytes(range(200))
        for name, args in (("hmac_sha256", (key, msg)), ("kdf_ck", (key,)), ("message_keys", (key,))):
            if getattr(native, name)(*args) != getattr(ratchet_kdf_py, name)(*args):
                raise ImportError(f"gateway._native.ratchet_kdf.{name} disagrees with its twin on the self-test")
        return native
    raise ValueError(f"unknown ratchet KDF implementation {implementation!r}")


IMPLEMENTATION, NATIVE_AVAILABLE, _impl = choose("ratchet_kdf", load)
hmac_sha256 = _impl.hmac_sha256
kdf_ck = _impl.kdf_ck
message_keys = _impl.message_keys
