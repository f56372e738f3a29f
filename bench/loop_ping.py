"""How long an event loop takes to answer I/O: a client in its own process, on another CPU, sends a
byte every PERIOD_S over loopback TCP and times the echo that a trio task in the measured loop sends
back. The loop's worst answer is its worst stall as a client sees it: it counts the time the loop's
thread waits for the GIL, and unlike the lateness of a timer it does not count epoll's rounding of
timeouts up to whole milliseconds (a loop asleep in epoll answers a readable socket at once).

`python -m bench.loop_ping PORT SECONDS` is the client: it stops when the loop closes the connection
or after SECONDS, and writes (sent at, round trip) pairs of CLOCK_MONOTONIC seconds to stdout as
native doubles.
"""
from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import time

import trio

from bench.healthz_probe import pairs
from bench.procs import ROOT

PERIOD_S = 0.001
MAX_S = 600.0  # the client stops by itself after this long at most


class LoopPing:
    """The echo side, run in the measured loop with `nursery.start(ping.run)`; `samples()` after the
    task has ended (cancelled) gives the client's pairs."""

    def __init__(self, max_s: float = MAX_S) -> None:
        self.max_s = max_s
        self._proc: subprocess.Popen | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        loop_cpus = os.sched_getaffinity(0)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loop_ping", str(port), str(self.max_s)],
            cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=lambda: _off(loop_cpus))
        with trio.fail_after(10):
            stream = await listener.accept()
        await listener.aclose()  # trio streams set TCP_NODELAY themselves
        task_status.started()
        try:
            while data := await stream.receive_some(64):
                await stream.send_all(data)
        finally:
            await trio.aclose_forcefully(stream)

    def samples(self) -> list[tuple[float, float]]:
        if self._proc is None:
            return []
        out, _ = self._proc.communicate(timeout=30)
        return pairs(out)


def window(samples: list[tuple[float, float]], start: float, end: float, target_ms: float) -> dict:
    """Round trips of the pings sent in [start, end] (CLOCK_MONOTONIC seconds), in milliseconds."""
    return summary([rtt for at, rtt in samples if start <= at <= end], target_ms)


def summary(delays_s: list[float], target_ms: float) -> dict:
    """Count, worst, p99 and how many over `target_ms` of delays given in seconds, in milliseconds."""
    delays = sorted(delays_s)
    if not delays:
        return {"samples": 0}
    return {"samples": len(delays), "max_ms": delays[-1] * 1000, "p99_ms": delays[int(len(delays) * 0.99)] * 1000,
            "over_target": sum(1 for x in delays if x * 1000 > target_ms)}


def _off(loop_cpus: set[int]) -> None:
    """Keep the client off the measured loop's CPUs where there are others."""
    others = set(range(os.cpu_count() or 1)) - loop_cpus
    if others:
        os.sched_setaffinity(0, others)


def client(port: int, max_s: float) -> array.array:
    samples = array.array("d")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = time.monotonic() + max_s
    try:
        while (t0 := time.monotonic()) < stop:
            sock.sendall(b"p")
            if not sock.recv(64):
                break
            samples.extend((t0, time.monotonic() - t0))
            time.sleep(PERIOD_S)
    except OSError:  # the loop closed the connection: the run is over
        pass
    finally:
        sock.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.buffer.write(client(int(args[0]), float(args[1])).tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
