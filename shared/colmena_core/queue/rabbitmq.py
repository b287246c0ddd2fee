"""Queues over a RabbitMQ broker: many thinkers and task servers per campaign, surviving crashes.

:class:`RabbitMQQueues` has the API of every Colmena queue; it adds a broker URL, a campaign
name (campaigns sharing a broker never see each other's messages) and a ``client_id`` that
names the thinker the results go back to. This module moves opaque messages (see
:mod:`colmena_core.models.wire`) and must not decode payloads: it only peeks at headers.

Topology (every name starts with ``colmena.<campaign>``; ``docs/architecture.md`` has a
picture)::

    .requests        direct   requests, routing key = method name; one durable quorum
                              queue per method: .requests.<method>
                              (x-delivery-limit, dead letters to .dead)
    .unrouted        fanout   alternate exchange of .requests: requests for methods
                              that have no queue yet wait in the queue .unrouted
    .results         topic    results, routing key <client_id>.<topic>; one durable quorum
                              queue per client and topic: .results.<client_id>.<topic>
    .control         fanout   the kill signal; each task server binds .control.<server>
    .dead            fanout   dead letters, kept in the classic queue .dead-letters
    .leases          headers  copies of long-running requests (see "Long tasks")
    .leases.expired  headers  leases that were not renewed in time

Delivery contract (``ARCHITECTURE.md`` §3) and how it is met:

* Requests and results are persistent and published with publisher confirms. Publishing is
  pipelined: ``send_inputs`` and ``send_result`` hand the message to the I/O thread, which
  keeps it until the broker confirms it and publishes it again after a reconnection, so a
  broker restart loses nothing. ``disconnect()`` (also run when the process exits) waits
  for every pending confirm.
* A task server acknowledges a request only after the broker confirmed its result, so a
  server killed with SIGKILL leaves its tasks unacknowledged and the broker gives them to
  the next server (at-least-once execution). A client acknowledges a result when
  ``get_result`` hands it over; the base class drops duplicates by task ID.
* A client declares its result queues before it publishes its first request, and results
  are published with ``mandatory``: a result that cannot be routed is dead-lettered.
* A request that cannot be decoded is rejected without requeueing: it goes to the dead
  letters (:func:`list_dead_letters`). A request for a method no task server serves is
  handed to the task server, which returns a failure result. A request returned more than
  ``delivery_limit`` times (a task that kills its servers) is dead-lettered by the broker.
  A request or result above the broker's ``max_message_size`` becomes a failure result
  (checked before sending, and learned from the broker if it refuses one anyway).
* The kill signal goes to every task server of the campaign through ``.control``. A server
  raises :class:`KillSignalException` once the requests queued before the signal are
  drained, like the in-band signal of the other transports.

Long tasks: the broker closes a channel that holds a delivery unacknowledged for longer
than its ``consumer_timeout`` (30 minutes by default; on RabbitMQ 3.10 only node-wide).
A task server therefore never holds a request for more than ``lease_after`` seconds: it
publishes a copy of the request to its own lease queue (confirmed), then acknowledges the
original. A lease queue has a message TTL of ``lease_ttl`` and dead-letters to a second
queue of the same server, which the server consumes: while the task runs, the server puts
the expired lease back (renewal); once the result is sent it drops it. If the server is
gone, nobody consumes that second queue and after another ``lease_ttl`` its messages
dead-letter to ``.requests``: the task goes back to its method queue.

Threads: pika is not thread-safe, so each process has one I/O thread (an asyncio loop that
owns the one connection) and the caller's threads hand it work; deliveries wait for the
callers in thread-safe inboxes with timeouts. Connections are made lazily, so the object
pickles into a child process and connects there, and reconnect automatically. The
connection, its reconnection and the publishing with confirms are those of
:class:`~colmena_core.queue.amqp.AmqpLink` (which the gateway uses too); this module adds
the campaign's topology, consumers, leases and the hand-offs between threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from multiprocessing import util as mp_util
from typing import Any, Generic, TypeVar

import pika
import pika.exceptions

from colmena_core.exceptions import KillSignalException, MessageTooLargeError, TimeoutException
from colmena_core.models import Result, SerializationMethod
from colmena_core.models.wire import MessageDecodeError, decode_result, encode_result, peek_header
from colmena_core.queue.amqp import (
    AmqpLink,
    ChannelClosedError,
    Publication,
    PublishRefusedError,
    redact_url,
)
from colmena_core.queue.base import ColmenaQueues, QueueRole

__all__ = [
    "BROKER_URL_VARIABLE",
    "DEFAULT_DELIVERY_LIMIT",
    "BrokerConnectionError",
    "CampaignNames",
    "CampaignTopology",
    "DeadLetter",
    "RabbitMQQueues",
    "delete_campaign",
    "list_dead_letters",
    "queue_depths",
]

logger = logging.getLogger(__name__)

BROKER_URL_VARIABLE = "COLMENA_BROKER_URL"
"""Environment variable read for the broker URL when none is given."""

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
"""Broker used when neither an argument nor the environment names one."""

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_COMPLETED_KEPT = 100_000
"""How many finished task IDs a task server remembers to recognise redeliveries."""

_CONTENT_TYPE = "application/vnd.colmena"

# Headers set by this module
_LEASE_HEADER = "colmena-lease"
_TASK_HEADER = "colmena-task-id"
_REASON_HEADER = "colmena-reason"
_ROUTING_KEY_HEADER = "colmena-routing-key"


class BrokerConnectionError(ConnectionError):
    """The broker could not be reached, or did not confirm a message, in time."""


# ------------------------------------------------------------------- names
def _escape_word(text: str) -> str:
    """Make ``text`` one word of a topic routing key (no dots or wildcards)."""
    return text.replace("%", "%25").replace(".", "%2E").replace("*", "%2A").replace("#", "%23")


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_PATTERN.match(value):
        raise ValueError(
            f"{what} must be 1-100 letters, digits, '-' or '_' (starting with a letter or "
            f"digit), not {value!r}"
        )
    return value


@dataclass(frozen=True)
class CampaignNames:
    """Names of the exchanges and queues of one campaign on the broker.

    Args:
        campaign: Name of the campaign (letters, digits, ``-`` and ``_``)
    """

    campaign: str

    def __post_init__(self) -> None:
        _check_name(self.campaign, "A campaign name")

    @property
    def prefix(self) -> str:
        """Prefix of every name of the campaign."""
        return f"colmena.{self.campaign}"

    @property
    def requests_exchange(self) -> str:
        """Direct exchange of the requests (routing key: method name)."""
        return f"{self.prefix}.requests"

    @property
    def unrouted_exchange(self) -> str:
        """Alternate exchange of the requests exchange: requests no method queue took."""
        return f"{self.prefix}.unrouted"

    @property
    def unrouted_queue(self) -> str:
        """Queue of the requests that no method queue took."""
        return f"{self.prefix}.unrouted"

    @property
    def results_exchange(self) -> str:
        """Topic exchange of the results (routing key: ``<client_id>.<topic>``)."""
        return f"{self.prefix}.results"

    @property
    def control_exchange(self) -> str:
        """Fanout exchange of the kill signal."""
        return f"{self.prefix}.control"

    @property
    def heartbeats_exchange(self) -> str:
        """Fanout exchange of the task servers' heartbeats (:mod:`colmena_core.queue.monitor`)."""
        return f"{self.prefix}.heartbeats"

    @property
    def dead_exchange(self) -> str:
        """Fanout exchange of dead letters."""
        return f"{self.prefix}.dead"

    @property
    def dead_letter_queue(self) -> str:
        """Queue keeping the dead letters until someone removes them."""
        return f"{self.prefix}.dead-letters"

    @property
    def leases_exchange(self) -> str:
        """Headers exchange of the leases of long-running tasks."""
        return f"{self.prefix}.leases"

    @property
    def expired_leases_exchange(self) -> str:
        """Headers exchange of the leases that were not renewed in time."""
        return f"{self.prefix}.leases.expired"

    def request_queue(self, method: str) -> str:
        """Queue of the requests for ``method``."""
        if not method:
            raise ValueError("A method name cannot be empty")
        return self._checked(f"{self.prefix}.requests.{method}")

    def result_routing_key(self, client_id: str, topic: str) -> str:
        """Routing key of the results of ``topic`` for ``client_id``."""
        return self._checked(f"{_escape_word(client_id)}.{_escape_word(topic)}")

    def shared_queues(
        self, methods: Iterable[str] = (), clients: Mapping[str, Iterable[str]] | None = None
    ) -> list[str]:
        """The campaign's queues that outlive their users: unrouted requests, dead letters,
        the request queues of ``methods`` and the result queues of ``clients`` (client ID
        to topics). The broker cannot list queues over AMQP, so they are named here."""
        queues = [self.unrouted_queue, self.dead_letter_queue]
        queues += [self.request_queue(m) for m in methods]
        for client, topics in (clients or {}).items():
            queues += [self.result_queue(client, t) for t in topics]
        return queues

    def result_queue(self, client_id: str, topic: str) -> str:
        """Queue of the results of ``topic`` for ``client_id``."""
        return self._checked(f"{self.prefix}.results.{self.result_routing_key(client_id, topic)}")

    def control_queue(self, server_id: str) -> str:
        """Queue where one task server receives the kill signal."""
        return f"{self.prefix}.control.{server_id}"

    def lease_queue(self, server_id: str) -> str:
        """Queue holding the leases of the long tasks of one task server."""
        return f"{self.prefix}.leases.{server_id}"

    def expired_lease_queue(self, server_id: str) -> str:
        """Queue where one task server renews or drops its expired leases."""
        return f"{self.prefix}.leases-expired.{server_id}"

    @staticmethod
    def _checked(name: str) -> str:
        if len(name.encode()) > 255:
            raise ValueError(f"Name longer than the 255 bytes AMQP allows: {name!r}")
        return name


def _quorum_arguments(delivery_limit: int | None, dead_letter_exchange: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
    }
    if delivery_limit is not None:
        arguments["x-delivery-limit"] = delivery_limit
    return arguments


DEFAULT_DELIVERY_LIMIT = 20
"""Deliveries of a request before the broker dead-letters it, unless configured otherwise."""

_RESULT_DELIVERY_LIMIT = 1000
"""Limit on result redeliveries: explicit, as RabbitMQ 4 defaults to 20."""


# ------------------------------------------------------------ local state
T = TypeVar("T")


class _Inbox(Generic[T]):
    """Items waiting for caller threads, with timeouts and a way to wake the waiters."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._changed = threading.Condition()
        self.signals = 0
        """Signals (kills) ready to be raised to one waiter each; guarded by the lock."""

    def put(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify()

    def signal(self) -> None:
        """Make one waiter (now or later) stop waiting and report the signal."""
        with self._changed:
            self.signals += 1
            self._changed.notify_all()

    def take(self, timeout: float | None) -> T | None:
        """Next item, or ``None`` for a signal.

        Raises:
            TimeoutException: nothing arrived within ``timeout`` seconds
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._changed:
            while True:
                if self._items:
                    return self._items.popleft()
                if self.signals:
                    self.signals -= 1
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutException(f"Nothing arrived within {timeout} s")
                self._changed.wait(remaining)

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        with self._changed:
            kept: deque[T] = deque()
            removed: list[T] = []
            for item in self._items:
                (removed if predicate(item) else kept).append(item)
            self._items = kept
            return removed

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)


class _PublishBudget:
    """Bounds the messages (and bytes) waiting for a broker confirm: back-pressure on senders."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._messages = 0
        self._bytes = 0
        self._changed = threading.Condition()

    def acquire(self, size: int, timeout: float | None) -> bool:
        def fits() -> bool:
            if self._messages >= self._max_messages:
                return False
            return self._bytes == 0 or self._bytes + size <= self._max_bytes

        with self._changed:
            if not self._changed.wait_for(fits, timeout):
                return False
            self._messages += 1
            self._bytes += size
            return True

    def release(self, size: int) -> None:
        with self._changed:
            self._messages -= 1
            self._bytes -= size
            self._changed.notify_all()


@dataclass(eq=False)
class _Delivery:
    """A message received on one channel (``generation``), not yet acknowledged."""

    tag: int
    generation: int
    routing_key: str
    properties: Any
    body: bytes
    received: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Held:
    """A request a task server holds, from delivery until its result is confirmed."""

    task_id: str
    body: bytes
    routing_key: str
    properties: Any
    delivery: _Delivery | None
    task: Result | None = None
    """The request decoded, for the caller (decoded once, when it arrives)."""
    leased: bool = False
    leasing: bool = False

    @property
    def reply_to(self) -> str:
        return str(self.properties.reply_to or "")


@dataclass(eq=False)
class _Publish(Publication):
    """A message to publish until the broker confirms it, and who waits for it."""

    waiter: concurrent.futures.Future[bool] | None = None
    """Set (in the I/O thread) to whether the broker returned the message, once confirmed."""
    budget: int | None = None
    """Bytes held in the publish budget, released on confirmation."""


@dataclass(frozen=True)
class _Settings:
    """What a session needs; picklable and immutable."""

    url: str
    names: CampaignNames
    client_id: str
    topics: tuple[str, ...]
    methods: tuple[str, ...] | None
    prefetch: int
    heartbeat: int | None
    delivery_limit: int
    lease_after: float
    lease_ttl: float
    connect_timeout: float
    publish_timeout: float
    max_pending: int
    max_pending_bytes: int


class CampaignTopology:
    """Declares the exchanges and queues of a campaign through an :class:`AmqpLink`.

    Every declaration is idempotent, so each process declares what it needs on each new
    connection, whoever came first. A queue that exists with other arguments (another
    ``delivery_limit``, say) is used as it is, with a warning. Used by
    :class:`RabbitMQQueues` and by the gateway, in the loop of their link.

    Args:
        link: A connected link (declarations use its publishing channel and channels of
            their own)
        names: Names of the campaign
        delivery_limit: Deliveries of a request before the broker dead-letters it
    """

    def __init__(self, link: AmqpLink, names: CampaignNames, delivery_limit: int) -> None:
        self.link = link
        self.names = names
        self.delivery_limit = delivery_limit

    async def declare_queue(
        self, name: str, arguments: dict[str, Any], durable: bool = True
    ) -> None:
        """Declare a queue; if it exists with other arguments, use it as it is."""
        channel = await self.link.open_channel()
        try:
            await self.link.rpc(
                channel, "queue_declare", queue=name, durable=durable, arguments=arguments
            )
        except ChannelClosedError as exc:
            if exc.reply_code != 406:
                raise
            logger.warning(
                "Queue %s exists with other settings than %s; using it as it is", name, arguments
            )
            channel = await self.link.open_channel()
            await self.link.rpc(channel, "queue_declare", queue=name, passive=True)
        finally:
            if channel.is_open:
                channel.close()

    async def declare_common(self) -> None:
        """The exchanges, the dead letters and the queue of unrouted requests."""
        names, channel = self.names, self.link.channel
        exchanges = [
            (names.unrouted_exchange, "fanout", None),
            (names.requests_exchange, "direct", {"alternate-exchange": names.unrouted_exchange}),
            (names.results_exchange, "topic", None),
            (names.control_exchange, "fanout", None),
            (names.dead_exchange, "fanout", None),
            (names.leases_exchange, "headers", None),
            (names.expired_leases_exchange, "headers", None),
        ]
        for exchange, kind, arguments in exchanges:
            await self.link.rpc(
                channel,
                "exchange_declare",
                exchange=exchange,
                exchange_type=kind,
                durable=True,
                arguments=arguments,
            )
        await self.declare_queue(names.dead_letter_queue, {"x-queue-type": "classic"})
        await self.link.rpc(
            channel, "queue_bind", queue=names.dead_letter_queue, exchange=names.dead_exchange
        )
        arguments = _quorum_arguments(self.delivery_limit, names.dead_exchange)
        await self.declare_queue(names.unrouted_queue, arguments)
        await self.link.rpc(
            channel, "queue_bind", queue=names.unrouted_queue, exchange=names.unrouted_exchange
        )

    async def declare_request_queues(self, methods: Iterable[str]) -> None:
        """The request queue of each method, bound to the requests exchange."""
        arguments = _quorum_arguments(self.delivery_limit, self.names.dead_exchange)
        for method in methods:
            queue = self.names.request_queue(method)
            await self.declare_queue(queue, arguments)
            await self.link.rpc(
                self.link.channel,
                "queue_bind",
                queue=queue,
                exchange=self.names.requests_exchange,
                routing_key=method,
            )

    async def declare_client(
        self, client_id: str, topics: Iterable[str], methods: Iterable[str] = ()
    ) -> None:
        """The result queues of a client, and the request queues of the methods it uses."""
        arguments = _quorum_arguments(_RESULT_DELIVERY_LIMIT, self.names.dead_exchange)
        for topic in topics:
            queue = self.names.result_queue(client_id, topic)
            await self.declare_queue(queue, arguments)
            await self.link.rpc(
                self.link.channel,
                "queue_bind",
                queue=queue,
                exchange=self.names.results_exchange,
                routing_key=self.names.result_routing_key(client_id, topic),
            )
        await self.declare_request_queues(methods)


# ----------------------------------------------------------------- session
class _Session:
    """The broker connection of one process: an I/O thread with an asyncio loop.

    Everything touching pika runs in the loop, where an :class:`~colmena_core.queue.amqp.AmqpLink`
    owns the connection and publishes with confirms; the session adds the campaign's
    topology, its consumers, the leases of long tasks and the hand-offs to caller threads.
    Caller threads use the public methods, which hand work over with
    ``call_soon_threadsafe`` and wait on futures or inboxes.
    """

    def __init__(self, settings: _Settings, role: QueueRole) -> None:
        self.settings = settings
        self.names = settings.names
        self.role = role
        self.pid = os.getpid()
        self.server_id = uuid.uuid4().hex[:12]
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"colmena-rabbitmq-{settings.client_id[:8]}", daemon=True
        )
        self.link = AmqpLink(
            settings.url,
            connect_timeout=settings.connect_timeout,
            heartbeat=settings.heartbeat,
            max_unconfirmed=settings.max_pending,
            label=f"Campaign {self.names.campaign}",
            on_connected=self._on_connected,
            on_ready=self._on_ready,
            on_lost=self._on_lost,
        )
        self.topology = CampaignTopology(self.link, self.names, settings.delivery_limit)
        # Shared with callers (thread-safe objects)
        self.result_inboxes: dict[str, _Inbox[_Delivery]] = {t: _Inbox() for t in settings.topics}
        self.request_inbox: _Inbox[_Held] = _Inbox()
        self.budget = _PublishBudget(settings.max_pending, settings.max_pending_bytes)
        self.first_ready = threading.Event()
        self._flags_lock = threading.Lock()
        self._want_results = False
        self._server_wanted = False
        self._served: frozenset[str] | None = None
        # Loop-thread state
        self._closing = False
        self._deleting_private = False
        self._results_consuming = -1
        self._server_ready = -1
        self._serving = -1
        self._serving_stopped = False
        self._control_declared = -1
        self._request_tags: list[str] = []
        self._request_prefetch = 0
        self._reconsuming = False
        self._held: dict[str, _Held] = {}
        self._completed: OrderedDict[str, None] = OrderedDict()
        self._leased = 0
        self._background: set[asyncio.Task[Any]] = set()
        # Hand-offs from caller threads, run by one loop wake-up per burst (see _call)
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._calls_lock = threading.Lock()
        self._calls_scheduled = False
        self._thread.start()
        self._call(self.link.start, self.loop)
        self._call(self._spawn, self._housekeeping())

    @property
    def last_error(self) -> str | None:
        """Why the connection failed or was lost last (``None`` while connected)."""
        return self.link.last_error

    # ================================================== caller-thread API
    def _call(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in the I/O thread, in the order of the calls.

        Waking the loop costs a write to its self-pipe and a pass of the loop: calls made
        while a wake-up is pending join it instead of asking for another.
        """
        with self._calls_lock:
            self._calls.append((function, args))
            if self._calls_scheduled:
                return
            self._calls_scheduled = True
        self.loop.call_soon_threadsafe(self._run_calls)

    def _run_calls(self) -> None:
        while True:
            with self._calls_lock:
                calls, self._calls = self._calls, []
                if not calls:
                    self._calls_scheduled = False
                    return
            for function, args in calls:
                try:
                    function(*args)
                except Exception:
                    logger.exception("Work handed to the broker connection failed")

    def _run_coroutine(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerConnectionError(
                f"The broker did not answer within {timeout} s"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            ) from None

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for the first connection to the broker.

        Raises:
            BrokerConnectionError: no connection within the timeout
        """
        timeout = self.settings.connect_timeout if timeout is None else timeout
        if not self.first_ready.wait(timeout):
            raise BrokerConnectionError(
                f"Could not connect to the RabbitMQ broker at {redact_url(self.settings.url)} within "
                f"{timeout} s: {self.last_error or 'no answer'}"
            )

    @property
    def connected(self) -> bool:
        return self.link.connected

    def set_role(self, role: QueueRole) -> None:
        with self._flags_lock:
            self.role = role

    def want_results(self) -> None:
        """Start consuming this client's result queues (idempotent)."""
        with self._flags_lock:
            if self._want_results:
                return
            self._want_results = True
        self._call(self._kick)

    def set_served(self, served: frozenset[str] | None) -> None:
        """Set the methods to serve, unless serving already started."""
        with self._flags_lock:
            if not self._server_wanted:
                self._served = served

    def want_server(self) -> None:
        """Start consuming requests and the kill signal (idempotent)."""
        with self._flags_lock:
            if self._server_wanted:
                return
            self._server_wanted = True
        self._call(self._kick)

    def publish(self, message: _Publish, wait: bool = False) -> bool:
        """Hand a message to the I/O thread; optionally wait for its confirmation.

        Returns:
            Whether the broker returned the message as unroutable (only known when waiting)
        Raises:
            BrokerConnectionError: no room to queue the message, or no confirmation, in time
        """
        timeout = self.settings.publish_timeout
        if message.budget is not None and not self.budget.acquire(message.budget, timeout):
            raise BrokerConnectionError(
                f"{self.settings.max_pending} messages are waiting for the broker to confirm "
                f"them and none was confirmed within {timeout} s"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        if wait:
            message.waiter = concurrent.futures.Future()
        self._call(self._enqueue, message)
        if message.waiter is None:
            return False
        try:
            return message.waiter.result(timeout)
        except concurrent.futures.TimeoutError:
            self._call(self._abandon, message)
            raise BrokerConnectionError(
                f"The broker did not confirm a message within {timeout} s"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            ) from None

    def ack(self, delivery: _Delivery) -> None:
        self._call(self._settle, delivery, True, False)

    def take_request(self, timeout: float | None) -> _Held:
        entry = self.request_inbox.take(timeout)
        if entry is None:
            raise KillSignalException()
        return entry

    def publish_result(self, task_id: str, topic: str, message: bytes) -> None:
        budget = len(message)
        if not self.budget.acquire(budget, self.settings.publish_timeout):
            raise BrokerConnectionError(
                f"No result was confirmed by the broker within {self.settings.publish_timeout} s"
            )
        self._call(self._publish_result, task_id, topic, message, budget)

    def flush(self, queues: Collection[str]) -> None:
        self._run_coroutine(self._flush(list(queues)), self.settings.publish_timeout)

    def shutdown(self, timeout: float) -> None:
        """Wait for pending confirms (up to ``timeout``), close the connection, end the thread."""
        if os.getpid() != self.pid or not self._thread.is_alive():
            return
        if threading.current_thread() is self._thread:  # garbage-collected in the I/O thread
            self._spawn(self._close(timeout)).add_done_callback(lambda _: self.loop.stop())
            return
        with contextlib.suppress(BrokerConnectionError, concurrent.futures.CancelledError):
            self._run_coroutine(self._close(timeout), timeout + 10)
        self._call(self.loop.stop)
        self._thread.join(timeout + 10)

    # ==================================================== loop: plumbing
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None and not self._closing:
            error = task.exception()
            if not isinstance(error, ChannelClosedError):
                logger.error("Background work on the broker connection failed", exc_info=error)

    def _on_cancelled_by_broker(self, frame: Any) -> None:
        """A queue we consume went away: reconnect, which declares it again."""
        if self._closing or self._deleting_private:
            return
        self.link.reconnect(f"The broker cancelled consumer {frame.method.consumer_tag}")

    # =============================================== loop: connection life
    async def _on_connected(self) -> None:
        """Declare the topology on a new connection, before anything is published."""
        self.link.channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        await self.topology.declare_common()
        with self._flags_lock:
            role = self.role
        if role is not QueueRole.SERVER:
            settings = self.settings
            await self.topology.declare_client(
                settings.client_id, settings.topics, settings.methods or ()
            )
        if role is not QueueRole.CLIENT:
            await self._declare_control()

    def _on_ready(self) -> None:
        self.first_ready.set()
        self._kick()

    def _on_lost(self) -> None:
        """Forget the deliveries and consumers of a lost connection."""
        self._request_tags = []
        self._request_prefetch = 0
        generation = self.link.generation
        # Unacknowledged deliveries of the lost channel come back from the broker
        for inbox in self.result_inboxes.values():
            inbox.remove_if(lambda d: d.generation == generation)
        dropped = self.request_inbox.remove_if(
            lambda e: (
                not e.leased and e.delivery is not None and e.delivery.generation == generation
            )
        )
        for entry in dropped:
            self._held.pop(entry.task_id, None)

    async def _close(self, timeout: float) -> None:
        link = self.link
        deadline = self.loop.time() + timeout
        serving = link.connected and self._serving == link.generation
        if serving:
            with contextlib.suppress(ChannelClosedError):
                await self._stop_serving()
        if not await link.drain(deadline - self.loop.time()):
            logger.error("Closing with %d messages the broker has not confirmed", link.pending)
        private = []
        if serving:
            private += [
                self.names.lease_queue(self.server_id),
                self.names.expired_lease_queue(self.server_id),
            ]
        if self._control_declared == link.generation:
            private.append(self.names.control_queue(self.server_id))
        # Deleting a queue this session consumes makes the broker cancel the consumer: that
        # is expected now, not a reason to reconnect
        self._deleting_private = True
        for queue in private:
            with contextlib.suppress(ChannelClosedError, TimeoutError):
                await asyncio.wait_for(link.rpc(link.channel, "queue_delete", queue=queue), 5)
        self._closing = True
        await link.close()

    # ================================================== loop: topology
    def _idle_expiry_ms(self) -> int:
        """How long an abandoned per-server queue outlives its server."""
        return int(max(600.0, 10 * self.settings.lease_ttl) * 1000)

    async def _declare_control(self) -> None:
        queue = self.names.control_queue(self.server_id)
        await self.topology.declare_queue(
            queue, {"x-queue-type": "classic", "x-expires": self._idle_expiry_ms()}
        )
        await self.link.rpc(
            self.link.channel, "queue_bind", queue=queue, exchange=self.names.control_exchange
        )
        self._control_declared = self.link.generation

    async def _declare_leases(self) -> None:
        names, ttl = self.names, int(self.settings.lease_ttl * 1000)
        binding = {"x-match": "all", _LEASE_HEADER: self.server_id}
        for queue, exchange, target in (
            (
                names.lease_queue(self.server_id),
                names.leases_exchange,
                names.expired_leases_exchange,
            ),
            (
                names.expired_lease_queue(self.server_id),
                names.expired_leases_exchange,
                names.requests_exchange,
            ),
        ):
            arguments = _quorum_arguments(None, target)
            arguments.update({"x-message-ttl": ttl, "x-expires": self._idle_expiry_ms()})
            await self.topology.declare_queue(queue, arguments)
            await self.link.rpc(
                self.link.channel, "queue_bind", queue=queue, exchange=exchange, arguments=binding
            )

    # ================================================ loop: consumers
    def _kick(self) -> None:
        """Start the consumers that callers asked for since the last connection."""
        if not self.link.connected or self._closing:
            return
        with self._flags_lock:
            want_results, want_server = self._want_results, self._server_wanted
        if want_results and self._results_consuming != self.link.generation:
            self._results_consuming = self.link.generation
            self._spawn(self._consume_results())
        if want_server and self._server_ready != self.link.generation:
            self._server_ready = self.link.generation
            self._spawn(self._start_serving())

    async def _consume(self, queue: str, callback: Callable[..., None], prefetch: int) -> str:
        await self.link.rpc(self.link.channel, "basic_qos", prefetch_count=prefetch)
        frame = await self.link.rpc(
            self.link.channel, "basic_consume", queue=queue, on_message_callback=callback
        )
        return str(frame.method.consumer_tag)

    async def _consume_results(self) -> None:
        for topic in self.settings.topics:
            queue = self.names.result_queue(self.settings.client_id, topic)
            await self._consume(queue, partial(self._on_result, topic), self.settings.prefetch)

    async def _start_serving(self) -> None:
        generation = self.link.generation
        with self._flags_lock:
            served = self._served
        await self.topology.declare_request_queues(sorted(served or ()))
        await self._declare_leases()
        if self._control_declared != generation:
            await self._declare_control()
        await self._consume(
            self.names.expired_lease_queue(self.server_id),
            self._on_expired_lease,
            self.settings.prefetch,
        )
        await self._consume(self.names.control_queue(self.server_id), self._on_control, 1)
        self._serving = generation
        await self._update_request_consumers()

    def _request_queues(self) -> list[str]:
        with self._flags_lock:
            served = self._served
        return [self.names.request_queue(m) for m in sorted(served or ())] + [
            self.names.unrouted_queue
        ]

    async def _update_request_consumers(self) -> None:
        """Consume requests with a prefetch of the capacity not taken by leased tasks.

        Leased tasks no longer count against the broker's prefetch window, so the window
        of the consumers shrinks by their number; when it reaches zero they are cancelled.
        """
        if self._reconsuming:
            return
        self._reconsuming = True
        try:
            while (
                self.link.connected
                and self._serving == self.link.generation
                and not self._serving_stopped
            ):
                wanted = max(self.settings.prefetch - self._leased, 0)
                if wanted == self._request_prefetch and (self._request_tags or wanted == 0):
                    return
                for tag in self._request_tags:
                    await self.link.rpc(self.link.channel, "basic_cancel", consumer_tag=tag)
                self._request_tags = []
                self._request_prefetch = wanted
                if wanted:
                    for queue in self._request_queues():
                        tag = await self._consume(queue, partial(self._on_request, queue), wanted)
                        self._request_tags.append(tag)
        finally:
            self._reconsuming = False

    async def _stop_serving(self) -> None:
        """Stop taking requests; give back those not started; keep long tasks' work safe."""
        self._serving_stopped = True
        with contextlib.suppress(ChannelClosedError):
            for tag in self._request_tags:
                await self.link.rpc(self.link.channel, "basic_cancel", consumer_tag=tag)
        self._request_tags = []
        for entry in self.request_inbox.remove_if(lambda e: True):
            self._held.pop(entry.task_id, None)
            self._release(entry, ack=False)
            if entry.leased:
                self._republish_request(entry.routing_key, entry.properties, entry.body, None)
        for entry in list(self._held.values()):
            if entry.leased:  # still running: its lease queue is about to be deleted
                self._republish_request(entry.routing_key, entry.properties, entry.body, None)

    # ======================================== loop: receiving messages
    def _settle(self, delivery: _Delivery, ack: bool, requeue: bool) -> None:
        channel = self.link.channel
        if delivery.generation != self.link.generation or channel is None or not channel.is_open:
            return  # the broker already gave it back when that channel closed
        if ack:
            channel.basic_ack(delivery.tag)
        else:
            channel.basic_nack(delivery.tag, requeue=requeue)

    def _release(self, entry: _Held, ack: bool = True) -> None:
        """Acknowledge (or give back) the delivery a held request came with, once."""
        delivery, entry.delivery = entry.delivery, None
        if delivery is not None:
            self._settle(delivery, ack, not ack)

    def _delivery(self, method: Any, properties: Any, body: bytes) -> _Delivery:
        return _Delivery(
            method.delivery_tag, self.link.generation, method.routing_key, properties, body
        )

    def _on_result(
        self, topic: str, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        self.result_inboxes[topic].put(self._delivery(method, properties, body))

    def _on_control(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        logger.info("Kill signal received; it takes effect once the queued requests are taken")
        self._spawn(self._signal_kill_when_drained())

    async def _signal_kill_when_drained(self) -> None:
        """Raise the kill signal to a caller once no request queued before it is waiting."""
        while not self._closing:
            try:
                await self.link.wait_ready()
                if not len(self.request_inbox):
                    waiting = 0
                    for queue in self._request_queues():
                        frame = await self.link.rpc(
                            self.link.channel, "queue_declare", queue=queue, passive=True
                        )
                        waiting += frame.method.message_count
                    if not waiting and not len(self.request_inbox):
                        break
            except ChannelClosedError:
                pass
            await asyncio.sleep(0.05)
        self.request_inbox.signal()

    def _expired_leases(self, properties: Any) -> int:
        """How often servers that held this request stopped before finishing it."""
        prefix = self.names.expired_lease_queue("")
        count = 0
        for death in (properties.headers or {}).get("x-death") or []:
            if death.get("reason") == "expired" and str(death.get("queue", "")).startswith(prefix):
                count += int(death.get("count", 1))
        return count

    def _on_request(
        self, queue: str, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        delivery = self._delivery(method, properties, body)
        try:
            header = decode_result(body)
        except MessageDecodeError as exc:
            logger.warning("Dead-lettering an undecodable request from %s: %s", queue, exc)
            self._settle(delivery, False, False)
            return
        if self._expired_leases(properties) >= self.settings.delivery_limit:
            logger.error(
                "Dead-lettering task %s: its task servers stopped too often", header.task_id
            )
            self._settle(delivery, False, False)
            return
        task_id = header.task_id
        if task_id in self._completed:
            self._settle(delivery, True, False)  # its result is already confirmed
            return
        entry = self._held.get(task_id)
        if entry is not None:  # a copy of a request we hold: keep one unacknowledged copy
            current = entry.delivery
            if entry.leased or (current is not None and current.generation == self.link.generation):
                self._settle(delivery, True, False)
            else:
                entry.delivery = delivery
            return
        entry = _Held(task_id, body, method.routing_key, properties, delivery, header)
        self._held[task_id] = entry
        with self._flags_lock:
            served = self._served
        if (
            queue == self.names.unrouted_queue
            and served is not None
            and header.method is not None
            and header.method not in served
        ):
            self._spawn(self._reroute(entry, header.method))
        else:
            self.request_inbox.put(entry)

    async def _reroute(self, entry: _Held, method: str) -> None:
        """Send a request that came unrouted to its method queue, if one appeared since."""
        exists = False
        with contextlib.suppress(ChannelClosedError):
            channel = await self.link.open_channel()
            try:
                await self.link.rpc(
                    channel, "queue_declare", queue=self.names.request_queue(method), passive=True
                )
                exists = True
            finally:
                if channel.is_open:
                    channel.close()
        if not exists:  # no server serves it: ours reports the failure
            self.request_inbox.put(entry)
            return
        logger.info("Rerouting task %s to the queue of method %s", entry.task_id, method)

        def done(returned: bool) -> None:
            if self._held.get(entry.task_id) is entry:
                del self._held[entry.task_id]
            self._release(entry)

        self._republish_request(entry.routing_key, entry.properties, entry.body, done)

    def _republish_request(
        self, routing_key: str, properties: Any, body: bytes, done: Callable[[bool], None] | None
    ) -> None:
        headers = {
            k: v
            for k, v in (properties.headers or {}).items()
            if k not in (_LEASE_HEADER, _TASK_HEADER)
        }
        self._enqueue(
            _Publish(
                self.names.requests_exchange,
                routing_key,
                body,
                _copy_properties(properties, headers),
                on_confirm=done,
            )
        )

    def _on_expired_lease(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        delivery = self._delivery(method, properties, body)
        task_id = str((properties.headers or {}).get(_TASK_HEADER, ""))
        entry = self._held.get(task_id)
        if entry is not None and entry.leased:  # still running: renew the lease
            self._publish_lease(entry, delivery)
        elif task_id in self._completed:
            self._settle(delivery, True, False)
        else:  # we lost track of it: give it back rather than lose it
            self._republish_request(
                method.routing_key, properties, body, lambda _: self._settle(delivery, True, False)
            )

    def _publish_lease(self, entry: _Held, settle: _Delivery | None) -> None:
        """Publish a lease for ``entry``; then acknowledge ``settle`` (the message it replaces)."""
        headers = dict(entry.properties.headers or {})
        headers.update({_LEASE_HEADER: self.server_id, _TASK_HEADER: entry.task_id})

        def confirmed(returned: bool) -> None:
            entry.leasing = False
            if returned:  # its lease queue is gone: keep holding what we have
                logger.error("The lease of task %s could not be routed", entry.task_id)
                return
            if settle is not None:
                self._settle(settle, True, False)
            if self._held.get(entry.task_id) is not entry:
                return  # finished meanwhile: this lease is dropped when it expires
            if not entry.leased:
                entry.leased = True
                self._leased += 1
                self._spawn(self._update_request_consumers())
            self._release(entry)

        entry.leasing = True
        self._enqueue(
            _Publish(
                self.names.leases_exchange,
                entry.routing_key,
                entry.body,
                _copy_properties(entry.properties, headers),
                mandatory=True,
                on_confirm=confirmed,
            )
        )

    # =============================================== loop: sending results
    def _publish_result(self, task_id: str, topic: str, message: bytes, budget: int | None) -> None:
        entry = self._held.get(task_id)
        if entry is None:
            logger.warning(
                "Result of task %s that this server did not receive: sending it to %s",
                task_id,
                self.settings.client_id,
            )
            reply_to = self.settings.client_id
        else:
            reply_to = entry.reply_to
        routing_key = self.names.result_routing_key(reply_to, topic)
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type=_CONTENT_TYPE,
            correlation_id=task_id,
            timestamp=int(time.time()),
        )
        publish = _Publish(
            self.names.results_exchange,
            routing_key,
            message,
            properties,
            mandatory=True,
            budget=budget,
        )
        publish.on_confirm = partial(self._result_confirmed, task_id, publish)
        publish.on_failed = partial(self._result_refused, task_id, topic, publish)
        self._enqueue(publish)

    def _result_refused(
        self, task_id: str, topic: str, publish: _Publish, error: BaseException
    ) -> None:
        """Send a failure saying why in place of a result the broker does not take."""
        if not isinstance(error, PublishRefusedError):
            return  # closing: the request stays unacknowledged and runs again elsewhere
        logger.error("The broker refused the result of task %s: %s", task_id, error)
        refusal = _refusal(publish.body, error)
        if refusal is not None:  # small: outside the publish budget, which would block here
            self._publish_result(task_id, topic, refusal[1], None)

    def _request_refused(self, publish: _Publish, error: BaseException) -> None:
        """Give the sender a failure result for a request the broker does not take."""
        if not isinstance(error, PublishRefusedError):
            return
        refusal = _refusal(publish.body, error)
        if refusal is None:
            return
        failure, message = refusal
        logger.error("The broker refused the request of task %s: %s", failure.task_id, error)
        inbox = self.result_inboxes.get(failure.topic)
        if inbox is not None:  # a delivery of no channel: nothing to acknowledge
            inbox.put(_Delivery(0, -1, "", None, message))

    def _result_confirmed(self, task_id: str, publish: _Publish, returned: bool) -> None:
        if returned:
            logger.error(
                "No queue takes the result of task %s (routing key %s): dead-lettering it",
                task_id,
                publish.routing_key,
            )
            headers = {
                _REASON_HEADER: "unroutable-result",
                _ROUTING_KEY_HEADER: publish.routing_key,
                _TASK_HEADER: task_id,
            }
            self._enqueue(
                _Publish(
                    self.names.dead_exchange,
                    publish.routing_key,
                    publish.body,
                    _copy_properties(publish.properties, headers),
                )
            )
        entry = self._held.pop(task_id, None)
        self._completed[task_id] = None
        if len(self._completed) > _COMPLETED_KEPT:
            self._completed.popitem(last=False)
        if entry is None:
            return
        self._release(entry)
        if entry.leased:
            self._leased -= 1
            self._spawn(self._update_request_consumers())

    # ================================================= loop: publishing
    def _enqueue(self, publish: _Publish) -> None:
        """Publish through the link; the budget and the waiter are settled on confirmation."""
        publish.on_confirm = partial(self._confirmed, publish, publish.on_confirm)
        publish.on_failed = partial(self._failed, publish, publish.on_failed)
        self.link.publish(publish)

    def _failed(
        self,
        publish: _Publish,
        then: Callable[[BaseException], None] | None,
        error: BaseException,
    ) -> None:
        self._release_budget(publish)
        try:
            if then is not None:
                then(error)
        finally:
            if publish.waiter is not None and not publish.waiter.done():
                publish.waiter.set_exception(BrokerConnectionError(str(error)))

    def _confirmed(
        self, publish: _Publish, then: Callable[[bool], None] | None, returned: bool
    ) -> None:
        self._release_budget(publish)
        try:
            if then is not None:
                then(returned)
        finally:
            if publish.waiter is not None and not publish.waiter.done():
                publish.waiter.set_result(returned)

    def _release_budget(self, publish: _Publish) -> None:
        if publish.budget is not None:
            self.budget.release(publish.budget)
            publish.budget = None

    def _abandon(self, publish: _Publish) -> None:
        """Forget a message whose sender stopped waiting, unless it is already on the wire."""
        if self.link.abandon(publish):
            self._release_budget(publish)

    # ================================================ loop: housekeeping
    async def _housekeeping(self) -> None:
        """Lease requests held too long, give back stale results, keep private queues alive."""
        settings = self.settings
        period = min(max(min(settings.lease_after, settings.lease_ttl) / 4, 0.05), 30.0)
        redeclare_every = min(settings.lease_ttl, 60.0)
        last_redeclare = self.loop.time()
        while not self._closing:
            await asyncio.sleep(period)
            if not self.link.connected:
                continue
            now = time.monotonic()
            for entry in list(self._held.values()):
                delivery = entry.delivery
                if (
                    delivery is not None
                    and not entry.leased
                    and not entry.leasing
                    and delivery.generation == self.link.generation
                    and now - delivery.received > settings.lease_after
                ):
                    logger.info("Task %s is held for long: moving it to a lease", entry.task_id)
                    self._publish_lease(entry, None)
            for inbox in self.result_inboxes.values():
                for stale in inbox.remove_if(partial(_older_than, now - settings.lease_after)):
                    self._settle(stale, False, True)
            if self.loop.time() - last_redeclare > redeclare_every:
                last_redeclare = self.loop.time()
                with contextlib.suppress(ChannelClosedError):
                    if self._control_declared == self.link.generation:
                        await self._declare_control()
                    if self._server_ready == self.link.generation:
                        await self._declare_leases()

    async def _flush(self, queues: list[str]) -> None:
        await self.link.wait_ready()
        await self.link.wait_confirmed(self.settings.publish_timeout)
        for queue in queues:
            with contextlib.suppress(ChannelClosedError):
                channel = await self.link.open_channel()
                try:
                    await self.link.rpc(channel, "queue_purge", queue=queue)
                finally:
                    if channel.is_open:
                        channel.close()
        for inbox in self.result_inboxes.values():
            for delivery in inbox.remove_if(lambda d: True):
                self._settle(delivery, True, False)
        for entry in self.request_inbox.remove_if(lambda e: True):
            self._held.pop(entry.task_id, None)
            self._completed[entry.task_id] = None  # its lease, if any, must not bring it back
            self._release(entry)
            if entry.leased:
                self._leased -= 1
        self._spawn(self._update_request_consumers())


def _refusal(body: bytes, error: BaseException) -> tuple[Result, bytes] | None:
    """A task's failure because the broker refused ``body`` (its request or result), without
    the payloads that made it too large, and its message; ``None`` if undecodable."""
    try:
        result = decode_result(body)
    except MessageDecodeError:
        logger.exception("Could not decode a message the broker refused")
        return None
    result.drop_payloads(inputs=True)
    result.set_failure(MessageTooLargeError(str(error)))
    return result, encode_result(result)


def _older_than(moment: float, delivery: _Delivery) -> bool:
    return delivery.received < moment


def _copy_properties(properties: Any, headers: dict[str, Any] | None) -> Any:
    """Properties of a message with other headers (x-death and friends are kept as given)."""
    return pika.BasicProperties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers,
        delivery_mode=2,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=None,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        type=properties.type,
        user_id=None,
        app_id=properties.app_id,
    )


# The per-process session of each queue object; reset in a forked child before first use
_FORK_LOCK = threading.Lock()


def _reset_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_fork_lock)


# ------------------------------------------------------------------ queues
class RabbitMQQueues(ColmenaQueues):
    """Queues on a RabbitMQ broker, shared by the thinkers and task servers of a campaign.

    Requests are routed by method, so a task server takes only the methods it serves and
    several task servers serving one method share its work; results go back to the client
    (thinker) that sent the task, by ``client_id`` and topic. The object connects on first
    use, so it can be pickled into another process, which connects on its own; it is safe
    to use from many threads. See the module documentation for the delivery guarantees.

    Args:
        topics: Names of topics that are known for this queue
        url: Broker URL, ``amqp://user:password@host:port/vhost``; defaults to the
            ``COLMENA_BROKER_URL`` environment variable, else ``amqp://localhost``
        campaign: Name of the campaign; campaigns sharing a broker are isolated
        client_id: Stable name of this client. Results are kept for it while it is away:
            a thinker that may restart must pass the same ``client_id`` each time (the
            default is a new random one)
        methods: Method names of the campaign. A client declares their request queues
            up front, so requests sent before any task server starts wait there; a task
            server serves these unless it declares its own (see :meth:`prepare_server`)
        serialization_method: Method used to serialize task inputs and results
        keep_inputs: Whether to return task inputs with the result object
        proxystore_name: Name of a registered ProxyStore store, or a mapping of topic to name
        proxystore_threshold: Size in bytes above which objects travel by proxy, or a
            mapping of topic to threshold
        prefetch: Requests a task server holds at once (set it to the capacity of its
            workers), and results a client buffers per topic
        heartbeat: AMQP heartbeat in seconds (``None``: the broker's proposal)
        delivery_limit: Deliveries of a request before the broker dead-letters it (a task
            that keeps killing its task servers); every process of a campaign should use
            the same value
        lease_after: Seconds a task server holds a request unacknowledged before moving it
            to a lease; must be below the broker's ``consumer_timeout`` (30 min by default)
        lease_ttl: Seconds a lease lasts without renewal: a long task of a crashed task
            server returns to its queue about twice this long after the crash
        connect_timeout: Seconds to wait for the first connection before raising
        publish_timeout: Seconds a sender waits for room among unconfirmed messages
        max_pending: Messages that may wait for a broker confirmation at once
        max_pending_bytes: Bytes that may wait for a broker confirmation at once
        max_message_size: Largest message, in bytes: RabbitMQ's ``max_message_size``
            (128 MiB unless the broker is configured otherwise). The broker closes the
            channel of a publisher that exceeds it, so larger tasks are refused before they
            are sent (see :attr:`ColmenaQueues.max_message_size`). Should the broker's limit
            be lower, the connection learns it from the first refusal, and each task above
            it gets a failure result
    """

    _LOCAL_STATE = (*ColmenaQueues._LOCAL_STATE, "_session", "_session_pid")

    def __init__(
        self,
        topics: Collection[str] = (),
        url: str | None = None,
        campaign: str = "default",
        client_id: str | None = None,
        methods: Collection[str] | None = None,
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        proxystore_name: str | dict[str, str] | None = None,
        proxystore_threshold: int | dict[str, int] | None = None,
        prefetch: int = 64,
        heartbeat: int | None = 60,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        lease_after: float = 600.0,
        lease_ttl: float = 300.0,
        connect_timeout: float = 30.0,
        publish_timeout: float = 300.0,
        max_pending: int = 1000,
        max_pending_bytes: int = 256 * 2**20,
        max_message_size: int | None = 128 * 2**20,
    ) -> None:
        super().__init__(
            topics, serialization_method, keep_inputs, proxystore_name, proxystore_threshold
        )
        if isinstance(methods, str):
            raise ValueError("methods must be a collection of names, not a single string")
        if prefetch < 1 or delivery_limit < 1 or max_pending < 1:
            raise ValueError("prefetch, delivery_limit and max_pending must be at least 1")
        if lease_after <= 0 or lease_ttl <= 0:
            raise ValueError("lease_after and lease_ttl must be positive")
        names = CampaignNames(campaign)
        client_id = _check_name(client_id or uuid.uuid4().hex, "A client_id")
        for method in methods or ():
            names.request_queue(method)
        for topic in self.topics:
            names.result_queue(client_id, topic)
        self._settings = _Settings(
            url=url or os.environ.get(BROKER_URL_VARIABLE) or DEFAULT_BROKER_URL,
            names=names,
            client_id=client_id,
            topics=tuple(sorted(self.topics)),
            methods=None if methods is None else tuple(sorted(set(methods))),
            prefetch=prefetch,
            heartbeat=heartbeat,
            delivery_limit=delivery_limit,
            lease_after=lease_after,
            lease_ttl=lease_ttl,
            connect_timeout=connect_timeout,
            publish_timeout=publish_timeout,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
        )
        self._served: frozenset[str] | None = None if methods is None else frozenset(methods)
        self.max_message_size = max_message_size

    def _init_local_state(self) -> None:
        super()._init_local_state()
        self._session: _Session | None = None
        self._session_pid = os.getpid()

    # ------------------------------------------------------------- facts
    @property
    def url(self) -> str:
        """URL of the broker."""
        return self._settings.url

    @property
    def campaign(self) -> str:
        """Name of the campaign."""
        return self._settings.names.campaign

    @property
    def client_id(self) -> str:
        """Name of this client, which its results are addressed to."""
        return self._settings.client_id

    @property
    def names(self) -> CampaignNames:
        """Names of the campaign's exchanges and queues."""
        return self._settings.names

    @property
    def is_connected(self) -> bool:
        """Whether this process is connected to the broker now."""
        session = self._session if self._session_pid == os.getpid() else None
        return session is not None and session.connected

    # ------------------------------------------------------ connection
    def _get_session(self) -> _Session:
        if self._session_pid != os.getpid():  # a forked copy: the parent's thread is not here
            self._session, self._session_pid = None, os.getpid()
        session = self._session
        if session is not None:
            return session
        with _FORK_LOCK:
            if self._session is None:
                session = _Session(self._settings, self.role)
                session.set_served(self._served)
                mp_util.Finalize(self, session.shutdown, args=(10.0,), exitpriority=10)
                self._session = session
            return self._session

    def connect(self, timeout: float | None = None) -> None:
        """Connect to the broker now rather than on first use.

        Raises:
            BrokerConnectionError: no connection within ``timeout`` (default: ``connect_timeout``)
        """
        self._get_session().wait_connected(timeout)

    def disconnect(self, timeout: float = 30.0) -> None:
        """Wait until the broker confirmed every message sent, then close the connection.

        The object stays usable: it connects again on next use. A task server gives back
        the requests it has not started.
        """
        if self._session_pid != os.getpid():
            self._session, self._session_pid = None, os.getpid()
        session, self._session = self._session, None
        if session is not None:
            session.shutdown(timeout)

    close = disconnect

    def set_role(self, role: QueueRole | str) -> None:
        """Define the role of this queue (a server never consumes results)."""
        super().set_role(role)
        if self._session is not None and self._session_pid == os.getpid():
            self._session.set_role(self.role)

    def prepare_server(self, method_names: Collection[str]) -> None:
        """Serve the requests of these methods (called by the task server before its first task)."""
        for method in method_names:
            self.names.request_queue(method)
        self._served = frozenset(method_names)
        session = self._session if self._session_pid == os.getpid() else None
        if session is not None:
            session.set_served(self._served)

    # ------------------------------------------------------- transport
    def _send_request(self, message: bytes, method: str | None, topic: str) -> None:
        session = self._get_session()
        session.wait_connected()
        properties = pika.BasicProperties(
            delivery_mode=2,
            content_type=_CONTENT_TYPE,
            reply_to=self.client_id,
            type=method or "",
            timestamp=int(time.time()),
        )
        publish = _Publish(
            self.names.requests_exchange, method or "", message, properties, budget=len(message)
        )
        publish.on_failed = partial(session._request_refused, publish)
        session.publish(publish)

    def _get_request(self, timeout: float | None) -> bytes | Result:
        session = self._get_session()
        session.want_server()
        entry = session.take_request(timeout)
        task, entry.task = entry.task, None  # decoded on arrival; a second take decodes again
        return entry.body if task is None else task

    def _send_result(self, message: bytes, result: Result) -> None:
        session = self._get_session()
        session.wait_connected()
        session.publish_result(result.task_id, result.topic, message)

    def _get_result(self, topic: str, timeout: float | None) -> bytes:
        session = self._get_session()
        session.want_results()
        delivery = session.result_inboxes[topic].take(timeout)
        assert delivery is not None  # result inboxes carry no signals
        session.ack(delivery)
        return delivery.body

    def _send_kill_signal(self) -> None:
        session = self._get_session()
        session.wait_connected()
        properties = pika.BasicProperties(delivery_mode=2, type="kill", timestamp=int(time.time()))
        session.publish(
            _Publish(self.names.control_exchange, "", b"kill", properties, barrier=True), wait=True
        )

    def flush(self) -> None:
        """Remove the requests waiting for this object's methods and its client's results.

        Request queues are shared by the clients of a campaign: flushing them removes the
        requests of every client.
        """
        session = self._get_session()
        session.wait_connected()
        names = self.names
        queues = [names.result_queue(self.client_id, topic) for topic in sorted(self.topics)]
        queues += [names.request_queue(m) for m in sorted(self._served or ())]
        queues.append(names.unrouted_queue)
        session.flush(queues)

    # -------------------------------------------------------- status
    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in the queues this object knows, by queue name."""
        return queue_depths(
            self.url,
            self.campaign,
            methods=sorted(self._served or ()),
            clients={self.client_id: sorted(self.topics)},
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The campaign's dead letters (left in place), oldest first."""
        return list_dead_letters(self.url, self.campaign, limit=limit)


# ---------------------------------------------------------------- status
@dataclass
class DeadLetter:
    """A message the campaign could not deliver, as kept in its dead-letter queue."""

    body: bytes
    reason: str
    """``rejected`` (undecodable), ``delivery_limit``, ``expired`` or ``unroutable-result``"""
    queue: str | None
    """Queue the message was taken from, if it was dead-lettered by the broker"""
    routing_keys: list[str]
    time: datetime | None
    task_id: str | None
    method: str | None
    error: str | None
    """Why the message could not be decoded, if it cannot"""
    headers: dict[str, Any]


def _blocking_connection(url: str, timeout: float) -> Any:
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    return pika.BlockingConnection(parameters)


def _dead_letter(body: bytes, properties: Any) -> DeadLetter:
    headers = dict(properties.headers or {})
    deaths = headers.get("x-death") or []
    first = deaths[-1] if deaths else {}  # x-death lists the most recent death first
    reason = str(headers.get(_REASON_HEADER) or headers.get("x-first-death-reason") or "unknown")
    routing_keys = [str(k) for k in first.get("routing-keys", [])]
    if not routing_keys and _ROUTING_KEY_HEADER in headers:
        routing_keys = [str(headers[_ROUTING_KEY_HEADER])]
    try:
        header = peek_header(body)
        task_id, method, error = header.task_id, header.method, None
    except MessageDecodeError as exc:
        task_id, method, error = None, None, str(exc)
    return DeadLetter(
        body=body,
        reason=reason,
        queue=first.get("queue"),
        routing_keys=routing_keys,
        time=first.get("time"),
        task_id=task_id,
        method=method,
        error=error,
        headers=headers,
    )


def list_dead_letters(
    url: str, campaign: str, limit: int = 100, timeout: float = 10.0
) -> list[DeadLetter]:
    """Read the dead letters of a campaign without removing them.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        limit: Largest number of dead letters to return (the oldest first)
        timeout: Seconds to wait for the broker
    """
    names = CampaignNames(campaign)
    connection = _blocking_connection(url, timeout)
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(names.dead_letter_queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return []
            raise
        letters: list[DeadLetter] = []
        while len(letters) < limit:
            method, properties, body = channel.basic_get(names.dead_letter_queue, auto_ack=False)
            if method is None:
                break
            letters.append(_dead_letter(body, properties))
        if letters:  # put them all back, in their order
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        channel.close()
        return letters
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def queue_depths(
    url: str,
    campaign: str,
    methods: Iterable[str] = (),
    clients: Mapping[str, Iterable[str]] | None = None,
    timeout: float = 10.0,
) -> dict[str, int]:
    """Messages waiting in the queues of a campaign (those that exist), by queue name.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        methods: Methods whose request queues to count
        clients: Client IDs and their topics whose result queues to count
        timeout: Seconds to wait for the broker
    """
    names = CampaignNames(campaign)
    queues = names.shared_queues(methods, clients)
    depths: dict[str, int] = {}
    connection = _blocking_connection(url, timeout)
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                frame = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                channel = connection.channel()
                continue
            depths[queue] = int(frame.method.message_count)
        return depths
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def delete_campaign(
    url: str,
    campaign: str,
    methods: Iterable[str] = (),
    clients: Mapping[str, Iterable[str]] | None = None,
    timeout: float = 10.0,
) -> None:
    """Delete the exchanges and queues of a finished campaign, with their messages.

    The broker cannot list queues over AMQP, so the request queues (by method) and result
    queues (by client and topic) to delete must be named; the queues of task servers are
    deleted when they disconnect, or expire on their own.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        methods: Methods whose request queues to delete
        clients: Client IDs and their topics whose result queues to delete
        timeout: Seconds to wait for the broker
    """
    names = CampaignNames(campaign)
    queues = names.shared_queues(methods, clients)
    exchanges = [
        names.requests_exchange,
        names.unrouted_exchange,
        names.results_exchange,
        names.control_exchange,
        names.heartbeats_exchange,
        names.dead_exchange,
        names.leases_exchange,
        names.expired_leases_exchange,
    ]
    connection = _blocking_connection(url, timeout)
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        with contextlib.suppress(Exception):
            connection.close()
