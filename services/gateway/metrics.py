"""Prometheus metrics of the gateway, exposed at ``/metrics``.

Each app has its own registry, so that several apps in one process (tests) do not clash.
Labels are bounded: client names come from the configured tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
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
        if live is not None:
            self.registry.register(_LiveCollector(live))

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
