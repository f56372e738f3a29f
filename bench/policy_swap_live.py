"""Event-loop stall while a 100,000-term sensitive-word list replaces a 1,000-term one under send
traffic, seen from outside a real gateway: `gateway run` pinned to CPU 0 with netsim in its own
process, and everything else on the other CPU. Senders post single messages over HTTP keep-alive
connections at a fixed rate (1,000/s by default: twice the 500/s peak of a typical contract); a
probe in its own process sends GET /healthz every 1 ms on its own keep-alive connection and times
each answer (the gateway's reading task answers it at once, so its round trip is the loop's answer
to I/O, as bench/loop_ping.py measures it in process); the admin client PUTs the big list. The
window of the PUT runs on for AFTER_S after its answer, so what the swap leaves behind counts too;
the same traffic without a PUT comes first.

bench.policy_swap measures the same swap with the whole gateway, its load and an embedded netsim
in one trio loop (the loop ~85 % busy at 1,000 sends/s here, half of it the bench's own tasks and
the embedded netsim): the stricter setting. This one is what an operator sees.

`python -m bench.policy_swap_live [--terms N] [--rate R] [--baseline S]`; it reports the target
rather than failing on it. The probe is bench/healthz_probe.py.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time

import orjson

from bench import healthz_probe, loop_ping
from bench.e2e import warm_up
from bench.policy_scan import terms
from bench.policy_swap import AFTER_S, RECIPIENTS, STALL_TARGET_MS, TEXTS
from bench.procs import (ROOT, cpu_seconds, loop_stalls, metric, pin_load_side, stalls_between, start_gateway,
                         start_netsim, stop_all)

SENDER_THREADS = 16
NO_PAIR_LIMIT = "\n[scheduler]\npair_rate_per_minute = 600000.0\npair_burst = 100000\n"


# -- load and admin calls (this process) ------------------------------------------------------------

class Senders:
    """SENDER_THREADS threads posting single messages, together at `rate` per second: each keeps its
    own schedule and sends late ones at once (a thread waits for each answer, ~1 ms)."""

    def __init__(self, port: int, key: str, rate: float) -> None:
        self.port, self.key, self.rate = port, key, rate
        self.counts: dict[int | str, int] = {}  # by status, or "error" for a failed request
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(SENDER_THREADS)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=30)

    def sent(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        period = SENDER_THREADS / self.rate
        due = time.monotonic() + i * period / SENDER_THREADS
        n = i
        while not self._stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            due += period
            n += SENDER_THREADS
            body = orjson.dumps({"to": "+1%010d" % (n % RECIPIENTS),  # the numbers warm_up reached
                                 "text": {"body": TEXTS[n % len(TEXTS)].format(n=n)}})
            try:
                conn.request("POST", "/v1/messages", body, headers)
                resp = conn.getresponse()
                resp.read()
                status: int | str = resp.status
            except (OSError, http.client.HTTPException):
                status = "error"
                conn.close()  # http.client reconnects on the next request
            with self._lock:
                self.counts[status] = self.counts.get(status, 0) + 1
        conn.close()


def _call(port: int, key: str, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- the run --------------------------------------------------------------------------------------

def run(big_terms: int = 100_000, baseline_s: float = 3.0, rate: float = 1_000.0) -> dict:
    big = orjson.dumps({"action": "block", "terms": terms(big_terms, seed=3) + ["free"]})
    small = orjson.dumps({"action": "flag", "terms": terms(1_000) + ["free"]})
    netsim, netsim_port = start_netsim(1, "--seed", "1", "--latency-ms", "5")
    gw = senders = probe_proc = None
    try:
        gw, port, key = start_gateway(0, netsim_port=netsim_port, extra_config=NO_PAIR_LIMIT,
                                      server_config=f"max_body_bytes = {max(len(big) * 2, 1 << 20)}")
        warm_up(port, key, RECIPIENTS, timeout_s=120.0)  # sessions agreed before timing
        status, body = _call(port, key, "PUT", "/admin/v1/sensitive-words/spam", small)
        if status not in (200, 201):
            raise RuntimeError(f"small list answered {status}: {body[:200]!r}")
        probe_proc = healthz_probe.start(port, ROOT)
        senders = Senders(port, key, rate)
        senders.start()
        time.sleep(1.0)  # warm up
        commits0 = metric(port, "gateway_store_commit_seconds_count")
        stalls0 = loop_stalls(port)
        base_start, sent0, cpu_base = time.monotonic(), senders.sent(), cpu_seconds(gw.popen.pid)
        time.sleep(baseline_s)
        base_end, sent1, cpu0 = time.monotonic(), senders.sent(), cpu_seconds(gw.popen.pid)
        stalls1 = loop_stalls(port)
        baseline_cpu = (cpu0 - cpu_base) / (base_end - base_start)
        baseline_commits = (metric(port, "gateway_store_commit_seconds_count") - commits0) / (base_end - base_start)
        put_start = time.monotonic()
        status, body = _call(port, key, "PUT", "/admin/v1/sensitive-words/spam", big)
        put_s = time.monotonic() - put_start
        if status != 200:
            raise RuntimeError(f"big list answered {status}: {body[:200]!r}")
        time.sleep(AFTER_S)
        put_end, sent2 = time.monotonic(), senders.sent()
        gateway_cpu = (cpu_seconds(gw.popen.pid) - cpu0) / (put_end - put_start)
        stalls2 = loop_stalls(port)
        senders.stop()
        check, _ = _call(port, key, "POST", "/v1/messages", b'{"to":"+14155550100","text":{"body":"free"}}')
        pings = healthz_probe.samples(probe_proc)
        probe_proc = None
    finally:
        try:
            if senders is not None:
                senders.stop()
            healthz_probe.kill(probe_proc)
        finally:
            stop_all(gw, netsim)
    answers = {"baseline": loop_ping.window(pings, base_start, base_end, STALL_TARGET_MS),
               "during_put": loop_ping.window(pings, put_start, put_end, STALL_TARGET_MS)}
    return {
        "terms": big_terms + 1, "put_body_bytes": len(big), "put_s": put_s,
        "load": f"{rate:,.0f} single sends/s over {SENDER_THREADS} connections",
        "sends_per_s": {"baseline": (sent1 - sent0) / (base_end - base_start),
                        "during_put": (sent2 - sent1) / (put_end - base_end)},
        "gateway_cpu": {"baseline": baseline_cpu, "during_put": gateway_cpu},
        "commits_per_s_baseline": baseline_commits,
        # what the gateway itself counted: loop batches and task steps (by part) over 5 ms
        "inside_over_5ms": {"baseline": stalls_between(stalls0, stalls1),
                            "during_put": stalls_between(stalls1, stalls2)},
        "io_answer": answers,
        "statuses": {str(k): v for k, v in senders.counts.items()},
        "next_send_obeys_new_list": check == 422,
        "target_max_stall_ms": STALL_TARGET_MS,
        "meets_target": answers["during_put"].get("max_ms", float("inf")) <= STALL_TARGET_MS,
        "send_errors": senders.counts.get("error", 0),
    }


def print_table(r: dict) -> None:
    ab, ad = r["io_answer"]["baseline"], r["io_answer"]["during_put"]
    if not ab["samples"] or not ad["samples"]:
        print(f"the probe recorded nothing in a window (baseline {ab['samples']}, PUT {ad['samples']}): no figure")
        return
    print(f"load: {r['load']} (gateway process on CPU 0)")
    print(f"/healthz answer, traffic only  max {ab['max_ms']:6.2f} ms  p99 {ab['p99_ms']:5.2f} ms  "
          f"({ab['samples']} probes, {r['sends_per_s']['baseline']:,.0f} sends/s; gateway CPU "
          f"{r['gateway_cpu']['baseline']:.0%}, {r['commits_per_s_baseline']:,.0f} commits/s)")
    print(f"/healthz answer, PUT {r['terms']:,}  max {ad['max_ms']:6.2f} ms  p99 {ad['p99_ms']:5.2f} ms  "
          f"({ad['samples']} probes, {ad['over_target']} over {r['target_max_stall_ms']} ms, "
          f"{r['sends_per_s']['during_put']:,.0f} sends/s; PUT took {r['put_s']:.2f} s; "
          f"gateway CPU {r['gateway_cpu']['during_put']:.0%})")
    for window in ("baseline", "during_put"):
        inside = r["inside_over_5ms"][window]
        parts = ", ".join(f"{task} {n}" for task, n in sorted(inside["steps"].items())) or "none"
        print(f"  inside the gateway, {window.replace('_', ' ')}: {inside['batches']} loop batches over 5 ms; "
              f"task steps over 5 ms: {parts}")
    print(f"statuses {r['statuses']}; next send obeys the new list: {r['next_send_obeys_new_list']}; "
          f"meets the {r['target_max_stall_ms']} ms target: {r['meets_target']}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.policy_swap_live")
    ap.add_argument("--terms", type=int, default=100_000)
    ap.add_argument("--baseline", type=float, default=3.0, help="seconds of traffic without a PUT")
    ap.add_argument("--rate", type=float, default=1_000.0, help="single sends per second")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args(args)
    pin_load_side()
    result = run(opts.terms, opts.baseline, opts.rate)
    print(json.dumps(result, indent=2)) if opts.json else print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
