"""Starting and stopping what a run needs as separate processes: netsim, the link-cutting proxy, the
no-op responder and the gateway (pinned to CPU 0), plus the gateway config a scenario implies.

Everything binds 127.0.0.1; every wait is bounded; a process is only ever stopped by its own handle.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from loadtest.scenario import Scenario
from loadtest.workload import inbound_customers, sender_numbers, sender_tiers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY_CPU, LOAD_CPU = 0, 1
_ALL_CPUS = frozenset(os.sched_getaffinity(0))  # before pin_self narrows this process to the load CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process `pid` (all its threads) has used so far, from /proc;
    None where that cannot be read (no /proc, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_self(cpu: int = LOAD_CPU) -> None:
    if cpu in _ALL_CPUS and len(_ALL_CPUS) > 1:
        os.sched_setaffinity(0, {cpu})


def pinner(cpu: int):
    """preexec_fn pinning a child to `cpu` (to every CPU this machine has when it has no such CPU)."""
    target = {cpu} if cpu in _ALL_CPUS else set(_ALL_CPUS)
    return lambda: os.sched_setaffinity(0, target)


class Proc:
    """One child process and how to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen, port: int = 0) -> None:
        self.name, self.popen, self.port = name, popen, port

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdin:
            self.popen.stdin.close()

    def kill9(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _port_from_first_line(proc: subprocess.Popen, name: str) -> int:
    line = proc.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{name} did not start: {line!r} {err}")
    return int(m.group(1))


def start_netsim(scn: Scenario, record_path: str, cpu: int = LOAD_CPU) -> Proc:
    ns = scn.netsim
    args = [sys.executable, "-m", "loadtest.netsim", "--listen", "127.0.0.1:0", "--seed", str(ns.seed),
            "--latency-ms", str(ns.latency_ms), "--read-share", str(ns.read_share),
            "--unregistered-share", str(ns.unregistered_share), "--throttle-share", str(ns.throttle_share),
            "--record", record_path]
    if ns.inbound_rate > 0:
        prefix, pool, count = inbound_customers(scn)
        args += ["--inbound-rate", str(ns.inbound_rate), "--inbound-customers", str(pool),
                 "--inbound-count", str(count), "--inbound-customer-prefix", prefix]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=pinner(cpu))
    return Proc("netsim", p, _port_from_first_line(p, "netsim"))


def start_proxy(target_port: int, cut_every_s: float, down_for_s: float, cpu: int = LOAD_CPU) -> Proc:
    args = [sys.executable, "-m", "loadtest.proxy", "--target", str(target_port),
            "--cut-every", str(cut_every_s), "--down-for", str(down_for_s)]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=pinner(cpu))
    return Proc("proxy", p, _port_from_first_line(p, "proxy"))


def start_noop(cpu: int = GATEWAY_CPU) -> Proc:
    p = subprocess.Popen([sys.executable, "-m", "loadtest.noop"], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pinner(cpu))
    return Proc("noop", p, _port_from_first_line(p, "noop"))


def gateway_config(scn: Scenario, *, listen_port: int, data_dir: str, network_port: int) -> str:
    """The gateway config a scenario implies: its tiers, its senders, netsim (or the proxy) as the network."""
    gw = scn.gateway
    lines = [
        "[server]", f'listen = "127.0.0.1:{listen_port}"', "",
        "[store]", f'data_dir = "{data_dir}"', f"map_size_mb = {gw.map_size_mb}", "",
        "[scheduler]", f"pair_rate_per_minute = {float(gw.pair_rate_per_minute)}",
        f"pair_burst = {gw.pair_burst}", "",
    ]
    for name, tier in gw.tiers.items():
        lines += [f"[tiers.{name}]", f"rate_per_minute = {tier.rate_per_minute}", f"burst = {tier.burst}", ""]
    numbers = sender_numbers(scn.senders.count)
    lines += ["[[workspaces]]", 'name = "default"', f'default_sender = "{numbers[0]}"', ""]
    for number, tier in zip(numbers, sender_tiers(scn)):
        lines += ["[[senders]]", f'number = "{number}"', 'workspace = "default"', f'tier = "{tier}"', ""]
    lines += ["[network]", 'mode = "tcp"', f'url = "tcp://127.0.0.1:{network_port}"',
              "reconnect_min_ms = 20", "reconnect_max_ms = 500", ""]
    return "\n".join(lines)


class GatewayProc:
    """The gateway under test: same config, port and data dir across restarts."""

    def __init__(self, config_path: str, port: int, data_dir: str, log_path: str, cpu: int = GATEWAY_CPU) -> None:
        self.config_path, self.port, self.data_dir = config_path, port, data_dir
        self.log_path, self.cpu = log_path, cpu
        self.proc: Proc | None = None
        self.starts = 0

    def create_key(self, role: str) -> str:
        out = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--workspace", "default",
                              "--role", role, "--label", "loadtest", "-c", self.config_path,
                              "--data-dir", self.data_dir],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"gateway keys create failed: {out.stderr}")
        return out.stdout.strip().splitlines()[-1]

    def start(self, timeout_s: float = 60.0) -> None:
        log = open(self.log_path, "a")
        log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n")
        log.flush()
        p = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", self.config_path,
                              "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir,
                              "--log-level", "warning"],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinner(self.cpu))
        log.close()
        self.proc = Proc("gateway", p, self.port)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"gateway exited with {p.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.proc.kill9()
        raise RuntimeError(f"gateway not ready after {timeout_s:.0f} s; see {self.log_path}")

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
