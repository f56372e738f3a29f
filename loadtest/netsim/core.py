"""Sans-I/O model of the simulated messaging network: acks, throttling, dedupe and scheduled receipts.

It owns the simulated outcomes and their bookkeeping; it must never do I/O or read a clock (callers pass now_ms).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import struct

import msgspec

from gateway.crypto.identity import InvalidKey, MalformedMessage
from gateway.crypto.agreement import BadSignature
from gateway.network.frames import Ack, Inbound, Receipt, Submit
from loadtest.netsim.config import NetsimConfig
from loadtest.netsim.devices import Devices

__all__ = ["MAX_PAYLOAD", "Network", "RecipientTraits"]

MAX_PAYLOAD = 64 * 1024  # larger payloads are rejected with reason "payload_too_large"
_U64 = float(1 << 64)
_TWO_PI = 2.0 * math.pi
_unpack_4q = struct.Struct(">4Q").unpack
_unpack_3q = struct.Struct(">3Q").unpack
_TRAITS_CACHE_MAX = 1_000_000
_blake2b = hashlib.blake2b
_text_encode = msgspec.msgpack.Encoder().encode


def text_digest(body: str) -> str:
    """The digest a record line keeps of the text a recipient read (the load side computes the same
    from what it sent, so a run can prove every message arrived intact without logging any text)."""
    return _blake2b(body.encode(), digest_size=8).hexdigest()


def _cut(share: float) -> int:
    return int(share * (1 << 64)) if share < 1.0 else 1 << 64


class RecipientTraits:
    """Fixed properties of one recipient, a pure function of (seed, recipient)."""

    __slots__ = ("registered", "offline", "expires")

    def __init__(self, registered: bool, offline: bool, expires: bool) -> None:
        self.registered = registered
        self.offline = offline
        self.expires = expires

    def __repr__(self) -> str:
        return f"RecipientTraits(registered={self.registered}, offline={self.offline}, expires={self.expires})"


class Network:
    """The whole simulated network as one state machine shared by every client connection.

    Receipt acknowledgement is one-for-one: each id listed in a ReceiptAck drops the oldest
    sent-but-unacknowledged receipt for that message id (list an id once per receipt received).
    """

    def __init__(self, config: NetsimConfig, inbound_prefix: str = "in") -> None:
        self.config = config
        self._inbound_prefix = inbound_prefix  # inbound ids: prefix-n (the shell adds its start time)
        self._inbound_n = 0
        self._inbound_generated = 0  # draws made by generate_inbound (sent or skipped)
        self._inbound_unacked: dict[str, Inbound] = {}
        self._inbound_sent = 0
        self._inbound_acks = 0
        self._inbound_stray_acks = 0
        self._inbound_skipped = 0
        self._seed = config.seed
        self._lat_mu = math.log(config.latency_ms_median) if config.latency_ms_median > 0 else None
        self._read_mu = math.log(config.read_delay_ms_median) if config.read_delay_ms_median > 0 else None
        self._sigma = config.latency_sigma
        self._key_prefix = b"%d\x00" % config.seed
        # a uniform 64-bit draw u "hits" a share p when u < p * 2^64 (exact for p = 0 and p = 1)
        self._cut_unregistered = _cut(config.unregistered_share)
        self._cut_offline = _cut(config.offline_share)
        self._cut_expire = _cut(config.offline_expire_share)
        self._cut_throttle = _cut(config.throttle_share)
        self._cut_read = _cut(config.read_share)
        self.devices = Devices(config.seed) if config.e2e else None
        self.last_plaintext: bytes | None = None  # of the last submit taken (None if not decrypted)
        self._traits: dict[str, RecipientTraits] = {}
        self._seen: dict[str, int] = {}
        self._throttles: dict[str, int] = {}  # id -> times throttled so far (the attempt number of its next try)
        self._times: list[int] = []  # heap of distinct due times
        self._buckets: dict[int, list[Receipt]] = {}  # due time -> receipts, in scheduling order
        self._pending = 0
        self._unacked: dict[str, list[Receipt]] = {}
        self._unacked_count = 0
        self._submits = 0
        self._duplicates = 0
        self._throttled = 0
        self._rejected = 0
        self._delivered = 0
        self._read = 0
        self._failed = 0
        self._failed_reasons: dict[str, int] = {}
        self._receipt_acks = 0
        self._stray_receipt_acks = 0

    # -- deterministic draws -------------------------------------------------------------

    def traits(self, recipient: str) -> RecipientTraits:
        """Registered/offline/expires for a recipient, derived from blake2b(seed, recipient)."""
        cached = self._traits.get(recipient)
        if cached is not None:
            return cached
        u_reg, u_off, u_exp = _unpack_3q(_blake2b(self._key_prefix + recipient.encode(), digest_size=24).digest())
        registered = u_reg >= self._cut_unregistered
        offline = registered and u_off < self._cut_offline
        expires = offline and u_exp < self._cut_expire
        traits = RecipientTraits(registered, offline, expires)
        if len(self._traits) >= _TRAITS_CACHE_MAX:
            self._traits.clear()
        self._traits[recipient] = traits
        return traits

    def draws(self, msg_id: str, attempt: int) -> tuple[bool, int, bool, int]:
        """(throttled, latency_ms, read, read_delay_ms) for one submit attempt, from blake2b(seed, id, attempt).

        Four 64-bit uniforms from one hash (cheaper than seeding a random.Random per message, same
        reproducibility); the two lognormal delays come from one Box-Muller pair.
        """
        key = self._key_prefix + msg_id.encode() + (b"\x00%d" % attempt if attempt else b"")
        a, b, c, d = _unpack_4q(_blake2b(key, digest_size=32).digest())
        z = self._sigma * math.sqrt(-2.0 * math.log((c + 1) / (_U64 + 1)))  # (c+1)/(2^64+1) is in (0, 1)
        angle = _TWO_PI * (d / _U64)
        lat_mu = self._lat_mu
        read_mu = self._read_mu
        latency = 0 if lat_mu is None else int(math.exp(lat_mu + z * math.cos(angle)) + 0.5)
        read_delay = 0 if read_mu is None else int(math.exp(read_mu + z * math.sin(angle)) + 0.5)
        return a < self._cut_throttle, latency, b < self._cut_read, read_delay

    # -- protocol events -----------------------------------------------------------------

    def on_submit(self, sub: Submit, now_ms: int) -> list:
        """Handle one Submit; return the frames to answer with right away (one Ack)."""
        self._submits += 1
        msg_id = sub.id
        seen = self._seen.get(msg_id)
        if seen is not None:
            self._seen[msg_id] = seen + 1
            self._duplicates += 1
            return [Ack(id=msg_id)]
        if not msg_id or not sub.recipient:
            self._rejected += 1
            return [Ack(id=msg_id, code="rejected", reason="missing_id_or_recipient")]
        if len(sub.payload) > MAX_PAYLOAD:
            self._rejected += 1
            return [Ack(id=msg_id, code="rejected", reason="payload_too_large")]

        cfg = self.config
        attempt = self._throttles.get(msg_id, 0)
        throttled, latency, read, read_delay = self.draws(msg_id, attempt)
        if throttled:
            self._throttles[msg_id] = attempt + 1
            self._throttled += 1
            return [Ack(id=msg_id, code="throttled", retry_after_ms=cfg.throttle_retry_after_ms)]

        self._throttles.pop(msg_id, None)
        self._seen[msg_id] = 1
        traits = self.traits(sub.recipient)
        at = now_ms + latency
        failure = plaintext = None
        if traits.registered and self.devices is not None:
            plaintext, failure = self.devices.receive(sub.sender, sub.recipient, sub.payload, now_ms / 1000.0)
        self.last_plaintext = plaintext
        if not traits.registered:
            self._schedule(Receipt(id=msg_id, status="failed", at_ms=at, reason="recipient_not_registered"))
        elif failure is not None:
            self._schedule(Receipt(id=msg_id, status="failed", at_ms=at, reason="undecryptable_" + failure))
        elif traits.expires:
            at += int(cfg.offline_delay_ms)
            self._schedule(Receipt(id=msg_id, status="failed", at_ms=at, reason="recipient_offline_expired"))
        else:
            if traits.offline:
                at += int(cfg.offline_delay_ms)
            self._schedule(Receipt(id=msg_id, status="delivered", at_ms=at))
            if read:
                self._schedule(Receipt(id=msg_id, status="read", at_ms=at + max(1, read_delay)))
        return [Ack(id=msg_id)]

    def bundles(self, numbers: list[str]) -> tuple[list[tuple[str, bytes]], list[str], list[tuple[str, int]]]:
        """Answer a bundle request: (number, bundle) pairs, the numbers without keys, and
        (sender, one-time prekeys left) for every published sender whose pool was drawn on."""
        found, unknown, drawn = [], [], {}
        devices = self.devices
        for number in numbers:
            if not isinstance(number, str) or not number:
                continue
            if devices is not None and devices.is_published(number):
                bundle, left = devices.sender_bundle(number)
                found.append((number, bundle))
                drawn[number] = left
            elif devices is None or not self.traits(number).registered:
                unknown.append(number)
            else:
                found.append((number, devices.recipient_bundle(number)))
        return found, unknown, list(drawn.items())

    # -- inbound: customers writing to senders -------------------------------------------

    def customer_send(self, customer: str, sender: str, text: str, now_ms: int) -> tuple[Inbound | None, str, tuple | None]:
        """One message from a simulated customer to a published sender, encrypted as that
        customer's device would: (Inbound frame to deliver, "" | error, (sender, prekeys left) when
        a bundle was drawn). The frame stays unacknowledged until an InboundAck names it."""
        devices = self.devices
        if devices is None:
            return None, "e2e_off", None
        if not customer or not sender or not customer.startswith("+"):
            return None, "bad_number", None
        if not devices.is_published(sender):
            return None, "not_published", None
        plaintext = _text_encode({"type": "text", "body": text})
        try:
            payload, left = devices.compose(customer, sender, plaintext)
        except (KeyError, BadSignature, InvalidKey, MalformedMessage, ValueError):
            return None, "bad_bundle", None
        self._inbound_n += 1
        frame = Inbound(f"{self._inbound_prefix}-{self._inbound_n}", customer, sender, payload, now_ms)
        self._inbound_unacked[frame.id] = frame
        self._inbound_sent += 1
        return frame, "", None if left is None else (sender, left)

    def generate_inbound(self, count: int, now_ms: int) -> tuple[list[Inbound], dict[str, int]]:
        """The next `count` messages of the generated inbound traffic: message k comes from customer
        `inbound_customer_prefix` (+1888) + 7 digits and goes to a published sender, both picked
        by blake2b(seed, "in", k), so the same seed gives the same conversations. (frames, {sender: prekeys left} drawn)."""
        out: list[Inbound] = []
        drawn: dict[str, int] = {}
        senders = self.devices.published_numbers() if self.devices is not None else []
        pool = self.config.inbound_customers
        prefix = self.config.inbound_customer_prefix
        for _ in range(count):
            k = self._inbound_generated
            self._inbound_generated += 1
            if not senders:
                self._inbound_skipped += 1
                continue
            u_sender, u_customer = struct.unpack(">2Q", _blake2b(self._key_prefix + b"in\x00%d" % k,
                                                                 digest_size=16).digest())
            sender = senders[u_sender % len(senders)]
            customer = "%s%07d" % (prefix, u_customer % pool)
            frame, error, left = self.customer_send(customer, sender, f"netsim inbound {k}", now_ms)
            if frame is None:
                self._inbound_skipped += 1
                continue
            out.append(frame)
            if left is not None:
                drawn[left[0]] = left[1]
        return out, drawn

    def on_inbound_ack(self, ids: list[str]) -> None:
        for msg_id in ids:
            if self._inbound_unacked.pop(msg_id, None) is None:
                self._inbound_stray_acks += 1
            else:
                self._inbound_acks += 1

    def unacked_inbound(self) -> list[Inbound]:
        """Every inbound message not yet acknowledged, in the order they were sent."""
        return list(self._inbound_unacked.values())

    @property
    def inbound_backlog(self) -> int:
        return len(self._inbound_unacked)

    def _schedule(self, receipt: Receipt) -> None:
        at = receipt.at_ms
        bucket = self._buckets.get(at)
        if bucket is None:
            self._buckets[at] = [receipt]
            heapq.heappush(self._times, at)
        else:
            bucket.append(receipt)
        self._pending += 1

    def due(self, now_ms: int) -> list:
        """Pop every receipt due at or before now_ms; they become unacked until a ReceiptAck names them."""
        times = self._times
        out: list = []
        if not times or times[0] > now_ms:
            return out
        buckets = self._buckets
        pop = heapq.heappop
        while times and times[0] <= now_ms:
            out += buckets.pop(pop(times))
        unacked = self._unacked
        delivered = read = 0
        for receipt in out:
            queue = unacked.get(receipt.id)
            if queue is None:
                unacked[receipt.id] = [receipt]
            else:
                queue.append(receipt)
            status = receipt.status
            if status == "delivered":
                delivered += 1
            elif status == "read":
                read += 1
            else:
                self._failed += 1
                self._failed_reasons[receipt.reason] = self._failed_reasons.get(receipt.reason, 0) + 1
        self._delivered += delivered
        self._read += read
        self._pending -= len(out)
        self._unacked_count += len(out)
        return out

    def on_receipt_ack(self, ids: list[str]) -> None:
        """Each listed id drops the oldest unacknowledged receipt of that message; unknown ids are counted as stray."""
        unacked = self._unacked
        for msg_id in ids:
            queue = unacked.get(msg_id)
            if queue is None:
                self._stray_receipt_acks += 1
                continue
            del queue[0]
            if not queue:
                del unacked[msg_id]
            self._unacked_count -= 1
            self._receipt_acks += 1

    def unacked_receipts(self) -> list:
        """Every receipt sent but not yet acknowledged, oldest due first (for re-sending after a hello)."""
        out = [r for queue in self._unacked.values() for r in queue]
        out.sort(key=lambda r: r.at_ms)
        return out

    def next_due_ms(self) -> int | None:
        return self._times[0] if self._times else None

    def seen(self, msg_id: str) -> int:
        """How many times this id was accepted (first ok plus duplicates); throttled/rejected tries don't count."""
        return self._seen.get(msg_id, 0)

    def stats(self) -> dict:
        crypto = self.devices.stats() if self.devices is not None else {}
        return crypto | {
            "submits": self._submits,
            "unique": len(self._seen),
            "duplicates": self._duplicates,
            "throttled": self._throttled,
            "rejected": self._rejected,
            "delivered": self._delivered,
            "read": self._read,
            "failed": self._failed,
            "failed_reasons": dict(self._failed_reasons),
            "pending_receipts": self._pending,
            "unacked_receipts": self._unacked_count,
            "receipt_acks": self._receipt_acks,
            "stray_receipt_acks": self._stray_receipt_acks,
            "inbound_sent": self._inbound_sent,
            "inbound_acks": self._inbound_acks,
            "inbound_unacked": len(self._inbound_unacked),
            "inbound_stray_acks": self._inbound_stray_acks,
            "inbound_skipped": self._inbound_skipped,
        }
