"""Event-loop stall while a config reload adds sender numbers, seen from outside a real gateway:
`gateway run` pinned to CPU 0 (embedded netsim), a probe sending GET /healthz every 1 ms, and
POST /admin/v1/config/reload after the config file gained N senders (each needs a new key book:
identity, signed and PQ prekeys, a pool of one-time prekeys, an fsync'ed file). The window runs
from the reload's request to 1.5 s after its answer.

`python -m bench.reload_senders [--senders 50]`; it reports the target (5 ms, as the other stall
benches) rather than failing on it.
"""
from __future__ import annotations

import argparse
import os
import time
import urllib.request

from bench import healthz_probe, loop_ping
from bench.policy_swap import STALL_TARGET_MS
from bench.procs import ROOT, pin_load_side, start_gateway, stop_all

AFTER_S = 1.5


def run(senders: int = 50) -> dict:
    gw, port, key = start_gateway(0)
    probe = None
    try:
        path = os.path.join(gw.tmp, "gateway.toml")
        added = "".join(f'\n[[senders]]\nnumber = "+1555100{n:04d}"\ntier = "bench"\n' for n in range(senders))
        with open(path) as f:
            text = f.read()
        probe = healthz_probe.start(port, ROOT)
        time.sleep(1.0)
        with open(path, "w") as f:
            f.write(text.replace("[network]", added + "\n[network]", 1))
        start = time.monotonic()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/v1/config/reload", data=b"", method="POST",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=300) as reply:
            status = reply.status
        answered = time.monotonic()
        time.sleep(AFTER_S)
        pings = healthz_probe.samples(probe)
        probe = None
    finally:
        healthz_probe.kill(probe)
        stop_all(gw)
    return {"senders_added": senders, "reload_status": status, "reload_s": answered - start,
            "io_answer": loop_ping.window(pings, start, answered + AFTER_S, STALL_TARGET_MS),
            "target_max_stall_ms": STALL_TARGET_MS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--senders", type=int, default=50)
    args = ap.parse_args(argv)
    pin_load_side()
    r = run(args.senders)
    print(f"reload adding {r['senders_added']} senders: {r['reload_status']} in {r['reload_s']:.2f} s")
    print(healthz_probe.describe(r["io_answer"], r["target_max_stall_ms"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
