"""A TCP relay between the gateway and netsim that cuts the link on a timer (`python -m loadtest.proxy`).

Every `--cut-every` seconds it drops every connection and refuses new ones for `--down-for` seconds,
like a network partition, then listens again on the same port. It binds 127.0.0.1 only, relays to
127.0.0.1 only, and never looks at the bytes it carries.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys

import trio

_CHUNK = 262144


async def _pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(_CHUNK):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _relay(client: trio.SocketStream, target_port: int) -> None:
    try:
        upstream = await trio.open_tcp_stream("127.0.0.1", target_port)
    except OSError:
        await trio.aclose_forcefully(client)
        return
    async with client, upstream:
        async with trio.open_nursery() as nursery:
            async def one_way(a, b):
                await _pump(a, b)
                nursery.cancel_scope.cancel()
            nursery.start_soon(one_way, client, upstream)
            nursery.start_soon(one_way, upstream, client)


def _bind(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


async def run_proxy(target_port: int, cut_every_s: float, down_for_s: float, *, max_cuts: int = 10_000,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    port = 0
    cuts = 0
    while True:
        sock = _bind(port)
        await sock.bind(("127.0.0.1", port))
        sock.listen(128)
        if port == 0:
            port = sock.getsockname()[1]
            task_status.started(port)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, lambda s: _relay(s, target_port), [listener])
            if cut_every_s <= 0 or cuts >= max_cuts:
                await trio.sleep(math.inf)
            await trio.sleep(cut_every_s)
            nursery.cancel_scope.cancel()  # closes the listener and every relayed connection
        cuts += 1
        print(f"proxy cut {cuts}", flush=True)
        await trio.sleep(down_for_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="TCP relay that cuts the link on a timer (loopback only)")
    ap.add_argument("--target", type=int, required=True, help="port on 127.0.0.1 to relay to")
    ap.add_argument("--cut-every", type=float, default=0.0, help="seconds between cuts (0 = never)")
    ap.add_argument("--down-for", type=float, default=0.5, help="seconds the link stays down")
    ap.add_argument("--cpu", type=int, default=None)
    args = ap.parse_args(argv)
    if args.cpu is not None and args.cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {args.cpu})

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(run_proxy, args.target, args.cut_every, args.down_for)
            print(f"proxy listening on 127.0.0.1:{port}", flush=True)

    try:
        trio.run(_main)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
