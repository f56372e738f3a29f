"""The inbound path: customers' messages from the network -> dedupe by network id -> decrypt
(responder side of PQXDH, or the pair's session) -> opt-out keywords and the sensitive-word scan
(flag only) -> one commit of the message (text sealed), the session states, the used one-time
prekeys, the webhook events and the keyword effects -> InboundAck to the network.

Invariants: an inbound message is acknowledged only after its commit (the network re-sends
unacknowledged ones after a reconnect); a network id is processed once; a message that cannot be
decrypted changes no session, is stored as `undecryptable`, reported, and acknowledged. Message
text never reaches a log or an unsealed record.
"""
from __future__ import annotations

import logging
import re
from time import perf_counter

import msgspec
import trio

from gateway.decoding import DECODE_ERRORS
from gateway.e2e.responder import Undecryptable, open_envelope
from gateway.e2e.sessions import LiveSession, load_many, session_key
from gateway.network.frames import Inbound
from gateway.schedule.scheduler import QueuedMessage
from gateway.store import ops
from gateway.store import records as R
from gateway.store.ops import rfc3339
from gateway.store.writer import write_until_stored
from gateway.webhooks.dispatcher import endpoint_id

log = logging.getLogger("gateway.inbound")

MAX_NETWORK_ID = 200  # bytes; longer ids are not a network's message id: acknowledged and dropped
_E164 = re.compile(r"\+[1-9][0-9]{6,14}\Z")  # customers and senders alike (LMDB keys stay short)
# Decryption between two checkpoints, in time: it adapts to the machine. About 30 messages in
# sessions (~30 µs each) or one customer's new session (PQXDH responder, ~1-2 ms). A budget of work
# units (128 a slice, a new session 32) made 4-8 ms steps here while new customers wrote in.
DECRYPT_SLICE_S = 0.001
MAX_AT_MS = 1 << 46  # year ~4200: a later at_ms is not a time the network could mean
RECEIVED, UNDECRYPTABLE = "received", "undecryptable"
_text = msgspec.msgpack.Decoder(R.TextPayload).decode


def inbound_targets(cfg) -> dict[str, list[bytes]]:
    """Endpoints that take message.received (and message.undecryptable) events: those whose
    `events` list names message.received."""
    out: dict[str, list[bytes]] = {}
    for ws in cfg.workspaces:
        for hook in ws.webhooks:
            if "message.received" in hook.events:
                out.setdefault(ws.name, []).append(endpoint_id(ws.name, hook.url))
    return out


class InboundPath:
    def __init__(self, gw, delivery) -> None:
        self.gw = gw
        self.delivery = delivery  # its session cache holds the one live object of every pair
        self._targets_for = None
        self._targets: dict[str, list[bytes]] = {}
        reg = gw.metrics.registry
        self.outcomes = reg.counter("gateway_inbound_total",
                                    "Inbound messages by outcome (received, duplicate, undecryptable, dropped).",
                                    ("outcome",))
        self.failures = reg.counter("gateway_inbound_undecryptable_total",
                                    "Inbound messages that could not be decrypted, by reason.", ("reason",))

    def targets(self) -> dict[str, list[bytes]]:
        cfg = self.gw.config
        if cfg is not self._targets_for:
            self._targets, self._targets_for = inbound_targets(cfg), cfg
        return self._targets

    async def receive(self, frames: list[Inbound]) -> list[str]:
        """Process one read's inbound frames; returns the ids to acknowledge (every one of them),
        once everything they changed is committed."""
        fresh = self._fresh(frames)
        if fresh:
            await self._process(fresh)
        return [f.id for f in frames]

    def _fresh(self, frames: list[Inbound]) -> list[Inbound]:
        """Frames whose network id is new: not stored, not earlier in this batch."""
        store = self.gw.store
        fresh, seen = [], set()
        with store.env.begin(db=store.dbs["inbound_ids"], buffers=False) as txn:
            for f in frames:
                if not 0 < len(f.id.encode()) <= MAX_NETWORK_ID or not (_E164.match(f.sender)
                                                                          and _E164.match(f.recipient)):
                    log.warning("inbound message with an unusable id or number dropped (%d-byte id)",
                                len(f.id.encode()))
                    self.outcomes.inc(("dropped",))
                    continue
                if f.id in seen or txn.get(f.id.encode()) is not None:
                    self.outcomes.inc(("duplicate",))
                    continue
                seen.add(f.id)
                fresh.append(f)
        return fresh

    def _sessions(self, keys: list[bytes]) -> tuple[dict[bytes, LiveSession], set[bytes]]:
        """The live sessions of these pairs (cache first, then the table) and the unreadable ones."""
        cache = self.delivery.sessions
        live, misses = {}, []
        for key in dict.fromkeys(keys):
            session = cache.get(key)
            if session is None:
                misses.append(key)
            else:
                live[key] = session
        bad: list[bytes] = []
        if misses:
            store = self.gw.store
            with store.env.begin(db=store.dbs["sessions"], buffers=False) as txn:
                found, bad = load_many(txn, store.dbs["sessions"], self.gw.sealer, misses)
            for key, session in found.items():
                cache.put(key, session)
                live[key] = session
        return live, set(bad)

    async def _process(self, frames: list[Inbound]) -> None:
        gw = self.gw
        now_ms = gw.clock_ms()
        keys = [session_key(f.recipient, f.sender) for f in frames]
        live, unreadable = self._sessions(keys)
        store = gw.store
        used_now: set[tuple[str, int]] = set()
        touched: dict[bytes, LiveSession] = {}
        opened: list[tuple[Inbound, str | None, str]] = []  # (frame, text or None, reason)
        turn = perf_counter() + DECRYPT_SLICE_S
        for f, key in zip(frames, keys):
            if perf_counter() >= turn:
                await trio.lowlevel.checkpoint()  # let the API breathe during a large batch
                turn = perf_counter() + DECRYPT_SLICE_S
            book = gw.keyring.book(f.recipient)
            if book is None:
                opened.append((f, None, "unknown_recipient"))
                continue
            if key in unreadable:
                opened.append((f, None, "session_unreadable"))
                continue

            def prekey_used(key_id: int, sender=f.recipient) -> bool:
                if (sender, key_id) in used_now:
                    return True
                return store.get("used_prekeys", R.used_prekey_key(sender, key_id)) is not None

            existing = live.get(key)
            try:
                result = open_envelope(book, existing, f.payload, now_ms, prekey_used)
            except Undecryptable as exc:
                opened.append((f, None, exc.kind))
                continue
            except Exception:  # whatever a customer sends must not take the gateway down
                log.exception("inbound %s from %s: unexpected failure while decrypting", f.id, f.sender)
                opened.append((f, None, "internal_error"))
                continue
            session = result.session
            if result.new:
                if existing is not None:
                    existing.replace_with(session)  # whoever holds the old object continues in the new one
                    session = existing
                else:
                    self.delivery.sessions.put(key, session)
                live[key] = session
                if result.one_time_prekey_id is not None:
                    used_now.add((f.recipient, result.one_time_prekey_id))
            touched[key] = session
            try:
                text = _text(result.plaintext).body
            except DECODE_ERRORS:
                opened.append((f, None, "bad_plaintext"))  # authentic, so the ratchet step stays
                continue
            opened.append((f, text, ""))
        items, replies = self._items(opened, now_ms)
        sealer = gw.sealer
        # Sealed and handed to the writer with no checkpoint in between (as the dispatch path does),
        # so stored session states only ever move forward.
        blobs = [(key, session.seal(sealer, key)) for key, session in touched.items()]
        arg = ops.InboundArg(items, blobs, [R.used_prekey_key(s, i) for s, i in sorted(used_now)], now_ms,
                             gw.event_ids, sealer)
        stored, delta = await write_until_stored(gw.writer, ops.receive_inbound, arg)
        self._after_commit(opened, set(stored), delta, replies, used_now)

    def _items(self, opened, now_ms: int) -> tuple[list[ops.InboundItem], list[QueuedMessage | None]]:
        """The records and events of each opened message, and (aligned with `opened`) the keyword
        confirmation to schedule once committed."""
        gw = self.gw
        targets = self.targets()
        items, replies = [], []
        for f, text, reason in opened:
            workspace = gw.sender_workspace(f.recipient) or ""
            msg_id = gw.ids.new()
            id_bytes = msg_id.encode()
            sent_ms = f.at_ms if 0 < f.at_ms < MAX_AT_MS else now_ms
            data = {"message_id": msg_id, "network_id": f.id, "workspace": workspace, "from": f.sender,
                    "to": f.recipient, "sent_at": rfc3339(sent_ms), "received_at": rfc3339(now_ms)}
            endpoints = targets.get(workspace)
            if text is None:
                record = R.InboundRecord(workspace, f.sender, f.recipient, f.id, sent_ms, now_ms, UNDECRYPTABLE,
                                         "undecryptable_" + reason)
                hooks = [(endpoints, "message.undecryptable", {**data, "reason": "undecryptable_" + reason},
                          False)] if endpoints else []
                items.append(ops.InboundItem(f.id, msg_id, ops.encode(record), hooks))
                replies.append(None)
                continue
            payload = gw.sealer.seal(ops.encode(R.TextPayload(text)), id_bytes)
            record = R.InboundRecord(workspace, f.sender, f.recipient, f.id, sent_ms, now_ms, RECEIVED, "", payload)
            hooks = [(endpoints, "message.received", {**data, "type": "text", "text": {"body": text}}, True)] \
                if endpoints else []
            opt_out = reply_item = policy_record = queued = None
            if workspace:
                keyword = gw.policy.inbound_keyword(workspace, f.recipient, f.sender, text, now_ms)
                if keyword is not None:
                    opt_out, reply_text = keyword
                    reply_item, queued = self._reply(workspace, f.recipient, f.sender, reply_text, now_ms)
                flag = gw.policy.inbound_flag(workspace, text, msg_id, f.sender, f.recipient, now_ms)
                if flag is not None:
                    policy_record, event = flag
                    if event is not None:
                        hooks.append((event[0], "policy.flagged", event[1], False))
            items.append(ops.InboundItem(f.id, msg_id, ops.encode(record), hooks, opt_out, reply_item, policy_record))
            replies.append(queued)
        return items, replies

    def _reply(self, workspace: str, number: str, contact: str, text: str, now_ms: int):
        """The keyword's confirmation as an accepted urgent message (it goes even to a contact who
        just opted out: it is the transactional answer to their own request)."""
        gw = self.gw
        msg_id = gw.ids.new()
        payload = gw.sealer.seal(ops.encode(R.TextPayload(text)), msg_id.encode())
        record = R.MessageRecord(workspace, number, contact, R.URGENT, None, "accepted", [("accepted", now_ms)])
        pending = R.PendingRecord(number, contact, R.URGENT, payload)
        item = ops.AcceptItem(msg_id, ops.encode(record), ops.encode(pending))
        return item, QueuedMessage(msg_id, number, contact, R.URGENT)

    def _after_commit(self, opened, stored: set[str], delta: int, replies, used_now) -> None:
        gw = self.gw
        if delta:
            gw.policy.opt_outs_changed(delta)
        self._drop_used_prekeys(used_now)
        workspaces = set()
        queued = []
        for (f, text, reason), reply in zip(opened, replies):
            if f.id not in stored:
                self.outcomes.inc(("duplicate",))
                continue
            workspaces.add(gw.sender_workspace(f.recipient) or "")
            if reply is not None:
                queued.append(reply)
            if text is None:
                self.outcomes.inc((UNDECRYPTABLE,))
                self.failures.inc((reason,))
                log.warning("inbound %s from %s to %s undecryptable: %s", f.id, f.sender, f.recipient, reason)
            else:
                self.outcomes.inc((RECEIVED,))
        if queued:
            gw.enqueue(queued)
        if workspaces:
            gw.webhooks_wake(workspaces)

    def _drop_used_prekeys(self, used_now) -> None:
        """The one-time prekeys new sessions used are deleted from the key books, whose files the
        key service writes soon after (the store already records them as used, so a crash before
        that write cannot let one serve twice)."""
        by_sender: dict[str, list[int]] = {}
        for sender, key_id in used_now:
            by_sender.setdefault(sender, []).append(key_id)
        keys, ring = self.gw.delivery.keys, self.gw.keyring
        for sender, ids in by_sender.items():
            keys.submit(ring.used_one_time(sender, ids))
