"""Signal's Double Ratchet (spec revision 4) over X25519, HKDF/HMAC-SHA256 and AES-256-CBC: session state,
message encryption and decryption, skipped-key bookkeeping and the state's byte form.

It owns only in-memory state: it must never do I/O or read a clock (callers pass ``now``), and a
failed decryption must never change the session.
"""
from __future__ import annotations

import struct
from hmac import compare_digest
from typing import Annotated

import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gateway.crypto import aes_cbc
from gateway.crypto.ratchet_kdf import hmac_sha256 as _hmac
from gateway.crypto.ratchet_kdf import kdf_ck, message_keys

__all__ = [
    "BadHeader",
    "BadTag",
    "DEFAULT_MAX_SKIPPED_AGE",
    "HEADER_LEN",
    "MAX_SKIP",
    "MAX_SKIPPED_KEYS",
    "RatchetError",
    "Replay",
    "Session",
    "TAG_LEN",
    "TooManySkipped",
    "kdf_ck",
    "kdf_rk",
    "message_keys",
]

MAX_SKIP = 1000  # most message keys one decryption may skip in a single chain
MAX_SKIPPED_KEYS = 2000  # most skipped keys a session keeps; the oldest go first
DEFAULT_MAX_SKIPPED_AGE = 7 * 24 * 3600.0  # seconds (in the caller's `now` units) a skipped key is kept

ROOT_INFO = b"WhisperRatchet"

HEADER_LEN = 40  # DH public key (32) || PN (u32 big-endian) || N (u32 big-endian)
TAG_LEN = 32  # full HMAC-SHA256
_MIN_MESSAGE = HEADER_LEN + 16 + TAG_LEN  # CBC with PKCS#7 always yields at least one block
_U32_MAX = 0xFFFFFFFF
_STATE_VERSION = 1


class RatchetError(Exception):
    """A message was refused or a state could not be used; the session is unchanged."""


class BadTag(RatchetError):
    """The authentication tag did not verify (or the authenticated plaintext was badly padded)."""


class Replay(RatchetError):
    """The message's key was already used (or its skipped key was discarded by age or by the cap)."""


class TooManySkipped(RatchetError):
    """Decrypting would skip more than MAX_SKIP message keys in one chain."""


class BadHeader(RatchetError):
    """The message is malformed: too short, not whole cipher blocks, or an unusable DH public key."""


# --- primitives -------------------------------------------------------------------------------
# HMAC-SHA256 and the per-message KDFs: gateway.crypto.ratchet_kdf (SHA-NI, or the pure twin);
# AES-256-CBC: gateway.crypto.aes_cbc (AES-NI, or cryptography).

_PADDING = [bytes([n]) * n for n in range(17)]  # PKCS#7 pad for each length 1..16
_pack = struct.Struct(">II").pack
_unpack_from = struct.Struct(">II").unpack_from
_cbc_encrypt = aes_cbc.encrypt  # AES-NI where the CPU has it (gateway._native.aes_cbc), else cryptography
_cbc_decrypt = aes_cbc.decrypt  # likewise: AES-NI where the CPU has it, else cryptography


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """KDF_RK: HKDF-SHA256(salt=rk, ikm=dh_out, info="WhisperRatchet", 64) -> (root key, chain key)."""
    prk = _hmac(rk, dh_out)
    t1 = _hmac(prk, ROOT_INFO + b"\x01")
    t2 = _hmac(prk, t1 + ROOT_INFO + b"\x02")
    return t1, t2


def _seal(mk: bytes, header: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """header || AES-256-CBC(PKCS#7(plaintext)) || HMAC(mac key, ad || header || ciphertext)."""
    cipher_key, mac_key, iv = message_keys(mk)
    body = header + _cbc_encrypt(cipher_key, iv, plaintext + _PADDING[16 - len(plaintext) % 16])
    return body + _hmac(mac_key, ad + body)


def _open(mk: bytes, message: bytes, ad: bytes) -> bytes:
    cipher_key, mac_key, iv = message_keys(mk)
    if not compare_digest(_hmac(mac_key, ad + message[:-TAG_LEN]), message[-TAG_LEN:]):
        raise BadTag("authentication tag does not verify")
    body = message[HEADER_LEN:-TAG_LEN]
    if not body or len(body) % 16:  # authentic, yet not whole blocks: never from a sound peer
        raise BadTag("authenticated ciphertext is not whole AES blocks")
    padded = _cbc_decrypt(cipher_key, iv, body)
    n = padded[-1]
    if not 1 <= n <= 16 or not padded.endswith(_PADDING[n]):
        raise BadTag("authenticated plaintext has invalid padding")
    return padded[:-n]


# --- state ------------------------------------------------------------------------------------

Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=_U32_MAX + 1)]


class _StateRecord(msgspec.Struct, array_like=True):
    version: int
    dhs_private: Key32
    dhs_public: Key32
    dhr: Key32 | None
    rk: Key32
    cks: Key32 | None
    ckr: Key32 | None
    ns: Counter
    nr: Counter
    pn: Counter
    skipped: list[tuple[Key32, Counter, Key32, float]]  # (DH public key, N, message key, stored at)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_StateRecord).decode


class Session:
    """One party's Double Ratchet state (DHs, DHr, RK, CKs, CKr, Ns, Nr, PN, MKSKIPPED).

    Wire message: header (40 bytes: DHs public key 32 raw bytes, PN u32 big-endian, N u32
    big-endian) || AES-256-CBC ciphertext (PKCS#7, whole 16-byte blocks) || HMAC-SHA256 tag (32
    bytes) over ``ad || header || ciphertext``.
    """

    __slots__ = (
        "_dhs_raw",
        "_dhs_key",
        "_dhs_pub",
        "_dhr",
        "_rk",
        "_cks",
        "_ckr",
        "_ns",
        "_nr",
        "_pn",
        "_skipped",
        "max_skipped_keys",
        "max_skipped_age",
    )

    def __init__(
        self,
        *,
        dhs_raw: bytes,
        dhs_pub: bytes,
        dhs_key: X25519PrivateKey | None,
        dhr: bytes | None,
        rk: bytes,
        cks: bytes | None,
        ckr: bytes | None,
        ns: int = 0,
        nr: int = 0,
        pn: int = 0,
        skipped: dict[tuple[bytes, int], tuple[bytes, float]] | None = None,
        max_skipped_keys: int = MAX_SKIPPED_KEYS,
        max_skipped_age: float = DEFAULT_MAX_SKIPPED_AGE,
    ) -> None:
        self._dhs_raw = dhs_raw
        self._dhs_key = dhs_key  # built from _dhs_raw on first use: loading a state needs no EC work
        self._dhs_pub = dhs_pub
        self._dhr = dhr
        self._rk = rk
        self._cks = cks
        self._ckr = ckr
        self._ns = ns
        self._nr = nr
        self._pn = pn
        self._skipped = {} if skipped is None else skipped  # insertion order = age order
        self.max_skipped_keys = max_skipped_keys
        self.max_skipped_age = max_skipped_age

    # -- initialisation (spec section 3.3) --

    @classmethod
    def init_alice(
        cls,
        sk: bytes,
        bob_public: bytes,
        *,
        rng_private: X25519PrivateKey | None = None,
        max_skipped_keys: int = MAX_SKIPPED_KEYS,
        max_skipped_age: float = DEFAULT_MAX_SKIPPED_AGE,
    ) -> Session:
        """RatchetInitAlice: a fresh (or given) DHs, DHr = Bob's ratchet key, RK/CKs = KDF_RK(SK, DH)."""
        if len(sk) != 32:
            raise ValueError("shared secret must be 32 bytes")
        dhs = X25519PrivateKey.generate() if rng_private is None else rng_private
        try:
            dh_out = dhs.exchange(X25519PublicKey.from_public_bytes(bob_public))
        except ValueError as e:
            raise BadHeader("unusable ratchet public key for Bob") from e
        rk, cks = kdf_rk(sk, dh_out)
        return cls(
            dhs_raw=dhs.private_bytes_raw(),
            dhs_pub=dhs.public_key().public_bytes_raw(),
            dhs_key=dhs,
            dhr=bytes(bob_public),
            rk=rk,
            cks=cks,
            ckr=None,
            max_skipped_keys=max_skipped_keys,
            max_skipped_age=max_skipped_age,
        )

    @classmethod
    def init_bob(
        cls,
        sk: bytes,
        bob_private: X25519PrivateKey,
        *,
        max_skipped_keys: int = MAX_SKIPPED_KEYS,
        max_skipped_age: float = DEFAULT_MAX_SKIPPED_AGE,
    ) -> Session:
        """RatchetInitBob: DHs = Bob's ratchet key pair, RK = SK, no chains until Alice's first message."""
        if len(sk) != 32:
            raise ValueError("shared secret must be 32 bytes")
        return cls(
            dhs_raw=bob_private.private_bytes_raw(),
            dhs_pub=bob_private.public_key().public_bytes_raw(),
            dhs_key=bob_private,
            dhr=None,
            rk=bytes(sk),
            cks=None,
            ckr=None,
            max_skipped_keys=max_skipped_keys,
            max_skipped_age=max_skipped_age,
        )

    # -- messages --

    def encrypt(self, plaintext: bytes, ad: bytes) -> bytes:
        """RatchetEncrypt: header || ciphertext || tag, advancing the sending chain."""
        ck = self._cks
        if ck is None:
            raise RatchetError("no sending chain yet: this side must receive a message first")
        ns = self._ns
        if ns >= _U32_MAX:
            raise RatchetError("sending chain exhausted")
        ck_next, mk = kdf_ck(ck)
        message = _seal(mk, self._dhs_pub + _pack(self._pn, ns), plaintext, ad)
        self._cks = ck_next
        self._ns = ns + 1
        return message

    def decrypt(self, message: bytes, ad: bytes, *, now: float = 0.0) -> bytes:
        """RatchetDecrypt, all-or-nothing: state changes only once the tag has verified.

        ``now`` stamps keys skipped by this message and ages out older skipped keys (never read
        from a clock here; any consistent, non-decreasing time base works).
        """
        size = len(message)
        if size < _MIN_MESSAGE or (size - HEADER_LEN - TAG_LEN) % 16:
            raise BadHeader(f"malformed message of {size} bytes")
        message = bytes(message)
        dh = message[:32]
        pn, n = _unpack_from(message, 32)
        skipped = self._skipped

        # TrySkippedMessageKeys
        entry = skipped.get((dh, n))
        if entry is not None and now - entry[1] <= self.max_skipped_age:
            plaintext = _open(entry[0], message, ad)
            del skipped[(dh, n)]
            self._expire(now)
            return plaintext

        if dh == self._dhr:
            nr = self._nr
            if n < nr:
                raise Replay(f"message {n} of the current chain was already received")
            if n - nr > MAX_SKIP:
                raise TooManySkipped(f"{n - nr} skipped messages in one chain")
            ck = self._ckr
            new: list[tuple[tuple[bytes, int], bytes]] = []
            while nr < n:
                ck, mk = kdf_ck(ck)
                new.append(((dh, nr), mk))
                nr += 1
            ck, mk = kdf_ck(ck)
            plaintext = _open(mk, message, ad)
            self._ckr = ck
            self._nr = n + 1
            self._store(new, now)
            return plaintext

        return self._decrypt_with_dh_step(message, ad, dh, pn, n, now)

    def _decrypt_with_dh_step(self, message: bytes, ad: bytes, dh: bytes, pn: int, n: int, now: float) -> bytes:
        # SkipMessageKeys(PN) on the old receiving chain, DHRatchet, SkipMessageKeys(N) on the new one.
        nr = self._nr
        if pn - nr > MAX_SKIP or n > MAX_SKIP:
            raise TooManySkipped(f"header skips {max(pn - nr, n)} messages in one chain")
        new: list[tuple[tuple[bytes, int], bytes]] = []
        ck = self._ckr
        if ck is not None:
            old = self._dhr
            while nr < pn:
                ck, mk = kdf_ck(ck)
                new.append(((old, nr), mk))
                nr += 1
        dhs = self._dhs_key
        if dhs is None:
            dhs = X25519PrivateKey.from_private_bytes(self._dhs_raw)
        try:
            their = X25519PublicKey.from_public_bytes(dh)
            dh_out = dhs.exchange(their)
        except ValueError as e:
            raise BadHeader("unusable ratchet public key in header") from e
        rk, ck = kdf_rk(self._rk, dh_out)
        for i in range(n):
            ck, mk = kdf_ck(ck)
            new.append(((dh, i), mk))
        ckr, mk = kdf_ck(ck)
        plaintext = _open(mk, message, ad)
        # Verified: finish DHRatchet with a new sending key pair and commit everything.
        fresh = X25519PrivateKey.generate()
        self._rk, self._cks = kdf_rk(rk, fresh.exchange(their))
        self._dhs_key = fresh
        self._dhs_raw = fresh.private_bytes_raw()
        self._dhs_pub = fresh.public_key().public_bytes_raw()
        self._dhr = dh
        self._ckr = ckr
        self._pn = self._ns
        self._ns = 0
        self._nr = n + 1
        self._store(new, now)
        return plaintext

    # -- skipped message keys --

    @property
    def skipped_count(self) -> int:
        """Skipped message keys currently held (expired ones linger until the next successful decrypt)."""
        return len(self._skipped)

    def _expire(self, now: float) -> None:
        # Entries were stored in time order, so expired ones sit at the front. If the caller's time
        # ever steps back, some may stay behind later entries; lookups check the age anyway.
        skipped = self._skipped
        horizon = now - self.max_skipped_age
        while skipped:
            oldest = next(iter(skipped))
            if skipped[oldest][1] >= horizon:
                break
            del skipped[oldest]

    def _store(self, new: list[tuple[tuple[bytes, int], bytes]], now: float) -> None:
        skipped = self._skipped
        if skipped:
            self._expire(now)
        for key, mk in new:
            skipped[key] = (mk, now)
        excess = len(skipped) - self.max_skipped_keys
        if excess > 0:
            for key in list(skipped)[:excess]:
                del skipped[key]

    # -- persistence --

    def to_bytes(self) -> bytes:
        """The whole state as msgpack (array-like; private key as its raw 32 bytes). Limits are not stored."""
        return _encode(
            _StateRecord(
                _STATE_VERSION,
                self._dhs_raw,
                self._dhs_pub,
                self._dhr,
                self._rk,
                self._cks,
                self._ckr,
                self._ns,
                self._nr,
                self._pn,
                [(dh, n, mk, t) for (dh, n), (mk, t) in self._skipped.items()],
            )
        )

    @classmethod
    def from_bytes(
        cls,
        raw: bytes,
        *,
        max_skipped_keys: int = MAX_SKIPPED_KEYS,
        max_skipped_age: float = DEFAULT_MAX_SKIPPED_AGE,
    ) -> Session:
        """Rebuild a session from to_bytes(); a corrupt or unknown-version state raises RatchetError."""
        try:
            r = _decode(raw)
        except msgspec.MsgspecError as e:
            raise RatchetError(f"corrupt session state: {e}") from e
        if r.version != _STATE_VERSION:
            raise RatchetError(f"unknown session state version {r.version}")
        return cls(
            dhs_raw=r.dhs_private,
            dhs_pub=r.dhs_public,
            dhs_key=None,
            dhr=r.dhr,
            rk=r.rk,
            cks=r.cks,
            ckr=r.ckr,
            ns=r.ns,
            nr=r.nr,
            pn=r.pn,
            skipped={(dh, n): (mk, t) for dh, n, mk, t in r.skipped},
            max_skipped_keys=max_skipped_keys,
            max_skipped_age=max_skipped_age,
        )
