"""Command line for netsim: serve (default), `stats --connect HOST:PORT`, and `bench --connect HOST:PORT`.

It owns argument parsing, signal handling and console output; it must never contain simulation logic.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import msgspec
import trio

from gateway.network.link import parse_url
from loadtest.netsim.config import NetsimConfig, load_config, validated
from loadtest.netsim.server import bench_submits, customer_send, fetch_stats, serve_netsim

_FLAG_TO_FIELD = {
    "seed": "seed",
    "latency_ms": "latency_ms_median",
    "latency_sigma": "latency_sigma",
    "read_share": "read_share",
    "unregistered_share": "unregistered_share",
    "offline_share": "offline_share",
    "throttle_share": "throttle_share",
    "inbound_rate": "inbound_rate",
    "inbound_customers": "inbound_customers",
    "inbound_count": "inbound_count",
    "inbound_customer_prefix": "inbound_customer_prefix",
}


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.netsim",
                                description="Simulated messaging network (subcommands: stats, bench, send).")
    p.add_argument("--listen", default="127.0.0.1:7000", help="HOST:PORT to bind (port 0 = any free port)")
    p.add_argument("--config", help="TOML file: its [network.sim] table, else its top-level keys")
    p.add_argument("--seed", type=int)
    p.add_argument("--latency-ms", type=float, help="median one-way delivery latency")
    p.add_argument("--latency-sigma", type=float, help="lognormal sigma (0 = fixed latency)")
    p.add_argument("--read-share", type=float)
    p.add_argument("--unregistered-share", type=float)
    p.add_argument("--offline-share", type=float)
    p.add_argument("--throttle-share", type=float)
    p.add_argument("--inbound-rate", type=float, help="inbound messages per second from simulated customers")
    p.add_argument("--inbound-customers", type=int, help="how many customers generated inbound traffic comes from")
    p.add_argument("--inbound-count", type=int, help="stop generating inbound messages after this many (0 = never)")
    p.add_argument("--inbound-customer-prefix", help="customers' numbers: this prefix + 7 digits (default +1888)")
    p.add_argument("--record", help="append one JSON line per first accepted submit to this file")
    p.add_argument("--capture", help="append every submit frame received, byte for byte as on the wire "
                                     "(4-byte length + msgpack body), to this file")
    p.add_argument("--no-e2e", action="store_true", help="take payloads as opaque bytes (no decryption)")
    return p


def _client_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m loadtest.netsim {name}")
    p.add_argument("--connect", default="127.0.0.1:7000", help="HOST:PORT of a running netsim")
    if name == "send":
        p.add_argument("--from", dest="customer", required=True, help="the customer's number (E.164)")
        p.add_argument("--to", dest="recipient", required=True, help="a sender number with published keys")
        p.add_argument("--text", required=True)
    if name == "bench":
        p.add_argument("--count", type=int, default=200_000)
        p.add_argument("--batch", type=int, default=500)
        p.add_argument("--window", type=int, default=20_000)
    return p


async def _serve(config: NetsimConfig, host: str, port: int, record: str | None, capture: str | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(lambda task_status: serve_netsim(
                config, host, port, record_path=record, capture_path=capture, task_status=task_status))
            print(f"netsim listening on {host}:{bound}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("stats", "bench", "send"):
        args = _client_parser(argv[0]).parse_args(argv[1:])
        host, port = parse_url(args.connect)
        if argv[0] == "stats":
            data = trio.run(fetch_stats, host, port)
        elif argv[0] == "send":
            data = trio.run(lambda: customer_send(host, port, args.customer, args.recipient, args.text))
            print(json.dumps(data, sort_keys=True), flush=True)
            return 0 if "id" in data else 1
        else:
            data = trio.run(lambda: bench_submits(host, port, count=args.count, batch=args.batch,
                                                  window=args.window))
        print(json.dumps(data, sort_keys=True), flush=True)
        return 0
    args = _serve_parser().parse_args(argv)
    host, port = parse_url(args.listen)
    try:
        config = load_config(args.config) if args.config else NetsimConfig()
        overrides = {field: getattr(args, flag) for flag, field in _FLAG_TO_FIELD.items()
                     if getattr(args, flag) is not None}
        if args.no_e2e:
            overrides["e2e"] = False
        config = validated(config, **overrides)
    except (msgspec.ValidationError, OSError, ValueError) as exc:
        print(f"netsim: bad configuration: {exc}", file=sys.stderr)
        return 2
    trio.run(_serve, config, host, port, args.record, args.capture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
