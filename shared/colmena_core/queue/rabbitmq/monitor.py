"""Watch a campaign on a RabbitMQ broker: live task servers, copies of results, queue depths.

Two roles on the process's one broker connection (:mod:`.bridge`), which reconnects by
itself; neither touches the queues of thinkers or task servers:

* :class:`HeartbeatPublisher` is used by a task server to advertise who it is, which methods
  it serves and how busy it is. Heartbeats are JSON, non-persistent and expire after their
  time to live, on the fanout exchange ``CampaignNames.heartbeats_exchange``.
* :class:`CampaignMonitor` is used by dashboards and the gateway. It keeps a map of the
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
import json
import logging
import math
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pika

from colmena_core.exceptions import MessageDecodeError
from colmena_core.models import SerializationMethod
from colmena_core.models.heartbeat import Heartbeat, decode_heartbeat, encode_heartbeat
from colmena_core.models.wire import SIGNED_MAGIC, decode_result, is_signed
from colmena_core.queue.rabbitmq.admin import (
    DeadLetter,
    dead_letters_over,
    list_dead_letters,
    queue_depths,
    queue_depths_over,
)
from colmena_core.queue.rabbitmq.bridge import BrokerConnection, ConnectionState, Outgoing, Role
from colmena_core.queue.rabbitmq.names import CampaignNames, unescape_word
from colmena_core.security import TAG_BYTES, MessageSigner, load_secret

__all__ = [
    "CampaignMonitor",
    "HeartbeatPublisher",
    "LiveServer",
    "ResultSummary",
    "heartbeat_exchange",
    "summarize_result",
]

logger = logging.getLogger(__name__)

_POLL = 0.2
"""Seconds between checks of heartbeat expiries by :meth:`CampaignMonitor.wait_until`."""

_MONITOR_QUEUE_LENGTH = 10_000
"""Copies of results a slow monitor may lag behind before the oldest are dropped."""

TIMING_FIELDS = (
    "time_created",
    "time_input_received",
    "time_compute_started",
    "time_compute_ended",
    "time_result_sent",
    "time_running",
)
"""The timings of a result reported by :func:`summarize_result`."""


def heartbeat_exchange(campaign: str) -> str:
    """Name of the fanout exchange of the heartbeats of a campaign's task servers.

    Shorthand for ``CampaignNames(campaign).heartbeats_exchange``, where the other names of
    a campaign are.

    Raises:
        ValueError: ``campaign`` is not a valid campaign name
    """
    return CampaignNames(campaign).heartbeats_exchange


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class ResultSummary:
    """What can be shown of a result without trusting its payloads.

    Attributes:
        task_id: ID of the task
        client_id: Client the result is addressed to (from its routing key), when known
        method: Method that ran
        topic: Topic of the task
        success: Whether the task completed (``None``: no outcome recorded)
        value: The value, decoded when it was serialized as JSON, else ``None``
        value_format: ``json``, ``pickle`` or ``none`` (the task produced no value)
        displayable: Whether :attr:`value` holds the value (``False`` for pickled values,
            which are never unpickled here)
        failure: The exception of a failed task, as text
        inputs: ``{"args": [...], "kwargs": {...}}`` when the inputs were kept and are JSON
        task_info: The user's tracking data
        timings: The life-cycle timestamps and durations of :data:`TIMING_FIELDS` that are set
        complete: ``False`` for an intermediate result of a running task (its final result
            follows), else ``True`` or ``None``
    """

    task_id: str
    client_id: str | None
    method: str | None
    topic: str
    success: bool | None
    value: Any
    value_format: str
    displayable: bool
    failure: str | None
    inputs: dict[str, Any] | None
    task_info: dict[str, Any]
    timings: dict[str, float]
    complete: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-compatible data."""
        return asdict(self)


def client_of_routing_key(routing_key: str | None) -> str | None:
    """The client ID a result routing key (``<client_id>.<topic>``) addresses."""
    if not routing_key or "." not in routing_key:
        return None
    return unescape_word(routing_key.split(".", 1)[0])


def _json_or_none(payload: Any) -> tuple[Any, bool]:
    try:
        return json.loads(bytes(payload)), True
    except (ValueError, TypeError):
        return None, False


def summarize_result(
    message: bytes, routing_key: str | None = None, signer: MessageSigner | None = None
) -> ResultSummary:
    """Describe an encoded result (see :mod:`colmena_core.models.wire`), never unpickling it.

    Args:
        message: The bytes of the message
        routing_key: Routing key it was published with, to tell the client it is for
        signer: The campaign's signer: the signature is checked first (``None``: a signature
            is ignored, for display only)
    Raises:
        MessageAuthenticationError: unsigned or badly signed, with a signer
        MessageDecodeError: the bytes are not a Colmena message
    """
    if signer is None and is_signed(message):
        message = message[len(SIGNED_MAGIC) + 1 + TAG_BYTES :]
    result = decode_result(message, signer)
    is_json = result.serialization_method is SerializationMethod.JSON
    value: Any = None
    displayable = False
    if result.value is None:
        value_format, displayable = "none", True
    elif is_json:
        value_format = "json"
        value, displayable = _json_or_none(result.value)
    else:
        value_format = "pickle"
    inputs = None
    if is_json and isinstance(result.inputs, bytes | str) and result.inputs:
        decoded, ok = _json_or_none(
            result.inputs.encode() if isinstance(result.inputs, str) else result.inputs
        )
        if ok and isinstance(decoded, list) and len(decoded) == 2:
            args, kwargs = decoded
            if args or kwargs:
                inputs = {"args": list(args), "kwargs": dict(kwargs)}
    timings = {}
    for name in TIMING_FIELDS:
        moment = getattr(result, name)
        if isinstance(moment, int | float) and math.isfinite(moment):
            timings[name] = float(moment)
    return ResultSummary(
        task_id=result.task_id,
        client_id=client_of_routing_key(routing_key),
        method=result.method,
        topic=result.topic,
        success=result.success,
        value=value,
        value_format=value_format,
        displayable=displayable,
        failure=None if result.failure_info is None else result.failure_info.exception,
        inputs=inputs,
        task_info=dict(result.task_info),
        timings=timings,
        complete=result.complete,
    )


# ---------------------------------------------------------------- heartbeats
class _HeartbeatRole(Role):
    """Publishes one server's heartbeats on the shared connection (loop thread)."""

    def __init__(self, publisher: HeartbeatPublisher) -> None:
        super().__init__()
        self.publisher = publisher
        self.in_flight = False

    async def declare(self, state: ConnectionState) -> None:
        await state.link.rpc(
            state.link.channel,
            "exchange_declare",
            exchange=self.publisher.exchange,
            exchange_type="fanout",
            durable=True,
        )

    async def start(self, state: ConnectionState) -> None:
        self.send_next()

    def send_next(self) -> None:
        """Publish the latest status, unless one is on its way."""
        if self.in_flight or self.state is None:
            return
        pending = self.publisher.take_pending()
        if pending is None:
            return
        body, ttl = pending
        self.in_flight = True
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=1,
            expiration=str(max(int(ttl * 1000), 1)),
            timestamp=int(time.time()),
        )
        self.bridge.enqueue(
            Outgoing(
                self.publisher.exchange,
                "",
                body,
                properties,
                on_confirm=self._sent,
                on_failed=self._failed,
            )
        )

    def _sent(self, returned: bool) -> None:
        self.in_flight = False
        self.publisher.count_sent()
        self.send_next()

    def _failed(self, error: BaseException) -> None:
        self.in_flight = False

    async def close(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while (self.in_flight or self.publisher.has_pending()) and loop.time() < deadline:
            self.send_next()
            await asyncio.sleep(0.01)


class HeartbeatPublisher:
    """Publishes the heartbeats of one task server, on the process's broker connection.

    :meth:`publish` never blocks: it hands the status to the connection's thread, which
    connects (and reconnects) on its own; when heartbeats come faster than they can be
    sent, only the latest is sent.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        connect_timeout: Seconds to wait for the broker on each connection attempt
        secret: Campaign secret that signs the heartbeats (default: from the environment,
            see :func:`colmena_core.security.load_secret`)
    """

    def __init__(
        self,
        url: str,
        campaign: str,
        connect_timeout: float = 10.0,
        secret: str | bytes | None = None,
    ) -> None:
        self.url = url
        self.campaign = campaign
        loaded = load_secret(secret)
        self.signer = None if loaded is None else MessageSigner(loaded)
        self.exchange = CampaignNames(campaign).heartbeats_exchange
        self.connect_timeout = connect_timeout
        self._changed = threading.Condition()
        self._pending: tuple[bytes, float] | None = None
        self._closing = False
        self._stopping = False
        self._sent = 0
        self._role: _HeartbeatRole | None = None
        self._connection: BrokerConnection | None = None

    @property
    def sent(self) -> int:
        """How many heartbeats reached the broker."""
        with self._changed:
            return self._sent

    @property
    def last_error(self) -> str | None:
        """Why the broker connection failed last, if it did."""
        return None if self._connection is None else self._connection.last_error

    def publish(self, status: Mapping[str, Any], ttl: float) -> None:
        """Advertise ``status`` (a JSON-compatible mapping) for ``ttl`` seconds.

        A status with ``"stopping": true`` announces that the server stops: heartbeats
        published after it (by a heartbeat thread that has not noticed yet) are ignored.

        Raises:
            ValueError: ``ttl`` or the status break the limits of a
                :class:`~colmena_core.models.heartbeat.Heartbeat`
            RuntimeError: the publisher is closed
        """
        if not ttl > 0:
            raise ValueError(f"The time to live of a heartbeat must be positive, not {ttl}")
        body = encode_heartbeat(Heartbeat.model_validate({**status, "ttl": ttl}), self.signer)
        with self._changed:
            if self._closing:
                raise RuntimeError("The heartbeat publisher is closed")
            if self._stopping and not status.get("stopping"):
                return
            self._stopping = self._stopping or bool(status.get("stopping"))
            self._pending = (body, ttl)
            role = self._role
            if role is None:
                role = self._role = _HeartbeatRole(self)
                self._connection = BrokerConnection.join(
                    self.url, role, connect_timeout=self.connect_timeout
                )
        assert self._connection is not None
        self._connection.call(role.send_next)

    def take_pending(self) -> tuple[bytes, float] | None:
        with self._changed:
            pending, self._pending = self._pending, None
            return pending

    def has_pending(self) -> bool:
        with self._changed:
            return self._pending is not None

    def count_sent(self) -> None:
        with self._changed:
            self._sent += 1
            self._changed.notify_all()

    def wait_sent(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``count`` heartbeats in all reached the broker."""
        with self._changed:
            return self._changed.wait_for(lambda: self._sent >= count, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send the pending heartbeat (within ``timeout``), then leave the connection."""
        with self._changed:
            self._closing = True
            role, connection = self._role, self._connection
        if role is not None and connection is not None:
            connection.detach(role, timeout)

    def __enter__(self) -> HeartbeatPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
