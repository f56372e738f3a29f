"""Event-loop stall while new customers open sessions with the gateway, seen from outside a real
gateway: each new customer's first message takes one of its sender's one-time prekeys, so the
network keeps asking for refills (a new pool made, its key file written and fsync'ed, then
published), and every batch of new sessions rewrites the key file without the prekeys they used.

`gateway run` pinned to CPU 0; netsim in its own process on the other CPU generates the inbound
traffic (`--inbound-rate`, each message from one of a million customers, so nearly every one is
new); a probe sends GET /healthz every 1 ms and times each answer (bench/healthz_probe.py).

`python -m bench.inbound_keys [--rate R] [--seconds S] [--pool N]`; it reports the target
(STALL_TARGET_MS, as bench.policy_swap_live) rather than failing on it.
"""
from __future__ import annotations

import argparse
import json
import time

from bench import healthz_probe, loop_ping
from bench.policy_swap import STALL_TARGET_MS
from bench.procs import ROOT, cpu_seconds, metric, pin_load_side, start_gateway, start_netsim, stop_all

CUSTOMERS = 1_000_000


def run(rate: float = 200.0, seconds: float = 10.0, pool: int = 100) -> dict:
    netsim, netsim_port = start_netsim(1, "--seed", "1", "--latency-ms", "5", "--inbound-rate", str(rate),
                                       "--inbound-customers", str(CUSTOMERS))
    gw = probe = None
    try:
        crypto = f"\n[crypto]\none_time_prekeys = {pool}\none_time_prekeys_low = {max(1, pool // 4)}\n"
        gw, port, _key = start_gateway(0, netsim_port=netsim_port, extra_config=crypto)
        probe = healthz_probe.start(port, ROOT)
        time.sleep(2.0)  # the link up, the first refills behind
        received = 'gateway_inbound_total{outcome="received"}'
        start, cpu0, in0 = time.monotonic(), cpu_seconds(gw.popen.pid), metric(port, received)
        files0 = metric(port, "gateway_key_file_writes")
        time.sleep(seconds)
        end, cpu1, in1 = time.monotonic(), cpu_seconds(gw.popen.pid), metric(port, received)
        files1 = metric(port, "gateway_key_file_writes")
        pings = healthz_probe.samples(probe)
        probe = None
    finally:
        healthz_probe.kill(probe)
        stop_all(gw, netsim)
    return {
        "inbound_per_s": (in1 - in0) / (end - start),
        "one_time_prekeys": pool,
        "key_file_writes_per_s": (files1 - files0) / (end - start),
        "gateway_cpu": (cpu1 - cpu0) / (end - start),
        "io_answer": loop_ping.window(pings, start, end, STALL_TARGET_MS),
        "target_max_stall_ms": STALL_TARGET_MS,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="inbound messages per second (new customers)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--pool", type=int, default=100, help="[crypto] one_time_prekeys (low: a quarter)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pin_load_side()
    r = run(args.rate, args.seconds, args.pool)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['inbound_per_s']:,.0f} inbound/s from new customers; key file writes {r['key_file_writes_per_s']:.1f}/s; "
          f"gateway CPU {r['gateway_cpu']:.0%}")
    print(healthz_probe.describe(r["io_answer"], r["target_max_stall_ms"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
