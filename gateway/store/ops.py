"""Operations that run inside the writer's transaction: accept, dispatch, acks, receipts,
idempotency and runtime sender settings (API keys: store/key_ops.py).

Each op is `op(txn, dbs, arg) -> result`, checks before it writes, and touches only the tables
named in its docstring. They run in the writer thread: no trio, no clock reads, no logging of
message text.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import orjson

from gateway.ids import IdGenerator
from gateway.store import records as R
from gateway.store.pairlog import TABLES as PAIR_TABLES, PairLog, PairState

_enc = R.ENCODER.encode


def rfc3339(ms: int) -> str:
    """Unix milliseconds as RFC 3339 UTC with milliseconds ('2026-11-22T02:04:26.123Z')."""
    secs, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{milli:03d}Z"


# --- accept --------------------------------------------------------------------------------


class AcceptItem(NamedTuple):
    id: str
    message: bytes  # encoded MessageRecord
    pending: bytes  # encoded PendingRecord


class AcceptArg(NamedTuple):
    items: list[AcceptItem]
    idem_key: bytes | None
    idem_record: bytes | None
    idem_at_ms: int = 0  # when the idempotency record was made: its entry in the expiry index
    idem_cutoff_ms: int = 0  # a stored answer made before this has expired: the key is free again


def idempotency_at(created_ms: int, key: bytes) -> bytes:
    """The idempotency_at key of a record: made-at time (uint64 big-endian), then its key."""
    return created_ms.to_bytes(8, "big") + key


def accept(txn, dbs, arg: AcceptArg):
    """messages + pending (+ idempotency). Returns the stored IdempotencyRecord when the key was
    already used and has not expired (and then writes nothing), else None."""
    if arg.idem_key is not None:
        existing = txn.get(arg.idem_key, db=dbs["idempotency"])
        if existing is not None:
            earlier = R.idempotency_decoder.decode(existing)
            if earlier.created_ms >= arg.idem_cutoff_ms:
                return earlier
    messages, pending = dbs["messages"], dbs["pending"]
    put = txn.put
    for item in arg.items:
        key = item.id.encode()
        put(key, item.message, db=messages)
        put(key, item.pending, db=pending)
    if arg.idem_key is not None:
        put(arg.idem_key, arg.idem_record, db=dbs["idempotency"])
        put(idempotency_at(arg.idem_at_ms, arg.idem_key), b"", db=dbs["idempotency_at"])
    return None


class AcceptGroup:
    """Plain accepts (no idempotency key) gathered for one `accept_group` op. The op seals the group
    when the writer applies it: what arrives later goes into a new group, and the next commit."""

    __slots__ = ("items", "sealed")

    def __init__(self) -> None:
        self.items: list[AcceptItem] = []
        self.sealed = False


def accept_group(txn, dbs, group: AcceptGroup) -> None:
    """messages + pending, for every item of the group."""
    group.sealed = True
    messages, pending = dbs["messages"], dbs["pending"]
    put = txn.put
    for msg_id, message, pending_record in group.items:
        key = msg_id.encode()
        put(key, message, db=messages)
        put(key, pending_record, db=pending)


# --- dispatch ------------------------------------------------------------------------------


class DispatchArg(NamedTuple):
    items: list[tuple[str, bytes]]  # (id, encoded OutboxRecord holding the envelope as sent)
    sessions: list[tuple[bytes, bytes]]  # (sessions key, sealed session record after these messages)
    limiter: list[tuple[bytes, tuple[float, float]]]  # sender buckets: (limiter key, (tokens, last))
    failed: list[tuple[str, str, int]] = []  # (id, reason, at_ms): could not be encrypted, ends here
    hooks: dict[str, list[bytes]] | None = None  # for the status changes of `failed`
    events: IdGenerator | None = None
    pairs: list[PairState] = []  # pair buckets, appended to the pair journal (store/pairlog.py)
    pair_log: PairLog | None = None


class DispatchResult(NamedTuple):
    moved: list[str]  # ids moved pending -> outbox (the others were no longer pending)
    changes: list  # StatusChange of the `failed` ones


def dispatch(txn, dbs, arg: DispatchArg) -> DispatchResult:
    """pending -> outbox (with the ciphertext) for each id still pending, the session states that
    produced those ciphertexts, and the limiter state that let them go, in one commit (invariant 3:
    no ciphertext leaves before its ratchet state is durable; the pair buckets' state goes to the
    pair journal). Messages in `failed` leave pending and fail (messages, webhook_outbox) in the
    same commit."""
    moved = []
    with txn.cursor(db=dbs["pending"]) as pending, txn.cursor(db=dbs["outbox"]) as outbox:
        find, drop, put = pending.set_key, pending.delete, outbox.put
        for msg_id, record in arg.items:
            key = msg_id.encode()
            if not find(key):
                continue
            put(key, record)
            drop()
            moved.append(msg_id)
    with txn.cursor(db=dbs["sessions"]) as sessions:
        put = sessions.put
        for key, blob in arg.sessions:
            put(key, blob)
    with txn.cursor(db=dbs["limiter"]) as limiter:
        put = limiter.put
        for key, state in arg.limiter:
            put(key, _enc(state))
    if arg.pairs:
        _put_all(txn, dbs[arg.pair_log.table], arg.pair_log.records(arg.pairs))
    changes = []
    if arg.failed:
        updates = []
        delete, pending = txn.delete, dbs["pending"]
        for msg_id, reason, at_ms in arg.failed:
            if delete(msg_id.encode(), db=pending):
                updates.append((msg_id, "failed", at_ms, reason, False))
        changes = apply_status(txn, dbs, StatusArg(updates, arg.hooks or {}, arg.events))
    return DispatchResult(moved, changes)


def _put_all(txn, db, records: list[tuple[bytes, bytes]]) -> None:
    with txn.cursor(db=db) as cur:
        put = cur.put
        for key, value in records:
            put(key, value)


class PairCopyArg(NamedTuple):
    log: PairLog
    pairs: list[tuple[str, str]]
    state: Callable[[str, str], tuple[float, float] | None]  # the scheduler's pair_state
    drop: int | None = None  # the old journal table (index), emptied in this commit


def copy_pairs(txn, dbs, arg: PairCopyArg) -> int:
    """pairlog_*: a compaction step (store/pairlog.py): the current state of `pairs` into the current
    journal table, and on the last step the old table emptied. Returns how many were copied."""
    records = arg.log.copies(arg.pairs, arg.state)
    _put_all(txn, dbs[arg.log.table], records)
    if arg.drop is not None:
        txn.drop(dbs[PAIR_TABLES[arg.drop]], delete=False)
    return len(records)


# --- status changes ------------------------------------------------------------------------


class StatusChange(NamedTuple):
    id: str
    status: str
    at_ms: int
    accepted_ms: int
    workspace: str
    sender: str = ""
    recipient: str = ""
    reason: str = ""
    sent_ms: int = 0  # when the network acknowledged the message (0: no "sent" event)


class StatusArg(NamedTuple):
    """A batch of network answers: each is (id, status, at_ms, reason, drop_outbox)."""

    updates: list[tuple[str, str, int, str, bool]]
    hooks: dict[str, list[bytes]]  # workspace -> webhook endpoint ids (snapshot of the config)
    events: IdGenerator


_RANK = R.STATUS_RANK  # a status only moves forward; failed ends it unless already delivered or read


def _webhook_event(event_id: str, msg_id: str, rec: R.MessageRecord, status: str, at_ms: int,
                   reason: str) -> bytes:
    data = {
        "message_id": msg_id,
        "status": status,
        "at": rfc3339(at_ms),
        "from": rec.sender,
        "to": rec.recipient,
        "workspace": rec.workspace,
    }
    if rec.client_ref is not None:
        data["client_ref"] = rec.client_ref
    if reason:
        data["reason"] = reason
    return orjson.dumps({"id": event_id, "type": "message.status", "data": data})


def apply_status(txn, dbs, arg: StatusArg) -> list[StatusChange]:
    """messages (+ outbox removal, + webhook_outbox): move each message forward; duplicates and
    stale answers change nothing. Returns the changes that took effect."""
    # One cursor per table: a cursor's get and put skip the keyword parsing and the per-call
    # table lookup of txn.get / txn.put, a good part of the cost of a receipt.
    with txn.cursor(db=dbs["messages"]) as messages, txn.cursor(db=dbs["outbox"]) as outbox:
        return _apply_status(txn, dbs["webhook_outbox"], messages, outbox, arg)


def _apply_status(txn, hooks_db, messages, outbox, arg: StatusArg) -> list[StatusChange]:
    decode = R.message_decoder.decode
    find, value, put = messages.set_key, messages.value, messages.put
    find_outbox, drop = outbox.set_key, outbox.delete
    hooks, events = arg.hooks, arg.events
    changes = []
    append = changes.append
    for msg_id, status, at_ms, reason, drop_outbox in arg.updates:
        key = msg_id.encode()
        if not key:  # LMDB refuses an empty key with an error that would fail the whole commit
            continue
        if drop_outbox and find_outbox(key):
            drop()
        if not find(key):
            continue
        rec = decode(value())
        current = rec.status
        if current == status or current == "failed":
            continue
        if status == "failed":
            if current == "delivered" or current == "read":
                continue
            if not drop_outbox and find_outbox(key):
                drop()
        elif _RANK[status] <= _RANK[current]:
            continue
        rec.status = status
        timeline = rec.events
        if timeline and at_ms < timeline[-1][1]:
            # receipts carry the network's clock, "sent" ours: a status never precedes the one before it
            at_ms = timeline[-1][1]
        timeline.append((status, at_ms))
        if reason:
            rec.reason = reason
        put(key, _enc(rec))
        sent_ms = 0
        for event, t in timeline:
            if event == "sent":
                sent_ms = t
                break
        append(StatusChange(msg_id, status, at_ms, timeline[0][1], rec.workspace, rec.sender, rec.recipient,
                            reason, sent_ms))
        endpoints = hooks.get(rec.workspace)
        if endpoints:
            event_id = events.new()
            body = _webhook_event(event_id, msg_id, rec, status, at_ms, reason)
            for endpoint in endpoints:
                txn.put(endpoint + b"\0" + event_id.encode(), body, db=hooks_db)
    return changes


def count_throttles(txn, dbs, arg: list[str]) -> list[int]:
    """messages: count one more throttle answer for each message; returns the new counts
    (0 for a message that no longer exists)."""
    db = dbs["messages"]
    counts = []
    for msg_id in arg:
        key = msg_id.encode()
        raw = txn.get(key, db=db) if key else None  # (an empty key: see _apply_status)
        if raw is None:
            counts.append(0)
            continue
        rec = R.message_decoder.decode(raw)
        rec.throttled += 1
        txn.put(key, _enc(rec), db=db)
        counts.append(rec.throttled)
    return counts


# --- keys, senders, housekeeping -------------------------------------------------------------


def put_sender_override(txn, dbs, arg: tuple[str, R.SenderOverride | None]) -> None:
    """senders: set (or with None, clear) a runtime override of a sender's rate."""
    number, override = arg
    if override is None:
        txn.delete(number.encode(), db=dbs["senders"])
    else:
        txn.put(number.encode(), _enc(override), db=dbs["senders"])


def expire_idempotency(txn, dbs, arg: tuple[int, int]) -> int:
    """idempotency: the oldest `limit` entries of the expiry index made before `cutoff_ms` go, and
    each one's record unless its key was used again since (a newer record); returns how many
    entries went. Its cost follows what expires, not what is stored."""
    cutoff_ms, limit = arg
    db, at_db = dbs["idempotency"], dbs["idempotency_at"]
    cutoff = cutoff_ms.to_bytes(8, "big")
    gone = []
    cur = txn.cursor(db=at_db)
    if cur.first():
        for entry in cur.iternext(values=False):
            if entry[:8] >= cutoff or len(gone) >= limit:
                break
            gone.append(entry)
    for entry in gone:
        txn.delete(entry, db=at_db)
        key = entry[8:]
        raw = txn.get(key, db=db)
        if raw is not None and R.idempotency_decoder.decode(raw).created_ms < cutoff_ms:
            txn.delete(key, db=db)
    return len(gone)


def sweep_idempotency(txn, dbs, arg: tuple[bytes, int, int]) -> bytes | None:
    """idempotency: up to `limit` records after key `after` (b"": from the first): an expired one
    (made before `cutoff_ms`) goes, every other gets its expiry index entry if it has none (records
    of versions before the index). Returns the last key visited, or None at the end of the table."""
    after, cutoff_ms, limit = arg
    db, at_db = dbs["idempotency"], dbs["idempotency_at"]
    cur = txn.cursor(db=db)
    found = cur.set_range(after + b"\0") if after else cur.first()
    seen = 0
    stale, missing = [], []
    last = None
    while found and seen < limit:
        key, raw = cur.item()
        created_ms = R.idempotency_decoder.decode(raw).created_ms
        (stale if created_ms < cutoff_ms else missing).append(idempotency_at(created_ms, key))
        last = key
        seen += 1
        found = cur.next()
    for entry in stale:
        txn.delete(entry[8:], db=db)
        txn.delete(entry, db=at_db)
    for entry in missing:
        txn.put(entry, b"", db=at_db, overwrite=False)
    return last if found else None


def delete_keys(txn, dbs, arg: tuple[str, list[bytes]]) -> None:
    table, keys = arg
    db = dbs[table]
    for key in keys:
        txn.delete(key, db=db)


def move_to_dead(txn, dbs, arg: list[tuple[bytes, bytes]]) -> None:
    """webhook_outbox -> webhook_dead."""
    for key, dead in arg:
        txn.delete(key, db=dbs["webhook_outbox"])
        txn.put(key, dead, db=dbs["webhook_dead"])



class ReplayArg(NamedTuple):
    prefixes: list[bytes]  # endpoint id \0 of each endpoint whose dead letters go back
    event_ids: list[bytes] | None  # only these events (None: the oldest ones, up to `limit`)
    limit: int
    audit: Callable[[int], tuple[bytes, bytes]] | None = None  # the audit entry for n moved (written when any are)


def replay_dead(txn, dbs, arg: ReplayArg) -> list[tuple[bytes, bytes]]:
    """webhook_dead -> webhook_outbox (+ audit): up to `limit` dead letters of these endpoints,
    oldest first, each stored again as it was queued (sealed ones stay sealed). Returns the
    (key, stored event) moved."""
    dead_db, outbox_db = dbs["webhook_dead"], dbs["webhook_outbox"]
    decode, put = R.dead_letter_decoder.decode, txn.put
    moved: list[tuple[bytes, bytes]] = []
    with txn.cursor(db=dead_db) as cur:
        for prefix in arg.prefixes:
            if arg.event_ids is not None:
                for event_id in arg.event_ids:
                    if len(moved) >= arg.limit:
                        break
                    if cur.set_key(prefix + event_id):
                        event = decode(cur.value()).event
                        put(prefix + event_id, event, db=outbox_db)
                        moved.append((prefix + event_id, event))
                        cur.delete()
                continue
            found = cur.set_range(prefix)
            while found and len(moved) < arg.limit:
                key = cur.key()
                if not key.startswith(prefix):
                    break
                event = decode(cur.value()).event
                put(key, event, db=outbox_db)
                moved.append((key, event))
                found = cur.delete()  # and on to the next record
    if moved and arg.audit is not None:
        key, entry = arg.audit(len(moved))
        put(key, entry, db=dbs["audit"])
    return moved

def encode(obj) -> bytes:
    return _enc(obj)


# --- inbound -------------------------------------------------------------------------------

SEALED_EVENT = b"\0"  # webhook_outbox values starting with this byte are sealed (event id as AD)


class InboundItem(NamedTuple):
    network_id: str
    id: str  # the gateway's message id
    record: bytes  # encoded InboundRecord (its text sealed)
    hooks: list[tuple[list[bytes], str, dict, bool]]  # (endpoints, event type, data, seal the body)
    opt_out: tuple | None = None  # policy_ops.set_opt_out arg for a STOP / START keyword
    reply: AcceptItem | None = None  # the keyword's confirmation, sent back (messages + pending)
    policy_record: tuple[bytes, bytes] | None = None  # policy_events entry of a flagged text


class InboundArg(NamedTuple):
    items: list[InboundItem]
    sessions: list[tuple[bytes, bytes]]  # (sessions key, sealed session record after these messages)
    used_prekeys: list[bytes]  # used_prekeys keys of the one-time prekeys new sessions consumed
    at_ms: int
    events: IdGenerator | None
    sealer: object  # crypto.seal.Sealer for the event bodies that carry text


def receive_inbound(txn, dbs, arg: InboundArg) -> tuple[list[str], int]:
    """inbound + inbound_ids + sessions + used_prekeys + webhook_outbox, and for keywords and
    flags opt_outs + audit + messages + pending + policy_events, all in one commit. An item whose
    network id is already stored is skipped whole. Returns (network ids stored, change in the
    number of opt-outs)."""
    from gateway.store import policy_ops as P

    get, put = txn.get, txn.put
    ids_db, inbound_db, hooks_db = dbs["inbound_ids"], dbs["inbound"], dbs["webhook_outbox"]
    stored = []
    delta = 0
    for item in arg.items:
        net_key = item.network_id.encode()
        if get(net_key, db=ids_db) is not None:
            continue
        key = item.id.encode()
        put(net_key, key, db=ids_db)
        put(key, item.record, db=inbound_db)
        stored.append(item.network_id)
        for endpoints, kind, data, sealed in item.hooks:
            event_id = arg.events.new()
            body = orjson.dumps({"id": event_id, "type": kind, "data": data})
            if sealed:
                body = SEALED_EVENT + arg.sealer.seal(body, event_id.encode())
            for endpoint in endpoints:
                put(endpoint + b"\0" + event_id.encode(), body, db=hooks_db)
        if item.opt_out is not None:
            delta += P.set_opt_out(txn, dbs, item.opt_out)
        if item.reply is not None:
            put(item.reply.id.encode(), item.reply.message, db=dbs["messages"])
            put(item.reply.id.encode(), item.reply.pending, db=dbs["pending"])
        if item.policy_record is not None:
            put(item.policy_record[0], item.policy_record[1], db=dbs["policy_events"])
    for key, blob in arg.sessions:
        put(key, blob, db=dbs["sessions"])
    at = _enc(arg.at_ms)
    for key in arg.used_prekeys:
        put(key, at, db=dbs["used_prekeys"])
    return stored, delta
