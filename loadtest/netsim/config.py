"""NetsimConfig: the knobs of the simulated network, decodable from a dict or a TOML table (e.g. `[network.sim]`).

It owns validation of those knobs only and must never hold runtime state or perform network I/O.
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Any, Mapping

import msgspec

Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]  # finite: inf would schedule nothing ever
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class NetsimConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    seed: int = 1
    latency_ms_median: NonNegFloat = 20.0
    latency_sigma: NonNegFloat = 0.5  # lognormal sigma; 0 = every latency equals the median
    read_share: Share = 0.5
    read_delay_ms_median: NonNegFloat = 200.0  # lognormal with latency_sigma, counted from "delivered"
    unregistered_share: Share = 0.0
    offline_share: Share = 0.0
    offline_delay_ms: NonNegFloat = 5000.0  # an offline recipient gets "delivered" this much later
    offline_expire_share: Share = 0.0  # of offline recipients: fail "recipient_offline_expired" instead
    throttle_share: Share = 0.0
    throttle_retry_after_ms: NonNegInt = 1000
    e2e: bool = True  # decrypt every submit (Signal protocol); False takes payloads as opaque bytes
    inbound_rate: NonNegFloat = 0.0  # inbound messages per second from simulated customers (0 = none)
    inbound_customers: Annotated[int, msgspec.Meta(ge=1)] = 1000  # customers the generated traffic comes from
    inbound_count: NonNegInt = 0  # generated inbound messages stop after this many (0 = no limit)
    # customer k of the pool is this prefix + k as 7 digits; "+1666" makes the load tests' recipients
    # (+1666 0000000 ...) answer, in the sessions the gateway started with them where they have one
    inbound_customer_prefix: Annotated[str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{0,7}\Z")] = "+1888"


def config_from_mapping(data: Mapping[str, Any]) -> NetsimConfig:
    """Build a validated config from a plain mapping (a TOML table, CLI overrides...).

    Raises msgspec.ValidationError on unknown keys, wrong types or out-of-range values.
    """
    return msgspec.convert(dict(data), NetsimConfig)


def validated(config: NetsimConfig, **overrides: Any) -> NetsimConfig:
    """Return `config` with `overrides` applied, re-validated (plain construction skips Meta checks)."""
    merged = msgspec.structs.asdict(config)
    merged.update(overrides)
    return config_from_mapping(merged)


def load_config(path: str) -> NetsimConfig:
    """Load a TOML file: its `[network.sim]` table if present, else its top-level keys."""
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    table = doc.get("network", {}).get("sim") if isinstance(doc.get("network"), dict) else None
    return config_from_mapping(table if table is not None else doc)
