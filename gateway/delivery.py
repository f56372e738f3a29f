"""The outbound path after acceptance: scheduler -> outbox commit -> network link, and the
network's answers (acks, receipts) -> status changes.

Invariant: a Submit frame leaves only after the commit that moved its message from pending to
the outbox; after a reconnect or restart the stored outbox entries are sent again as stored,
never rebuilt. Receipts are acknowledged to the network only after their status is committed.
"""
from __future__ import annotations

import heapq
import logging

import trio

from gateway.crypto.seal import SealError
from gateway.network.frames import Ack, Receipt, ReceiptAck, Submit
from gateway.network.link import LinkDown
from gateway.schedule.scheduler import QueuedMessage, Scheduler
from gateway.store import ops
from gateway.store import records as R
from gateway.store.writer import StorageError, StorageFull, write_until_stored

log = logging.getLogger("gateway.delivery")

RESEND_CHUNK = 2048
RECEIPT_STATUSES = frozenset(("delivered", "read", "failed"))
MAX_AT_MS = 1 << 46  # year ~4200: anything later is not a time the network could mean




class Delivery:
    def __init__(self, gw, scheduler: Scheduler) -> None:
        self.gw = gw
        self.scheduler = scheduler
        self.link = None  # set by the composition root before run()
        self._pushed = trio.Event()
        self._send_lock = trio.Lock()  # dispatch and outbox resend never interleave
        self._throttled: list[tuple[float, str]] = []  # (wall time due, id)
        self._throttle_wake = trio.Event()
        self.dispatched = 0

    def _frames(self, records) -> list[Submit]:
        """Submit frames for stored outbox records (id, record): the payload is opened from its
        seal; everything else is sent exactly as stored. A record whose data key is missing
        stays in the outbox (logged) and goes once the key is back."""
        open_ = self.gw.sealer.open
        frames = []
        for msg_id, rec in records:
            try:
                payload = open_(rec.payload, msg_id.encode())
            except SealError as exc:
                log.error("message %s cannot be sent: %s", msg_id, exc)
                continue
            frames.append(Submit(msg_id, rec.sender, rec.recipient, payload, rec.priority))
        return frames

    # -- intake ----------------------------------------------------------------------------

    def enqueue(self, msgs: list[QueuedMessage]) -> None:
        now = self.gw.clock.now()
        push = self.scheduler.push
        for m in msgs:
            push(m, now)
        self._pushed.set()

    def poke(self) -> None:
        """Rates changed: let the dispatch loop look again now."""
        self._pushed.set()

    def rebuild(self) -> int:
        """Refill the scheduler from the pending table and the stored limiter state."""
        store, sched, now = self.gw.store, self.scheduler, self.gw.clock.now()
        for key, raw in store.scan("limiter"):
            tokens, last = R.limiter_decoder.decode(raw)
            kind, _, rest = key.partition(b"\0")
            if kind == b"s":
                sched.restore_sender(rest.decode(), tokens, last)
            else:
                sender, _, recipient = rest.partition(b"\0")
                sched.restore_pair(sender.decode(), recipient.decode(), tokens, last)
        count = 0
        decode = R.pending_decoder.decode
        for key, raw in store.scan("pending"):
            rec = decode(raw)
            sched.push(QueuedMessage(key.decode(), rec.sender, rec.recipient, rec.priority), now)
            count += 1
        return count

    # -- the dispatch loop ------------------------------------------------------------------

    async def run_dispatch(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        sched = self.scheduler
        while True:
            await self.link.wait_connected()
            now = self.gw.clock.now()
            batch = sched.ready(now, self.gw.config.scheduler.dispatch_batch)
            if not batch:
                wake = sched.next_wakeup(now)
                delay = None if wake is None else max(0.0, wake - now)
                with trio.move_on_after(delay if delay is not None else float("inf")):
                    await self._pushed.wait()
                self._pushed = trio.Event()
                continue
            await self._dispatch(batch, now)

    async def _dispatch(self, batch: list[QueuedMessage], now: float) -> None:
        sched = self.scheduler
        limiter = []
        seen_senders = set()
        for m in batch:
            if m.sender not in seen_senders:
                seen_senders.add(m.sender)
                limiter.append((R.limiter_sender_key(m.sender), sched.sender_state(m.sender)))
            state = sched.pair_state(m.sender, m.recipient)
            if state is not None:
                limiter.append((R.limiter_pair_key(m.sender, m.recipient), state))
        async with self._send_lock:
            try:
                moved = await self.gw.writer.write(ops.dispatch, ops.DispatchArg([m.id for m in batch], limiter))
            except (StorageFull, StorageError):
                moved = None
            if moved is not None:
                await self._send_moved(moved)
                return
        sched.requeue(batch, now)
        await trio.sleep(1.0)  # the store refused: nothing moved; try again shortly

    async def _send_moved(self, moved: list[tuple[str, bytes]]) -> None:
        """Send what the dispatch commit moved to the outbox (caller holds the send lock)."""
        decode = R.outbox_decoder.decode
        frames = self._frames((msg_id, decode(raw)) for msg_id, raw in moved)
        self.dispatched += len(frames)
        try:
            await self.link.send(frames)
        except LinkDown:
            pass  # committed to the outbox: on_connected sends them again

    # -- reconnect: resend the outbox ------------------------------------------------------

    async def on_connected(self) -> None:
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
        for f in frames:
            if isinstance(f, Receipt):
                receipt_ids.append(f.id)  # acknowledged even when unusable, or it comes back forever
                if f.status not in RECEIPT_STATUSES:
                    log.warning("receipt for %s with unknown status %r ignored", f.id, f.status[:40])
                    continue
                at_ms = f.at_ms if 0 < f.at_ms < MAX_AT_MS else now_ms
                updates.append((f.id, f.status, at_ms, f.reason[:200], False))
            elif isinstance(f, Ack):
                if f.code == "ok":
                    updates.append((f.id, "sent", now_ms, "", True))
                elif f.code == "throttled":
                    throttled.append(f)
                else:
                    updates.append((f.id, "failed", now_ms, f.reason or "rejected", True))
        if throttled:
            await self._on_throttled(throttled, now_ms, updates)
        if updates:
            await self._apply(updates)
        if receipt_ids:
            try:
                await self.link.send([ReceiptAck(receipt_ids)])
            except LinkDown:
                pass  # the network re-sends unacknowledged receipts after the reconnect

    async def _apply(self, updates: list) -> None:
        # Nothing is acknowledged to the network until stored: keep trying through a full store.
        arg = ops.StatusArg(updates, self.gw.webhook_targets(), self.gw.event_ids)
        changes = await write_until_stored(self.gw.writer, ops.apply_status, arg)
        metrics = self.gw.metrics
        touched = set()
        for ch in changes:
            metrics.status.inc((ch.status,))
            if ch.status == "delivered":
                metrics.delivery.observe(max(0, ch.at_ms - ch.accepted_ms) / 1000.0)
            touched.add(ch.workspace)
        if touched:
            self.gw.webhooks_wake(touched)

    async def _on_throttled(self, acks: list[Ack], now_ms: int, updates: list) -> None:
        max_retries = self.gw.config.scheduler.throttle_max_retries
        now = self.gw.clock.now()
        self.gw.metrics.throttled.inc(n=len(acks))
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
            now = self.gw.clock.now()
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
