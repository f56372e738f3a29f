"""Latency figures from the engine's raw samples: HdrHistograms per second and over a whole run.

The engine only appends microseconds to one array per intended second (cheap in the hot loop);
this module turns them into HdrHistograms (1 us .. 10 min, 3 significant digits) and percentiles.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from array import array

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = ["PERCENTILES", "histogram", "summary", "per_second"]

LOWEST_US, HIGHEST_US, DIGITS = 1, 600_000_000, 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def histogram(samples: array | list | np.ndarray) -> HdrHistogram:
    """An HdrHistogram of latencies in microseconds (values outside the range are clamped into it)."""
    h = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    values = np.asarray(samples, dtype=np.int64)
    if values.size:
        values = np.clip(values, LOWEST_US, HIGHEST_US)
        uniq, counts = np.unique(values, return_counts=True)
        for v, c in zip(uniq.tolist(), counts.tolist()):
            h.record_value(v, c)
    return h


def summary(h: HdrHistogram) -> dict:
    """Count and p50/p90/p99/p99.9/max in milliseconds."""
    out = {"count": h.get_total_count()}
    for name, q in PERCENTILES:
        out[name] = round(h.get_value_at_percentile(q) / 1000.0, 3) if out["count"] else None
    out["max"] = round(h.get_max_value() / 1000.0, 3) if out["count"] else None
    return out


def per_second(arrays: list[array]) -> list[dict]:
    """One summary per intended second (seconds with no answer are left out)."""
    rows = []
    for sec, samples in enumerate(arrays):
        if len(samples):
            row = summary(histogram(samples))
            row["second"] = sec
            rows.append(row)
    return rows


def combined(arrays: list[array], first: int = 0, last: int | None = None) -> HdrHistogram:
    """One histogram over the intended seconds [first, last)."""
    chosen = arrays[first:last]
    if not chosen:
        return histogram([])
    return histogram(np.concatenate([np.frombuffer(a, dtype=np.int64) for a in chosen]))
