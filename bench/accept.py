"""Accept path: POST /v1/messages over 32 keep-alive connections to a running gateway pinned to
one core, the load client on the other. Every 202 is durable (fsync'ed group commit).

Two runs: `accept-only` (the sender's rate is 1/min, so the scheduler holds everything and the
core does nothing but accept) and `accept+deliver` (the delivery path runs beside it).
"""
from __future__ import annotations

import argparse
import json

from bench.loadclient import run_load
from bench.procs import cpu_seconds, pin_load_side, start_gateway


def request_factory(port: int, key: str):
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\n").encode()

    def make(i: int) -> bytes:
        body = b'{"to":"+1415%07d","text":{"body":"Your code is %06d"},"priority":"urgent"}' % (i % 10_000_000, i % 1_000_000)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    return make


def run_one(label: str, *, rate: int, burst: int, duration_s: float, connections: int) -> dict:
    """One run; `cpu_us_per_request` is the gateway's CPU time over the measured part divided by the
    requests answered in it, which machine noise moves far less than the rate."""
    proc, port, key = start_gateway(0, rate=rate, burst=burst)
    pid = proc.popen.pid
    cpu: list[float] = []
    try:
        result = run_load("127.0.0.1", port, connections=connections, duration_s=duration_s,
                          make_request=request_factory(port, key), warmup_s=2.0,
                          on_measure=lambda _start: cpu.append(cpu_seconds(pid)))
    finally:
        proc.stop()
    result["label"] = label
    if len(cpu) == 2 and result["requests"]:
        result["cpu_us_per_request"] = round((cpu[1] - cpu[0]) * 1e6 / result["requests"], 1)
    return result


RUNS = {
    "accept_only": dict(label="accept-only", rate=1, burst=1),
    "accept_and_deliver": dict(label="accept+deliver", rate=60_000_000, burst=1_000_000),
}


def run(duration_s: float = 10.0, connections: int = 32, only: str | None = None) -> dict:
    return {name: run_one(**spec, duration_s=duration_s, connections=connections)
            for name, spec in RUNS.items() if only is None or name == only}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", choices=sorted(RUNS), help="run just one of the two setups")
    args = ap.parse_args()
    pin_load_side()
    print(json.dumps(run(args.duration, args.connections, args.only), indent=2))


if __name__ == "__main__":
    main()
