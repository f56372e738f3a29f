"""Runs one scenario end to end: calibrate the generator, start netsim (+ proxy) and the gateway, drive
the load with its faults, drain, read every accepted message back, stop what it started, judge, report.

It is the I/O shell around the pure parts (schedule, workload, checks, latency, report); it owns the
processes and the clock. Every wait is bounded and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import tempfile
import time
import traceback
from urllib.parse import urlsplit

import msgspec
import numpy as np
import orjson
import trio

from gateway.http.client import HttpClient
from loadtest import latency as L
from loadtest import procs
from loadtest.checks import Limit, Violation, judge, judge_e2e
from loadtest.engine import LoadEngine
from loadtest.netsim.server import fetch_stats
from loadtest.progress import Progress, progress_line, summary_table
from loadtest.report import stop_reason, write_report
from loadtest.scenario import Scenario, load_scenario
from loadtest.schedule import constant, immediate
from loadtest.netsim.core import text_digest
from loadtest.workload import (Workload, ids_from_answers, inbound_customers, message_numbers, message_text,
                               sender_numbers, sender_tiers)

REPORTS = os.path.join(procs.ROOT, "loadtest", "reports")
_GRACE_US = 1_000_000  # peak-ramp judges a step this long after it ends
CEILING_RATE = 100_000.0


class Options(msgspec.Struct, kw_only=True):
    scenario: str
    quick: bool = False
    target: str | None = None            # URL of a running gateway (then nothing is started)
    api_key_file: str | None = None
    out_root: str = REPORTS
    ceiling_s: float | None = None       # generator calibration length (default: 2 s quick, 5 s full)
    keep_artifacts: bool = False         # keep the netsim record and data dir even when the run passes
    argv: list[str] = msgspec.field(default_factory=list)


def _now_ms() -> float:
    return time.time() * 1000.0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def commits_from_metrics(m: dict[str, float]) -> dict:
    """The gateway's group commits so far and the seconds they took (as its event loop saw them)."""
    return {"commits": m.get("gateway_store_commit_seconds_count", 0.0),
            "commit_s": m.get("gateway_store_commit_seconds_sum", 0.0)}


_LOOP_BUSY = 'gateway_loop_busy_seconds_total{task="'
_LOOP_STALLS = 'gateway_loop_long_batches_total{over="10ms"}'  # the gateway's own count of loop stalls


def loop_from_metrics(m: dict[str, float]) -> dict:
    """The gateway's event-loop seconds so far: `loop:<part>` per part of the gateway, `loop:idle`."""
    out = {"loop:" + name[len(_LOOP_BUSY):-2]: v for name, v in m.items() if name.startswith(_LOOP_BUSY)}
    if "gateway_loop_idle_seconds_total" in m:
        out["loop:idle"] = m["gateway_loop_idle_seconds_total"]
    if _LOOP_STALLS in m:
        out["stalls"] = m[_LOOP_STALLS]  # loop batches over 10 ms: what an answer to I/O waited at least
    return out


def loop_shares(series: list[dict], first: float, last: float) -> dict[str, float]:
    """Percent of the step's wall time the gateway's event loop spent in each part (and idle), from
    the counters sampled in it; parts under 0.5 % are left out."""
    keys = {k for sample in series if first - 0.5 <= sample["t"] <= last + 0.5 for k in sample
            if k.startswith("loop:")}
    shares = {}
    for key in sorted(keys):
        rate = counter_rate([sample for sample in series if key in sample], key, first, last, digits=6)
        if rate is not None and rate >= 0.005:
            shares[key[5:]] = round(100 * rate, 1)
    return shares


def loop_stalls(series: list[dict], first: float, last: float) -> int | None:
    """How many event-loop batches over 10 ms the gateway counted in the step (None without the counter)."""
    rate = counter_rate([sample for sample in series if "stalls" in sample], "stalls", first, last, digits=6)
    return None if rate is None else round(rate * (last - first))


def funnel_from_metrics(m: dict[str, float]) -> dict:
    return {"accepted": m.get("gateway_messages_accepted_total", 0.0),
            **{s: m.get(f'gateway_messages_status_total{{status="{s}"}}', 0.0)
               for s in ("sent", "delivered", "read", "failed")}}


# ------------------------------------------------------------------------------------------------
# the generator's own ceiling


def measure_ceiling(scn: Scenario, seconds: float) -> dict:
    """Drive the no-op responder (CPU 0) with this scenario's request shape as fast as it goes."""
    noop = procs.start_noop()
    try:
        work = Workload(scn, host="127.0.0.1", port=noop.port, api_key="calibration-key")
        engine = LoadEngine("127.0.0.1", noop.port, constant(CEILING_RATE, seconds + 1), work.request,
                            connections=scn.load.connections, keep=(b"202",), timeout_s=10)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                async def stopper() -> None:
                    await trio.sleep(seconds)
                    engine.stop()
                nursery.start_soon(stopper)
                await engine.run()

        cpu0 = time.process_time()
        trio.run(main)
        cpu = time.process_time() - cpu0
    finally:
        noop.stop(signal.SIGTERM)
    answered = sum(engine.done_by_sec[: int(seconds)])
    whole = max(1, int(seconds))
    return {
        "request_shape": f"{scn.load.send} ({scn.messages_per_request()} message(s) per request)",
        "connections": scn.load.connections,
        "offered_rps": CEILING_RATE,
        "seconds": round(engine.duration_s, 2),
        "requests_per_s": round(answered / whole),
        "messages_per_s": round(answered / whole * scn.messages_per_request()),
        "generator_cpu_pct": round(100 * cpu / max(engine.duration_s, 1e-9)),
        # on a shared machine the generator may not get its whole core: answers per CPU-second it used
        "requests_per_cpu_s": round(engine.completed / max(cpu, 1e-9)),
        "failures": dict(engine.failures),
    }


# ------------------------------------------------------------------------------------------------
# the environment: what the run started, or the gateway it was pointed at


class TargetError(Exception):
    """--target or --api-key-file cannot be used: said before anything runs."""


def open_target(target: str, api_key_file: str, timeout_s: float = 5.0) -> tuple[str, int, str]:
    """(host, port, API key) of an already running gateway, checked before a run spends anything
    on it: a loopback http URL, a readable non-empty key file, a gateway that answers /readyz and
    takes the key. TargetError says what is wrong."""
    import http.client

    parts = urlsplit(target)
    try:
        port = parts.port or 80
    except ValueError:
        raise TargetError(f"--target: not a usable URL: {target}") from None
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise TargetError(f"--target must be an http:// URL of a loopback address, got {target}")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        with open(api_key_file, encoding="utf-8") as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"--api-key-file {api_key_file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not key:
        raise TargetError(f"--api-key-file {api_key_file}: empty")
    for path, auth in (("/readyz", False), ("/v1/messages/00000000000000000000000000", True)):
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if auth else {})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            raise TargetError(f"--target {target}: no gateway answers there ({exc})") from None
        finally:
            conn.close()
        if status in (401, 403):
            raise TargetError(f"--api-key-file {api_key_file}: the gateway at {target} refuses that key ({status})")
        if not auth and status != 200:
            raise TargetError(f"--target {target}: /readyz answers {status}, not ready")
    return host, port, key


class Environment:
    def __init__(self, scn: Scenario, opts: Options, work_dir: str) -> None:
        self.scn, self.opts, self.work_dir = scn, opts, work_dir
        self.netsim: procs.Proc | None = None
        self.proxy: procs.Proc | None = None
        self.gateway: procs.GatewayProc | None = None
        self.record_path: str | None = None
        self.host, self.port = "127.0.0.1", 0
        self.api_key = self.admin_key = ""
        self.config_text = ""
        self.link_cuts: int | None = None

    @property
    def managed(self) -> bool:
        return self.opts.target is None

    def start(self) -> None:
        if not self.managed:
            self.host, self.port, key = open_target(self.opts.target, self.opts.api_key_file)
            self.api_key = self.admin_key = key
            return
        scn = self.scn
        self.record_path = os.path.join(self.work_dir, "netsim-record.jsonl")
        self.netsim = procs.start_netsim(scn, self.record_path)
        network_port = self.netsim.port
        if scn.faults.link_cut_every_s > 0:
            self.proxy = procs.start_proxy(self.netsim.port, scn.faults.link_cut_every_s, scn.faults.link_down_s)
            network_port = self.proxy.port
        self.port = procs.free_port()
        data_dir = os.path.join(self.work_dir, "var")
        self.config_text = procs.gateway_config(scn, listen_port=self.port, data_dir=data_dir,
                                                network_port=network_port)
        config_path = os.path.join(self.work_dir, "gateway.toml")
        with open(config_path, "w") as f:
            f.write(self.config_text)
        self.gateway = procs.GatewayProc(config_path, self.port, data_dir, os.path.join(self.work_dir, "gateway.log"))
        self.api_key = self.gateway.create_key("app")  # the load sends as an app, like an upstream would
        self.admin_key = self.gateway.create_key("admin")  # sender changes and the read-back
        self.gateway.start()

    def stop_netsim(self) -> None:
        if self.netsim is not None:
            self.netsim.stop(signal.SIGINT)

    def stop(self) -> None:
        for proc in (self.gateway, self.proxy):
            if proc is not None:
                proc.stop()
        self.stop_netsim()
        if self.proxy is not None and self.proxy.popen.stdout is not None:
            self.link_cuts = sum(1 for line in self.proxy.popen.stdout.read().splitlines() if "cut" in line)

    def initial_limits(self) -> dict[str, list[Limit]]:
        scn = self.scn
        out = {}
        for number, tier in zip(sender_numbers(scn.senders.count), sender_tiers(scn)):
            t = scn.gateway.tiers[tier]
            out[number] = [Limit(-1e18, t.rate_per_minute, t.burst)]
        return out


# ------------------------------------------------------------------------------------------------
# driving the load


def cpu_share(cpu_at: dict[int, tuple[int, float] | None], first: int, last: int) -> float | None:
    """Percent of one core the gateway used from second `first` to `last` of the run, from samples
    of (pid, CPU seconds so far); None unless both ends were read from the same process."""
    a, b = cpu_at.get(first), cpu_at.get(last)
    if a is None or b is None or a[0] != b[0] or last <= first:
        return None
    return round(100 * (b[1] - a[1]) / (last - first), 1)


def counter_rate(series: list[dict], key: str, first: float, last: float, digits: int = 1) -> float | None:
    """Per-second rate of one of the gateway's counters from second `first` to `last` of the run,
    from the samples (`t` and the counters) taken in it; None with fewer than two a second apart,
    or across a restart (the counter went back)."""
    inside = [s for s in series if first - 0.5 <= s["t"] <= last + 0.5]
    if len(inside) < 2 or inside[-1]["t"] - inside[0]["t"] < 1.0:
        return None
    a, b = inside[0], inside[-1]
    if b[key] < a[key]:
        return None
    return round((b[key] - a[key]) / (b["t"] - a["t"]), digits)


def mean_commit_ms(series: list[dict], first: float, last: float) -> float | None:
    """The gateway's mean group-commit time in ms from second `first` to `last` of the run (the
    wait every 202 has in it), from the same samples as `counter_rate`; None without a commit."""
    commits = counter_rate(series, "commits", first, last, digits=6)
    seconds = counter_rate(series, "commit_s", first, last, digits=6)  # (to 0.1 s/s, 1 ms commits read 0 or 2 ms)
    if not commits or seconds is None:
        return None
    return round(1000 * seconds / commits, 2)


class Drive:
    """State shared by the trio tasks of one load phase."""

    def __init__(self, scn: Scenario, env: Environment, progress: Progress) -> None:
        self.scn, self.env, self.progress = scn, env, progress
        self.work = Workload(scn, host=env.host, port=env.port, api_key=env.api_key)
        self.schedule = scn.schedule()
        self.engine = LoadEngine(env.host, env.port, self.schedule, self.work.request,
                                 connections=scn.load.connections, keep=(b"202",), timeout_s=scn.load.timeout_s)
        self.client = HttpClient(max_connections_per_host=2)
        self.base = f"http://{env.host}:{env.port}"
        self.limits = env.initial_limits() if env.managed else None
        self.events: list[dict] = []
        self.steps: list[dict] = []
        self.funnel: dict | None = None
        self.funnel_series: list[dict] = []  # the gateway's /metrics counters, sampled every second
        # The gateway's CPU seconds used so far, at whole seconds of run time (managed runs only;
        # None where unreadable or where the process was restarted since the second before).
        self.cpu_at: dict[int, tuple[int, float] | None] = {}

    def note(self, what: str, **details) -> None:
        at = round(self.engine.elapsed(), 3)
        self.events.append({"at_s": at, "event": what, **details})
        self.progress.say(f"[{at:7.2f}s] {what} {' '.join(f'{k}={v}' for k, v in details.items())}")

    async def sleep_until_run_time(self, at_s: float) -> None:
        while not self.engine.t0:
            await trio.sleep(0.01)
        await trio.sleep(max(0.0, at_s - self.engine.elapsed()))

    async def admin(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        resp = await self.client.request(method, self.base + path,
                                         headers=[("Authorization", f"Bearer {self.env.admin_key}"),
                                                  ("Content-Type", "application/json")],
                                         body=orjson.dumps(body) if body is not None else b"", timeout_s=10)
        return resp.status, (orjson.loads(resp.body) if resp.body else {})

    # -- tasks --------------------------------------------------------------------------------

    async def show_progress(self) -> None:
        engine = self.engine
        last_done, last_t = 0, 0.0
        while True:
            await trio.sleep(1.0)
            try:
                resp = await self.client.request("GET", self.base + "/metrics", timeout_s=1.0)
                metrics = parse_metrics(resp.body.decode())
                self.funnel = funnel_from_metrics(metrics)
                self.funnel_series.append({"t": round(engine.elapsed(), 2), **self.funnel,
                                           **commits_from_metrics(metrics), **loop_from_metrics(metrics)})
            except Exception:  # noqa: BLE001 - the display must never end the run (e.g. mid-crash)
                pass
            t = engine.elapsed()
            done = engine.completed
            rate = (done - last_done) / max(1e-9, t - last_t)
            last_done, last_t = done, t
            sec = int(t) - 1
            p99 = None
            if 0 <= sec < len(engine.latency_us) and len(engine.latency_us[sec]):
                p99 = float(np.percentile(np.frombuffer(engine.latency_us[sec], dtype=np.int64), 99)) / 1000
            errors = sum(engine.statuses.get(s, 0) for s in engine.statuses if s[0] != 50)
            errors += sum(engine.failures.values())
            line = progress_line(elapsed_s=t, offered_rps=self.schedule.rate_at(t), done_rps=rate, p99_ms=p99,
                                 in_flight=engine.inflight, errors=errors, funnel=self.funnel)
            self.progress.show(line, t)

    async def crash_and_restart(self) -> None:
        faults = self.scn.faults
        await self.sleep_until_run_time(faults.crash_at_s)
        gw = self.env.gateway
        await trio.to_thread.run_sync(gw.kill9)
        self.note("gateway killed (SIGKILL)")
        await trio.sleep(faults.restart_after_s)
        t0 = time.monotonic()
        await trio.to_thread.run_sync(gw.start)
        self.note("gateway restarted and ready", took_s=round(time.monotonic() - t0, 2))

    async def drop_sender(self) -> None:
        drop = self.scn.faults.sender_drop
        number = sender_numbers(self.scn.senders.count)[drop.sender_index]
        await self.sleep_until_run_time(drop.at_s)
        tier = self.scn.gateway.tiers[drop.tier]
        status, body = await self.admin("PATCH", f"/admin/v1/senders/{number}", {"tier": drop.tier})
        answered = _now_ms()
        if status != 200:
            raise RuntimeError(f"PATCH sender {number} answered {status}: {body}")
        # a lower limit binds from when the gateway confirmed it (the later, kinder time), plus a grace
        # for sends it had already handed to the link
        if self.limits is not None:
            grace = self.scn.checks.limit_change_grace_ms
            self.limits[number].append(Limit(answered + grace, tier.rate_per_minute, tier.burst))
        self.note("sender dropped", sender=number, tier=drop.tier, rate_per_minute=tier.rate_per_minute)
        if drop.restore_at_s is None:
            return
        await self.sleep_until_run_time(drop.restore_at_s)
        asked = _now_ms()
        status, body = await self.admin("PATCH", f"/admin/v1/senders/{number}", {"reset": True})
        if status != 200:
            raise RuntimeError(f"PATCH sender {number} reset answered {status}: {body}")
        if self.limits is not None:
            original = self.limits[number][0]
            # a higher limit counts from when it was asked for (the earlier, kinder time)
            self.limits[number].append(Limit(asked, original.rate_per_minute, original.burst))
        self.note("sender restored", sender=number, rate_per_minute=body.get("rate_per_minute"))

    def gateway_cpu(self) -> tuple[int, float] | None:
        gw = self.env.gateway
        if not self.env.managed or gw is None or gw.proc is None:
            return None
        pid = gw.proc.popen.pid
        used = procs.cpu_seconds(pid)
        return None if used is None else (pid, used)

    async def sample_cpu(self) -> None:
        """The gateway's CPU time at each whole second of run time, for the share of its core each
        step used: a knee where the core is full is the gateway's CPU, not its waiting."""
        second = 0
        while True:
            await self.sleep_until_run_time(second)
            self.cpu_at[second] = self.gateway_cpu()
            second += 1

    async def control_steps(self) -> None:
        """peak-ramp: judge each step a moment after it ends; stop at the first one that fails."""
        async with trio.open_nursery() as nursery:
            if self.env.managed:
                nursery.start_soon(self.sample_cpu)
            await self.judge_steps()
            nursery.cancel_scope.cancel()

    async def judge_steps(self) -> None:
        load, engine = self.scn.load, self.engine
        step = max(1, round(load.step_s))
        limit_ms = self.scn.checks.p99_ms
        per_msg = self.scn.messages_per_request()
        for i, rate in enumerate(load.step_rates):
            first, last = i * step, (i + 1) * step
            await self.sleep_until_run_time(last + _GRACE_US / 1e6)
            expected = self.schedule.count_until(last - 1e-9) - self.schedule.count_until(first - 1e-9)
            samples = np.concatenate([np.frombuffer(a, dtype=np.int64) for a in engine.latency_us[first:last]]) \
                if last <= len(engine.latency_us) else np.array([], dtype=np.int64)
            errors = sum(engine.err_by_sec[first:last])
            # still unanswered a second after the step: each of them is at least that late
            missing = max(0, expected - len(samples) - errors)
            ranked = np.concatenate([samples, np.full(missing, _GRACE_US, dtype=np.int64)])
            p99 = float(np.percentile(ranked, 99)) / 1000 if ranked.size else None
            answered = sum(engine.done_by_sec[first:last])
            ok = errors == 0 and missing == 0 and p99 is not None and p99 <= limit_ms
            warmup = i < load.warmup_steps
            row = {"step": i, "warmup": warmup, "offered_rps": rate, "offered_msgs_per_s": rate * per_msg,
                   "answered_rps": round(answered / step, 1), "p99_ms": None if p99 is None else round(p99, 3),
                   "errors": errors, "unanswered": missing, "passed": ok,
                   "gateway_cpu_pct": cpu_share(self.cpu_at, first, last),
                   # whether delivery kept up: a step whose accepts hold while this falls behind
                   # is bought with a backlog
                   "sent_per_s": counter_rate(self.funnel_series, "sent", first, last),
                   # the store's share of each answer's wait, and how often it commits
                   "commits_per_s": counter_rate(self.funnel_series, "commits", first, last),
                   "commit_ms": mean_commit_ms(self.funnel_series, first, last),
                   # where the gateway's event loop spent the step (% of wall time, by part)
                   "loop_pct": loop_shares(self.funnel_series, first, last),
                   # the gateway's event-loop batches over 10 ms in the step (each delayed every answer due then)
                   "loop_stalls": loop_stalls(self.funnel_series, first, last)}
            self.steps.append(row)
            self.note("step", **{k: row[k] for k in ("step", "offered_rps", "answered_rps", "p99_ms", "errors",
                                                      "gateway_cpu_pct", "sent_per_s", "commits_per_s",
                                                      "commit_ms", "passed")})
            if not ok and not warmup:
                engine.stop()
                return

    async def run(self) -> None:
        scn = self.scn
        async with trio.open_nursery() as faults:
            if scn.faults.crash_at_s > 0 and self.env.managed:
                faults.start_soon(self.crash_and_restart)
            elif not self.env.managed and (scn.faults.crash_at_s > 0 or scn.faults.link_cut_every_s > 0):
                self.note("faults skipped: the run did not start the gateway or the link")
            if scn.faults.sender_drop is not None:
                faults.start_soon(self.drop_sender)
            if scn.load.profile == "step" and scn.load.find_peak:
                faults.start_soon(self.control_steps)  # judges the last step after the load ends, too
            async with trio.open_nursery() as helpers:
                helpers.start_soon(self.show_progress)
                await self.engine.run()
                helpers.cancel_scope.cancel()
        await self.client.aclose()


# ------------------------------------------------------------------------------------------------
# drain and read back


async def wait_for_netsim(env: Environment, accepted: int, timeout_s: float, inbound: int = 0) -> dict:
    """Until netsim holds every accepted message and has no receipt pending or unacknowledged, and its
    customers have sent their `inbound` messages and seen each acknowledged."""
    deadline = trio.current_time() + timeout_s
    stats: dict = {}
    while trio.current_time() < deadline:
        try:
            stats = await fetch_stats("127.0.0.1", env.netsim.port)
        except (OSError, trio.TooSlowError, ConnectionError):
            await trio.sleep(0.5)
            continue
        inbound_done = stats.get("inbound_sent", 0) + stats.get("inbound_skipped", 0) >= inbound \
            and not stats.get("inbound_unacked")
        if stats.get("unique", 0) >= accepted and not stats.get("pending_receipts") \
                and not stats.get("unacked_receipts") and inbound_done:
            return stats
        await trio.sleep(0.5)
    return stats


def _get_requests(env: Environment, ids: list[str]):
    head = f"Host: {env.host}:{env.port}\r\nAuthorization: Bearer {env.admin_key}\r\n\r\n".encode()

    def request(k: int) -> bytes:
        return b"GET /v1/messages/%s HTTP/1.1\r\n%s" % (ids[k].encode(), head)
    return request


async def sweep(env: Environment, ids: list[str], connections: int = 16) -> dict[str, dict | None]:
    """GET every id (closed loop, as fast as the gateway answers); 404 → None, other failures left out."""
    engine = LoadEngine(env.host, env.port, immediate(len(ids)), _get_requests(env, ids),
                        connections=connections, keep=(b"200", b"404"), timeout_s=30)
    await engine.run()
    views: dict[str, dict | None] = {}
    for seq, status, body in engine.kept:
        views[ids[seq]] = orjson.loads(body) if status == b"200" else None
    return views


async def read_back(env: Environment, ids: list[str], timeout_s: float) -> tuple[dict, float]:
    """Sweep until every id is terminal or the time is up; returns the last view of each and the time taken."""
    t0 = trio.current_time()
    views: dict[str, dict | None] = {}
    todo = ids
    while True:
        got = await sweep(env, todo)
        views.update(got)
        todo = [m for m in todo if (views.get(m) or {}).get("status") not in ("delivered", "read", "failed")]
        if not todo or trio.current_time() - t0 > timeout_s:
            return views, trio.current_time() - t0
        await trio.sleep(1.0)


def read_record(path: str | None) -> list[dict] | None:
    if path is None or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------
# the whole run


def _machine() -> dict:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "gateway_cpu": procs.GATEWAY_CPU, "load_cpu": procs.LOAD_CPU,
            "note": "load side (generator, netsim, proxy) pinned to the load CPU, gateway to its own CPU"}


def _per_second(engine: LoadEngine, schedule, per_msg: int) -> list[dict]:
    rows = []
    lat = {r["second"]: r for r in L.per_second(engine.latency_us)}
    def issued_by(t: float) -> int:  # requests started by time t (a stopped ramp issues no more)
        return min(engine.issued, schedule.count_until(t - 1e-9)) if t > 0 else 0

    for sec in range(len(engine.done_by_sec)):
        offered = issued_by(sec + 1) - issued_by(sec)
        row = {"second": sec, "offered": offered, "answered": engine.done_by_sec[sec],
               "ok": engine.ok_by_sec[sec], "errors": engine.err_by_sec[sec],
               "messages_ok": engine.ok_by_sec[sec] * per_msg}
        if sec in lat:
            row.update({k: lat[sec][k] for k in ("p50", "p90", "p99", "p99_9", "max")})
        if offered or row["answered"] or row["errors"]:
            rows.append(row)
    return rows


class Collected(msgspec.Struct):
    """What the load and drain phases produced, for judging."""

    drive: Drive
    accepted: list[str]
    batch_rejected: int
    views: dict
    netsim_stats: dict | None
    drain_s: float
    read_back_s: float
    gateway_inbound: dict | None = None  # the gateway's gateway_inbound_total by outcome, after the drain


async def gateway_inbound_counters(env: Environment) -> dict[str, float] | None:
    """The gateway's inbound counters by outcome (None when they cannot be read, or a restart reset them)."""
    if env.gateway is not None and env.gateway.starts > 1:
        return None
    client = HttpClient(max_connections_per_host=1)
    try:
        resp = await client.request("GET", f"http://{env.host}:{env.port}/metrics", timeout_s=10)
    except (OSError, trio.TooSlowError, ConnectionError):
        return None
    finally:
        await client.aclose()
    prefix = 'gateway_inbound_total{outcome="'
    return {name[len(prefix):-2]: value for name, value in parse_metrics(resp.body.decode()).items()
            if name.startswith(prefix)}


def collect(scn: Scenario, env: Environment, progress: Progress) -> Collected:
    """Drive the load, drain, read every accepted id back (the environment is already started)."""
    drive = Drive(scn, env, progress)
    trio.run(drive.run)
    engine = drive.engine
    accepted, batch_rejected = ids_from_answers(engine.kept)
    progress.say(f"load done: {engine.issued:,} requests in {engine.duration_s:.1f} s, "
                 f"{len(accepted):,} messages accepted; draining")
    t_drain = time.monotonic()
    netsim_stats = None
    if env.managed:
        trio.run(wait_for_netsim, env, len(accepted), scn.checks.drain_timeout_s, inbound_customers(scn)[2])
    left = max(5.0, scn.checks.drain_timeout_s - (time.monotonic() - t_drain))
    views, read_back_s = trio.run(read_back, env, accepted, left)
    drain_s = time.monotonic() - t_drain
    gateway_inbound = None
    if env.managed:
        netsim_stats = trio.run(fetch_stats, "127.0.0.1", env.netsim.port)
        gateway_inbound = trio.run(gateway_inbound_counters, env)
    return Collected(drive, accepted, batch_rejected, views, netsim_stats, drain_s, read_back_s, gateway_inbound)


def verdict_of(scn: Scenario, env: Environment, got: Collected):
    engine = got.drive.engine
    per_msg = scn.messages_per_request()
    pair = Limit(0, scn.gateway.pair_rate_per_minute, scn.gateway.pair_burst) if env.managed else None
    record = read_record(env.record_path)
    verdict = judge(accepted=got.accepted, views=got.views, record=record,
                    netsim_stats=got.netsim_stats, sender_limits=got.drive.limits, pair_limit=pair,
                    tolerance_ms=scn.checks.rate_tolerance_ms,
                    unknown_outcome_messages=len(engine.unknown_seqs) * per_msg,
                    allow_resubmits=scn.checks.allow_resubmits)
    digests = {msg_id: text_digest(message_text(n)) for msg_id, n in message_numbers(engine.kept, per_msg).items()}
    judge_e2e(verdict, record=record, netsim_stats=got.netsim_stats, expected_digests=digests,
              inbound_expected=inbound_customers(scn)[2] if env.managed else 0, gateway_inbound=got.gateway_inbound)
    offered = engine.issued * per_msg
    faulty = scn.faults.crash_at_s > 0 or scn.faults.link_cut_every_s > 0
    if not scn.load.find_peak and not faulty and offered and len(got.accepted) < scn.checks.min_accepted_share * offered:
        verdict.violations.append(Violation("not_accepted", f"only {len(got.accepted):,} of {offered:,} "
                                            "offered messages were accepted"))
    return verdict


def load_section(scn: Scenario, got: Collected) -> dict:
    engine, per_msg = got.drive.engine, scn.messages_per_request()
    dur = max(engine.duration_s, 1e-9)
    return {
        "profile": scn.load.profile, "send": scn.load.send, "messages_per_request": per_msg,
        "connections": scn.load.connections, "offered_requests": scn.schedule().total,
        "issued_requests": engine.issued, "answered": engine.completed, "duration_s": round(dur, 2),
        "requests_per_s": round(engine.completed / dur, 1),
        "accepted_messages": len(got.accepted), "accepted_messages_per_s": round(len(got.accepted) / dur, 1),
        "rejected_in_batches": got.batch_rejected,
        "statuses": {k.decode(): v for k, v in sorted(engine.statuses.items())},
        "failures": dict(engine.failures), "unknown_outcome_requests": len(engine.unknown_seqs),
        "latency_ms": L.summary(L.combined(engine.latency_us)),
        "per_second": _per_second(engine, got.drive.schedule, per_msg),
    }


def peak_section(scn: Scenario, steps: list[dict], verdict) -> dict:
    """The highest judged step that held; a violation when that is below the scenario's floor."""
    passed = [s for s in steps if s["passed"] and not s["warmup"]]
    best = passed[-1] if passed else None
    floor = scn.checks.min_sustainable_rps
    if floor and (best["offered_rps"] if best else 0) < floor:
        verdict.violations.append(Violation(
            "peak_below_floor", f"no step at or above {floor:,.0f} requests/s held p99 <= {scn.checks.p99_ms} ms "
                                f"without errors (best: {best['offered_rps'] if best else 0:,.0f})"))
    return {"steps": steps, "p99_limit_ms": scn.checks.p99_ms,
            "sustainable_rps": best["offered_rps"] if best else None,
            "sustainable_msgs_per_s": best["offered_msgs_per_s"] if best else None,
            "stopped_by": next((s for s in steps if not s["passed"] and not s["warmup"]), None)}


def _keep_artifacts(work_dir: str, out_dir: str, names: tuple[str, ...]) -> None:
    for name in names:
        src = os.path.join(work_dir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(out_dir, name))


def run(opts: Options) -> int:
    scn = load_scenario(opts.scenario, quick=opts.quick)
    procs.pin_self(procs.LOAD_CPU)
    progress = Progress()
    label = scn.name + ("-quick" if scn.quick else "")
    out_dir = os.path.join(opts.out_root, f"{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=f"loadtest-{label}-")
    report: dict = {"scenario": scn.name, "quick": scn.quick, "description": scn.description,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": "python -m loadtest " + " ".join(opts.argv),
                    "machine": _machine(), "mode": "managed" if opts.target is None else "target",
                    "settings": msgspec.to_builtins(scn)}
    progress.say(f"== {label}: {scn.description}")
    ceiling = measure_ceiling(scn, opts.ceiling_s if opts.ceiling_s is not None else (2.0 if scn.quick else 5.0))
    report["generator_ceiling"] = ceiling
    progress.say(f"generator ceiling against a no-op server: {ceiling['requests_per_s']:,} requests/s "
                 f"({ceiling['messages_per_s']:,} messages/s, {ceiling['request_shape']})")
    env = Environment(scn, opts, work_dir)
    try:
        try:
            env.start()
            if env.managed:
                report["affinity"] = {"gateway": sorted(os.sched_getaffinity(env.gateway.proc.popen.pid)),
                                      "netsim": sorted(os.sched_getaffinity(env.netsim.popen.pid)),
                                      "generator": sorted(os.sched_getaffinity(0))}
                progress.say(f"netsim :{env.netsim.port}{f', proxy :{env.proxy.port}' if env.proxy else ''}, "
                             f"gateway :{env.port} (data in {work_dir})")
            got = collect(scn, env, progress)
        finally:
            env.stop()  # whatever happened, nothing this run started outlives it
    except Exception as exc:  # noqa: BLE001 - the report must still say what happened
        report.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        progress.say(f"RUN FAILED: {report['error']}\n{traceback.format_exc()}")
        _keep_artifacts(work_dir, out_dir, ("netsim-record.jsonl", "gateway.log", "gateway.toml"))
        write_report(out_dir, report)
        shutil.rmtree(work_dir, ignore_errors=True)
        progress.say(f"report: {out_dir}")
        return 2
    verdict = verdict_of(scn, env, got)
    report["load"] = load_section(scn, got)
    if got.drive.steps:
        report["peak"] = peak_section(scn, got.drive.steps, verdict)
    report["drain"] = {"seconds": round(got.drain_s, 2), "read_back_s": round(got.read_back_s, 2)}
    report["events"] = got.drive.events
    report["gateway_counters"] = got.drive.funnel_series
    if got.drive.limits is not None:  # the limits the rate check applied, where they changed mid-run
        report["limit_changes"] = {n: [list(lim) for lim in lims] for n, lims in got.drive.limits.items()
                                   if len(lims) > 1}
    if env.link_cuts is not None:
        report["link_cuts"] = env.link_cuts
    report["netsim"] = got.netsim_stats
    report["verdict"] = msgspec.to_builtins(verdict)
    report["ok"] = not verdict.violations
    failed_or_kept = not report["ok"] or opts.keep_artifacts
    _keep_artifacts(work_dir, out_dir, ("netsim-record.jsonl", "gateway.log", "gateway.toml") if failed_or_kept
                    else ("gateway.log",))
    write_report(out_dir, report)
    if not opts.keep_artifacts:
        shutil.rmtree(work_dir, ignore_errors=True)
    progress.say(summary_table(_summary_rows(report)))
    _say_notes(progress, verdict.notes)
    if report["ok"]:
        progress.say(f"PASS  {label}   report: {out_dir}")
        return 0
    progress.say(f"FAIL  {label}   report: {out_dir}")
    for v in verdict.violations:
        progress.say(f"  VIOLATION [{v.kind}] {v.message}" + (f"  e.g. {v.examples[:3]}" if v.examples else ""))
    return 1


def _say_notes(progress: Progress, notes: list[str]) -> None:
    for note in notes:
        progress.say(f"  note: {note}")


def _summary_rows(report: dict) -> list[tuple[str, str]]:
    load, v, c = report["load"], report["verdict"], report["generator_ceiling"]
    lat = load["latency_ms"]
    rows = [
        ("scenario", f"{report['scenario']}{' (quick)' if report['quick'] else ''}"),
        ("generator ceiling (no-op)", f"{c['requests_per_s']:,} req/s  ({c['messages_per_s']:,} msg/s; "
                                      f"{c['requests_per_cpu_s']:,} req per generator CPU-s, {c['generator_cpu_pct']}% CPU)"),
        ("requests", f"{load['issued_requests']:,} issued, {load['answered']:,} answered in {load['duration_s']} s "
                     f"({load['requests_per_s']:,} req/s)"),
        ("accepted messages", f"{load['accepted_messages']:,} ({load['accepted_messages_per_s']:,} msg/s)"),
        ("latency ms", f"p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  p99.9 {lat['p99_9']}  max {lat['max']}"),
        ("statuses", " ".join(f"{k}:{n}" for k, n in load["statuses"].items()) or "-"),
        ("failures", " ".join(f"{k}:{n}" for k, n in load["failures"].items() if n) or "none"),
        ("funnel", " → ".join(f"{k} {n:,}" for k, n in v["funnel"].items() if k != "failed")
         + f"; failed {v['funnel']['failed']:,} {v['failed_reasons'] or ''}"),
        ("lost / missing at netsim", f"{v['lost']} / {v['missing_at_netsim']}"),
        ("duplicates (recorded twice)", f"{v['recorded_twice']}  (re-sends absorbed by id: {v['netsim_resubmits']})"),
        ("rate breaks sender / pair", f"{v['sender_rate_breaks']} / {v['pair_rate_breaks']}"),
        ("end-to-end encryption", "not checked (netsim did not decrypt)" if v["decrypted"] is None else
         f"{v['decrypted']:,} decrypted at netsim, {v['decrypt_failures']} failures; text intact "
         f"{v['plaintext_checked'] - v['plaintext_mismatches']:,} of {v['plaintext_checked']:,}"),
        ("drain", f"{report['drain']['seconds']} s"),
    ]
    if v["inbound"]:
        i = v["inbound"]
        rows.append(("customers' messages (inbound)", f"{i['sent']:,} sent by netsim, {i['received']:,} read by the "
                                                      f"gateway, {i['undecryptable']} undecryptable, {i['unacked']} "
                                                      "unacknowledged"))
    if "link_cuts" in report:
        rows.append(("link cuts (proxy)", str(report["link_cuts"])))
    if "peak" in report:
        p = report["peak"]
        rows.append(("highest sustainable", f"{p['sustainable_rps']} req/s = {p['sustainable_msgs_per_s']} msg/s "
                                            f"(p99 <= {p['p99_limit_ms']} ms, no errors)"))
        why = stop_reason(p.get("stopped_by"), p["p99_limit_ms"], c.get("requests_per_s"))
        if why:
            rows.append(("why the ramp stopped", why))
    return rows
