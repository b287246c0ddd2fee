"""Prometheus metrics of the gateway, exposed at ``/metrics``.

Each app has its own registry, so that several apps in one process (tests) do not clash.
Labels are bounded: client names come from the configured tokens, routes from the app's
own route table, refusal reasons from :data:`REFUSAL_REASONS`. Callers without a token see
the metrics with the client label summed away (:meth:`GatewayMetrics.render`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Media type of the Prometheus text exposition format."""


class _LiveCollector(Collector):
    """Gauges read from the gateway at scrape time."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (documentation, value) in self._read().items():
            yield GaugeMetricFamily(name, documentation, value=value)


REFUSAL_REASONS = (
    "unauthorized",
    "forbidden",
    "origin",
    "too_large",
    "too_deep",
    "batch_too_large",
    "invalid",
    "too_many_streams",
    "too_many_polls",
    "gateway_full",
    "broker_unavailable",
    "slow_client",
)
"""Why the gateway refuses a request (label of ``colmena_gateway_refused``)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of the request latency histogram, seconds."""


class _ClientsSummedAway(Collector):
    """The metrics of a registry with the ``client`` label summed away."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            if not any("client" in sample.labels for sample in family.samples):
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "client"))
                key = (sample.name, labels)
                totals[key] = totals.get(key, 0.0) + sample.value
            for (name, labels), value in totals.items():
                merged.add_sample(name, dict(labels), value)
            yield merged


class GatewayMetrics:
    """The counters and gauges of one gateway.

    Args:
        live: Called at every scrape; returns ``{metric name: (help, value)}`` of gauges
            read from the gateway's state (broker connection, live task servers)
    """

    def __init__(self, live: Callable[[], dict[str, tuple[str, float]]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.tasks_submitted = Counter(
            "colmena_gateway_tasks_submitted",
            "Tasks accepted by the broker, by API client",
            ["client"],
            registry=self.registry,
        )
        self.results_delivered = Counter(
            "colmena_gateway_results_delivered",
            "Results written to API clients, by client and channel (ws, sse, poll)",
            ["client", "channel"],
            registry=self.registry,
        )
        self.errors = Counter(
            "colmena_gateway_errors",
            "Error responses, by HTTP status code (WebSocket closes count as their close code)",
            ["status"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "colmena_gateway_open_streams",
            "Result and monitoring streams open now, by channel",
            ["channel"],
            registry=self.registry,
        )
        self.connected_clients = Gauge(
            "colmena_gateway_connected_clients",
            "API clients with at least one stream open now",
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "colmena_gateway_request_seconds",
            "Time to the start of the answer of HTTP requests (streams: to their first byte), "
            "by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "colmena_gateway_refused",
            "Requests and streams refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        if live is not None:
            self.registry.register(_LiveCollector(live))
        self._public = _ClientsSummedAway(self.registry)

    def refuse(self, reason: str) -> None:
        """Count a refused request."""
        self.refused.labels(reason).inc()

    def render(self, with_clients: bool = True) -> bytes:
        """The metrics in the Prometheus text format (client labels summed away unless
        ``with_clients``)."""
        return generate_latest(self.registry if with_clients else self._public)
