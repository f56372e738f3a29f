"""Chooses the folding implementation the scanner uses: the compiled gateway._native.normalize for the
per-message hot path (`fold`, `collapse`, `skeleton_pair`, `skeleton`, `run_counts`), or its pure twin
gateway.policy.normalize_py. Everything else (the mapped forms, `fold_char`, the tables) is the twin's.

It owns only that choice (reported via IMPLEMENTATION / NATIVE_AVAILABLE); it must never fold text
itself nor fail to import when the native module is missing. GATEWAY_PURE_PYTHON=1 forces the twin.
"""
from __future__ import annotations

from types import ModuleType

from gateway._native import choose
from gateway.policy import normalize_py
from gateway.policy.normalize_py import (ARABIC_VARIANTS, KEEP_COMPOSED, LEET, MARK_RANGES, UNSPACED,
                                         UNSPACED_RANGES, Skeleton, capitals_as_latin, fold_char, is_unspaced,
                                         normalize, run_lengths, skeleton_map)

__all__ = [
    "ARABIC_VARIANTS", "IMPLEMENTATION", "KEEP_COMPOSED", "LEET", "MARK_RANGES", "NATIVE_AVAILABLE", "UNSPACED",
    "UNSPACED_RANGES", "Skeleton", "capitals_as_latin", "collapse", "fold", "fold_char", "is_unspaced", "load",
    "normalize",
    "run_counts", "run_lengths", "skeleton", "skeleton_map", "skeleton_pair",
]

HOT = ("fold", "collapse", "skeleton_pair", "skeleton", "run_counts")  # what the native module provides


def load(implementation: str) -> ModuleType:
    """The module providing the HOT functions for `implementation` ("native" or "pure"); ImportError
    if the native one is not built."""
    if implementation == "pure":
        return normalize_py
    if implementation == "native":
        from gateway._native import normalize as native  # noqa: PLC0415 - optional extension

        return native
    raise ValueError(f"unknown normalize implementation {implementation!r}")


IMPLEMENTATION, NATIVE_AVAILABLE, _impl = choose("normalize", load)
fold = _impl.fold
collapse = _impl.collapse
skeleton_pair = _impl.skeleton_pair
skeleton = _impl.skeleton
run_counts = _impl.run_counts
