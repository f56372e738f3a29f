"""Loads a native module or its pure-Python twin for tests parametrised over both."""
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
