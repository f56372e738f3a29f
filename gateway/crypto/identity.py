"""Identity keys and prekeys for Signal-style agreement: Ed25519 identities and their X25519 twins,
signed X25519 and ML-KEM-1024 prekeys, the prekey bundle the network serves, and seeded derivation.

It owns key material and its byte encodings only; it must never do I/O, read a clock, or keep keys
anywhere but in the objects it returns (randomness comes from the OS via `cryptography`)."""
from __future__ import annotations

import functools
import hashlib
from typing import Annotated

import gmpy2
import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM1024PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from msgspec import Meta
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from gateway.decoding import DECODE_ERRORS

# Type bytes, as libsignal assigns them: 0x05 = Curve25519 ("DJB") public key; 0x0A = ML-KEM-1024
# (FIPS 203). libsignal's 0x08 is the pre-standard Kyber1024, a different KEM, so it is not used.
DJB_TYPE = 0x05
MLKEM1024_TYPE = 0x0A

KEY_LEN = 32
SIGNATURE_LEN = 64
MLKEM1024_PUBLIC_LEN = 1568
MLKEM1024_CIPHERTEXT_LEN = 1568
MLKEM1024_SEED_LEN = 64
ENCODED_EC_LEN = 1 + KEY_LEN
ENCODED_KEM_LEN = 1 + MLKEM1024_PUBLIC_LEN
ENCODED_KEM_CIPHERTEXT_LEN = 1 + MLKEM1024_CIPHERTEXT_LEN
MAX_PREKEY_ID = 0xFFFF_FFFF

DERIVE_INFO = b"Gateway_Derive_v1"


class InvalidKey(ValueError):
    """Bytes that are not an acceptable key or ciphertext (wrong length or type, off-curve, small order)."""


class BadSignature(ValueError):
    """A prekey signature that does not verify under the claimed identity key."""


class MalformedMessage(ValueError):
    """A bundle or header whose msgpack bytes do not decode into a well-formed struct."""


# --- Ed25519 -> X25519 (the birational map, as libsodium's crypto_sign_ed25519_*_to_curve25519) ---

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
# Montgomery u of the eight torsion points other than the identity (whose y = 1 has no image):
# order 2 -> 0, order 4 -> 1, order 8 -> the two values below. X25519 with any of them is all zeros.
_SMALL_ORDER_U = frozenset({
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})
# The field arithmetic runs in GMP: the Jacobi symbol and the inversion mod p cost ~60 us with
# Python ints and ~4 us through gmpy2, once per new peer's identity.
_PM = gmpy2.mpz(_P)
_DM = gmpy2.mpz(_D)
_jacobi = gmpy2.jacobi
_invert = gmpy2.invert


def ed25519_public_to_x25519(ed25519_public: bytes) -> bytes:
    """u = (1 + y) / (1 - y) mod p for the Edwards point encoded in `ed25519_public`.

    Rejects a wrong length, a non-canonical y (>= p) or x (x = 0 with the sign bit set), a y that is not
    on the curve, and the eight small-order points. Membership of the prime-order subgroup is not
    checked: X25519 clamps scalars to multiples of the cofactor, so a torsion component cannot change
    any DH output. Memoized (bounded): it is a pure function and peers' identities recur."""
    return _ed25519_public_to_x25519(bytes(ed25519_public))


@functools.lru_cache(maxsize=16384)
def _ed25519_public_to_x25519(ed25519_public: bytes) -> bytes:
    if len(ed25519_public) != KEY_LEN:
        raise InvalidKey(f"Ed25519 public key must be {KEY_LEN} bytes, got {len(ed25519_public)}")
    n = int.from_bytes(ed25519_public, "little")
    y = n & ((1 << 255) - 1)
    if y >= _P:
        raise InvalidKey("non-canonical Ed25519 public key (y >= p)")
    # x^2 = (y^2 - 1) / (d y^2 + 1); it is a square iff the product (y^2 - 1)(d y^2 + 1) is one
    # (Jacobi symbol 1, or 0 when y^2 = 1 and x = 0).
    ym = gmpy2.mpz(y)
    y2 = ym * ym % _PM
    if y2 == 1 and n >> 255:
        raise InvalidKey("non-canonical Ed25519 public key (x = 0 with the sign bit set)")
    if _jacobi((y2 - 1) * (_DM * y2 + 1) % _PM, _PM) < 0:
        raise InvalidKey("Ed25519 public key is not a point on the curve")
    if y == 1:
        raise InvalidKey("Ed25519 public key is the identity point")
    u = int((1 + ym) * _invert(1 - ym, _PM) % _PM)
    if u in _SMALL_ORDER_U:
        raise InvalidKey("Ed25519 public key has small order")
    return u.to_bytes(KEY_LEN, "little")


def ed25519_seed_to_x25519(ed25519_seed: bytes) -> bytes:
    """The X25519 private scalar of an Ed25519 key: SHA-512(seed)[:32], clamped (libsodium's form)."""
    if len(ed25519_seed) != KEY_LEN:
        raise InvalidKey(f"Ed25519 seed must be {KEY_LEN} bytes, got {len(ed25519_seed)}")
    h = bytearray(hashlib.sha512(ed25519_seed).digest()[:KEY_LEN])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


# --- Encodings: EncodeEC / EncodeKEM of the X3DH and PQXDH specs (pairwise-disjoint by type byte) ---

def _encode_typed(raw: bytes, type_byte: int, length: int, what: str) -> bytes:
    if len(raw) != length:
        raise InvalidKey(f"{what} must be {length} bytes, got {len(raw)}")
    return bytes((type_byte,)) + bytes(raw)


def _decode_typed(encoded: bytes, type_byte: int, length: int, what: str) -> bytes:
    if len(encoded) != length + 1 or encoded[0] != type_byte:
        raise InvalidKey(f"not an encoded {what} (0x{type_byte:02X} || {length} bytes)")
    return bytes(encoded[1:])


def encode_ec(x25519_public: bytes) -> bytes:
    return _encode_typed(x25519_public, DJB_TYPE, KEY_LEN, "X25519 public key")


def decode_ec(encoded: bytes) -> bytes:
    return _decode_typed(encoded, DJB_TYPE, KEY_LEN, "X25519 public key")


def encode_kem(mlkem_public: bytes) -> bytes:
    return _encode_typed(mlkem_public, MLKEM1024_TYPE, MLKEM1024_PUBLIC_LEN, "ML-KEM-1024 public key")


def decode_kem(encoded: bytes) -> bytes:
    return _decode_typed(encoded, MLKEM1024_TYPE, MLKEM1024_PUBLIC_LEN, "ML-KEM-1024 public key")


def encode_kem_ciphertext(ciphertext: bytes) -> bytes:
    return _encode_typed(ciphertext, MLKEM1024_TYPE, MLKEM1024_CIPHERTEXT_LEN, "ML-KEM-1024 ciphertext")


def decode_kem_ciphertext(encoded: bytes) -> bytes:
    return _decode_typed(encoded, MLKEM1024_TYPE, MLKEM1024_CIPHERTEXT_LEN, "ML-KEM-1024 ciphertext")


def x25519_dh(private: X25519PrivateKey, their_public: bytes) -> bytes:
    """X25519, refusing the all-zero output that small-order peer keys produce."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(their_public))
    except ValueError as exc:
        raise InvalidKey(f"X25519 with this public key failed: {exc}") from None


# --- Identity keys ---

class IdentityKey:
    """A party's public identity: the raw Ed25519 key (verifies prekey signatures) and its X25519 twin.

    `encoded` = 0x05 || X25519 twin is what goes into AD and safety numbers."""

    __slots__ = ("ed25519", "x25519", "encoded")

    def __init__(self, ed25519_public: bytes) -> None:
        self.ed25519 = bytes(ed25519_public)
        self.x25519 = ed25519_public_to_x25519(self.ed25519)
        self.encoded = encode_ec(self.x25519)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Ed25519 (RFC 8032) through libsodium's crypto_sign_open, about twice as fast here as
        OpenSSL's: cofactorless, refusing a non-canonical S or public key and a small-order R or
        public key. No honest signature has any of these; they are extra refusals of crafted ones
        that OpenSSL's verification would let through."""
        if len(signature) != SIGNATURE_LEN:
            raise BadSignature(f"an Ed25519 signature is {SIGNATURE_LEN} bytes, got {len(signature)}")
        try:
            crypto_sign_open(bytes(signature) + bytes(message), self.ed25519)
        except BadSignatureError:
            raise BadSignature("signature does not verify under this identity key") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentityKey) and other.ed25519 == self.ed25519

    def __hash__(self) -> int:
        return hash(self.ed25519)

    def __repr__(self) -> str:
        return f"IdentityKey({self.ed25519.hex()})"


class IdentityKeyPair:
    """An Ed25519 identity from its 32-byte seed; signs prekeys and does DH through its X25519 twin."""

    __slots__ = ("public", "_seed", "_signer", "_dh")

    def __init__(self, ed25519_seed: bytes) -> None:
        self._seed = bytes(ed25519_seed)
        self._signer = Ed25519PrivateKey.from_private_bytes(self._seed)
        self._dh = X25519PrivateKey.from_private_bytes(ed25519_seed_to_x25519(self._seed))
        self.public = IdentityKey(self._signer.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def x25519_private(self) -> bytes:
        return self._dh.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def dh(self, their_x25519_public: bytes) -> bytes:
        return x25519_dh(self._dh, their_x25519_public)

    def __repr__(self) -> str:
        return f"IdentityKeyPair(public={self.public.ed25519.hex()})"


# --- Prekeys (private halves; the public halves travel in PrekeyBundle) ---

def _check_id(prekey_id: int) -> int:
    if not 0 <= prekey_id <= MAX_PREKEY_ID:
        raise ValueError(f"prekey id must be in 0..{MAX_PREKEY_ID}, got {prekey_id}")
    return prekey_id


class OneTimePrekey:
    """X25519 prekey meant for exactly one incoming session."""

    __slots__ = ("id", "public", "_private")

    def __init__(self, prekey_id: int, private: X25519PrivateKey) -> None:
        self.id = _check_id(prekey_id)
        self._private = private
        self.public = private.public_key().public_bytes_raw()

    @property
    def encoded(self) -> bytes:
        return encode_ec(self.public)

    def dh(self, their_x25519_public: bytes) -> bytes:
        return x25519_dh(self._private, their_x25519_public)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id}, public={self.public.hex()})"


class SignedPrekey(OneTimePrekey):
    """X25519 medium-term prekey; `signature` = Ed25519(identity, Encode(public))."""

    __slots__ = ("signature",)

    def __init__(self, prekey_id: int, private: X25519PrivateKey, signature: bytes) -> None:
        super().__init__(prekey_id, private)
        self.signature = bytes(signature)


class PqPrekey:
    """ML-KEM-1024 prekey; `signature` = Ed25519(identity, EncodeKEM(public))."""

    __slots__ = ("id", "public", "signature", "_private")

    def __init__(self, prekey_id: int, private: MLKEM1024PrivateKey, signature: bytes) -> None:
        self.id = _check_id(prekey_id)
        self._private = private
        self.public = private.public_key().public_bytes_raw()
        self.signature = bytes(signature)

    @property
    def encoded(self) -> bytes:
        return encode_kem(self.public)

    def decapsulate(self, encoded_ciphertext: bytes) -> bytes:
        return self._private.decapsulate(decode_kem_ciphertext(encoded_ciphertext))

    def __repr__(self) -> str:
        return f"PqPrekey(id={self.id})"


def make_signed_prekey(identity: IdentityKeyPair, prekey_id: int, secret: bytes | None = None) -> SignedPrekey:
    private = X25519PrivateKey.from_private_bytes(secret) if secret is not None else X25519PrivateKey.generate()
    return SignedPrekey(prekey_id, private, identity.sign(encode_ec(private.public_key().public_bytes_raw())))


def make_one_time_prekey(prekey_id: int, secret: bytes | None = None) -> OneTimePrekey:
    private = X25519PrivateKey.from_private_bytes(secret) if secret is not None else X25519PrivateKey.generate()
    return OneTimePrekey(prekey_id, private)


def make_pq_prekey(identity: IdentityKeyPair, prekey_id: int, seed: bytes | None = None) -> PqPrekey:
    private = MLKEM1024PrivateKey.from_seed_bytes(seed) if seed is not None else MLKEM1024PrivateKey.generate()
    return PqPrekey(prekey_id, private, identity.sign(encode_kem(private.public_key().public_bytes_raw())))


# --- The bundle the network serves ---

PrekeyId = Annotated[int, Meta(ge=0, le=MAX_PREKEY_ID)]
Ed25519Public = Annotated[bytes, Meta(min_length=KEY_LEN, max_length=KEY_LEN)]
EncodedEc = Annotated[bytes, Meta(min_length=ENCODED_EC_LEN, max_length=ENCODED_EC_LEN)]
EncodedKem = Annotated[bytes, Meta(min_length=ENCODED_KEM_LEN, max_length=ENCODED_KEM_LEN)]
EncodedKemCiphertext = Annotated[
    bytes, Meta(min_length=ENCODED_KEM_CIPHERTEXT_LEN, max_length=ENCODED_KEM_CIPHERTEXT_LEN)
]
Signature = Annotated[bytes, Meta(min_length=SIGNATURE_LEN, max_length=SIGNATURE_LEN)]


class PrekeyBundle(msgspec.Struct, frozen=True, array_like=True):
    """One party's published keys, as a msgpack array in this field order (see docs/protocol.md)."""

    identity_key: Ed25519Public
    signed_prekey_id: PrekeyId
    signed_prekey: EncodedEc
    signed_prekey_signature: Signature
    one_time_prekey_id: PrekeyId | None = None
    one_time_prekey: EncodedEc | None = None
    pq_prekey_id: PrekeyId | None = None
    pq_prekey: EncodedKem | None = None
    pq_prekey_signature: Signature | None = None

    def __post_init__(self) -> None:
        if self.signed_prekey[0] != DJB_TYPE:
            raise ValueError("signed_prekey must carry type byte 0x05")
        if (self.one_time_prekey_id is None) != (self.one_time_prekey is None):
            raise ValueError("one_time_prekey and its id come together or not at all")
        if self.one_time_prekey is not None and self.one_time_prekey[0] != DJB_TYPE:
            raise ValueError("one_time_prekey must carry type byte 0x05")
        pq = (self.pq_prekey_id, self.pq_prekey, self.pq_prekey_signature)
        if any(f is None for f in pq) and any(f is not None for f in pq):
            raise ValueError("pq_prekey, its id and its signature come together or not at all")
        if self.pq_prekey is not None and self.pq_prekey[0] != MLKEM1024_TYPE:
            raise ValueError("pq_prekey must carry type byte 0x0A")

    @property
    def has_pq_prekey(self) -> bool:
        return self.pq_prekey is not None

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> PrekeyBundle:
        try:
            return _BUNDLE_DECODER.decode(data)
        except DECODE_ERRORS as exc:
            raise MalformedMessage(f"bad prekey bundle: {exc}") from None


_ENCODER = msgspec.msgpack.Encoder()
_BUNDLE_DECODER = msgspec.msgpack.Decoder(PrekeyBundle)


def make_bundle(
    identity: IdentityKeyPair,
    signed_prekey: SignedPrekey,
    one_time_prekey: OneTimePrekey | None = None,
    pq_prekey: PqPrekey | None = None,
) -> PrekeyBundle:
    return PrekeyBundle(
        identity_key=identity.public.ed25519,
        signed_prekey_id=signed_prekey.id,
        signed_prekey=signed_prekey.encoded,
        signed_prekey_signature=signed_prekey.signature,
        one_time_prekey_id=None if one_time_prekey is None else one_time_prekey.id,
        one_time_prekey=None if one_time_prekey is None else one_time_prekey.encoded,
        pq_prekey_id=None if pq_prekey is None else pq_prekey.id,
        pq_prekey=None if pq_prekey is None else pq_prekey.encoded,
        pq_prekey_signature=None if pq_prekey is None else pq_prekey.signature,
    )


# --- Deterministic derivation for simulated parties ---

def derive_secret(seed: bytes, number: str, purpose: bytes, key_id: int, length: int) -> bytes:
    """HKDF-SHA256(IKM = seed, salt = none, info = DERIVE_INFO || 0x00 || purpose || 0x00 ||
    key_id as 4 bytes big-endian || number UTF-8), `length` bytes. Fields are delimited or fixed-size,
    so distinct (purpose, key_id, number) never share an info string."""
    if not seed:
        raise ValueError("derivation seed must not be empty")
    if b"\x00" in purpose:
        raise ValueError("purpose must not contain NUL")
    info = DERIVE_INFO + b"\x00" + purpose + b"\x00" + _check_id(key_id).to_bytes(4, "big") + number.encode()
    return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(seed)


def derive_identity(seed: bytes, number: str) -> IdentityKeyPair:
    return IdentityKeyPair(derive_secret(seed, number, b"identity", 0, KEY_LEN))


def derive_signed_prekey(seed: bytes, number: str, prekey_id: int) -> SignedPrekey:
    return make_signed_prekey(
        derive_identity(seed, number), prekey_id, derive_secret(seed, number, b"signed-prekey", prekey_id, KEY_LEN)
    )


def derive_one_time_prekey(seed: bytes, number: str, prekey_id: int) -> OneTimePrekey:
    return make_one_time_prekey(prekey_id, derive_secret(seed, number, b"one-time-prekey", prekey_id, KEY_LEN))


def derive_pq_prekey(seed: bytes, number: str, prekey_id: int) -> PqPrekey:
    return make_pq_prekey(
        derive_identity(seed, number),
        prekey_id,
        derive_secret(seed, number, b"pq-prekey", prekey_id, MLKEM1024_SEED_LEN),
    )
