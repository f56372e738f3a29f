"""Event-loop stall while a 100,000-term sensitive-word list replaces a 1,000-term one under send
traffic: a whole gateway (embedded netsim, real LMDB writer) runs in this process's trio loop, and
POST /v1/messages go through its request dispatcher (auth, decode, screening, group commit,
delivery), started in an open loop (1,000/s by default: twice the 500/s peak of a typical
contract) or by closed-loop senders (`--senders`, which keep the loop saturated). Two probes watch
the loop: a client in its own process times the loop's answer to a byte sent every 1 ms
(bench/loop_ping.py: the figure), and a task measures how late each 1 ms sleep wakes up (which also
counts epoll's rounding of timeouts up to whole milliseconds). The window of the PUT runs on for
AFTER_S after its answer, so what the swap leaves behind counts too; the same traffic without a
PUT comes first.

It generates its own data in a temporary directory; it reports the target rather than failing on it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time

import orjson
import trio

from bench import loop_ping
from bench.loop_ping import LoopPing
from bench.policy_scan import terms
from bench.procs import pin_load_side
from gateway.app import Gateway, ensure_admin_key
from gateway.cli import GC_THRESHOLDS
from gateway.config import parse_config
from gateway.crypto.keydir import init_keys
from gateway.http.server import Deferred, Request

STALL_TARGET_MS = 5.0
RECIPIENTS = 200  # few, so end-to-end sessions are agreed once and the traffic is the accept path
PROBE_S = 0.001
AFTER_S = 1.0  # the PUT's window goes on this long after its answer
MAX_IN_FLIGHT = 10_000  # open-loop sends unanswered at once
CONFIG = """
[server]
listen = "127.0.0.1:0"
max_body_bytes = 8388608

[store]
data_dir = "{data_dir}"
map_size_mb = 2048

[tiers.fast]
rate_per_minute = 6000000
burst = 100000

[[workspaces]]
name = "default"
default_sender = "+15550000001"

[[senders]]
number = "+15550000001"
tier = "fast"

[network.sim]
latency_ms_median = 5.0
"""
TEXTS = [
    "Your order {n} has shipped and will arrive tomorrow between nine and noon.",
    "Reminder: your appointment {n} is at 3 pm; reply to reschedule.",
    "Get {n} free points this week only!",
    "Your code is {n}. Do not share it.",
]


class Probe:
    """Wake-up lateness of a 1 ms sleep, and every garbage collection (end time, generation, seconds)
    so that a stall can be told apart from a collection in the same window."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.collections: list[tuple[float, int, float]] = []
        self._gc_start = 0.0

    def on_gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_start = now
        else:
            self.collections.append((now, info["generation"], now - self._gc_start))

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await trio.sleep(PROBE_S)
            self.lags.append(time.perf_counter() - t0 - PROBE_S)

    def window(self, start: int, since: float) -> dict:
        lags = loop_ping.summary(self.lags[start:], STALL_TARGET_MS)
        if not lags["samples"]:
            return lags
        gcs = [(gen, s) for t, gen, s in self.collections if t >= since]
        return lags | {"gc_collections": len(gcs), "gc_max_ms": max((s for _, s in gcs), default=0.0) * 1000,
                       "gc_max_generation": max((gen for gen, s in gcs if s * 1000 > STALL_TARGET_MS), default=None)}


def request(method: str, path: str, key: str, body: bytes) -> Request:
    return Request(method, path, "", {"authorization": f"Bearer {key}"}, body, True, "bench", time.perf_counter())


class _Flushed:
    """Stands in for the server connection a Deferred answer tells when it is decided."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def flush(self) -> None:
        self.event.set()


async def answer(resp):
    """The response itself, waiting for one the handler decides later (after its group commit)."""
    if not isinstance(resp, Deferred):
        return resp
    if resp.response is None:
        conn = resp._conn = _Flushed()  # Deferred.resolve calls flush() on its connection
        await conn.event.wait()
    return resp.response


async def send_one(gw: Gateway, key: str, counts: dict, rng: random.Random) -> None:
    body = orjson.dumps({"to": f"+1415555{rng.randrange(RECIPIENTS):04d}",
                         "text": {"body": rng.choice(TEXTS).format(n=rng.randrange(10**6))}})
    resp = await answer(await gw.handle(request("POST", "/v1/messages", key, body)))
    counts[resp.status] = counts.get(resp.status, 0) + 1


async def sender(gw: Gateway, key: str, counts: dict, seed: int) -> None:
    """Closed loop: the next send as soon as the last one is answered."""
    rng = random.Random(seed)
    while True:
        await send_one(gw, key, counts, rng)


async def open_loop(gw: Gateway, key: str, counts: dict, rate: float) -> None:
    """Open loop: sends started at `rate` per second whatever the answers do, at most MAX_IN_FLIGHT
    unanswered (past that the gateway is not keeping up, and the run says so in its send rate)."""
    rng = random.Random(0)
    in_flight = 0

    async def one() -> None:
        nonlocal in_flight
        try:
            await send_one(gw, key, counts, rng)
        finally:
            in_flight -= 1

    async with trio.open_nursery() as nursery:
        due = trio.current_time()
        while True:
            due += 1.0 / rate
            await trio.sleep_until(due)
            if in_flight < MAX_IN_FLIGHT:
                in_flight += 1
                nursery.start_soon(one)


async def measure(gw: Gateway, key: str, big: bytes, baseline_s: float, senders: int, rate: float) -> dict:
    probe, ping = Probe(), LoopPing()
    counts: dict[int, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.run)
        await nursery.start(ping.run)
        small = orjson.dumps({"action": "flag", "terms": terms(1_000) + ["free"]})
        resp = await answer(await gw.handle(request("PUT", "/admin/v1/sensitive-words/spam", key, small)))
        assert resp.status in (200, 201), resp.body
        nursery.start_soon(probe.run)
        gc.callbacks.append(probe.on_gc)
        if senders:
            for i in range(senders):
                nursery.start_soon(sender, gw, key, counts, i)
        else:
            nursery.start_soon(open_loop, gw, key, counts, rate)
        await trio.sleep(1.0)  # warm up
        mark, sent0, t0, base_start = len(probe.lags), sum(counts.values()), time.perf_counter(), time.monotonic()
        await trio.sleep(baseline_s)
        baseline = probe.window(mark, t0) | {"sends_per_s": (sum(counts.values()) - sent0) / (time.perf_counter() - t0)}
        mark, sent0, t0, put_start = len(probe.lags), sum(counts.values()), time.perf_counter(), time.monotonic()
        resp = await answer(await gw.handle(request("PUT", "/admin/v1/sensitive-words/spam", key, big)))
        put_s = time.perf_counter() - t0
        await trio.sleep(AFTER_S)  # what the swap leaves behind (freeing the old rules, collections) counts too
        during = probe.window(mark, t0) | {"sends_per_s": (sum(counts.values()) - sent0) / (time.perf_counter() - t0)}
        put_end = time.monotonic()
        assert resp.status == 200, resp.body
        check = await answer(await gw.handle(
            request("POST", "/v1/messages", key, b'{"to":"+14155550100","text":{"body":"free"}}')))
        nursery.cancel_scope.cancel()
    gc.callbacks.remove(probe.on_gc)
    pings = ping.samples()
    answers = {"baseline": loop_ping.window(pings, base_start, put_start, STALL_TARGET_MS),
               "during_put": loop_ping.window(pings, put_start, put_end, STALL_TARGET_MS)}
    return {
        "terms": len(orjson.loads(big)["terms"]), "put_body_bytes": len(big), "put_s": put_s,
        "load": f"{senders} closed-loop senders" if senders else f"open loop, {rate:,.0f} sends/s",
        "io_answer": answers, "baseline": baseline, "during_put": during,
        "statuses": {str(k): v for k, v in counts.items()},
        "next_send_obeys_new_list": check.status == 422,
        "target_max_stall_ms": STALL_TARGET_MS,
        "meets_target": answers["during_put"].get("max_ms", float("inf")) <= STALL_TARGET_MS,
    }


def run(big_terms: int = 100_000, baseline_s: float = 3.0, senders: int = 0, rate: float = 1_000.0) -> dict:
    """`senders` closed-loop senders (which saturate the loop), or with none an open loop at `rate`."""
    with tempfile.TemporaryDirectory(prefix="policy-swap-") as tmp:
        init_keys(os.path.join(tmp, "keys"))
        gw = Gateway(parse_config(CONFIG.format(data_dir=tmp)))
        ensure_admin_key(gw)
        with open(os.path.join(tmp, "admin.key")) as f:
            key = f.read().strip()
        big = orjson.dumps({"action": "block", "terms": terms(big_terms, seed=3) + ["free"]})  # before timing
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)  # as `gateway run` does
        try:
            return trio.run(measure, gw, key, big, baseline_s, senders, rate)
        finally:
            gw.close()


def print_table(r: dict) -> None:
    b, d = r["baseline"], r["during_put"]
    ab, ad = r["io_answer"]["baseline"], r["io_answer"]["during_put"]
    print(f"load: {r['load']}")
    print(f"loop answer to I/O, traffic only  max {ab['max_ms']:6.2f} ms  p99 {ab['p99_ms']:5.2f} ms  "
          f"({ab['samples']} pings, {b['sends_per_s']:,.0f} sends/s)")
    print(f"loop answer to I/O, PUT {r['terms']:,}  max {ad['max_ms']:6.2f} ms  p99 {ad['p99_ms']:5.2f} ms  "
          f"({ad['samples']} pings, {ad['over_target']} over {r['target_max_stall_ms']} ms, "
          f"{d['sends_per_s']:,.0f} sends/s; PUT took {r['put_s']:.2f} s)")
    print(f"1 ms timer lateness, traffic only max {b['max_ms']:6.2f} ms  p99 {b['p99_ms']:5.2f} ms  "
          f"({b['samples']} probes; longest of {b['gc_collections']} GC passes {b['gc_max_ms']:.2f} ms)")
    print(f"1 ms timer lateness, PUT          max {d['max_ms']:6.2f} ms  p99 {d['p99_ms']:5.2f} ms  "
          f"({d['samples']} probes, {d['over_target']} over {r['target_max_stall_ms']} ms; longest of "
          f"{d['gc_collections']} GC passes {d['gc_max_ms']:.2f} ms)")
    print(f"next send obeys the new list: {r['next_send_obeys_new_list']}; "
          f"meets the {r['target_max_stall_ms']} ms target (loop answer to I/O): {r['meets_target']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.policy_swap")
    ap.add_argument("--terms", type=int, default=100_000)
    ap.add_argument("--baseline", type=float, default=3.0, help="seconds of traffic without a PUT")
    ap.add_argument("--rate", type=float, default=1_000.0, help="open-loop sends per second")
    ap.add_argument("--senders", type=int, default=0,
                    help="closed-loop senders instead of the open loop (8 keep this machine's loop saturated)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pin_load_side()
    result = run(args.terms, args.baseline, args.senders, args.rate)
    print(json.dumps(result, indent=2)) if args.json else print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
