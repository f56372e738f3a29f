"""Safety numbers as Signal computes them: a 60-digit number both parties can compare to confirm they
hold each other's identity keys. It derives digits from public keys and stable identifiers only; it
must never see private keys or decide trust by itself."""
from __future__ import annotations

import hashlib

from gateway.crypto.identity import ENCODED_EC_LEN, IdentityKey

FINGERPRINT_VERSION = b"\x00\x00"  # the hash-input version, distinct from the scannable format's
ITERATIONS = 5200
DIGITS_PER_SIDE = 30


def _encoded(key: IdentityKey | bytes) -> bytes:
    encoded = key.encoded if isinstance(key, IdentityKey) else bytes(key)
    if len(encoded) != ENCODED_EC_LEN:
        raise ValueError(f"identity key must be Encode(IK), {ENCODED_EC_LEN} bytes")
    return encoded


def _identifier(stable_id: str | bytes) -> bytes:
    return stable_id.encode() if isinstance(stable_id, str) else bytes(stable_id)


def identity_digest(stable_id: str | bytes, key: IdentityKey | bytes, iterations: int = ITERATIONS) -> bytes:
    """One side's 64-byte digest: H0 = SHA-512(version || key || id || key), then
    H(i) = SHA-512(H(i-1) || key), `iterations` hashes in all. `key` is Encode(IK) (0x05 || X25519)."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    key_bytes = _encoded(key)
    digest = hashlib.sha512(FINGERPRINT_VERSION + key_bytes + _identifier(stable_id) + key_bytes).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest + key_bytes).digest()
    return digest


def digest_digits(digest: bytes) -> str:
    """30 digits: each of the first six 5-byte chunks, big-endian, mod 100000, zero-padded to 5."""
    if len(digest) < 30:
        raise ValueError("digest must be at least 30 bytes")
    return "".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def safety_number(
    local_id: str | bytes,
    local_key: IdentityKey | bytes,
    remote_id: str | bytes,
    remote_key: IdentityKey | bytes,
    iterations: int = ITERATIONS,
) -> str:
    """The 60 displayable digits: both sides' 30 digits, the lower string first, so both parties see
    the same number."""
    local = digest_digits(identity_digest(local_id, local_key, iterations))
    remote = digest_digits(identity_digest(remote_id, remote_key, iterations))
    return local + remote if local < remote else remote + local


def format_safety_number(number: str) -> str:
    """Twelve space-separated groups of five digits, as users read them out."""
    return " ".join(number[i:i + 5] for i in range(0, len(number), 5))
