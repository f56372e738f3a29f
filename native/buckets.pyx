# cython: language_level=3
"""Native token-bucket table: flat C arrays of bucket state, refilled and drained in C loops.

It owns only arithmetic on bucket state for caller-supplied times; it must never read a clock,
hold Python objects per bucket, or diverge by even one bit from gateway.schedule.buckets_py.
"""
from libc.math cimport INFINITY, nextafter
from libc.stdlib cimport free as c_free
from libc.stdlib cimport realloc

cdef int _NUDGE_LIMIT = 64
cdef Py_ssize_t _MAX_SLOTS = 2147483647  # slot ids must fit the int32 take_batch buffers


cdef class BucketTable:
    """Token buckets in parallel arrays; rate is tokens per minute, burst is the capacity."""

    cdef double* _tokens
    cdef double* _last
    cdef double* _rate
    cdef double* _burst
    cdef unsigned char* _live
    cdef int* _free
    cdef Py_ssize_t _n        # slots ever handed out (high-water mark)
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _nfree
    cdef Py_ssize_t _count    # live slots

    def __cinit__(self, Py_ssize_t capacity_hint=64):
        self._tokens = NULL
        self._last = NULL
        self._rate = NULL
        self._burst = NULL
        self._live = NULL
        self._free = NULL
        self._n = 0
        self._cap = 0
        self._nfree = 0
        self._count = 0
        self._grow(capacity_hint if capacity_hint > 0 else 1)

    def __init__(self, Py_ssize_t capacity_hint=64):
        pass

    def __dealloc__(self):
        c_free(self._tokens)
        c_free(self._last)
        c_free(self._rate)
        c_free(self._burst)
        c_free(self._live)
        c_free(self._free)

    cdef int _grow(self, Py_ssize_t cap) except -1:
        cdef void* p
        if cap > _MAX_SLOTS:
            cap = _MAX_SLOTS
        if cap <= self._cap:
            raise MemoryError("BucketTable is full (int32 slot ids exhausted)")
        p = realloc(self._tokens, cap * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._tokens = <double*>p
        p = realloc(self._last, cap * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._last = <double*>p
        p = realloc(self._rate, cap * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._rate = <double*>p
        p = realloc(self._burst, cap * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._burst = <double*>p
        p = realloc(self._live, cap * sizeof(unsigned char))
        if p == NULL:
            raise MemoryError()
        self._live = <unsigned char*>p
        p = realloc(self._free, cap * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self._free = <int*>p
        self._cap = cap
        return 0

    cdef inline int _check(self, Py_ssize_t slot) except -1:
        if slot < 0 or slot >= self._n or not self._live[slot]:
            raise IndexError(f"no live bucket in slot {slot}")
        return 0

    cdef inline double _level(self, Py_ssize_t i, double now) noexcept nogil:
        # Tokens at `now` without storing them; elapsed <= 0 adds nothing.
        cdef double t = self._tokens[i]
        cdef double elapsed = now - self._last[i]
        cdef double rate = self._rate[i]
        if elapsed > 0.0 and rate > 0.0:
            t = t + (elapsed * rate) / 60.0
        if t > self._burst[i]:
            t = self._burst[i]
        return t

    cdef inline double _settle(self, Py_ssize_t i, double now) noexcept nogil:
        # Store the level at `now`; last_update never moves backwards.
        cdef double t = self._level(i, now)
        if now > self._last[i]:
            self._last[i] = now
        self._tokens[i] = t
        return t

    @staticmethod
    cdef int _validate(double rate_per_minute, double burst) except -1:
        if not (rate_per_minute >= 0.0 and rate_per_minute < INFINITY):
            raise ValueError(f"rate_per_minute must be finite and >= 0, got {rate_per_minute!r}")
        if not (burst >= 0.0 and burst < INFINITY):
            raise ValueError(f"burst must be finite and >= 0, got {burst!r}")
        return 0

    def add(self, double rate_per_minute, double burst, double now, double tokens=-1.0):
        cdef Py_ssize_t i
        BucketTable._validate(rate_per_minute, burst)
        if self._nfree > 0:
            self._nfree -= 1
            i = self._free[self._nfree]
        else:
            if self._n == self._cap:
                self._grow(self._cap * 2)
            i = self._n
            self._n += 1
        if tokens < 0.0 or tokens > burst:
            tokens = burst
        self._tokens[i] = tokens
        self._last[i] = now
        self._rate[i] = rate_per_minute
        self._burst[i] = burst
        self._live[i] = 1
        self._count += 1
        return i

    def set_rate(self, Py_ssize_t slot, double rate_per_minute, double burst, double now):
        self._check(slot)
        BucketTable._validate(rate_per_minute, burst)
        cdef double t = self._settle(slot, now)
        self._rate[slot] = rate_per_minute
        self._burst[slot] = burst
        if t > burst:
            self._tokens[slot] = burst

    def try_take(self, Py_ssize_t slot, double now):
        self._check(slot)
        cdef double t = self._settle(slot, now)
        if t >= 1.0:
            self._tokens[slot] = t - 1.0
            return True
        return False

    def take_batch(self, slots, double now, out):
        cdef const int[:] sv
        cdef unsigned char[:] ov
        cdef Py_ssize_t i, n, s
        cdef Py_ssize_t taken = 0
        cdef double t
        try:
            sv = slots
        except (TypeError, ValueError, BufferError) as exc:
            raise TypeError(f"slots must be a 1-d int32 buffer: {exc}") from None
        try:
            ov = out
        except (TypeError, ValueError, BufferError) as exc:
            raise TypeError(f"out must be a writable 1-d uint8 buffer: {exc}") from None
        n = sv.shape[0]
        if ov.shape[0] != n:
            raise ValueError(f"out has length {ov.shape[0]}, slots has length {n}")
        for i in range(n):
            s = sv[i]
            if s < 0 or s >= self._n or not self._live[s]:
                raise IndexError(f"no live bucket in slot {s} (slots[{i}])")
        with nogil:
            for i in range(n):
                s = sv[i]
                t = self._settle(s, now)
                if t >= 1.0:
                    self._tokens[s] = t - 1.0
                    ov[i] = 1
                    taken += 1
                else:
                    ov[i] = 0
        return taken

    def wait_time(self, Py_ssize_t slot, double now):
        self._check(slot)
        cdef double t = self._level(slot, now)
        cdef double rate = self._rate[slot]
        cdef double last = self._last[slot]
        cdef double target, w, tok
        cdef int k
        if t >= 1.0:
            return 0.0
        if rate <= 0.0 or self._burst[slot] < 1.0:
            return INFINITY
        # Absolute instant the level reaches 1, nudged up until the refill formula agrees,
        # so that now + wait_time(...) is never a hair too early.
        tok = self._tokens[slot]
        target = last + ((1.0 - tok) * 60.0) / rate
        k = 0
        while self._level(slot, target) < 1.0 and k < _NUDGE_LIMIT:
            target = nextafter(target, INFINITY)
            k += 1
        w = target - now
        k = 0
        while now + w < target and k < _NUDGE_LIMIT:
            w = nextafter(w, INFINITY)
            k += 1
        return w

    def tokens(self, Py_ssize_t slot, double now):
        self._check(slot)
        return self._level(slot, now)

    def is_full(self, Py_ssize_t slot, double now):
        self._check(slot)
        return self._level(slot, now) >= self._burst[slot]

    def state(self, Py_ssize_t slot):
        self._check(slot)
        return (self._tokens[slot], self._last[slot])

    def restore(self, Py_ssize_t slot, double tokens, double last_update):
        self._check(slot)
        self._tokens[slot] = tokens
        self._last[slot] = last_update

    def free(self, Py_ssize_t slot):
        self._check(slot)
        self._live[slot] = 0
        self._free[self._nfree] = <int>slot
        self._nfree += 1
        self._count -= 1

    def __len__(self):
        return self._count
