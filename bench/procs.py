"""Starts the gateway and netsim as separate, CPU-pinned processes for benchmarks, with a
throwaway data directory, and stops them. Loopback only; every wait is bounded."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from loadtest.procs import cpu_seconds  # noqa: F401 - re-exported for the bench CLIs
from loadtest.procs import free_port
from loadtest.procs import pinner as pin  # pins against every CPU, whatever this process is pinned to

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BENCH_CONFIG = """
[server]
listen = "127.0.0.1:{port}"
{server}

[store]
data_dir = "{data_dir}"
map_size_mb = 16384

[tiers.bench]
rate_per_minute = {rate}
burst = {burst}

[[workspaces]]
name = "default"
default_sender = "+15550000001"

[[senders]]
number = "+15550000001"
tier = "bench"

[network]
{network}
"""


def pin_load_side() -> None:
    """Keep the calling (load) process off CPU 0, where the gateway runs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})


class Proc:
    def __init__(self, popen: subprocess.Popen, tmp: str | None = None) -> None:
        self.popen, self.tmp = popen, tmp

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def stop_all(*procs: Proc | None) -> None:
    """Stop each process given (None: never started), in order, even when an earlier stop fails."""
    try:
        if procs and procs[0] is not None:
            procs[0].stop()
    finally:
        if len(procs) > 1:
            stop_all(*procs[1:])


def start_netsim(cpu: int, *args: str) -> tuple[Proc, int]:
    p = subprocess.Popen([sys.executable, "-m", "loadtest.netsim", "--listen", "127.0.0.1:0", *args],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=pin(cpu))
    line = p.stdout.readline()
    m = re.search(r":(\d+)", line)
    if not m:
        p.kill()
        raise RuntimeError(f"netsim did not start: {line!r}")
    return Proc(p), int(m.group(1))


def start_gateway(cpu: int, *, rate: int = 60_000_000, burst: int = 1_000_000,
                  netsim_port: int | None = None, extra_config: str = "",
                  server_config: str = "") -> tuple[Proc, int, str]:
    """`server_config`: lines for its [server] table; `extra_config`: tables after the rest."""
    tmp = tempfile.mkdtemp(prefix="gw-bench-")
    port = free_port()
    network = f'mode = "tcp"\nurl = "tcp://127.0.0.1:{netsim_port}"' if netsim_port else 'mode = "embedded"'
    cfg = os.path.join(tmp, "gateway.toml")
    with open(cfg, "w") as f:
        f.write(BENCH_CONFIG.format(port=port, server=server_config, data_dir=os.path.join(tmp, "var"), rate=rate,
                                    burst=burst, network=network) + extra_config)
    log = open(os.path.join(tmp, "gateway.log"), "w")
    p = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", cfg, "--log-level", "warning"],
                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin(cpu))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    else:
        p.kill()
        raise RuntimeError(open(log.name).read())
    key = open(os.path.join(tmp, "var", "admin.key")).read().strip()
    return Proc(p, tmp), port, key


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def loop_stalls(port: int, over: str = "5ms") -> dict:
    """The gateway's own count of event-loop batches longer than `over` and of task steps longer than
    it by part (`gateway_loop_long_batches_total`, `gateway_loop_long_steps_total`): take one before
    and one after a window, and `stalls_between` says what the window held."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {"batches": 0.0, "steps": {}}
    for line in text.splitlines():
        if line.startswith(f'gateway_loop_long_batches_total{{over="{over}"}}'):
            out["batches"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_loop_long_steps_total{") and f'over="{over}"' in line:
            task = line.split('task="', 1)[1].split('"', 1)[0]
            out["steps"][task] = float(line.rsplit(" ", 1)[1])
    return out


def stalls_between(before: dict, after: dict) -> dict:
    steps = {task: int(n - before["steps"].get(task, 0)) for task, n in after["steps"].items()}
    return {"batches": int(after["batches"] - before["batches"]), "steps": {t: n for t, n in steps.items() if n}}


def post(port: int, key: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
