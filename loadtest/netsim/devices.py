"""The simulated recipients' side of end-to-end encryption: keys derived from the netsim seed and
the phone number, the bundles served for them, PQXDH/X3DH as responder, the Double Ratchet
decryption of every message they receive, and the sender bundles the gateway publishes.

Pure: no I/O and no clock (callers pass now). Derived keys and sessions are cached; a failed
decryption leaves every session and one-time prekey exactly as it was.

Like a Signal client, a device keeps its previous sessions with a sender beside the current one:
when both sides start a session at the same moment (the sender's first message and the customer's
first message cross), each side's newest session differs from the other's, and messages keep
arriving in the one the receiver has just replaced. A message decrypts in whichever session it
belongs to, and that session becomes the current one, so both sides converge on one session.

Derivation (docs/protocol.md): seed bytes = b"netsim-v1:" + decimal seed; identity =
derive_identity(seed, number); signed prekey id 1 and PQ prekey id 1 from the purposes
"signed-prekey" and "pq-prekey"; one-time prekey n (n = 1, 2, ... per bundle served) from
"one-time-prekey".
"""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.crypto import agreement
from gateway.crypto.identity import (
    KEY_LEN,
    MLKEM1024_SEED_LEN,
    BadSignature,
    IdentityKey,
    InvalidKey,
    MalformedMessage,
    PrekeyBundle,
    derive_identity,
    derive_one_time_prekey,
    decode_ec,
    derive_secret,
    make_bundle,
    make_pq_prekey,
    make_signed_prekey,
)
from gateway.crypto.ratchet import BadHeader, BadTag, RatchetError, Replay, Session, TooManySkipped
from gateway.e2e import envelope

SIGNED_PREKEY_ID = 1
PQ_PREKEY_ID = 1
DEVICE_CACHE_MAX = 100_000
PREVIOUS_SESSIONS_MAX = 8  # older sessions a device keeps per sender and still decrypts in (libsignal keeps 40)
MAX_SENDER_POOL = 10_000

_RATCHET_FAILURES = ((BadTag, "bad_tag"), (Replay, "replay"), (TooManySkipped, "too_many_skipped"),
                     (BadHeader, "bad_header"))


def seed_bytes(seed: int) -> bytes:
    return b"netsim-v1:" + str(seed).encode()


class Device:
    """One simulated recipient's long-term keys (derived, so they can be dropped and rebuilt)."""

    __slots__ = ("identity", "signed_prekey", "ratchet_private", "pq_prekey", "bundle_base")

    def __init__(self, seed: bytes, number: str) -> None:
        self.identity = derive_identity(seed, number)
        spk_secret = derive_secret(seed, number, b"signed-prekey", SIGNED_PREKEY_ID, KEY_LEN)
        self.signed_prekey = make_signed_prekey(self.identity, SIGNED_PREKEY_ID, spk_secret)
        self.ratchet_private = spk_secret  # Bob's first ratchet key pair is his signed prekey
        pq_seed = derive_secret(seed, number, b"pq-prekey", PQ_PREKEY_ID, MLKEM1024_SEED_LEN)
        self.pq_prekey = make_pq_prekey(self.identity, PQ_PREKEY_ID, pq_seed)
        self.bundle_base = make_bundle(self.identity, self.signed_prekey, None, self.pq_prekey)


class _Inbound:
    """A device's session with one sender: started by the sender (the device is Bob) or by the
    device itself (Alice: `header` is sent with every message until the sender answers)."""

    __slots__ = ("ratchet", "ad", "base_key", "header")

    def __init__(self, ratchet: Session, ad: bytes, base_key: bytes, header: bytes | None = None) -> None:
        self.ratchet = ratchet
        self.ad = ad
        self.base_key = base_key
        self.header = header


class _Published:
    __slots__ = ("bundle", "identity", "one_time", "handed_out")

    def __init__(self, bundle: PrekeyBundle) -> None:
        self.bundle = bundle
        self.identity = bundle.identity_key
        self.one_time: dict[int, bytes] = {}
        self.handed_out: set[int] = set()  # ids served once: never served again, even if republished


class Devices:
    def __init__(self, seed: int) -> None:
        self._seed = seed_bytes(seed)
        self._devices: dict[str, Device] = {}
        self._next_one_time: dict[str, int] = {}
        self._used_one_time: dict[str, set[int]] = {}
        self._sessions: dict[tuple[str, str], list[_Inbound]] = {}  # current first, then previous ones
        self._published: dict[str, _Published] = {}
        self._published_sorted: list[str] | None = None
        self._signatures = agreement.SignatureCache(1024)
        self.decrypted = 0
        self.failures = 0
        self.failure_reasons: dict[str, int] = {}
        self.bundles_served = 0
        self.keys_published = 0
        self.customer_sessions = 0  # sessions customers started toward senders
        self.customer_encrypted = 0

    # -- recipients' keys --

    def device(self, number: str) -> Device:
        dev = self._devices.get(number)
        if dev is None:
            if len(self._devices) >= DEVICE_CACHE_MAX:
                del self._devices[next(iter(self._devices))]
            dev = self._devices[number] = Device(self._seed, number)
        return dev

    def recipient_bundle(self, number: str) -> bytes:
        """The recipient's bundle with its next one-time prekey."""
        otk_id = self._next_one_time.get(number, 1)
        self._next_one_time[number] = otk_id + 1
        base = self.device(number).bundle_base
        otk = derive_one_time_prekey(self._seed, number, otk_id)
        self.bundles_served += 1
        return PrekeyBundle(base.identity_key, base.signed_prekey_id, base.signed_prekey,
                            base.signed_prekey_signature, otk_id, otk.encoded, base.pq_prekey_id,
                            base.pq_prekey, base.pq_prekey_signature).encode()

    # -- senders' published keys --

    def publish(self, sender: str, bundle: bytes, one_time: list[tuple[int, bytes]], replace: bool) -> int | None:
        """Store a sender's bundle and add its one-time prekeys; the pool size, or None if refused
        (malformed, or a signature that does not verify)."""
        try:
            decoded = PrekeyBundle.decode(bundle)
            identity = IdentityKey(decoded.identity_key)
            identity.verify(decoded.signed_prekey_signature, decoded.signed_prekey)
            if decoded.pq_prekey is not None:
                identity.verify(decoded.pq_prekey_signature, decoded.pq_prekey)
        except (MalformedMessage, InvalidKey, BadSignature, ValueError):
            return None
        current = self._published.get(sender)
        entry = _Published(decoded)
        if current is not None and current.identity == decoded.identity_key:
            entry.handed_out = current.handed_out  # a republished pool must not serve a prekey twice
            if not replace:
                entry.one_time = current.one_time
        for key_id, public in one_time:
            if len(entry.one_time) >= MAX_SENDER_POOL:
                break
            if key_id in entry.handed_out:
                continue
            if isinstance(public, bytes) and len(public) == 33 and public[0] == 5:
                entry.one_time[key_id] = public
        if sender not in self._published:
            self._published_sorted = None
        self._published[sender] = entry
        self.keys_published += 1
        return len(entry.one_time)

    def is_published(self, number: str) -> bool:
        return number in self._published

    def sender_bundle(self, number: str) -> tuple[bytes, int]:
        """A published sender's bundle with one of its one-time prekeys (handed out once), and
        how many are left."""
        entry = self._published[number]
        b = entry.bundle
        otk_id = otk = None
        if entry.one_time:
            otk_id = next(iter(entry.one_time))
            otk = entry.one_time.pop(otk_id)
            entry.handed_out.add(otk_id)
        self.bundles_served += 1
        return (PrekeyBundle(b.identity_key, b.signed_prekey_id, b.signed_prekey, b.signed_prekey_signature,
                             otk_id, otk, b.pq_prekey_id, b.pq_prekey, b.pq_prekey_signature).encode(),
                len(entry.one_time))

    def published_numbers(self) -> list[str]:
        """The senders with published keys, sorted (inbound traffic picks among them)."""
        if self._published_sorted is None:
            self._published_sorted = sorted(self._published)
        return self._published_sorted

    def published_identity(self, number: str) -> bytes | None:
        entry = self._published.get(number)
        return None if entry is None else entry.identity

    # -- customers sending to senders --

    def compose(self, customer: str, sender: str, plaintext: bytes) -> tuple[bytes, int | None]:
        """Encrypt one message from `customer` to the published `sender`: in the session they have
        (one the sender started, or one the customer started earlier: its initial header rides
        along until the sender answers), else in a new session from the sender's published bundle
        (PQXDH as initiator, drawing one of its one-time prekeys). Returns (envelope, one-time
        prekeys left when a bundle was drawn, else None). KeyError when the sender has published
        no keys; BadSignature / InvalidKey for a bundle that does not verify."""
        key = (sender, customer)
        sessions = self._sessions.get(key)
        session = sessions[0] if sessions else None
        left = None
        if session is None:
            bundle_bytes, left = self.sender_bundle(sender)
            bundle = PrekeyBundle.decode(bundle_bytes)
            init = agreement.initiate(self.device(customer).identity, bundle, signatures=self._signatures)
            ratchet = Session.init_alice(init.session.shared_key, decode_ec(bundle.signed_prekey))
            session = _Inbound(ratchet, init.session.associated_data, init.header.ephemeral_key,
                               init.header.encode())
            self._install(key, session)
            self.customer_sessions += 1
        message = session.ratchet.encrypt(plaintext, session.ad)
        self.customer_encrypted += 1
        return envelope.encode(session.header, message), left

    # -- receiving --

    def receive(self, sender: str, recipient: str, payload: bytes, now: float) -> tuple[bytes | None, str | None]:
        """Decrypt one message: (plaintext, None) or (None, failure reason)."""
        plaintext, reason = self._receive(sender, recipient, payload, now)
        if reason is None:
            self.decrypted += 1
        else:
            self.failures += 1
            self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1
        return plaintext, reason

    def _receive(self, sender: str, recipient: str, payload: bytes, now: float) -> tuple[bytes | None, str | None]:
        try:
            header_bytes, message = envelope.decode(payload)
        except envelope.EnvelopeError:
            return None, "malformed_envelope"
        key = (sender, recipient)
        sessions = self._sessions.get(key, ())
        if header_bytes is None:
            if not sessions:
                return None, "no_session"
            first_reason = None
            for i, session in enumerate(sessions):  # the current session, then the previous ones
                plaintext, reason = self._decrypt(session, message, now)
                if reason is None:
                    self._promote(key, i)
                    return plaintext, None
                first_reason = first_reason or reason
            return None, first_reason
        try:
            header = agreement.InitialHeader.decode(header_bytes)
        except MalformedMessage:
            return None, "malformed_header"
        for i, session in enumerate(sessions):
            if session.base_key == header.ephemeral_key:  # a prekey message of a session we have
                plaintext, reason = self._decrypt(session, message, now)
                if reason is None:
                    self._promote(key, i)
                return plaintext, reason
        known = self.published_identity(sender)
        if known is not None and known != header.identity_key:
            return None, "identity_mismatch"
        return self._new_session(key, header, message, now)

    def _new_session(self, key: tuple[str, str], header, message: bytes, now: float):
        recipient = key[1]
        dev = self.device(recipient)
        used = self._used_one_time.get(recipient)
        otk_id = header.one_time_prekey_id

        def one_time(key_id: int):
            if used is not None and key_id in used:
                return None
            return derive_one_time_prekey(self._seed, recipient, key_id)

        try:
            agreed = agreement.respond(dev.identity, header, signed_prekeys={SIGNED_PREKEY_ID: dev.signed_prekey},
                                       one_time_prekeys=one_time, pq_prekeys={PQ_PREKEY_ID: dev.pq_prekey})
        except agreement.AgreementError:
            return None, "unknown_prekey"
        except (InvalidKey, ValueError):
            return None, "bad_key"
        ratchet = Session.init_bob(agreed.shared_key, X25519PrivateKey.from_private_bytes(dev.ratchet_private))
        inbound = _Inbound(ratchet, agreed.associated_data, header.ephemeral_key)
        plaintext, reason = self._decrypt(inbound, message, now)
        if reason is None:
            self._install(key, inbound)
            if otk_id is not None:
                self._used_one_time.setdefault(recipient, set()).add(otk_id)
        return plaintext, reason

    def _install(self, key: tuple[str, str], session: _Inbound) -> None:
        """`session` becomes the pair's current one; the one it replaces is kept as a previous one."""
        sessions = self._sessions.setdefault(key, [])
        sessions.insert(0, session)
        del sessions[PREVIOUS_SESSIONS_MAX + 1:]

    def _promote(self, key: tuple[str, str], i: int) -> None:
        """A message arrived in previous session i: the sender uses it, so it becomes the current one."""
        if i:
            sessions = self._sessions[key]
            sessions.insert(0, sessions.pop(i))

    @staticmethod
    def _decrypt(session: _Inbound, message: bytes, now: float):
        try:
            plaintext = session.ratchet.decrypt(message, session.ad, now=now)
            session.header = None  # the sender answered: the session is confirmed
            return plaintext, None
        except RatchetError as exc:
            for cls, name in _RATCHET_FAILURES:
                if isinstance(exc, cls):
                    return None, name
            return None, "ratchet_error"

    def stats(self) -> dict:
        return {
            "decrypted": self.decrypted,
            "decrypt_failures": self.failures,
            "decrypt_failure_reasons": dict(self.failure_reasons),
            "sessions": len(self._sessions),
            "bundles_served": self.bundles_served,
            "keys_published": self.keys_published,
            "customer_sessions": self.customer_sessions,
            "customer_encrypted": self.customer_encrypted,
        }
