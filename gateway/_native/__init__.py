"""Compiled accelerators built from native/*.pyx (see setup.py)."""
