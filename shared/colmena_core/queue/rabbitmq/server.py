"""The server role: what a task server does on the broker.

It consumes the request queues of the methods it serves (and the unrouted requests) into
an :class:`~.bridge.Inbox`, holds each request unacknowledged until the broker confirmed
its final result (intermediate results, ``complete`` false, leave it held), then
acknowledges it: a server killed mid-task leaves its requests to the next server. Requests
held longer than ``lease_after`` move to leases (:mod:`.leases`). What arrives (requests,
the kill signal on the server's own control queue) is checked and sorted by :mod:`.intake`;
what a confirmed result settles is decided by :mod:`.results`.

Results are encoded and published by a :class:`~.sender.ResultSender` thread of the queues,
never on the engine's threads: ``send_result`` hands the result over and returns. A result
goes to the reply address its request carried (:attr:`Result.reply_to`, else the request's
``reply_to`` property).

This module owns the role's consumers, channel and life on each connection; it must not
decode results nor block the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from colmena_core.exceptions import KillSignalException
from colmena_core.models import Result
from colmena_core.names import check_name
from colmena_core.queue.amqp import ChannelClosedError
from colmena_core.queue.rabbitmq.intake import Held, Intake
from colmena_core.queue.rabbitmq.leases import Leases
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.results import ResultPublishing
from colmena_core.queue.rabbitmq.roles import ConnectionState, Delivery, Inbox, Role
from colmena_core.queue.rabbitmq.topology import CampaignTopology
from colmena_core.security import MessageSigner

__all__ = ["Held", "ServerRole", "ServerSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """What the server role needs; picklable and immutable."""

    names: CampaignNames
    client_id: str
    prefetch: int
    delivery_limit: int
    lease_after: float
    lease_ttl: float
    publish_timeout: float


@dataclass(eq=False)
class _Serving:
    """What the server keeps per connection; dropped with the connection."""

    state: ConnectionState
    channel: Any
    request_tags: list[str] = field(default_factory=list)
    request_prefetch: int = 0


class ServerRole(Role):
    """The broker side of a task server (see the module documentation)."""

    def __init__(
        self,
        settings: ServerSettings,
        served: frozenset[str] | None,
        decode: Callable[[bytes], Result],
        signer: MessageSigner | None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._decode = decode
        self.signer = signer
        self.names = settings.names
        self.server_id = uuid.uuid4().hex[:12]
        self.request_inbox: Inbox[Held] = Inbox()
        self.held: dict[str, Held] = {}
        self.completed: OrderedDict[str, None] = OrderedDict()
        self.leases = Leases(self)
        self.intake = Intake(self)
        self.results = ResultPublishing(self)
        self._served = served
        self._served_lock = threading.Lock()
        self._want_serving = threading.Event()
        self._serving: _Serving | None = None
        self._serving_on: ConnectionState | None = None
        self._stopped = False
        self._closing = False
        self._reconsuming = False
        self._control_channel: Any = None
        self._housekeeper: asyncio.Task[Any] | None = None

    # ------------------------------------------------------- caller threads
    def set_served(self, served: frozenset[str] | None) -> None:
        """Set the methods to serve, unless serving already started."""
        with self._served_lock:
            if not self._want_serving.is_set():
                self._served = served

    @property
    def served(self) -> frozenset[str] | None:
        with self._served_lock:
            return self._served

    def take_request(self, timeout: float | None) -> Result:
        """The next request, decoded.

        Raises:
            TimeoutException: nothing arrived in time
            KillSignalException: the kill signal arrived
        """
        if not self._want_serving.is_set():
            with self._served_lock:
                self._want_serving.set()
            self.bridge.call(self._serve_if_needed)
        entry = self.request_inbox.take(timeout)
        if entry is None:
            raise KillSignalException()
        task, entry.task = entry.task, None
        if task is None:  # handed over before: a caller asks again after a failure
            task = self.decode(entry)
        return task

    def publish_result(self, result: Result, message: bytes) -> None:
        """Publish a result (sender thread); waits for room among unconfirmed messages."""
        bridge = self.bridge
        bridge.wait_ready(self)
        reply_to = result.reply_to
        if not reply_to:
            logger.warning(
                "Result of task %s has no reply address: sending it to %s",
                result.task_id,
                self.settings.client_id,
            )
            reply_to = self.settings.client_id
        # An intermediate result leaves the request held: the task still runs
        final = result.complete is not False
        publish = self.results.publication(result.task_id, result.topic, reply_to, message, final)
        publish.budget = len(message)
        bridge.publish(publish, self.settings.publish_timeout)

    # ---------------------------------------------------------- loop thread
    def decode(self, entry: Held) -> Result:
        """The request of ``entry``, its signature checked.

        Raises:
            MessageDecodeError: not a valid request, or signed badly
            ValueError: its reply address breaks the name rule
        """
        task = self._decode(entry.body)
        if not task.reply_to:
            reply_to = str(entry.properties.reply_to or "")
            task.reply_to = check_name(reply_to, "The reply address") if reply_to else None
        return task

    async def declare(self, state: ConnectionState) -> None:
        topology = CampaignTopology(state.link, self.names, self.settings.delivery_limit)
        await topology.declare_common()
        await self._declare_control(topology)
        if self._want_serving.is_set():
            await topology.declare_request_queues(sorted(self.served or ()))
            await self.leases.declare(topology)

    def idle_expiry_ms(self) -> int:
        """How long an abandoned per-server queue outlives its server."""
        return int(max(600.0, 10 * self.settings.lease_ttl) * 1000)

    async def _declare_control(self, topology: CampaignTopology) -> None:
        queue = self.names.control_queue(self.server_id)
        # A quorum queue, like every durable queue of the campaign (see CampaignTopology)
        await topology.declare_queue(
            queue, {"x-queue-type": "quorum", "x-expires": self.idle_expiry_ms()}
        )
        await topology.bind(queue, self.names.control_exchange)

    async def start(self, state: ConnectionState) -> None:
        if self._housekeeper is None:
            self._housekeeper = self.bridge.spawn(self._housekeeping())
        if self._want_serving.is_set():
            await self._start_serving(state, declare=True)

    def _serve_if_needed(self) -> None:
        state = self.state
        if state is not None and state.alive and self._serving_on is not state:
            self.bridge.spawn(self._start_serving(state, declare=True))

    async def _start_serving(self, state: ConnectionState, declare: bool = False) -> None:
        if self._serving_on is state:
            return
        self._serving_on = state  # at once: a second call meanwhile must not serve twice
        link = state.link
        channel = await state.open_channel(self._on_channel_closed)
        channel.add_on_cancel_callback(self._on_cancelled)
        serving = _Serving(state, channel)
        self._serving = serving
        if declare:
            topology = CampaignTopology(link, self.names, self.settings.delivery_limit)
            await topology.declare_request_queues(sorted(self.served or ()))
            await self.leases.declare(topology)
        await self.consume(
            serving, self.names.expired_lease_queue(self.server_id), self.leases.on_expired
        )
        await self.consume(
            serving, self.names.control_queue(self.server_id), self.intake.on_control, 1
        )
        await self.update_request_consumers()

    async def consume(
        self,
        serving: _Serving,
        queue: str,
        callback: Callable[[Delivery], None],
        prefetch: int | None = None,
    ) -> str:
        link = serving.state.link

        def received(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            callback(
                Delivery(
                    method.delivery_tag,
                    serving.state,
                    channel,
                    method.routing_key,
                    properties,
                    body,
                )
            )

        await link.rpc(
            serving.channel, "basic_qos", prefetch_count=prefetch or self.settings.prefetch
        )
        frame = await link.rpc(
            serving.channel, "basic_consume", queue=queue, on_message_callback=received
        )
        return str(frame.method.consumer_tag)

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        serving = self._serving
        if self._closing or serving is None or channel is not serving.channel:
            return
        if serving.state.alive and not self.bridge.link.closing:
            self.bridge.link.reconnect(f"The broker closed a request channel: {reason!r}")

    def _on_cancelled(self, frame: Any) -> None:
        """A queue we consume went away: reconnect, which declares it again."""
        if not self._closing and not self.bridge.link.closing:
            self.bridge.link.reconnect(f"The broker cancelled consumer {frame.method.consumer_tag}")

    def request_queues(self) -> list[str]:
        return [self.names.request_queue(m) for m in sorted(self.served or ())] + [
            self.names.unrouted_queue
        ]

    async def update_request_consumers(self) -> None:
        """Consume requests with a prefetch of the capacity not taken by leased tasks.

        Leased tasks no longer count against the broker's prefetch window, so the window
        of the consumers shrinks by their number; when it reaches zero they are cancelled.
        """
        if self._reconsuming:
            return
        self._reconsuming = True
        try:
            while (serving := self._serving) is not None and serving.state.alive:
                if self._stopped:
                    return
                wanted = max(self.settings.prefetch - self.leases.count, 0)
                if wanted == serving.request_prefetch and (serving.request_tags or wanted == 0):
                    return
                link = serving.state.link
                for tag in serving.request_tags:
                    await link.rpc(serving.channel, "basic_cancel", consumer_tag=tag)
                serving.request_tags = []
                serving.request_prefetch = wanted
                if wanted:
                    for queue in self.request_queues():
                        tag = await self.consume(
                            serving, queue, partial(self.intake.on_request, queue), wanted
                        )
                        serving.request_tags.append(tag)
        finally:
            self._reconsuming = False

    def lost(self, state: ConnectionState) -> None:
        if self._serving is not None and self._serving.state is state:
            self._serving = None
        dropped = self.request_inbox.remove_if(
            lambda e: not e.leased and e.delivery is not None and e.delivery.state is state
        )
        for entry in dropped:
            self.held.pop(entry.task_id, None)

    @property
    def closing(self) -> bool:
        """Whether the role is closing (its private queues are going)."""
        return self._closing

    def release(self, entry: Held, ack: bool = True) -> None:
        """Acknowledge (or give back) the delivery a held request came with, once."""
        delivery, entry.delivery = entry.delivery, None
        if delivery is not None:
            delivery.settle(ack, requeue=not ack)

    # ---------------------------------------------------------- housekeeping
    async def _housekeeping(self) -> None:
        """Lease requests held too long; keep the private queues alive."""
        settings = self.settings
        period = min(max(min(settings.lease_after, settings.lease_ttl) / 4, 0.05), 30.0)
        redeclare_every = min(settings.lease_ttl, 60.0)
        loop = asyncio.get_running_loop()
        last_redeclare = loop.time()
        while not self._closing:
            await asyncio.sleep(period)
            state = self.state
            if state is None or not state.alive:
                continue
            self.leases.lease_long_held(state)
            if loop.time() - last_redeclare > redeclare_every:
                last_redeclare = loop.time()
                with contextlib.suppress(ChannelClosedError):
                    topology = CampaignTopology(state.link, self.names, settings.delivery_limit)
                    await self._declare_control(topology)
                    if self._serving is not None:
                        await self.leases.declare(topology)

    async def flush(self) -> None:
        """Forget the requests waiting for a caller (their queues are purged by the client)."""
        for entry in self.request_inbox.remove_if(lambda e: True):
            self.held.pop(entry.task_id, None)
            self.completed[entry.task_id] = None  # its lease, if any, must not bring it back
            self.release(entry)
            if entry.leased:
                self.leases.count -= 1
        self.bridge.spawn(self.update_request_consumers())

    async def _stop_serving(self) -> None:
        """Stop taking requests; give back those not started; keep long tasks' work safe."""
        self._stopped = True
        serving = self._serving
        if serving is not None and serving.state.alive:
            with contextlib.suppress(ChannelClosedError):
                for tag in serving.request_tags:
                    await serving.state.link.rpc(serving.channel, "basic_cancel", consumer_tag=tag)
            serving.request_tags = []
        for entry in self.request_inbox.remove_if(lambda e: True):
            self.held.pop(entry.task_id, None)
            self.release(entry, ack=False)
            if entry.leased:
                self.leases.republish(entry.routing_key, entry.properties, entry.body, None)
        for entry in list(self.held.values()):
            if entry.leased:  # still running: its lease queue is about to be deleted
                self.leases.republish(entry.routing_key, entry.properties, entry.body, None)

    async def close(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        link = self.bridge.link
        serving = self._serving
        if serving is not None and serving.state.alive:
            await self._stop_serving()
        if not await link.wait_confirmed(max(deadline - loop.time(), 0.0)):
            logger.error("Closing with %d messages the broker has not confirmed", link.pending)
        # Deleting a queue this role consumes makes the broker cancel the consumer: that
        # is expected now, not a reason to reconnect
        self._closing = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        private = [self.names.control_queue(self.server_id)]
        if serving is not None:
            private += [
                self.names.lease_queue(self.server_id),
                self.names.expired_lease_queue(self.server_id),
            ]
        if link.connected:
            for queue in private:
                with contextlib.suppress(ChannelClosedError, TimeoutError):
                    await asyncio.wait_for(link.rpc(link.channel, "queue_delete", queue=queue), 5)
        if serving is not None and serving.channel.is_open:
            serving.channel.close()
        self._serving = None
