"""Delivers the webhook outbox: per endpoint, batches of stored events are POSTed signed, with
bounded concurrency, exponential backoff on 5xx / timeouts / refused connections, and removal
only after a 2xx. Events outlive restarts because they are read back from LMDB.

It never builds event bodies (the status and inbound ops stored them; those that carry a
customer's text are sealed at rest and opened here, just before the POST) and never logs secrets
or bodies.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import random
from collections import deque

import trio

from gateway.crypto.seal import SealError
from gateway.http.client import HttpClient, HttpClientError
from gateway.ids import IdGenerator, timestamp_ms
from gateway.store import ops
from gateway.store import records as R
from gateway.store.writer import write_until_stored
from gateway.webhooks import policy
from gateway.webhooks.signing import signed_headers

log = logging.getLogger("gateway.webhooks")
LOAD_CHUNK = 1000


def endpoint_id(workspace: str, url: str) -> bytes:
    return hashlib.sha256(f"{workspace}\0{url}".encode()).hexdigest()[:16].encode()


def read_secret(secret_file: str | None, secret_env: str | None) -> bytes:
    if secret_file:
        with open(secret_file, "rb") as f:
            secret = f.read().strip()
    else:
        secret = os.environ.get(secret_env or "", "").encode()
    if len(secret) < 16:
        raise ValueError("webhook secret must be at least 16 bytes")
    return secret


class Endpoint:
    def __init__(self, ident: bytes, workspace: str, url: str, secret: bytes, status: bool = True) -> None:
        self.id, self.workspace, self.url, self.secret = ident, workspace, url, secret
        self.status = status  # takes message.status events (`targets`); the other kinds pick their endpoints themselves
        self.prefix = ident + b"\0"
        self.scan_from = self.prefix
        self.dirty = True
        self.ready: deque[tuple[bytes, bytes]] = deque()
        self.retry: list[tuple[float, int, int, list[tuple[bytes, bytes]]]] = []
        self.wake = trio.Event()
        self.scopes: list[trio.CancelScope] = []  # one per worker, cancelled when removed
        self.sealed: set[bytes] = set()  # keys of loaded events stored sealed (sealed again if dead)
        self.held: set[bytes] = set()  # keys loaded and not yet delivered or dead (ready, retry, in flight)
        # dead letters sent again (admin API): key -> when (unix ms); their age for webhooks.max_age_h
        # counts from then
        self.replayed: dict[bytes, int] = {}
        self.dying: set[bytes] = set()  # held keys whose delivery is storing them as dead letters
        # replayed while dying (dead-lettered in the commit that replayed them): queued again once
        # that delivery lets go of them, with what the outbox holds now
        self.again: dict[bytes, bytes] = {}

    def stop(self) -> None:
        for scope in self.scopes:
            scope.cancel()

    def poke(self) -> None:
        self.dirty = True
        self.wake.set()


class WebhookDispatcher:
    def __init__(self, gw, client: HttpClient | None = None, rng: random.Random | None = None) -> None:
        self.gw = gw
        self.client = client or HttpClient()
        self.rng = rng or random.Random()
        self.endpoints: dict[bytes, Endpoint] = {}
        self._by_workspace: dict[str, list[Endpoint]] = {}
        self._nursery: trio.Nursery | None = None
        self._seq = itertools.count()
        self._delivery_ids = IdGenerator()
        self.in_flight = 0  # deliveries under way (a POST, then storing its outcome)
        self._stopping = trio.Event()  # set: no delivery starts (the gateway is stopping)

    # -- configuration ----------------------------------------------------------------------

    def configure(self, endpoints: list[Endpoint]) -> None:
        """Swap the set of endpoints; kept ones keep their queues, removed ones stop."""
        wanted = {ep.id: ep for ep in endpoints}
        for ident, ep in list(self.endpoints.items()):
            if ident not in wanted:  # the id is a hash of workspace and URL
                ep.stop()
                del self.endpoints[ident]
            else:
                ep.secret, ep.status = wanted[ident].secret, wanted[ident].status
        for ident, ep in wanted.items():
            if ident not in self.endpoints:
                self.endpoints[ident] = ep
                self._start(ep)
        self._by_workspace = {}
        for ep in self.endpoints.values():
            self._by_workspace.setdefault(ep.workspace, []).append(ep)

    def stop_starting(self) -> None:
        """The gateway is stopping: deliveries under way finish (see `in_flight`), no new one starts;
        what is left stays in the outbox for the next start."""
        self._stopping.set()
        for ep in self.endpoints.values():
            ep.wake.set()

    def targets(self) -> dict[str, list[bytes]]:
        """The endpoints that take message.status events, by workspace."""
        return {ws: ids for ws, eps in self._by_workspace.items() if (ids := [ep.id for ep in eps if ep.status])}

    def wake(self, workspaces) -> None:
        for ws in workspaces:
            for ep in self._by_workspace.get(ws, ()):
                ep.poke()

    @staticmethod
    def queued(ep: Endpoint) -> int:
        """Events of `ep` loaded and waiting (first tries and retries)."""
        return len(ep.ready) + sum(len(r[3]) for r in ep.retry)

    def requeue(self, moved: list[tuple[bytes, bytes]], now_ms: int) -> int:
        """Dead letters just stored back in the outbox (ops.replay_dead) go out again: queued on their
        endpoints now, aged from now. Returns how many there were for configured endpoints (one
        removed meanwhile takes them from the outbox after it is configured again). The outbox scan
        skips what is held, so an event the scan loaded between the commit and this call is not
        queued twice."""
        n = 0
        for key, stored in moved:
            ep = self.endpoints.get(key.split(b"\0", 1)[0])
            if ep is None:
                continue
            n += 1
            ep.replayed[key] = now_ms
            if key in ep.dying:  # dead-lettered and replayed in one commit: queued once let go (_forget)
                ep.again[key] = stored
            elif key not in ep.held:  # (held: the outbox scan loaded it after the replay's commit)
                self._queue(ep, key, stored)
        return n

    def _queue(self, ep: Endpoint, key: bytes, stored: bytes) -> None:
        value = self._readable(ep, key, stored)
        if value is None:  # its data key is missing (logged): it waits in the outbox, as at a load
            ep.replayed.pop(key, None)
            return
        ep.held.add(key)
        ep.ready.append((key, value))
        ep.wake.set()

    # -- tasks -------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for ep in self.endpoints.values():
                self._start(ep)
            task_status.started()
            await trio.sleep_forever()

    def _start(self, ep: Endpoint) -> None:
        if self._nursery is None:
            return  # run() starts it
        for _ in range(self.gw.config.webhooks.concurrency_per_endpoint):
            self._nursery.start_soon(self._worker, ep)

    async def _worker(self, ep: Endpoint) -> None:
        scope = trio.CancelScope()
        ep.scopes.append(scope)
        with scope:
            while True:
                if self._stopping.is_set():
                    await trio.sleep_forever()  # the gateway's stop cancels it
                if ep.wake.is_set():  # every idle worker waits on the same, unset event
                    ep.wake = trio.Event()
                job = self._next_job(ep)
                if job is None:
                    delay = ep.retry[0][0] - self.gw.clock.steady() if ep.retry else float("inf")
                    with trio.move_on_after(max(0.0, delay)):
                        await ep.wake.wait()
                    continue
                self.in_flight += 1
                try:
                    await self._deliver(ep, *job)
                finally:
                    self.in_flight -= 1

    def _next_job(self, ep: Endpoint):
        now = self.gw.clock.steady()
        if ep.retry and ep.retry[0][0] <= now:
            _, _, attempt, items = heapq.heappop(ep.retry)
            return attempt, items
        if not ep.ready and ep.dirty:
            self._load(ep)
        if not ep.ready:
            return None
        n = min(len(ep.ready), self.gw.config.webhooks.max_events_per_delivery)
        return 1, [ep.ready.popleft() for _ in range(n)]

    def _load(self, ep: Endpoint) -> None:
        store = self.gw.store
        with store.env.begin(db=store.dbs["webhook_outbox"], buffers=False) as txn:
            cur = txn.cursor()
            found = cur.set_range(ep.scan_from)
            scanned = None
            while found and len(ep.ready) < LOAD_CHUNK:
                key = cur.key()
                if not key.startswith(ep.prefix):
                    break
                if key != ep.scan_from and key not in ep.held:
                    value = self._readable(ep, key, cur.value())
                    if value is not None:
                        ep.held.add(key)
                        ep.ready.append((key, value))
                    else:
                        ep.replayed.pop(key, None)
                scanned = key
                found = cur.next()
        if scanned is not None:
            ep.scan_from = scanned
        ep.dirty = len(ep.ready) >= LOAD_CHUNK

    def _readable(self, ep: Endpoint, key: bytes, value: bytes) -> bytes | None:
        """The event JSON: stored as is, or sealed (events that carry a customer's text, such as
        message.received, bound to their event id). None, logged, when its data key is missing:
        it stays stored and goes once the key is back and the gateway restarted."""
        if not value.startswith(ops.SEALED_EVENT):
            return value
        event_id = key[len(ep.prefix):]
        try:
            opened = self.gw.sealer.open(value[len(ops.SEALED_EVENT):], event_id)
        except SealError as exc:
            log.error("webhook event %s cannot be opened: %s", event_id.decode(errors="replace"), exc)
            return None
        ep.sealed.add(key)
        return opened

    async def _deliver(self, ep: Endpoint, attempt: int, items: list[tuple[bytes, bytes]]) -> None:
        cfg = self.gw.config.webhooks
        body = b'{"events":[' + b",".join(v for _, v in items) + b"]}"
        ts = int(self.gw.clock.now())
        headers = signed_headers(ep.secret, ts, body, self._delivery_ids.new())
        status, retry_after = None, None
        try:
            resp = await self.client.request("POST", ep.url, headers=headers, body=body,
                                             timeout_s=cfg.timeout_s)
            status = resp.status
            retry_after = _retry_after(resp.headers.get("retry-after"))
        except HttpClientError as exc:  # URLs may carry tokens: log the endpoint id only
            log.info("webhook endpoint %s: %s", ep.id.decode(), type(exc).__name__)
        except Exception:  # whatever an endpoint answers must not take the gateway down
            log.exception("webhook endpoint %s: unexpected failure, treated as no answer", ep.id.decode())
        outcome = policy.classify(status)
        keys = [k for k, _ in items]
        self.gw.metrics.webhooks.inc((outcome if status is not None else "no_answer",))
        if outcome == policy.DONE:
            await write_until_stored(self.gw.writer, ops.delete_keys, ("webhook_outbox", keys))
            self._forget(ep, keys)
            return
        if outcome == policy.DEAD:
            dead, keep = items, []
        else:  # each event by its own age (a replayed one counts from its replay)
            now_ms, max_age_ms = self.gw.clock.now_ms(), cfg.max_age_h * 3_600_000
            dead, keep = [], []
            for item in items:
                born = ep.replayed.get(item[0]) or timestamp_ms(item[0][len(ep.prefix):].decode())
                (dead if now_ms - born > max_age_ms else keep).append(item)
        if dead:
            reason = f"http {status}" if status is not None else "no answer"
            log.warning("webhook endpoint %s: %d events to the dead-letter table (%s)", ep.id.decode(),
                        len(dead), reason)
            seal = self.gw.sealer.seal
            letters = [(k, ops.encode(R.DeadLetter(
                ops.SEALED_EVENT + seal(v, k[len(ep.prefix):]) if k in ep.sealed else v,
                attempt, reason, self.gw.clock.now_ms()))) for k, v in dead]
            ep.dying.update(k for k, _ in dead)
            await write_until_stored(self.gw.writer, ops.move_to_dead, letters)
            self._forget(ep, [k for k, _ in dead])
        if keep:
            delay = policy.backoff_s(attempt, cfg.backoff_initial_s, cfg.backoff_max_s, self.rng, retry_after)
            heapq.heappush(ep.retry, (self.gw.clock.steady() + delay, next(self._seq), attempt + 1, keep))
            ep.wake.set()

    def _forget(self, ep: Endpoint, keys: list[bytes]) -> None:
        """These events left the outbox (delivered, or dead); any of them replayed meanwhile (back in
        the outbox by the same commit that made it dead) is queued again."""
        ep.sealed.difference_update(keys)
        ep.held.difference_update(keys)
        ep.dying.difference_update(keys)
        if ep.replayed:
            for key in keys:
                ep.replayed.pop(key, None)
        if ep.again:
            for key in keys:
                stored = ep.again.pop(key, None)
                if stored is not None:
                    ep.replayed[key] = self.gw.clock.now_ms()
                    self._queue(ep, key, stored)

    async def aclose(self) -> None:
        await self.client.aclose()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
