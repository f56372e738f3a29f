"""Gateway CPU at a fixed rate of single sends: what a deployment pays at its everyday load, not at
its peak. `gateway run` pinned to CPU 0 with netsim in its own process (5 ms latency, half the
messages read); senders on the other CPU post single messages over 16 keep-alive connections at
each rate in turn, to recipients whose sessions were agreed first. Per rate: the gateway's CPU
(both threads), per message, the group commits a second, and the event loop's wake-ups.

`python -m bench.fixed_rate [--rates 50,100,300,1000] [--seconds 5]`.
"""
from __future__ import annotations

import argparse
import json
import time

from bench.e2e import warm_up
from bench.policy_swap_live import NO_PAIR_LIMIT, RECIPIENTS, Senders
from bench.procs import cpu_seconds, metric, pin_load_side, start_gateway, start_netsim, stop_all

SETTLE_S = 1.5  # after the senders start, before measuring


def _loop_waits(port: int) -> float:
    """Steps of every task: a proxy for the event loop's wake-ups (each runs at least one)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return sum(float(line.rsplit(" ", 1)[1]) for line in r.read().decode().splitlines()
                   if line.startswith("gateway_loop_steps_total{"))


def run(rates: list[float], seconds: float = 5.0) -> list[dict]:
    netsim, netsim_port = start_netsim(1, "--seed", "1", "--latency-ms", "5")
    gw = None
    out = []
    try:
        gw, port, key = start_gateway(0, netsim_port=netsim_port, extra_config=NO_PAIR_LIMIT)
        warm_up(port, key, RECIPIENTS, timeout_s=120.0)
        for rate in rates:
            senders = Senders(port, key, rate)
            senders.start()
            try:
                time.sleep(SETTLE_S)
                t0, cpu0, sent0 = time.monotonic(), cpu_seconds(gw.popen.pid), senders.sent()
                commits0, steps0 = metric(port, "gateway_store_commit_seconds_count"), _loop_waits(port)
                time.sleep(seconds)
                t1, cpu1, sent1 = time.monotonic(), cpu_seconds(gw.popen.pid), senders.sent()
                commits1, steps1 = metric(port, "gateway_store_commit_seconds_count"), _loop_waits(port)
            finally:
                senders.stop()
            sent = sent1 - sent0
            out.append({
                "rate": rate,
                "sends_per_s": sent / (t1 - t0),
                "gateway_cpu": (cpu1 - cpu0) / (t1 - t0),
                "cpu_us_per_message": (cpu1 - cpu0) * 1e6 / sent if sent else None,
                "commits_per_s": (commits1 - commits0) / (t1 - t0),
                "task_steps_per_message": (steps1 - steps0) / sent if sent else None,
                "errors": senders.counts.get("error", 0),
            })
            time.sleep(1.0)  # the last answers and receipts settle
    finally:
        stop_all(gw, netsim)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="50,100,300,1000", help="comma-separated sends per second")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured time per rate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pin_load_side()
    rows = run([float(r) for r in args.rates.split(",")], args.seconds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['rate']:>7,.0f}/s offered  {r['sends_per_s']:>7,.0f}/s sent  gateway CPU {r['gateway_cpu']:4.0%}"
              f"  {r['cpu_us_per_message']:>7,.0f} µs/message  {r['commits_per_s']:>5,.0f} commits/s"
              f"  {r['task_steps_per_message']:5.1f} task steps/message  errors {r['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
