"""Decides which queued messages may be sent now: per-sender and per-(sender, recipient) token buckets,
strict priorities with a starvation guard, and round-robin fairness across senders.

It owns the queues and the limiter state; it must never read a clock (every `now` comes from the
caller), perform I/O, or hand out a message without having taken both its sender and pair tokens.
"""
from __future__ import annotations

import math
from collections import deque
from heapq import heapify, heappop, heappush
from typing import NamedTuple

from gateway.schedule.buckets import BucketTable

__all__ = ["URGENT", "NORMAL", "BULK", "QueuedMessage", "Scheduler"]

URGENT, NORMAL, BULK = 0, 1, 2
_EPSILON = 1e-6  # float slack when comparing a computed refill time with `now`
_CLASSES = (URGENT, NORMAL, BULK)
_NORMAL_ORDER = (URGENT, NORMAL, BULK)
_GUARD_ORDER = (BULK, NORMAL, URGENT)  # starvation guard: lowest non-empty class first
_INF = math.inf


class QueuedMessage(NamedTuple):
    id: bytes
    sender: str
    recipient: str
    priority: int


class _Sender:
    """Queues and bookkeeping of one sender number (internal)."""

    __slots__ = (
        "number", "slot", "queues", "groups", "ready", "parked", "pairs",
        "streak", "count", "active", "wake_at", "token_bound", "pending", "noted",
    )

    def __init__(self, number: str) -> None:
        self.number = number
        self.slot = -1  # sender bucket; -1 = never configured, messages are held
        # Per class: FIFO of messages not yet looked at.
        self.queues: tuple[deque, deque, deque] = (deque(), deque(), deque())
        # Per class: recipient -> FIFO of parked messages (pair bucket was empty).
        self.groups: tuple[dict, dict, dict] = ({}, {}, {})
        # Per class: recipients whose parked group is due again, in (due, seq) order.
        self.ready: tuple[deque, deque, deque] = (deque(), deque(), deque())
        # Heap of (due, seq, class, recipient) for parked groups not yet due.
        self.parked: list[tuple[float, int, int, str]] = []
        self.pairs: dict[str, int] = {}  # recipient -> pair bucket slot
        self.streak = 0  # consecutive takes from a higher class while a lower one waited
        self.count = 0  # queued messages, parked included
        self.active = False  # in the round-robin ring
        self.wake_at = _INF  # time of the valid wake-heap entry when sleeping
        self.token_bound = False  # sleeping only for lack of sender tokens
        self.pending: tuple[float, float] | None = None  # restore_sender before set_sender
        self.noted: set[str] = set()  # recipients whose pair has an entry in Scheduler._pair_expiry


class Scheduler:
    """Fair, rate-limited, priority-aware selection of messages to dispatch."""

    def __init__(
        self,
        *,
        pair_rate_per_minute: float = 10.0,
        pair_burst: float = 45.0,
        starvation_guard: int = 10,
        table_factory=BucketTable,
    ) -> None:
        if starvation_guard < 1:
            raise ValueError("starvation_guard must be >= 1")
        self._table = table_factory()
        self._pair_rate = float(pair_rate_per_minute)
        self._pair_burst = float(pair_burst)
        self._guard = int(starvation_guard)
        self._senders: dict[str, _Sender] = {}
        self._ring: deque[_Sender] = deque()  # senders that may be able to send now
        self._wake: list[tuple[float, int, _Sender]] = []  # sleeping senders by wake time
        self._seq = 0
        # (time the pair bucket may be full again, seq, sender, recipient): one entry per tracked
        # pair, never later than the time it is full, so forgetting refilled pairs costs in
        # proportion to what came due, not to all pairs (see _note_pair).
        self._pair_expiry: list[tuple[float, int, _Sender, str]] = []
        self._depth = [0, 0, 0]
        self._total = 0

    # ------------------------------------------------------------------ configuration

    def set_sender(self, number: str, rate_per_minute: float, burst: float, now: float) -> None:
        """Add a sender or change its limit; tokens earned so far are settled at the old rate and
        clamped to the new burst. Held messages of a new sender become eligible at once."""
        s = self._sender(number)
        if s.slot < 0:
            s.slot = self._table.add(rate_per_minute, burst, now)
            if s.pending is not None:
                self._table.restore(s.slot, *s.pending)
                s.pending = None
        else:
            self._table.set_rate(s.slot, rate_per_minute, burst, now)
        self._activate(s)

    def has_sender(self, number: str) -> bool:
        s = self._senders.get(number)
        return s is not None and s.slot >= 0

    def set_pair_limit(self, rate_per_minute: float, burst: float, now: float) -> None:
        """Change the (sender, recipient) limit for existing and future pairs."""
        table = self._table
        # Validate once up front (the table raises ValueError) so a bad limit changes nothing.
        probe = table.add(rate_per_minute, burst, now)
        table.free(probe)
        self._pair_rate = float(rate_per_minute)
        self._pair_burst = float(burst)
        self._pair_expiry = []
        for s in self._senders.values():
            s.noted.clear()
            for r, slot in s.pairs.items():
                table.set_rate(slot, rate_per_minute, burst, now)
                self._note_pair(s, r, slot, now)
            self._unpark_all(s)
            self._activate(s)

    # ------------------------------------------------------------------ queueing

    def push(self, msg: QueuedMessage, now: float) -> bool:
        """Queue `msg` at the tail of its (sender, priority) class. True if its sender is active (it
        may have something to send now); False if it sleeps, so that the time `next_wakeup` gave
        still holds and a dispatch loop waiting for it need not look again."""
        p = msg.priority
        if p not in _CLASSES:
            raise ValueError(f"priority must be URGENT, NORMAL or BULK, got {p!r}")
        s = self._senders.get(msg.sender)
        if s is None:
            s = self._sender(msg.sender)
        s.queues[p].append(msg)
        s.count += 1
        self._depth[p] += 1
        self._total += 1
        if not s.active and s.slot >= 0:
            # A sender asleep only for lack of its own tokens gains nothing from a new message.
            if s.count == 1 or not s.token_bound or s.wake_at <= now:
                self._activate(s)
        return s.active

    def requeue(self, msgs: list[QueuedMessage], now: float) -> None:
        """Put back messages ready() returned but that could not be dispatched, at the head of
        their classes in their original order. Their tokens stay spent (a retry never exceeds a rate)."""
        touched = []
        for msg in reversed(msgs):
            p = msg.priority
            if p not in _CLASSES:
                raise ValueError(f"priority must be URGENT, NORMAL or BULK, got {p!r}")
            s = self._sender(msg.sender)
            group = s.groups[p].get(msg.recipient)
            if group is not None:  # keep it ahead of later messages to the same recipient
                group.appendleft(msg)
            else:
                s.queues[p].appendleft(msg)
            s.count += 1
            self._depth[p] += 1
            self._total += 1
            touched.append(s)
        for s in touched:
            self._activate(s)

    def depth(self) -> tuple[int, int, int]:
        d = self._depth
        return (d[0], d[1], d[2])

    def __len__(self) -> int:
        return self._total

    # ------------------------------------------------------------------ selection

    def ready(self, now: float, limit: int) -> list[QueuedMessage]:
        """Up to `limit` messages that may be sent at `now`, round-robin across senders; their
        sender and pair tokens are taken."""
        out: list[QueuedMessage] = []
        if limit <= 0 or not self._total:
            return out
        self._wake_due(now)
        ring = self._ring
        take = self._take
        while ring:
            room = limit - len(out)
            if room <= 0:
                break
            s = ring.popleft()
            k = room if not ring else 1  # one per sender per round; a lone sender may run on
            if take(s, now, k, out) < k:
                s.active = False
                self._sleep(s, now)
            else:
                ring.append(s)
        self._total -= len(out)
        return out

    def next_wakeup(self, now: float) -> float | None:
        """Earliest time ready() could return something: `now` if it can right away, None if
        nothing is queued or nothing queued can ever go without a configuration change."""
        if not self._total:
            return None
        self._wake_due(now)
        ring = self._ring
        while ring:
            s = ring[0]
            t = self._wake_time(s, now)
            if t is not None and t <= now:
                return now
            ring.popleft()
            s.active = False
            self._sleep_until(s, t)
        heap = self._wake
        while heap:
            t, _, s = heap[0]
            if s.active or s.wake_at != t:
                heappop(heap)
                continue
            return t
        return None

    # ------------------------------------------------------------------ persistence

    def sender_state(self, number: str) -> tuple[float, float]:
        s = self._senders.get(number)
        if s is not None:
            if s.slot >= 0:
                return self._table.state(s.slot)
            if s.pending is not None:
                return s.pending
        raise KeyError(number)

    def pair_state(self, sender: str, recipient: str) -> tuple[float, float] | None:
        s = self._senders.get(sender)
        if s is None:
            return None
        slot = s.pairs.get(recipient)
        if slot is None:
            return None
        return self._table.state(slot)

    def restore_sender(self, number: str, tokens: float, last: float) -> None:
        """Reinstate persisted sender bucket state (same clock domain); kept until set_sender if unknown."""
        s = self._sender(number)
        if s.slot >= 0:
            self._table.restore(s.slot, tokens, last)
        else:
            s.pending = (float(tokens), float(last))
        self._activate(s)

    def restore_pair(self, sender: str, recipient: str, tokens: float, last: float) -> None:
        """Reinstate persisted pair bucket state (same clock domain as `now`)."""
        s = self._sender(sender)
        slot = s.pairs.get(recipient)
        if slot is None:
            slot = self._table.add(self._pair_rate, self._pair_burst, last)
            s.pairs[recipient] = slot
        self._table.restore(slot, tokens, last)
        # The restored bucket may be fuller than when its entry was noted: note it afresh.
        s.noted.discard(recipient)
        self._note_pair(s, recipient, slot, last)
        self._unpark_all(s)
        self._activate(s)

    def settle_sent(self, msgs: list[QueuedMessage], sent_at: float) -> None:
        """The network judges rates by when messages reach it, not when `ready` let them go. Move
        the last take of these messages' sender and pair buckets to `sent_at` (when their frames
        were written), so the refill that accrued while the batch was encrypted, committed and
        written cannot let the next batch follow closer than the buckets allow: a slow batch
        followed by a quick one otherwise arrives bunched. Never makes a bucket more permissive."""
        table = self._table
        senders = self._senders
        seen: set = set()
        for m in msgs:
            s = senders.get(m.sender)
            if s is None:
                continue
            if s.slot >= 0 and s not in seen:
                seen.add(s)
                tokens, last = table.state(s.slot)
                if last < sent_at:
                    table.restore(s.slot, tokens, sent_at)
            slot = s.pairs.get(m.recipient)
            if slot is not None and (s, m.recipient) not in seen:
                seen.add((s, m.recipient))
                tokens, last = table.state(slot)
                if last < sent_at:
                    table.restore(slot, tokens, sent_at)
                    self._note_pair(s, m.recipient, slot, sent_at)

    def forget_full_pairs(self, now: float) -> list[tuple[str, str]]:
        """Drop pair buckets that have refilled to their burst (an untracked pair counts as full);
        returns the (sender, recipient) pairs dropped. Work is proportional to what came due."""
        table = self._table
        heap = self._pair_expiry
        dropped = []
        while heap and heap[0][0] <= now + _EPSILON:
            _, _, s, r = heappop(heap)
            s.noted.discard(r)
            slot = s.pairs.get(r)
            if slot is None:
                continue  # forgotten already
            if table.is_full(slot, now):
                table.free(s.pairs.pop(r))
                dropped.append((s.number, r))
            else:  # taken since it was noted (or float rounding put it a hair early): look again then
                self._note_pair(s, r, slot, now, at_least=now + 0.001)
        return dropped

    def _note_pair(self, s: _Sender, r: str, slot: int, now: float, at_least: float = 0.0) -> None:
        """Make sure the pair bucket `slot` has an entry in the expiry heap no later than the time
        it is full again. A take or a later `last` only moves that time later, so an entry noted
        before still qualifies: a pair taken many times between two housekeeping rounds costs one
        entry, which forget_full_pairs notes again from the state it finds when it comes due."""
        if r in s.noted:
            return
        rate = self._pair_rate / 60.0
        if rate <= 0.0:
            return
        deficit = self._pair_burst - self._table.tokens(slot, now)
        self._seq += 1
        full_at = max(at_least, now + max(0.0, deficit) / rate)
        heappush(self._pair_expiry, (full_at, self._seq, s, r))
        s.noted.add(r)

    # ------------------------------------------------------------------ internals

    def _sender(self, number: str) -> _Sender:
        s = self._senders.get(number)
        if s is None:
            s = self._senders[number] = _Sender(number)
        return s

    def _activate(self, s: _Sender) -> None:
        if not s.active and s.slot >= 0 and s.count:
            s.active = True
            s.token_bound = False
            self._ring.append(s)

    def _wake_due(self, now: float) -> None:
        heap = self._wake
        ring = self._ring
        while heap and heap[0][0] <= now:
            t, _, s = heappop(heap)
            if s.active or s.wake_at != t:
                continue  # stale entry
            s.active = True
            s.token_bound = False
            ring.append(s)

    def _sleep(self, s: _Sender, now: float) -> None:
        self._sleep_until(s, self._wake_time(s, now))

    def _sleep_until(self, s: _Sender, t: float | None) -> None:
        if t is None:
            s.wake_at = _INF
            return
        s.wake_at = t
        self._seq += 1
        heap = self._wake
        heappush(heap, (t, self._seq, s))
        if len(heap) > 2 * len(self._senders) + 64:  # drop stale entries
            self._wake = [e for e in heap if not e[2].active and e[2].wake_at == e[0]]
            heapify(self._wake)

    def _wake_time(self, s: _Sender, now: float) -> float | None:
        """Earliest time `s` can send (now if it can now); None if never without a config change.
        Parks pair-blocked heads as a side effect. Sets s.token_bound."""
        if s.slot < 0 or not s.count:
            return None
        if self._find(s, now) is not None:
            t_msg = now
        else:
            t_msg = s.parked[0][0] if s.parked else _INF
        t_send = now + self._table.wait_time(s.slot, now)
        s.token_bound = t_send >= t_msg
        t = t_send if t_send > t_msg else t_msg
        return None if t == _INF else t

    def _promote(self, s: _Sender, now: float) -> None:
        parked = s.parked
        ready = s.ready
        while parked and parked[0][0] <= now:
            _, _, c, r = heappop(parked)
            ready[c].append(r)

    def _unpark_all(self, s: _Sender) -> None:
        # Due times were computed under old pair state; re-check every parked group.
        parked = s.parked
        ready = s.ready
        while parked:
            _, _, c, r = heappop(parked)
            ready[c].append(r)

    def _park(self, s: _Sender, c: int, r: str, slot: int, now: float) -> None:
        self._seq += 1
        heappush(s.parked, (now + self._table.wait_time(slot, now), self._seq, c, r))

    def _find(self, s: _Sender, now: float):
        """The next sendable message's (class, recipient, pair slot or None, from_group), or None.
        Moves pair-blocked messages out of the way (parking) while looking."""
        if s.parked and s.parked[0][0] <= now:
            self._promote(s, now)
        table = self._table
        pairs = s.pairs
        new_pair_ok = self._pair_burst >= 1.0
        for c in (_GUARD_ORDER if s.streak >= self._guard else _NORMAL_ORDER):
            rd = s.ready[c]
            while rd:
                r = rd[0]
                slot = pairs.get(r)
                if slot is None:
                    if new_pair_ok:
                        return c, r, None, True
                elif table.tokens(slot, now) >= 1.0:
                    return c, r, slot, True
                rd.popleft()
                if slot is None:
                    slot = pairs[r] = table.add(self._pair_rate, self._pair_burst, now)
                self._park(s, c, r, slot, now)
            q = s.queues[c]
            if q:
                groups = s.groups[c]
                while q:
                    m = q[0]
                    r = m.recipient
                    g = groups.get(r)
                    if g is not None:  # same recipient already parked: stay behind it
                        g.append(q.popleft())
                        continue
                    slot = pairs.get(r)
                    if slot is None:
                        if new_pair_ok:
                            return c, r, None, False
                    elif table.tokens(slot, now) >= 1.0:
                        return c, r, slot, False
                    q.popleft()
                    groups[r] = deque((m,))
                    if slot is None:
                        slot = pairs[r] = table.add(self._pair_rate, self._pair_burst, now)
                    self._park(s, c, r, slot, now)
        return None

    def _take(self, s: _Sender, now: float, k: int, out: list) -> int:
        """Take up to k messages from sender `s` into `out`; returns how many."""
        sslot = s.slot
        if sslot < 0:
            return 0
        table = self._table
        try_take = table.try_take
        queues = s.queues
        ready = s.ready
        parked = s.parked
        guard = self._guard
        streak = s.streak
        n = 0
        while n < k:
            # Fast path: no guard turn, nothing parked is due, no rejoined groups: the head of the
            # highest non-empty class goes if its recipient is not parked and its pair has a token.
            c = -1
            if (
                streak < guard
                and not (parked and parked[0][0] <= now)
                and not (ready[0] or ready[1] or ready[2])
            ):
                c = 0 if queues[0] else 1 if queues[1] else 2 if queues[2] else -1
                if c >= 0:
                    r = queues[c][0].recipient
                    if r in s.groups[c]:
                        c = -1
                    else:
                        pslot = s.pairs.get(r)
                        if pslot is None:
                            if self._pair_burst < 1.0:
                                c = -1
                        elif table.tokens(pslot, now) < 1.0:
                            c = -1
                from_group = False
            if c < 0:
                s.streak = streak
                found = self._find(s, now)
                if found is None:
                    break
                c, r, pslot, from_group = found
            # The pair has >= 1 token (checked above): take the sender token, then the pair token.
            if not try_take(sslot, now):
                break
            if pslot is None:
                pslot = s.pairs[r] = table.add(self._pair_rate, self._pair_burst, now)
            try_take(pslot, now)
            self._note_pair(s, r, pslot, now)
            if from_group:
                groups = s.groups[c]
                g = groups[r]
                m = g.popleft()
                if not g:
                    del groups[r]
                    ready[c].popleft()
            else:
                m = queues[c].popleft()
            out.append(m)
            n += 1
            self._depth[c] -= 1
            if streak >= guard:
                streak = 0
            elif (c == URGENT and (queues[1] or ready[1] or queues[2] or ready[2])) or (
                c == NORMAL and (queues[2] or ready[2])
            ):
                streak += 1
            else:
                streak = 0
        s.streak = streak
        s.count -= n
        return n
