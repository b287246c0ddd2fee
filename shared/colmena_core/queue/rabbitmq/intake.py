"""What arrives at a task server: requests on its consumers, and the kill signal.

Each request is checked (signature, reply address, delivery count) and decoded once;
a bad one is dead-lettered with the reason, a redelivered copy of one held or finished is
settled at once, one that came unrouted for a method whose queue appeared since is
rerouted there, and the rest go to the server role's inbox for a caller. The kill signal
is raised to a caller once the requests queued before it are taken.

This module works for the server role (:mod:`.server`), on the loop thread; it must not
settle a request it handed over, which is the role's business once the result is confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from colmena_core.exceptions import MessageAuthenticationError, MessageDecodeError
from colmena_core.models import Result
from colmena_core.models.wire import decode_kill
from colmena_core.queue.amqp import ChannelClosedError
from colmena_core.queue.rabbitmq.roles import Delivery
from colmena_core.queue.rabbitmq.topology import dead_letter

if TYPE_CHECKING:
    from colmena_core.queue.rabbitmq.server import ServerRole

__all__ = ["Held", "Intake"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Held:
    """A request a task server holds, from delivery until its result is confirmed."""

    task_id: str
    body: bytes
    routing_key: str
    properties: Any
    delivery: Delivery | None
    task: Result | None = None
    """The request decoded, for the caller (handed over once)."""
    leased: bool = False
    leasing: bool = False


class Intake:
    """The receiving side of one server role (loop thread only)."""

    def __init__(self, server: ServerRole) -> None:
        self.server = server

    def on_control(self, delivery: Delivery) -> None:
        server = self.server
        delivery.settle(True)
        try:
            decode_kill(delivery.body, server.signer)
        except MessageDecodeError as exc:
            logger.warning("Ignored a message on the control queue that is no kill signal: %s", exc)
            return
        logger.info("Kill signal received; it takes effect once the queued requests are taken")
        server.bridge.spawn(self._signal_kill_when_drained())

    async def _signal_kill_when_drained(self) -> None:
        """Raise the kill signal to a caller once no request queued before it is waiting."""
        server = self.server
        link = server.bridge.link
        while not server.closing:
            try:
                await link.wait_ready()
                if not len(server.request_inbox):
                    waiting = 0
                    for queue in server.request_queues():
                        frame = await link.rpc(
                            link.channel, "queue_declare", queue=queue, passive=True
                        )
                        waiting += frame.method.message_count
                    if not waiting and not len(server.request_inbox):
                        break
            except ChannelClosedError:
                pass
            await asyncio.sleep(0.05)
        server.request_inbox.signal()

    def on_request(self, queue: str, delivery: Delivery) -> None:
        server = self.server
        names, bridge = server.names, server.bridge
        entry = Held("", delivery.body, delivery.routing_key, delivery.properties, delivery)
        try:
            task = server.decode(entry)
        except MessageAuthenticationError as exc:
            dead_letter(bridge, names, delivery, "unauthenticated", str(exc))
            return
        except (MessageDecodeError, ValueError) as exc:
            dead_letter(bridge, names, delivery, "rejected", str(exc))
            return
        if server.leases.expirations(delivery.properties) >= server.settings.delivery_limit:
            error = f"The task servers that held task {task.task_id} stopped too often"
            dead_letter(bridge, names, delivery, "delivery_limit", error)
            return
        task_id = entry.task_id = task.task_id
        entry.task = task
        if task_id in server.completed:
            delivery.settle(True)  # its result is already confirmed
            return
        held = server.held.get(task_id)
        if held is not None:  # a copy of a request we hold: keep one unacknowledged copy
            current = held.delivery
            if held.leased or (current is not None and current.state is delivery.state):
                delivery.settle(True)
            else:
                held.delivery = delivery
            return
        server.held[task_id] = entry
        served = server.served
        if (
            queue == names.unrouted_queue
            and served is not None
            and task.method is not None
            and task.method not in served
        ):
            bridge.spawn(self._reroute(entry, task.method))
        else:
            server.request_inbox.put(entry)

    async def _reroute(self, entry: Held, method: str) -> None:
        """Send a request that came unrouted to its method queue, if one appeared since."""
        server = self.server
        link = server.bridge.link
        exists = False
        with contextlib.suppress(ChannelClosedError, ValueError):
            channel = await link.open_channel()
            try:
                await link.rpc(
                    channel, "queue_declare", queue=server.names.request_queue(method), passive=True
                )
                exists = True
            finally:
                if channel.is_open:
                    channel.close()
        if not exists:  # no server serves it: ours reports the failure
            server.request_inbox.put(entry)
            return
        logger.info("Rerouting task %s to the queue of method %s", entry.task_id, method)

        def done(returned: bool) -> None:
            if server.held.get(entry.task_id) is entry:
                del server.held[entry.task_id]
            server.release(entry)

        server.leases.republish(entry.routing_key, entry.properties, entry.body, done)
