"""Micro-benchmark of sealing at rest (gateway.crypto.seal): seals and opens per second of a short
message payload and of a session record, with the native AES-GCM (gateway._native.aes_gcm) and with
its twin (cryptography's AESGCM), and their ratio.

A tight loop keeps both in cache; inside the gateway, between the other work of a message, the twin's
per-call OpenSSL context costs several times more (bench/RESULTS.md). It measures in-process CPU cost
only and never touches the store.
"""
from __future__ import annotations

import os
import sys

from bench.common import best_rate, micro_main
from gateway.crypto import aes_gcm, seal

RECORDS = {"payload_60B": 60, "session_400B": 400}  # a short text's payload; a session record
N = 50_000


def _rates(cls, size: int, scale: float) -> tuple[float, float]:
    sealer, aad, text = seal.Sealer({1: os.urandom(32)}, 1, aead=cls), b"01JB7Q3Y5D6M8N9P0R1S2T3V4W", os.urandom(size)
    n = max(1_000, int(N * scale))
    blob = sealer.seal(text, aad)

    def seal_many() -> None:
        for _ in range(n):
            sealer.seal(text, aad)

    def open_many() -> None:
        for _ in range(n):
            sealer.open(blob, aad)

    return best_rate(n, seal_many), best_rate(n, open_many)


def run(scale: float = 1.0) -> dict:
    impls = {"pure": aes_gcm.load("pure")}
    if os.environ.get("GATEWAY_PURE_PYTHON") != "1":  # (which keeps compiled modules out)
        try:
            impls["native"] = aes_gcm.load("native")
        except ImportError as exc:
            print(f"native AES-GCM unavailable: {exc}", file=sys.stderr)
    out: dict = {"in_use": aes_gcm.IMPLEMENTATION}
    for name, size in RECORDS.items():
        row = {}
        for impl, cls in impls.items():
            s, o = _rates(cls, size, scale)
            row[impl] = {"seal_per_s": round(s), "open_per_s": round(o)}
        if "native" in row:
            row["seal_ratio"] = round(row["native"]["seal_per_s"] / row["pure"]["seal_per_s"], 2)
        out[name] = row
    return out


def print_table(r: dict) -> None:
    print(f"sealing at rest (AES-256-GCM), one core; the gateway uses: {r['in_use']}")
    for name in RECORDS:
        row = r[name]
        for impl in ("native", "pure"):
            if impl in row:
                print(f"  {name:13s} {impl:6s}  seal {row[impl]['seal_per_s']:>10,}/s  open {row[impl]['open_per_s']:>10,}/s")
        if "seal_ratio" in row:
            print(f"  {name:13s} native / pure seal: {row['seal_ratio']}x")


if __name__ == "__main__":
    sys.exit(micro_main(run, print_table))
