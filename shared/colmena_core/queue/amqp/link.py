"""One connection to an AMQP broker in an asyncio loop: its life and its channels.

:class:`AmqpLink` connects in the background, reconnects with back-off (trying the
brokers of its URL in turn), runs its owner's hooks on each connection, and turns pika's
callbacks into awaitables (:meth:`~AmqpLink.open_channel`, :meth:`~AmqpLink.rpc`,
:meth:`~AmqpLink.get`). Publishing with confirms comes from :mod:`.publishing`.

This module must not decide what a message becomes (:mod:`.publishing` does) nor declare
anything of its owner's; it runs in the loop's thread and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pika
import pika.spec

from colmena_core.backoff import DEFAULT_MAX_DELAY, Backoff
from colmena_core.queue.amqp.connection import (
    ChannelClosedError,
    CoalescingConnection,
    LinkClosedError,
    broker_addresses,
    redact_url,
)
from colmena_core.queue.amqp.publishing import ConfirmedPublishing

__all__ = ["MAX_RECONNECT_DELAY", "AmqpLink"]

logger = logging.getLogger(__name__)

MAX_RECONNECT_DELAY = DEFAULT_MAX_DELAY
"""Longest wait, in seconds, between two connection attempts (see :class:`Backoff`)."""


class AmqpLink(ConfirmedPublishing):
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
        self._init_publishing()

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
        self._fail_pending(LinkClosedError("The connection to the broker is closed"))

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
        self._requeue_unconfirmed()
        if self._on_lost_hook is not None:
            self._on_lost_hook()

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
