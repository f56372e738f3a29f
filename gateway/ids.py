"""Sortable message ids in ULID form: 26 Crockford-base32 characters, 48 bits of Unix
milliseconds then 80 bits that count up from a random start.

Ids made by one process strictly increase, and because the alphabet is in ASCII order the text
itself is the LMDB key: keys scan in time order with no conversion on the hot path.
"""
from __future__ import annotations

import os
import re
import time

_time_ns = time.time_ns
ID_CHARS = 26  # the length of every id made here
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_LOW_MASK = (1 << 80) - 1
_ID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def _encode(n: int, pairs: int) -> str:
    p = _PAIRS
    return "".join([p[(n >> (10 * i)) & 1023] for i in range(pairs - 1, -1, -1)])


class IdGenerator:
    """Makes strictly increasing ids; `clock_ms` is injected so tests control time."""

    __slots__ = ("_clock_ms", "_last_ms", "_prefix", "_low", "_middle")

    def __init__(self, clock_ms=None, seed: int | None = None) -> None:
        self._clock_ms = clock_ms  # None: the system clock, read without a Python-level call
        self._last_ms = -1
        self._prefix = ""
        start = seed if seed is not None else int.from_bytes(os.urandom(10), "big")
        self._low = start >> 1  # leave headroom so the counter rarely wraps
        self._middle = _encode(self._low >> 20, 6)

    def new(self) -> str:
        clock_ms = self._clock_ms
        ms = clock_ms() if clock_ms is not None else _time_ns() // 1_000_000
        low = (self._low + 1) & _LOW_MASK
        if low == 0:  # counter wrapped inside one millisecond: borrow the next millisecond
            ms = max(ms, self._last_ms + 1)
        self._low = low
        if low & 0xFFFFF == 0:  # the 20 low bits rolled over: re-render the upper 60
            self._middle = _encode(low >> 20, 6)
        if ms > self._last_ms:
            self._last_ms = ms
            # 48-bit time in 10 characters: 50 bits, top two always zero
            self._prefix = _encode(ms, 5)
        p = _PAIRS
        return self._prefix + self._middle + p[(low >> 10) & 1023] + p[low & 1023]


def is_id(text: str) -> bool:
    return _ID_RE.fullmatch(text) is not None


def timestamp_ms(text: str) -> int:
    n = 0
    for ch in text[:10]:
        n = (n << 5) | _ALPHABET.index(ch)
    return n
