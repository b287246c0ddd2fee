"""Watch a campaign on a RabbitMQ broker: live task servers, copies of results, queue depths.

A role on the process's one broker connection (:mod:`.bridge`), which reconnects by
itself, and never touches the queues of thinkers or task servers. Task servers advertise
themselves with :class:`~.heartbeats.HeartbeatPublisher` (re-exported here);
:class:`CampaignMonitor` is used by dashboards and the gateway. It keeps a map of the
  live task servers from their heartbeats and binds a private, exclusive queue to the
  campaign's results exchange with ``#``, so it sees a copy of every result without taking
  it from its client. Results are reported as :class:`ResultSummary` objects.

What this module must not do: unpickle anything. A monitor reads results of every client
of a campaign; unpickling bytes it did not produce runs arbitrary code. JSON values are
decoded, pickled values are reported as not displayable. Copies of results seen here are
at-most-once (a monitor that is disconnected misses what arrives meanwhile): they are for
watching, the delivery contract concerns the result queues of the clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from colmena_core.exceptions import MessageDecodeError
from colmena_core.models.heartbeat import decode_heartbeat
from colmena_core.queue.rabbitmq.admin import (
    DeadLetter,
    dead_letters_over,
    list_dead_letters,
    queue_depths,
    queue_depths_over,
)
from colmena_core.queue.rabbitmq.bridge import BrokerConnection
from colmena_core.queue.rabbitmq.heartbeats import HeartbeatPublisher, heartbeat_exchange
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.roles import ConnectionState, Role
from colmena_core.queue.rabbitmq.summaries import (
    TIMING_FIELDS,
    ResultSummary,
    client_of_routing_key,
    summarize_result,
)
from colmena_core.security import MessageSigner, load_secret

__all__ = [
    "TIMING_FIELDS",
    "CampaignMonitor",
    "HeartbeatPublisher",
    "LiveServer",
    "ResultSummary",
    "client_of_routing_key",
    "heartbeat_exchange",
    "summarize_result",
]

logger = logging.getLogger(__name__)

_POLL = 0.2
"""Seconds between checks of heartbeat expiries by :meth:`CampaignMonitor.wait_until`."""

_MONITOR_QUEUE_LENGTH = 10_000
"""Copies of results a slow monitor may lag behind before the oldest are dropped."""


# ------------------------------------------------------------------ monitor
@dataclass
class LiveServer:
    """A task server that advertised itself recently.

    Attributes:
        server_id: Name of the server
        hostname: Host it runs on
        methods: Methods it serves
        capacity: Tasks it runs at once
        in_flight: Tasks it was running at its last heartbeat
        started: When it started (Unix time)
        last_seen: When its last heartbeat arrived (Unix time)
        expires: When it is forgotten without another heartbeat (monotonic clock)
        details: Everything else its heartbeat said
    """

    server_id: str
    hostname: str | None
    methods: list[str]
    capacity: int | None
    in_flight: int | None
    started: float | None
    last_seen: float
    expires: float = field(repr=False)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The server as plain JSON-compatible data (without its expiry)."""
        data = asdict(self)
        data.pop("expires")
        return data


class _MonitorRole(Role):
    """Consumes the monitor's private queue on the shared connection (loop thread)."""

    def __init__(self, monitor: CampaignMonitor) -> None:
        super().__init__()
        self.monitor = monitor
        self.channel: Any = None

    async def declare(self, state: ConnectionState) -> None:
        names, link = self.monitor.names, state.link
        for exchange, kind in (
            (names.heartbeats_exchange, "fanout"),
            (names.results_exchange, "topic"),
        ):
            await link.rpc(
                link.channel,
                "exchange_declare",
                exchange=exchange,
                exchange_type=kind,
                durable=True,
            )

    async def start(self, state: ConnectionState) -> None:
        names, link = self.monitor.names, state.link
        channel = await state.open_channel(self._on_channel_closed)
        self.channel = channel
        frame = await link.rpc(
            channel,
            "queue_declare",
            queue=names.monitor_queue(self.monitor.monitor_id),
            exclusive=True,
            auto_delete=True,
            arguments={
                "x-queue-type": "classic",
                "x-max-length": _MONITOR_QUEUE_LENGTH,
                "x-overflow": "drop-head",
            },
        )
        queue = str(frame.method.queue)
        await link.rpc(channel, "queue_bind", queue=queue, exchange=names.heartbeats_exchange)
        await link.rpc(
            channel, "queue_bind", queue=queue, exchange=names.results_exchange, routing_key="#"
        )
        await link.rpc(
            channel,
            "basic_consume",
            queue=queue,
            on_message_callback=self.monitor._on_message,
            auto_ack=True,
        )
        self.monitor._connected.set()
        logger.info("Monitoring campaign %s", self.monitor.campaign)

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self.channel:
            return
        self.channel = None
        self.monitor._connected.clear()
        if self.state is not None and self.state.alive and not self.bridge.link.closing:
            self.bridge.link.reconnect(f"The broker closed the monitor's channel: {reason!r}")

    def lost(self, state: ConnectionState) -> None:
        self.channel = None
        self.monitor._connected.clear()

    async def close(self, deadline: float) -> None:
        channel, self.channel = self.channel, None
        self.monitor._connected.clear()
        if channel is not None and channel.is_open:
            channel.close()


class CampaignMonitor:
    """Watches one campaign: live task servers, copies of every result, queue depths.

    Start it with :meth:`start` (or a ``with`` block); it watches over the process's one
    broker connection, which reconnects by itself. Callbacks given to :meth:`subscribe`
    run in that connection's thread and must return quickly.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        default_ttl: Kept for compatibility: every heartbeat states its lifetime now
        connect_timeout: Seconds to wait for the broker on each connection attempt
        secret: Campaign secret that heartbeats and results must be signed with (default:
            from the environment, see :func:`colmena_core.security.load_secret`); others
            are ignored with a warning
    """

    def __init__(
        self,
        url: str,
        campaign: str,
        default_ttl: float = 30.0,
        connect_timeout: float = 10.0,
        secret: str | bytes | None = None,
    ) -> None:
        self.url = url
        loaded = load_secret(secret)
        self.signer = None if loaded is None else MessageSigner(loaded)
        self.campaign = campaign
        self.names = CampaignNames(campaign)
        self.default_ttl = default_ttl
        self.connect_timeout = connect_timeout
        self.monitor_id = f"{platform.node()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._changed = threading.Condition()
        self._servers: dict[str, LiveServer] = {}
        self._subscribers: dict[int, Callable[[ResultSummary], None]] = {}
        self._next_subscriber = 0
        self._connected = threading.Event()
        self._role: _MonitorRole | None = None
        self._connection: BrokerConnection | None = None
        self.results_seen = 0

    # -------------------------------------------------------------- life
    def start(self) -> CampaignMonitor:
        """Start watching (idempotent)."""
        if self._role is None:
            self._role = _MonitorRole(self)
            self._connection = BrokerConnection.join(
                self.url, self._role, connect_timeout=self.connect_timeout
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching (the connection stays if other parts of the process use it)."""
        role, connection = self._role, self._connection
        self._role = None
        if role is not None and connection is not None:
            connection.detach(role, timeout)
        self._connected.clear()

    def __enter__(self) -> CampaignMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the monitor is connected and bound now."""
        return self._connected.is_set()

    @property
    def last_error(self) -> str | None:
        """Why the broker connection failed last, if it did."""
        return None if self._connection is None else self._connection.last_error

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the monitor is connected and bound; return whether it is."""
        return self._connected.wait(timeout)

    # ------------------------------------------------------------ servers
    def servers(self) -> list[LiveServer]:
        """The task servers whose last heartbeat has not expired, by ID."""
        now = time.monotonic()
        with self._changed:
            for server_id in [k for k, s in self._servers.items() if s.expires <= now]:
                del self._servers[server_id]
            return [self._servers[k] for k in sorted(self._servers)]

    def methods(self) -> dict[str, list[str]]:
        """Methods served now, each with the IDs of the servers serving it."""
        served: dict[str, list[str]] = {}
        for server in self.servers():
            for method in server.methods:
                served.setdefault(method, []).append(server.server_id)
        return dict(sorted(served.items()))

    def wait_until(self, predicate: Callable[[CampaignMonitor], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds: re-checked on every heartbeat and expiry.

        Returns:
            Whether it held within ``timeout`` seconds
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                # Expiries are not events: look again at least every _POLL seconds
                self._changed.wait(min(remaining, _POLL))

    # ------------------------------------------------------------ results
    def subscribe(self, callback: Callable[[ResultSummary], None]) -> Callable[[], None]:
        """Call ``callback`` with a summary of every result of the campaign from now on.

        Returns:
            A function that ends the subscription
        """
        with self._changed:
            key = self._next_subscriber
            self._next_subscriber += 1
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._changed:
                self._subscribers.pop(key, None)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        with self._changed:
            return len(self._subscribers)

    # ------------------------------------------------------------- queues
    def queue_depths(
        self,
        methods: Iterable[str] | None = None,
        clients: Mapping[str, Collection[str]] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, int]:
        """Messages waiting in the campaign's queues, by queue name (blocking call).

        Runs over the monitor's connection while it watches, else over a connection of
        its own for the call.

        Args:
            methods: Methods whose request queues to count (default: those served now)
            clients: Client IDs and their topics whose result queues to count
            timeout: Seconds to wait for the broker
        """
        if methods is None:
            methods = self.methods()
        queues = self.names.shared_queues(methods, clients)
        connection = self._connection
        if self._role is not None and connection is not None and connection.connected:
            depths: dict[str, int] = connection.run(
                asyncio.wait_for(queue_depths_over(connection.link, queues), timeout), timeout + 1
            )
            return depths
        return queue_depths(self.url, self.campaign, methods, clients, timeout)

    def dead_letters(self, limit: int = 100, timeout: float = 10.0) -> list[DeadLetter]:
        """The campaign's dead letters, left in place (blocking call)."""
        connection = self._connection
        if self._role is not None and connection is not None and connection.connected:
            letters: list[DeadLetter] = connection.run(
                asyncio.wait_for(dead_letters_over(connection.link, self.names, limit), timeout),
                timeout + 1,
            )
            return letters
        return list_dead_letters(self.url, self.campaign, limit=limit, timeout=timeout)

    # ---------------------------------------------------------- I/O thread
    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if method.exchange == self.names.results_exchange:
            self._on_result(method.routing_key, body)
        else:
            self._on_heartbeat(properties, body)

    def _on_heartbeat(self, properties: Any, body: bytes) -> None:
        try:
            heartbeat = decode_heartbeat(body, self.signer)
        except MessageDecodeError as exc:
            logger.warning("Ignored a heartbeat: %s", exc)
            return
        server_id = heartbeat.server_id
        with self._changed:
            if heartbeat.stopping:
                self._servers.pop(server_id, None)
            else:
                self._servers[server_id] = LiveServer(
                    server_id=server_id,
                    hostname=heartbeat.hostname,
                    methods=sorted(heartbeat.methods),
                    capacity=heartbeat.capacity,
                    in_flight=heartbeat.in_flight,
                    started=heartbeat.started,
                    last_seen=time.time(),
                    expires=time.monotonic() + heartbeat.ttl,
                    details=heartbeat.details,
                )
            self._changed.notify_all()

    def _on_result(self, routing_key: str, body: bytes) -> None:
        try:
            summary = summarize_result(body, routing_key, self.signer)
        except MessageDecodeError as exc:
            logger.warning("Ignored an undecodable result copy (%s)", exc)
            return
        with self._changed:
            self.results_seen += 1
            subscribers = list(self._subscribers.values())
        for callback in subscribers:
            try:
                callback(summary)
            except Exception:
                logger.exception("A result subscriber failed")
