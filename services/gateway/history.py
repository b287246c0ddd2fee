"""The recent history of a campaign, kept by the gateway for the dashboard.

:class:`CampaignHistory` records, from the moment the gateway starts, what its campaign
monitor sees: every result copy (whichever client it is for: the thinker's campaign as well
as the gateway's own clients) and the task servers' heartbeats, plus the depths of the
campaign's queues, read every few seconds. It keeps them as one point per interval
(results completed and failed, latency percentiles, each server's busy workers, each
queue's depth), the most recent results, and success and failure counts per method.

Everything is in memory and bounded (an hour of points, the last 500 results): it is for
watching, and a restarted gateway starts a new history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from colmena_core.queue.monitor import ResultSummary

from .models import MonitoredResult

if TYPE_CHECKING:
    from .service import GatewayService

logger = logging.getLogger(__name__)

INTERVAL = 2.0
"""Seconds covered by one point of the history."""

POINTS = 1800
"""Points kept (an hour at :data:`INTERVAL`)."""

RECENT = 500
"""Results kept for the dashboard's task table."""

DEPTH_EVERY = 3
"""Queue depths are read every this many points (each read is a short broker call)."""

TICKS = 4
"""Looks at the live servers per point: their tasks in flight are averaged over the point."""


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _Bucket:
    """Results seen during one interval."""

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.running: list[float] = []


class CampaignHistory:
    """Points, recent results and per-method counts of one campaign.

    Args:
        watch: Subscribes a callback to every result copy; returns the unsubscribe function
        servers: The live task servers now (``server_id``, ``in_flight``, ``capacity``)
        queue_depths: Reads the depths of the queues of the campaign, as ``{label: depth}``
            (a blocking call, run in a thread); given the result queues seen so far
        client_name: The name to show for a client ID
    """

    def __init__(
        self,
        watch: Callable[[Callable[[ResultSummary], None]], Callable[[], None]],
        servers: Callable[[], list[Any]],
        queue_depths: Callable[[Mapping[str, set[str]]], dict[str, int]],
        client_name: Callable[[str | None], str | None],
    ) -> None:
        self._watch = watch
        self._servers = servers
        self._queue_depths = queue_depths
        self._client_name = client_name
        self._lock = threading.Lock()
        self._bucket = _Bucket()
        self._busy: dict[str, list[float]] = {}
        """Per server: the sum of its tasks in flight over this point's ticks, and ticks"""
        self._capacity: dict[str, int | None] = {}
        self._points: deque[dict[str, Any]] = deque(maxlen=POINTS)
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._methods: dict[str, dict[str, int]] = {}
        self._result_queues: dict[str, set[str]] = {}
        self._depths: dict[str, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.started = time.time()

    @classmethod
    def of(cls, gateway: GatewayService) -> CampaignHistory:
        """The history of the campaign of ``gateway``, from its monitor."""
        names = gateway.names
        prefix = gateway.client_id("")

        def client_name(client_id: str | None) -> str | None:
            return client_id.removeprefix(prefix) if client_id else client_id

        def depths(seen: Mapping[str, set[str]]) -> dict[str, int]:
            methods = list(gateway.monitor.methods())
            clients = {client: set(topics) for client, topics in seen.items()}
            for client in set(gateway.settings.tokens.values()):
                clients.setdefault(gateway.client_id(client), set()).update(gateway.topics)
            labels = {
                names.unrouted_queue: "unrouted requests",
                names.dead_letter_queue: "dead letters",
                **{names.request_queue(m): f"requests {m}" for m in methods},
            }
            for client, topics in clients.items():
                for topic in topics:
                    labels[names.result_queue(client, topic)] = (
                        f"results {client_name(client)}/{topic}"
                    )
            found = gateway.monitor.queue_depths(methods, clients, 5.0)
            return {labels.get(queue, queue): depth for queue, depth in found.items()}

        return cls(gateway.watch, gateway.monitor.servers, depths, client_name)

    # -------------------------------------------------------------- life
    def start(self) -> None:
        """Start recording (from the event loop that will sample)."""
        if self._task is None:
            self._unsubscribe = self._watch(self._on_result)
            self._task = asyncio.create_task(self._sample_forever())

    async def stop(self) -> None:
        """Stop recording."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
            self._reading = None

    # ------------------------------------------------------------ record
    def _on_result(self, summary: ResultSummary) -> None:  # runs in the monitor's thread
        shown: dict[str, Any] | None
        try:
            result = MonitoredResult.from_summary(summary)
            result.client = self._client_name(summary.client_id)
            shown = {**result.model_dump(mode="json"), "seen": time.time()}
        except Exception as exc:  # a value the API cannot show (nested too deep): counted only
            logger.warning("A result of task %s cannot be shown (%r)", summary.task_id, exc)
            shown = None
        timings = summary.timings
        latency = None
        if "time_created" in timings and "time_result_sent" in timings:
            latency = max(0.0, timings["time_result_sent"] - timings["time_created"])
        method = summary.method or "(unknown)"
        final = summary.complete is not False  # intermediate results are not tasks done
        with self._lock:
            bucket = self._bucket
            counts = self._methods.setdefault(method, {"success": 0, "failure": 0})
            if final and summary.success:
                bucket.succeeded += 1
                counts["success"] += 1
            elif final:
                bucket.failed += 1
                counts["failure"] += 1
            if latency is not None and final:
                bucket.latencies.append(latency)
            if "time_running" in timings and final:
                bucket.running.append(timings["time_running"])
            if summary.client_id:
                self._result_queues.setdefault(summary.client_id, set()).add(summary.topic)
            if shown is not None:
                self._recent.append(shown)

    def _tick(self) -> None:
        for server in self._servers():
            busy = self._busy.setdefault(server.server_id, [0.0, 0])
            busy[0] += server.in_flight or 0
            busy[1] += 1
            self._capacity[server.server_id] = server.capacity

    def _close_point(self, now: float) -> None:
        servers: dict[str, dict[str, float | None]] = {
            server_id: {
                "in_flight": round(total / ticks, 2),
                "capacity": self._capacity.get(server_id),
            }
            for server_id, (total, ticks) in sorted(self._busy.items())
        }
        self._busy.clear()
        self._capacity.clear()
        with self._lock:
            bucket, self._bucket = self._bucket, _Bucket()
            self._points.append(
                {
                    "time": now,
                    "succeeded": bucket.succeeded,
                    "failed": bucket.failed,
                    "latency_p50": _percentile(bucket.latencies, 0.5),
                    "latency_p95": _percentile(bucket.latencies, 0.95),
                    "running_p50": _percentile(bucket.running, 0.5),
                    "servers": servers,
                    "queues": None if self._depths is None else dict(self._depths),
                }
            )

    async def _sample_forever(self) -> None:
        count = 0
        next_time = time.monotonic()
        while True:
            if count % (DEPTH_EVERY * TICKS) == 0 and (
                self._reading is None or self._reading.done()
            ):  # in the background: a slow broker delays no tick
                self._reading = asyncio.create_task(self._read_depths())
            count += 1
            next_time += INTERVAL / TICKS
            await asyncio.sleep(max(0.0, next_time - time.monotonic()))
            try:
                self._tick()
                if count % TICKS == 0:
                    self._close_point(time.time())
            except Exception:  # a history with a gap is better than none
                logger.exception("Could not record a point of the campaign's history")

    async def _read_depths(self) -> None:
        with self._lock:
            clients = {client: set(topics) for client, topics in self._result_queues.items()}
        try:
            depths = await asyncio.to_thread(self._queue_depths, clients)
        except Exception as exc:
            logger.debug("Could not read the queue depths for the history: %r", exc)
            depths = None
        with self._lock:
            self._depths = depths

    # -------------------------------------------------------------- read
    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """The points after ``since`` (all when ``None``), recent results, method counts."""
        with self._lock:
            points = [p for p in self._points if since is None or p["time"] > since]
            recent = [r for r in self._recent if since is None or r["seen"] > since]
            return {
                "started": self.started,
                "now": time.time(),
                "interval": INTERVAL,
                "points": points,
                "recent": recent,
                "methods": {name: dict(counts) for name, counts in sorted(self._methods.items())},
            }
