"""Compiled accelerators built from native/*.pyx (see setup.py), and `choose`, the one rule by which
every chooser module (gateway.schedule.buckets, gateway.policy.normalize, gateway.crypto.aes_cbc,
gateway.crypto.aes_gcm, gateway.crypto.ratchet_kdf) picks between a native module and its pure-Python twin.

This package must never import a compiled module itself: GATEWAY_PURE_PYTHON=1 forbids it."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def choose(name: str, load: Callable[[str], T]) -> tuple[str, bool, T]:
    """(IMPLEMENTATION, NATIVE_AVAILABLE, what `load` gave for it) for gateway._native.<name>:
    the native one wherever load("native") succeeds (it raises ImportError where the module is not
    built or cannot serve this machine), else the twin. GATEWAY_PURE_PYTHON=1 takes the twin without
    importing the native module; NATIVE_AVAILABLE then says whether it is built."""
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        try:
            present = importlib.util.find_spec(f"gateway._native.{name}") is not None
        except ImportError:
            present = False
        return "pure", present, load("pure")
    try:
        return "native", True, load("native")
    except ImportError:
        return "pure", False, load("pure")
