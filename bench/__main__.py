"""`python -m bench`: token buckets (native vs pure), the accept path, and accepted -> delivered
through netsim in its own process. Prints a table and writes bench/results/<timestamp>.json."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.procs import pin_load_side


def main() -> int:
    """Exits 1 when the e2e run lost or duplicated a message or did not drain."""
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--only", choices=["buckets", "accept", "e2e", "crypto"], action="append")
    ap.add_argument("--accept-duration", type=float, default=10.0)
    ap.add_argument("--e2e-duration", type=float, default=60.0)
    ap.add_argument("--e2e-rate", type=float, default=10_000)
    ap.add_argument("--e2e-recipients", type=int, default=2_000,
                    help="numbers the e2e run cycles through over established sessions (0: a new number, so a "
                         "PQXDH session, per message: ~300 messages/s here, which does not drain at 10,000/s)")
    args = ap.parse_args()
    wanted = set(args.only or ["buckets", "accept", "e2e", "crypto"])
    cpus = sorted(os.sched_getaffinity(0))
    pin_load_side()  # the gateway gets CPU 0
    results: dict = {"machine": {"cpus": len(cpus), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    if "buckets" in wanted:
        from bench import buckets

        results["buckets"] = buckets.run()
        buckets.print_table(results["buckets"])
    if "accept" in wanted:
        from bench import accept

        results["accept"] = accept.run(args.accept_duration)
        for name, r in results["accept"].items():
            print(f"accept {r['label']:16s} {r['rps']:>10,.0f} req/s  p50 {r['latency_ms']['p50']:.2f} ms"
                  f"  p99 {r['latency_ms']['p99']:.2f} ms  statuses {r['status']}")
    if "e2e" in wanted:
        from bench import e2e

        r = results["e2e"] = e2e.run(args.e2e_rate, args.e2e_duration, recipients=args.e2e_recipients)
        loss = f"lost {r['lost']}" if r["drained"] else \
            f"NOT DRAINED: {r['not_seen_by_netsim_when_the_drain_gave_up']:,} not yet seen by netsim"
        print(f"e2e accepted {r['accepted']:,}  delivered {r['delivered']:,.0f}  steady min "
              f"{r['delivered_per_s_steady_min']}/s median {r['delivered_per_s_steady_median']}/s  "
              f"{loss}  duplicates {r['netsim_duplicates']}")
    if "crypto" in wanted:
        from bench import crypto_agreement, crypto_ratchet, crypto_seal

        results["crypto_seal"] = crypto_seal.run()
        crypto_seal.print_table(results["crypto_seal"])
        results["crypto_ratchet"] = crypto_ratchet.run()
        crypto_ratchet.print_table(results["crypto_ratchet"])
        results["crypto_agreement"] = crypto_agreement.run()
        crypto_agreement.print_table(results["crypto_agreement"])
    out_dir = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results written to {path}")
    e2e_run = results.get("e2e")
    return 1 if e2e_run is not None and (e2e_run["lost"] != 0 or e2e_run["netsim_duplicates"]) else 0


if __name__ == "__main__":
    sys.exit(main())
