"""Chooses the token-bucket table implementation: the compiled gateway._native.buckets, or the pure twin.

It owns only that choice (and reports it via IMPLEMENTATION / NATIVE_AVAILABLE); it must never
implement bucket arithmetic itself nor fail to import when the native module is missing.
"""
from __future__ import annotations

from gateway._native import choose
from gateway.schedule import buckets_py

__all__ = ["BucketTable", "IMPLEMENTATION", "NATIVE_AVAILABLE", "load"]

# IMPLEMENTATION: "native" or "pure", the table BucketTable refers to.
# NATIVE_AVAILABLE: the compiled module is built (and imports, unless GATEWAY_PURE_PYTHON=1
# kept it unimported).


def load(implementation: str) -> type:
    """Return the BucketTable class of `implementation` ("native" or "pure"); ImportError if unavailable."""
    if implementation == "pure":
        return buckets_py.BucketTable
    if implementation == "native":
        from gateway._native import buckets as native  # noqa: PLC0415 - optional extension

        return native.BucketTable
    raise ValueError(f"unknown BucketTable implementation {implementation!r}")


IMPLEMENTATION, NATIVE_AVAILABLE, BucketTable = choose("buckets", load)
