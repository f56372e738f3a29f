"""Arrival schedules for the open-loop generator: when request k is meant to start, as a pure function.

A schedule is a piecewise-linear rate over time (constant, ramp and step profiles are special cases);
request k is due when the cumulative arrival count N(t) reaches k. It owns that arithmetic only and
must never read a clock or do I/O: the generator asks `count_until(elapsed)` and `time_of(k)`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import NamedTuple

__all__ = ["Segment", "Schedule", "constant", "ramp", "steps", "immediate"]


class Segment(NamedTuple):
    """A stretch of `duration_s` whose rate goes linearly from `rate0` to `rate1` (requests/s)."""

    duration_s: float
    rate0: float
    rate1: float

    def arrivals(self) -> float:
        return (self.rate0 + self.rate1) * self.duration_s / 2.0


class Schedule:
    """Arrival k (k = 0, 1, ...) happens at the time t where N(t) = k; N(0) = 0, so arrival 0 is at t = 0.

    `total` arrivals fall in [0, duration_s). An `instant` schedule puts all of them at t = 0 (closed-loop sweeps).
    """

    def __init__(self, segments: list[Segment], *, instant_total: int | None = None) -> None:
        for seg in segments:
            if seg.duration_s <= 0 or seg.rate0 < 0 or seg.rate1 < 0:
                raise ValueError(f"bad segment {seg}: duration must be > 0 and rates >= 0")
        self.segments = list(segments)
        self._starts: list[float] = []  # start time of each segment
        self._counts: list[float] = []  # N at the start of each segment
        t = n = 0.0
        for seg in self.segments:
            self._starts.append(t)
            self._counts.append(n)
            t += seg.duration_s
            n += seg.arrivals()
        self.duration_s = t
        self._n_end = n
        if instant_total is not None:
            self.total = instant_total
        else:
            self.total = math.ceil(n - 1e-9) if n > 0 else 0
        self.instant = instant_total is not None

    def cumulative(self, t: float) -> float:
        """N(t): arrivals expected by time t (fractional)."""
        if t <= 0:
            return 0.0
        if t >= self.duration_s:
            return self._n_end
        i = bisect_right(self._starts, t) - 1
        seg = self.segments[i]
        u = t - self._starts[i]
        slope = (seg.rate1 - seg.rate0) / seg.duration_s
        return self._counts[i] + seg.rate0 * u + slope * u * u / 2.0

    def count_until(self, t: float) -> int:
        """How many arrivals are due at or before time t (never more than `total`)."""
        if self.instant:
            return self.total
        if t < 0:
            return 0
        return min(self.total, math.floor(self.cumulative(t) + 1e-9) + 1)

    def time_of(self, k: int) -> float:
        """The intended start of arrival k (0 <= k < total)."""
        if self.instant or k <= 0:
            return 0.0
        i = bisect_right(self._counts, k) - 1
        while i > 0 and self.segments[i].arrivals() == 0 and self._counts[i] >= k:
            i -= 1
        seg = self.segments[i]
        need = k - self._counts[i]
        a = (seg.rate1 - seg.rate0) / (2.0 * seg.duration_s)
        b = seg.rate0
        if abs(a) < 1e-12:
            u = need / b if b > 0 else 0.0
        else:
            disc = max(0.0, b * b + 4.0 * a * need)
            u = (2.0 * need) / (b + math.sqrt(disc)) if b + math.sqrt(disc) > 0 else 0.0
        return self._starts[i] + min(max(u, 0.0), seg.duration_s)

    def rate_at(self, t: float) -> float:
        """The offered rate (requests/s) at time t."""
        if t < 0 or t >= self.duration_s or not self.segments:
            return 0.0
        i = bisect_right(self._starts, t) - 1
        seg = self.segments[i]
        return seg.rate0 + (seg.rate1 - seg.rate0) * (t - self._starts[i]) / seg.duration_s


def constant(rate: float, duration_s: float) -> Schedule:
    return Schedule([Segment(duration_s, rate, rate)])


def ramp(start_rate: float, end_rate: float, duration_s: float) -> Schedule:
    return Schedule([Segment(duration_s, start_rate, end_rate)])


def steps(levels: list[tuple[float, float]]) -> Schedule:
    """A staircase: each (duration_s, rate) in turn."""
    return Schedule([Segment(d, r, r) for d, r in levels])


def immediate(total: int) -> Schedule:
    """All `total` arrivals due at once: a closed-loop sweep as fast as the connections allow."""
    return Schedule([], instant_total=total)
