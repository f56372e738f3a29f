"""The verdict of a run: nothing accepted was lost, nothing was taken twice, no rate was exceeded.

Pure functions over what the run collected (accepted ids, the gateway's final view of each, netsim's
record and counters, the limits in force); no I/O and no clock. Each problem becomes a Violation with
a plain sentence, so a failing run says exactly what broke.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable, NamedTuple

import msgspec

__all__ = ["Limit", "Violation", "Verdict", "bucket_breaks", "judge", "judge_e2e", "TERMINAL"]

TERMINAL = frozenset({"delivered", "read", "failed"})
_EPS = 1e-9


class Limit(NamedTuple):
    """A token bucket in force from `from_ms` on (rate in messages per minute, burst = capacity)."""

    from_ms: float
    rate_per_minute: float
    burst: float


class Violation(msgspec.Struct):
    kind: str
    message: str
    count: int = 1
    examples: list = msgspec.field(default_factory=list)


class Verdict(msgspec.Struct):
    accepted: int
    terminal: int
    lost: int
    missing_at_netsim: int
    recorded_twice: int
    netsim_resubmits: int
    netsim_extra: int
    sender_rate_breaks: int
    pair_rate_breaks: int
    funnel: dict
    failed_reasons: dict
    violations: list[Violation]
    notes: list[str]
    decrypted: int | None = None        # messages netsim decrypted (None: it took payloads as opaque bytes)
    decrypt_failures: int = 0
    plaintext_checked: int = 0          # recorded messages whose decrypted text was compared with what was sent
    plaintext_mismatches: int = 0
    inbound: dict = msgspec.field(default_factory=dict)  # customers' messages: sent by netsim, read by the gateway

    @property
    def ok(self) -> bool:
        return not self.violations


def bucket_breaks(times_ms: Iterable[float], limits: list[Limit],
                  tolerance_ms: float = 0.0) -> list[tuple[int, float, float]]:
    """Sends (index, at_ms, early_ms) that a token bucket could not have allowed; early_ms is how much
    sooner than its bucket allowed the send came (beyond the tolerance).

    The bucket is assumed full at the first send (the most it can be), so a schedule the gateway
    really allowed never breaks it. `tolerance_ms` forgives sends that arrive up to that much early
    relative to each other (transport jitter): it adds rate x tolerance to the capacity. When the
    limit changes, tokens are settled at the old rate up to the change and clamped to the new capacity.
    """
    limits = sorted(limits)
    out: list[tuple[int, float, float]] = []
    tokens = math.nan
    last = 0.0
    li = 0
    rate = cap = 0.0

    def cap_of(limit: Limit) -> tuple[float, float]:
        per_ms = limit.rate_per_minute / 60_000.0
        return per_ms, limit.burst + per_ms * tolerance_ms

    for i, t in enumerate(times_ms):
        if math.isnan(tokens):
            while li + 1 < len(limits) and limits[li + 1].from_ms <= t:
                li += 1
            rate, cap = cap_of(limits[li])
            tokens, last = cap, t
        while li + 1 < len(limits) and limits[li + 1].from_ms <= t:
            change = limits[li + 1]
            at = max(change.from_ms, last)
            tokens = min(cap, tokens + (at - last) * rate)
            last = at
            li += 1
            rate, cap = cap_of(limits[li])
            tokens = min(tokens, cap)
        tokens = min(cap, tokens + max(0.0, t - last) * rate)
        last = max(last, t)
        if tokens < 1.0 - _EPS:
            out.append((i, t, (1.0 - tokens) / rate if rate > 0 else math.inf))
            tokens = 0.0
        else:
            tokens -= 1.0
    return out


def max_in_window(times_ms: list[float], window_ms: float = 1000.0) -> int:
    """The most sends inside any window of `window_ms` (times sorted)."""
    best = lo = 0
    for hi, t in enumerate(times_ms):
        while t - times_ms[lo] >= window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _funnel(views: dict[str, dict | None], accepted: list[str]) -> tuple[dict, dict, list[str]]:
    funnel = {"accepted": len(accepted), "sent": 0, "delivered": 0, "read": 0, "failed": 0}
    reasons: Counter = Counter()
    not_terminal: list[str] = []
    for msg_id in accepted:
        view = views.get(msg_id)
        if view is None:
            not_terminal.append(msg_id)
            continue
        status = view.get("status")
        seen = {e.get("status") for e in view.get("timeline", ())}
        seen.add(status)
        if seen & {"sent", "delivered", "read"}:
            funnel["sent"] += 1
        if seen & {"delivered", "read"}:
            funnel["delivered"] += 1
        if "read" in seen:
            funnel["read"] += 1
        if status == "failed":
            funnel["failed"] += 1
            reasons[view.get("reason") or "unknown"] += 1
        if status not in TERMINAL:
            not_terminal.append(msg_id)
    return funnel, dict(reasons), not_terminal


def judge(*, accepted: list[str], views: dict[str, dict | None], record: list[dict] | None,
          netsim_stats: dict | None, sender_limits: dict[str, list[Limit]] | None,
          pair_limit: Limit | None, tolerance_ms: float, unknown_outcome_messages: int,
          allow_resubmits: bool) -> Verdict:
    """Every check over one run. `record`/`netsim_stats`/`sender_limits` may be None when the run had
    no netsim of its own; those checks are then named as skipped in `notes`, never passed silently."""
    violations: list[Violation] = []
    notes: list[str] = []
    accepted_set = set(accepted)
    if len(accepted_set) != len(accepted):
        dup = [m for m, n in Counter(accepted).items() if n > 1]
        violations.append(Violation("duplicate_accept_id", f"the gateway handed out {len(dup)} ids twice",
                                    len(dup), dup[:5]))
    funnel, reasons, not_terminal = _funnel(views, accepted)
    lost = len(not_terminal)
    if lost:
        missing = [m for m in not_terminal if views.get(m) is None]
        violations.append(Violation(
            "lost", f"{lost} accepted messages had not reached a terminal status when the drain ended "
                    f"({len(missing)} unknown to the gateway)", lost, not_terminal[:5]))

    missing_at_netsim = recorded_twice = resubmits = extra = 0
    sender_breaks = pair_breaks = 0
    if record is None:
        notes.append("no netsim record: exactly-once and rate checks were skipped")
    else:
        counts = Counter(line["id"] for line in record)
        twice = [m for m, n in counts.items() if n > 1]
        recorded_twice = len(twice)
        if twice:
            violations.append(Violation("recorded_twice", f"netsim recorded {len(twice)} ids more than once",
                                        len(twice), twice[:5]))
        not_seen = [m for m in accepted if m not in counts]
        missing_at_netsim = len(not_seen)
        if not_seen:
            violations.append(Violation("missing_at_netsim",
                                        f"{len(not_seen)} accepted messages never reached netsim",
                                        len(not_seen), not_seen[:5]))
        extras = [m for m in counts if m not in accepted_set]
        extra = len(extras)
        if extra > unknown_outcome_messages:
            violations.append(Violation(
                "unexplained_sends",
                f"netsim got {extra} messages the load never saw accepted, but only "
                f"{unknown_outcome_messages} requests had an unknown outcome", extra, extras[:5]))
        elif extra:
            notes.append(f"{extra} messages reached netsim whose 202 was lost with the connection "
                         f"(at most {unknown_outcome_messages} requests had an unknown outcome)")
        if netsim_stats is not None:
            resubmits = int(netsim_stats.get("duplicates", 0))
            if netsim_stats.get("unique", len(counts)) != len(counts):
                violations.append(Violation("record_incomplete",
                                            f"netsim counts {netsim_stats.get('unique')} unique messages but "
                                            f"its record holds {len(counts)}"))
            if resubmits and not allow_resubmits:
                violations.append(Violation("resubmitted",
                                            f"netsim was sent {resubmits} messages again (same id) in a run "
                                            "without faults", resubmits))
            elif resubmits:
                notes.append(f"{resubmits} re-sends after link cuts/restarts were absorbed by netsim's id dedupe "
                             "(each message reached its recipient once)")
        by_sender: dict[str, list[float]] = defaultdict(list)
        by_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
        for line in record:
            by_sender[line["sender"]].append(line["at_ms"])
            by_pair[(line["sender"], line["recipient"])].append(line["at_ms"])
        if sender_limits is None:
            notes.append("sender limits unknown: the per-sender rate check was skipped")
        else:
            examples = []
            for sender, times in by_sender.items():
                limits = sender_limits.get(sender)
                if limits is None:
                    violations.append(Violation("unknown_sender", f"netsim got sends from {sender}, "
                                                                  "which has no known limit"))
                    continue
                times.sort()
                breaks = bucket_breaks(times, limits, tolerance_ms)
                sender_breaks += len(breaks)
                if breaks:
                    top = max(limits, key=lambda lim: lim.rate_per_minute)
                    examples.append({"sender": sender, "sends": len(times), "breaks": len(breaks),
                                     "first_at_ms": breaks[0][1],
                                     "most_early_ms": round(max(b[2] for b in breaks), 1),
                                     "most_in_1s": max_in_window(times),
                                     "bucket_allows_in_1s": round(top.burst + top.rate_per_minute / 60, 1)})
            examples.sort(key=lambda e: -e["most_early_ms"])
            if sender_breaks:
                violations.append(Violation("sender_rate", f"{sender_breaks} sends exceeded their sender's "
                                                           f"token bucket ({len(examples)} senders)",
                                            sender_breaks, examples[:5]))
        if pair_limit is not None:
            examples = []
            for pair, times in by_pair.items():
                if len(times) <= pair_limit.burst:
                    continue  # a full bucket allows this many at once
                times.sort()
                breaks = bucket_breaks(times, [pair_limit], tolerance_ms)
                pair_breaks += len(breaks)
                if breaks:
                    examples.append({"sender": pair[0], "recipient": pair[1], "sends": len(times),
                                     "breaks": len(breaks), "most_early_ms": round(max(b[2] for b in breaks), 1)})
            examples.sort(key=lambda e: -e["most_early_ms"])
            if pair_breaks:
                violations.append(Violation("pair_rate", f"{pair_breaks} sends exceeded the per-recipient "
                                                         f"limit ({len(examples)} sender/recipient pairs)",
                                            pair_breaks, examples[:5]))
    return Verdict(accepted=len(accepted), terminal=len(accepted) - lost, lost=lost,
                   missing_at_netsim=missing_at_netsim, recorded_twice=recorded_twice,
                   netsim_resubmits=resubmits, netsim_extra=extra, sender_rate_breaks=sender_breaks,
                   pair_rate_breaks=pair_breaks, funnel=funnel, failed_reasons=reasons,
                   violations=violations, notes=notes)


def judge_e2e(verdict: Verdict, *, record: list[dict] | None, netsim_stats: dict | None,
              expected_digests: dict[str, str], inbound_expected: int,
              gateway_inbound: dict[str, float] | None) -> None:
    """The end-to-end encryption checks, added to `verdict`: netsim decrypted every message and read
    exactly the text the load sent (digests in its record vs `expected_digests`, id -> digest); no
    message failed as undecryptable; and every message netsim's customers sent (`inbound_expected`
    of them) was acknowledged and read by the gateway (`gateway_inbound`: its gateway_inbound_total
    counters by outcome), none undecryptable."""
    v = verdict
    undecryptable = {r: n for r, n in v.failed_reasons.items() if r.startswith("undecryptable")}
    if undecryptable:
        v.violations.append(Violation("failed_undecryptable", f"{sum(undecryptable.values())} messages failed "
                                      f"because their recipient could not decrypt them: {undecryptable}",
                                      sum(undecryptable.values())))
    if netsim_stats is None or "decrypted" not in netsim_stats:
        v.notes.append("netsim did not decrypt (opaque payloads or no netsim of its own): encryption checks skipped")
    else:
        v.decrypted = int(netsim_stats["decrypted"])
        v.decrypt_failures = int(netsim_stats.get("decrypt_failures", 0))
        if v.decrypt_failures:
            v.violations.append(Violation("decrypt_failures", f"netsim could not decrypt {v.decrypt_failures} "
                                          f"submits: {netsim_stats.get('decrypt_failure_reasons')}",
                                          v.decrypt_failures))
    if record is not None and v.decrypted is not None:
        mismatched = []
        for line in record:
            want = expected_digests.get(line["id"])
            if want is None:
                continue  # a message whose 202 was lost with its connection: its number is unknown
            v.plaintext_checked += 1
            if line.get("digest") != want:
                mismatched.append(line["id"])
        v.plaintext_mismatches = len(mismatched)
        if mismatched:
            v.violations.append(Violation("plaintext_mismatch", f"{len(mismatched)} messages reached their "
                                          "recipient with other text than the load sent (or unreadable)",
                                          len(mismatched), mismatched[:5]))
    if not inbound_expected:
        return
    stats = netsim_stats or {}
    gw = gateway_inbound or {}
    sent, skipped = int(stats.get("inbound_sent", 0)), int(stats.get("inbound_skipped", 0))
    unacked = int(stats.get("inbound_unacked", 0))
    received = int(gw.get("received", 0))
    v.inbound = {"expected": inbound_expected, "sent": sent, "skipped": skipped, "unacked": unacked,
                 "received": received, "duplicate": int(gw.get("duplicate", 0)),
                 "undecryptable": int(gw.get("undecryptable", 0)), "dropped": int(gw.get("dropped", 0))}
    if sent + skipped < inbound_expected or skipped:
        v.violations.append(Violation("inbound_not_sent", f"netsim's customers sent {sent} of {inbound_expected} "
                                      f"messages ({skipped} could not be composed)", inbound_expected - sent))
    if unacked:
        v.violations.append(Violation("inbound_unacked", f"{unacked} customers' messages were never acknowledged "
                                      "by the gateway", unacked))
    if gateway_inbound is None:
        v.notes.append("the gateway's inbound counters were not read: inbound completeness unchecked")
        return
    if v.inbound["undecryptable"] or v.inbound["dropped"]:
        v.violations.append(Violation("inbound_undecryptable", f"the gateway could not read "
                                      f"{v.inbound['undecryptable']} customers' messages and dropped "
                                      f"{v.inbound['dropped']}", v.inbound["undecryptable"] + v.inbound["dropped"]))
    if received != sent:
        v.violations.append(Violation("inbound_count", f"netsim's customers sent {sent} messages; the gateway "
                                      f"received {received}", abs(sent - received)))
