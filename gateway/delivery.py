"""The outbound path after acceptance: scheduler -> session (bundles fetched in one request per
round, PQXDH on first contact) -> ratchet encryption -> outbox commit -> network link, and the
network's answers (acks, receipts, bundles, prekey counts) -> status changes.

Invariant: a Submit frame leaves only after the commit that moved its message from pending to
the outbox together with the ratchet state that produced its ciphertext; after a reconnect or
restart the stored outbox entries are sent again as stored, never encrypted again. Receipts are
acknowledged to the network only after their status is committed.
"""
from __future__ import annotations

import heapq
import logging

import lmdb
import trio

from gateway.crypto.identity import InvalidKey, MalformedMessage, PrekeyBundle
from gateway.crypto.agreement import BadSignature, EphemeralKeyPool, SignatureCache
from gateway.crypto.ratchet import RatchetError
from gateway.crypto.seal import SealError
from gateway.e2e.bundles import BundleRequests, BundleTimeout
from gateway.e2e.keyring import Keyring, KeyService
from gateway.e2e.sessions import SessionCache, load_many, session_key, start_session
from gateway.ids import ID_CHARS
from gateway.network.frames import Ack, BundleReply, Inbound, InboundAck, PrekeyCount, Receipt, ReceiptAck, Submit
from gateway.network.link import LinkDown
from gateway.schedule.scheduler import QueuedMessage, Scheduler
from gateway.store import ops
from gateway.store import records as R
from gateway.store.pairlog import COPY_CHUNK as PAIR_COPY_CHUNK, TABLES as PAIR_TABLES, PairLog
from gateway.store.writer import StorageError, StorageFull, write_all_until_stored, write_until_stored

log = logging.getLogger("gateway.delivery")

RESEND_CHUNK = 2048
RECEIPT_STATUSES = frozenset(("delivered", "read", "failed"))
ENCRYPT_CHUNK = 128  # messages ratchet-encrypted between two checkpoints (a few ms of CPU)
EPHEMERAL_POOL = 512  # keys kept ready: the first 256 new sessions after an idle moment skip key generation
STATUS_PIECE = 256  # receipts per apply_status operation (a few ms of applying each)
# A round of at most this many messages waits (group_commit_lazy_ms) for the commit the next accept
# starts; a bigger one means a backlog, and waiting would idle the dispatch loop: it commits at once.
LAZY_ROUND_MAX = 32
MAX_AT_MS = 1 << 46  # year ~4200: anything later is not a time the network could mean




class Delivery:
    def __init__(self, gw, scheduler: Scheduler, keyring: Keyring) -> None:
        self.gw = gw
        self.scheduler = scheduler
        self.keyring = keyring
        self.keys = KeyService(keyring, self._publish)  # key files off the event loop; run by the app
        self.keys_published = False  # the bundles went out after a connect (once is enough for readiness)
        self.sessions = SessionCache(gw.config.crypto.session_cache)
        self.signatures = SignatureCache(4096)
        # fresh X25519 keys made in idle time for the next sessions (two each: EK_A and the first
        # ratchet key), so a burst of new recipients does not wait for key generation
        self.ephemerals = EphemeralKeyPool(EPHEMERAL_POOL)
        self.bundles = BundleRequests()
        self.link = None  # set by the composition root before run()
        self.inbound = None  # gateway.inbound.InboundPath, set by the composition root
        self._pushed = trio.Event()
        self._send_lock = trio.Lock()  # dispatch and outbox resend never interleave
        self._throttled: list[tuple[float, str]] = []  # (wall time due, id)
        self._throttle_wake = trio.Event()
        self._no_session: dict[bytes, str] = {}  # pair -> why it cannot get a session (this round)
        self._bundles_failed = False
        self.dispatched = 0
        self.sessions_started = 0
        self.sessions_reset = 0
        self.pair_log = PairLog(gw.config.store.pair_log_compact_entries)
        self.pair_log_compactions = 0

    def _frames(self, records) -> list[Submit]:
        """Submit frames for stored outbox records (id, record), sent exactly as stored. The
        payload of a record written by an earlier version is opened from its seal first; such a
        record whose data key is missing stays in the outbox (logged) and goes once the key is back."""
        open_ = self.gw.sealer.open
        frames = []
        for msg_id, rec in records:
            payload = rec.payload
            if rec.sealed:
                try:
                    payload = open_(payload, msg_id.encode())
                except SealError as exc:
                    log.error("message %s cannot be sent: %s", msg_id, exc)
                    continue
            frames.append(Submit(msg_id, rec.sender, rec.recipient, payload, rec.priority))
        return frames

    # -- intake ----------------------------------------------------------------------------

    def enqueue(self, msgs: list[QueuedMessage]) -> None:
        now = self.gw.clock.steady()
        push = self.scheduler.push
        active = False
        for m in msgs:
            active |= push(m, now)
        # Messages of a sender that sleeps until its tokens come back change nothing the dispatch
        # loop waits for (a broadcast queued behind its sender's rate would wake it per commit).
        if active:
            self._pushed.set()

    def poke(self) -> None:
        """Rates changed: let the dispatch loop look again now."""
        self._pushed.set()

    def rebuild(self) -> int:
        """Refill the scheduler from the pending table and the stored limiter state: sender rows,
        then the pair journal in record order (store/pairlog.py). A state stored ahead of the
        present (the system clock was set back since) is restored as of now: its bucket refills
        from now on, never for time that did not pass (Clock.steady)."""
        store, sched, now = self.gw.store, self.scheduler, self.gw.clock.steady()
        legacy = []
        for key, raw in store.scan("limiter"):
            tokens, last = R.limiter_decoder.decode(raw)
            kind, _, rest = key.partition(b"\0")
            if kind == b"s":
                sched.restore_sender(rest.decode(), tokens, min(last, now))
            else:  # a pair row of an earlier version: into the journal below, then gone
                sender, _, recipient = rest.partition(b"\0")
                legacy.append((key, sender.decode(), recipient.decode(), (tokens, last)))
        states = self.pair_log.replay(tuple(store.scan(table) for table in PAIR_TABLES))
        if legacy:
            # the later take wins (rows written again by an earlier version after a downgrade)
            newer = {(s, r): state for _, s, r, state in legacy
                     if (s, r) not in states or state[1] > states[(s, r)][1]}
            self._migrate_pair_rows([key for key, *_ in legacy], newer)
            states.update(newer)
        for (sender, recipient), (tokens, last) in states.items():
            sched.restore_pair(sender, recipient, tokens, min(last, now))
        count = 0
        decode = R.pending_decoder.decode
        for key, raw in store.scan("pending"):
            rec = decode(raw)
            sched.push(QueuedMessage(key.decode(), rec.sender, rec.recipient, rec.priority), now)
            count += 1
        return count

    def _migrate_pair_rows(self, keys: list[bytes], newer: dict) -> None:
        """Pair rows of an earlier version (`keys`) move into the journal, in one commit before the
        writer starts: `newer` are the states that beat the journal's. A store too full for that
        keeps the rows (restored all the same) until a later start."""
        store = self.gw.store
        try:
            with store.env.begin(write=True) as txn:
                ops.delete_keys(txn, store.dbs, ("limiter", keys))
                ops.copy_pairs(txn, store.dbs, ops.PairCopyArg(self.pair_log, list(newer),
                                                               lambda s, r: newer.get((s, r))))
        except lmdb.Error as exc:
            log.warning("pair limit rows stay where they are until a later start: %s", exc)
            return
        log.info("moved %d pair limit rows into the pair journal", len(newer))

    async def compact_pair_log(self) -> None:
        """Once the pair journal's table is full: the live pairs' state into the other table, in
        pieces, and the old table emptied with the last one (store/pairlog.py)."""
        pair_log = self.pair_log
        pair_log.compact_entries = self.gw.config.store.pair_log_compact_entries
        if not pair_log.due():
            return
        old, pairs = pair_log.start_compaction()
        state = self.scheduler.pair_state
        pieces = [pairs[i:i + PAIR_COPY_CHUNK] for i in range(0, len(pairs), PAIR_COPY_CHUNK)] or [[]]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            try:
                await self.gw.writer.write(ops.copy_pairs,
                                           ops.PairCopyArg(pair_log, piece, state, old if last else None))
            except (StorageFull, StorageError) as exc:
                # the old table keeps its records, so the next round starts over (no switch)
                log.warning("pair journal compaction put off: %s", type(exc).__name__)
                return
        pair_log.dropped(old)
        self.pair_log_compactions += 1

    # -- the dispatch loop ------------------------------------------------------------------

    async def run_dispatch(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        sched = self.scheduler
        while True:
            await self.link.wait_connected()
            now = self.gw.clock.steady()
            batch = sched.ready(now, self.gw.config.scheduler.dispatch_batch)
            if not batch:
                await self._refill_while_idle()
                now = self.gw.clock.steady()
                wake = sched.next_wakeup(now)
                delay = None if wake is None else max(0.0, wake - now)
                with trio.move_on_after(delay if delay is not None else float("inf")):
                    await self._pushed.wait()
                self._pushed = trio.Event()
                continue
            await self._dispatch(batch, now)

    async def _refill_while_idle(self) -> None:
        """Nothing to dispatch: make keys for the next sessions, a few at a time (~45 us each), until
        the pool is full or work arrives."""
        while not self._pushed.is_set() and self.ephemerals.refill(limit=8):
            await trio.lowlevel.checkpoint()

    async def _dispatch(self, batch: list[QueuedMessage], now: float) -> None:
        sched = self.scheduler
        now_ms = self.gw.clock.now_ms()
        keys = [session_key(m.sender, m.recipient) for m in batch]
        live = self._cached_sessions(keys)
        failed: list[tuple[str, str, int]] = []
        later: list[QueuedMessage] = []
        if len(live) < len(set(keys)):
            await self._new_sessions(batch, keys, live, now_ms)
        go = []
        for m, key in zip(batch, keys):
            session = live.get(key)
            if session is None:
                reason = self._no_session.get(key)
                if reason is None:
                    later.append(m)
                else:
                    failed.append((m.id, reason, now_ms))
            else:
                go.append((m, key, session))
        self._no_session.clear()
        if later:
            sched.requeue(later, now)
        items, frames, touched = await self._encrypt(go, failed, now_ms)
        limiter, pairs = self._limiter_state(batch)
        sealer = self.gw.sealer
        async with self._send_lock:
            # Session states are sealed and handed to the writer with no checkpoint in between:
            # anything else that advances a session (an inbound message) commits its state in
            # enqueue order too, so a stored session never goes back to an older state.
            blobs = [(key, session.seal(sealer, key)) for key, session in touched.items() if not session.broken]
            arg = ops.DispatchArg(items, blobs, limiter, failed,
                                  self.gw.webhook_targets() if failed else None, self.gw.event_ids,
                                  pairs, self.pair_log)
            try:
                # A small round rides along with the next accept's commit (at low rates one commit
                # per message instead of two); a big one (a backlog) does not wait for it.
                result = await self.gw.writer.write(ops.dispatch, arg, lazy=len(batch) <= LAZY_ROUND_MAX)
            except (StorageFull, StorageError):
                result = None
            if result is not None:
                moved = set(result.moved)
                await self._send([f for f in frames if f.id in moved])
                # rates are judged where the frames arrive: count the takes from the write
                sched.settle_sent(batch, self.gw.clock.steady())
        if result is None:
            waiting = {m.id for m in later}
            sched.requeue([m for m in batch if m.id not in waiting], now)
            await trio.sleep(1.0)  # the store refused: nothing moved; try again shortly
            return
        self.sessions.trim()
        if result.changes:
            self._after_changes(result.changes)
        if self._bundles_failed:
            self._bundles_failed = False
            await trio.sleep(0.2)  # bundles did not come: let the link settle before asking again

    def _limiter_state(self, batch: list[QueuedMessage]) -> tuple[list, list]:
        """The buckets this round took from: sender rows, and pair states for the pair journal."""
        sched = self.scheduler
        limiter = []
        pairs = {}
        seen_senders = set()
        for m in batch:
            if m.sender not in seen_senders:
                seen_senders.add(m.sender)
                limiter.append((R.limiter_sender_key(m.sender), sched.sender_state(m.sender)))
            pair = (m.sender, m.recipient)
            if pair not in pairs:
                pairs[pair] = sched.pair_state(m.sender, m.recipient)
        return limiter, [(s, r, state) for (s, r), state in pairs.items() if state is not None]

    # -- sessions ---------------------------------------------------------------------------

    def _cached_sessions(self, keys: list[bytes]) -> dict:
        """The live sessions of these pairs: the hot cache first, then the sessions table."""
        cache = self.sessions
        live = {}
        misses = []
        for key in keys:
            if key in live:
                continue
            session = cache.get(key)
            if session is None:
                misses.append(key)
            elif not session.broken:  # a broken one is neither used nor reloaded: a new one is agreed
                live[key] = session
        if misses:
            store = self.gw.store
            with store.env.begin(db=store.dbs["sessions"], buffers=False) as txn:
                found, bad = load_many(txn, store.dbs["sessions"], self.gw.sealer, list(dict.fromkeys(misses)))
            for key in bad:
                log.error("stored session %s cannot be opened; it is left untouched",
                          key.replace(b"\0", b" -> ").decode(errors="replace"))
                self._no_session[key] = "session_unreadable"
            for key, session in found.items():
                cache.put(key, session)
                live[key] = session
        return live

    async def _new_sessions(self, batch, keys, live: dict, now_ms: int) -> None:
        """Agree sessions for the pairs that have none: one BundleRequest frame for their
        recipients (at most `new_sessions_per_round` pairs; the rest wait for the next round),
        then PQXDH. Pairs that cannot get a session get a reason in self._no_session; pairs
        left without either are requeued."""
        cap = self.gw.config.crypto.new_sessions_per_round
        wanted: dict[bytes, tuple[str, str]] = {}
        recipients: set[str] = set()
        for m, key in zip(batch, keys):
            if key in live or key in wanted or key in self._no_session:
                continue
            if self.keyring.identity(m.sender) is None:
                self._no_session[key] = "sender_keys_missing"
                continue
            # One session per recipient per round: a bundle's one-time prekey serves one session
            # only, so a second sender to the same number waits for the next round's bundle.
            if len(wanted) < cap and m.recipient not in recipients:
                wanted[key] = (m.sender, m.recipient)
                recipients.add(m.recipient)
        if not wanted:
            return
        numbers = list(dict.fromkeys(recipient for _, recipient in wanted.values()))
        req_id, frame = self.bundles.request(numbers)
        try:
            await self.link.send([frame])
            bundles, unknown = await self.bundles.wait(req_id, self.gw.config.crypto.bundle_timeout_s)
        except (LinkDown, BundleTimeout) as exc:
            self.bundles.forget(req_id)
            self._bundles_failed = True
            log.warning("no bundles for %d recipients this round: %s", len(numbers), exc)
            return
        parsed: dict[str, PrekeyBundle | None] = {}
        for n, (key, (sender, recipient)) in enumerate(wanted.items()):
            if n:
                await trio.lowlevel.checkpoint()  # each agreement costs ~1 ms: the API gets its turn in between
            existing = self.sessions.get(key)
            if existing is not None and not existing.broken:
                live[key] = existing  # the customer started one while the bundles were on their way
                continue
            if recipient in unknown:
                self._no_session[key] = "recipient_not_registered"
                continue
            raw = bundles.get(recipient)
            if raw is None:
                continue
            if recipient not in parsed:
                try:
                    parsed[recipient] = PrekeyBundle.decode(raw)
                except MalformedMessage:
                    parsed[recipient] = None
            bundle = parsed[recipient]
            try:
                if bundle is None:
                    raise InvalidKey("malformed bundle")
                session = start_session(self.keyring.identity(sender), bundle, now_ms, self.signatures,
                                        self.ephemerals)
            except (BadSignature, InvalidKey, RatchetError) as exc:
                log.warning("bundle of %s refused: %s", recipient, exc)
                self._no_session[key] = "bad_prekey_bundle"
                continue
            if existing is not None:  # replacing a broken session: whoever holds it continues in the new one
                existing.replace_with(session)
                session = existing
            else:
                self.sessions.put(key, session)
            live[key] = session
            self.sessions_started += 1

    async def _encrypt(self, go, failed: list, now_ms: int):
        """Ratchet-encrypt each message still pending, in batch order: (outbox items, Submit
        frames, the sessions they advanced). A dispatch batch holds up to `dispatch_batch`
        messages at tens of microseconds each, so the work is done in chunks with a checkpoint
        between them: the API keeps answering while a large batch is encrypted."""
        items, frames, touched = [], [], {}
        for start in range(0, len(go), ENCRYPT_CHUNK):
            if start:
                await trio.lowlevel.checkpoint()
            self._encrypt_chunk(go[start:start + ENCRYPT_CHUNK], failed, now_ms, items, frames, touched)
        return items, frames, touched

    def _encrypt_chunk(self, go, failed: list, now_ms: int, items: list, frames: list, touched: dict) -> None:
        store = self.gw.store
        open_ = self.gw.sealer.open
        outbox_record = R.OutboxRecord
        decode = R.pending_decoder.decode
        encode = ops.encode
        with store.env.begin(db=store.dbs["pending"], buffers=False) as txn:
            get = txn.get
            for m, key, session in go:
                id_bytes = m.id.encode()
                raw = get(id_bytes)
                if raw is None:
                    continue  # no longer pending
                rec = decode(raw)
                try:
                    plaintext = open_(rec.payload, id_bytes)
                except SealError as exc:
                    log.error("message %s cannot be sent: %s", m.id, exc)
                    continue  # stays pending; goes after a restart once its data key is back
                try:
                    env = session.encrypt(plaintext)
                except RatchetError:
                    failed.append((m.id, "session_exhausted", now_ms))
                    continue
                touched[key] = session
                # The envelope is ratchet ciphertext: stored as it is, not sealed a second time.
                items.append((m.id, encode(outbox_record(rec.sender, rec.recipient, rec.priority, env, 0, False))))
                frames.append(Submit(m.id, rec.sender, rec.recipient, env, rec.priority))

    async def _send(self, frames: list[Submit]) -> None:
        """Send what the dispatch commit moved to the outbox (caller holds the send lock)."""
        self.dispatched += len(frames)
        try:
            await self.link.send(frames)
        except LinkDown:
            pass  # committed to the outbox: on_connected sends them again

    def _confirm_sessions(self, changes) -> None:
        """A delivered or read receipt means the recipient's device processed a message of the
        session: later messages no longer carry the initial header."""
        cache = self.sessions
        for ch in changes:
            if ch.status in ("delivered", "read") and ch.sender:
                session = cache.get(session_key(ch.sender, ch.recipient))
                if session is not None and session.header is not None:
                    session.confirm()

    def _break_sessions(self, changes) -> None:
        """A `failed` receipt with an undecryptable_* reason means the recipient cannot read this
        session (it lost its state, or refused the prekey): later messages of the pair agree a new
        session instead of failing the same way forever. A failure of a message sent before the
        current session was agreed says nothing about it and is ignored."""
        cache = self.sessions
        for ch in changes:
            if ch.status != "failed" or not ch.reason.startswith("undecryptable_") or not ch.sender:
                continue
            session = cache.get(session_key(ch.sender, ch.recipient))
            if session is None or session.broken:
                continue
            if ch.sent_ms and ch.sent_ms < session.created_ms:
                continue
            session.broken = True
            self.sessions_reset += 1
            log.warning("session %s -> %s reset: the recipient could not decrypt (%s)",
                        ch.sender, ch.recipient, ch.reason)

    def remote_identity(self, sender: str, recipient: str) -> bytes | None:
        """The recipient's identity key (raw Ed25519) as learned from its bundle, or None."""
        key = session_key(sender, recipient)
        session = self.sessions.get(key) or self._cached_sessions([key]).get(key)
        return None if session is None else session.remote_identity

    # -- keys -------------------------------------------------------------------------------

    async def rotate_keys(self) -> None:
        """Rotate the prekeys that are due and publish the new bundles (housekeeping calls this)."""
        await self._publish(await self.keys.tick(self.gw.clock.now_ms()))

    async def _publish(self, frames: list) -> None:
        if frames and self.link is not None:
            try:
                await self.link.send(frames)
            except LinkDown:
                pass  # every bundle is published again after the reconnect

    # -- reconnect: resend the outbox ------------------------------------------------------

    async def on_connected(self) -> None:
        self.bundles.fail_all()  # requests on the old connection will never be answered
        await self.link.send(await self.keys.publish_all())
        self.keys_published = True  # readiness waits for the first time (customers can start sessions)
        async with self._send_lock:
            self._throttled.clear()  # the whole outbox, throttled messages included, goes now
            after = b""
            while True:
                chunk = self._outbox_after(after)
                if not chunk:
                    return
                after = chunk[-1][0]
                frames = self._frames((k.decode(), r) for k, r in chunk)
                if frames:
                    self.gw.metrics.resent.inc(n=len(frames))
                    await self.link.send(frames)

    def _outbox_after(self, after: bytes) -> list[tuple[bytes, R.OutboxRecord]]:
        out = []
        decode = R.outbox_decoder.decode
        store = self.gw.store
        with store.env.begin(db=store.dbs["outbox"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(after):
                return out
            for key, raw in cur:
                if key == after:
                    continue
                out.append((key, decode(raw)))
                if len(out) >= RESEND_CHUNK:
                    break
        return out

    # -- answers from the network ---------------------------------------------------------

    async def on_frames(self, frames: list) -> None:
        now_ms = self.gw.clock.now_ms()
        updates = []
        receipt_ids = []
        throttled = []
        inbound = []
        for f in frames:
            if isinstance(f, Inbound):
                inbound.append(f)
            elif isinstance(f, BundleReply):
                self.bundles.on_reply(f)
            elif isinstance(f, PrekeyCount):
                self.keys.submit(self.keyring.on_prekey_count(f))
            elif isinstance(f, Receipt):
                receipt_ids.append(f.id)  # acknowledged even when unusable, or it comes back forever
                if f.status not in RECEIPT_STATUSES or len(f.id) != ID_CHARS:
                    log.warning("receipt for %r with status %r ignored", f.id[:40], f.status[:40])
                    continue
                at_ms = f.at_ms if 0 < f.at_ms < MAX_AT_MS else now_ms
                updates.append((f.id, f.status, at_ms, f.reason[:200], False))
            elif isinstance(f, Ack):
                if len(f.id) != ID_CHARS:  # names nothing sent (an empty id would fail every commit it joined)
                    log.warning("ack for %r, not a message id, ignored", f.id[:40])
                elif f.code == "ok":
                    updates.append((f.id, "sent", now_ms, "", True))
                elif f.code == "throttled":
                    throttled.append(f)
                else:
                    updates.append((f.id, "failed", now_ms, f.reason or "rejected", True))
        if throttled:
            await self._on_throttled(throttled, now_ms, updates)
        if updates:
            await self._apply(updates)
        answers = [ReceiptAck(receipt_ids)] if receipt_ids else []
        if inbound and self.inbound is not None:
            answers.append(InboundAck(await self.inbound.receive(inbound)))  # after their commit
        if answers:
            try:
                await self.link.send(answers)
            except LinkDown:
                pass  # the network re-sends unacknowledged receipts and inbound messages after the reconnect

    async def _apply(self, updates: list) -> None:
        # Nothing is acknowledged to the network until stored: keep trying through a full store.
        # A read can bring thousands of receipts (~5-10 µs each to apply): they go in pieces, in
        # order, so that applying them never holds the event loop for more than a few ms at a time.
        targets, event_ids = self.gw.webhook_targets(), self.gw.event_ids
        args = [ops.StatusArg(updates[i:i + STATUS_PIECE], targets, event_ids)
                for i in range(0, len(updates), STATUS_PIECE)]
        # Lazy: acks and receipts wait (up to [store] group_commit_lazy_ms) for a commit that other
        # work starts, instead of an fsync of their own for every network answer at low rates.
        pieces = await write_all_until_stored(self.gw.writer, ops.apply_status, args, lazy=True)
        changes = [c for piece in pieces for c in piece]
        self._after_changes(changes)

    def _after_changes(self, changes) -> None:
        self._confirm_sessions(changes)
        self._break_sessions(changes)
        metrics = self.gw.metrics
        observe = metrics.delivery.observe
        counts: dict[str, int] = {}
        touched = set()
        for ch in changes:
            status = ch.status
            counts[status] = counts.get(status, 0) + 1
            if status == "delivered":
                observe(max(0, ch.at_ms - ch.accepted_ms) / 1000.0)
            touched.add(ch.workspace)
        for status, n in counts.items():
            metrics.status.inc((status,), n=n)
        if touched:
            self.gw.webhooks_wake(touched)

    async def _on_throttled(self, acks: list[Ack], now_ms: int, updates: list) -> None:
        max_retries = self.gw.config.scheduler.throttle_max_retries
        now = self.gw.clock.steady()
        self.gw.metrics.throttled.inc(n=len(acks))
        self.link.unsent([ack.id for ack in acks])  # a resend on connect under way includes them
        counts = await write_until_stored(self.gw.writer, ops.count_throttles, [ack.id for ack in acks])
        for ack, count in zip(acks, counts):
            if count > max_retries:
                updates.append((ack.id, "failed", now_ms, "throttled", True))
                continue
            heapq.heappush(self._throttled, (now + max(ack.retry_after_ms, 1) / 1000.0, ack.id))
        self._throttle_wake.set()

    async def run_throttle_retries(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Send throttled messages again, as stored, once the network's retry-after passed."""
        task_status.started()
        heap = self._throttled
        while True:
            now = self.gw.clock.steady()
            due = []
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap)[1])
            if due:
                await self._resend(due)
                continue
            delay = heap[0][0] - now if heap else float("inf")
            with trio.move_on_after(delay):
                await self._throttle_wake.wait()
            self._throttle_wake = trio.Event()

    async def _resend(self, ids: list[str]) -> None:
        store = self.gw.store
        records = []
        with store.env.begin(db=store.dbs["outbox"]) as txn:
            for msg_id in ids:
                raw = txn.get(msg_id.encode())
                if raw is not None:
                    records.append((msg_id, R.outbox_decoder.decode(raw)))
        frames = self._frames(records)
        if not frames:
            return
        async with self._send_lock:
            try:
                await self.link.send(frames)
            except LinkDown:
                pass  # still in the outbox: resent after the reconnect
