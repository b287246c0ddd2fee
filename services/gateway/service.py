"""What the gateway does, behind its HTTP routes: submit tasks, stream results, watch.

:class:`GatewayService` holds the broker link, the campaign monitor, the per-client queue
objects and the metrics of one gateway. It keeps no state a restart would lose: tasks are
in the broker once a submission is answered, and results stay in the broker until they
have been written to their API client.

Each API client ``<name>`` is a Colmena client of the campaign with the stable client ID
``api-<name>``: its results wait in its own durable queues (one per topic) whether or not
it is connected, and whichever gateway process is running delivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import pika

from colmena_core.models import Result, SerializationMethod
from colmena_core.models.wire import encode_result
from colmena_core.queue.amqp import ChannelClosedError
from colmena_core.queue.monitor import CampaignMonitor, ResultSummary, summarize_result
from colmena_core.queue.rabbitmq import DEFAULT_DELIVERY_LIMIT, CampaignNames, CampaignTopology
from colmena_core.queue.rabbitmq.admin import dead_letters_over, queue_depths_over
from colmena_core.queue.rabbitmq.topology import REASON_HEADER, ROUTING_KEY_HEADER
from colmena_core.security import signer_for

from .broker import BrokerBusyError, BrokerLink, BrokerUnavailableError, Delivery, Subscription
from .history import CampaignHistory
from .metrics import GatewayMetrics
from .models import (
    CampaignStatus,
    DeadLetterInfo,
    MethodInfo,
    ServerInfo,
    TaskRequest,
    TaskResult,
)
from .settings import GatewaySettings

logger = logging.getLogger(__name__)

REQUEST_CONTENT_TYPE = "application/vnd.colmena"
"""Content type of task requests, as :class:`RabbitMQQueues` sends them."""

CLIENT_PREFIX = "api-"
"""Client IDs of API clients on the broker are this prefix and the client's name."""


ADMIN_CALLS = 4
"""Admin calls (queue depths, dead letters) run at once over the publishing connection."""

T = TypeVar("T")


class TopicError(ValueError):
    """A topic the gateway does not allow."""


class LimitReachedError(Exception):
    """A client, or the gateway, holds as many streams or long-polls as it may.

    Args:
        message: What the client is told
        reason: Label of the refusal in the metrics
        status: HTTP status (429: this client's limit; 503: the gateway's)
        retry_after: Seconds after which trying again makes sense
    """

    def __init__(self, message: str, reason: str, status: int = 429, retry_after: int = 5) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class Admission:
    """Per-client limits on open streams (WebSocket, SSE, monitoring) and long-polls."""

    _KINDS = {
        "stream": ("streams", "COLMENA_MAX_STREAMS_PER_CLIENT", "too_many_streams"),
        "poll": ("long-polls", "COLMENA_MAX_POLLS_PER_CLIENT", "too_many_polls"),
    }

    def __init__(self, settings: GatewaySettings) -> None:
        self._limits = {
            "stream": settings.max_streams_per_client,
            "poll": settings.max_polls_per_client,
        }
        self._counts: dict[str, dict[str, int]] = {"stream": {}, "poll": {}}

    def open(self, client: str, kind: str) -> int:
        """How many ``kind`` (``stream`` or ``poll``) ``client`` holds now."""
        return self._counts[kind].get(client, 0)

    def take(self, client: str, kind: str) -> Callable[[], None]:
        """Count one more ``kind`` for ``client``; returns the function that gives it back
        (once, however often it is called).

        Raises:
            LimitReachedError: the client holds its limit already (HTTP 429)
        """
        counts, limit = self._counts[kind], self._limits[kind]
        if counts.get(client, 0) >= limit:
            what, variable, reason = self._KINDS[kind]
            raise LimitReachedError(
                f"Client {client!r} has {limit} {what} open, the most it may ({variable}): "
                "close one, or retry later",
                reason,
            )
        counts[client] = counts.get(client, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            counts[client] -= 1
            if counts[client] <= 0:
                del counts[client]

        return release


class TaskTooLargeError(ValueError):
    """A task whose message is larger than the broker takes (``index`` in its request)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class StreamStats:
    """Counts the open streams of each client, for the metrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._by_client: dict[str, int] = {}

    @contextlib.contextmanager
    def open(self, client: str, channel: str) -> Any:
        """Count one stream of ``client`` on ``channel`` while the block runs."""
        self._by_client[client] = self._by_client.get(client, 0) + 1
        self._metrics.open_streams.labels(channel).inc()
        self._metrics.connected_clients.set(len(self._by_client))
        try:
            yield
        finally:
            self._metrics.open_streams.labels(channel).dec()
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]
            self._metrics.connected_clients.set(len(self._by_client))


class HeldResults:
    """Results written to their client and waiting for its acknowledgement (``ack=client``).

    Keyed by client and task ID, so that a client acknowledges what it received whichever
    stream brought it. A result whose stream closes before it is acknowledged goes back to
    the broker (its channel closes) and is forgotten here.
    """

    def __init__(self) -> None:
        self._held: dict[str, dict[str, tuple[Subscription, Delivery]]] = {}
        self._counts: dict[Subscription, int] = {}
        self._released: dict[Subscription, asyncio.Event] = {}

    def hold(
        self, client: str, task_id: str, subscription: Subscription, delivery: Delivery
    ) -> None:
        """Keep ``delivery`` unacknowledged until the client acknowledges ``task_id``."""
        held = self._held.setdefault(client, {})
        previous = held.get(task_id)
        if previous is not None:  # a duplicate delivered meanwhile: one copy is enough
            previous[0].ack(previous[1])
            self._forget(previous[0])
        held[task_id] = (subscription, delivery)
        self._counts[subscription] = self._counts.get(subscription, 0) + 1
        self._released.setdefault(subscription, asyncio.Event()).clear()

    def _forget(self, subscription: Subscription) -> None:
        count = self._counts.get(subscription, 0) - 1
        self._counts[subscription] = max(count, 0)
        if count <= 0:
            self._released.setdefault(subscription, asyncio.Event()).set()

    def release(self, client: str, task_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Acknowledge results of ``client``; returns the task IDs acknowledged and unknown."""
        held = self._held.get(client, {})
        done, unknown = [], []
        for task_id in task_ids:
            entry = held.pop(task_id, None)
            if entry is None or not entry[0].ack(entry[1]):
                unknown.append(task_id)
            else:
                done.append(task_id)
            if entry is not None:
                self._forget(entry[0])
        if not held:
            self._held.pop(client, None)
        return done, unknown

    async def wait_released(self, subscription: Subscription, timeout: float) -> bool:
        """Wait until every result held for ``subscription`` was acknowledged."""
        event = self._released.setdefault(subscription, asyncio.Event())
        if not self._counts.get(subscription):
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def drop(self, subscription: Subscription) -> None:
        """Forget what ``subscription`` held (its channel closed: the broker has them back)."""
        for client in list(self._held):
            held = self._held[client]
            for task_id in [t for t, (sub, _) in held.items() if sub is subscription]:
                del held[task_id]
            if not held:
                del self._held[client]
        self._counts.pop(subscription, None)
        event = self._released.pop(subscription, None)
        if event is not None:
            event.set()

    def count(self, client: str) -> int:
        """Results of ``client`` waiting for its acknowledgement."""
        return len(self._held.get(client, {}))


class SeenTasks:
    """The task IDs a stream already delivered, to drop duplicate results (bounded)."""

    def __init__(self, size: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, task_id: str) -> bool:
        """Record ``task_id``; ``False`` if it was already there."""
        if task_id in self._seen:
            return False
        self._seen[task_id] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


class GatewayService:
    """The gateway's connection to one campaign.

    Args:
        settings: Settings of the gateway
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.names = CampaignNames(settings.campaign)
        self.signer = signer_for()  # the campaign secret of the environment (docs/security.md)
        if self.signer is None:
            logger.warning("No campaign secret (COLMENA_CAMPAIGN_SECRET): messages are not signed")
        self.topics: list[str] = sorted(set(settings.topic_list) | {"default"})
        self.link = BrokerLink(
            settings.broker_url,
            on_connected=self._declare_topology,
            stream_links=settings.broker_connections,
            channels_per_link=settings.channels_per_connection,
        )
        self.admission = Admission(settings)
        self._admin_calls = asyncio.Semaphore(ADMIN_CALLS)
        self.topology = CampaignTopology(self.link.amqp, self.names, DEFAULT_DELIVERY_LIMIT)
        self.monitor = CampaignMonitor(
            settings.broker_url, settings.campaign, default_ttl=settings.server_ttl
        )
        self.metrics = GatewayMetrics(self._live_metrics)
        self.streams = StreamStats(self.metrics)
        self.held = HeldResults()
        self._clients: set[str] = set()
        """API clients whose result queues exist (declared again on each connection)"""
        self._client_locks: dict[str, asyncio.Lock] = {}
        self.history = CampaignHistory.of(self)
        """What the monitor saw recently, for the dashboard"""

    # --------------------------------------------------------------- life
    async def start(self) -> None:
        """Start connecting to the broker (the gateway serves even while it is away)."""
        await self.link.start()
        self.monitor.start()
        self.history.start()

    async def stop(self) -> None:
        """Wait for pending confirms, then disconnect everything."""
        await self.history.stop()
        await self.link.stop()
        await asyncio.to_thread(self.monitor.stop)

    def ready(self, private: bool = False) -> tuple[bool, dict[str, Any]]:
        """Whether the gateway can serve: connected to the broker, watching the campaign,
        and able to open another result stream.

        Args:
            private: Include the broker's last error (for callers with a token)
        """
        streams_free = self.link.stream_capacity - self.link.subscriptions
        details: dict[str, Any] = {
            "broker_connected": self.link.connected,
            "monitor_connected": self.monitor.connected,
            "streams_free": streams_free,
        }
        if private:
            details["campaign"] = self.settings.campaign
            if self.link.last_error and not self.link.connected:
                details["last_error"] = self.link.last_error
        return self.link.connected and self.monitor.connected and streams_free > 0, details

    def _live_metrics(self) -> dict[str, tuple[str, float]]:
        servers = self.monitor.servers()
        return {
            "colmena_gateway_broker_connected": (
                "Whether the gateway is connected to the broker",
                float(self.link.connected),
            ),
            "colmena_gateway_live_task_servers": (
                "Task servers that sent a heartbeat recently",
                float(len(servers)),
            ),
            "colmena_gateway_tasks_in_flight": (
                "Tasks the live task servers are running",
                float(sum(s.in_flight or 0 for s in servers)),
            ),
            "colmena_gateway_result_copies_seen": (
                "Results of the campaign seen by the monitor since the gateway started",
                float(self.monitor.results_seen),
            ),
        }

    # ------------------------------------------------------------ clients
    @staticmethod
    def client_id(client: str) -> str:
        """Client ID on the broker of the API client named ``client``."""
        return f"{CLIENT_PREFIX}{client}"

    def is_monitor(self, client: str) -> bool:
        """Whether ``client`` may watch every result of the campaign."""
        if not self.settings.tokens and self.settings.env == "development":
            return True
        return client in self.settings.monitor_clients

    def check_topics(self, topics: Sequence[str] | None) -> list[str]:
        """The topics to use (all when none are given).

        Raises:
            TopicError: a topic is not allowed
        """
        if not topics:
            return list(self.topics)
        unknown = sorted(set(topics) - set(self.topics))
        if unknown:
            raise TopicError(f"Unknown topics {unknown}; the gateway allows {self.topics}")
        return sorted(set(topics))

    async def _declare_topology(self) -> None:
        """On each connection: the campaign's exchanges and the queues of known clients."""
        await self.topology.declare_common()
        for client in sorted(self._clients):
            await self.topology.declare_client(self.client_id(client), self.topics)

    async def ensure_client(self, client: str) -> None:
        """Declare the result queues of ``client`` on the broker, once.

        Raises:
            BrokerUnavailableError: the broker could not be reached in time
        """
        if client in self._clients:
            return
        lock = self._client_locks.setdefault(client, asyncio.Lock())
        async with lock:
            if client in self._clients:
                return
            await self.link.wait_connected(self.settings.publish_timeout)
            try:
                await self.topology.declare_client(self.client_id(client), self.topics)
            except ChannelClosedError as exc:  # the connection went away meanwhile
                raise BrokerUnavailableError(f"The broker connection was lost: {exc}") from exc
            self._clients.add(client)

    # -------------------------------------------------------------- tasks
    def _request(self, client: str, task: TaskRequest) -> tuple[str, bytes, Any]:
        result = Result(
            (tuple(task.args), dict(task.kwargs)),
            method=task.method,
            topic=task.topic,
            keep_inputs=task.keep_inputs,
            serialization_method=SerializationMethod.JSON,
            task_info=task.task_info,
            resources=task.resources,
            max_retries=task.max_retries,
        )
        result.time_serialize_inputs, _ = result.serialize()
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type=REQUEST_CONTENT_TYPE,
            reply_to=self.client_id(client),
            type=task.method,
            timestamp=int(time.time()),
        )
        if self.signer is not None:
            result.reply_tag = self.signer.reply_tag(self.client_id(client), result.task_id)
        return result.task_id, encode_result(result, self.signer), properties

    async def submit(self, client: str, tasks: Sequence[TaskRequest]) -> list[str]:
        """Send tasks for ``client``; return once the broker confirmed every one.

        Raises:
            TopicError: a task names a topic the gateway does not allow
            BrokerUnavailableError: the broker did not confirm them in time
        """
        for task in tasks:
            self.check_topics([task.topic])
        await self.ensure_client(client)
        built = [self._request(client, task) for task in tasks]
        limit = self.settings.max_message_size
        for index, (_, body, _) in enumerate(built):
            if len(body) > limit:  # the broker would close the channel that publishes it
                raise TaskTooLargeError(
                    index,
                    f"Task {index} makes a message of {len(body):,} bytes; the broker takes "
                    f"at most {limit:,}: pass large data by reference (a file or URL)",
                )
        await self.link.publish_many(
            [
                (self.names.requests_exchange, task.method, body, properties)
                for task, (_, body, properties) in zip(tasks, built, strict=True)
            ],
            self.settings.publish_timeout,
        )
        self.metrics.tasks_submitted.labels(client).inc(len(built))
        return [task_id for task_id, _, _ in built]

    # ------------------------------------------------------------ results
    async def results(
        self, client: str, topics: Sequence[str], prefetch: int, kind: str = "stream"
    ) -> Subscription:
        """A subscription to the result queues of ``client`` (enter it to start; it counts
        as one ``kind``, ``stream`` or ``poll``, of the client's until it is closed).

        Raises:
            LimitReachedError: the client, or the gateway, holds as many as it may
            BrokerUnavailableError: the broker could not be reached in time
        """
        await self.ensure_client(client)
        queues = [self.names.result_queue(self.client_id(client), topic) for topic in topics]
        release = self.admission.take(client, kind)
        try:
            return self.link.subscribe(queues, prefetch, on_close=release)
        except BrokerBusyError as exc:
            release()
            raise LimitReachedError(f"{exc}: retry later", "gateway_full", status=503) from None

    def decode(self, body: bytes, routing_key: str | None = None) -> ResultSummary:
        """A summary of a result message, its signature checked first.

        Raises:
            MessageDecodeError: it is not a result message, or it is badly signed
        """
        return summarize_result(body, routing_key, self.signer)

    async def dead_letter(
        self, subscription: Subscription, delivery: Delivery, reason: str
    ) -> None:
        """Move a result that cannot be delivered to the campaign's dead letters, with the
        reason (or reject it, which dead-letters it too, if the copy is not confirmed)."""
        logger.warning("Dead-lettered a result of %s: %s", delivery.routing_key, reason)
        original = delivery.properties
        headers = {
            **dict(getattr(original, "headers", None) or {}),
            REASON_HEADER: reason[:1000],
            ROUTING_KEY_HEADER: delivery.routing_key,
        }
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type=getattr(original, "content_type", None),
            headers=headers,
        )
        try:
            await self.link.publish_many(
                [(self.names.dead_exchange, delivery.routing_key, delivery.body, properties)],
                self.settings.publish_timeout,
            )
        except BrokerUnavailableError:
            subscription.reject(delivery)
            return
        subscription.ack(delivery)

    def delivered(self, client: str, channel: str, count: int = 1) -> None:
        """Count results written to a client."""
        self.metrics.results_delivered.labels(client, channel).inc(count)

    def watch(self, callback: Callable[[ResultSummary], None]) -> Callable[[], None]:
        """Receive copies of every result of the campaign; returns the unsubscribe function."""
        return self.monitor.subscribe(callback)

    def visible_to(self, client: str, summary: ResultSummary, campaign_wide: bool) -> bool:
        """Whether a result copy belongs on a monitoring stream of ``client``."""
        return campaign_wide or summary.client_id == self.client_id(client)

    # ------------------------------------------------------------- status
    def unserved_warning(self, methods: Sequence[str]) -> str | None:
        """What to tell a client that submits ``methods`` no live task server serves."""
        served = self.monitor.methods()
        missing = sorted({m for m in methods if m not in served})
        if not missing:
            return None
        names = ", ".join(repr(m) for m in missing)
        offer = ", ".join(served) if served else "none (no task server is alive)"
        return (
            f"No live task server serves {names}: the task waits in the broker until one "
            f"does. Methods served now: {offer}"
        )

    def served_methods(self) -> list[MethodInfo]:
        """The methods served now, from the heartbeats."""
        servers = {s.server_id: s for s in self.monitor.servers()}
        return [
            MethodInfo(
                name=method,
                servers=ids,
                capacity=sum(servers[i].capacity or 0 for i in ids if i in servers),
            )
            for method, ids in self.monitor.methods().items()
        ]

    async def _admin(self, call: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        """Run an admin call over the gateway's publishing connection (no connection of
        its own), a few at once: each takes a channel while it runs."""
        async with self._admin_calls:
            return await asyncio.wait_for(call, timeout)

    async def status(self, client: str) -> CampaignStatus:
        """The state of the campaign, as ``client`` may see it."""
        servers = self.monitor.servers()
        methods = self.served_methods()
        client_id = self.client_id(client)
        depths: dict[str, int] = {}
        if self.link.connected:
            queues = self.names.shared_queues([m.name for m in methods], {client_id: self.topics})
            try:
                depths = await self._admin(queue_depths_over(self.link.amqp, queues))
            except Exception as exc:  # the status still shows what the heartbeats tell
                logger.warning("Could not read the queue depths: %r", exc)
        return CampaignStatus(
            campaign=self.settings.campaign,
            client=client,
            broker_connected=self.link.connected,
            servers=[ServerInfo(**s.to_dict()) for s in servers],
            methods=methods,
            tasks_queued={
                m.name: depths[self.names.request_queue(m.name)]
                for m in methods
                if self.names.request_queue(m.name) in depths
            },
            tasks_in_flight=sum(s.in_flight or 0 for s in servers),
            results_waiting={
                topic: depths[self.names.result_queue(client_id, topic)]
                for topic in self.topics
                if self.names.result_queue(client_id, topic) in depths
            },
            dead_letters=depths.get(self.names.dead_letter_queue, 0),
        )

    async def dead_letters(self, limit: int) -> list[DeadLetterInfo]:
        """The oldest dead letters of the campaign, left in place."""
        try:
            letters = await self._admin(dead_letters_over(self.link.amqp, self.names, limit))
        except Exception as exc:
            logger.warning("Could not read the dead letters: %r", exc)
            raise BrokerUnavailableError(f"Could not read the dead letters: {exc}") from None
        return [
            DeadLetterInfo(
                reason=letter.reason,
                queue=letter.queue,
                routing_keys=letter.routing_keys,
                time=letter.time.timestamp() if letter.time is not None else None,
                task_id=letter.task_id,
                method=letter.method,
                error=letter.error,
            )
            for letter in letters
        ]


def to_result(summary: ResultSummary) -> TaskResult:
    """The API form of a result."""
    return TaskResult.from_summary(summary)
