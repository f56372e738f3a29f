"""The delivery shell against a real store and writer, with the network link replaced by a
recorder: answers from the network that make no sense are acknowledged and ignored, never fatal."""
import trio

from gateway.network.frames import Ack, Receipt, ReceiptAck, Submit
from gateway.schedule.scheduler import QueuedMessage
from gateway.store import ops
from gateway.store import records as R
from tests.inproc import with_gateway


async def accept(gw, msg_id):
    rec = R.MessageRecord("default", "+15550000001", "+14155550100", 1, None, "accepted", [("accepted", 1)])
    pending = R.PendingRecord("+15550000001", "+14155550100", 1, b"")
    await gw.writer.write(ops.accept, ops.AcceptArg(
        [ops.AcceptItem(msg_id, ops.encode(rec), ops.encode(pending))], None, None))


async def test_unknown_receipt_status_is_acknowledged_and_ignored(tmp_path):
    async def body(gw, link):
        await accept(gw, "01M80G6YDF0AVP1GGNM3839WG0")
        await gw.delivery.on_frames([Receipt("01M80G6YDF0AVP1GGNM3839WG0", "expired", 5)])
        assert link.sent == [ReceiptAck(["01M80G6YDF0AVP1GGNM3839WG0"])]
        assert gw.store.message("01M80G6YDF0AVP1GGNM3839WG0").status == "accepted"

    await with_gateway(tmp_path, body)


async def test_receipt_time_out_of_range_is_replaced_by_the_time_of_arrival(tmp_path):
    async def body(gw, link):
        await accept(gw, "01M80G6YDF0AVP1GGNM3839WG1")
        await gw.delivery.on_frames([Receipt("01M80G6YDF0AVP1GGNM3839WG1", "delivered", 10**30)])
        rec = gw.store.message("01M80G6YDF0AVP1GGNM3839WG1")
        assert rec.status == "delivered" and rec.events[-1][1] < 1 << 46

    await with_gateway(tmp_path, body)


async def test_thousands_of_answers_in_one_read_are_applied_in_pieces_and_in_order(tmp_path, monkeypatch):
    from gateway import delivery

    ids = ["01M80G6YDF0AVP1GGNM39%05d" % i for i in range(delivery.STATUS_PIECE * 2)]
    pieces: list[int] = []
    apply_status = ops.apply_status

    def recording(txn, dbs, arg):
        pieces.append(len(arg.updates))
        return apply_status(txn, dbs, arg)

    monkeypatch.setattr(ops, "apply_status", recording)

    async def body(gw, link):
        for msg_id in ids:
            await accept(gw, msg_id)
        # each message's ack, then its delivered receipt, then read: the pieces cut across them
        frames = [Ack(i, "ok", "") for i in ids] + [Receipt(i, "delivered", 5) for i in ids]
        frames += [Receipt(i, "read", 6) for i in ids[::2]]
        await gw.delivery.on_frames(frames)
        assert pieces == [delivery.STATUS_PIECE] * 4 + [len(frames) - 4 * delivery.STATUS_PIECE]
        for n, msg_id in enumerate(ids):
            rec = gw.store.message(msg_id)
            expected = ["accepted", "sent", "delivered"] + (["read"] if n % 2 == 0 else [])
            assert [status for status, _ in rec.events] == expected, msg_id

    await with_gateway(tmp_path, body)


async def test_rejected_submit_fails_the_message_with_the_reason(tmp_path):
    async def body(gw, link):
        await accept(gw, "01M80G6YDF0AVP1GGNM3839WG2")
        await gw.delivery.on_frames([Ack("01M80G6YDF0AVP1GGNM3839WG2", "rejected", "payload_too_large")])
        rec = gw.store.message("01M80G6YDF0AVP1GGNM3839WG2")
        assert (rec.status, rec.reason) == ("failed", "payload_too_large")

    await with_gateway(tmp_path, body)


async def test_outbox_records_of_the_sealed_format_are_opened_and_new_ones_sent_as_stored(tmp_path):
    async def body(gw, link):
        old4, old5, new = "01M80G6YDF0AVP1GGNM3839WG3", "01M80G6YDF0AVP1GGNM3839WG4", "01M80G6YDF0AVP1GGNM3839WG5"
        # Records written before the envelope was stored as it is: 4 or 5 fields, payload sealed.
        sealed4 = gw.sealer.seal(b"envelope-4", old4.encode())
        sealed5 = gw.sealer.seal(b"envelope-5", old5.encode())
        items = [(old4, ops.encode(["+15550000001", "+14155550100", 1, sealed4])),
                 (old5, ops.encode(["+15550000001", "+14155550101", 2, sealed5, 0])),
                 (new, ops.encode(R.OutboxRecord("+15550000001", "+14155550102", 1, b"envelope-n", 0, False)))]
        for msg_id, _ in items:
            await accept(gw, msg_id)
        await gw.writer.write(ops.dispatch, ops.DispatchArg(items, [], []))
        await gw.delivery.on_connected()
        submits = {f.id: f for f in link.sent if isinstance(f, Submit)}
        assert {k: (f.recipient, f.payload, f.priority) for k, f in submits.items()} == {
            old4: ("+14155550100", b"envelope-4", 1),
            old5: ("+14155550101", b"envelope-5", 2),
            new: ("+14155550102", b"envelope-n", 1),
        }

    await with_gateway(tmp_path, body)


async def test_idle_time_fills_the_key_pool_and_stops_when_work_arrives(tmp_path):
    from gateway.delivery import EPHEMERAL_POOL

    async def body(gw, link):
        delivery = gw.delivery
        delivery._pushed = trio.Event()  # as the dispatch loop leaves it after a wake-up: nothing waiting
        await delivery._refill_while_idle()
        assert len(delivery.ephemerals) == EPHEMERAL_POOL
        taken = {delivery.ephemerals.take().public_key().public_bytes_raw() for _ in range(10)}
        assert len(taken) == 10  # each key handed out once
        delivery.poke()  # work arrived: no key is made before it is dispatched
        await delivery._refill_while_idle()
        assert len(delivery.ephemerals) == EPHEMERAL_POOL - 10

    await with_gateway(tmp_path, body)


async def test_a_dispatch_round_goes_with_the_next_commit_instead_of_starting_one(tmp_path):
    """At low rates a round's write waits (up to group_commit_lazy_ms) for the commit the next accept
    starts: one commit per message instead of two. Nothing of the round is sent or stored before."""
    msg_id, other = "01M80G6YDF0AVP1GGNM3839WG6", "01M80G6YDF0AVP1GGNM3839WG7"
    sender = "+15550000001"

    async def body(gw, link):
        gw.keyring.identity = lambda number: None  # the sender's keys are gone: the round fails it, and stores that
        await accept(gw, msg_id)
        commits = gw.writer.commits
        now = gw.clock.now()
        gw.scheduler.push(QueuedMessage(msg_id, sender, "+14155550100", 1), now)
        batch = gw.scheduler.ready(now, 10)
        assert [m.id for m in batch] == [msg_id]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gw.delivery._dispatch, batch, now)
            await trio.sleep(0.2)
            assert gw.writer.commits == commits and gw.store.message(msg_id).status == "accepted"
            with trio.fail_after(0.5):  # the round alone would wait 1 s
                await accept(gw, other)
        assert gw.writer.commits == commits + 1  # the accept's commit carried the round
        rec = gw.store.message(msg_id)
        assert (rec.status, rec.reason) == ("failed", "sender_keys_missing")

    await with_gateway(tmp_path, body, store_extra="group_commit_lazy_ms = 1000")


async def test_a_big_dispatch_round_commits_at_once(tmp_path):
    """A round over LAZY_ROUND_MAX means a backlog: waiting for an accept's commit would idle the
    dispatch loop (batch feeds bring an accept every ~20 ms at 10,000 messages/s)."""
    from gateway.delivery import LAZY_ROUND_MAX

    sender = "+15550000009"  # a sender of its own, with a burst of 100
    ids = ["01M80G6YDF0AVP1GGNM38%05d" % i for i in range(LAZY_ROUND_MAX + 1)]

    async def body(gw, link):
        gw.keyring.identity = lambda number: None  # the round fails every message, and stores that
        for msg_id in ids:
            await accept(gw, msg_id)
        now = gw.clock.now()
        gw.scheduler.set_sender(sender, 6000, 100, now)
        for n, msg_id in enumerate(ids):  # a recipient each: no pair limit binds
            gw.scheduler.push(QueuedMessage(msg_id, sender, "+1415555%04d" % n, 1), now)
        batch = gw.scheduler.ready(now, 100)
        assert len(batch) == len(ids)
        with trio.fail_after(0.5):  # a lazy write would wait the whole second
            await gw.delivery._dispatch(batch, now)
        assert {gw.store.message(i).status for i in ids} == {"failed"}

    await with_gateway(tmp_path, body, store_extra="group_commit_lazy_ms = 1000")
