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
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika

from colmena_core.exceptions import (
    MessageAuthenticationError,
    MessageDecodeError,
    MessageTooLargeError,
    TransportError,
)
from colmena_core.models import Result
from colmena_core.models.wire import decode_result
from colmena_core.queue.amqp import ChannelClosedError, PublishRefusedError
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.roles import ConnectionState, Delivery, Inbox, Outgoing, Role
from colmena_core.queue.rabbitmq.topology import (
    DEAD_LETTER_DELIVERY_LIMIT,
    CampaignTopology,
    dead_letter,
    quorum_arguments,
    request_properties,
)
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
    ledger: bool = False
    """Record confirmed requests and processed results, so a restarted client can ask
    which of its tasks are in flight (:meth:`ClientRole.in_flight`)."""


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
        self._confirmations: dict[str, concurrent.futures.Future[bool]] = {}
        """Requests waiting for the broker's confirmation (refused ones until waited for)."""
        self._confirmations_lock = threading.Lock()
        self.serves_only = False
        """Set for a task server's queues: no result queues of its own to declare."""
        self._consuming: ConnectionState | None = None
        self._channel: Any = None
        self._closing = False
        self._housekeeper: asyncio.Task[Any] | None = None

    # ------------------------------------------------------- caller threads
    def send_request(self, task_id: str, message: bytes, method: str | None) -> None:
        """Publish a request (waits for room among unconfirmed messages, not for its confirm)."""
        bridge = self.bridge
        bridge.wait_ready(self)
        confirmed: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._confirmations_lock:
            self._confirmations[task_id] = confirmed
        publish = Outgoing(
            self.names.requests_exchange,
            method or "",
            message,
            request_properties(self.settings.client_id, method),
            budget=len(message),
        )
        publish.on_confirm = partial(self._request_confirmed, task_id, confirmed)
        publish.on_failed = partial(self._request_refused, task_id, confirmed, publish)
        try:
            bridge.publish(publish, self.settings.publish_timeout)
        except BaseException:
            with self._confirmations_lock:
                self._confirmations.pop(task_id, None)
            raise

    def wait_confirmed(self, task_id: str | None, timeout: float | None) -> bool:
        """Wait for the confirmation of one request (``None``: of every one sent so far).

        Raises:
            TransportError: the request of ``task_id`` was refused
        """
        if task_id is None:  # everything this process published on the connection so far
            deadline = None if timeout is None else time.monotonic() + timeout
            link = self.bridge.link
            if not self.bridge.run(link.wait_confirmed(1e9 if timeout is None else timeout), None):
                return False
            with self._confirmations_lock:
                waiting = list(self._confirmations.values())
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            _, pending = concurrent.futures.wait(waiting, remaining)
            return not pending
        with self._confirmations_lock:
            confirmed = self._confirmations.get(task_id)
        if confirmed is None:
            return True  # confirmed already
        try:
            confirmed.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        finally:
            if confirmed.done():
                with self._confirmations_lock:
                    self._confirmations.pop(task_id, None)
        return True

    def take_result(self, topic: str, timeout: float | None) -> Delivery | Result:
        """The next result of ``topic``: a delivery (to acknowledge) or a local failure."""
        self.want_results()
        item = self.inboxes[topic].take(timeout)
        assert item is not None  # result inboxes carry no signals
        return item

    def ack(self, delivery: Delivery) -> None:
        self.bridge.call(delivery.settle, True)

    def reject(self, delivery: Delivery, error: MessageDecodeError) -> None:
        """Dead-letter a result that cannot be taken, saying why."""
        reason = "unauthenticated" if isinstance(error, MessageAuthenticationError) else "rejected"
        self.bridge.call(dead_letter, self.bridge, self.names, delivery, reason, str(error))

    def want_results(self) -> None:
        """Start consuming this client's result queues (idempotent)."""
        if self._want_results.is_set():
            return
        self._want_results.set()
        self.bridge.call(self._consume_if_needed)

    def send_kill_signal(self, message: bytes) -> None:
        bridge = self.bridge
        bridge.wait_ready(self)
        properties = pika.BasicProperties(delivery_mode=2, type="kill", timestamp=int(time.time()))
        bridge.publish(
            Outgoing(self.names.control_exchange, "", message, properties, barrier=True),
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
            if self.settings.ledger:
                await topology.declare_queue(
                    self.names.ledger_queue(self.settings.client_id),
                    quorum_arguments(DEAD_LETTER_DELIVERY_LIMIT, self.names.dead_exchange),
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

    def _request_confirmed(
        self, task_id: str, confirmed: concurrent.futures.Future[bool], returned: bool
    ) -> None:
        with self._confirmations_lock:
            self._confirmations.pop(task_id, None)
        if not confirmed.done():
            confirmed.set_result(returned)
        self._record(b"+", task_id)

    def _record(self, mark: bytes, task_id: str) -> None:
        """Note in the client's ledger that a task was confirmed (+) or processed (-)."""
        if not self.settings.ledger:
            return
        self.bridge.enqueue(
            Outgoing(
                "",
                self.names.ledger_queue(self.settings.client_id),
                mark + task_id.encode(),
                pika.BasicProperties(delivery_mode=2),
            )
        )

    def processed(self, task_id: str) -> None:
        """Note that the result of ``task_id`` was processed (caller thread)."""
        if self.settings.ledger:
            self.bridge.call(self._record, b"-", task_id)

    def in_flight(self, timeout: float) -> set[str]:
        """Tasks this client sent whose requests were confirmed and whose results were not
        processed yet, as the ledger on the broker says (caller thread).

        Raises:
            ValueError: the queues keep no ledger
            BrokerConnectionError: the broker did not answer in time
        """
        if not self.settings.ledger:
            raise ValueError("These queues keep no ledger: create them with ledger=True")
        self.bridge.wait_ready(self, timeout)
        return self.bridge.run(self._read_ledger(), timeout)

    async def _read_ledger(self) -> set[str]:
        link = self.bridge.link
        queue = self.names.ledger_queue(self.settings.client_id)
        await link.wait_confirmed(self.settings.publish_timeout)  # our own records first
        channel = await link.open_channel()
        try:
            sent: dict[str, int] = {}
            done: dict[str, int] = {}
            while (message := await link.get(channel, queue)) is not None:
                method, _, body = message
                mark, task_id = body[:1], body[1:].decode(errors="replace")
                (sent if mark == b"+" else done)[task_id] = method.delivery_tag
            # Compaction: the records of finished tasks go, the others stay
            for task_id, tag in done.items():
                channel.basic_ack(tag)
                if task_id in sent:
                    channel.basic_ack(sent.pop(task_id))
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
            return set(sent)
        finally:
            if channel.is_open:
                channel.close()

    def _request_refused(
        self,
        task_id: str,
        confirmed: concurrent.futures.Future[bool],
        publish: Outgoing,
        error: BaseException,
    ) -> None:
        """Give the sender a failure result for a request the broker does not take."""
        if not confirmed.done():
            confirmed.set_exception(
                error if isinstance(error, TransportError) else TransportError(str(error))
            )
        if not isinstance(error, PublishRefusedError):
            return  # the connection closed for good: a waiter learns it, nobody else can
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
