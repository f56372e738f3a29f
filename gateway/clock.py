"""The injected clock: wall-clock time, so that limiter state and timelines survive a restart.

Cores take `now` as an argument; only shells hold a Clock. Tests pass a FakeClock.
"""
from __future__ import annotations

import time


class Clock:
    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock(Clock):
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def now_ms(self) -> int:
        return int(self.t * 1000)

    def advance(self, seconds: float) -> None:
        self.t += seconds
