"""The client role: what a thinker does on the broker.

It declares the client's result queues (and the request queues of the methods it names)
before its first request is published, publishes requests with confirms, consumes its
result queues into one :class:`~.bridge.Inbox` per topic, and sends the kill signal.
Results wait in the inboxes unacknowledged until a caller takes them; those nobody takes
for ``lease_after`` seconds go back to the broker, so its consumer timeout never closes the
channel. A request the broker refuses becomes a failure :class:`Result` in the inbox of
its topic: the sender gets one result for every task, as the delivery contract says.
This module must not decode payloads; it reads headers only to build failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika

from colmena_core.exceptions import MessageTooLargeError
from colmena_core.models import Result
from colmena_core.models.wire import MessageDecodeError, decode_result
from colmena_core.queue.amqp import ChannelClosedError, PublishRefusedError
from colmena_core.queue.rabbitmq.bridge import ConnectionState, Delivery, Inbox, Outgoing, Role
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.topology import CampaignTopology, request_properties
from colmena_core.security import MessageSigner

__all__ = ["ClientRole", "ClientSettings", "refusal"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSettings:
    """What the client role needs; picklable and immutable."""

    names: CampaignNames
    client_id: str
    topics: tuple[str, ...]
    methods: tuple[str, ...] | None
    prefetch: int
    delivery_limit: int
    lease_after: float
    publish_timeout: float


def _older_than(moment: float, item: Delivery | Result) -> bool:
    return isinstance(item, Delivery) and item.received < moment


def refusal(body: bytes, error: BaseException, signer: MessageSigner | None) -> Result | None:
    """A task's failure because the broker refused ``body`` (its request or result), without
    the payloads that made it too large; ``None`` if the body is not a message."""
    try:
        result = decode_result(body, signer)
    except MessageDecodeError:
        logger.exception("Could not decode a message the broker refused")
        return None
    result.drop_payloads(inputs=True)
    result.set_failure(MessageTooLargeError(str(error)))
    return result


class ClientRole(Role):
    """The broker side of a thinker (see the module documentation)."""

    def __init__(self, settings: ClientSettings, signer: MessageSigner | None) -> None:
        super().__init__()
        self.settings = settings
        self.signer = signer
        self.names = settings.names
        self.inboxes: dict[str, Inbox[Delivery | Result]] = {t: Inbox() for t in settings.topics}
        self._want_results = threading.Event()
        self.serves_only = False
        """Set for a task server's queues: no result queues of its own to declare."""
        self._consuming: ConnectionState | None = None
        self._channel: Any = None
        self._closing = False
        self._housekeeper: asyncio.Task[Any] | None = None

    # ------------------------------------------------------- caller threads
    def send_request(self, message: bytes, method: str | None) -> None:
        """Publish a request (waits for room among unconfirmed messages, not for its confirm)."""
        bridge = self.bridge
        bridge.wait_ready(self)
        publish = Outgoing(
            self.names.requests_exchange,
            method or "",
            message,
            request_properties(self.settings.client_id, method),
            budget=len(message),
        )
        publish.on_failed = partial(self._request_refused, publish)
        bridge.publish(publish, self.settings.publish_timeout)

    def take_result(self, topic: str, timeout: float | None) -> Delivery | Result:
        """The next result of ``topic``: a delivery (to acknowledge) or a local failure."""
        self.want_results()
        item = self.inboxes[topic].take(timeout)
        assert item is not None  # result inboxes carry no signals
        return item

    def ack(self, delivery: Delivery) -> None:
        self.bridge.call(delivery.settle, True)

    def want_results(self) -> None:
        """Start consuming this client's result queues (idempotent)."""
        if self._want_results.is_set():
            return
        self._want_results.set()
        self.bridge.call(self._consume_if_needed)

    def send_kill_signal(self) -> None:
        bridge = self.bridge
        bridge.wait_ready(self)
        properties = pika.BasicProperties(delivery_mode=2, type="kill", timestamp=int(time.time()))
        bridge.publish(
            Outgoing(self.names.control_exchange, "", b"kill", properties, barrier=True),
            self.settings.publish_timeout,
            wait=True,
        )

    def flush(self, queues: list[str]) -> None:
        self.bridge.wait_ready(self)
        self.bridge.run(self._flush(queues), self.settings.publish_timeout)

    # ---------------------------------------------------------- loop thread
    async def declare(self, state: ConnectionState) -> None:
        topology = CampaignTopology(state.link, self.names, self.settings.delivery_limit)
        await topology.declare_common()
        if not self.serves_only:
            await topology.declare_client(
                self.settings.client_id, self.settings.topics, self.settings.methods or ()
            )

    async def start(self, state: ConnectionState) -> None:
        if self._housekeeper is None:
            self._housekeeper = self.bridge.spawn(self._housekeeping())
        if self._want_results.is_set():
            await self._consume(state)

    def _consume_if_needed(self) -> None:
        state = self.state
        if state is not None and state.alive and self._consuming is not state:
            self.bridge.spawn(self._consume(state))

    async def _consume(self, state: ConnectionState) -> None:
        if self._consuming is state:
            return
        self._consuming = state
        link = state.link
        channel = await state.open_channel(self._on_channel_closed)
        self._channel = channel
        channel.add_on_cancel_callback(self._on_cancelled)
        await link.rpc(channel, "basic_qos", prefetch_count=self.settings.prefetch)
        for topic in self.settings.topics:
            queue = self.names.result_queue(self.settings.client_id, topic)
            await link.rpc(
                channel,
                "basic_consume",
                queue=queue,
                on_message_callback=partial(self._on_result, topic, state),
            )

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        state = self.state
        if self._closing or channel is not self._channel:
            return
        if state is not None and state.alive and not self.bridge.link.closing:
            self.bridge.link.reconnect(f"The broker closed a result channel: {reason!r}")

    def _on_cancelled(self, frame: Any) -> None:
        """A result queue went away: reconnect, which declares it again."""
        if not self._closing and not self.bridge.link.closing:
            self.bridge.link.reconnect(f"The broker cancelled consumer {frame.method.consumer_tag}")

    def _on_result(
        self,
        topic: str,
        state: ConnectionState,
        channel: Any,
        method: Any,
        properties: Any,
        body: bytes,
    ) -> None:
        self.inboxes[topic].put(
            Delivery(method.delivery_tag, state, channel, method.routing_key, properties, body)
        )

    def lost(self, state: ConnectionState) -> None:
        if self._consuming is state:
            self._consuming = None
        for inbox in self.inboxes.values():
            inbox.remove_if(lambda item: isinstance(item, Delivery) and item.state is state)

    def _request_refused(self, publish: Outgoing, error: BaseException) -> None:
        """Give the sender a failure result for a request the broker does not take."""
        if not isinstance(error, PublishRefusedError):
            return
        failure = refusal(publish.body, error, self.signer)
        if failure is None:
            return
        logger.error("The broker refused the request of task %s: %s", failure.task_id, error)
        inbox = self.inboxes.get(failure.topic)
        if inbox is not None:
            inbox.put(failure)

    async def _housekeeping(self) -> None:
        """Give back results nobody took for ``lease_after`` seconds."""
        lease_after = self.settings.lease_after
        period = min(max(lease_after / 4, 0.05), 30.0)
        while not self.bridge.link.closing:
            await asyncio.sleep(period)
            oldest = time.monotonic() - lease_after
            for inbox in self.inboxes.values():
                stale = inbox.remove_if(partial(_older_than, oldest))
                for delivery in stale:
                    assert isinstance(delivery, Delivery)
                    delivery.settle(False, requeue=True)

    async def _flush(self, queues: list[str]) -> None:
        link = self.bridge.link
        await link.wait_ready()
        await link.wait_confirmed(self.settings.publish_timeout)
        for queue in queues:
            with contextlib.suppress(ChannelClosedError):
                channel = await link.open_channel()
                try:
                    await link.rpc(channel, "queue_purge", queue=queue)
                finally:
                    if channel.is_open:
                        channel.close()
        for inbox in self.inboxes.values():
            for item in inbox.remove_if(lambda item: True):
                if isinstance(item, Delivery):
                    item.settle(True)

    async def close(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        link = self.bridge.link
        if not await link.wait_confirmed(max(deadline - loop.time(), 0.0)):
            logger.error("Closing with %d messages the broker has not confirmed", link.pending)
        self._closing = True
        self._consuming = None
        self._want_results.clear()
        for inbox in self.inboxes.values():
            for item in inbox.remove_if(lambda item: isinstance(item, Delivery)):
                assert isinstance(item, Delivery)
                item.settle(False, requeue=True)
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            channel.close()  # gives back what it still holds
