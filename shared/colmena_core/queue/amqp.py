"""One connection to an AMQP broker in an asyncio loop, with confirmed publishing.

:class:`AmqpLink` is the connection layer shared by
:class:`~colmena_core.queue.rabbitmq.RabbitMQQueues` (whose I/O thread runs the loop) and the
gateway (which runs it in the web server's loop). It owns one pika connection and, on it,
one channel in confirm mode for publishing; everything else belongs to its owner, which
plugs in through three hooks and the helpers below.

* **Connection life.** :meth:`AmqpLink.start` connects in the background and reconnects
  after every loss with the project's back-off (:class:`~colmena_core.backoff.Backoff`),
  each attempt bounded by the connect timeout. A URL may name several brokers,
  comma-separated (the nodes of a cluster): each attempt after a failure or a loss goes to
  the next one, in turn. Once the connection and its publishing channel are open, the link
  awaits the owner's ``on_connected`` hook (declare the topology: an error in it drops the
  connection and the link tries again), then starts publishing and calls ``on_ready``
  (consume again). ``on_lost`` runs after each loss, for the owner to forget what belonged
  to the lost channels (:attr:`AmqpLink.generation` numbers the connections). A publishing
  channel closed by the broker makes the link reconnect.
* **Channels.** :meth:`AmqpLink.open_channel` and :meth:`AmqpLink.rpc` turn pika's callbacks
  into awaitables; when the channel or the connection closes meanwhile they raise
  :class:`ChannelClosedError`, with the broker's reply code.
* **Publishing with confirms.** :meth:`AmqpLink.publish` keeps each :class:`Publication`
  until the broker confirms it and publishes it again after a reconnection, so a broker
  restart loses nothing (and a message may arrive twice). The owner learns of the
  confirmation through ``on_confirm``, which tells whether the broker returned a
  ``mandatory`` message no queue took. A message the broker refuses (a nack) is published
  again after a pause, or reported to ``on_failed`` if it asks not to be retried. A
  ``barrier`` message waits until every message published before it is confirmed;
  :meth:`AmqpLink.wait_confirmed` and :meth:`AmqpLink.drain` wait for confirmations, and
  ``max_unconfirmed`` bounds the messages on the wire at once.
* **Fewer system calls.** The connection writes the frames produced in one pass of the loop
  with one ``send()`` (:class:`CoalescingConnection`).

Everything here runs in the loop's thread and nothing is thread-safe: owners in other
threads hand work to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pika
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from colmena_core.backoff import DEFAULT_MAX_DELAY, Backoff
from colmena_core.exceptions import BrokerConnectionError, TransportError

__all__ = [
    "MAX_RECONNECT_DELAY",
    "AmqpLink",
    "ChannelClosedError",
    "CoalescingConnection",
    "LinkClosedError",
    "Publication",
    "PublishRefusedError",
    "broker_addresses",
    "connection_parameters",
    "redact_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RECONNECT_DELAY = DEFAULT_MAX_DELAY
"""Longest wait, in seconds, between two connection attempts (see :class:`Backoff`)."""

_PUBLISH_ID_HEADER = "colmena-publish-id"
_SIZE_LIMIT = re.compile(r"message size \d+ is larger than configured max size (\d+)")
"""What RabbitMQ says when it closes a channel for a message above its max_message_size."""
_REFUSED_PAUSE = 0.5
"""Seconds publishing pauses after the broker refused messages that are retried."""


class ChannelClosedError(TransportError):
    """A channel or connection closed while an operation waited on it.

    Attributes:
        reply_code: The broker's reply code (404: no such queue, 406: other arguments), if any
    """

    def __init__(self, reason: BaseException | None = None) -> None:
        super().__init__(repr(reason))
        self.reply_code: int | None = getattr(reason, "reply_code", None)


class PublishRefusedError(TransportError):
    """The broker refused a message (a negative confirmation, or a size it does not take)."""


class LinkClosedError(BrokerConnectionError):
    """The link was closed before the broker confirmed a message."""


def redact_url(url: str) -> str:
    """The URL (or comma-separated URLs) without passwords, for messages."""
    return re.sub(r"(//[^:/@,]*:)[^@]*@", r"\1***@", url)


def broker_addresses(url: str) -> list[str]:
    """The broker URLs in ``url``: one, or several separated by commas (the nodes of a
    cluster, which clients try in turn). A comma inside a password must be written ``%2C``.

    Raises:
        ValueError: ``url`` names no broker, or one of its URLs is not ``amqp[s]://``
    """
    addresses = [part.strip() for part in url.split(",") if part.strip()]
    if not addresses:
        raise ValueError("No broker URL given")
    for address in addresses:
        if not address.startswith(("amqp://", "amqps://")):
            raise ValueError(f"Not an amqp:// or amqps:// URL: {redact_url(address)!r}")
    return addresses


def connection_parameters(url: str) -> list[pika.URLParameters]:
    """pika's parameters for each broker of ``url`` (see :func:`broker_addresses`), in order:
    ``pika.BlockingConnection`` takes the list and tries them in turn."""
    return [pika.URLParameters(address) for address in broker_addresses(url)]


class CoalescingConnection(AsyncioConnection):
    """A pika asyncio connection that writes the frames of one loop pass with one ``send()``.

    pika gives the socket every frame on its own: three ``send()`` calls per published
    message and one per acknowledgement, which under load is a large part of a client's CPU
    and many small packets for the broker to read. Here small frames wait in a buffer that
    a callback scheduled on the loop writes out at once; a frame of
    :attr:`COALESCE_LIMIT` bytes or more is written as it is (after what is buffered, so
    the order holds) to avoid copying large bodies.
    """

    COALESCE_LIMIT = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._out: list[bytes] = []
        self._out_bytes = 0
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        if len(data) >= self.COALESCE_LIMIT:
            self._flush_out()
            super()._adapter_emit_data(data)
            return
        if not self._out:
            self.ioloop.call_soon(self._flush_out)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= self.COALESCE_LIMIT:
            self._flush_out()

    def _flush_out(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        self._out_bytes = 0
        if self._transport is not None:
            super()._adapter_emit_data(data)

    def _adapter_disconnect_stream(self) -> None:
        self._flush_out()
        super()._adapter_disconnect_stream()


@dataclass(eq=False)
class Publication:
    """A message to publish until the broker confirms it (see :meth:`AmqpLink.publish`)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Any
    mandatory: bool = False
    """Have the broker return the message if no queue takes it (``on_confirm`` says so)."""
    on_confirm: Callable[[bool], None] | None = None
    """Called once confirmed, with whether the broker returned the message (unroutable)."""
    on_failed: Callable[[BaseException], None] | None = None
    """Called if the message will never be confirmed: refused (:class:`PublishRefusedError`,
    when ``retry_refused`` is false) or the link closed first (:class:`LinkClosedError`)."""
    retry_refused: bool = True
    """Publish the message again (after a pause) if the broker refuses it."""
    barrier: bool = False
    """Publish only after every message published earlier on the link is confirmed."""
    number: int = 0
    """Order of the message on its link, set by :meth:`AmqpLink.publish`."""
    abandoned: bool = field(default=False, init=False, repr=False)
    """Its sender gave up: not published again after a reconnection."""

    @property
    def publish_id(self) -> str:
        """Identifies a mandatory message the broker may return (unique on its link)."""
        return str(self.number)


class AmqpLink:
    """One connection to an AMQP broker in an asyncio loop (see the module documentation).

    Args:
        url: Broker URL, ``amqp://user:password@host:port/vhost``, or several separated by
            commas (the nodes of a cluster), tried in turn
        connect_timeout: Seconds each connection attempt may take
        heartbeat: AMQP heartbeat in seconds (``None``: the broker's proposal)
        max_unconfirmed: Messages that may be on the wire unconfirmed at once (``None``: any)
        on_connected: Awaited on each new connection before anything is published (declare
            the topology here, on :attr:`channel` or channels of its own)
        on_ready: Called once connected and publishing (start consuming here)
        on_lost: Called after each lost connection, once the link forgot it
        label: Names the link in log messages
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        heartbeat: int | None = None,
        max_unconfirmed: int | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        label: str = "AMQP link",
    ) -> None:
        self.url = url
        self.addresses = broker_addresses(url)
        """The brokers the link connects to, in turn."""
        self.address = self.addresses[0]
        """The broker of the current (or the next) connection attempt."""
        self._attempts = itertools.count()
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.max_unconfirmed = max_unconfirmed
        self.label = label
        self.last_error: str | None = None
        """Why the last connection failed or was lost (``None`` once connected)."""
        self.generation = 0
        """Number of the current connection: 1 for the first, one more for each next one."""
        self._on_connected = on_connected
        self._on_ready = on_ready
        self._on_lost_hook = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._connection: Any = None
        self._channel: Any = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._waiters: dict[int, set[asyncio.Future[Any]]] = {}
        # Publishing
        self._outbox: deque[Publication] = deque()
        self._deferred: list[Publication] = []
        self._unconfirmed: dict[int, Publication] = {}
        self._returned: set[str] = set()
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        self._sequence = 0
        self._numbers = itertools.count(1)
        self._paused_until = 0.0
        self._last_progress = 0.0
        self.max_body: int | None = None
        """Largest message body the broker takes, once it refused a larger one (it says its
        ``max_message_size`` when it closes the channel): larger messages then fail."""

    # ------------------------------------------------------------------ facts
    @property
    def channel(self) -> Any:
        """The publishing channel of the current connection (``None`` between connections)."""
        return self._channel

    @property
    def connected(self) -> bool:
        """Whether the link is connected and publishing."""
        return self._ready.is_set()

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    @property
    def pending(self) -> int:
        """Messages published and not confirmed yet."""
        return len(self._outbox) + len(self._unconfirmed) + len(self._deferred)

    def stalled_for(self) -> float:
        """Seconds messages have waited for a confirmation without any arriving (0: none
        waits, or confirmations keep coming)."""
        if not self.pending:
            return 0.0
        return max(time.monotonic() - self._last_progress, 0.0)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the link runs in (known once started)."""
        if self._loop is None:
            raise RuntimeError("The link is not started")
        return self._loop

    async def wait_ready(self) -> None:
        """Wait, without a time limit, until the link is connected."""
        await self._ready.wait()

    # -------------------------------------------------------------- life cycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start connecting in the background; call it in the loop's thread (only once counts).

        Args:
            loop: The loop to run in (default: the running loop)
        """
        if self._maintainer is not None or self._closing:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._maintainer = self._loop.create_task(self._maintain(), name=f"{self.label} link")

    async def close(self, timeout: float = 5.0) -> None:
        """Close the connection for good; unconfirmed messages are reported to ``on_failed``.

        Args:
            timeout: Seconds to wait for the broker to acknowledge the closing
        """
        self._closing = True
        self._ready.clear()
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout)
        maintainer, self._maintainer = self._maintainer, None
        if maintainer is not None and maintainer is not asyncio.current_task():
            maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await maintainer
        pending = [*self._deferred, *self._outbox, *self._unconfirmed.values()]
        self._deferred.clear()
        self._outbox.clear()
        self._unconfirmed.clear()
        error = LinkClosedError("The connection to the broker is closed")
        for publication in pending:
            if not publication.abandoned:
                self._fail(publication, error)
        self._release_deferred()

    def reconnect(self, reason: str) -> None:
        """Drop the current connection (if any) so that the link connects again."""
        connection = self._connection
        if self._closing or connection is None or not connection.is_open:
            return
        logger.warning("%s: %s; reconnecting", self.label, reason)
        connection.close()

    async def _maintain(self) -> None:
        """Connect, set up, wait for a loss, repeat with back-off until closed."""
        backoff = Backoff()
        while not self._closing:
            try:
                await self._connect()
                backoff.reset()
                await self._lost.wait()
            except ChannelClosedError as exc:  # the close callbacks tell why
                self.last_error = self.last_error or str(exc)
            except Exception as exc:
                self.last_error = repr(exc)
                logger.warning("%s could not set up the broker connection: %r", self.label, exc)
            finally:
                self._on_lost()
            if self._closing:
                return
            await backoff.wait()

    async def _connect(self) -> None:
        # Each attempt (after a failure or a loss) goes to the next broker in turn.
        self.address = self.addresses[next(self._attempts) % len(self.addresses)]
        parameters = pika.URLParameters(self.address)
        if self.heartbeat is not None:
            parameters.heartbeat = self.heartbeat
        parameters.connection_attempts = 1
        parameters.socket_timeout = self.connect_timeout
        parameters.stack_timeout = self.connect_timeout
        opened: asyncio.Future[Any] = self.loop.create_future()

        def on_open(connection: Any) -> None:
            if not opened.done():
                opened.set_result(connection)

        def on_open_error(connection: Any, error: BaseException) -> None:
            self.last_error = repr(error)
            logger.warning(
                "%s could not connect to the broker at %s: %r",
                self.label,
                redact_url(self.address),
                error,
            )
            if not opened.done():
                opened.set_exception(ChannelClosedError(error))

        self._lost.clear()
        self._connection = CoalescingConnection(
            parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self.loop,
        )
        await asyncio.wait_for(opened, self.connect_timeout + 5)
        channel = await self.open_channel()
        channel.add_on_return_callback(self._on_returned)
        await self.rpc(channel, "confirm_delivery", ack_nack_callback=self._on_confirmation)
        self.generation += 1
        self._channel = channel
        self._sequence = 0
        if self._on_connected is not None:
            await self._on_connected()
        self._ready.set()
        self.last_error = None
        logger.info("%s connected to the broker at %s", self.label, redact_url(self.address))
        self._pump()
        if self._on_ready is not None:
            self._on_ready()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        if connection is not self._connection:
            return
        for waiting in self._waiters.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(ChannelClosedError(reason))
        self._waiters.clear()
        if not self._closing:
            self.last_error = repr(reason)
            logger.warning("%s lost the broker connection: %r; reconnecting", self.label, reason)
        self._lost.set()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        for future in self._waiters.pop(channel.channel_number, set()):
            if not future.done():
                future.set_exception(ChannelClosedError(reason))
        if channel is self._channel and not self._closing:
            self._learn_size_limit(reason)
            self.last_error = repr(reason)
            logger.warning(
                "%s: the broker closed the publishing channel: %r; reconnecting",
                self.label,
                reason,
            )
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
            self._lost.set()

    def _on_lost(self) -> None:
        """Forget the lost connection; keep what must be published again."""
        self._ready.clear()
        channel, self._channel = self._channel, None
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()
        if channel is not None:
            self._waiters.pop(channel.channel_number, None)
        for number in sorted(self._unconfirmed, reverse=True):
            publication = self._unconfirmed.pop(number)
            if not publication.abandoned:
                self._outbox.appendleft(publication)
        self._returned.clear()
        self._release_deferred()  # abandoned messages, now forgotten, held them back
        if self._on_lost_hook is not None:
            self._on_lost_hook()

    def _learn_size_limit(self, reason: BaseException) -> None:
        """Note the broker's size limit if a message above it closed the channel.

        Without this, the message would be published again on the next connection, close
        that channel too, and hold up every message behind it for ever.
        """
        found = _SIZE_LIMIT.search(str(getattr(reason, "reply_text", "")))
        if found is None:
            return
        self.max_body = int(found.group(1))
        logger.error(
            "%s: the broker takes messages of at most %d bytes (its max_message_size); larger "
            "ones fail from now on",
            self.label,
            self.max_body,
        )

    def _too_large(self, publication: Publication) -> bool:
        """Fail ``publication`` if the broker is known not to take it."""
        if self.max_body is None or len(publication.body) <= self.max_body:
            return False
        self._fail(
            publication,
            PublishRefusedError(
                f"The broker takes messages of at most {self.max_body} bytes (its "
                f"max_message_size), not {len(publication.body)}"
            ),
        )
        return True

    # ---------------------------------------------------------------- channels
    async def open_channel(self) -> Any:
        """A new channel on the current connection.

        Raises:
            ChannelClosedError: not connected, or the connection closed meanwhile
        """
        connection = self._connection
        if connection is None or not connection.is_open:
            raise ChannelClosedError(None)
        answer, answered = self._answer()
        channel = connection.channel(on_open_callback=answered)
        channel.add_on_close_callback(self._on_channel_closed)
        return await self._wait_answer(channel, answer)

    async def rpc(self, channel: Any, method: str, **kwargs: Any) -> Any:
        """Call a synchronous AMQP method of ``channel`` and wait for its answer.

        Raises:
            ChannelClosedError: the channel is closed, or closed meanwhile (an error of the
                method closes it: its ``reply_code`` tells which)
        """
        if channel is None or not channel.is_open:
            raise ChannelClosedError(None)
        answer, answered = self._answer()
        getattr(channel, method)(callback=answered, **kwargs)
        return await self._wait_answer(channel, answer)

    async def get(self, channel: Any, queue: str) -> tuple[Any, Any, bytes] | None:
        """Take one message from ``queue`` without a consumer (``basic.get``, to acknowledge).

        Returns:
            The message's method frame, properties and body; ``None`` if the queue is empty
        Raises:
            ChannelClosedError: as :meth:`rpc`
        """
        if channel is None or not channel.is_open:
            raise ChannelClosedError(None)
        answer, answered = self._answer()

        def on_message(_: Any, method: Any, properties: Any, body: bytes) -> None:
            answered((method, properties, body))

        channel.add_callback(lambda _: answered(None), [pika.spec.Basic.GetEmpty], one_shot=True)
        channel.basic_get(queue, on_message, auto_ack=False)
        return await self._wait_answer(channel, answer)

    def _answer(self) -> tuple[asyncio.Future[Any], Callable[[Any], None]]:
        """A future and the pika callback that resolves it (once)."""
        future: asyncio.Future[Any] = self.loop.create_future()

        def answered(value: Any) -> None:
            if not future.done():
                future.set_result(value)

        return future, answered

    async def _wait_answer(self, channel: Any, answer: asyncio.Future[Any]) -> Any:
        """Wait for ``answer``, or for ``channel`` or its connection to close first."""
        waiting = self._waiters.setdefault(channel.channel_number, set())
        waiting.add(answer)
        try:
            return await answer
        finally:
            waiting.discard(answer)

    # -------------------------------------------------------------- publishing
    def publish(self, *publications: Publication) -> None:
        """Publish messages, in their order, and keep each until the broker confirms it."""
        if not self.pending:
            self._last_progress = time.monotonic()  # the wait for confirmations starts now
        for publication in publications:
            publication.number = next(self._numbers)
            if self._too_large(publication):
                continue
            if publication.barrier:
                self._deferred.append(publication)
                self._release_deferred()
            else:
                self._outbox.append(publication)
        self._pump()

    def abandon(self, publication: Publication, *, republish: bool = True) -> bool:
        """Stop publishing a message whose sender stopped waiting for it.

        A message not sent yet is forgotten. One already sent is still confirmed (or not)
        as usual; if its connection is lost first, it is published again only if
        ``republish``.

        Returns:
            Whether the message was forgotten before it was sent
        """
        forgotten = False
        for pending in (self._outbox, self._deferred):
            if publication in pending:
                pending.remove(publication)
                forgotten = True
        if not republish:
            publication.abandoned = True
        self._release_deferred()
        self._pump()
        return forgotten

    async def wait_confirmed(self, timeout: float) -> bool:
        """Wait until every message published so far is confirmed (or forgotten).

        Returns:
            Whether they were within ``timeout`` seconds
        """
        return await self._wait_barrier(next(self._numbers), timeout)

    async def drain(self, timeout: float, *, while_connected: bool = False) -> bool:
        """Wait until no message waits for a confirmation, those published meanwhile included.

        Args:
            timeout: Seconds to wait at most
            while_connected: Give up as soon as the link is not connected
        Returns:
            Whether every message was confirmed
        """
        deadline = self.loop.time() + timeout
        while self.pending:
            remaining = deadline - self.loop.time()
            if remaining <= 0 or (while_connected and not self.connected):
                return False
            await self._wait_barrier(
                next(self._numbers), min(remaining, 0.05) if while_connected else remaining
            )
        return True

    def _oldest_pending(self, deferred: bool) -> float:
        pending = itertools.chain(
            self._outbox, self._unconfirmed.values(), self._deferred if deferred else ()
        )
        return min((p.number for p in pending), default=float("inf"))

    def _release_deferred(self) -> None:
        if self._deferred:
            oldest = self._oldest_pending(deferred=False)
            for publication in [p for p in self._deferred if p.number < oldest]:
                self._deferred.remove(publication)
                self._outbox.append(publication)
        if self._barriers:
            oldest = self._oldest_pending(deferred=True)
            for barrier in [b for b in self._barriers if b[0] <= oldest]:
                self._barriers.remove(barrier)
                if not barrier[1].done():
                    barrier[1].set_result(None)

    async def _wait_barrier(self, number: int, timeout: float) -> bool:
        """Wait until every message numbered below ``number`` is confirmed."""
        barrier: tuple[int, asyncio.Future[None]] = (number, self.loop.create_future())
        self._barriers.append(barrier)
        self._release_deferred()
        try:
            await asyncio.wait_for(barrier[1], max(timeout, 0.01))
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._barriers.remove(barrier)
        return True

    def _pump(self) -> None:
        channel = self._channel
        if not self._ready.is_set() or channel is None or not channel.is_open:
            return
        if self.loop.time() < self._paused_until:
            return
        limit = self.max_unconfirmed
        dropped = False
        while self._outbox and (limit is None or len(self._unconfirmed) < limit):
            publication = self._outbox.popleft()
            if self._too_large(publication):
                dropped = True
                continue
            properties = publication.properties
            if publication.mandatory:
                properties = copy.copy(properties)
                properties.headers = {
                    **(properties.headers or {}),
                    _PUBLISH_ID_HEADER: publication.publish_id,
                }
            try:
                channel.basic_publish(
                    publication.exchange,
                    publication.routing_key,
                    publication.body,
                    properties,
                    mandatory=publication.mandatory,
                )
            except Exception as exc:
                if channel.is_open and self._connection is not None and self._connection.is_open:
                    # The client library refused this message (a routing key or header over
                    # AMQP's limits, say) before sending anything: it fails alone
                    self._fail(
                        publication,
                        PublishRefusedError(f"The AMQP client refused the message: {exc!r}"),
                    )
                    dropped = True
                    continue
                logger.debug("Could not publish (%r); will retry", exc)  # channel closing
                self._outbox.appendleft(publication)
                return
            self._sequence += 1
            self._unconfirmed[self._sequence] = publication
        if dropped:  # messages that waited behind the dropped ones may go now
            self._release_deferred()
            if self._outbox:
                self._pump()

    def _on_returned(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        publish_id = (properties.headers or {}).get(_PUBLISH_ID_HEADER)
        if publish_id:
            self._returned.add(str(publish_id))

    def _on_confirmation(self, frame: Any) -> None:
        self._last_progress = time.monotonic()
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:  # keys are in publishing order: stop at the first one above
            numbers = list(itertools.takewhile(lambda n: n <= tag, self._unconfirmed))
        else:
            numbers = [tag]
        refused = isinstance(method, pika.spec.Basic.Nack)
        retried: list[Publication] = []
        for number in numbers:
            publication = self._unconfirmed.pop(number, None)
            if publication is None:
                continue
            returned = publication.publish_id in self._returned
            self._returned.discard(publication.publish_id)
            if not refused:
                self._finish(publication, returned)
            elif publication.retry_refused and not publication.abandoned:
                retried.append(publication)
            else:
                self._fail(publication, PublishRefusedError("The broker refused the message"))
        if retried:  # still pending, so barriers keep waiting; published again shortly
            logger.warning(
                "%s: the broker refused %d messages; publishing them again",
                self.label,
                len(retried),
            )
            self._outbox.extendleft(reversed(retried))
            self._paused_until = self.loop.time() + _REFUSED_PAUSE
            self.loop.call_later(_REFUSED_PAUSE, self._pump)
        self._release_deferred()
        self._pump()

    def _finish(self, publication: Publication, returned: bool) -> None:
        _notify(publication.on_confirm, returned, "the confirmation of a message")

    def _fail(self, publication: Publication, error: BaseException) -> None:
        _notify(publication.on_failed, error, "a message that cannot be confirmed")


def _notify(callback: Callable[[T], None] | None, argument: T, what: str) -> None:
    """Tell a message's owner what became of it; an error there is logged, not raised."""
    if callback is None:
        return
    try:
        callback(argument)
    except Exception:
        logger.exception("Failed to act on %s", what)
