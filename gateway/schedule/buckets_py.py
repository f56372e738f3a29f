"""Pure-Python twin of the native token-bucket table (native/buckets.pyx), same API and same results.

It owns the fallback bucket arithmetic for caller-supplied times; it must never read a clock and
never compute anything differently from the native table (same operations, same order, same floats).
"""
from __future__ import annotations

import math

_NUDGE_LIMIT = 64
_INF = math.inf
_nextafter = math.nextafter


class BucketTable:
    """Token buckets in parallel lists; rate is tokens per minute, burst is the capacity."""

    __slots__ = ("_tokens", "_last", "_rate", "_burst", "_live", "_free", "_count")

    def __init__(self, capacity_hint: int = 64) -> None:
        self._tokens: list[float] = []
        self._last: list[float] = []
        self._rate: list[float] = []
        self._burst: list[float] = []
        self._live: list[bool] = []
        self._free: list[int] = []
        self._count = 0

    def _check(self, slot: int) -> None:
        if not 0 <= slot < len(self._live) or not self._live[slot]:
            raise IndexError(f"no live bucket in slot {slot}")

    def _level(self, i: int, now: float) -> float:
        t = self._tokens[i]
        elapsed = now - self._last[i]
        rate = self._rate[i]
        if elapsed > 0.0 and rate > 0.0:
            t = t + (elapsed * rate) / 60.0
        burst = self._burst[i]
        if t > burst:
            t = burst
        return t

    def _settle(self, i: int, now: float) -> float:
        t = self._level(i, now)
        if now > self._last[i]:
            self._last[i] = now
        self._tokens[i] = t
        return t

    @staticmethod
    def _validate(rate_per_minute: float, burst: float) -> None:
        if not (0.0 <= rate_per_minute < _INF):
            raise ValueError(f"rate_per_minute must be finite and >= 0, got {rate_per_minute!r}")
        if not (0.0 <= burst < _INF):
            raise ValueError(f"burst must be finite and >= 0, got {burst!r}")

    def add(self, rate_per_minute: float, burst: float, now: float, tokens: float = -1.0) -> int:
        rate_per_minute = float(rate_per_minute)
        burst = float(burst)
        now = float(now)
        tokens = float(tokens)
        self._validate(rate_per_minute, burst)
        if tokens < 0.0 or tokens > burst:
            tokens = burst
        if self._free:
            i = self._free.pop()
            self._tokens[i] = tokens
            self._last[i] = now
            self._rate[i] = rate_per_minute
            self._burst[i] = burst
            self._live[i] = True
        else:
            i = len(self._live)
            self._tokens.append(tokens)
            self._last.append(now)
            self._rate.append(rate_per_minute)
            self._burst.append(burst)
            self._live.append(True)
        self._count += 1
        return i

    def set_rate(self, slot: int, rate_per_minute: float, burst: float, now: float) -> None:
        self._check(slot)
        rate_per_minute = float(rate_per_minute)
        burst = float(burst)
        self._validate(rate_per_minute, burst)
        t = self._settle(slot, float(now))
        self._rate[slot] = rate_per_minute
        self._burst[slot] = burst
        if t > burst:
            self._tokens[slot] = burst

    def try_take(self, slot: int, now: float) -> bool:
        self._check(slot)
        t = self._settle(slot, float(now))
        if t >= 1.0:
            self._tokens[slot] = t - 1.0
            return True
        return False

    def take_batch(self, slots, now: float, out) -> int:
        try:
            sv = memoryview(slots)
        except TypeError as exc:
            raise TypeError(f"slots must be a 1-d int32 buffer: {exc}") from None
        try:
            ov = memoryview(out)
        except TypeError as exc:
            raise TypeError(f"out must be a writable 1-d uint8 buffer: {exc}") from None
        if sv.ndim != 1 or sv.itemsize != 4 or sv.format.lstrip("@=") != "i":
            raise TypeError(f"slots must be a 1-d int32 buffer, got format {sv.format!r}")
        if ov.ndim != 1 or ov.readonly or ov.format.lstrip("@=") != "B":
            raise TypeError(f"out must be a writable 1-d uint8 buffer, got format {ov.format!r}")
        n = len(sv)
        if len(ov) != n:
            raise ValueError(f"out has length {len(ov)}, slots has length {n}")
        ids = sv.tolist()
        live = self._live
        size = len(live)
        for i, s in enumerate(ids):
            if not 0 <= s < size or not live[s]:
                raise IndexError(f"no live bucket in slot {s} (slots[{i}])")
        now = float(now)
        tokens, last, rates, bursts = self._tokens, self._last, self._rate, self._burst
        result = bytearray(n)
        taken = 0
        for i, s in enumerate(ids):
            t = tokens[s]
            elapsed = now - last[s]
            rate = rates[s]
            if elapsed > 0.0 and rate > 0.0:
                t = t + (elapsed * rate) / 60.0
            burst = bursts[s]
            if t > burst:
                t = burst
            if now > last[s]:
                last[s] = now
            if t >= 1.0:
                tokens[s] = t - 1.0
                result[i] = 1
                taken += 1
            else:
                tokens[s] = t
        ov[:] = result
        return taken

    def wait_time(self, slot: int, now: float) -> float:
        self._check(slot)
        now = float(now)
        t = self._level(slot, now)
        if t >= 1.0:
            return 0.0
        rate = self._rate[slot]
        if rate <= 0.0 or self._burst[slot] < 1.0:
            return _INF
        # Absolute instant the level reaches 1, nudged up until the refill formula agrees,
        # so that now + wait_time(...) is never a hair too early.
        target = self._last[slot] + ((1.0 - self._tokens[slot]) * 60.0) / rate
        k = 0
        while self._level(slot, target) < 1.0 and k < _NUDGE_LIMIT:
            target = _nextafter(target, _INF)
            k += 1
        w = target - now
        k = 0
        while now + w < target and k < _NUDGE_LIMIT:
            w = _nextafter(w, _INF)
            k += 1
        return w

    def tokens(self, slot: int, now: float) -> float:
        self._check(slot)
        return self._level(slot, float(now))

    def is_full(self, slot: int, now: float) -> bool:
        self._check(slot)
        return self._level(slot, float(now)) >= self._burst[slot]

    def state(self, slot: int) -> tuple[float, float]:
        self._check(slot)
        return (self._tokens[slot], self._last[slot])

    def restore(self, slot: int, tokens: float, last_update: float) -> None:
        self._check(slot)
        self._tokens[slot] = float(tokens)
        self._last[slot] = float(last_update)

    def free(self, slot: int) -> None:
        self._check(slot)
        self._live[slot] = False
        self._free.append(slot)
        self._count -= 1

    def __len__(self) -> int:
        return self._count
