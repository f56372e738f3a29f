"""The receiving side of a sender's sessions: open one inbound envelope with the sender's key book
and the pair's current session, as PQXDH/X3DH responder when the customer starts a new session
(identity, signed prekey, one-time prekey, ML-KEM prekey, then RatchetInitBob), else in the
session the pair has (one the customer started, or one the gateway started and the customer
answers in), or in one of the pair's previous sessions, which then becomes current again (as
libsignal does: first messages that cross leave each side with the other's session as current).

Pure: no I/O, no clock (`now_ms` comes in), nothing installed or deleted (the pair's session
advances in place, and a previous session that decrypts is promoted in place). A failure raises
`Undecryptable` with a stable kind and leaves the session exactly as it was (the ratchet's
decryption is all-or-nothing and a new session is only built beside the old one); the caller
installs a new session, deletes the one-time prekey and stores both in one commit.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from gateway.crypto import agreement
from gateway.crypto.identity import InvalidKey, MalformedMessage
from gateway.crypto.ratchet import BadHeader, BadTag, RatchetError, Replay, Session, TooManySkipped
from gateway.e2e import envelope
from gateway.e2e.keys import SenderKeys
from gateway.e2e.sessions import LiveSession

_RATCHET_KINDS = ((BadTag, "bad_tag"), (Replay, "replay"), (TooManySkipped, "too_many_skipped"),
                  (BadHeader, "bad_header"))


class Undecryptable(Exception):
    """An inbound envelope that yields no plaintext. `kind` is one of malformed_envelope,
    malformed_header, no_session, unknown_prekey, bad_key, bad_tag, replay, too_many_skipped,
    bad_header (the same names netsim uses for the messages it cannot decrypt)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Opened(NamedTuple):
    plaintext: bytes
    session: LiveSession  # the session that decrypted it: the existing one (advanced), or a new one
    new: bool  # True: a new session, not yet installed
    one_time_prekey_id: int | None  # the one-time prekey a new session used (delete it with the commit)


def open_envelope(book: SenderKeys, existing: LiveSession | None, payload: bytes, now_ms: int,
                  prekey_used: Callable[[int], bool] = lambda key_id: False) -> Opened:
    """Decrypt one inbound envelope. `prekey_used(id)` says whether a one-time prekey was already
    consumed (the store's record, which outlives the key book's copy until it is saved)."""
    try:
        header_bytes, message = envelope.decode(payload)
    except envelope.EnvelopeError:
        raise Undecryptable("malformed_envelope") from None
    now_s = now_ms / 1000.0
    if header_bytes is None:
        if existing is None:
            raise Undecryptable("no_session")
        try:
            plaintext = _decrypt(existing, message, now_s)
        except Undecryptable as current_failed:
            plaintext = _in_previous(existing, message, now_s)
            if plaintext is None:
                raise current_failed from None
        if existing.header is not None:
            existing.confirm()  # the customer answered in the session the gateway started
        return Opened(plaintext, existing, False, None)
    try:
        header = agreement.InitialHeader.decode(header_bytes)
    except MalformedMessage:
        raise Undecryptable("malformed_header") from None
    if existing is not None:
        if existing.base_key == header.ephemeral_key:
            return Opened(_decrypt(existing, message, now_s), existing, False, None)
        for i, old in enumerate(existing.previous):
            if old.base_key == header.ephemeral_key:  # another prekey message of a session kept aside
                plaintext = _decrypt(old, message, now_s)
                existing.promote(i)
                return Opened(plaintext, existing, False, None)
    return _new_session(book, header, message, now_ms, prekey_used)


def _in_previous(existing: LiveSession, message: bytes, now_s: float) -> bytes | None:
    """Try the pair's previous sessions, newest first; the one that decrypts becomes current."""
    for i, old in enumerate(existing.previous):
        try:
            plaintext = _decrypt(old, message, now_s)
        except Undecryptable:
            continue
        existing.promote(i)
        return plaintext
    return None


def _new_session(book: SenderKeys, header: agreement.InitialHeader, message: bytes, now_ms: int,
                 prekey_used: Callable[[int], bool]) -> Opened:
    def one_time(key_id: int):
        return None if prekey_used(key_id) else book.peek_one_time(key_id)

    try:
        agreed = agreement.respond(book.identity, header, signed_prekeys=book.signed_prekey,
                                   one_time_prekeys=one_time, pq_prekeys=book.pq_prekey)
    except agreement.AgreementError:
        raise Undecryptable("unknown_prekey") from None
    except (InvalidKey, MalformedMessage, ValueError):
        raise Undecryptable("bad_key") from None
    bob_private = book.signed_prekey_private(header.signed_prekey_id)
    if bob_private is None:  # respond() found it a moment ago; only a concurrent rotation could do this
        raise Undecryptable("unknown_prekey")
    try:
        ratchet = Session.init_bob(agreed.shared_key, bob_private)
    except RatchetError:
        raise Undecryptable("bad_key") from None
    session = LiveSession(ratchet, agreed.associated_data, header.identity_key, None, now_ms,
                          base_key=header.ephemeral_key)
    plaintext = _decrypt(session, message, now_ms / 1000.0)
    return Opened(plaintext, session, True, header.one_time_prekey_id)


def _decrypt(session: LiveSession, message: bytes, now_s: float) -> bytes:
    try:
        return session.ratchet.decrypt(message, session.ad, now=now_s)
    except RatchetError as exc:
        for cls, kind in _RATCHET_KINDS:
            if isinstance(exc, cls):
                raise Undecryptable(kind) from None
        raise Undecryptable("bad_header") from None
