"""Sessions: one per (sender, recipient), agreed by X3DH/PQXDH from the recipient's
bundle and advanced by the Double Ratchet; their stored form (sealed at rest, it holds keys) and
the hot cache the dispatch path reads so that no record is decoded per message.

Pure: no I/O beyond the read transaction a caller hands to `load_many`, no clock (time comes in).
A session's state is written in the same commit as the ciphertexts it produced; the cache only
ever runs ahead of the store between an encryption and that commit.
"""
from __future__ import annotations

import msgspec

from gateway.crypto import agreement
from gateway.crypto.identity import IdentityKeyPair, PrekeyBundle, decode_ec
from gateway.crypto.ratchet import RatchetError, Session
from gateway.crypto.seal import SealError, Sealer
from gateway.decoding import DECODE_ERRORS
from gateway.e2e import envelope

RECORD_VERSION = 1
# Older sessions of a pair kept beside the current one, to read messages the customer still sends in
# them (first messages that crossed, a session replaced while the customer was writing); libsignal
# keeps 40 per record, ours are sealed into every commit that touches the pair, so a few.
PREVIOUS_MAX = 4


class SessionRecord(msgspec.Struct, array_like=True):
    version: int
    state: bytes  # ratchet.Session.to_bytes()
    ad: bytes  # Encode(IK_sender) || Encode(IK_recipient), 66 bytes
    remote_identity: bytes  # the recipient's raw Ed25519 identity key, as its bundle carried it
    header: bytes | None  # the encoded InitialHeader, sent with every message until confirmed
    created_ms: int
    base_key: bytes | None = None  # EncodeEC(EK_A) of the customer's initial header (sessions they started)
    previous: list[bytes] = msgspec.field(default_factory=list)  # older sessions' records, newest first


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SessionRecord).decode


class SessionRecordError(Exception):
    """A stored session that cannot be opened or decoded."""


def session_key(sender: str, recipient: str) -> bytes:
    return sender.encode() + b"\0" + recipient.encode()


class LiveSession:
    __slots__ = ("ratchet", "ad", "remote_identity", "header", "created_ms", "base_key", "broken", "previous")

    def __init__(self, ratchet: Session, ad: bytes, remote_identity: bytes, header: bytes | None,
                 created_ms: int, base_key: bytes | None = None, previous: list[LiveSession] | None = None) -> None:
        self.ratchet = ratchet
        self.ad = ad
        self.remote_identity = remote_identity
        self.header = header
        self.created_ms = created_ms
        self.base_key = base_key  # the customer's ephemeral key when the customer started the session
        # The recipient could not decrypt a message of this session (it lost its state, or the
        # prekey was refused): no more messages in it; the next one agrees a new session, which
        # replaces this object's contents. Never stored: a restart retries the stored state once.
        self.broken = False
        # Older sessions of the pair, newest first (no `previous` of their own): messages that arrive
        # in one of them still decrypt, and that one becomes current again (`promote`).
        self.previous: list[LiveSession] = previous if previous is not None else []

    def replace_with(self, other: LiveSession) -> None:
        """Become `other` in place (a customer started a new session, or a broken one is replaced):
        whoever holds this object, the dispatch path included, continues in the new session and
        commits its state. The session it was is kept first among `previous`."""
        self.previous = [self._detached(), *self.previous][:PREVIOUS_MAX]
        self._take(other)

    def promote(self, i: int) -> None:
        """A message arrived in previous session i: the customer uses it, so it becomes current (in
        place, as `replace_with`) and the current one goes first among `previous`."""
        chosen = self.previous.pop(i)
        self.previous.insert(0, self._detached())
        self._take(chosen)

    def _detached(self) -> LiveSession:
        return LiveSession(self.ratchet, self.ad, self.remote_identity, self.header, self.created_ms, self.base_key)

    def _take(self, other: LiveSession) -> None:
        self.ratchet, self.ad, self.remote_identity = other.ratchet, other.ad, other.remote_identity
        self.header, self.created_ms, self.base_key = other.header, other.created_ms, other.base_key
        self.broken = other.broken

    def encrypt(self, plaintext: bytes) -> bytes:
        """One ratchet step: the envelope to send (prekey kind while unconfirmed)."""
        return envelope.encode(self.header, self.ratchet.encrypt(plaintext, self.ad))

    def confirm(self) -> None:
        """The recipient has processed a message of this session: stop sending the initial header."""
        self.header = None

    def to_bytes(self) -> bytes:
        return _encode(SessionRecord(RECORD_VERSION, self.ratchet.to_bytes(), self.ad, self.remote_identity,
                                     self.header, self.created_ms, self.base_key,
                                     [p.to_bytes() for p in self.previous]))

    @classmethod
    def from_bytes(cls, raw: bytes) -> LiveSession:
        try:
            r = _decode(raw)
            if r.version != RECORD_VERSION:
                raise SessionRecordError(f"unknown session record version {r.version}")
            previous = [cls.from_bytes(p) for p in r.previous[:PREVIOUS_MAX]]
            return cls(Session.from_bytes(r.state), r.ad, r.remote_identity, r.header, r.created_ms, r.base_key,
                       previous)
        except (*DECODE_ERRORS, RatchetError) as exc:
            raise SessionRecordError(f"corrupt session record: {exc}") from None

    def seal(self, sealer: Sealer, key: bytes) -> bytes:
        return sealer.seal(self.to_bytes(), key)

    @classmethod
    def open(cls, sealer: Sealer, key: bytes, blob: bytes) -> LiveSession:
        try:
            return cls.from_bytes(sealer.open(blob, key))
        except SealError as exc:
            raise SessionRecordError(str(exc)) from None


def start_session(identity: IdentityKeyPair, bundle: PrekeyBundle, now_ms: int,
                  signatures: agreement.SignatureCache | None = None,
                  ephemerals: agreement.EphemeralKeyPool | None = None) -> LiveSession:
    """Alice's side of a new session: PQXDH (X3DH without a PQ prekey) from the recipient's bundle,
    then RatchetInitAlice with the recipient's signed prekey as its first ratchet key. Raises
    BadSignature / InvalidKey for a bundle that must not be used. With `ephemerals`, the ephemeral
    key EK_A and the first ratchet key pair are two keys taken from that pool (made ahead of need);
    they are distinct, as the specifications have them: EK_A is deleted once SK is derived, while
    the ratchet key lives in the session state until the recipient's reply."""
    ek = None if ephemerals is None else ephemerals.take()
    dhs = None if ephemerals is None else ephemerals.take()
    init = agreement.initiate(identity, bundle, ephemeral=ek, signatures=signatures)
    ratchet = Session.init_alice(init.session.shared_key, decode_ec(bundle.signed_prekey), rng_private=dhs)
    return LiveSession(ratchet, init.session.associated_data, bundle.identity_key, init.header.encode(), now_ms)


class SessionCache:
    """Live sessions by (sender, recipient) key. Bounded: past `capacity` the oldest entries are
    dropped (call `trim` only after a commit, when every entry equals its stored record)."""

    __slots__ = ("capacity", "_live")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._live: dict[bytes, LiveSession] = {}

    def get(self, key: bytes) -> LiveSession | None:
        return self._live.get(key)

    def put(self, key: bytes, live: LiveSession) -> None:
        self._live[key] = live

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: bytes) -> bool:
        return key in self._live

    def trim(self) -> int:
        excess = len(self._live) - self.capacity
        if excess <= 0:
            return 0
        live = self._live
        for key in list(live)[:excess]:  # dict order: oldest inserted first
            del live[key]
        return excess


def load_many(txn, db, sealer: Sealer, keys: list[bytes]) -> tuple[dict[bytes, LiveSession], list[bytes]]:
    """Stored sessions for `keys` from a read transaction: (found, unreadable keys)."""
    found: dict[bytes, LiveSession] = {}
    bad: list[bytes] = []
    for key in keys:
        blob = txn.get(key, db=db)
        if blob is None:
            continue
        try:
            found[key] = LiveSession.open(sealer, key, bytes(blob))
        except SessionRecordError:
            bad.append(key)
    return found, bad
