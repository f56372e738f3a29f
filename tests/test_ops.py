"""Store operations: accept with idempotency, pending -> outbox, status changes only forward."""
import pytest

from gateway.ids import IdGenerator
from gateway.store import ops
from gateway.store import records as R
from gateway.store.env import open_store


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path), map_size_mb=32)
    yield s
    s.close()


def run(store, op, arg):
    with store.env.begin(write=True) as txn:
        return op(txn, store.dbs, arg)


def accept_one(store, msg_id="01M80G6YDF0AVP1GGNM3839WG0", workspace="default", idem=None, at=1000, cutoff=0):
    rec = R.MessageRecord(workspace, "+15550000001", "+14155550100", 1, "ref-1", "accepted", [("accepted", 1000)])
    pending = R.PendingRecord("+15550000001", "+14155550100", 1, ops.encode(R.TextPayload("hi")))
    idem_key = R.idempotency_key(workspace, idem) if idem else None
    idem_rec = ops.encode(R.IdempotencyRecord(b"fp", 202, b"{}", at)) if idem else None
    return run(store, ops.accept, ops.AcceptArg([ops.AcceptItem(msg_id, ops.encode(rec), ops.encode(pending))],
                                                idem_key, idem_rec, at, cutoff))


def status(store, updates, hooks=None):
    return run(store, ops.apply_status, ops.StatusArg(updates, hooks or {}, IdGenerator()))


def test_accept_writes_message_and_pending(store):
    assert accept_one(store) is None
    assert store.message("01M80G6YDF0AVP1GGNM3839WG0").status == "accepted"
    assert store.count("pending") == 1


def test_reused_idempotency_key_returns_the_first_record_and_writes_nothing(store):
    accept_one(store, idem="k1")
    again = accept_one(store, msg_id="01M80G6YDF0AVP1GGNM3839WG1", idem="k1")
    assert again.status == 202 and again.body == b"{}"
    assert store.message("01M80G6YDF0AVP1GGNM3839WG1") is None
    assert store.count("pending") == 1


def outbox_item(msg_id, payload=b"ciphertext"):
    return msg_id, ops.encode(R.OutboxRecord("+15550000001", "+14155550100", 1, payload))


def test_dispatch_moves_pending_to_outbox_with_ciphertext_session_and_limiter_state(store):
    accept_one(store)
    result = run(store, ops.dispatch, ops.DispatchArg(
        [outbox_item("01M80G6YDF0AVP1GGNM3839WG0"), outbox_item("01M80G6YDF0AVP1GGNM3839WZZ")],
        [(b"+15550000001\0+14155550100", b"sealed-state")],
        [(R.limiter_sender_key("+15550000001"), (3.0, 99.0))]))
    assert result.moved == ["01M80G6YDF0AVP1GGNM3839WG0"] and result.changes == []
    assert store.count("pending") == 0 and store.count("outbox") == 1
    assert R.outbox_decoder.decode(store.get("outbox", b"01M80G6YDF0AVP1GGNM3839WG0")).payload == b"ciphertext"
    assert store.get("sessions", b"+15550000001\0+14155550100") == b"sealed-state"
    assert R.limiter_decoder.decode(store.get("limiter", b"s\0+15550000001")) == (3.0, 99.0)


def test_dispatch_fails_the_messages_that_got_no_session_in_the_same_commit(store):
    accept_one(store)
    msg = "01M80G6YDF0AVP1GGNM3839WG0"
    result = run(store, ops.dispatch, ops.DispatchArg([], [], [], [(msg, "recipient_not_registered", 1500)],
                                                      {"default": [b"ep1"]}, IdGenerator()))
    assert [(c.id, c.status) for c in result.changes] == [(msg, "failed")]
    rec = store.message(msg)
    assert (rec.status, rec.reason) == ("failed", "recipient_not_registered")
    assert store.count("pending") == 0 and store.count("outbox") == 0
    assert b'"reason":"recipient_not_registered"' in store.scan("webhook_outbox")[0][1]


def test_statuses_move_only_forward_and_duplicates_change_nothing(store):
    accept_one(store)
    msg = "01M80G6YDF0AVP1GGNM3839WG0"
    changes = status(store, [(msg, "sent", 2000, "", True), (msg, "delivered", 3000, "", False),
                             (msg, "delivered", 3500, "", False), (msg, "sent", 3600, "", True),
                             (msg, "read", 4000, "", False), (msg, "failed", 5000, "late", False)])
    assert [c.status for c in changes] == ["sent", "delivered", "read"]
    rec = store.message(msg)
    assert rec.status == "read" and rec.reason == ""
    assert rec.events == [("accepted", 1000), ("sent", 2000), ("delivered", 3000), ("read", 4000)]


def test_an_empty_id_changes_nothing_and_fails_nothing_else(store):
    accept_one(store)
    msg = "01M80G6YDF0AVP1GGNM3839WG0"
    changes = status(store, [("", "sent", 2000, "", True), (msg, "sent", 2000, "", True), ("", "read", 3000, "", False)])
    assert [c.id for c in changes] == [msg]
    assert run(store, ops.count_throttles, ["", msg]) == [0, 1]


def test_failed_receipt_ends_the_message_and_clears_the_outbox(store):
    accept_one(store)
    msg = "01M80G6YDF0AVP1GGNM3839WG0"
    run(store, ops.dispatch, ops.DispatchArg([outbox_item(msg)], [], []))
    status(store, [(msg, "failed", 2000, "recipient_not_registered", False)])
    rec = store.message(msg)
    assert (rec.status, rec.reason) == ("failed", "recipient_not_registered")
    assert store.count("outbox") == 0
    assert status(store, [(msg, "delivered", 3000, "", False)]) == []


def test_a_status_is_never_timed_before_the_one_it_follows(store):
    accept_one(store)
    msg = "01M80G6YDF0AVP1GGNM3839WG0"
    status(store, [(msg, "sent", 2000, "", True)])
    [change] = status(store, [(msg, "delivered", 1500, "", False)])  # the network's clock, a little behind
    assert change.at_ms == 2000
    assert store.message(msg).events == [("accepted", 1000), ("sent", 2000), ("delivered", 2000)]


def test_status_change_queues_a_webhook_event_per_endpoint(store):
    accept_one(store)
    msg = "01M80G6YDF0AVP1GGNM3839WG0"
    status(store, [(msg, "sent", 2000, "", True)], hooks={"default": [b"ep1", b"ep2"], "other": [b"ep3"]})
    events = store.scan("webhook_outbox")
    assert [k.split(b"\0")[0] for k, _ in events] == [b"ep1", b"ep2"]
    assert b'"status":"sent"' in events[0][1] and b'"client_ref":"ref-1"' in events[0][1]


def test_expired_idempotency_records_are_removed(store):
    accept_one(store, idem="old")
    assert run(store, ops.expire_idempotency, (999, 100)) == 0
    assert run(store, ops.expire_idempotency, (1001, 100)) == 1
    assert store.count("idempotency") == 0 and store.count("idempotency_at") == 0


def test_expiry_goes_oldest_first_in_bounded_rounds_and_spares_a_key_used_again(store):
    ids = IdGenerator()
    for n in range(5):
        accept_one(store, ids.new(), idem=f"k{n}", at=1000 + n)
    # k0 expired and was used again: a new answer, made after the cutoff
    assert accept_one(store, ids.new(), idem="k0", at=5000, cutoff=1003) is None
    assert run(store, ops.expire_idempotency, (1004, 2)) == 2  # k0's old entry, then k1
    assert store.get("idempotency", R.idempotency_key("default", "k0")) is not None
    assert store.get("idempotency", R.idempotency_key("default", "k1")) is None
    assert run(store, ops.expire_idempotency, (1004, 2)) == 2  # k2, k3
    assert run(store, ops.expire_idempotency, (1004, 2)) == 0
    assert sorted(k for k, _ in store.scan("idempotency")) == [R.idempotency_key("default", k) for k in ("k0", "k4")]


def test_an_expired_answer_is_not_given_again_and_its_key_sends_anew(store):
    accept_one(store, "01M80G6YDF0AVP1GGNM3839WG0", idem="late", at=1000)
    earlier = accept_one(store, "01M80G6YDF0AVP1GGNM3839WG1", idem="late", at=2000, cutoff=1000)
    assert earlier is not None and earlier.created_ms == 1000  # made at the cutoff: still in force
    assert accept_one(store, "01M80G6YDF0AVP1GGNM3839WG2", idem="late", at=3000, cutoff=1001) is None
    assert store.message("01M80G6YDF0AVP1GGNM3839WG2") is not None


def test_a_sweep_indexes_records_of_earlier_versions_and_drops_expired_ones(store):
    with store.env.begin(write=True) as txn:  # records as a version without the expiry index wrote them
        for n in range(7):
            txn.put(R.idempotency_key("default", f"k{n}"), ops.encode(R.IdempotencyRecord(b"fp", 202, b"{}", 1000 + n)),
                    db=store.dbs["idempotency"])
    after, rounds = b"", 0
    while after is not None:
        after = run(store, ops.sweep_idempotency, (after, 1003, 3))
        rounds += 1
    assert rounds == 3
    assert store.count("idempotency") == 4 and store.count("idempotency_at") == 4
    assert run(store, ops.expire_idempotency, (1005, 100)) == 2
    assert sorted(k for k, _ in store.scan("idempotency")) == [R.idempotency_key("default", k) for k in ("k5", "k6")]



def test_accept_group_writes_every_item_and_seals_the_group(store):
    group = ops.AcceptGroup()
    for msg_id in ("01M80G6YDF0AVP1GGNM3839WG0", "01M80G6YDF0AVP1GGNM3839WG1"):
        rec = R.MessageRecord("default", "+15550000001", "+14155550100", 1, None, "accepted", [("accepted", 1000)])
        pending = R.PendingRecord("+15550000001", "+14155550100", 1, ops.encode(R.TextPayload("hi")))
        group.items.append(ops.AcceptItem(msg_id, ops.encode(rec), ops.encode(pending)))
    assert not group.sealed
    assert run(store, ops.accept_group, group) is None
    assert group.sealed
    assert store.count("pending") == 2 and store.message("01M80G6YDF0AVP1GGNM3839WG1").status == "accepted"


def dead_letters(store, *keys, event=b'{"id":"x"}'):
    run(store, ops.move_to_dead, [(k, ops.encode(R.DeadLetter(event, 1, "http 400", 5))) for k in keys])


def test_replay_moves_the_oldest_dead_letters_of_the_named_endpoints_back_to_the_outbox(store):
    a = [b"aaaaaaaaaaaaaaaa\0" + b"01M80G6YDF0AVP1GGNM3839WG%d" % i for i in range(5)]
    b = [b"bbbbbbbbbbbbbbbb\0" + b"01M80G6YDF0AVP1GGNM3839WG%d" % i for i in range(2)]
    dead_letters(store, *a, *b)
    sealed = b"\0sealed bytes"
    run(store, ops.move_to_dead, [(a[4], ops.encode(R.DeadLetter(sealed, 3, "no answer", 5)))])
    audited = []

    def audit(n):
        audited.append(n)
        return b"01M80G6YDF0AVP1GGNM3839WG9", b"entry"

    moved = run(store, ops.replay_dead, ops.ReplayArg([b"aaaaaaaaaaaaaaaa\0"], None, 3, audit))
    assert [k for k, _ in moved] == a[:3] and audited == [3]
    assert [k for k, _ in store.scan("webhook_outbox")] == a[:3]
    moved = run(store, ops.replay_dead, ops.ReplayArg([b"aaaaaaaaaaaaaaaa\0", b"bbbbbbbbbbbbbbbb\0"], None, 100))
    assert [k for k, _ in moved] == a[3:] + b
    assert store.get("webhook_outbox", a[4]) == sealed  # stored again as it was queued: still sealed
    assert store.count("webhook_dead") == 0 and store.count("audit") == 1


def test_replay_of_named_events_moves_only_those_and_audits_nothing_when_none_moved(store):
    keys = [b"aaaaaaaaaaaaaaaa\0" + b"01M80G6YDF0AVP1GGNM3839WG%d" % i for i in range(3)]
    dead_letters(store, *keys)
    moved = run(store, ops.replay_dead, ops.ReplayArg([b"aaaaaaaaaaaaaaaa\0"],
                                                      [keys[1][17:], b"01M80G6YDF0AVP1GGNM3839WGZ"], 10,
                                                      lambda n: (b"k", b"v")))
    assert [k for k, _ in moved] == [keys[1]]
    assert [k for k, _ in store.scan("webhook_dead")] == [keys[0], keys[2]]
    moved = run(store, ops.replay_dead, ops.ReplayArg([b"cccccccccccccccc\0"], None, 10, lambda n: (b"k2", b"v")))
    assert moved == [] and store.get("audit", b"k2") is None and store.get("audit", b"k") == b"v"
