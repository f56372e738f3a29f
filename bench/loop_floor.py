"""The machine's floor for event-loop stalls: a bare trio loop, pinned like bench.policy_swap's, that
does nothing but a busy step of BUSY_MS every millisecond (no step is longer), watched by the same
ping probe (bench/loop_ping.py). Whatever it measures over that step is the machine's (scheduler,
hypervisor), not the gateway's; compare it with `python -m bench.policy_swap` over as long a window.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import trio

from bench.loop_ping import LoopPing, window
from bench.procs import pin_load_side

STALL_TARGET_MS = 5.0


async def _busy(step_s: float) -> None:
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < step_s:
            pass
        await trio.sleep(0.001)


async def measure(seconds: float, busy_ms: float) -> dict:
    ping = LoopPing(max_s=seconds + 60)
    async with trio.open_nursery() as nursery:
        await nursery.start(ping.run)
        if busy_ms > 0:
            nursery.start_soon(_busy, busy_ms / 1000)
        start = time.monotonic()
        await trio.sleep(seconds)
        end = time.monotonic()
        nursery.cancel_scope.cancel()
    return {"seconds": seconds, "busy_ms_per_ms": busy_ms,
            "io_answer": window(ping.samples(), start, end, STALL_TARGET_MS)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loop_floor")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--busy-ms", type=float, default=0.4, help="busy step every millisecond (0.4: ~40 %% busy)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pin_load_side()
    r = trio.run(measure, args.seconds, args.busy_ms)
    a = r["io_answer"]
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"bare loop, {args.busy_ms} ms busy every ms, {args.seconds:.0f} s: answer to I/O max {a['max_ms']:.2f} ms "
              f"p99 {a['p99_ms']:.2f} ms ({a['samples']} pings, {a['over_target']} over {STALL_TARGET_MS} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
