"""How much slower this machine runs a small fixed piece of Python right after its thread slept:
pinned to one CPU, the median time of ~16 µs of work (five `json.dumps` of a message-sized dict)
done back to back and done after sleeps of 0.2 to 20 ms. On a host where a waking CPU comes back
warm the times stay close; on a VM that flushes or loses its caches while a vCPU idles, every
wake-up runs cold, and a gateway's CPU per message at low rates follows the number of wake-ups on
a message's path rather than its work. `python -m bench.cold_wake [--rounds N]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

GAPS_S = (0.0, 0.0002, 0.001, 0.005, 0.02)
_MESSAGE = {"to": "+14155550000", "text": {"body": "Your order 123456 has shipped."}, "priority": "normal"}


def _work() -> int:
    n = 0
    for _ in range(5):
        n += len(json.dumps(_MESSAGE))
    return n


def median_us(gap_s: float, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        if gap_s:
            time.sleep(gap_s)
        t = time.perf_counter()
        _work()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e6


def run(rounds: int = 200) -> dict:
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        for _ in range(1000):
            _work()
        return {f"{gap * 1000:g} ms": round(median_us(gap, rounds), 1) for gap in GAPS_S}
    finally:
        os.sched_setaffinity(0, cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cold_wake")
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args(argv)
    for gap, us in run(args.rounds).items():
        print(f"after a sleep of {gap:>7s}: {us:7.1f} µs (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
