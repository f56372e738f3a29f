"""Specification of the Scheduler (rates, pair limits, priorities, fairness, persistence),
run over both BucketTable implementations with a fake clock (plain float times)."""
import random

import pytest

from tests.twins import IMPLEMENTATIONS, load_table
from gateway.schedule.scheduler import BULK, NORMAL, URGENT, QueuedMessage, Scheduler


@pytest.fixture(params=IMPLEMENTATIONS)
def Table(request):
    return load_table(request.param)


@pytest.fixture
def make(Table):
    def factory(**kw):
        return Scheduler(table_factory=Table, **kw)

    return factory


_ids = iter(range(10**9))


def msg(sender="S", recipient="R", priority=NORMAL) -> QueuedMessage:
    return QueuedMessage(b"m%d" % next(_ids), sender, recipient, priority)


def fill(sched, n, sender="S", recipient=None, priority=NORMAL, now=0.0) -> list:
    msgs = [msg(sender, recipient or f"r{i}", priority) for i in range(n)]
    for m in msgs:
        sched.push(m, now)
    return msgs


def drain(sched, now, limit=10_000) -> list:
    return sched.ready(now, limit)


def test_sender_rate_and_burst_respected_over_a_simulated_minute(make):
    s = make()
    s.set_sender("S", 60.0, 10.0, 0.0)  # 1/s, burst 10
    fill(s, 500)
    sent = 0
    for step in range(601):
        now = step / 10
        sent += len(drain(s, now))
        assert sent <= 10 + int(now + 1e-9)
    assert sent == 70


def test_push_says_whether_the_dispatch_loop_must_look_again(make):
    s = make()
    s.set_sender("S", 60.0, 1.0, 0.0)  # one message per second
    assert s.push(msg("S", "a"), 0.0) is True  # a sender with work and tokens: active
    assert len(drain(s, 0.0)) == 1
    assert s.push(msg("S", "b"), 0.1) is True  # its first queued message: active until looked at
    assert drain(s, 0.1) == [] and s.next_wakeup(0.1) == pytest.approx(1.0)
    # asleep until its token comes back: more messages change nothing the loop waits for
    assert s.push(msg("S", "c"), 0.2) is False and s.push(msg("S", "d"), 0.3) is False
    assert s.next_wakeup(0.3) == pytest.approx(1.0)
    assert s.push(msg("T", "a"), 0.3) is False  # a number with no rate set never goes
    assert s.push(msg("S", "e"), 1.0) is True  # its wake-up time has come
    assert [m.recipient for m in drain(s, 1.0)] == ["b"]


def test_burst_is_available_at_once(make):
    s = make()
    s.set_sender("S", 60.0, 10.0, 0.0)
    fill(s, 50)
    assert len(drain(s, 0.0)) == 10


def test_ready_returns_at_most_limit(make):
    s = make()
    s.set_sender("S", 6000.0, 100.0, 0.0)
    fill(s, 50)
    assert len(s.ready(0.0, 7)) == 7
    assert len(s) == 43


def test_pair_limit_45_burst_then_one_per_6s_while_other_recipients_flow(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    for i in range(100):
        s.push(msg("S", "X"), 0.0)
        s.push(msg("S", f"other{i}"), 0.0)
    first = drain(s, 0.0)
    assert sum(m.recipient == "X" for m in first) == 45
    assert sum(m.recipient != "X" for m in first) == 100
    assert drain(s, 5.999) == []
    assert [m.recipient for m in drain(s, 6.0)] == ["X"]
    later = sum(len(drain(s, float(t))) for t in range(7, 61))
    assert later == 9  # t = 12, 18, ..., 60


def test_blocked_recipient_does_not_hold_back_later_recipients(make):
    s = make(pair_burst=1.0)
    s.set_sender("S", 1e6, 1e6, 0.0)
    a1, a2, b = msg("S", "A"), msg("S", "A"), msg("S", "B")
    for m in (a1, a2, b):
        s.push(m, 0.0)
    assert drain(s, 0.0) == [a1, b]
    assert drain(s, 6.0) == [a2]


def test_messages_to_same_recipient_never_overtake_each_other(make):
    s = make(pair_burst=1.0)
    s.set_sender("S", 1e6, 1e6, 0.0)
    to_a = [msg("S", "A") for _ in range(4)]
    for m in to_a:
        s.push(m, 0.0)
    got = []
    for t in range(0, 30, 6):
        got += drain(s, float(t))
    assert got == to_a


def test_parked_message_rejoins_its_class_ahead_of_later_messages(make):
    s = make(pair_burst=1.0)
    s.set_sender("S", 60.0, 1.0, 0.0)  # one message per second
    a1, a2 = msg("S", "A"), msg("S", "A")
    s.push(a1, 0.0)
    s.push(a2, 0.0)
    assert drain(s, 0.0) == [a1]  # a2 parked until 6.0
    later = [msg("S", f"x{i}") for i in range(10)]
    for m in later:
        s.push(m, 0.5)
    got = []
    for t in range(1, 12):
        got += drain(s, float(t))
    assert got.index(a2) == 5  # x0..x4 went at 1..5 s, a2 at 6 s ahead of x5..
    assert got[:5] == later[:5]


def test_urgent_before_normal_before_bulk(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    bulk = fill(s, 2, priority=BULK)
    normal = fill(s, 2, priority=NORMAL)
    urgent = fill(s, 2, priority=URGENT)
    assert drain(s, 0.0) == urgent + normal + bulk


def test_fifo_within_a_class(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    msgs = fill(s, 20)
    assert drain(s, 0.0) == msgs


def test_starvation_guard_lets_lowest_class_through_after_n_higher(make):
    s = make(starvation_guard=3)
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 7, priority=URGENT)
    fill(s, 3, priority=BULK)
    order = [m.priority for m in drain(s, 0.0)]
    U, B = URGENT, BULK
    assert order == [U, U, U, B, U, U, U, B, U, B]


def test_starvation_guard_counts_only_while_a_lower_class_waits(make):
    s = make(starvation_guard=3)
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 2, priority=URGENT)
    drain(s, 0.0)  # no lower class waiting: streak stays 0
    fill(s, 4, priority=URGENT)
    fill(s, 1, priority=BULK)
    assert [m.priority for m in drain(s, 0.0)] == [URGENT] * 3 + [BULK, URGENT]


def test_round_robin_one_message_per_sender_per_round(make):
    s = make()
    for name in ("A", "B", "C"):
        s.set_sender(name, 1e6, 1e6, 0.0)
    for name in ("A", "B", "C"):
        fill(s, 3, sender=name)
    assert [m.sender for m in s.ready(0.0, 7)] == list("ABCABCA")


def test_tier_downgrade_mid_run_is_obeyed_at_once(make):
    s = make()
    s.set_sender("S", 600.0, 50.0, 0.0)
    fill(s, 1000)
    assert len(drain(s, 0.0)) == 50
    assert len(drain(s, 1.0)) == 10
    s.set_sender("S", 5.0, 5.0, 2.0)  # 10 earned tokens clamp to the new burst of 5
    assert len(drain(s, 2.0)) == 5
    assert drain(s, 13.9) == []
    assert len(drain(s, 14.0)) == 1  # then one per 12 s


def test_tier_upgrade_takes_effect_on_next_ready(make):
    s = make()
    s.set_sender("S", 6.0, 1.0, 0.0)
    fill(s, 100)
    assert len(drain(s, 0.0)) == 1
    assert drain(s, 1.0) == []
    s.set_sender("S", 6000.0, 20.0, 1.0)
    assert drain(s, 1.0) == []  # 0.1 token settled at the old rate; the new rate runs from now
    assert len(drain(s, 1.1)) == 10


def test_unknown_sender_is_held_until_set(make):
    s = make()
    held = fill(s, 3, sender="NEW")
    assert drain(s, 100.0) == []
    assert s.next_wakeup(100.0) is None
    assert not s.has_sender("NEW")
    s.set_sender("NEW", 60.0, 10.0, 100.0)
    assert s.has_sender("NEW")
    assert drain(s, 100.0) == held


def test_requeue_puts_messages_back_at_the_head_in_original_order(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 6)
    first = s.ready(0.0, 3)
    s.requeue(first, 0.0)
    assert len(s) == 6
    again = drain(s, 0.0)
    assert again[:3] == first


def test_requeue_restores_each_message_to_its_own_class(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    u = fill(s, 1, priority=URGENT)
    b = fill(s, 1, priority=BULK)
    got = drain(s, 0.0)
    s.requeue(got, 0.0)
    assert s.depth() == (1, 0, 1)
    assert drain(s, 0.0) == u + b


def test_requeued_message_stays_ahead_of_parked_messages_to_same_recipient(make):
    s = make(pair_burst=1.0)
    s.set_sender("S", 1e6, 1e6, 0.0)
    a1, a2 = msg("S", "A"), msg("S", "A")
    s.push(a1, 0.0)
    s.push(a2, 0.0)
    got = drain(s, 0.0)
    assert got == [a1]
    s.requeue(got, 0.0)
    assert drain(s, 6.0) == [a1]
    assert drain(s, 12.0) == [a2]


def test_next_wakeup_is_none_when_nothing_is_queued(make):
    s = make()
    s.set_sender("S", 60.0, 1.0, 0.0)
    assert s.next_wakeup(0.0) is None


def test_next_wakeup_is_now_when_something_is_ready(make):
    s = make()
    s.set_sender("S", 60.0, 1.0, 0.0)
    fill(s, 1)
    assert s.next_wakeup(3.0) == 3.0


def test_next_wakeup_is_exactly_when_the_sender_token_arrives(make):
    s = make()
    s.set_sender("S", 7.0, 1.0, 0.0)
    fill(s, 2)
    assert len(drain(s, 0.0)) == 1
    t = s.next_wakeup(0.5)
    assert t == pytest.approx(60.0 / 7.0)
    assert drain(s, t - 1e-9) == []
    assert len(drain(s, t)) == 1


def test_next_wakeup_is_exactly_when_a_parked_pair_token_arrives(make):
    s = make(pair_burst=1.0, pair_rate_per_minute=10.0)
    s.set_sender("S", 1e6, 1e6, 0.0)
    s.push(msg("S", "A"), 0.0)
    s.push(msg("S", "A"), 0.0)
    assert len(drain(s, 0.0)) == 1
    assert s.next_wakeup(1.0) == 6.0
    assert len(drain(s, 6.0)) == 1


def test_next_wakeup_after_push_to_an_idle_sender_is_now(make):
    s = make()
    s.set_sender("S", 60.0, 1.0, 0.0)
    assert s.next_wakeup(0.0) is None
    fill(s, 1, now=10.0)
    assert s.next_wakeup(10.0) == 10.0


def test_next_wakeup_picks_earliest_sender(make):
    s = make()
    s.set_sender("A", 6.0, 1.0, 0.0)  # next token at 10 s
    s.set_sender("B", 12.0, 1.0, 0.0)  # next token at 5 s
    fill(s, 2, sender="A")
    fill(s, 2, sender="B")
    assert len(drain(s, 0.0)) == 2
    assert s.next_wakeup(0.0) == 5.0
    assert [m.sender for m in drain(s, 5.0)] == ["B"]
    assert s.next_wakeup(5.0) == 10.0


def test_restore_sender_prevents_exceeding_the_rate_after_restart(make):
    before = make()
    before.set_sender("S", 60.0, 10.0, 0.0)
    fill(before, 10)
    assert len(drain(before, 0.0)) == 10
    saved = before.sender_state("S")

    after = make()  # "restart" at t = 2
    after.set_sender("S", 60.0, 10.0, 2.0)
    after.restore_sender("S", *saved)
    fill(after, 20, now=2.0)
    assert len(drain(after, 2.0)) == 2


def test_restore_sender_before_set_sender_is_applied_when_set(make):
    s = make()
    s.restore_sender("S", 0.0, 0.0)
    assert s.sender_state("S") == (0.0, 0.0)
    s.set_sender("S", 60.0, 10.0, 3.0)
    fill(s, 20, now=3.0)
    assert len(drain(s, 3.0)) == 3


def test_restore_pair_prevents_exceeding_the_pair_rate_after_restart(make):
    before = make()
    before.set_sender("S", 1e6, 1e6, 0.0)
    fill(before, 50, recipient="X")
    assert len(drain(before, 0.0)) == 45
    saved = before.pair_state("S", "X")

    after = make()
    after.set_sender("S", 1e6, 1e6, 1.0)
    after.restore_pair("S", "X", *saved)
    fill(after, 5, recipient="X", now=1.0)
    assert drain(after, 1.0) == []
    assert len(drain(after, 6.0)) == 1


def test_pair_state_is_none_for_untracked_pair(make):
    s = make()
    s.set_sender("S", 60.0, 10.0, 0.0)
    assert s.pair_state("S", "nobody") is None
    assert s.pair_state("ghost", "nobody") is None


def test_forget_full_pairs_drops_only_pairs_that_are_full_again(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 1, recipient="A")
    fill(s, 40, recipient="B")
    drain(s, 0.0)
    assert s.forget_full_pairs(6.0) == [("S", "A")]  # A refilled to 45; B still has a deficit
    assert s.pair_state("S", "A") is None
    assert s.pair_state("S", "B") is not None
    assert s.forget_full_pairs(6.0 * 40) == [("S", "B")]
    assert s.pair_state("S", "B") is None


def test_set_pair_limit_applies_to_existing_and_new_pairs(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 50, recipient="X")
    assert len(drain(s, 0.0)) == 45
    s.set_pair_limit(60.0, 2.0, 0.0)
    assert s.next_wakeup(0.0) == 1.0
    assert len(drain(s, 1.0)) == 1
    fill(s, 5, recipient="Y", now=1.0)
    assert [m.recipient for m in drain(s, 1.0)] == ["Y", "Y"]


def test_depth_and_len_count_queued_parked_and_held_messages(make):
    s = make(pair_burst=1.0)
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 3, recipient="A", priority=URGENT)
    fill(s, 2, priority=BULK)
    fill(s, 4, sender="HELD", priority=NORMAL)
    drain(s, 0.0)  # one to A, two bulk; two A's parked
    assert s.depth() == (2, 4, 0)
    assert len(s) == 6


def test_push_rejects_unknown_priority(make):
    s = make()
    with pytest.raises(ValueError):
        s.push(msg(priority=3), 0.0)


def _simulate(Table, seed: int):
    """Random workload; returns (sent log, per-sender send times, per-pair send times, configs)."""

    rng = random.Random(seed)
    s = Scheduler(table_factory=Table, pair_rate_per_minute=30.0, pair_burst=3.0, starvation_guard=4)
    limits = {f"S{i}": (rng.choice([6.0, 60.0, 600.0]), rng.choice([1.0, 5.0, 20.0])) for i in range(4)}
    for name, (rate, burst) in limits.items():
        s.set_sender(name, rate, burst, 0.0)
    now = 0.0
    log, by_sender, by_pair = [], {}, {}
    for step in range(3000):
        for k in range(rng.randrange(0, 4)):
            sender, recipient = rng.choice(list(limits)), f"r{rng.randrange(6)}"
            s.push(QueuedMessage(b"%d.%d" % (step, k), sender, recipient, rng.randrange(3)), now)
        wake = s.next_wakeup(now)
        got = s.ready(now, rng.randrange(1, 8))
        if wake is not None and wake > now:
            assert got == []
        if wake == now and len(s) + len(got) > 0:
            assert got
        if got and rng.random() < 0.1:
            s.requeue(got[-1:], now)
            got = got[:-1]
        for m in got:
            log.append((now, m.id))
            by_sender.setdefault(m.sender, []).append(now)
            by_pair.setdefault((m.sender, m.recipient), []).append(now)
        if wake is not None and wake > now and rng.random() < 0.5:
            now = wake
        else:
            now += rng.choice([0.0, 0.05, 0.5, 2.0])
    return log, by_sender, by_pair, limits


def _max_in_window_ok(times, rate, burst):
    # Any k sends within a span of d seconds need k <= burst + rate * d / 60.
    for i in range(len(times)):
        for j in range(i, min(len(times), i + 200)):
            if j - i + 1 > burst + rate * (times[j] - times[i]) / 60.0 + 1e-6:
                return False
    return True


def test_random_workload_never_exceeds_sender_or_pair_limits(Table):
    _, by_sender, by_pair, limits = _simulate(Table, seed=11)
    for sender, times in by_sender.items():
        assert _max_in_window_ok(times, *limits[sender]), sender
    for pair, times in by_pair.items():
        assert _max_in_window_ok(times, 30.0, 3.0), pair


def test_native_and_pure_schedulers_make_identical_decisions():
    native = _simulate(load_table("native"), seed=5)[0]
    pure = _simulate(load_table("pure"), seed=5)[0]
    assert native == pure
    assert len(native) > 100


def test_forget_full_pairs_ignores_pairs_taken_again_since(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 1, recipient="A")
    drain(s, 0.0)
    fill(s, 1, recipient="A", now=5.0)
    drain(s, 5.0)
    assert s.forget_full_pairs(6.0) == []  # 44.83 - 1 tokens at 5 s: full again at 12 s
    assert s.forget_full_pairs(11.9) == []
    assert s.forget_full_pairs(12.1) == [("S", "A")]


def test_restored_pairs_are_forgotten_once_refilled(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    s.restore_pair("S", "A", 43.0, 0.0)
    assert s.forget_full_pairs(6.0) == []
    assert s.forget_full_pairs(12.0) == [("S", "A")]


def test_a_pair_taken_many_times_keeps_one_expiry_entry_and_goes_when_full(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    for t in range(10):  # one take a second: 45 - 10 + 9 s x 1/6 = 36.5 tokens at 9 s, full at 60 s
        fill(s, 1, recipient="A", now=float(t))
        drain(s, float(t))
    assert len(s._pair_expiry) == 1
    assert s.forget_full_pairs(59.9) == []
    assert s.forget_full_pairs(60.1) == [("S", "A")]
    assert s._pair_expiry == []


def test_a_pair_restored_fuller_is_forgotten_by_its_restored_state(make):
    s = make()
    s.set_sender("S", 1e6, 1e6, 0.0)
    fill(s, 20, recipient="A")
    drain(s, 0.0)  # 25 tokens: full at 120 s
    s.restore_pair("S", "A", 44.0, 0.0)  # full at 6 s
    assert s.forget_full_pairs(5.9) == []
    assert s.forget_full_pairs(6.1) == [("S", "A")]


def test_a_batch_written_late_moves_its_takes_to_the_write_time(make):
    """Batch 1 is let go at 0 but written at 0.5 (slow commit); without settle_sent batch 2 would
    be let go at 1.0 and reach the network 0.5 s after batch 1 under a 1/s bucket."""
    s = make(pair_rate_per_minute=60.0, pair_burst=1.0)
    s.set_sender("S", 60.0, 1.0, 0.0)
    fill(s, 3, recipient="R")
    first = drain(s, 0.0)
    assert len(first) == 1
    s.settle_sent(first, 0.5)
    assert drain(s, 1.0) == []
    assert len(drain(s, 1.5)) == 1
    assert s.next_wakeup(1.5) == 2.5


def test_settle_sent_is_never_more_permissive(make):
    s = make()
    s.set_sender("S", 60.0, 5.0, 0.0)
    fill(s, 20)
    taken = drain(s, 10.0)
    assert len(taken) == 5
    s.settle_sent(taken, 9.0)  # a write time before the take changes nothing
    assert drain(s, 10.5) == []
    assert len(drain(s, 11.0)) == 1
