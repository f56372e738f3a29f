"""Message ids: ULID text, strictly increasing, time-ordered."""
from gateway.ids import IdGenerator, is_id, timestamp_ms


def test_ids_increase_strictly_within_one_millisecond():
    gen = IdGenerator(clock_ms=lambda: 1_700_000_000_000)
    ids = [gen.new() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_ids_sort_by_time_across_milliseconds():
    now = [1_700_000_000_000]
    gen = IdGenerator(clock_ms=lambda: now[0], seed=(1 << 80) - 10)
    first = gen.new()
    now[0] += 1
    assert gen.new() > first


def test_counter_wrap_borrows_the_next_millisecond():
    gen = IdGenerator(clock_ms=lambda: 1_700_000_000_000, seed=((1 << 80) - 2) << 1)
    a, b, c = gen.new(), gen.new(), gen.new()
    assert a < b < c
    assert timestamp_ms(c) == 1_700_000_000_001


def test_text_form_is_a_26_character_ulid_carrying_the_time():
    msg_id = IdGenerator(clock_ms=lambda: 1_700_000_000_123).new()
    assert len(msg_id) == 26 and is_id(msg_id)
    assert timestamp_ms(msg_id) == 1_700_000_000_123


def test_is_id_refuses_other_text():
    assert not is_id("not-an-id")
    assert not is_id("8" + "0" * 25)  # above 48 bits of time
    assert not is_id("0" * 25 + "U")  # not in the Crockford alphabet
