"""Stored records and writer operations of the policy: word lists set through the API, messages held
for review, the log of policy actions, opt-outs, and the audit log of administrative changes.

Ops follow store/ops.py: `op(txn, dbs, arg) -> result`, run in the writer thread, no trio, no clock
reads, no message text in clear (held payloads are sealed like pending ones). Webhook event ids are
made inside the op, so events reach the webhook outbox in commit order.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import orjson
from msgspec import Struct

from gateway.ids import IdGenerator
from gateway.policy.engine import PolicyHit, WordList
from gateway.store import ops
from gateway.store import records as R

_enc = R.ENCODER.encode
encode = _enc
HELD = "held"


class WordListRecord(Struct, array_like=True):
    words: WordList
    updated_ms: int
    updated_by: str  # API key id


class ReviewRecord(Struct, array_like=True):
    workspace: str
    sender: str
    recipient: str
    priority: int
    client_ref: str | None
    payload: bytes  # sealed TextPayload bound to the message id, exactly as a pending record holds it
    hits: list[PolicyHit]
    held_ms: int


class PolicyEventRecord(Struct, array_like=True):
    at_ms: int
    workspace: str
    action: str  # block | review | mask | flag (the verdict)
    message_id: str | None  # None for a blocked request: nothing was stored
    sender: str
    recipient: str
    hits: list[PolicyHit]


class OptOutRecord(Struct, array_like=True):
    at_ms: int
    source: str  # "keyword" (the contact wrote STOP) | "admin"
    detail: str  # the keyword and its language, or the API key id


class AuditRecord(Struct, array_like=True):
    at_ms: int
    actor: str  # API key id, or "contact:<number>" for a keyword
    role: str
    workspace: str
    action: str  # e.g. "sensitive_words.put", "review.approve", "opt_out.set"
    target: str
    detail: dict[str, Any] = {}


word_list_decoder = msgspec.msgpack.Decoder(WordListRecord)
review_decoder = msgspec.msgpack.Decoder(ReviewRecord)
policy_event_decoder = msgspec.msgpack.Decoder(PolicyEventRecord)
opt_out_decoder = msgspec.msgpack.Decoder(OptOutRecord)
audit_decoder = msgspec.msgpack.Decoder(AuditRecord)


def word_list_key(workspace: str, category: str) -> bytes:
    return workspace.encode() + b"\0" + category.encode()


def opt_out_key(workspace: str, sender: str, contact: str) -> bytes:
    return workspace.encode() + b"\0" + sender.encode() + b"\0" + contact.encode()


Audit = tuple[bytes, bytes]  # (audit key, encoded AuditRecord)


def _audit(txn, dbs, audit: Audit) -> None:
    txn.put(audit[0], audit[1], db=dbs["audit"])


# --- accept with policy effects ----------------------------------------------------------------


class HeldItem(NamedTuple):
    id: str
    message: bytes  # encoded MessageRecord with status "held"
    review: bytes  # encoded ReviewRecord


class PolicyAcceptArg(NamedTuple):
    accept: ops.AcceptArg  # the messages that go out now (masked text already in their payload)
    held: list[HeldItem]
    records: list[tuple[bytes, bytes]]  # policy_events
    flags: list[tuple[list[bytes], dict]]  # (webhook endpoints, policy.flagged event data)
    events: IdGenerator | None  # webhook event ids (the writer thread's generator)


def accept_with_policy(txn, dbs, arg: PolicyAcceptArg):
    """ops.accept, plus in the same commit: held messages (messages + reviews, never pending), the
    policy records, and one policy.flagged webhook event per endpoint (webhook_outbox). Returns what
    ops.accept returns: the earlier answer of a reused Idempotency-Key (then nothing is written)."""
    earlier = ops.accept(txn, dbs, arg.accept)
    if earlier is not None:
        return earlier
    put = txn.put
    for item in arg.held:
        key = item.id.encode()
        put(key, item.message, db=dbs["messages"])
        put(key, item.review, db=dbs["reviews"])
    for key, record in arg.records:
        put(key, record, db=dbs["policy_events"])
    for endpoints, data in arg.flags:
        event_id = arg.events.new()
        body = orjson.dumps({"id": event_id, "type": "policy.flagged", "data": data})
        for endpoint in endpoints:
            put(endpoint + b"\0" + event_id.encode(), body, db=dbs["webhook_outbox"])
    return None


def put_policy_records(txn, dbs, arg: list[tuple[bytes, bytes]]) -> None:
    """policy_events (blocked requests, which store nothing else)."""
    for key, record in arg:
        txn.put(key, record, db=dbs["policy_events"])


# --- word lists and opt-outs -----------------------------------------------------------------


def put_word_list(txn, dbs, arg: tuple[bytes, bytes | None, Audit]) -> bool:
    """word_lists + audit: set (or with None, delete) one list. Returns whether a list was there."""
    key, record, audit = arg
    db = dbs["word_lists"]
    existed = txn.get(key, db=db) is not None
    if record is None:
        txn.delete(key, db=db)
    else:
        txn.put(key, record, db=db)
    _audit(txn, dbs, audit)
    return existed


def set_opt_out(txn, dbs, arg: tuple[bytes, bytes | None, Audit]) -> int:
    """opt_outs + audit: record (or with None, clear) an opt-out. Returns the change in the number of
    opt-outs: +1, -1 or 0."""
    key, record, audit = arg
    db = dbs["opt_outs"]
    existed = txn.get(key, db=db) is not None
    _audit(txn, dbs, audit)
    if record is None:
        return -1 if txn.delete(key, db=db) else 0
    txn.put(key, record, db=db)
    return 0 if existed else 1


# --- review decisions ---------------------------------------------------------------------------


def approve_review(txn, dbs, arg: tuple[str, int, Audit]) -> ReviewRecord | None:
    """reviews -> pending, the message record back to "accepted", + audit. None when the message is
    not held (already decided, or never held)."""
    msg_id, at_ms, audit = arg
    key = msg_id.encode()
    raw = txn.get(key, db=dbs["reviews"])
    if raw is None:
        return None
    review = review_decoder.decode(raw)
    txn.delete(key, db=dbs["reviews"])
    pending = R.PendingRecord(review.sender, review.recipient, review.priority, review.payload)
    txn.put(key, _enc(pending), db=dbs["pending"])
    raw_msg = txn.get(key, db=dbs["messages"])
    if raw_msg is not None:
        rec = R.message_decoder.decode(raw_msg)
        rec.status = "accepted"
        rec.events.append(("accepted", at_ms))
        txn.put(key, _enc(rec), db=dbs["messages"])
    _audit(txn, dbs, audit)
    return review


class RejectArg(NamedTuple):
    id: str
    at_ms: int
    reason: str
    hooks: dict[str, list[bytes]]
    events: IdGenerator
    audit: Audit


def reject_review(txn, dbs, arg: RejectArg):
    """reviews removal, the message failed with the reason (messages, webhook_outbox: the status
    webhook), + audit. Returns (ReviewRecord, [StatusChange]) or None when the message is not held."""
    key = arg.id.encode()
    raw = txn.get(key, db=dbs["reviews"])
    if raw is None:
        return None
    txn.delete(key, db=dbs["reviews"])
    changes = ops.apply_status(txn, dbs, ops.StatusArg([(arg.id, "failed", arg.at_ms, arg.reason, False)],
                                                       arg.hooks, arg.events))
    _audit(txn, dbs, arg.audit)
    return review_decoder.decode(raw), changes


def put_audit(txn, dbs, arg: Audit) -> None:
    """audit."""
    _audit(txn, dbs, arg)
