"""The injected clock: wall-clock time, so that limiter state and timelines survive a restart.

Cores take `now` as an argument; only shells hold a Clock. Tests pass a FakeClock.
"""
from __future__ import annotations

import time


class Clock:
    """`now` and `now_ms`: the system's wall clock, for what people and other systems read (status
    timestamps, webhook signatures). `steady`: for rates and timers (token buckets, retry times)."""

    def __init__(self) -> None:
        self._anchor = time.time() - time.monotonic()

    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def steady(self) -> float:
        """Seconds on the wall clock's scale that advance with real time and never jump: the wall
        time at start plus the monotonic time since. When the system clock is set back by an hour,
        wall-clock buckets would refill nothing (and timers fire nothing) for that hour; these go
        on. Stored bucket states stay comparable across restarts: a state from ahead of the
        present (the clock was set back meanwhile) is restored as of now (Delivery.rebuild)."""
        return time.monotonic() + self._anchor


class FakeClock(Clock):
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def now_ms(self) -> int:
        return int(self.t * 1000)

    def steady(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
