"""Session agreement exactly per Signal's X3DH and PQXDH specifications: the initiator's side from a
prekey bundle, the responder's side from the initial header, and an in-memory prekey store.

It turns keys into a shared secret and associated data; it must never send, persist or log anything,
and never accept a one-time prekey its lookup reports as unknown or already used."""
from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM1024PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.crypto.identity import (
    DJB_TYPE,
    MLKEM1024_TYPE,
    BadSignature,
    Ed25519Public,
    EncodedEc,
    EncodedKemCiphertext,
    IdentityKey,
    IdentityKeyPair,
    InvalidKey,
    MalformedMessage,
    OneTimePrekey,
    PqPrekey,
    PrekeyBundle,
    PrekeyId,
    SignedPrekey,
    decode_ec,
    decode_kem,
    encode_ec,
    encode_kem_ciphertext,
    make_bundle,
    x25519_dh,
)
from gateway.decoding import DECODE_ERRORS

__all__ = [
    "X3DH_INFO", "PQXDH_INFO", "AgreementError", "UnknownPrekey", "PqRequired", "BadSignature", "InvalidKey",
    "MalformedMessage", "InitialHeader", "Initiated", "Session", "SignatureCache", "EphemeralKeyPool", "PrekeyStore", "kdf",
    "initiate", "respond",
]

# HKDF info strings. X3DH: an application name. PQXDH: info_curve_hash_pqkem joined with "_", as the
# PQXDH spec prescribes; the KEM is named ML-KEM-1024 because it is FIPS 203, not round-3 Kyber.
X3DH_INFO = b"Gateway_X3DH_25519_SHA-256"
PQXDH_INFO = b"Gateway_PQXDH_CURVE25519_SHA-256_ML-KEM-1024"

_F = b"\xff" * 32  # curve25519: 32 0xFF bytes, so the IKM never starts with a valid scalar or point
_SALT = b"\x00" * 32  # SHA-256 output length

T = TypeVar("T")
Lookup = Mapping[int, T] | Callable[[int], T | None]


class AgreementError(Exception):
    """The initial header cannot yield a session (unknown prekey, policy refusal)."""


class UnknownPrekey(AgreementError):
    """A prekey id that the responder does not hold: never issued, rotated out, or (one-time) used."""


class PqRequired(AgreementError):
    """The responder requires PQXDH and the header carries no KEM ciphertext."""


class InitialHeader(msgspec.Struct, frozen=True, array_like=True):
    """What the initiator sends in front of her first message, as a msgpack array in this order."""

    identity_key: Ed25519Public
    ephemeral_key: EncodedEc
    signed_prekey_id: PrekeyId
    one_time_prekey_id: PrekeyId | None = None
    pq_prekey_id: PrekeyId | None = None
    pq_ciphertext: EncodedKemCiphertext | None = None

    def __post_init__(self) -> None:
        if self.ephemeral_key[0] != DJB_TYPE:
            raise ValueError("ephemeral_key must carry type byte 0x05")
        if (self.pq_prekey_id is None) != (self.pq_ciphertext is None):
            raise ValueError("pq_prekey_id and pq_ciphertext come together or not at all")
        if self.pq_ciphertext is not None and self.pq_ciphertext[0] != MLKEM1024_TYPE:
            raise ValueError("pq_ciphertext must carry type byte 0x0A")

    @property
    def is_pq(self) -> bool:
        return self.pq_ciphertext is not None

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> InitialHeader:
        try:
            return _HEADER_DECODER.decode(data)
        except DECODE_ERRORS as exc:
            raise MalformedMessage(f"bad initial header: {exc}") from None


_ENCODER = msgspec.msgpack.Encoder()
_HEADER_DECODER = msgspec.msgpack.Decoder(InitialHeader)


@dataclass(frozen=True, slots=True)
class Session:
    """The agreed secret and the associated data both sides bind to every message."""

    shared_key: bytes
    associated_data: bytes
    pq: bool
    remote_identity: IdentityKey


@dataclass(frozen=True, slots=True)
class Initiated:
    session: Session
    header: InitialHeader


def kdf(key_material: bytes, info: bytes) -> bytes:
    """KDF(KM): 32 bytes of HKDF-SHA256 with salt = 32 zero bytes and IKM = F || KM."""
    return HKDF(hashes.SHA256(), 32, _SALT, info).derive(_F + key_material)


class SignatureCache:
    """Remembers (identity, message, signature) triples that verified, so that many sessions toward
    the same published bundle pay for verification once. Ed25519 verification is a pure function of
    the triple, so a hit is exactly as good as a check. Bounded; least recently used go first."""

    __slots__ = ("capacity", "_seen")

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seen: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()

    def verify(self, identity: IdentityKey, signature: bytes, message: bytes) -> None:
        key = (identity.ed25519, message, signature)
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        identity.verify(signature, message)
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


class EphemeralKeyPool:
    """Fresh X25519 key pairs made ahead of need (in idle time), so that starting a session does not
    wait for key generation. Each key is handed out once and dropped from the pool: never reused, never
    stored. An empty pool makes a key on the spot, so `take` always returns a fresh one. A process
    forked from the one that filled the pool never takes those keys (its parent may take them too)."""

    __slots__ = ("capacity", "_keys", "_pid")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._keys: list[X25519PrivateKey] = []
        self._pid = os.getpid()

    def refill(self, limit: int | None = None) -> int:
        """Make keys until the pool is full, at most `limit` of them (~45 us each); how many were made."""
        self._forget_if_forked()
        count = self.capacity - len(self._keys)
        if limit is not None:
            count = min(count, limit)
        if count <= 0:
            return 0
        generate = X25519PrivateKey.generate
        self._keys.extend([generate() for _ in range(count)])
        return count

    def take(self) -> X25519PrivateKey:
        self._forget_if_forked()
        return self._keys.pop() if self._keys else X25519PrivateKey.generate()

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._keys.clear()
            self._pid = os.getpid()

    def __len__(self) -> int:
        self._forget_if_forked()
        return len(self._keys)


@functools.lru_cache(maxsize=1024)
def _kem_public_key(raw: bytes) -> MLKEM1024PublicKey:
    """Parsed ML-KEM public keys, memoized: parsing is a pure function, and one published PQ prekey
    serves many sessions."""
    try:
        return MLKEM1024PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidKey(f"bad ML-KEM-1024 public key: {exc}") from None


def initiate(
    identity: IdentityKeyPair,
    bundle: PrekeyBundle,
    *,
    ephemeral: X25519PrivateKey | None = None,
    signatures: SignatureCache | None = None,
) -> Initiated:
    """Alice's side: verify Bob's prekey signatures (BadSignature otherwise), then X3DH, or PQXDH when
    the bundle carries a PQ prekey. `ephemeral` is EK_A; fresh when not given (tests pin it)."""
    bob = IdentityKey(bundle.identity_key)
    verify = bob.verify if signatures is None else (lambda sig, msg: signatures.verify(bob, sig, msg))
    verify(bundle.signed_prekey_signature, bundle.signed_prekey)
    pq = bundle.pq_prekey is not None
    if pq:
        verify(bundle.pq_prekey_signature, bundle.pq_prekey)

    ek = ephemeral if ephemeral is not None else X25519PrivateKey.generate()
    spk = decode_ec(bundle.signed_prekey)
    km = identity.dh(spk) + x25519_dh(ek, bob.x25519) + x25519_dh(ek, spk)
    if bundle.one_time_prekey is not None:
        km += x25519_dh(ek, decode_ec(bundle.one_time_prekey))
    ciphertext = None
    if pq:
        shared_secret, raw_ciphertext = _kem_public_key(decode_kem(bundle.pq_prekey)).encapsulate()
        km += shared_secret
        ciphertext = encode_kem_ciphertext(raw_ciphertext)

    session = Session(
        shared_key=kdf(km, PQXDH_INFO if pq else X3DH_INFO),
        associated_data=identity.public.encoded + bob.encoded,
        pq=pq,
        remote_identity=bob,
    )
    header = InitialHeader(
        identity_key=identity.public.ed25519,
        ephemeral_key=encode_ec(ek.public_key().public_bytes_raw()),
        signed_prekey_id=bundle.signed_prekey_id,
        one_time_prekey_id=bundle.one_time_prekey_id,
        pq_prekey_id=bundle.pq_prekey_id,
        pq_ciphertext=ciphertext,
    )
    return Initiated(session, header)


def _lookup(source: Lookup[T], key_id: int) -> T | None:
    if isinstance(source, Mapping):
        return source.get(key_id)
    return source(key_id)


def respond(
    identity: IdentityKeyPair,
    header: InitialHeader,
    *,
    signed_prekeys: Lookup[SignedPrekey],
    one_time_prekeys: Lookup[OneTimePrekey],
    pq_prekeys: Lookup[PqPrekey] | None = None,
    require_pq: bool = False,
) -> Session:
    """Bob's side: recompute SK and AD from the header and his private prekeys, found by id through
    dicts or functions returning None for unknown ids. The one-time prekey is looked up last, after
    every other check, so a lookup that consumes it only does so for a header that can succeed.
    Deleting a used one-time prekey is the caller's job (PrekeyStore does it)."""
    alice = IdentityKey(header.identity_key)
    ek = decode_ec(header.ephemeral_key)
    spk = _lookup(signed_prekeys, header.signed_prekey_id)
    if spk is None:
        raise UnknownPrekey(f"unknown signed prekey {header.signed_prekey_id}")
    pq_prekey = None
    if header.pq_prekey_id is not None:
        pq_prekey = None if pq_prekeys is None else _lookup(pq_prekeys, header.pq_prekey_id)
        if pq_prekey is None:
            raise UnknownPrekey(f"unknown PQ prekey {header.pq_prekey_id}")
    elif require_pq:
        raise PqRequired("initial header carries no ML-KEM ciphertext")

    dh123 = spk.dh(alice.x25519) + identity.dh(ek) + spk.dh(ek)  # raises for a small-order EK_A
    shared_secret = b"" if pq_prekey is None else pq_prekey.decapsulate(header.pq_ciphertext)
    dh4 = b""
    if header.one_time_prekey_id is not None:
        opk = _lookup(one_time_prekeys, header.one_time_prekey_id)
        if opk is None:
            raise UnknownPrekey(f"unknown or already used one-time prekey {header.one_time_prekey_id}")
        dh4 = opk.dh(ek)
    km = dh123 + dh4 + shared_secret
    pq = pq_prekey is not None
    return Session(
        shared_key=kdf(km, PQXDH_INFO if pq else X3DH_INFO),
        associated_data=alice.encoded + identity.public.encoded,
        pq=pq,
        remote_identity=alice,
    )


class PrekeyStore:
    """One party's private prekeys in memory. A one-time prekey is handed out by `take_one_time_prekey`
    once and then forgotten; its id is remembered as used so it is refused for good, even if re-added.
    Signed and PQ prekeys are not consumed (the PQ prekey acts as a last-resort key)."""

    def __init__(self, identity: IdentityKeyPair) -> None:
        self.identity = identity
        self._signed: dict[int, SignedPrekey] = {}
        self._one_time: dict[int, OneTimePrekey] = {}
        self._used: set[int] = set()
        self._pq: dict[int, PqPrekey] = {}
        self._current_signed: int | None = None
        self._current_pq: int | None = None

    def add_signed_prekey(self, prekey: SignedPrekey) -> None:
        self._signed[prekey.id] = prekey
        self._current_signed = prekey.id

    def add_pq_prekey(self, prekey: PqPrekey) -> None:
        self._pq[prekey.id] = prekey
        self._current_pq = prekey.id

    def add_one_time_prekey(self, prekey: OneTimePrekey) -> None:
        if prekey.id in self._used or prekey.id in self._one_time:
            raise ValueError(f"one-time prekey id {prekey.id} was already issued")
        self._one_time[prekey.id] = prekey

    def signed_prekey(self, prekey_id: int) -> SignedPrekey | None:
        return self._signed.get(prekey_id)

    def pq_prekey(self, prekey_id: int) -> PqPrekey | None:
        return self._pq.get(prekey_id)

    def take_one_time_prekey(self, prekey_id: int) -> OneTimePrekey | None:
        prekey = self._one_time.pop(prekey_id, None)
        if prekey is not None:
            self._used.add(prekey_id)
        return prekey

    def is_used(self, prekey_id: int) -> bool:
        return prekey_id in self._used

    @property
    def unused_one_time_prekey_ids(self) -> list[int]:
        return sorted(self._one_time)

    def bundle(self, one_time_prekey_id: int | None = None, *, include_pq: bool = True) -> PrekeyBundle:
        """The bundle to publish: the newest signed prekey, the given unused one-time prekey (none if
        None), and the newest PQ prekey when there is one and `include_pq`."""
        if self._current_signed is None:
            raise ValueError("no signed prekey")
        opk = None
        if one_time_prekey_id is not None:
            opk = self._one_time.get(one_time_prekey_id)
            if opk is None:
                raise UnknownPrekey(f"unknown or already used one-time prekey {one_time_prekey_id}")
        pq = self._pq[self._current_pq] if include_pq and self._current_pq is not None else None
        return make_bundle(self.identity, self._signed[self._current_signed], opk, pq)

    def respond(self, header: InitialHeader, *, require_pq: bool = False) -> Session:
        return respond(
            self.identity,
            header,
            signed_prekeys=self.signed_prekey,
            one_time_prekeys=self.take_one_time_prekey,
            pq_prekeys=self.pq_prekey,
            require_pq=require_pq,
        )
