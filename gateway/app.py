"""Composition root: builds every component from the Config and runs them under one nursery.

This is the only module that knows how the pieces fit: the HTTP dispatcher (auth, routing,
error bodies, latency metrics), the writer, the scheduler and delivery path, the network link
(with netsim in-process in embedded mode), webhooks, reload and housekeeping. Shutdown is
cancelling the nursery.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable
from functools import partial
from time import perf_counter

import trio

from gateway import config as C
from gateway.api.admin import AdminApi, ProbesApi
from gateway.api.errors import ApiError
from gateway.api.messages import MessagesApi
from gateway.api.policy import PolicyApi
from gateway.api.reviews import ReviewsApi
from gateway.api.webhooks import WebhooksApi
from gateway.clock import Clock
from gateway.crypto.keydir import KeyDirError, key_dir_for, load_sealer
from gateway.crypto.seal import Sealer
from gateway.delivery import Delivery
from gateway.e2e.keyring import Keyring
from gateway.e2e.keys import KeyFileError
from gateway.http.auth import Authenticator, AuthError, authorize, mint_key
from gateway.http.router import Router
from gateway.http.server import Deferred, Request, Response, ServerControl, ServerLimits, serve_http
from gateway.inbound import InboundPath
from gateway.ids import IdGenerator
from gateway.loopstats import LONG_S, LoopStats
from gateway.metrics import GatewayMetrics
from gateway.network.link import NetworkLink, parse_url
from gateway.policy.service import PolicyService
from gateway.schedule.scheduler import Scheduler
from gateway.store import key_ops, ops
from gateway.store import records as R
from gateway.store.env import Store, open_store
from gateway.store.pairlog import TABLES as PAIR_LOG_TABLES
from gateway.store.prealloc import Preallocator
from gateway.store.writer import Writer, write_until_stored
from gateway.webhooks.dispatcher import Endpoint, WebhookDispatcher, endpoint_id, read_secret

log = logging.getLogger("gateway")

APP = ("app", "admin")
ADMIN = ("admin",)
READERS = ("app", "admin", "supervisor")
COMMIT_FAILED_HOLD_S = 10.0  # how long readiness reports a failed commit (not a full map: that has its own)
IDEMPOTENCY_STEP = 1_000  # idempotency records expired (or swept) by one store operation
DRAIN_POLL_S = 0.02  # how often a stopping gateway looks whether it owes answers still (a scan of the connections)
# The settings read only at start (the listener's limits, the LMDB environment and its writer, the
# network link, the keyring): a reload records them, and the reply names those that wait for a restart.
START_ONLY = {
    "server": ("max_body_bytes", "max_header_bytes", "request_timeout_s", "keepalive_timeout_s"),
    # key_dir: the data keys follow a reload, the senders' key book stays where it was opened
    "store": ("key_dir", "map_size_mb", "group_commit_max_ops", "group_commit_window_ms", "group_commit_lazy_ms",
              "preallocate_mb"),
    "scheduler": ("starvation_guard",),
    "webhooks": ("concurrency_per_endpoint",),  # (an endpoint added by a reload gets the new count)
    "network": ("mode", "url", "reconnect_min_ms", "reconnect_max_ms", "sim"),
    "crypto": ("signed_prekey_rotation_h", "signed_prekey_grace_h", "one_time_prekeys", "one_time_prekeys_low",
               "session_cache"),
}


async def _refuse_while_stopping() -> Response:
    """An awaitable, not a Response: the HTTP server's reading task (the mux) answers plain Responses
    itself and keeps the connection; an awaitable goes to the connection's task, which closes it."""
    return Response.error(503, "shutting_down", "the gateway is stopping; send this again (to another instance, "
                          "or to this one once it is back)", retry_after=1)


def _error_response(err: ApiError | AuthError) -> Response:
    response = Response.error(err.status, err.code, err.message, getattr(err, "details", None),
                              getattr(err, "retry_after", None))
    if isinstance(err, AuthError) and err.status == 401:
        response.headers = [("WWW-Authenticate", "Bearer")]
    return response


async def _finish(answer: Awaitable[Response | Deferred]) -> Response | Deferred:
    """Await what a handler left to wait for, with its API errors as their error bodies."""
    try:
        return await answer
    except (ApiError, AuthError) as err:
        return _error_response(err)


def _key_dir_refused(source: str, exc: Exception) -> C.ConfigError:
    """A key book that could not be read or written refuses the config (never a new identity over it)."""
    return C.ConfigError(source, [f"store.key_dir: {exc}"])


class Gateway:
    def __init__(self, config: C.Config, config_path: str | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self._started_config = config  # what the start-only settings are (see `restart_required`)
        self.config_path = config_path
        self.clock = clock or Clock()
        self.clock_ms = self.clock.now_ms
        self.metrics = GatewayMetrics()
        self.loop_stats = LoopStats()  # where the event loop's time goes (/metrics)
        self.sealer = self._load_sealer(config)
        self.store: Store = open_store(config.store.data_dir, config.store.map_size_mb)
        self.writer = Writer(self.store.env, self.store.dbs, max_ops=config.store.group_commit_max_ops,
                             window_s=config.store.group_commit_window_ms / 1000.0,
                             lazy_s=config.store.group_commit_lazy_ms / 1000.0,
                             on_commit=self.metrics.commit.observe,
                             prealloc=Preallocator(os.path.join(self.store.path, "data.mdb"),
                                                   int(config.store.preallocate_mb * 1024 * 1024)))
        self.ids = IdGenerator()
        self.event_ids = IdGenerator()
        sc = config.scheduler
        self.scheduler = Scheduler(pair_rate_per_minute=sc.pair_rate_per_minute, pair_burst=sc.pair_burst,
                                   starvation_guard=sc.starvation_guard)
        self.keyring = self._keyring(config)
        self.delivery = Delivery(self, self.scheduler, self.keyring)
        self._reload_lock = trio.Lock()
        self.inbound = InboundPath(self, self.delivery)
        self.delivery.inbound = self.inbound
        self.webhooks = WebhookDispatcher(self)
        self.auth = Authenticator(self._load_key)
        self.policy = PolicyService(self)  # sensitive words, opt-outs (before the APIs that screen)
        self.policy_api = PolicyApi(self)
        self.reviews = ReviewsApi(self)
        self.messages = MessagesApi(self)
        self.admin = AdminApi(self)
        self.webhooks_api = WebhooksApi(self)
        self.probes = ProbesApi(self)
        self.router = self._routes()
        self.http_control = ServerControl()
        self.draining = False  # stopping: new requests get 503 shutting_down (see _drain)
        self._hurry = trio.Event()  # a second stop signal: the drain ends at once
        self._sender_ws: dict[str, str] = {}
        self.netsim_port: int | None = None
        self.http_port: int | None = None
        self.link: NetworkLink | None = None
        self._apply_config(config, self._webhook_endpoints(config, config_path or "<config>"))
        self._register_gauges()

    # -- routes and the request dispatcher ------------------------------------------------

    def _routes(self) -> Router:
        r = Router()
        m, a, p = self.messages, self.admin, self.probes
        r.add("POST", "/v1/messages", m.send, APP)
        r.add("POST", "/v1/messages/batch", m.send_batch, APP)
        r.add("GET", "/v1/messages/{id}", m.get, READERS)
        r.add("POST", "/admin/v1/api-keys", a.create_key, ADMIN)
        r.add("GET", "/admin/v1/api-keys", a.list_keys, ADMIN)
        r.add("DELETE", "/admin/v1/api-keys/{id}", a.revoke_key, ADMIN)
        r.add("GET", "/admin/v1/senders", a.list_senders, ADMIN)
        r.add("PATCH", "/admin/v1/senders/{number}", a.patch_sender, ADMIN)
        r.add("POST", "/admin/v1/config/reload", a.reload, ADMIN)
        r.add("GET", "/admin/v1/senders/{number}/safety-number/{recipient}", a.safety_number, ("admin", "supervisor"))
        r.add("GET", "/healthz", p.healthz, None)
        r.add("GET", "/readyz", p.readyz, None)
        r.add("GET", "/metrics", p.metrics, None)
        hooks = self.webhooks_api
        r.add("GET", "/admin/v1/webhooks", hooks.list_endpoints, ADMIN)
        r.add("GET", "/admin/v1/webhooks/dead-letters", hooks.dead_letters, ADMIN)
        r.add("POST", "/admin/v1/webhooks/dead-letters/replay", hooks.replay, ADMIN)
        self._policy_routes(r)
        return r

    def _policy_routes(self, r: Router) -> None:
        pol, rev = self.policy_api, self.reviews
        r.add("GET", "/admin/v1/sensitive-words", pol.list_words, ADMIN)
        r.add("GET", "/admin/v1/sensitive-words/{category}", pol.get_words, ADMIN)
        r.add("PUT", "/admin/v1/sensitive-words/{category}", pol.put_words, ADMIN)
        r.add("DELETE", "/admin/v1/sensitive-words/{category}", pol.delete_words, ADMIN)
        r.add("GET", "/admin/v1/opt-outs/{sender}/{contact}", pol.get_opt_out, ("admin", "supervisor"))
        r.add("PUT", "/admin/v1/opt-outs/{sender}/{contact}", pol.put_opt_out, ADMIN)
        r.add("DELETE", "/admin/v1/opt-outs/{sender}/{contact}", pol.delete_opt_out, ADMIN)
        r.add("GET", "/admin/v1/policy-events", pol.policy_events, ("admin", "supervisor"))
        r.add("GET", "/admin/v1/audit", pol.audit, ADMIN)
        r.add("GET", "/admin/v1/reviews", rev.list, ("admin", "supervisor"))
        r.add("POST", "/admin/v1/reviews/{id}/approve", rev.approve, ("admin", "supervisor"))
        r.add("POST", "/admin/v1/reviews/{id}/reject", rev.reject, ("admin", "supervisor"))

    async def handle(self, request: Request) -> Response | Deferred:
        answer = self.handle_now(request)
        if isinstance(answer, (Response, Deferred)):
            return answer
        return await answer

    def handle_now(self, request: Request) -> Response | Deferred | Awaitable[Response | Deferred]:
        """Route, authenticate and run the handler as far as it goes without awaiting: a plain
        handler (a `def`) answers at once or hands back an awaitable for what must wait (a commit,
        say); an `async def` handler's coroutine is handed back unstarted. The HTTP server calls this
        from its one reading task, so nothing here may block."""
        if self.draining:
            request.keep_alive = False
            return _refuse_while_stopping()  # awaited by the connection's own task, which then closes
        route, params, known = self.router.match(request.method, request.path)
        if route is None:
            if known:
                allow = ", ".join(self.router.allowed_methods(request.path))
                resp = Response.error(405, "method_not_allowed", f"{request.method} is not allowed here",
                                      {"allow": allow})
                resp.headers = [("Allow", allow)]
                return resp
            return Response.error(404, "not_found", f"no route {request.path}")
        request.label = route.name  # the latency histogram's label, observed when the answer is written
        try:
            principal = None
            if route.roles is not None:
                principal = self.auth.authenticate(request.headers.get("authorization"), request.memo)
                authorize(principal, route.roles)
            answer = route.handler(request, principal, params)
        except (ApiError, AuthError) as err:
            return _error_response(err)
        if isinstance(answer, (Response, Deferred)):
            return answer
        return _finish(answer)

    def observe_response(self, request: Request, response: Response, seconds: float) -> None:
        """The server's report of each answer written: API latency by route (matched routes only),
        and every answer by route, status and error code."""
        if request.label:
            self.metrics.http.observe(seconds, (request.label,))
        self.metrics.responses.inc((request.label or "unmatched", response.status, response.code))

    # -- helpers the API and delivery use ------------------------------------------------

    def sender_workspace(self, number: str) -> str | None:
        return self._sender_ws.get(number)

    def enqueue(self, msgs) -> None:
        self.metrics.accepted.inc(n=len(msgs))
        self.delivery.enqueue(msgs)

    def check_capacity(self, n: int) -> None:
        if len(self.scheduler) + n > self.config.scheduler.max_queued:
            raise ApiError(429, "queue_full", "the send queue is full; retry later",
                           {"limit": self.config.scheduler.max_queued}, retry_after=5)

    def webhook_targets(self) -> dict[str, list[bytes]]:
        return self.webhooks.targets()

    def webhooks_wake(self, workspaces) -> None:
        self.webhooks.wake(workspaces)

    def _load_key(self, key_id: str) -> R.ApiKeyRecord | None:
        raw = self.store.get("api_keys", key_id.encode())
        return R.api_key_decoder.decode(raw) if raw is not None else None

    async def _refresh_api_keys(self) -> None:
        """Re-read the keys this process knows every second, so that a revocation stored by the CLI
        (another process) is obeyed within a second: a task of its own, which nothing else the
        housekeeping waits for (the link, a full store) holds up. ~1 us a key."""
        while True:
            await trio.sleep(1.0)
            try:
                store = self.store
                with store.env.begin(db=store.dbs["api_keys"], buffers=False) as txn:
                    found = {key_id: txn.get(key_id.encode()) for key_id in self.auth.known()}
                changed = self.auth.refresh({key_id: R.api_key_decoder.decode(raw) if raw is not None else None
                                             for key_id, raw in found.items()})
            except Exception:  # a damaged record, say: the keys known stay as they were, and it tries again
                log.exception("API keys could not be re-read")
                continue
            if changed:
                log.info("API keys: %d changed in the store since last read", changed)

    # -- senders and config ---------------------------------------------------------------

    def sender_rate(self, number: str) -> tuple[int, int]:
        raw = self.store.get("senders", number.encode())
        if raw is not None:
            o = R.sender_override_decoder.decode(raw)
            return o.rate_per_minute, o.burst
        for s in self.config.senders:
            if s.number == number:
                return self.config.sender_rate(s)
        raise KeyError(number)

    def sender_view(self, number: str) -> dict:
        rate, burst = self.sender_rate(number)
        raw = self.store.get("senders", number.encode())
        override = R.sender_override_decoder.decode(raw) if raw is not None else None
        conf = next((s for s in self.config.senders if s.number == number), None)
        if conf is None:
            raise ApiError(404, "sender_not_found", f"no sender {number} in the config")
        return {
            "number": number,
            "workspace": conf.workspace,
            "tier": (override.tier if override is not None else conf.tier),
            "rate_per_minute": rate,
            "burst": burst,
            "override": override is not None,
            "tokens": round(self.scheduler.sender_state(number)[0], 3) if self.scheduler.has_sender(number) else None,
        }

    def apply_sender(self, number: str) -> None:
        rate, burst = self.sender_rate(number)
        self.scheduler.set_sender(number, rate, burst, self.clock.steady())
        self.delivery.poke()

    @staticmethod
    def _load_sealer(cfg: C.Config, source: str = "<config>") -> Sealer:
        try:
            return load_sealer(key_dir_for(cfg.store.data_dir, cfg.store.key_dir))
        except (KeyDirError, OSError) as exc:
            raise C.ConfigError(source, [f"store.key_dir: {exc}"]) from None

    def _keyring(self, cfg: C.Config) -> Keyring:
        c = cfg.crypto
        keyring = Keyring(key_dir_for(cfg.store.data_dir, cfg.store.key_dir), pool=c.one_time_prekeys,
                          low=c.one_time_prekeys_low, rotation_ms=int(c.signed_prekey_rotation_h * 3_600_000),
                          grace_ms=int(c.signed_prekey_grace_h * 3_600_000))
        self._ensure_identities(keyring, cfg)
        return keyring

    def _ensure_identities(self, keyring: Keyring, cfg: C.Config) -> list[str]:
        """Every configured sender's identity and prekeys, created in the key directory if new."""
        try:
            return keyring.ensure([s.number for s in cfg.senders], self.clock_ms())
        except (KeyFileError, OSError) as exc:
            raise _key_dir_refused("<config>", exc) from None

    def _webhook_endpoints(self, cfg: C.Config, source: str) -> list[Endpoint]:
        """The endpoints of a config, their secrets read now; ConfigError if one is unreadable."""
        endpoints = []
        for i, ws in enumerate(cfg.workspaces):
            for j, hook in enumerate(ws.webhooks):
                try:
                    secret = read_secret(hook.secret_file, hook.secret_env)
                except (OSError, ValueError) as exc:
                    raise C.ConfigError(source, [f"workspaces[{i}].webhooks[{j}]: secret: {exc}"]) from None
                endpoints.append(Endpoint(endpoint_id(ws.name, hook.url), ws.name, hook.url, secret,
                                          status="message.status" in hook.events))
        return endpoints

    def _apply_config(self, cfg: C.Config, endpoints: list[Endpoint]) -> None:
        self.config = cfg
        self._sender_ws = {s.number: s.workspace for s in cfg.senders}
        now = self.clock.steady()
        sc = cfg.scheduler
        self.scheduler.set_pair_limit(sc.pair_rate_per_minute, sc.pair_burst, now)
        for s in cfg.senders:
            rate, burst = self.sender_rate(s.number)
            self.scheduler.set_sender(s.number, rate, burst, now)
        self.webhooks.configure(endpoints)
        self.delivery.poke()

    async def reload(self) -> list[str]:
        """Load the config file again and swap it in whole, or raise ConfigError and keep the old.
        One reload at a time (SIGHUP and the admin API may ask at once)."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> list[str]:
        if self.config_path is None:
            raise C.ConfigError("<embedded>", ["no config file to reload"])
        new = C.load_config(self.config_path)
        new = C.with_overrides(new, listen=self.config.server.listen, data_dir=self.config.store.data_dir)
        endpoints = self._webhook_endpoints(new, self.config_path)
        sealer = self._load_sealer(new, self.config_path)  # picks up a `gateway keys rotate`
        try:  # new senders get keys (published soon), made off the event loop
            await self.delivery.keys.ensure([s.number for s in new.senders], self.clock_ms())
        except (KeyFileError, OSError) as exc:
            raise _key_dir_refused(self.config_path, exc) from None
        words_changed = self.policy.configure(new, self.config_path)  # bad word files refuse the reload here
        changes = [name for name in C.Config.__struct_fields__ if getattr(new, name) != getattr(self.config, name)]
        if words_changed:
            changes.append("sensitive_words")
        if sealer.active != self.sealer.active:
            changes.append("data_key")
        self.sealer = sealer
        self._apply_config(new, endpoints)
        log.info("config reloaded from %s (%s)", self.config_path, ", ".join(changes) or "no changes")
        return changes

    def restart_required(self) -> list[str]:
        """The settings ("section.name") of the config in force that differ from those the gateway
        started with and that only take effect at the next start."""
        now, began = self.config, self._started_config
        return [f"{section}.{name}" for section, names in START_ONLY.items() for name in names
                if getattr(getattr(now, section), name) != getattr(getattr(began, section), name)]

    # -- readiness and gauges --------------------------------------------------------------

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.link is None or not self.link.connected:
            problems.append("network link is not connected")
        elif not self.delivery.keys_published:
            problems.append("sender keys are not published to the network yet")
        used, size = self.store.usage()
        if used > 0.95 * size:
            problems.append("storage map is more than 95% full")
        failing = self.writer.failing
        if failing is not None and perf_counter() - self.writer.failed_at < COMMIT_FAILED_HOLD_S:
            # a full disk, say: small commits may still go through while every send is refused
            problems.append(f"a store commit failed in the last {COMMIT_FAILED_HOLD_S:.0f} s "
                            f"({type(failing).__name__}: {failing})"[:200])
        return problems

    def _register_gauges(self) -> None:
        reg = self.metrics.registry
        reg.gauge("gateway_queue_depth", "Messages waiting for the scheduler, by priority.",
                  lambda: [((name,), n) for name, n in zip(R.PRIORITY_NAMES, self.scheduler.depth())],
                  ("priority",))
        reg.gauge("gateway_outbox_depth", "Messages sent to the network and not yet acknowledged.",
                  lambda: [((), self.store.count("outbox"))])
        reg.gauge("gateway_webhook_outbox_depth", "Webhook events waiting for delivery.",
                  lambda: [((), self.store.count("webhook_outbox"))])
        reg.gauge("gateway_webhook_dead_letters", "Webhook events given up on (a final refusal, or older "
                  "than webhooks.max_age_h): GET /admin/v1/webhooks/dead-letters lists them, .../replay sends "
                  "them again.", lambda: [((), self.store.count("webhook_dead"))])
        reg.gauge("gateway_network_connected", "1 when the network link is up.",
                  lambda: [((), 1 if self.link is not None and self.link.connected else 0)])
        reg.gauge("gateway_storage_used_bytes", "LMDB pages in use, in bytes.",
                  lambda: [((), self.store.usage()[0])])
        reg.gauge("gateway_storage_map_bytes", "LMDB map size in bytes.",
                  lambda: [((), self.store.usage()[1])])
        reg.gauge("gateway_group_commits", "Group commits since start.", lambda: [((), self.writer.commits)])
        reg.gauge("gateway_key_file_writes", "Sender key files written since start (new or used one-time "
                  "prekeys, rotations), each in a worker thread.", lambda: [((), self.delivery.keys.files_written)])
        reg.counter_read("gateway_storage_preallocated_bytes_total", "Zeros written ahead of LMDB's data, so that "
                         "commits overwrite instead of growing the file ([store] preallocate_mb).",
                         lambda: [((), self.writer.prealloc.written)])
        reg.gauge("gateway_pair_log_records", "Records in the pair limits' journal ([store] "
                  "pair_log_compact_entries: the live pairs are copied to a fresh table beyond it).",
                  lambda: [((), sum(self.store.count(table) for table in PAIR_LOG_TABLES))])
        reg.counter_read("gateway_pair_log_compactions_total", "Compactions of the pair limits' journal.",
                         lambda: [((), self.delivery.pair_log_compactions)])
        # rate() of these is the event loop's share per kind of task, and its idle share
        reg.counter_read("gateway_loop_busy_seconds_total", "Event-loop seconds spent in task steps, by the "
                         "part of the gateway the task belongs to (http, store, delivery, network, ...).",
                         lambda: sorted(((label,), round(s, 6)) for label, s in self.loop_stats.busy.items()),
                         ("task",))
        reg.counter_read("gateway_loop_steps_total", "Event-loop task steps, by the same parts (busy seconds "
                         "over steps is their mean step: how long each holds the loop at a time).",
                         lambda: sorted(((label,), n) for label, n in self.loop_stats.steps.items()), ("task",))
        reg.counter_read("gateway_loop_idle_seconds_total", "Event-loop seconds spent waiting for I/O.",
                         lambda: [((), round(self.loop_stats.idle, 6))])
        # the stalls: who held the loop (steps by part) and how long I/O waited (batches)
        over = [f"{limit * 1000:g}ms" for limit in LONG_S]
        stats = self.loop_stats
        reg.counter_read("gateway_loop_long_steps_total", "Event-loop task steps longer than `over`, by part of "
                         "the gateway.", lambda: sorted(((label, o), n) for label, counts in stats.long_steps.items()
                                                        for o, n in zip(over, counts)), ("task", "over"))
        reg.gauge("gateway_loop_longest_step_seconds", "The longest event-loop task step since start, by part "
                  "(only parts that had one over 2 ms).",
                  lambda: sorted(((label,), round(t, 6)) for label, t in stats.longest_step.items()), ("task",))
        reg.counter_read("gateway_loop_long_batches_total", "Event-loop batches (every runnable task's step, "
                         "between two waits for I/O: what an answer to I/O may wait) longer than `over`.",
                         lambda: [((o,), n) for o, n in zip(over, self.loop_stats.long_batches)], ("over",))
        reg.gauge("gateway_loop_longest_batch_seconds", "The longest event-loop batch since start (0: none over 2 ms).",
                  lambda: [((), round(self.loop_stats.longest_batch, 6))])

    # -- run ----------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        trio.lowlevel.add_instrument(self.loop_stats)
        rebuilt = self.delivery.rebuild()
        if rebuilt:
            log.info("restart: %d pending messages back in the scheduler", rebuilt)
        # The signal receiver is held until the shutdown is over: a second SIGINT or SIGTERM while
        # it runs (Ctrl-C twice, a supervisor's repeat) cuts the drain short instead of interrupting it.
        stop, self._hurry = trio.Event(), trio.Event()
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as watch:
                    watch.start_soon(self._watch_stop_signals, signals, stop, self._hurry)
                    await self._run(stop, task_status)
                    watch.cancel_scope.cancel()
        finally:
            trio.lowlevel.remove_instrument(self.loop_stats)

    async def _run(self, stop: trio.Event, task_status) -> None:
        cfg = self.config
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.writer.run)
                await nursery.start(self.policy.run)
                await nursery.start(self.delivery.keys.run)
                host, port = await self._network_target(nursery)
                self.link = NetworkLink(
                    host, port, on_connected=self.delivery.on_connected, on_frames=self.delivery.on_frames,
                    backoff_min_s=cfg.network.reconnect_min_ms / 1000, backoff_max_s=cfg.network.reconnect_max_ms / 1000,
                )
                self.delivery.link = self.link
                await nursery.start(self.link.run)
                await nursery.start(self.delivery.run_dispatch)
                await nursery.start(self.delivery.run_throttle_retries)
                await nursery.start(self.webhooks.run)
                nursery.start_soon(self._housekeeping)
                nursery.start_soon(self._refresh_api_keys)
                nursery.start_soon(self._reload_on_sighup)
                nursery.start_soon(self._stop_when, stop, nursery.cancel_scope)
                listen_host, listen_port = C.split_host_port(cfg.server.listen)
                s = cfg.server
                limits = ServerLimits(max_body_bytes=s.max_body_bytes, max_header_bytes=s.max_header_bytes,
                                      request_timeout_s=s.request_timeout_s, keepalive_timeout_s=s.keepalive_timeout_s)
                self.http_port = await nursery.start(partial(serve_http, self.handle, listen_host, listen_port, limits,
                                                             on_response=self.observe_response,
                                                             handle_now=self.handle_now, control=self.http_control))
                log.info("gateway listening on http://%s:%d", listen_host, self.http_port)
                task_status.started(self.http_port)
        finally:
            await self.webhooks.aclose()

    async def _network_target(self, nursery: trio.Nursery) -> tuple[str, int]:
        net = self.config.network
        if net.mode == "tcp":
            return parse_url(net.url)
        from loadtest.netsim.server import serve_netsim

        self.netsim_port = await nursery.start(serve_netsim, net.sim, "127.0.0.1", 0)
        log.info("embedded netsim on 127.0.0.1:%d", self.netsim_port)
        return "127.0.0.1", self.netsim_port

    @staticmethod
    async def _watch_stop_signals(signals, stop: trio.Event, hurry: trio.Event) -> None:
        """SIGTERM and SIGINT stop the gateway; another one while it stops ends its drain at once
        (what is committed stays committed); more change nothing."""
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                log.info("%s: already stopping%s", name, "" if hurry.is_set() else "; the drain ends now")
                hurry.set()
            else:
                log.info("%s: stopping", name)
                stop.set()

    async def _stop_when(self, stop: trio.Event, cancel_scope: trio.CancelScope) -> None:
        """A drain, then cancelling the nursery: everything acknowledged is committed, and every
        request taken before the stop has its answer (see _drain)."""
        await stop.wait()
        await self._drain()
        cancel_scope.cancel()

    async def _drain(self) -> None:
        """Stop taking work and settle what was taken, for up to [server] drain_timeout_s: the
        listener closes (new connections are refused), new requests on open connections get 503
        shutting_down and a close, no webhook delivery starts; then it waits until every request
        taken has its answer on the wire and the deliveries under way have their outcome stored.
        Without it, a client whose message was committed in the last group commit could see its
        connection drop instead of the 202, and send the message again."""
        self.draining = True
        self.http_control.stop_accepting()
        self.webhooks.stop_starting()
        timeout = self.config.server.drain_timeout_s
        if timeout <= 0:
            return
        started = trio.current_time()
        with trio.move_on_after(timeout):
            while not self._hurry.is_set():
                owed, deliveries = self.http_control.requests_in_progress(), self.webhooks.in_flight
                if not owed and not deliveries:
                    log.info("drained in %.3f s", trio.current_time() - started)
                    return
                with trio.move_on_after(DRAIN_POLL_S):
                    await self._hurry.wait()
        log.warning("drain ended after %.1f s (%s): %d connections still owed an answer, %d webhook deliveries "
                    "under way", trio.current_time() - started,
                    "a second signal" if self._hurry.is_set() else "[server] drain_timeout_s",
                    self.http_control.requests_in_progress(), self.webhooks.in_flight)

    async def _reload_on_sighup(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                try:
                    await self.reload()
                except C.ConfigError as exc:
                    log.error("reload refused, old config kept: %s", "; ".join(exc.problems))

    async def _housekeeping(self) -> None:
        """Bounded clean-ups, every second so each round is small: pair buckets that are full again,
        the pair journal's compaction, and expired idempotency answers (by their expiry index; a
        store of an earlier version, whose records have no index entries, is swept once first)."""
        store = self.store
        sweep_after = b"" if store.count("idempotency") > store.count("idempotency_at") else None
        while True:
            await trio.sleep(1.0)
            await self.delivery.rotate_keys()
            # a pair refilled to its burst is forgotten; its journal records go at the next compaction
            self.scheduler.forget_full_pairs(self.clock.steady())
            await self.delivery.compact_pair_log()
            cutoff = max(0, self.clock_ms() - int(self.config.store.idempotency_ttl_h * 3_600_000))
            if sweep_after is not None:
                sweep_after = await write_until_stored(self.writer, ops.sweep_idempotency,
                                                       (sweep_after, cutoff, IDEMPOTENCY_STEP))
            # rounds of a bounded size, other work between them, until what expired is gone
            while await write_until_stored(self.writer, ops.expire_idempotency,
                                           (cutoff, IDEMPOTENCY_STEP)) == IDEMPOTENCY_STEP:
                pass

    def close(self) -> None:
        self.store.close()


def ensure_admin_key(gw: Gateway) -> str | None:
    """On first start (no API keys at all) mint an admin key into <data>/admin.key, mode 0600.
    Returns the file's path when a key was made. Runs before the writer task starts."""
    store = gw.store
    if store.count("api_keys") > 0:
        return None
    now = gw.clock_ms()
    key_id, key, record = mint_key("default", "admin", now, "first-start admin key")
    audit = key_ops.audit_entry(gw.policy.ids, now, "gateway", "admin", "api_key.create", key_id, record)
    path = os.path.join(gw.config.store.data_dir, "admin.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    with store.env.begin(write=True) as txn:
        key_ops.put_api_key(txn, store.dbs, (key_id, record, audit))
    return path

