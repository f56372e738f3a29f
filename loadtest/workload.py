"""What each request carries: sender numbers and their tiers, recipients, pre-encoded HTTP requests,
and reading message ids back out of the answers.

Pure functions and small classes; no sockets, no clocks. Request k is a pure function of k, so a
run can be reproduced and a check can recompute who was meant to get what.
"""

from __future__ import annotations

import orjson

from loadtest.scenario import Scenario

__all__ = ["Workload", "sender_numbers", "sender_tiers", "ids_from_answers", "message_numbers", "message_text",
           "inbound_customers"]

SENDER_BASE = 15550001000
RECIPIENT_BASE = 16660000000
HOT_BASE = 16670000000


def message_text(n: int) -> str:
    """The text body of message n (the checks compare its digest with what netsim decrypted)."""
    return f"load test message {n}"


def inbound_customers(scn: Scenario) -> tuple[str, int, int]:
    """(customer number prefix, pool size, message count) of the inbound traffic netsim generates:
    its own +1888 customers, or the load's recipients (+1666 + 7 digits, the same numbers `message`
    sends to); as many messages as the rate over the load's duration."""
    ns = scn.netsim
    count = max(1, round(ns.inbound_rate * scn.schedule().duration_s)) if ns.inbound_rate > 0 else 0
    if ns.inbound_from == "recipients":
        return f"+{str(RECIPIENT_BASE)[:-7]}", min(scn.senders.recipients, 10_000_000), count
    return "+1888", ns.inbound_customers, count


def sender_numbers(count: int) -> list[str]:
    return [f"+{SENDER_BASE + i}" for i in range(count)]


def sender_tiers(scn: Scenario) -> list[str]:
    """The tier of each sender: shares rounded so they add up to `count`, in the order the tiers are listed."""
    count = scn.senders.count
    names = list(scn.senders.tiers)
    sizes = [int(scn.senders.tiers[n] * count) for n in names]
    i = 0
    while sum(sizes) < count:  # hand the remainder out one by one
        sizes[i % len(names)] += 1
        i += 1
    out: list[str] = []
    for name, size in zip(names, sizes):
        out += [name] * size
    return out[:count]


def _weighted_cycle(weights: list[float], length: int) -> list[int]:
    """Indexes spread by weight over `length` slots (smooth weighted round robin)."""
    total = sum(weights)
    current = [0.0] * len(weights)
    out = []
    for _ in range(length):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        out.append(best)
    return out


class Workload:
    """Pre-encodes request k for a scenario: who sends it, to whom, single or batch."""

    def __init__(self, scn: Scenario, *, host: str, port: int, api_key: str) -> None:
        self.scn = scn
        self.senders = sender_numbers(scn.senders.count)
        tiers = sender_tiers(scn)
        if scn.senders.spread == "by_rate" and scn.senders.count > 1:
            weights = [float(scn.gateway.tiers[t].rate_per_minute) for t in tiers]
            self._cycle = _weighted_cycle(weights, max(1000, 10 * len(weights)))
        else:
            self._cycle = list(range(len(self.senders)))
        self._recipients = scn.senders.recipients
        self._hot_every = scn.senders.hot_every
        self._hot = scn.senders.hot_recipients
        self._per_request = scn.messages_per_request()
        self._priority = scn.load.priority
        head = (f"POST {{path}} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\n"
                "Content-Type: application/json\r\nContent-Length: ").encode()
        self._single_head = head.replace(b"{path}", b"/v1/messages")
        self._batch_head = head.replace(b"{path}", b"/v1/messages/batch")
        self._prio = b"" if self._priority == "normal" else b',"priority":"%s"' % self._priority.encode()

    def message(self, n: int) -> tuple[str, str]:
        """(sender, recipient) of message n (messages are numbered across requests)."""
        if self._hot_every and n % self._hot_every == 0:
            return self.senders[0], f"+{HOT_BASE + (n // self._hot_every) % self._hot}"
        return self.senders[self._cycle[n % len(self._cycle)]], f"+{RECIPIENT_BASE + n % self._recipients}"

    def _item(self, n: int) -> bytes:
        sender, recipient = self.message(n)
        if len(self.senders) == 1:  # the workspace's default sender (so --target works with any config)
            return b'{"to":"%s","text":{"body":"%s"}%s}' % (recipient.encode(), message_text(n).encode(), self._prio)
        return (b'{"from":"%s","to":"%s","text":{"body":"%s"}%s}'
                % (sender.encode(), recipient.encode(), message_text(n).encode(), self._prio))

    def request(self, k: int) -> bytes:
        if self._per_request == 1:
            body = self._item(k)
            return b"%s%d\r\n\r\n%s" % (self._single_head, len(body), body)
        first = k * self._per_request
        body = b'{"messages":[%s]}' % b",".join(self._item(n) for n in range(first, first + self._per_request))
        return b"%s%d\r\n\r\n%s" % (self._batch_head, len(body), body)


def ids_from_answers(kept: list[tuple[int, bytes, bytes]]) -> tuple[list[str], int]:
    """(accepted message ids, messages rejected inside 2xx batch answers) from the kept 2xx answers."""
    ids: list[str] = []
    rejected = 0
    for _seq, _status, body in kept:
        if body.startswith(b'{"id":"') and body[33:34] == b'"':
            ids.append(body[7:33].decode())
            continue
        doc = orjson.loads(body)
        if "results" in doc:
            for item in doc["results"]:
                if "id" in item:
                    ids.append(item["id"])
                else:
                    rejected += 1
        elif "id" in doc:
            ids.append(doc["id"])
    return ids, rejected


def message_numbers(kept: list[tuple[int, bytes, bytes]], per_request: int) -> dict[str, int]:
    """{accepted id: its message number} from the kept 2xx answers (request k carries messages
    k * per_request ...; a batch answers item by item in order)."""
    out: dict[str, int] = {}
    for seq, _status, body in kept:
        if per_request == 1:
            if body.startswith(b'{"id":"') and body[33:34] == b'"':
                out[body[7:33].decode()] = seq
            elif "id" in (doc := orjson.loads(body)):
                out[doc["id"]] = seq
            continue
        for i, item in enumerate(orjson.loads(body).get("results", ())):
            if "id" in item:
                out[item["id"]] = seq * per_request + item.get("index", i)
    return out
