"""No-op throughput benchmark for gateway.http.server: server pinned to CPU 0, load client to CPU 1.

It measures the HTTP layer alone; it must never touch the store, the API handlers or the network.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

import trio

from bench.loadclient import run_load
from gateway.http.server import Response, ServerLimits, serve_http
from loadtest.procs import cpu_seconds

_BODY = b'{"to":"+15550100","type":"text","text":{"body":"hello"}}'
_ROOT = Path(__file__).resolve().parents[1]
_SERVER_CPU = 0
_CLIENT_CPU = 1


def _pin(cpu: int) -> None:
    """Pin this process to one CPU; quietly skipped where that CPU does not exist."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def _serve(cpu: int) -> None:
    """Child process: run serve_http with a no-op handler and print the bound port."""
    _pin(cpu)
    accepted = Response(202, b'{"status":"accepted"}')

    async def handler(_req):
        return accepted

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0, ServerLimits())
            print(port, flush=True)

    trio.run(main)


def _post_request(port: int) -> bytes:
    return (b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer bench-token\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s") % (port, len(_BODY), _BODY)


def run(*, connections: int = 32, duration_s: float = 5.0, warmup_s: float = 1.0) -> dict:
    """Start the no-op server in a pinned subprocess, drive it from this process, return the result."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.http_noop", "--serve", str(_SERVER_CPU)],
                            stdout=subprocess.PIPE, text=True, cwd=_ROOT)
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        port = int(proc.stdout.readline())
        _pin(_CLIENT_CPU)
        request = _post_request(port)
        run_load("127.0.0.1", port, connections=connections, duration_s=warmup_s,
                 make_request=lambda _i: request, warmup_s=0.0)
        cpu_before, own_before = cpu_seconds(proc.pid) or 0.0, _own_cpu_seconds()
        result = run_load("127.0.0.1", port, connections=connections, duration_s=duration_s,
                          make_request=lambda _i: request, warmup_s=0.0)
        server_cpu = (cpu_seconds(proc.pid) or 0.0) - cpu_before
        client_cpu = _own_cpu_seconds() - own_before
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if before is not None:
            os.sched_setaffinity(0, before)
    result["bench"] = "http_noop"
    if server_cpu > 0:  # on a shared machine, requests per server CPU-second is the stabler figure
        result["server_cpu_pct"] = round(100 * server_cpu / result["seconds"], 1)
        result["rps_per_server_cpu_s"] = round(result["requests"] / server_cpu, 1)
    result["client_cpu_pct"] = round(100 * client_cpu / result["seconds"], 1)
    return result


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="no-op HTTP server throughput")
    ap.add_argument("--serve", type=int, metavar="CPU", help=argparse.SUPPRESS)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.serve is not None:
        _serve(args.serve)
        return 0
    result = run(connections=args.connections, duration_s=args.duration)
    lat = result["latency_ms"]
    print(f"http_noop: {result['rps']:.0f} req/s over {result['connections']} conns "
          f"(server CPU {result.get('server_cpu_pct', '?')}%, "
          f"{result.get('rps_per_server_cpu_s', 0):.0f} req per server CPU-s; "
          f"client CPU {result['client_cpu_pct']}%), "
          f"p50 {lat['p50']}ms p99 {lat['p99']}ms, status {result['status']}, errors {result['errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
