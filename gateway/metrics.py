"""In-process metrics rendered in the Prometheus text format (version 0.0.4).

Counters and histograms are plain attributes bumped on the hot path (an add and a bisect);
gauges are read through callbacks only when /metrics is scraped. Nothing here does I/O.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable


class Counter:
    __slots__ = ("name", "help", "values")

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[tuple, float] = {}

    def inc(self, labels: tuple = (), n: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + n

    def get(self, labels: tuple = ()) -> float:
        return self.values.get(labels, 0)


class Histogram:
    """Cumulative-bucket histogram; `observe` costs one bisect and two adds."""

    __slots__ = ("name", "help", "bounds", "series")

    def __init__(self, name: str, help: str, bounds: Iterable[float]) -> None:
        self.name, self.help = name, help
        self.bounds = sorted(bounds)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts..., +Inf count, sum]

    def observe(self, value: float, labels: tuple = ()) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0] * (len(self.bounds) + 1) + [0.0]
        s[bisect_left(self.bounds, value)] += 1
        s[-1] += value

    def count(self, labels: tuple = ()) -> int:
        s = self.series.get(labels)
        return sum(s[:-1]) if s else 0


Gauge = Callable[[], Iterable[tuple[tuple, float]]]


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not values:
        return ""
    inner = ",".join(f'{n}="{v}"' for n, v in zip(names, values))
    return "{" + inner + "}"


def _value(v: float) -> str:
    """A sample value, exact: `:g` kept six significant digits, so a counter past 1,000,000 read
    1e+06 and its rate() over a second moved in steps of a hundred."""
    if type(v) is int:
        return str(v)
    if v.is_integer() and abs(v) < 2 ** 53:
        return str(int(v))
    if v != v or v in (_INF, -_INF):
        return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")
    return repr(v)


_INF = float("inf")


class Registry:
    def __init__(self) -> None:
        self._items: list[tuple[str, object, tuple[str, ...]]] = []
        self._gauges: list[tuple[str, str, tuple[str, ...], Gauge, str]] = []

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        c = Counter(name, help)
        self._items.append(("counter", c, labels))
        return c

    def histogram(self, name: str, help: str, bounds: Iterable[float],
                  labels: tuple[str, ...] = ()) -> Histogram:
        h = Histogram(name, help, bounds)
        self._items.append(("histogram", h, labels))
        return h

    def gauge(self, name: str, help: str, read: Gauge, labels: tuple[str, ...] = ()) -> None:
        self._gauges.append((name, help, labels, read, "gauge"))

    def counter_read(self, name: str, help: str, read: Gauge, labels: tuple[str, ...] = ()) -> None:
        """A counter kept elsewhere (it only grows), read through `read` when scraped."""
        self._gauges.append((name, help, labels, read, "counter"))

    def render(self) -> bytes:
        out: list[str] = []
        for kind, item, names in self._items:
            out.append(f"# HELP {item.name} {item.help}\n# TYPE {item.name} {kind}\n")
            if kind == "counter":
                values = item.values or {(): 0} if not names else item.values
                for labels, v in sorted(values.items()):
                    out.append(f"{item.name}{_labels(names, labels)} {_value(v)}\n")
                continue
            for labels, s in sorted(item.series.items()):
                cumulative = 0
                for bound, n in zip(item.bounds, s):
                    cumulative += n
                    le = _labels(names + ("le",), labels + (f"{bound:g}",))
                    out.append(f"{item.name}_bucket{le} {cumulative}\n")
                cumulative += s[len(item.bounds)]
                inf = _labels(names + ("le",), labels + ("+Inf",))
                out.append(f"{item.name}_bucket{inf} {cumulative}\n")
                out.append(f"{item.name}_sum{_labels(names, labels)} {s[-1]:.6f}\n")
                out.append(f"{item.name}_count{_labels(names, labels)} {cumulative}\n")
        for name, help, names, read, kind in self._gauges:
            out.append(f"# HELP {name} {help}\n# TYPE {name} {kind}\n")
            for labels, v in read():
                out.append(f"{name}{_labels(names, labels)} {_value(v)}\n")
        return "".join(out).encode()


LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DELIVERY_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class GatewayMetrics:
    """The gateway's named metrics, built once in the composition root."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.accepted = r.counter("gateway_messages_accepted_total", "Messages accepted (202, durable).")
        self.status = r.counter(
            "gateway_messages_status_total",
            "Status changes by status (sent, delivered, read, failed).",
            ("status",),
        )
        self.http = r.histogram(
            "gateway_http_request_duration_seconds", "API latency by route.", LATENCY_BOUNDS, ("route",)
        )
        self.responses = r.counter(
            "gateway_http_responses_total",
            "API answers by route (\"unmatched\": no route), status and error code (\"\" for a success).",
            ("route", "status", "code"),
        )
        self.delivery = r.histogram(
            "gateway_accepted_to_delivered_seconds",
            "Time from acceptance to the delivered receipt.",
            DELIVERY_BOUNDS,
        )
        self.commit = r.histogram(
            "gateway_store_commit_seconds",
            "Group commits: from handing a batch to the writer thread to the event loop seeing it durable "
            "(fsync included). Every 202 waits for one.",
            LATENCY_BOUNDS,
        )
        self.webhooks = r.counter(
            "gateway_webhook_deliveries_total", "Webhook delivery attempts by outcome.", ("outcome",)
        )
        self.resent = r.counter("gateway_outbox_resent_total", "Submit frames resent after a reconnect.")
        self.throttled = r.counter("gateway_network_throttled_total", "Throttle answers from the network.")
        self.storage_full = r.counter("gateway_storage_full_total", "Writes refused because the map is full.")
