"""bench/cold_wake.py: one median per gap, and the caller's CPUs given back."""
import os

from bench import cold_wake


def test_every_gap_gets_a_median_and_the_affinity_is_restored():
    before = os.sched_getaffinity(0)
    got = cold_wake.run(rounds=5)
    assert list(got) == ["0 ms", "0.2 ms", "1 ms", "5 ms", "20 ms"]
    assert all(us > 0 for us in got.values())
    assert os.sched_getaffinity(0) == before
