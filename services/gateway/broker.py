"""The gateway's connection to the broker, in the web server's own event loop.

One pika :class:`~pika.adapters.asyncio_connection.AsyncioConnection` shared by every
request: no thread, no lock. It publishes task requests with publisher confirms (a
submission is answered only once the broker has the task) and opens one channel per result
stream, consuming with manual acknowledgements: a result is acknowledged only after it was
written to its API client, so results not yet delivered stay in the broker, and a stream
that ends, or a gateway that dies, gives them back to the broker for the next stream.

It reconnects with back-off by itself; streams resubscribe and unconfirmed requests are
published again after a reconnection. Names of exchanges and queues come from
:class:`~colmena_core.queue.rabbitmq.CampaignNames`; this module knows nothing of the
message format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from ..common import redacted

logger = logging.getLogger(__name__)

_MAX_RECONNECT_DELAY = 5.0


class BrokerUnavailableError(ConnectionError):
    """The broker did not answer, or did not confirm a message, in time."""


class _ChannelGone(Exception):
    """A channel or connection closed while an operation waited on it."""

    def __init__(self, reason: BaseException | None = None) -> None:
        super().__init__(repr(reason))
        self.reply_code = getattr(reason, "reply_code", None)


@dataclass(eq=False)
class _Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    properties: Any
    confirmed: asyncio.Future[None]


@dataclass(eq=False)
class Delivery:
    """A message received by a :class:`Subscription`, not acknowledged yet."""

    body: bytes
    routing_key: str
    properties: Any
    tag: int
    channel: Any = field(repr=False)


class BrokerLink:
    """The gateway's broker connection: confirmed publishing and result subscriptions.

    Args:
        url: Broker URL
        connect_timeout: Seconds to wait for each connection attempt
    """

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.last_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None
        self._channel: Any = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._maintainer: asyncio.Task[None] | None = None
        self._outbox: deque[_Outgoing] = deque()
        self._unconfirmed: dict[int, _Outgoing] = {}
        self._sequence = 0
        self._waiters: dict[int, set[asyncio.Future[Any]]] = {}

    # --------------------------------------------------------------- life
    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        self._loop = asyncio.get_running_loop()
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name="broker-link")

    async def stop(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout``) for pending confirms, then close the connection."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._outbox or self._unconfirmed) and self._ready.is_set():
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        self._closing = True
        for outgoing in [*self._outbox, *self._unconfirmed.values()]:
            if not outgoing.confirmed.done():
                outgoing.confirmed.set_exception(BrokerUnavailableError("The gateway is stopping"))
        self._outbox.clear()
        self._unconfirmed.clear()
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 5)
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._maintainer
            self._maintainer = None
        self._ready.clear()

    @property
    def connected(self) -> bool:
        """Whether the link is connected now."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Wait, without a time limit, until the link is connected."""
        await self._ready.wait()

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the connection.

        Raises:
            BrokerUnavailableError: not connected within ``timeout`` seconds
        """
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"The broker at {redacted(self.url)} is not reachable"
                + (f" ({self.last_error})" if self.last_error else "")
            ) from None

    # --------------------------------------------------------- connection
    async def _maintain(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._connect()
                delay = 0.1
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = repr(exc)
                logger.warning("Gateway could not connect to the broker: %r", exc)
            finally:
                self._on_lost()
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RECONNECT_DELAY)

    async def _connect(self) -> None:
        assert self._loop is not None
        parameters = pika.URLParameters(self.url)
        parameters.connection_attempts = 1
        parameters.socket_timeout = self.connect_timeout
        parameters.stack_timeout = self.connect_timeout
        opened: asyncio.Future[Any] = self._loop.create_future()

        def on_open(connection: Any) -> None:
            if not opened.done():
                opened.set_result(connection)

        def on_open_error(connection: Any, error: BaseException) -> None:
            if not opened.done():
                opened.set_exception(_ChannelGone(error))

        self._lost.clear()
        self._connection = AsyncioConnection(
            parameters,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._loop,
        )
        await asyncio.wait_for(opened, self.connect_timeout + 5)
        channel = await self.open_channel()
        await self.rpc(channel, "confirm_delivery", ack_nack_callback=self._on_confirmation)
        self._channel = channel
        self._sequence = 0
        self._ready.set()
        self.last_error = None
        logger.info("Gateway connected to the broker at %s", redacted(self.url))
        self._pump()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        if connection is not self._connection:
            return
        for waiting in self._waiters.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(_ChannelGone(reason))
        self._waiters.clear()
        if not self._closing:
            self.last_error = repr(reason)
            logger.warning("Gateway lost the broker connection: %r", reason)
        self._lost.set()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        for future in self._waiters.pop(channel.channel_number, set()):
            if not future.done():
                future.set_exception(_ChannelGone(reason))
        if channel is self._channel and not self._closing:
            self.last_error = repr(reason)
            logger.warning("The broker closed the publishing channel: %r", reason)
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
            self._lost.set()

    def _on_lost(self) -> None:
        self._ready.clear()
        connection, self._connection = self._connection, None
        self._channel = None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()
        # Publish again what the broker did not confirm: duplicates are dropped by task ID
        for number in sorted(self._unconfirmed, reverse=True):
            self._outbox.appendleft(self._unconfirmed.pop(number))

    async def open_channel(self) -> Any:
        """A new channel on the current connection.

        Raises:
            _ChannelGone: not connected, or the connection closed meanwhile
        """
        connection = self._connection
        if connection is None or not connection.is_open:
            raise _ChannelGone(None)
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()

        def opened(channel: Any) -> None:
            if not future.done():
                future.set_result(channel)

        channel = connection.channel(on_open_callback=opened)
        channel.add_on_close_callback(self._on_channel_closed)
        self._waiters.setdefault(channel.channel_number, set()).add(future)
        try:
            return await future
        finally:
            self._waiters.get(channel.channel_number, set()).discard(future)

    async def rpc(self, channel: Any, method: str, **kwargs: Any) -> Any:
        """Call a synchronous AMQP method of ``channel`` and wait for its answer."""
        if channel is None or not channel.is_open:
            raise _ChannelGone(None)
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()

        def answered(frame: Any) -> None:
            if not future.done():
                future.set_result(frame)

        waiting = self._waiters.setdefault(channel.channel_number, set())
        waiting.add(future)
        try:
            getattr(channel, method)(callback=answered, **kwargs)
            return await future
        finally:
            waiting.discard(future)

    # ---------------------------------------------------------- publishing
    async def publish_many(
        self,
        messages: Sequence[tuple[str, str, bytes, Any]],
        timeout: float,
    ) -> None:
        """Publish persistent messages and wait until the broker confirmed them all.

        Args:
            messages: ``(exchange, routing key, body, properties)`` of each message
            timeout: Seconds to wait for every confirmation
        Raises:
            BrokerUnavailableError: not all confirmed in time (some may still arrive)
        """
        if self._closing:
            raise BrokerUnavailableError("The gateway is stopping")
        loop = asyncio.get_running_loop()
        pending = []
        for exchange, routing_key, body, properties in messages:
            outgoing = _Outgoing(exchange, routing_key, body, properties, loop.create_future())
            self._outbox.append(outgoing)
            pending.append(outgoing)
        self._pump()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.confirmed for p in pending)), timeout)
        except TimeoutError:
            for outgoing in pending:
                with contextlib.suppress(ValueError):
                    self._outbox.remove(outgoing)  # not sent yet: never will be
            raise BrokerUnavailableError(
                f"The broker did not confirm the tasks within {timeout} s"
                + (f" ({self.last_error})" if self.last_error else "")
            ) from None

    def _pump(self) -> None:
        channel = self._channel
        if not self._ready.is_set() or channel is None or not channel.is_open:
            return
        while self._outbox:
            outgoing = self._outbox.popleft()
            if outgoing.confirmed.done():  # abandoned by a caller that timed out
                continue
            try:
                channel.basic_publish(
                    outgoing.exchange, outgoing.routing_key, outgoing.body, outgoing.properties
                )
            except Exception as exc:  # closing: publish again after reconnecting
                logger.debug("Could not publish (%r); will retry", exc)
                self._outbox.appendleft(outgoing)
                return
            self._sequence += 1
            self._unconfirmed[self._sequence] = outgoing

    def _on_confirmation(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        numbers = [n for n in self._unconfirmed if n <= tag] if method.multiple else [tag]
        refused = isinstance(method, pika.spec.Basic.Nack)
        for number in sorted(numbers):
            outgoing = self._unconfirmed.pop(number, None)
            if outgoing is None or outgoing.confirmed.done():
                continue
            if refused:
                outgoing.confirmed.set_exception(
                    BrokerUnavailableError("The broker refused the task (queue full?)")
                )
            else:
                outgoing.confirmed.set_result(None)

    # --------------------------------------------------------- subscribing
    def subscribe(self, queues: Sequence[str], prefetch: int) -> Subscription:
        """Consume ``queues`` with manual acknowledgements on a channel of their own."""
        return Subscription(self, list(queues), prefetch)


class Subscription:
    """Messages of some queues, held unacknowledged until :meth:`ack` (or requeued).

    Use as an async context manager; leaving it closes its channel, which gives every
    unacknowledged message back to the broker. It resubscribes after a lost connection;
    messages received on a lost channel are dropped here (the broker delivers them again).
    """

    def __init__(self, link: BrokerLink, queues: list[str], prefetch: int) -> None:
        self._link = link
        self.queues = queues
        self.prefetch = prefetch
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._channel: Any = None
        self._closed = False
        self._runner: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._tags: list[str] = []
        self._paused = False
        self.last_error: str | None = None

    async def __aenter__(self) -> Subscription:
        self._runner = asyncio.create_task(self._run(), name="result-subscription")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the consumers are registered with the broker."""
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop consuming; unacknowledged messages go back to their queues.

        Never waits: it must complete in a task that is being cancelled (a stream whose
        client went away), where every ``await`` raises again.
        """
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            with contextlib.suppress(Exception):
                channel.close()
        if self._runner is not None:
            self._runner.cancel()

    def stop_consuming(self) -> None:
        """Take no more messages (others get them), but keep those taken unacknowledged.

        Messages received and not handed out by :meth:`get` go back to the broker now.
        """
        self._paused = True
        channel = self._channel
        if self._runner is not None:
            self._runner.cancel()  # no resubscription: the held messages die with the channel
        if channel is None or not channel.is_open:
            return
        for tag in self._tags:
            channel.basic_cancel(tag)
        while not self._inbox.empty():
            delivery = self._inbox.get_nowait()
            if delivery.channel is channel:
                channel.basic_nack(delivery.tag, requeue=True)

    async def get(self, timeout: float) -> Delivery | None:
        """The next message, or ``None`` if none arrived within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                delivery = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    delivery = await asyncio.wait_for(self._inbox.get(), remaining)
                except TimeoutError:
                    return None
            if delivery.channel is self._channel and delivery.channel.is_open:
                return delivery
            # From a channel that is gone: the broker delivers it again

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge a message; ``False`` if its channel is gone (it will come again)."""
        channel = delivery.channel
        if channel is not self._channel or not channel.is_open:
            return False
        channel.basic_ack(delivery.tag)
        return True

    def reject(self, delivery: Delivery) -> None:
        """Refuse a message for good: its queue dead-letters it."""
        channel = delivery.channel
        if channel is self._channel and channel.is_open:
            channel.basic_nack(delivery.tag, requeue=False)

    async def _run(self) -> None:
        delay = 0.1
        while not self._closed:
            closed: asyncio.Event = asyncio.Event()
            channel: Any = None
            try:
                await self._link.wait_ready()
                channel = await self._link.open_channel()
                channel.add_on_close_callback(partial(_set_event, closed))
                self._channel = channel
                await self._link.rpc(channel, "basic_qos", prefetch_count=self.prefetch)
                self._tags = []
                for queue in self.queues:
                    frame = await self._link.rpc(
                        channel,
                        "basic_consume",
                        queue=queue,
                        on_message_callback=self._receiver(channel),
                    )
                    self._tags.append(str(frame.method.consumer_tag))
                self._subscribed.set()
                delay = 0.1
                await closed.wait()
            except _ChannelGone as exc:
                self.last_error = repr(exc)
                if exc.reply_code == 404:
                    logger.warning("A result queue is missing (%s); retrying", exc)
            except Exception as exc:
                self.last_error = repr(exc)
                logger.warning("Result subscription failed (%r); retrying", exc)
            finally:
                self._subscribed.clear()
                if self._closed and channel is not None and channel.is_open:
                    channel.close()  # opened while closing: nothing may stay held here
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RECONNECT_DELAY)

    def _receiver(self, channel: Any) -> Callable[[Any, Any, Any, bytes], None]:
        def received(_: Any, method: Any, properties: Any, body: bytes) -> None:
            if self._paused:  # arrived after stop_consuming: for another consumer
                channel.basic_nack(method.delivery_tag, requeue=True)
                return
            self._inbox.put_nowait(
                Delivery(body, method.routing_key, properties, method.delivery_tag, channel)
            )

        return received


def _set_event(event: asyncio.Event, *_: object) -> None:
    event.set()
