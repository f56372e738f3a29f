"""The open-loop schedules: how many requests are due by a time, and when each one is meant to start."""
import pytest

from loadtest import schedule as S


def test_constant_rate_spaces_requests_evenly_from_time_zero():
    sched = S.constant(1000, 2.0)
    assert sched.total == 2000
    assert [sched.time_of(k) for k in (0, 1, 500, 1999)] == pytest.approx([0.0, 0.001, 0.5, 1.999])
    assert sched.count_until(0.0) == 1
    assert sched.count_until(0.0105) == 11
    assert sched.count_until(10.0) == 2000


def test_count_until_and_time_of_agree_for_every_request():
    for sched in (S.constant(333, 1.5), S.ramp(100, 900, 2.0), S.steps([(1, 50), (2, 400), (1, 10)])):
        for k in range(sched.total):
            t = sched.time_of(k)
            assert sched.count_until(t) >= k + 1, (k, t)
            assert sched.count_until(t - 1e-6) <= k, (k, t)


def test_ramp_offers_the_area_under_its_rate_and_speeds_up():
    sched = S.ramp(0, 1000, 10.0)
    assert sched.total == 5000  # (0 + 1000) / 2 * 10
    first_half = sched.count_until(5.0 - 1e-9)
    assert first_half == pytest.approx(1250, abs=1)  # a quarter of the area lies under the first half
    gaps = [sched.time_of(k + 1) - sched.time_of(k) for k in (100, 4000)]
    assert gaps[0] > gaps[1]
    assert sched.rate_at(2.5) == pytest.approx(250)


def test_steps_change_rate_at_each_boundary():
    sched = S.steps([(2, 100), (2, 1000)])
    assert sched.total == 2200
    assert sched.count_until(2.0 - 1e-9) == 200
    assert sched.time_of(200) == pytest.approx(2.0)
    assert sched.time_of(201) == pytest.approx(2.001)
    assert sched.rate_at(1.0) == 100 and sched.rate_at(3.0) == 1000 and sched.rate_at(4.0) == 0


def test_immediate_makes_everything_due_at_once():
    sched = S.immediate(7)
    assert sched.count_until(0.0) == 7 and sched.count_until(-1) == 7
    assert sched.time_of(6) == 0.0


def test_bad_segments_are_refused():
    with pytest.raises(ValueError):
        S.Schedule([S.Segment(0, 10, 10)])
    with pytest.raises(ValueError):
        S.Schedule([S.Segment(1, -1, 10)])
