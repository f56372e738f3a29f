"""Helpers for work that runs in a worker thread beside the event loop on the same core."""
from __future__ import annotations

import os
import time

_SCHED_YIELD = getattr(os, "sched_yield", None)


def yield_to_loop() -> None:
    """Let the event loop's thread have the GIL and the CPU if it is waiting for them. Releasing the
    GIL alone (`time.sleep(0)`) hands nothing over on a core the two threads share: the worker
    keeps running and takes the GIL back before the woken loop thread is scheduled, and the loop
    waits out the switch interval (5 ms). `sched_yield` releases the GIL around the call and puts
    the worker behind the loop thread (as a rule: the kernel may still pick the worker, which it
    did in 2 of ~50 bench runs); with nothing else runnable it returns at once."""
    if _SCHED_YIELD is not None:
        _SCHED_YIELD()
    else:
        time.sleep(0)
