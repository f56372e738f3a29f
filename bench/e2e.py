"""Accepted -> delivered through netsim in its own process: the gateway pinned to one core,
netsim and a paced feeder (batch API) on the other. Reports the delivered rate per second over
the run, the drain, and completeness (netsim saw every accepted message once, none twice, and
decrypted every one).

Recipients: by default every message goes to a new number, so with end-to-end encryption every
message starts a PQXDH session (the broadcast-to-new-customers case). `--recipients N` cycles
through N numbers instead, after a warm-up that sends each one message and waits for delivery,
so the measured run is the ratchet path over established sessions (the conversation case); the
pair limit is lifted for that run, since N numbers at thousands of messages/s would otherwise be
held by it (the pair limit has its own tests).
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time

import trio

from bench.procs import cpu_seconds, metric, pin_load_side, start_gateway, start_netsim
from loadtest.netsim.server import fetch_stats


def feeder(port: int, key: str, *, rate: float, duration_s: float, batch: int, threads: int,
           recipients: int = 0) -> dict:
    """Send `rate` messages/s as batches from `threads` keep-alive connections, paced."""
    accepted = [0] * threads
    errors = [0] * threads
    per_thread = rate / threads
    start = time.monotonic() + 0.2

    def work(t: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = 0
        n = t * 100_000_000
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        while True:
            due = start + sent / per_thread
            now = time.monotonic()
            if due - start >= duration_s:
                break
            if due > now:
                time.sleep(due - now)
            msgs = [{"to": "+1%010d" % ((n + i) % recipients if recipients else n + i),
                     "text": {"body": "Your order %d has shipped" % (n + i)}} for i in range(batch)]
            n += batch
            try:
                conn.request("POST", "/v1/messages/batch", json.dumps({"messages": msgs}), headers)
                resp = conn.getresponse()
                body = json.loads(resp.read())
                if resp.status == 202:
                    accepted[t] += body["accepted"]
                else:
                    errors[t] += batch
            except (OSError, http.client.HTTPException):
                errors[t] += batch
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            sent += batch
        conn.close()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"accepted": sum(accepted), "errors": sum(errors)}


_NO_PAIR_LIMIT = "\n[scheduler]\npair_rate_per_minute = 600000.0\npair_burst = 100000\n"


def _terminal(port: int) -> float:
    return (metric(port, 'gateway_messages_status_total{status="delivered"}')
            + metric(port, 'gateway_messages_status_total{status="failed"}'))


def warm_up(port: int, key: str, recipients: int, timeout_s: float = 600.0) -> dict:
    """One message to each of `recipients` numbers (sessions agreed), then wait for all of them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    t0 = time.monotonic()
    accepted = 0
    for start in range(0, recipients, 200):
        msgs = [{"to": "+1%010d" % (i % recipients), "text": {"body": "hello"}}
                for i in range(start, min(recipients, start + 200))]
        conn.request("POST", "/v1/messages/batch", json.dumps({"messages": msgs}), headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        if resp.status != 202:
            raise RuntimeError(f"warm-up batch refused: {resp.status} {body}")
        accepted += body["accepted"]
    conn.close()
    deadline = time.monotonic() + timeout_s
    while _terminal(port) < accepted:
        if time.monotonic() > deadline:
            raise RuntimeError("warm-up did not finish")
        time.sleep(0.25)
    return {"warm_up_messages": accepted, "warm_up_s": round(time.monotonic() - t0, 1)}


DRAIN_S = 120.0  # after the feed, for every accepted message to reach a terminal status


def run(rate: float = 10_000, duration_s: float = 60.0, batch: int = 200, threads: int = 8,
        read_share: float = 0.5, recipients: int = 0) -> dict:
    netsim, netsim_port = start_netsim(1, "--seed", "1", "--latency-ms", "20", "--read-share", str(read_share))
    try:
        gw, port, key = start_gateway(0, netsim_port=netsim_port,
                                      extra_config=_NO_PAIR_LIMIT if recipients else "")
    except BaseException:
        netsim.stop()
        raise
    warm: dict = {}
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), metric(port, 'gateway_messages_status_total{status="delivered"}')))
            time.sleep(1.0)

    try:
        if recipients:
            warm = warm_up(port, key, recipients)
        base_delivered = metric(port, 'gateway_messages_status_total{status="delivered"}')
        base_failed = metric(port, 'gateway_messages_status_total{status="failed"}')
        base_unique = trio.run(fetch_stats, "127.0.0.1", netsim_port).get("unique", 0)
        sampler = threading.Thread(target=sample)
        sampler.start()
        cpu0, netsim_cpu0 = cpu_seconds(gw.popen.pid), cpu_seconds(netsim.popen.pid)
        t0 = time.monotonic()
        fed = feeder(port, key, rate=rate, duration_s=duration_s, batch=batch, threads=threads,
                     recipients=recipients)
        fed_s = time.monotonic() - t0
        deadline = time.monotonic() + DRAIN_S
        while True:
            delivered = metric(port, 'gateway_messages_status_total{status="delivered"}') - base_delivered
            failed = metric(port, 'gateway_messages_status_total{status="failed"}') - base_failed
            drained = delivered + failed >= fed["accepted"]
            if drained or time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # the drain time is part of the figure: poll finely
        drained_s = time.monotonic() - t0
        gateway_cpu_s = cpu_seconds(gw.popen.pid) - cpu0
        netsim_cpu_s = cpu_seconds(netsim.popen.pid) - netsim_cpu0
        done.set()
        sampler.join()
        stats = trio.run(fetch_stats, "127.0.0.1", netsim_port)
    finally:
        done.set()
        gw.stop()
        netsim.stop()
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])]
    steady = rates[2:int(fed_s) - 1] if len(rates) > 4 else rates
    unique = stats.get("unique", 0) - base_unique
    result = {
        "target_rate": rate,
        "feeder_connections": threads,
        "batch": batch,
        "recipients": recipients or "a new one per message",
        **warm,
        "fed_seconds": round(fed_s, 1),
        "accepted": fed["accepted"],
        "feed_errors": fed["errors"],
        "delivered": delivered,
        "failed": failed,
        "drained_after_s": round(drained_s, 1),
        "delivered_per_s_over_run": round(delivered / drained_s),
        "gateway_cpu_s": round(gateway_cpu_s, 2),
        "gateway_cpu_us_per_delivered": round(gateway_cpu_s * 1e6 / delivered, 1) if delivered else None,
        "netsim_cpu_s": round(netsim_cpu_s, 2),  # netsim shares its core with the feeder
        "delivered_per_s_steady_min": round(min(steady)) if steady else None,
        "delivered_per_s_steady_median": round(sorted(steady)[len(steady) // 2]) if steady else None,
        "netsim_unique": unique,
        "netsim_duplicates": stats.get("duplicates"),
        "netsim_decrypted": stats.get("decrypted"),
        "netsim_decrypt_failures": stats.get("decrypt_failures"),
        **completeness(fed["accepted"], unique, drained),
    }
    return result


def completeness(accepted: int, unique: int, drained: bool) -> dict:
    """Lost = accepted - seen by netsim, once every accepted message has a terminal status. A drain
    that gave up after DRAIN_S leaves messages still queued: how many is reported, and no loss
    figure (those messages are late, not known to be lost)."""
    if drained:
        return {"drained": True, "lost": accepted - unique}
    return {"drained": False, "lost": None, "not_seen_by_netsim_when_the_drain_gave_up": accepted - unique}


def main() -> int:
    """Exits 1 unless every accepted message was seen by netsim exactly once within the drain."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8,
                    help="feeder connections, each with one batch in flight: rate <= threads x batch / latency "
                         "(with 4 the feeder, not the gateway, bounded runs at 10,000/s)")
    ap.add_argument("--read-share", type=float, default=0.5)
    ap.add_argument("--recipients", type=int, default=0,
                    help="cycle through this many numbers after a warm-up (0: a new number per message)")
    args = ap.parse_args()
    pin_load_side()
    result = run(args.rate, args.duration, args.batch, threads=args.threads, read_share=args.read_share,
                 recipients=args.recipients)
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and not result["netsim_duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
