"""Loads a native module or its pure-Python twin for tests parametrised over both."""
import importlib
import os

import pytest

from gateway.schedule import buckets

IMPLEMENTATIONS = ["native", "pure"]


def load_table(impl: str):
    """The BucketTable class of `impl`. The native one is skipped only where GATEWAY_PURE_PYTHON=1
    turns it off on purpose; a native module that was not built fails the test."""
    if impl == "native" and os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        pytest.skip("GATEWAY_PURE_PYTHON=1: native BucketTable deliberately disabled")
    try:
        return buckets.load(impl)
    except ImportError as exc:
        pytest.fail(f"native BucketTable not built ({exc}); run `python setup.py build_ext --inplace`")


def load_accelerator(chooser, impl: str, cpu_flag: str):
    """`chooser.load(impl)` for tests over a CPU-instruction accelerator and its twin: the native one
    is skipped where GATEWAY_PURE_PYTHON=1 turns it off or this CPU lacks the instructions (the
    built module's `cpu_flag` is false: the gateway then runs the twin); one not built fails."""
    if impl == "native":
        if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
            pytest.skip(f"GATEWAY_PURE_PYTHON=1: native {chooser.__name__} deliberately disabled")
        name = chooser.__name__.rsplit(".", 1)[1]
        try:
            native = importlib.import_module(f"gateway._native.{name}")
        except ImportError as exc:
            pytest.fail(f"gateway._native.{name} not built ({exc}); run `python setup.py build_ext --inplace`")
        if not getattr(native, cpu_flag):
            pytest.skip(f"this CPU lacks the instructions of gateway._native.{name}: the twin runs here")
    return chooser.load(impl)
