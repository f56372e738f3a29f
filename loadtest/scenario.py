"""Scenario files: what load to offer, to which senders and recipients, with which faults and checks.

A scenario is one TOML file; its `[quick]` table holds overrides (same shape) for the CI-sized
variant. msgspec Structs are the schema, so a typo names its exact path. It must never start
processes or read clocks.
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from loadtest import schedule as S

PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
Share = Annotated[float, Meta(ge=0, le=1)]


class Load(Struct, forbid_unknown_fields=True, kw_only=True):
    profile: Literal["constant", "ramp", "step"] = "constant"
    rate: PosFloat = 1000.0          # requests/s (constant)
    duration_s: PosFloat = 30.0      # constant and ramp
    start_rate: NonNegFloat = 0.0    # ramp
    end_rate: NonNegFloat = 0.0      # ramp
    step_rates: list[PosFloat] = msgspec.field(default_factory=list)  # step: requests/s per step
    step_s: PosFloat = 5.0           # step: how long each step lasts (whole seconds)
    find_peak: bool = False          # step: judge each step, stop at the first that fails, report the last that passed
    warmup_steps: Annotated[int, Meta(ge=0)] = 0  # find_peak: the first steps only warm up (sessions), unjudged
    send: Literal["single", "batch"] = "single"
    batch_size: Annotated[int, Meta(ge=1, le=1000)] = 100
    connections: PosInt = 64
    timeout_s: PosFloat = 30.0
    priority: Literal["urgent", "normal", "bulk"] = "normal"


class Senders(Struct, forbid_unknown_fields=True, kw_only=True):
    count: Annotated[int, Meta(ge=1, le=10_000)] = 1
    tiers: dict[str, Share] = msgspec.field(default_factory=lambda: {"fast": 1.0})  # share of senders per tier
    spread: Literal["even", "by_rate"] = "even"  # how requests are spread over senders
    recipients: PosInt = 1_000_000  # size of the recipient pool, cycled through
    hot_recipients: Annotated[int, Meta(ge=0)] = 0  # every hot_every-th message goes to one of these few
    hot_every: Annotated[int, Meta(ge=0)] = 0       # (from sender 0), so their pair limit has to hold them back


class Tier(Struct, forbid_unknown_fields=True, kw_only=True):
    rate_per_minute: PosInt
    burst: PosInt


class GatewaySetup(Struct, forbid_unknown_fields=True, kw_only=True):
    tiers: dict[str, Tier] = msgspec.field(default_factory=lambda: {
        "fast": Tier(rate_per_minute=60_000_000, burst=1_000_000),
        "restricted": Tier(rate_per_minute=5, burst=5),
    })
    pair_rate_per_minute: PosFloat = 10.0
    pair_burst: PosInt = 45
    map_size_mb: PosInt = 16384


class NetsimSetup(Struct, forbid_unknown_fields=True, kw_only=True):
    seed: int = 1
    latency_ms: NonNegFloat = 20.0
    read_share: Share = 0.5
    unregistered_share: Share = 0.0
    throttle_share: Share = 0.0
    inbound_rate: NonNegFloat = 0.0   # customers' messages per second to the senders, for the load's duration
    inbound_customers: PosInt = 1000  # how many customers write ("customers": +1888 numbers of their own)
    # "recipients": the load's own recipients answer, in the sessions the gateway started with them where
    # those exist (and start their own where not yet), so both session directions meet on one pair
    inbound_from: Literal["customers", "recipients"] = "customers"


class SenderDrop(Struct, forbid_unknown_fields=True, kw_only=True):
    at_s: NonNegFloat
    tier: str = "restricted"
    sender_index: int = 0
    restore_at_s: NonNegFloat | None = None  # PATCH {"reset": true} then, so the queue can drain


class Faults(Struct, forbid_unknown_fields=True, kw_only=True):
    link_cut_every_s: NonNegFloat = 0.0   # 0 = never; else the gateway<->netsim proxy drops every connection
    link_down_s: NonNegFloat = 0.5        # ... and refuses new ones this long
    crash_at_s: NonNegFloat = 0.0         # 0 = never; else kill -9 the gateway at this time into the run
    restart_after_s: NonNegFloat = 1.0
    sender_drop: SenderDrop | None = None


class Checks(Struct, forbid_unknown_fields=True, kw_only=True):
    p99_ms: PosFloat = 100.0              # peak-ramp: a step passes with p99 at or under this and no errors
    drain_timeout_s: PosFloat = 120.0
    rate_tolerance_ms: NonNegFloat = 250.0  # transport jitter forgiven between the gateway and netsim
    limit_change_grace_ms: NonNegFloat = 1000.0  # a lowered limit binds sends that reach netsim this long after the PATCH
    allow_resubmits: bool = False         # faults make the gateway re-send; netsim dedupes them by id
    min_accepted_share: Share = 0.99      # accepted / offered below this fails the run (except with faults)
    min_sustainable_rps: NonNegFloat = 0.0  # find_peak: fail when no judged step at or above this held


class Scenario(Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    description: str = ""
    load: Load = msgspec.field(default_factory=Load)
    senders: Senders = msgspec.field(default_factory=Senders)
    gateway: GatewaySetup = msgspec.field(default_factory=GatewaySetup)
    netsim: NetsimSetup = msgspec.field(default_factory=NetsimSetup)
    faults: Faults = msgspec.field(default_factory=Faults)
    checks: Checks = msgspec.field(default_factory=Checks)
    quick: bool = False  # set when the [quick] overrides were applied

    def schedule(self) -> S.Schedule:
        load = self.load
        if load.profile == "constant":
            return S.constant(load.rate, load.duration_s)
        if load.profile == "ramp":
            return S.ramp(load.start_rate, load.end_rate, load.duration_s)
        return S.steps([(load.step_s, r) for r in load.step_rates])

    def messages_per_request(self) -> int:
        return self.load.batch_size if self.load.send == "batch" else 1


class ScenarioError(Exception):
    pass


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_scenario(text: str, *, quick: bool = False, source: str = "<scenario>") -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: TOML syntax: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: TOML syntax: arrays or tables nested too deeply") from None
    overrides = raw.pop("quick", {})
    if quick:
        raw = _merge(raw, overrides)
        raw["quick"] = True
    try:
        scn = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    problems = []
    if scn.load.profile == "step" and not scn.load.step_rates:
        problems.append("load.step_rates: a step profile needs at least one rate")
    if scn.load.profile == "ramp" and scn.load.start_rate == scn.load.end_rate == 0:
        problems.append("load: a ramp needs start_rate or end_rate > 0")
    unknown = sorted(set(scn.senders.tiers) - set(scn.gateway.tiers))
    if unknown:
        problems.append(f"senders.tiers: {unknown} not defined in gateway.tiers")
    if abs(sum(scn.senders.tiers.values()) - 1.0) > 1e-6:
        problems.append("senders.tiers: shares must add up to 1")
    if (scn.senders.hot_recipients > 0) != (scn.senders.hot_every > 0):
        problems.append("senders: hot_recipients and hot_every go together")
    drop = scn.faults.sender_drop
    if drop is not None:
        if drop.tier not in scn.gateway.tiers:
            problems.append(f"faults.sender_drop.tier: {drop.tier!r} not defined in gateway.tiers")
        if not 0 <= drop.sender_index < scn.senders.count:
            problems.append("faults.sender_drop.sender_index: no such sender")
    if problems:
        raise ScenarioError(f"{source}: " + "; ".join(problems))
    return scn


def load_scenario(path: str, *, quick: bool = False) -> Scenario:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    return parse_scenario(text, quick=quick, source=path)
