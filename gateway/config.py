"""The gateway's configuration: msgspec Structs decoded from a TOML file, plus the checks a
Struct cannot express (references between sections), each reported with its exact path.

Loading never mutates a running gateway: it returns a new frozen Config or raises ConfigError
with every problem found, so a reload either swaps the whole thing in or changes nothing.
"""
from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from loadtest.netsim.config import NetsimConfig
from gateway.policy.settings import PolicyConfig

# \Z, never $: Python's $ also matches before a final newline ("+1...\n" would pass)
E164_PATTERN = r"^\+[1-9][0-9]{6,14}\Z"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}\Z"  # workspaces, tiers, word-list categories
E164 = Annotated[str, Meta(pattern=E164_PATTERN)]
Name = Annotated[str, Meta(pattern=NAME_PATTERN)]
PositiveInt = Annotated[int, Meta(ge=1)]
FilePath = Annotated[str, Meta(pattern=r"^[^\x00]*$")]  # a NUL is no path: os calls raise ValueError for it
# finite: a timeout, period or rate of inf (TOML can write it) passed validation and failed at start
PositiveFloat = Annotated[float, Meta(gt=0, le=1e9)]
# A sender's rate and burst, from the config or PATCH /admin/v1/senders: bounded so that every value
# fits the stores' 64-bit integers and the buckets' arithmetic (a billion a minute is far above any network)
RatePerMinute = Annotated[int, Meta(ge=1, le=1_000_000_000)]
Burst = Annotated[int, Meta(ge=1, le=1_000_000_000)]


class ServerConfig(Struct, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8080"
    max_body_bytes: Annotated[int, Meta(ge=1, le=1 << 30)] = 1_048_576
    max_header_bytes: Annotated[int, Meta(ge=1024, le=1 << 20)] = 16_384
    request_timeout_s: PositiveFloat = 10.0
    keepalive_timeout_s: PositiveFloat = 75.0
    max_batch_messages: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    max_body_chars: Annotated[int, Meta(ge=1, le=65_536)] = 4096
    drain_timeout_s: Annotated[float, Meta(ge=0, le=600)] = 5.0  # at a stop: the longest wait for answers owed


class StoreConfig(Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: FilePath = "./var"
    key_dir: FilePath = ""  # data keys for sealing at rest; "" means <data_dir>/keys
    map_size_mb: Annotated[int, Meta(ge=1, le=16_777_216)] = 4096  # up to 16 TiB of address space
    group_commit_max_ops: PositiveInt = 4096
    group_commit_window_ms: Annotated[float, Meta(ge=0, le=1000)] = 2.0
    group_commit_lazy_ms: Annotated[float, Meta(ge=0, le=1000)] = 10.0
    # LMDB's data file is kept up to this far ahead of its data with written zeros (store/prealloc.py)
    preallocate_mb: Annotated[float, Meta(ge=0, le=1024)] = 2.0
    # the pair limits' journal takes turns between two tables at this many records (store/pairlog.py)
    pair_log_compact_entries: PositiveInt = 20_000
    idempotency_ttl_h: Annotated[float, Meta(gt=0, le=87_600)] = 24.0  # up to ten years
    storage_full_retry_after_s: PositiveInt = 30


class Tier(Struct, frozen=True, forbid_unknown_fields=True):
    rate_per_minute: RatePerMinute
    burst: Burst


class SenderConfig(Struct, frozen=True, forbid_unknown_fields=True):
    number: E164
    workspace: Name = "default"
    tier: str | None = None
    rate_per_minute: RatePerMinute | None = None
    burst: Burst | None = None


class SchedulerConfig(Struct, frozen=True, forbid_unknown_fields=True):
    pair_rate_per_minute: PositiveFloat = 10.0
    pair_burst: PositiveInt = 45
    starvation_guard: PositiveInt = 10
    dispatch_batch: Annotated[int, Meta(ge=1, le=65_536)] = 512
    throttle_max_retries: Annotated[int, Meta(ge=0)] = 20
    max_queued: PositiveInt = 5_000_000


class WebhookEndpoint(Struct, frozen=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(pattern=r"^https?://[^\s/]+(/\S*)?\Z")]
    secret_file: FilePath | None = None
    secret_env: str | None = None
    # what it is sent: a name not in this list (a typo) is refused, never a silent endpoint
    events: Annotated[list[Literal["message.status", "policy.flagged", "message.received"]], Meta(min_length=1)] = \
        msgspec.field(default_factory=lambda: ["message.status", "policy.flagged", "message.received"])


class WorkspaceConfig(Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    default_sender: E164 | None = None
    webhooks: list[WebhookEndpoint] = msgspec.field(default_factory=list)


class WebhookDelivery(Struct, frozen=True, forbid_unknown_fields=True):
    timeout_s: PositiveFloat = 10.0
    concurrency_per_endpoint: Annotated[int, Meta(ge=1, le=64)] = 4
    max_events_per_delivery: Annotated[int, Meta(ge=1, le=1000)] = 100
    backoff_initial_s: PositiveFloat = 1.0
    backoff_max_s: PositiveFloat = 600.0
    max_age_h: PositiveFloat = 72.0


class NetworkConfig(Struct, frozen=True, forbid_unknown_fields=True):
    mode: Literal["embedded", "tcp"] = "embedded"
    url: Annotated[str, Meta(pattern=r"^tcp://[^\s:/]+:[0-9]{1,5}\Z")] = "tcp://127.0.0.1:7000"
    reconnect_min_ms: PositiveInt = 50
    reconnect_max_ms: PositiveInt = 5000
    sim: NetsimConfig = msgspec.field(default_factory=NetsimConfig)


class CryptoConfig(Struct, frozen=True, forbid_unknown_fields=True):
    signed_prekey_rotation_h: PositiveFloat = 168.0
    signed_prekey_grace_h: PositiveFloat = 720.0
    one_time_prekeys: Annotated[int, Meta(ge=1, le=4000)] = 100
    one_time_prekeys_low: Annotated[int, Meta(ge=0)] = 25
    session_cache: PositiveInt = 200_000
    new_sessions_per_round: Annotated[int, Meta(ge=1, le=65_536)] = 256
    bundle_timeout_s: PositiveFloat = 5.0


class Config(Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    webhooks: WebhookDelivery = msgspec.field(default_factory=WebhookDelivery)
    crypto: CryptoConfig = msgspec.field(default_factory=CryptoConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    tiers: dict[Name, Tier] = msgspec.field(default_factory=dict)
    workspaces: list[WorkspaceConfig] = msgspec.field(default_factory=list)
    senders: list[SenderConfig] = msgspec.field(default_factory=list)

    def workspace(self, name: str) -> WorkspaceConfig | None:
        for ws in self.workspaces:
            if ws.name == name:
                return ws
        return None

    def sender_rate(self, sender: SenderConfig) -> tuple[int, int]:
        """(rate_per_minute, burst) for a sender: explicit values win over its tier."""
        tier = self.tiers.get(sender.tier) if sender.tier else None
        rate = sender.rate_per_minute or (tier.rate_per_minute if tier else 0)
        burst = sender.burst or (tier.burst if tier else max(1, rate // 6))
        return rate, burst


class ConfigError(Exception):
    """Every problem found in one config file, each as 'path: message'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _split_problem(err: msgspec.ValidationError) -> tuple[str, str]:
    """(path without the leading '$.', message) of a msgspec validation error."""
    m = _MSGSPEC_PATH.match(str(err))
    assert m is not None  # the pattern matches any string
    msg, path = m.group("msg"), (m.group("path") or "").lstrip(".")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return path, msg.replace("`", "")


def _msgspec_problem(err: msgspec.ValidationError, prefix: str = "") -> str:
    path, msg = _split_problem(err)
    path = ".".join(p for p in (prefix, path) if p).replace(".[", "[")
    return f"{path}: {msg}" if path else msg


def _locate_in_tiers(raw: dict, problem: str) -> str:
    """msgspec names a dict entry `tiers[...]`; find which tier it was so the path is exact."""
    if not problem.startswith("tiers[...]") or not isinstance(raw.get("tiers"), dict):
        return problem
    for name, table in raw["tiers"].items():
        try:
            msgspec.convert(table, Tier, strict=True)
        except msgspec.ValidationError as exc:
            return _msgspec_problem(exc, prefix=f"tiers.{name}")
    return problem


def _url_problem(url: str) -> str:
    """Why the webhook client could not connect to `url` (its host or port unusable), or "". The URL
    is quoted by its scheme and authority only: its path or query may hold a token."""
    shown = repr(_origin(url))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{exc} in {shown}"
    if not parts.hostname:
        return f"no host in {shown}"
    if port == 0:
        return f"port 0 in {shown}"
    return ""


def _origin(url: str) -> str:
    """scheme://authority of a URL, without its path, query or fragment (nor any user:password@)."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return f"{scheme}://{authority.rsplit('@', 1)[-1]}"


def _semantic_problems(cfg: Config) -> list[str]:
    problems = []
    try:
        split_host_port(cfg.server.listen)
    except ValueError as exc:
        problems.append(f"server.listen: {exc}")
    from gateway.network.link import parse_url  # (the link's own parser: what it would refuse at start)
    try:
        if parse_url(cfg.network.url)[1] == 0:
            problems.append(f"network.url: port 0 in {cfg.network.url!r}")
    except ValueError as exc:
        problems.append(f"network.url: {exc}")
    if cfg.crypto.one_time_prekeys_low >= cfg.crypto.one_time_prekeys:
        problems.append("crypto.one_time_prekeys_low: must be below crypto.one_time_prekeys")
    if not cfg.workspaces:  # an empty or cut-off file, say: it would send nothing and refuse every send
        problems.append("workspaces: at least one [[workspaces]] is needed")
    if not cfg.senders:
        problems.append("senders: at least one [[senders]] number is needed")
    names = [ws.name for ws in cfg.workspaces]
    for i, ws in enumerate(cfg.workspaces):
        if names.index(ws.name) != i:
            problems.append(f"workspaces[{i}].name: duplicate workspace {ws.name!r}")
        urls = [hook.url for hook in ws.webhooks]
        for j, hook in enumerate(ws.webhooks):
            if not (hook.secret_file or hook.secret_env):
                problems.append(f"workspaces[{i}].webhooks[{j}]: needs secret_file or secret_env")
            problem = _url_problem(hook.url)
            if problem:
                problems.append(f"workspaces[{i}].webhooks[{j}].url: {problem}")
            elif urls.index(hook.url) != j:  # one endpoint per URL: list every event it takes in one entry
                problems.append(f"workspaces[{i}].webhooks[{j}].url: the same URL as webhooks[{urls.index(hook.url)}]"
                                "; give one entry all the events it takes")
    numbers: dict[str, int] = {}
    for i, s in enumerate(cfg.senders):
        if s.number in numbers:
            problems.append(f"senders[{i}].number: duplicate of senders[{numbers[s.number]}]")
        numbers.setdefault(s.number, i)
        if s.tier is not None and s.tier not in cfg.tiers:
            known = ", ".join(sorted(cfg.tiers)) or "none defined"
            problems.append(f"senders[{i}].tier: unknown tier {s.tier!r} (tiers: {known})")
        if s.tier is None and s.rate_per_minute is None:
            problems.append(f"senders[{i}]: needs a tier or rate_per_minute")
        if s.workspace not in names:
            problems.append(f"senders[{i}].workspace: unknown workspace {s.workspace!r}")
    for i, ws in enumerate(cfg.workspaces):
        if ws.default_sender is None:
            continue
        owner = numbers.get(ws.default_sender)
        if owner is None or cfg.senders[owner].workspace != ws.name:
            problems.append(
                f"workspaces[{i}].default_sender: {ws.default_sender} is not a sender of workspace {ws.name!r}"
            )
    return problems


NESTED_TOO_DEEPLY = "TOML syntax: arrays or tables nested too deeply"


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax: {exc}"]) from None
    except RecursionError:
        raise ConfigError(source, [NESTED_TOO_DEEPLY]) from None
    try:
        cfg = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, [_locate_in_tiers(raw, _msgspec_problem(exc))]) from None
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | os.PathLike) -> Config:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    return parse_config(text, str(path))


def with_overrides(cfg: Config, *, listen: str | None = None, data_dir: str | None = None) -> Config:
    """Apply command-line overrides (--listen, --data-dir), which win over the file."""
    server, store = cfg.server, cfg.store
    if listen is not None:
        server = msgspec.structs.replace(server, listen=listen)
    if data_dir is not None:
        store = msgspec.structs.replace(store, data_dir=data_dir)
    return msgspec.structs.replace(cfg, server=server, store=store)


def split_host_port(listen: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[v6]:PORT" too); ValueError unless the port is 0 to 65535 (a
    larger one would be taken modulo 65536 by the socket layer: 99999 listened on 34463)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535 or not host:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {listen!r}")
    return host.strip("[]"), int(port)
