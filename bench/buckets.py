"""Micro-benchmark of the token-bucket tables (native vs pure) and of Scheduler.ready() per message.

It measures only in-process CPU cost with a fake clock; it must never touch the network, the store
or the wall clock inside the measured code, and it reports targets rather than failing on them.
"""
from __future__ import annotations

import gc
import sys
import time
from array import array

from gateway.schedule import buckets
from gateway.schedule.scheduler import NORMAL, QueuedMessage, Scheduler
from bench.common import micro_main

NATIVE_TARGET = 5_000_000  # decisions/s
RATIO_TARGET = 10.0  # native / pure
REPEATS = 3


def _timed(fn) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def _table(cls, n_slots: int):
    t = cls(capacity_hint=n_slots)
    for i in range(n_slots):
        # Mix of buckets that refill and ones that run dry, so both branches are exercised.
        t.add(600.0 if i % 2 else 6.0, 50.0, 0.0)
    return t


def bench_try_take(cls, decisions: int, n_slots: int = 1000) -> float:
    """Decisions per second for try_take called from a Python loop over n_slots slots."""
    t = _table(cls, n_slots)
    slots = list(range(n_slots))
    rounds = max(1, decisions // n_slots)
    take = t.try_take

    def loop():
        now = 0.0
        for _ in range(rounds):
            now += 0.01
            for s in slots:
                take(s, now)

    return rounds * n_slots / _timed(loop)


def bench_take_batch(cls, decisions: int = 1_000_000, n_slots: int = 1000) -> float:
    """Decisions per second for one take_batch call over a `decisions`-element int32 slot array."""
    t = _table(cls, n_slots)
    ids = array("i", [(i * 7919) % n_slots for i in range(decisions)])
    out = bytearray(decisions)
    return decisions / _timed(lambda: t.take_batch(ids, 1.0, out))


def bench_ready(cls, n_senders: int, per_sender: int, recipients: int, limit: int = 1000) -> float:
    """Microseconds of Scheduler.ready() per returned message (pushes are not timed)."""
    s = Scheduler(table_factory=cls)
    for k in range(n_senders):
        name = f"+1555{k:06d}"
        s.set_sender(name, 1e9, 1e9, 0.0)  # sender limits never bind: measures the machinery
        for i in range(per_sender):
            s.push(QueuedMessage(b"%d:%d" % (k, i), name, f"+4420{i % recipients:07d}", NORMAL), 0.0)
    total = n_senders * per_sender
    sent = 0

    def loop():
        nonlocal sent
        while True:
            got = s.ready(0.0, limit)
            if not got:
                return
            sent += len(got)

    elapsed = _timed(loop)
    if sent != total:
        raise RuntimeError(f"scheduler returned {sent} of {total} messages")
    return elapsed / sent * 1e6


def run(scale: float = 1.0) -> dict:
    """Run every measurement; `scale` < 1 shrinks the work for a quick look."""
    impls = {"pure": buckets.load("pure")}
    if buckets.NATIVE_AVAILABLE:
        impls["native"] = buckets.load("native")
    result: dict = {
        "implementation": buckets.IMPLEMENTATION,
        "native_available": buckets.NATIVE_AVAILABLE,
        "try_take_per_s": {},
        "take_batch_per_s": {},
        "ready_us_per_msg_1_sender": {},
        "ready_us_per_msg_200_senders": {},
    }
    big = int(3_000_000 * scale)
    small = int(300_000 * scale)
    batch = int(1_000_000 * scale) or 1000
    for name, cls in impls.items():
        # Best of REPEATS: the machine may be shared, and noise only ever makes things slower.
        result["try_take_per_s"][name] = max(
            bench_try_take(cls, big if name == "native" else small) for _ in range(REPEATS)
        )
        result["take_batch_per_s"][name] = max(bench_take_batch(cls, batch) for _ in range(REPEATS))
        result["ready_us_per_msg_1_sender"][name] = min(
            bench_ready(cls, 1, int(200_000 * scale) or 1000, 5000) for _ in range(REPEATS)
        )
        result["ready_us_per_msg_200_senders"][name] = min(
            bench_ready(cls, 200, int(1000 * scale) or 10, 50) for _ in range(REPEATS)
        )
    if "native" in impls:
        for key in ("try_take", "take_batch"):
            r = result[f"{key}_per_s"]
            result[f"{key}_ratio"] = r["native"] / r["pure"]  # native over pure
        result["meets_native_target"] = result["take_batch_per_s"]["native"] >= NATIVE_TARGET
        result["meets_ratio_target"] = result["take_batch_ratio"] >= RATIO_TARGET
    return result


def print_table(r: dict) -> None:
    impls = [i for i in ("native", "pure") if i in r["try_take_per_s"]]
    print(f"BucketTable in use: {r['implementation']} (native available: {r['native_available']})")
    print(f"{'measure':<34}" + "".join(f"{i:>14}" for i in impls) + f"{'native/pure':>14}")
    rows = [
        ("try_take decisions/s (1k slots)", "try_take_per_s", "{:>14,.0f}", "try_take_ratio"),
        ("take_batch decisions/s (1M array)", "take_batch_per_s", "{:>14,.0f}", "take_batch_ratio"),
        ("ready() us/msg, 1 busy sender", "ready_us_per_msg_1_sender", "{:>14.3f}", None),
        ("ready() us/msg, 200 senders", "ready_us_per_msg_200_senders", "{:>14.3f}", None),
    ]
    for label, key, fmt, ratio in rows:
        line = f"{label:<34}" + "".join(fmt.format(r[key][i]) for i in impls)
        if ratio and ratio in r:
            line += f"{r[ratio]:>13.1f}x"
        print(line)
    if "meets_native_target" in r:
        print(
            f"targets: native take_batch >= {NATIVE_TARGET:,}/s: {r['meets_native_target']}; "
            f"native/pure >= {RATIO_TARGET:.0f}x: {r['meets_ratio_target']}"
        )


def main(argv: list[str] | None = None) -> int:
    return micro_main(run, print_table, argv)


if __name__ == "__main__":
    sys.exit(main())
