"""Stored record shapes (msgpack via msgspec, array-like for compactness) and key layouts.

Keys are bytes that sort in the order scans need: message ids are ULID text (time-ordered),
composite keys join their parts with a NUL byte. No record here ever holds an API key in clear.
"""
from __future__ import annotations

import msgspec
from msgspec import Struct

TABLES = (
    "messages",  # id -> MessageRecord (metadata + status timeline; never the body)
    "pending",  # id -> PendingRecord (accepted, waiting for the scheduler)
    "outbox",  # id -> OutboxRecord (committed frame payload, waiting for the network's ack)
    "idempotency",  # workspace \0 key -> IdempotencyRecord
    "idempotency_at",  # made-at ms (uint64 big-endian) + workspace \0 key -> b"": the expiry index
    "api_keys",  # key id -> ApiKeyRecord (revoked ones stay, marked)
    "limiter",  # b"s\0" sender -> (tokens, last) (b"p\0" sender \0 recipient: pair rows of earlier versions)
    "pairlog_a",  # record number (uint64 big-endian) -> pair bucket state (store/pairlog.py), two tables
    "pairlog_b",  # taking turns
    "senders",  # number -> SenderOverride set at runtime through the admin API
    "webhook_outbox",  # endpoint id \0 event id -> event JSON
    "webhook_dead",  # endpoint id \0 event id -> DeadLetter
    "sessions",  # sender \0 recipient -> sealed e2e.sessions.SessionRecord (ratchet state; holds keys)
    # policy (records in store/policy_ops.py)
    "word_lists",  # workspace \0 category -> WordListRecord (sensitive words set through the admin API)
    "reviews",  # message id -> ReviewRecord (held for a supervisor; sealed payload, hits)
    "policy_events",  # event id -> PolicyEventRecord (every block, mask, flag and review, with its terms)
    "opt_outs",  # workspace \0 sender \0 contact -> OptOutRecord
    "audit",  # event id -> AuditRecord (who changed what, when)
    # inbound (ops.receive_inbound)
    "inbound",  # message id -> InboundRecord (a customer's message; its text sealed)
    "inbound_ids",  # network message id -> message id (dedupe of re-sent inbound frames)
    "used_prekeys",  # sender \0 one-time prekey id (uint32 big-endian) -> unix ms it was used
)

URGENT, NORMAL, BULK = 0, 1, 2
PRIORITY_NAMES = ("urgent", "normal", "bulk")
PRIORITY_BY_NAME = {name: i for i, name in enumerate(PRIORITY_NAMES)}

# Status ranks: a receipt only ever moves a message forward; failed ends it (unless already delivered).
STATUS_RANK = {"accepted": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}
TERMINAL = frozenset(("delivered", "read", "failed"))


class MessageRecord(Struct, array_like=True, gc=False):
    # gc=False: decoded and re-encoded for every status change; it holds plain data, no cycles.
    workspace: str
    sender: str
    recipient: str
    priority: int
    client_ref: str | None
    status: str
    events: list[tuple[str, int]]  # (status, unix ms)
    reason: str = ""
    throttled: int = 0


class PendingRecord(Struct, array_like=True):
    sender: str
    recipient: str
    priority: int
    payload: bytes


class OutboxRecord(Struct, array_like=True):
    """A committed Submit frame waiting for the network's ack. `payload` is the end-to-end
    envelope exactly as sent (never encrypted again): ratchet ciphertext, already unreadable
    without the recipient's keys, so it is stored as it is. Records written before that change
    hold it sealed under a data key (4 or 5 fields, `sealed` left out: True) and are opened
    when sent again."""

    sender: str
    recipient: str
    priority: int
    payload: bytes
    not_before_ms: int = 0  # set after a throttle answer
    sealed: bool = True  # payload sealed at rest (records of earlier versions); new ones write False


class IdempotencyRecord(Struct, array_like=True):
    fingerprint: bytes
    status: int
    body: bytes
    created_ms: int


class ApiKeyRecord(Struct, array_like=True):
    secret_hash: bytes  # sha256 of the secret part
    workspace: str
    role: str
    created_ms: int
    label: str = ""
    revoked_ms: int = 0  # when it was revoked (0: in force); the record stays, for the listing and audit


class SenderOverride(Struct, array_like=True):
    rate_per_minute: int
    burst: int
    tier: str | None = None
    updated_ms: int = 0


class DeadLetter(Struct, array_like=True):
    event: bytes
    attempts: int
    last_error: str
    at_ms: int


class TextPayload(Struct, tag="text", tag_field="type"):
    """The plaintext of a message: sealed in the pending record; the Double Ratchet encrypts these
    bytes into the envelope that travels in Submit.payload."""

    body: str


class InboundRecord(Struct, array_like=True):
    """A customer's message to one of the workspace's numbers, as received from the network."""

    workspace: str  # "" when the number is no sender of this gateway
    sender: str  # the customer
    recipient: str  # the gateway's number
    network_id: str
    sent_ms: int  # when the customer sent it (the network's at_ms)
    received_ms: int  # when the gateway committed it
    status: str  # "received" | "undecryptable"
    reason: str = ""  # why it could not be read (undecryptable_<kind>)
    payload: bytes = b""  # sealed TextPayload bytes bound to the message id; empty when undecryptable


ENCODER = msgspec.msgpack.Encoder()
message_decoder = msgspec.msgpack.Decoder(MessageRecord)
pending_decoder = msgspec.msgpack.Decoder(PendingRecord)
outbox_decoder = msgspec.msgpack.Decoder(OutboxRecord)
idempotency_decoder = msgspec.msgpack.Decoder(IdempotencyRecord)
api_key_decoder = msgspec.msgpack.Decoder(ApiKeyRecord)
sender_override_decoder = msgspec.msgpack.Decoder(SenderOverride)
limiter_decoder = msgspec.msgpack.Decoder(tuple[float, float])
dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)
inbound_decoder = msgspec.msgpack.Decoder(InboundRecord)


def limiter_sender_key(sender: str) -> bytes:
    return b"s\0" + sender.encode()


def used_prekey_key(sender: str, key_id: int) -> bytes:
    return sender.encode() + b"\0" + key_id.to_bytes(4, "big")


def idempotency_key(workspace: str, key: str) -> bytes:
    return workspace.encode() + b"\0" + key.encode()
