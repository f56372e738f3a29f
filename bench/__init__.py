"""Benchmarks and load tools; never imported by the gateway at runtime."""
