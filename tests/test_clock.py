"""The gateway's clock: wall time for timestamps, steady time for rates and timers."""
import time

from gateway import clock as clock_module
from gateway.clock import Clock


def test_steady_time_goes_on_at_real_speed_when_the_system_clock_is_set_back(monkeypatch):
    wall, mono = [1_800_000_000.0], [500.0]
    monkeypatch.setattr(clock_module.time, "time", lambda: wall[0])
    monkeypatch.setattr(clock_module.time, "monotonic", lambda: mono[0])
    c = Clock()
    assert c.steady() == c.now() == 1_800_000_000.0  # on the wall clock's scale at start
    wall[0] -= 3600.0  # the system clock is set back an hour while one second passes
    mono[0] += 1.0
    assert c.now() == 1_800_000_000.0 - 3600.0
    assert c.steady() == 1_800_000_001.0


def test_steady_time_tracks_the_wall_clock_while_nobody_sets_it():
    c = Clock()
    assert abs(c.steady() - time.time()) < 0.5
