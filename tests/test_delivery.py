"""The delivery shell against a real store and writer, with the network link replaced by a
recorder: answers from the network that make no sense are acknowledged and ignored, never fatal."""
from gateway.network.frames import Ack, Receipt, ReceiptAck
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


async def test_rejected_submit_fails_the_message_with_the_reason(tmp_path):
    async def body(gw, link):
        await accept(gw, "01M80G6YDF0AVP1GGNM3839WG2")
        await gw.delivery.on_frames([Ack("01M80G6YDF0AVP1GGNM3839WG2", "rejected", "payload_too_large")])
        rec = gw.store.message("01M80G6YDF0AVP1GGNM3839WG2")
        assert (rec.status, rec.reason) == ("failed", "payload_too_large")

    await with_gateway(tmp_path, body)
