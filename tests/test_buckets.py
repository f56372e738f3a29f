"""Specification of BucketTable, checked against both the native table and its pure-Python twin.

Times are plain floats (a fake clock); no test may read the real clock or depend on timing.
"""
import math
import random
from array import array

import pytest

from tests.twins import IMPLEMENTATIONS, load_table


@pytest.fixture(params=IMPLEMENTATIONS)
def Table(request):
    return load_table(request.param)


def test_new_bucket_starts_full(Table):
    t = Table()
    s = t.add(10.0, 45.0, now=0.0)
    assert t.tokens(s, 0.0) == 45.0
    assert t.is_full(s, 0.0)


def test_add_with_explicit_tokens_starts_at_that_level(Table):
    t = Table()
    s = t.add(10.0, 45.0, 0.0, tokens=3.0)
    assert t.tokens(s, 0.0) == 3.0
    assert not t.is_full(s, 0.0)


def test_burst_then_refill_at_exactly_rate(Table):
    t = Table()
    s = t.add(10.0, 45.0, 0.0)  # one token per 6 s
    assert [t.try_take(s, 0.0) for _ in range(46)].count(True) == 45
    assert not t.try_take(s, 5.999)
    assert t.try_take(s, 6.0)
    assert not t.try_take(s, 11.999)
    assert t.try_take(s, 12.0)


def test_refill_clamps_at_burst(Table):
    t = Table()
    s = t.add(60.0, 5.0, 0.0, tokens=0.0)
    assert t.tokens(s, 3600.0) == 5.0
    assert [t.try_take(s, 3600.0) for _ in range(6)].count(True) == 5


def test_rate_zero_never_refills(Table):
    t = Table()
    s = t.add(0.0, 2.0, 0.0)
    assert t.try_take(s, 0.0) and t.try_take(s, 0.0)
    assert not t.try_take(s, 1e9)
    assert t.wait_time(s, 1e9) == math.inf


def test_set_rate_settles_under_old_rate_then_clamps_to_new_burst(Table):
    t = Table()
    s = t.add(60.0, 10.0, 0.0, tokens=0.0)
    t.set_rate(s, 6.0, 3.0, now=5.0)  # 5 tokens earned at the old rate, clamped to 3
    assert t.tokens(s, 5.0) == 3.0
    assert t.state(s) == (3.0, 5.0)


def test_set_rate_applies_new_rate_from_now_on(Table):
    t = Table()
    s = t.add(60.0, 100.0, 0.0, tokens=0.0)
    t.set_rate(s, 6.0, 100.0, now=2.0)  # 2 tokens earned at 1/s
    assert t.tokens(s, 2.0) == 2.0
    assert t.tokens(s, 12.0) == 3.0  # then 1 per 10 s


def test_take_batch_equals_repeated_try_take(Table):
    a, b = Table(), Table()
    for tbl in (a, b):
        for i in range(4):
            tbl.add(6.0 * (i + 1), 3.0, 0.0, tokens=float(i))
    slots = array("i", [0, 1, 1, 2, 3, 3, 3, 3, 2, 1, 0])
    out = bytearray(len(slots))
    taken = a.take_batch(slots, 1.5, out)
    expected = [b.try_take(s, 1.5) for s in slots]
    assert list(out) == [int(x) for x in expected]
    assert taken == sum(expected)
    assert [a.state(i) for i in range(4)] == [b.state(i) for i in range(4)]


def test_take_batch_repeated_slot_consumes_one_token_per_occurrence(Table):
    t = Table()
    s = t.add(0.0, 3.0, 0.0)
    out = bytearray(5)
    assert t.take_batch(memoryview(array("i", [s] * 5)), 0.0, out) == 3
    assert list(out) == [1, 1, 1, 0, 0]


def test_take_batch_rejects_out_of_different_length(Table):
    t = Table()
    s = t.add(10.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        t.take_batch(array("i", [s, s]), 0.0, bytearray(1))


def test_take_batch_with_unknown_slot_raises_and_takes_nothing(Table):
    t = Table()
    s = t.add(10.0, 5.0, 0.0)
    with pytest.raises(IndexError):
        t.take_batch(array("i", [s, 7]), 0.0, bytearray(2))
    assert t.tokens(s, 0.0) == 5.0


def test_take_batch_rejects_non_int32_slots(Table):
    t = Table()
    t.add(10.0, 5.0, 0.0)
    with pytest.raises(TypeError):
        t.take_batch(array("q", [0]), 0.0, bytearray(1))


def test_wait_time_is_zero_when_a_token_is_available(Table):
    t = Table()
    s = t.add(10.0, 2.0, 0.0)
    assert t.wait_time(s, 0.0) == 0.0


def test_wait_time_is_time_until_next_token(Table):
    t = Table()
    s = t.add(10.0, 1.0, 0.0)
    t.try_take(s, 0.0)
    assert t.wait_time(s, 0.0) == 6.0
    assert t.wait_time(s, 4.5) == 1.5


def test_waiting_wait_time_always_yields_a_token(Table):
    rng = random.Random(7)
    t = Table()
    for _ in range(500):
        rate = rng.uniform(0.1, 1000.0)
        start = rng.uniform(0.0, 1e6)
        s = t.add(rate, rng.uniform(1.0, 50.0), start, tokens=rng.uniform(0.0, 0.999))
        now = start + rng.uniform(-5.0, 0.01)
        assert t.try_take(s, now + t.wait_time(s, now))
        t.free(s)


def test_wait_time_is_infinite_when_burst_below_one(Table):
    t = Table()
    s = t.add(60.0, 0.5, 0.0)
    assert t.wait_time(s, 100.0) == math.inf


def test_clock_going_backwards_mints_no_tokens(Table):
    t = Table()
    s = t.add(60.0, 1.0, 100.0)
    assert t.try_take(s, 100.0)
    assert not t.try_take(s, 50.0)
    assert t.tokens(s, 50.0) == 0.0
    assert t.state(s) == (0.0, 100.0)  # last_update never moves backwards
    assert not t.try_take(s, 100.5)
    assert t.try_take(s, 101.0)


def test_freed_slot_is_reused_by_next_add(Table):
    t = Table()
    a = t.add(1.0, 1.0, 0.0)
    b = t.add(1.0, 1.0, 0.0)
    t.free(a)
    assert t.add(5.0, 2.0, 0.0) == a
    assert t.tokens(a, 0.0) == 2.0  # fresh state, not the freed bucket's
    assert b != a


def test_len_counts_live_slots(Table):
    t = Table()
    slots = [t.add(1.0, 1.0, 0.0) for _ in range(100)]  # grows past the capacity hint
    for s in slots[:40]:
        t.free(s)
    assert len(t) == 60


def test_freed_slot_is_unusable(Table):
    t = Table()
    s = t.add(1.0, 1.0, 0.0)
    t.free(s)
    with pytest.raises(IndexError):
        t.try_take(s, 0.0)
    with pytest.raises(IndexError):
        t.free(s)


def test_invalid_rate_or_burst_is_rejected(Table):
    t = Table()
    with pytest.raises(ValueError):
        t.add(-1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        t.add(1.0, math.nan, 0.0)


def test_state_restore_round_trip(Table):
    t = Table()
    s = t.add(10.0, 45.0, 0.0)
    for _ in range(30):
        t.try_take(s, 1.0)
    saved = t.state(s)
    other = Table()
    s2 = other.add(10.0, 45.0, 500.0)
    other.restore(s2, *saved)
    assert other.state(s2) == saved
    assert other.tokens(s2, 7.0) == t.tokens(s, 7.0)


def _random_ops(table_cls, seed: int) -> list:
    rng = random.Random(seed)
    t = table_cls(capacity_hint=4)
    live: list[int] = []
    now = 0.0
    log: list = []
    for _ in range(5000):
        now += rng.choice([0.0, 0.001, 0.37, 1.0, 6.0, -0.5, rng.random() * 10])
        op = rng.random()
        if op < 0.1 or not live:
            s = t.add(rng.uniform(0, 600), rng.uniform(0, 50), now, rng.choice([-1.0, rng.uniform(0, 60)]))
            live.append(s)
            log.append(("add", s))
            continue
        s = rng.choice(live)
        if op < 0.15:
            t.free(s)
            live.remove(s)
            log.append(("free", s, len(t)))
        elif op < 0.2:
            t.set_rate(s, rng.uniform(0, 600), rng.uniform(0, 50), now)
            log.append(("set_rate", t.state(s)))
        elif op < 0.5:
            log.append(("try_take", t.try_take(s, now), t.state(s)))
        elif op < 0.6:
            ids = array("i", [rng.choice(live) for _ in range(rng.randrange(1, 20))])
            out = bytearray(len(ids))
            log.append(("take_batch", t.take_batch(ids, now, out), bytes(out)))
        elif op < 0.75:
            log.append(("wait_time", t.wait_time(s, now)))
        elif op < 0.85:
            log.append(("tokens", t.tokens(s, now), t.is_full(s, now)))
        elif op < 0.9:
            tok, last = t.state(s)
            t.restore(s, tok * 0.5, last - 1.0)
            log.append(("restore", t.state(s)))
        else:
            log.append(("state", t.state(s)))
    return log


def test_native_and_pure_give_identical_results_on_random_operations():
    native = load_table("native")
    pure = load_table("pure")
    for seed in range(5):
        assert _random_ops(native, seed) == _random_ops(pure, seed)
