"""Writes a run's report directory: report.json (everything), report.md (for people) and PNG plots
(throughput, latency percentiles over time, the status funnel with failures by reason).

It only turns the report dict into files; it must never measure or judge anything itself.
"""

from __future__ import annotations

import os

import orjson

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["write_report", "render_markdown"]

PLOTS = ("throughput.png", "latency.png", "funnel.png")


def write_report(out_dir: str, report: dict) -> list[str]:
    """Write every file the report has data for; returns the file names written."""
    os.makedirs(out_dir, exist_ok=True)
    written = ["report.json", "report.md"]
    with open(os.path.join(out_dir, "report.json"), "wb") as f:
        f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    if report.get("load", {}).get("per_second"):
        _plot_throughput(report, os.path.join(out_dir, "throughput.png"))
        _plot_latency(report, os.path.join(out_dir, "latency.png"))
        written += ["throughput.png", "latency.png"]
    if report.get("verdict"):
        _plot_funnel(report, os.path.join(out_dir, "funnel.png"))
        written.append("funnel.png")
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(render_markdown(report, [w for w in written if w.endswith(".png")]))
    return written


def _plot_throughput(report: dict, path: str) -> None:
    rows = report["load"]["per_second"]
    per_msg = report["load"]["messages_per_request"]
    secs = [r["second"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(secs, [r["offered"] for r in rows], label="offered (requests/s)", linestyle="--")
    ax.plot(secs, [r["answered"] for r in rows], label="answered (requests/s)")
    ax.plot(secs, [r["ok"] for r in rows], label="2xx by intended second")
    if any(r["errors"] for r in rows):
        ax.plot(secs, [r["errors"] for r in rows], label="errors", color="red")
    counters = report.get("gateway_counters") or []
    if per_msg > 1 or len(counters) > 1:
        ax2 = ax.twinx()
        if per_msg > 1:
            ax2.plot(secs, [r["messages_ok"] for r in rows], color="gray", alpha=0.5, label="messages accepted/s")
        if len(counters) > 1:
            times, rates = [], []
            for a, b in zip(counters, counters[1:]):
                if b["t"] > a["t"]:
                    times.append(b["t"])
                    rates.append(max(0.0, (b["delivered"] - a["delivered"]) / (b["t"] - a["t"])))
            ax2.plot(times, rates, color="purple", alpha=0.6, label="messages delivered/s (gateway /metrics)")
        ax2.set_ylabel("messages/s")
        ax2.legend(loc="lower right")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("requests/s")
    ax.set_title(f"{report['scenario']}: throughput")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_latency(report: dict, path: str) -> None:
    rows = [r for r in report["load"]["per_second"] if r.get("p50") is not None]
    fig, ax = plt.subplots(figsize=(9, 4))
    for key, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"), ("max", "max")):
        ax.plot([r["second"] for r in rows], [r[key] for r in rows], label=label)
    limit = report.get("peak", {}).get("p99_limit_ms")
    if limit:
        ax.axhline(limit, color="red", linestyle=":", label=f"p99 limit {limit} ms")
    if rows:
        ax.set_yscale("log")
    ax.set_xlabel("intended start, seconds into the run")
    ax.set_ylabel("latency from intended start, ms")
    ax.set_title(f"{report['scenario']}: latency percentiles per second")
    ax.legend(loc="upper left", ncol=3)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_funnel(report: dict, path: str) -> None:
    verdict = report["verdict"]
    funnel = verdict["funnel"]
    reasons = verdict.get("failed_reasons") or {}
    names = ["accepted", "sent", "delivered", "read", "failed"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    bars = ax.bar(names, [funnel.get(n, 0) for n in names], color=["#4878d0", "#6acc64", "#82c6e2", "#d5bb67", "#d65f5f"])
    for bar, n in zip(bars, names):
        ax.annotate(f"{funnel.get(n, 0):,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_title("status funnel")
    if reasons:
        ax2.barh(list(reasons), list(reasons.values()), color="#d65f5f")
        ax2.set_title("failed by reason")
    else:
        ax2.text(0.5, 0.5, "no failures", ha="center", va="center")
        ax2.set_axis_off()
    fig.suptitle(f"{report['scenario']}: lost {verdict['lost']}, duplicates {verdict['recorded_twice']}, "
                 f"rate breaks {verdict['sender_rate_breaks'] + verdict['pair_rate_breaks']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


SATURATED_CPU_PCT = 90.0  # a gateway whose core was this busy in a step had no CPU left for more
NEAR_CEILING = 0.8  # a step offering this share of the generator's ceiling may be the generator's limit


def stop_reason(step: dict | None, p99_limit_ms: float, ceiling_rps: float | None = None) -> str | None:
    """Why the ramp stopped at `step` (the first judged step that did not hold), and what its
    figures say about the limit: the gateway's core saturated, the commits slow with CPU to
    spare, delivery behind the accepts, or the generator near its own ceiling. None without one."""
    if step is None:
        return None

    def num(v) -> str:
        return _fmt(int(v)) if isinstance(v, float) and v.is_integer() else _fmt(v)

    failed = []
    if step.get("p99_ms") is None:
        failed.append("no answers")
    elif step["p99_ms"] > p99_limit_ms:
        failed.append(f"p99 {num(step['p99_ms'])} ms > {num(p99_limit_ms)} ms")
    if step.get("errors"):
        failed.append(f"{step['errors']:,} errors")
    if step.get("unanswered"):
        failed.append(f"{step['unanswered']:,} unanswered")
    said = [f"stopped at {num(step['offered_rps'])} req/s: " + (", ".join(failed) or "did not hold")]
    cpu, commit, sent = step.get("gateway_cpu_pct"), step.get("commit_ms"), step.get("sent_per_s")
    if cpu is not None:
        said.append(f"gateway CPU {num(cpu)} %" + (" (its core saturated)" if cpu >= SATURATED_CPU_PCT else ""))
    if commit is not None:
        said.append(f"commits of {num(commit)} ms")
    if step.get("loop_stalls"):
        said.append(f"{step['loop_stalls']:,} event-loop stalls over 10 ms")
    offered_msgs = step.get("offered_msgs_per_s", step["offered_rps"])
    if sent is not None and sent < 0.9 * offered_msgs:
        said.append(f"delivery behind ({num(sent)} msg/s sent)")
    if ceiling_rps and step["offered_rps"] >= NEAR_CEILING * ceiling_rps:
        said.append(f"near the generator's own ceiling ({num(ceiling_rps)} req/s)")
    return "; ".join(said)


def _loop_table(steps: list[dict]) -> list[str]:
    """Where the gateway's event loop spent each step (`loop_pct`: % of wall time by part of the
    gateway, and idle), the busiest parts first; nothing when no step has it (a gateway without
    those metrics)."""
    totals: dict[str, float] = {}
    for s in steps:
        for part, pct in (s.get("loop_pct") or {}).items():
            totals[part] = totals.get(part, 0.0) + pct
    if not totals:
        return []
    parts = sorted((p for p in totals if p != "idle"), key=lambda p: -totals[p]) + (["idle"] if "idle" in totals else [])
    out = ["Where the gateway's event loop spent each step (% of its wall time; parts under 0.5 % left out):", "",
           "| step | " + " | ".join(parts) + " |", "| --- | " + " | ".join("---" for _ in parts) + " |"]
    for s in steps:
        shares = s.get("loop_pct") or {}
        out.append(f"| {s['step']} | " + " | ".join(_fmt(shares.get(p)) for p in parts) + " |")
    out.append("")
    return out


def render_markdown(report: dict, plots: list[str]) -> str:
    ok = report.get("ok")
    out = [f"# {report['scenario']}{' (quick)' if report.get('quick') else ''}: {'PASS' if ok else 'FAIL'}", ""]
    if report.get("description"):
        out += [report["description"], ""]
    out += [f"- started: {report.get('started_at')}", f"- command: `{report.get('command')}`",
            f"- mode: {report.get('mode')}", f"- machine: {report.get('machine')}", ""]
    if report.get("error"):
        out += ["## The run did not complete", "", f"`{report['error']}`", ""]
    c = report.get("generator_ceiling")
    if c:
        out += ["## Generator ceiling (same run, no-op server)", "",
                f"{_fmt(c['requests_per_s'])} requests/s = {_fmt(c['messages_per_s'])} messages/s with "
                f"{c['request_shape']} over {c['connections']} connections (generator CPU {c['generator_cpu_pct']} %, "
                f"{_fmt(c.get('requests_per_cpu_s'))} requests per generator CPU-second). "
                "Figures below this are the gateway's, not the generator's.", ""]
    load = report.get("load")
    if load:
        lat = load["latency_ms"]
        out += ["## Load", "", "| figure | value |", "| --- | --- |"]
        for k, v in (("requests issued / answered", f"{_fmt(load['issued_requests'])} / {_fmt(load['answered'])}"),
                     ("duration", f"{load['duration_s']} s"),
                     ("requests/s", _fmt(load["requests_per_s"])),
                     ("accepted messages (msg/s)", f"{_fmt(load['accepted_messages'])} "
                                                   f"({_fmt(load['accepted_messages_per_s'])})"),
                     ("HTTP statuses", ", ".join(f"{s}: {n:,}" for s, n in load["statuses"].items())),
                     ("no answer", ", ".join(f"{s}: {n:,}" for s, n in load["failures"].items())),
                     ("latency from intended start (ms)", f"p50 {lat['p50']}, p90 {lat['p90']}, p99 {lat['p99']}, "
                                                          f"p99.9 {lat['p99_9']}, max {lat['max']}")):
            out.append(f"| {k} | {v} |")
        out.append("")
    peak = report.get("peak")
    if peak:
        why = stop_reason(peak.get("stopped_by"), peak["p99_limit_ms"],
                          (report.get("generator_ceiling") or {}).get("requests_per_s"))
        out += ["## Steps", "", f"Highest sustainable: **{_fmt(peak['sustainable_rps'])} requests/s = "
                f"{_fmt(peak['sustainable_msgs_per_s'])} messages/s** (p99 <= {peak['p99_limit_ms']} ms, no errors)."
                + (f" The ramp {why}." if why else ""), "",
                "| step | offered req/s | answered req/s | p99 ms | errors | unanswered | gateway CPU % | sent msg/s "
                "| commits/s | commit ms (mean) | loop stalls > 10 ms | passed |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in peak["steps"]:
            out.append(f"| {s['step']} | {_fmt(s['offered_rps'])} | {_fmt(s['answered_rps'])} | {_fmt(s['p99_ms'])} | "
                       f"{s['errors']} | {s['unanswered']} | {_fmt(s.get('gateway_cpu_pct'))} | "
                       f"{_fmt(s.get('sent_per_s'))} | {_fmt(s.get('commits_per_s'))} | {_fmt(s.get('commit_ms'))} | "
                       f"{_fmt(s.get('loop_stalls'))} | "
                       f"{'warm-up' if s.get('warmup') else 'yes' if s['passed'] else 'NO'} |")
        out.append("")
        out += _loop_table(peak["steps"])
    v = report.get("verdict")
    if v:
        out += ["## Completeness and rates", "", "| check | value |", "| --- | --- |"]
        for k, val in (("accepted", v["accepted"]), ("terminal", v["terminal"]), ("lost (accepted - terminal)", v["lost"]),
                       ("accepted but never at netsim", v["missing_at_netsim"]),
                       ("recorded twice at netsim", v["recorded_twice"]),
                       ("re-sends absorbed by netsim's id dedupe", v["netsim_resubmits"]),
                       ("at netsim without a 202 seen", v["netsim_extra"]),
                       ("sender token-bucket breaks", v["sender_rate_breaks"]),
                       ("recipient pair-limit breaks", v["pair_rate_breaks"]),
                       ("decrypted at netsim", "not checked" if v.get("decrypted") is None else v["decrypted"]),
                       ("decryption failures at netsim", v.get("decrypt_failures", 0)),
                       ("texts compared with what was sent / mismatched",
                        f"{_fmt(v.get('plaintext_checked', 0))} / {_fmt(v.get('plaintext_mismatches', 0))}"),
                       *((f"inbound {k}", n) for k, n in (v.get("inbound") or {}).items())):
            out.append(f"| {k} | {_fmt(val)} |")
        out += ["", "Funnel: " + " → ".join(f"{k} {_fmt(n)}" for k, n in v["funnel"].items()), ""]
        if v.get("failed_reasons"):
            out += ["Failed by reason: " + ", ".join(f"{k} {n:,}" for k, n in v["failed_reasons"].items()), ""]
        if v["violations"]:
            out += ["### VIOLATIONS", ""]
            out += [f"- **{x['kind']}**: {x['message']}" + (f" (e.g. {x['examples'][:3]})" if x["examples"] else "")
                    for x in v["violations"]]
            out.append("")
        if v["notes"]:
            out += ["Notes:", ""] + [f"- {n}" for n in v["notes"]] + [""]
    if report.get("events"):
        out += ["## Events", ""] + [f"- {e['at_s']} s: {e['event']} " + ", ".join(f"{k}={val}" for k, val in e.items()
                                                                               if k not in ("at_s", "event"))
                                    for e in report["events"]] + [""]
    if report.get("drain"):
        out += [f"Drain and read-back: {report['drain']['seconds']} s.", ""]
    if "link_cuts" in report:
        out += [f"The gateway-netsim link was cut {report['link_cuts']} times.", ""]
    for p in plots:
        out += [f"![{p}]({p})", ""]
    return "\n".join(out)
