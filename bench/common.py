"""Shared command-line plumbing for the micro-benchmarks: pin to the load core, `--quick` for a
smaller run where the bench supports it, `--json` for the raw result."""
from __future__ import annotations

import gc
import inspect
import json
import sys
import time

from bench.procs import pin_load_side


def micro_main(run, print_table, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pin_load_side()
    kwargs = {}
    if "--quick" in argv and "scale" in inspect.signature(run).parameters:
        kwargs["scale"] = 0.1
    result = run(**kwargs)
    if "--json" in argv:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def best_rate(n: int, run_once, repeats: int = 3) -> float:
    """n / the fastest of `repeats` timed calls of run_once() (which does n operations), with the
    garbage collector off while timing: noise only ever makes a run slower."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            run_once()
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return n / best
