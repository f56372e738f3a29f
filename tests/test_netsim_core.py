"""Specification of netsim's sans-I/O Network, driven by a fake clock (plain integers of milliseconds)."""

import msgspec
import pytest

from gateway.network.frames import Ack, Receipt, Submit
from loadtest.netsim.config import NetsimConfig, config_from_mapping, load_config
from loadtest.netsim.core import Network

# e2e off: these specify the network model with opaque payloads (tests/test_netsim_crypto.py covers decryption)
FIXED = dict(latency_ms_median=20.0, latency_sigma=0.0, read_delay_ms_median=200.0, read_share=0.0, e2e=False)


def net(**overrides) -> Network:
    return Network(config_from_mapping({**FIXED, **overrides}))


def sub(msg_id: str, recipient: str = "+15550000001") -> Submit:
    return Submit(id=msg_id, sender="+15559990000", recipient=recipient, payload=b"opaque")


def test_config_rejects_a_share_outside_zero_to_one():
    with pytest.raises(msgspec.ValidationError):
        config_from_mapping({"read_share": 1.5})


def test_config_rejects_unknown_keys():
    with pytest.raises(msgspec.ValidationError):
        config_from_mapping({"latency": 3})


def test_config_loads_from_the_network_sim_table_of_a_toml_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text("[network]\nurl = 'tcp://x:1'\n[network.sim]\nseed = 9\nlatency_ms_median = 5\n")
    assert load_config(str(path)) == NetsimConfig(seed=9, latency_ms_median=5.0)


def test_submit_is_acked_ok_right_away():
    assert net().on_submit(sub("m1"), now_ms=1000) == [Ack(id="m1")]


def test_delivered_receipt_comes_due_after_the_latency():
    n = net()
    n.on_submit(sub("m1"), now_ms=1000)
    assert n.next_due_ms() == 1020
    assert n.due(1019) == []
    assert n.due(1020) == [Receipt(id="m1", status="delivered", at_ms=1020)]


def test_read_receipt_follows_delivery_after_the_read_delay():
    n = net(read_share=1.0)
    n.on_submit(sub("m1"), now_ms=0)
    assert [r.status for r in n.due(20)] == ["delivered"]
    assert n.due(219) == []
    assert n.due(220) == [Receipt(id="m1", status="read", at_ms=220)]


def test_no_read_receipt_when_read_share_is_zero():
    n = net(read_share=0.0)
    n.on_submit(sub("m1"), now_ms=0)
    assert [r.status for r in n.due(10_000)] == ["delivered"]


def test_unregistered_recipient_is_acked_then_fails_after_the_latency():
    n = net(unregistered_share=1.0)
    assert n.on_submit(sub("m1"), now_ms=0) == [Ack(id="m1")]
    assert n.due(20) == [Receipt(id="m1", status="failed", at_ms=20, reason="recipient_not_registered")]
    assert n.stats()["failed_reasons"] == {"recipient_not_registered": 1}


def test_offline_recipient_is_delivered_after_the_offline_delay():
    n = net(offline_share=1.0, offline_delay_ms=5000.0)
    n.on_submit(sub("m1"), now_ms=0)
    assert n.due(5019) == []
    assert n.due(5020) == [Receipt(id="m1", status="delivered", at_ms=5020)]


def test_expiring_offline_recipient_fails_after_the_offline_delay():
    n = net(offline_share=1.0, offline_expire_share=1.0, offline_delay_ms=5000.0)
    n.on_submit(sub("m1"), now_ms=0)
    assert n.due(5020) == [Receipt(id="m1", status="failed", at_ms=5020, reason="recipient_offline_expired")]


def test_throttled_submit_is_not_taken_and_says_when_to_retry():
    n = net(throttle_share=1.0, throttle_retry_after_ms=750)
    assert n.on_submit(sub("m1"), now_ms=0) == [Ack(id="m1", code="throttled", retry_after_ms=750)]
    assert n.seen("m1") == 0
    assert n.next_due_ms() is None
    assert n.stats()["throttled"] == 1


def test_a_throttled_message_is_taken_on_a_later_retry():
    n = net(throttle_share=0.5)
    retried = 0
    for i in range(50):
        msg_id = f"m{i}"
        for attempt in range(40):
            ack = n.on_submit(sub(msg_id), now_ms=attempt * 1000)[0]
            if ack.code == "ok":
                break
            assert ack.code == "throttled"
            retried += 1
        assert ack.code == "ok"
        assert n.seen(msg_id) == 1
    assert retried > 0
    assert n.stats()["unique"] == 50


def test_duplicate_submit_is_counted_acked_and_not_delivered_again():
    n = net()
    n.on_submit(sub("m1"), now_ms=0)
    assert n.on_submit(sub("m1"), now_ms=5) == [Ack(id="m1")]
    assert len(n.due(10_000)) == 1
    assert n.on_submit(sub("m1"), now_ms=20_000) == [Ack(id="m1")]
    assert n.due(100_000) == []
    assert n.seen("m1") == 3
    assert n.stats()["duplicates"] == 2
    assert n.stats()["unique"] == 1


def test_empty_recipient_is_rejected_permanently():
    ack = net().on_submit(sub("m1", recipient=""), now_ms=0)[0]
    assert ack.code == "rejected" and ack.reason


def run_scenario(seed: int) -> list:
    n = Network(NetsimConfig(seed=seed, e2e=False, latency_sigma=0.8, read_share=0.5, unregistered_share=0.2,
                             offline_share=0.2, offline_expire_share=0.5, throttle_share=0.2))
    acks = [n.on_submit(sub(f"m{i}", recipient=f"+1555{i:07d}"), now_ms=i)[0] for i in range(300)]
    return acks + n.due(10**9)


def test_same_seed_gives_the_same_outcomes():
    assert run_scenario(7) == run_scenario(7)


def test_different_seeds_give_different_outcomes():
    assert run_scenario(7) != run_scenario(8)


def test_recipient_traits_depend_only_on_seed_and_recipient():
    a = Network(NetsimConfig(seed=3, unregistered_share=0.5))
    b = Network(NetsimConfig(seed=3, unregistered_share=0.5))
    recipients = [f"+1555{i:07d}" for i in range(200)]
    in_order = {r: a.traits(r).registered for r in recipients}
    reversed_order = {r: b.traits(r).registered for r in reversed(recipients)}
    assert in_order == reversed_order


def test_unregistered_share_is_roughly_honoured():
    n = Network(NetsimConfig(seed=1, unregistered_share=0.3))
    unregistered = sum(not n.traits(f"+1555{i:07d}").registered for i in range(4000))
    assert 0.26 < unregistered / 4000 < 0.34


def test_due_receipts_stay_unacked_until_acknowledged():
    n = net(read_share=1.0)
    n.on_submit(sub("m1"), now_ms=0)
    n.on_submit(sub("m2"), now_ms=0)
    sent = n.due(1000)
    assert sorted(r.id + r.status for r in n.unacked_receipts()) == sorted(r.id + r.status for r in sent)
    assert n.stats()["unacked_receipts"] == 4


def test_receipt_ack_drops_one_receipt_per_listed_id_oldest_first():
    n = net(read_share=1.0)
    n.on_submit(sub("m1"), now_ms=0)
    n.due(1000)
    n.on_receipt_ack(["m1"])
    assert n.unacked_receipts() == [Receipt(id="m1", status="read", at_ms=220)]
    n.on_receipt_ack(["m1"])
    assert n.unacked_receipts() == []
    assert n.stats()["unacked_receipts"] == 0


def test_receipt_ack_for_an_unknown_id_is_counted_as_stray():
    n = net()
    n.on_receipt_ack(["nope"])
    assert n.stats()["stray_receipt_acks"] == 1


def test_stats_count_every_kind_of_outcome():
    n = net(read_share=1.0)
    n.on_submit(sub("m1"), now_ms=0)
    n.on_submit(sub("m1"), now_ms=1)
    n.due(1000)
    stats = n.stats()
    assert (stats["submits"], stats["unique"], stats["duplicates"]) == (2, 1, 1)
    assert (stats["delivered"], stats["read"], stats["failed"]) == (1, 1, 0)
    assert stats["pending_receipts"] == 0
