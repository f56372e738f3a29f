"""The webhook dispatcher's bookkeeping of replayed dead letters, on a real store: an event replayed
goes out once whatever the outbox scan did meanwhile, one replayed while its failed delivery is
still being dead-lettered goes out again after it, sealed ones are opened, and each event of a
failed delivery is judged by its own age; at a stop, deliveries under way finish and no other starts."""
from types import SimpleNamespace

import orjson
import pytest
import trio

from gateway.clock import FakeClock
from gateway.crypto.seal import Sealer
from gateway.ids import IdGenerator
from gateway.store import ops
from gateway.store import records as R
from gateway.store.env import open_store
from gateway.webhooks.dispatcher import Endpoint, WebhookDispatcher

EP = b"0123456789abcdef"
HOUR_MS = 3_600_000


class Writer:
    """Runs each op in its own transaction, as the gateway's writer would in a batch."""

    def __init__(self, store) -> None:
        self.store = store

    async def write(self, op, arg=None, **_):
        with self.store.env.begin(write=True) as txn:
            return op(txn, self.store.dbs, arg)


class Client:
    def __init__(self, status: int) -> None:
        self.status, self.bodies = status, []

    async def request(self, method, url, *, headers=(), body=b"", timeout_s=10.0):
        self.bodies.append(body)
        return SimpleNamespace(status=self.status, headers={})


@pytest.fixture
def env(tmp_path):
    store = open_store(str(tmp_path), map_size_mb=32)
    clock = FakeClock()
    gw = SimpleNamespace(
        store=store, clock=clock, writer=Writer(store),
        sealer=Sealer({1: bytes(range(32))}, 1),
        metrics=SimpleNamespace(webhooks=SimpleNamespace(inc=lambda *a, **k: None)),
        config=SimpleNamespace(webhooks=SimpleNamespace(timeout_s=1.0, backoff_initial_s=1.0, backoff_max_s=60.0,
                                                        max_age_h=1.0, max_events_per_delivery=100,
                                                        concurrency_per_endpoint=1)))
    d = WebhookDispatcher(gw, client=Client(200))
    ep = Endpoint(EP, "default", "http://127.0.0.1:9/hooks", b"s" * 16)
    d.configure([ep])
    yield gw, d, ep
    store.close()


def event(gw, at_ms: int) -> tuple[bytes, bytes]:
    """(outbox key, stored JSON) of an event made at `at_ms`."""
    event_id = IdGenerator(clock_ms=lambda: at_ms).new()
    return EP + b"\0" + event_id.encode(), orjson.dumps({"id": event_id, "type": "message.status"})


def put_outbox(gw, *items):
    with gw.store.env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value, db=gw.store.dbs["webhook_outbox"])


def ready_keys(ep):
    return [k for k, _ in ep.ready]


def test_an_event_the_scan_loaded_before_the_replay_was_seen_is_queued_once_and_sent_once(env):
    gw, d, ep = env
    k = event(gw, gw.clock.now_ms())
    put_outbox(gw, k)  # the replay's commit put it back; a woken worker's scan got there first
    d._load(ep)
    assert d.requeue([k], gw.clock.now_ms()) == 1
    assert ready_keys(ep) == [k[0]]
    trio.run(d._deliver, ep, 1, [ep.ready.popleft()])  # delivered (2xx)
    assert ready_keys(ep) == [] and not ep.held and gw.store.get("webhook_outbox", k[0]) is None


def test_an_event_replayed_ahead_of_the_scan_is_not_loaded_again(env):
    gw, d, ep = env
    k = event(gw, gw.clock.now_ms())
    put_outbox(gw, k)
    d.requeue([k], gw.clock.now_ms())
    later = event(gw, gw.clock.now_ms() + 5)
    put_outbox(gw, later)
    ep.poke()
    d._load(ep)
    assert ready_keys(ep) == [k[0], later[0]]


def test_an_event_replayed_while_being_dead_lettered_goes_out_again_after(env):
    gw, d, ep = env
    k = event(gw, gw.clock.now_ms())
    put_outbox(gw, k)
    d._load(ep)
    ep.ready.clear()  # a worker holds it: its delivery failed for good and is being dead-lettered
    ep.dying.add(k[0])
    assert d.requeue([k], gw.clock.now_ms()) == 1
    assert ready_keys(ep) == []  # not twice at once
    d._forget(ep, [k[0]])  # the dead letter is stored: the replay's copy goes now
    assert ready_keys(ep) == [k[0]] and k[0] in ep.held


def test_a_sealed_event_is_opened_when_replayed_and_sealed_again_if_it_dies(env):
    gw, d, ep = env
    k, text = event(gw, gw.clock.now_ms())
    stored = ops.SEALED_EVENT + gw.sealer.seal(text, k[len(EP) + 1:])
    d.requeue([(k, stored)], gw.clock.now_ms())
    assert list(ep.ready) == [(k, text)] and k in ep.sealed
    d.client = Client(400)  # a final refusal
    trio.run(d._deliver, ep, 1, [ep.ready.popleft()])
    dead = R.dead_letter_decoder.decode(gw.store.get("webhook_dead", k))
    assert dead.event.startswith(ops.SEALED_EVENT) and text not in dead.event
    assert gw.sealer.open(dead.event[1:], k[len(EP) + 1:]) == text


def test_each_event_of_a_failed_delivery_is_judged_by_its_own_age(env):
    gw, d, ep = env
    now = gw.clock.now_ms()
    old = event(gw, now - 2 * HOUR_MS)  # past max_age_h (1 h)
    replayed = event(gw, now - 3 * HOUR_MS)  # older still, but replayed just now
    put_outbox(gw, old, replayed)
    d.requeue([replayed], now)
    d._load(ep)
    assert sorted(ready_keys(ep)) == sorted([old[0], replayed[0]])
    d.client = Client(503)  # retry-able
    trio.run(d._deliver, ep, 1, list(ep.ready))
    assert gw.store.get("webhook_dead", old[0]) is not None
    assert gw.store.get("webhook_dead", replayed[0]) is None
    assert [k for k, _ in ep.retry[0][3]] == [replayed[0]]
    assert ep.held == {replayed[0]}


class SlowClient(Client):
    def __init__(self) -> None:
        super().__init__(200)
        self.release = trio.Event()

    async def request(self, method, url, *, headers=(), body=b"", timeout_s=10.0):
        self.bodies.append(body)
        await self.release.wait()
        return SimpleNamespace(status=200, headers={})


def test_at_a_stop_the_delivery_under_way_finishes_and_stores_its_outcome_and_no_other_starts(env):
    gw, d, ep = env
    first, second = event(gw, gw.clock.now_ms()), event(gw, gw.clock.now_ms() + 1)
    put_outbox(gw, first)
    client = d.client = SlowClient()

    async def main():
        with trio.fail_after(5):  # a broken in_flight count fails here instead of hanging
            await run()

    async def run():
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run)
            while not d.in_flight:
                await trio.sleep(0.001)
            d.stop_starting()
            put_outbox(gw, second)
            d.wake(["default"])
            client.release.set()
            while d.in_flight:
                await trio.sleep(0.001)
            await trio.sleep(0.05)  # time enough for a worker that (wrongly) went on
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(client.bodies) == 1
    assert gw.store.get("webhook_outbox", first[0]) is None  # its 2xx was stored
    assert gw.store.get("webhook_outbox", second[0]) is not None  # left for the next start
