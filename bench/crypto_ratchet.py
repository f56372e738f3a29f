"""Micro-benchmark of the Double Ratchet session: encrypt/s and decrypt/s of 100-byte texts, a ping-pong
that steps the DH ratchet on every message, state save/load, and the bare library primitives as a floor.

It measures in-process CPU cost only; it must never touch the network or the store, and it reports the
target rather than failing on it.
"""
from __future__ import annotations

import gc
import hmac
import os
import sys
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.crypto.ratchet import Session
from bench.common import best_rate, micro_main

ENCRYPT_TARGET = 50_000  # encryptions/s of a 100-byte plaintext, one core
PLAINTEXT = bytes(range(100))
AD = b"A" * 33 + b"B" * 33  # two serialized identity keys, as Signal binds them
STREAM = 20_000
PINGPONG = 1_000
REPEATS = 3


def _best_rate(n: int, fn) -> float:
    return best_rate(n, fn, REPEATS)


def _pair() -> tuple[Session, Session]:
    sk = os.urandom(32)
    bob_key = X25519PrivateKey.generate()
    alice = Session.init_alice(sk, bob_key.public_key().public_bytes_raw())
    bob = Session.init_bob(sk, bob_key)
    bob.decrypt(alice.encrypt(b"hello", AD), AD)
    alice.decrypt(bob.encrypt(b"hi", AD), AD)
    return alice, bob


def _encrypt_rate() -> float:
    def go() -> None:
        alice, _ = _pair()
        enc = alice.encrypt
        for _ in range(STREAM):
            enc(PLAINTEXT, AD)

    return _best_rate(STREAM, go)


def _decrypt_rate() -> float:
    best = 0.0
    for _ in range(REPEATS):
        alice, bob = _pair()
        wires = [alice.encrypt(PLAINTEXT, AD) for _ in range(STREAM)]
        dec = bob.decrypt
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for w in wires:
                dec(w, AD)
            best = max(best, STREAM / (time.perf_counter() - t0))
        finally:
            gc.enable()
    return best


def _pingpong_rate() -> float:
    def go() -> None:
        alice, bob = _pair()
        for i in range(PINGPONG // 2):
            bob.decrypt(alice.encrypt(PLAINTEXT, AD), AD)
            alice.decrypt(bob.encrypt(PLAINTEXT, AD), AD)

    return _best_rate(PINGPONG, go)


def _save_load_rate() -> float:
    alice, _ = _pair()

    def go() -> None:
        s = alice
        for _ in range(STREAM):
            s = Session.from_bytes(s.to_bytes())

    return _best_rate(STREAM, go)


def _primitives_floor() -> float:
    """One message's primitives straight from the libraries, no session: the reference rate."""
    ck = os.urandom(32)
    sha = hashes.SHA256()
    zero = bytes(32)

    def go() -> None:
        for _ in range(STREAM):
            mk = hmac.digest(ck, b"\x01", "sha256")
            hmac.digest(ck, b"\x02", "sha256")
            okm = HKDF(sha, 80, zero, b"WhisperMessageKeys").derive(mk)
            enc = Cipher(algorithms.AES(okm[:32]), modes.CBC(okm[64:])).encryptor()
            body = enc.update(PLAINTEXT + b"\x0c" * 12) + enc.finalize()
            hmac.digest(okm[32:64], AD + body, "sha256")

    return _best_rate(STREAM, go)


def run() -> dict:
    encrypt = _encrypt_rate()
    return {
        "plaintext_bytes": len(PLAINTEXT),
        "encrypt_per_s": round(encrypt),
        "decrypt_per_s": round(_decrypt_rate()),
        "pingpong_msgs_per_s": round(_pingpong_rate()),
        "save_load_per_s": round(_save_load_rate()),
        "primitives_floor_per_s": round(_primitives_floor()),
        "encrypt_target_per_s": ENCRYPT_TARGET,
        "encrypt_target_met": encrypt >= ENCRYPT_TARGET,
    }


def print_table(r: dict) -> None:
    print(f"double ratchet, {r['plaintext_bytes']}-byte plaintexts, one core")
    print(f"  encrypt (one-direction stream)  {r['encrypt_per_s']:>10,}/s  (target {r['encrypt_target_per_s']:,})")
    print(f"  decrypt (one-direction stream)  {r['decrypt_per_s']:>10,}/s")
    print(f"  ping-pong (DH step each msg)    {r['pingpong_msgs_per_s']:>10,} msgs/s")
    print(f"  state to_bytes + from_bytes     {r['save_load_per_s']:>10,}/s")
    print(f"  bare primitives (floor ref.)    {r['primitives_floor_per_s']:>10,}/s")


if __name__ == "__main__":
    sys.exit(micro_main(run, print_table))
