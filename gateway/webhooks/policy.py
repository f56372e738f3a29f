"""Retry policy for webhook deliveries: what an answer means and when to try again.

Pure functions of the outcome, the attempt number and a random draw; no I/O, no clock.
"""
from __future__ import annotations

import random

RETRY, DONE, DEAD = "retry", "done", "dead"


def classify(status: int | None) -> str:
    """None = no answer (refused, timeout, protocol error)."""
    if status is None or status >= 500 or status in (408, 429):
        return RETRY
    if 200 <= status < 300:
        return DONE
    return DEAD  # another 4xx: the endpoint refuses this payload; retrying cannot help


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random,
              retry_after_s: float | None = None) -> float:
    """Exponential backoff with full jitter in [delay/2, delay], at least any Retry-After."""
    delay = min(max_s, initial_s * (2 ** max(0, attempt - 1)))
    delay = delay / 2 + rng.random() * delay / 2
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay
