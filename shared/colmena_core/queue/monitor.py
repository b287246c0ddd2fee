"""Watch a campaign on a RabbitMQ broker: live task servers, copies of results, queue depths.

Two small broker clients, each with its own pika connection in its own thread, that
reconnect with back-off and never touch the queues of thinkers or task servers:

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

import contextlib
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
import pika.exceptions

from colmena_core.models import SerializationMethod
from colmena_core.models.wire import MessageDecodeError, decode_result
from colmena_core.queue.rabbitmq import (
    CampaignNames,
    DeadLetter,
    list_dead_letters,
    queue_depths,
)

__all__ = [
    "CampaignMonitor",
    "HeartbeatPublisher",
    "LiveServer",
    "ResultSummary",
    "heartbeat_exchange",
    "summarize_result",
]

logger = logging.getLogger(__name__)

_MAX_RECONNECT_DELAY = 5.0
_POLL = 0.2
"""Seconds between checks of a stop request or a dead channel in the I/O threads."""

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


def _parameters(url: str, timeout: float, heartbeat: int | None = 30) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    if heartbeat is not None:
        parameters.heartbeat = heartbeat
    return parameters


def _close_quietly(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            if connection.is_open:
                connection.close()


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

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-compatible data."""
        return asdict(self)


def _unescape_word(word: str) -> str:
    """Inverse of the escaping of one word of a result routing key."""
    return word.replace("%2E", ".").replace("%2A", "*").replace("%23", "#").replace("%25", "%")


def client_of_routing_key(routing_key: str | None) -> str | None:
    """The client ID a result routing key (``<client_id>.<topic>``) addresses."""
    if not routing_key or "." not in routing_key:
        return None
    return _unescape_word(routing_key.split(".", 1)[0])


def _json_or_none(payload: Any) -> tuple[Any, bool]:
    try:
        return json.loads(bytes(payload)), True
    except (ValueError, TypeError):
        return None, False


def summarize_result(message: bytes, routing_key: str | None = None) -> ResultSummary:
    """Describe an encoded result (see :mod:`colmena_core.models.wire`), never unpickling it.

    Args:
        message: The bytes of the message
        routing_key: Routing key it was published with, to tell the client it is for
    Raises:
        MessageDecodeError: the bytes are not a Colmena message
    """
    result = decode_result(message)
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
    )


# ---------------------------------------------------------------- heartbeats
class HeartbeatPublisher:
    """Publishes the heartbeats of one task server, from a thread of its own.

    :meth:`publish` never blocks: it hands the status to the publisher's thread, which
    connects (and reconnects, with back-off) on its own; when heartbeats come faster than
    they can be sent, only the latest is sent.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        connect_timeout: Seconds to wait for the broker on each connection attempt
    """

    def __init__(self, url: str, campaign: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.campaign = campaign
        self.exchange = CampaignNames(campaign).heartbeats_exchange
        self.connect_timeout = connect_timeout
        self._changed = threading.Condition()
        self._pending: tuple[bytes, float] | None = None
        self._closing = False
        self._close_by = math.inf
        self._stopping = False
        self._sent = 0
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def sent(self) -> int:
        """How many heartbeats reached the broker."""
        with self._changed:
            return self._sent

    def publish(self, status: Mapping[str, Any], ttl: float) -> None:
        """Advertise ``status`` (a JSON-compatible mapping) for ``ttl`` seconds.

        A status with ``"stopping": true`` announces that the server stops: heartbeats
        published after it (by a heartbeat thread that has not noticed yet) are ignored.

        Raises:
            ValueError: ``ttl`` is not positive, or the status is not JSON-compatible
            RuntimeError: the publisher is closed
        """

        if not ttl > 0:
            raise ValueError(f"The time to live of a heartbeat must be positive, not {ttl}")
        body = json.dumps({**status, "ttl": ttl}).encode()
        with self._changed:
            if self._closing:
                raise RuntimeError("The heartbeat publisher is closed")
            if self._stopping and not status.get("stopping"):
                return
            self._stopping = self._stopping or bool(status.get("stopping"))
            self._pending = (body, ttl)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="colmena-heartbeats", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def wait_sent(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``count`` heartbeats in all reached the broker."""
        with self._changed:
            return self._changed.wait_for(lambda: self._sent >= count, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send the pending heartbeat (within ``timeout``), then disconnect and end the thread."""
        with self._changed:
            self._closing = True
            self._close_by = time.monotonic() + timeout
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout + 1)

    def __enter__(self) -> HeartbeatPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        connection: Any = None
        channel: Any = None
        delay = 0.1
        retry_at = 0.0
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._pending is not None or self._closing, 1.0)
                    pending, closing = self._pending, self._closing
                if closing and (pending is None or time.monotonic() > self._close_by):
                    return
                now = time.monotonic()
                try:
                    if connection is not None and connection.is_open:
                        connection.process_data_events(0)  # answer AMQP heartbeats
                    if pending is None or now < retry_at:
                        if now < retry_at:
                            with self._changed:
                                self._changed.wait(min(retry_at - now, _POLL))
                        continue
                    if connection is None or not connection.is_open or not channel.is_open:
                        _close_quietly(connection)
                        connection = pika.BlockingConnection(
                            _parameters(self.url, self.connect_timeout)
                        )
                        channel = connection.channel()
                        channel.exchange_declare(
                            self.exchange, exchange_type="fanout", durable=True
                        )
                    body, ttl = pending
                    channel.basic_publish(
                        self.exchange,
                        "",
                        body,
                        pika.BasicProperties(
                            content_type="application/json",
                            delivery_mode=1,
                            expiration=str(max(int(ttl * 1000), 1)),
                            timestamp=int(time.time()),
                        ),
                    )
                    with self._changed:
                        if self._pending is pending:
                            self._pending = None
                        self._sent += 1
                        self._changed.notify_all()
                    delay, self.last_error = 0.1, None
                except Exception as exc:  # any broker trouble: reconnect later
                    self.last_error = repr(exc)
                    logger.warning("Could not publish a heartbeat (%r); retrying", exc)
                    _close_quietly(connection)
                    connection = channel = None
                    retry_at = time.monotonic() + delay
                    delay = min(delay * 2, _MAX_RECONNECT_DELAY)
        finally:
            _close_quietly(connection)


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


class CampaignMonitor:
    """Watches one campaign: live task servers, copies of every result, queue depths.

    Start it with :meth:`start` (or a ``with`` block); it connects from a thread of its
    own and reconnects with back-off. Callbacks given to :meth:`subscribe` run in that
    thread and must return quickly.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        default_ttl: Seconds a task server is kept after a heartbeat that gives no TTL
        connect_timeout: Seconds to wait for the broker on each connection attempt
    """

    def __init__(
        self,
        url: str,
        campaign: str,
        default_ttl: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.campaign = campaign
        self.names = CampaignNames(campaign)
        self.default_ttl = default_ttl
        self.connect_timeout = connect_timeout
        self.monitor_id = f"{platform.node()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._changed = threading.Condition()
        self._servers: dict[str, LiveServer] = {}
        self._subscribers: dict[int, Callable[[ResultSummary], None]] = {}
        self._next_subscriber = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self.results_seen = 0
        self.last_error: str | None = None

    # -------------------------------------------------------------- life
    def start(self) -> CampaignMonitor:
        """Start watching (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"colmena-monitor-{self.campaign}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._connected.clear()

    def __enter__(self) -> CampaignMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the monitor is connected and bound now."""
        return self._connected.is_set()

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

        Args:
            methods: Methods whose request queues to count (default: those served now)
            clients: Client IDs and their topics whose result queues to count
            timeout: Seconds to wait for the broker
        """
        if methods is None:
            methods = self.methods()
        return queue_depths(self.url, self.campaign, methods, clients, timeout)

    def dead_letters(self, limit: int = 100, timeout: float = 10.0) -> list[DeadLetter]:
        """The campaign's dead letters, left in place (blocking call)."""
        return list_dead_letters(self.url, self.campaign, limit=limit, timeout=timeout)

    # ---------------------------------------------------------- I/O thread
    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            connection: Any = None
            try:
                connection = pika.BlockingConnection(_parameters(self.url, self.connect_timeout))
                channel = connection.channel()
                queue = self._declare(channel)
                channel.basic_consume(queue, self._on_message, auto_ack=True)
                self._connected.set()
                self.last_error = None
                delay = 0.1
                logger.info("Monitoring campaign %s", self.campaign)
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=_POLL)
                    if not channel.is_open:  # closed by the broker: start again
                        raise pika.exceptions.ChannelClosed(0, "channel closed")
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.last_error = repr(exc)
                logger.warning("Campaign monitor lost the broker (%r); reconnecting", exc)
            finally:
                self._connected.clear()
                _close_quietly(connection)
            self._stop.wait(delay)
            delay = min(delay * 2, _MAX_RECONNECT_DELAY)

    def _declare(self, channel: Any) -> str:
        heartbeats = self.names.heartbeats_exchange
        channel.exchange_declare(heartbeats, exchange_type="fanout", durable=True)
        channel.exchange_declare(self.names.results_exchange, exchange_type="topic", durable=True)
        frame = channel.queue_declare(
            f"{self.names.prefix}.monitor.{self.monitor_id}",
            exclusive=True,
            auto_delete=True,
            arguments={
                "x-queue-type": "classic",
                "x-max-length": _MONITOR_QUEUE_LENGTH,
                "x-overflow": "drop-head",
            },
        )
        queue = str(frame.method.queue)
        channel.queue_bind(queue, heartbeats)
        channel.queue_bind(queue, self.names.results_exchange, routing_key="#")
        return queue

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if method.exchange == self.names.results_exchange:
            self._on_result(method.routing_key, body)
        else:
            self._on_heartbeat(properties, body)

    def _on_heartbeat(self, properties: Any, body: bytes) -> None:
        try:
            status = json.loads(body)
            server_id = str(status["server_id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("Ignored a heartbeat that is not a JSON status with a server_id")
            return
        ttl = status.get("ttl")
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
            ttl = self.default_ttl
        with self._changed:
            if status.get("stopping"):
                self._servers.pop(server_id, None)
            else:
                methods = status.get("methods") or []
                known = {
                    "server_id",
                    "hostname",
                    "methods",
                    "capacity",
                    "in_flight",
                    "started",
                    "ttl",
                }
                self._servers[server_id] = LiveServer(
                    server_id=server_id,
                    hostname=str(status["hostname"]) if status.get("hostname") else None,
                    methods=sorted(str(m) for m in methods) if isinstance(methods, list) else [],
                    capacity=_as_int(status.get("capacity")),
                    in_flight=_as_int(status.get("in_flight")),
                    started=status.get("started")
                    if isinstance(status.get("started"), int | float)
                    else None,
                    last_seen=time.time(),
                    expires=time.monotonic() + float(ttl),
                    details={k: v for k, v in status.items() if k not in known},
                )
            self._changed.notify_all()

    def _on_result(self, routing_key: str, body: bytes) -> None:
        try:
            summary = summarize_result(body, routing_key)
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
