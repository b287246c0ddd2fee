"""The gateway's connection to the broker, in the web server's own event loop.

One :class:`~colmena_core.queue.amqp.AmqpLink` (the connection layer of
:class:`~colmena_core.queue.rabbitmq.RabbitMQQueues` too) publishes task requests with
publisher confirms (a submission is answered only once the broker has the task). Result
streams and long-polls each need a channel of their own, and a connection carries at most
2,047: they are spread over a few more links (``stream_links``, opened as needed, each
holding at most ``channels_per_link`` subscriptions), so that streams can never take the
channel submissions need, and the gateway knows how many more it can hold. Each stream
consumes with manual acknowledgements: a result is acknowledged only after it was written
to its API client, so results not yet delivered stay in the broker, and a stream that
ends, or a gateway that dies, gives them back to the broker for the next stream.

The link reconnects with back-off by itself; streams resubscribe and unconfirmed requests
are published again after a reconnection (those of a submission that gave up waiting are
not). Names of exchanges and queues come from
:class:`~colmena_core.queue.rabbitmq.CampaignNames`; this module knows nothing of the
message format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from colmena_core.backoff import Backoff
from colmena_core.exceptions import BrokerConnectionError
from colmena_core.queue.amqp import (
    AmqpLink,
    ChannelClosedError,
    Publication,
    PublishRefusedError,
)

from ..common import redacted

logger = logging.getLogger(__name__)


class BrokerUnavailableError(BrokerConnectionError):
    """The broker did not answer, or did not confirm a message, in time."""


class BrokerBusyError(RuntimeError):
    """Every channel the gateway may open for streams is in use."""


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
        on_connected: Awaited on each new connection before anything is published (declare
            the topology there)
    """

    def __init__(
        self,
        url: str,
        connect_timeout: float = 10.0,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        stream_links: int = 4,
        channels_per_link: int = 1000,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.amqp = AmqpLink(
            url, connect_timeout=connect_timeout, label="Gateway", on_connected=on_connected
        )
        self.max_stream_links = stream_links
        self.channels_per_link = channels_per_link
        self._stream_links: list[AmqpLink] = []
        self._load: dict[AmqpLink, int] = {}

    # --------------------------------------------------------------- life
    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        self.amqp.start()
        self._add_stream_link()

    async def stop(self, timeout: float = 10.0) -> None:
        """Wait (up to ``timeout``) for pending confirms while connected, then disconnect."""
        if self.amqp.pending:
            await self.amqp.drain(timeout, while_connected=True)
        for link in self._stream_links:
            await link.close()
        await self.amqp.close()

    @property
    def connected(self) -> bool:
        """Whether the link is connected now (and so is the first link of the streams)."""
        return self.amqp.connected and all(link.connected for link in self._stream_links[:1])

    @property
    def stream_capacity(self) -> int:
        """Subscriptions the links of the streams can hold in all."""
        return self.max_stream_links * self.channels_per_link

    @property
    def subscriptions(self) -> int:
        """Subscriptions open now."""
        return sum(self._load.values())

    def _add_stream_link(self) -> AmqpLink:
        link = AmqpLink(
            self.url,
            connect_timeout=self.connect_timeout,
            label=f"Gateway streams {len(self._stream_links) + 1}",
        )
        link.start()
        self._stream_links.append(link)
        self._load[link] = 0
        return link

    def _stream_link(self) -> AmqpLink:
        """The least loaded link with room for one more subscription (a new one if needed).

        Raises:
            BrokerBusyError: every link holds as many subscriptions as it may
        """
        candidates = [
            link for link in self._stream_links if self._load[link] < self.channels_per_link
        ]
        if candidates:
            return min(candidates, key=lambda link: (not link.connected, self._load[link]))
        if len(self._stream_links) < self.max_stream_links:
            return self._add_stream_link()
        raise BrokerBusyError(
            f"All {self.stream_capacity} result streams of this gateway are in use"
        )

    def _released(self, link: AmqpLink) -> None:
        self._load[link] = max(self._load.get(link, 0) - 1, 0)

    @property
    def last_error(self) -> str | None:
        """Why the connection failed or was lost last (``None`` while connected)."""
        return self.amqp.last_error

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the connection.

        Raises:
            BrokerUnavailableError: not connected within ``timeout`` seconds
        """
        try:
            await asyncio.wait_for(self.amqp.wait_ready(), timeout)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"The broker at {redacted(self.url)} is not reachable"
                + (f" ({self.last_error})" if self.last_error else "")
            ) from None

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
            BrokerUnavailableError: not all confirmed in time (some may still arrive), or
                the broker refused one
        """
        if self.amqp.closing:
            raise BrokerUnavailableError("The gateway is stopping")
        loop = asyncio.get_running_loop()
        confirmations: list[asyncio.Future[None]] = []
        publications = []
        for exchange, routing_key, body, properties in messages:
            confirmed: asyncio.Future[None] = loop.create_future()
            confirmations.append(confirmed)
            publications.append(
                Publication(
                    exchange,
                    routing_key,
                    body,
                    properties,
                    on_confirm=partial(_confirmed, confirmed),
                    on_failed=partial(_failed, confirmed),
                    retry_refused=False,
                )
            )
        self.amqp.publish(*publications)
        try:
            await asyncio.wait_for(asyncio.gather(*confirmations), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            for publication in publications:  # not sent yet: never will be
                self.amqp.abandon(publication, republish=False)
            if not isinstance(exc, TimeoutError):
                raise
            raise BrokerUnavailableError(
                f"The broker did not confirm the tasks within {timeout} s"
                + (f" ({self.last_error})" if self.last_error else "")
            ) from None

    # --------------------------------------------------------- subscribing
    def subscribe(
        self,
        queues: Sequence[str],
        prefetch: int,
        on_close: Callable[[], None] | None = None,
    ) -> Subscription:
        """Consume ``queues`` with manual acknowledgements on a channel of their own.

        Args:
            queues: Queues to consume
            prefetch: Messages held unacknowledged at most
            on_close: Called once when the subscription closes
        Raises:
            BrokerBusyError: no room for another channel
        """
        link = self._stream_link()
        self._load[link] += 1

        def closed() -> None:
            self._released(link)
            if on_close is not None:
                on_close()

        return Subscription(link, list(queues), prefetch, on_close=closed)


class Subscription:
    """Messages of some queues, held unacknowledged until :meth:`ack` (or requeued).

    Use as an async context manager; leaving it closes its channel, which gives every
    unacknowledged message back to the broker. It resubscribes after a lost connection;
    messages received on a lost channel are dropped here (the broker delivers them again).
    """

    def __init__(
        self,
        link: AmqpLink,
        queues: list[str],
        prefetch: int,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._link = link
        self._on_close = on_close
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
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
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
        backoff = Backoff()
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
                backoff.reset()
                await closed.wait()
            except ChannelClosedError as exc:
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
            await backoff.wait()

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


def _confirmed(future: asyncio.Future[None], returned: bool) -> None:
    if not future.done():
        future.set_result(None)


def _failed(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        refused = isinstance(error, PublishRefusedError)
        future.set_exception(
            BrokerUnavailableError(
                "The broker refused the task (queue full?)"
                if refused
                else "The gateway is stopping"
            )
        )
