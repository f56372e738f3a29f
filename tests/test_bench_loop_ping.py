"""bench/loop_ping.py: the client in its own process gets every ping answered by the loop, and the
window picks the pings sent in it."""
import time

import trio

from bench import loop_ping
from bench.loop_ping import LoopPing


async def test_the_loop_answers_pings_from_the_client_process_until_it_stops():
    ping = LoopPing(max_s=30)
    start = time.monotonic()
    async with trio.open_nursery() as nursery:
        await nursery.start(ping.run)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    end = time.monotonic()
    samples = ping.samples()  # the client stopped when the loop closed the connection
    assert len(samples) >= 20
    assert all(start <= at <= end and 0 < rtt < 0.3 for at, rtt in samples)


def test_a_window_counts_the_pings_sent_in_it():
    samples = [(1.0, 0.001), (2.0, 0.006), (3.0, 0.002), (4.0, 0.009)]
    w = loop_ping.window(samples, 1.5, 3.5, target_ms=5.0)
    assert w["samples"] == 2 and w["over_target"] == 1
    assert abs(w["max_ms"] - 6.0) < 1e-9
    assert loop_ping.window(samples, 5.0, 6.0, target_ms=5.0) == {"samples": 0}


async def test_the_floor_bench_pings_a_bare_loop_with_its_busy_steps():
    from bench import loop_floor
    r = await loop_floor.measure(0.3, busy_ms=0.2)
    assert r["io_answer"]["samples"] >= 20 and r["io_answer"]["max_ms"] > 0
