"""Leases: how a task server keeps a long task without holding its delivery for hours.

The broker closes a channel that holds a delivery unacknowledged for longer than its
``consumer_timeout`` (30 minutes by default; on RabbitMQ 3.10 only node-wide). A task
server therefore never holds a request for more than ``lease_after`` seconds: it publishes
a copy of the request to its own lease queue (confirmed), then acknowledges the original.
A lease queue has a message TTL of ``lease_ttl`` and dead-letters to a second queue of the
same server, which the server consumes: while the task runs, the server puts the expired
lease back (renewal); once the result is sent it drops it. If the server is gone, nobody
consumes that second queue and after another ``lease_ttl`` its messages dead-letter to
``.requests``: the task goes back to its method queue.

This module works on the requests the server role holds; it must not decide what runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from colmena_core.queue.rabbitmq.roles import ConnectionState, Delivery, Outgoing
from colmena_core.queue.rabbitmq.topology import (
    DEAD_LETTER_DELIVERY_LIMIT,
    LEASE_HEADER,
    TASK_HEADER,
    CampaignTopology,
    copy_properties,
    quorum_arguments,
)

if TYPE_CHECKING:
    from colmena_core.queue.rabbitmq.server import Held, ServerRole

__all__ = ["Leases"]

logger = logging.getLogger(__name__)


class Leases:
    """The leases of one server role (loop thread only)."""

    def __init__(self, server: ServerRole) -> None:
        self.server = server
        self.count = 0
        """Requests held under a lease now (they no longer count against the prefetch)."""

    async def declare(self, topology: CampaignTopology) -> None:
        """The server's lease queue and the queue its expired leases go to."""
        server = self.server
        names, server_id = server.names, server.server_id
        ttl = int(server.settings.lease_ttl * 1000)
        binding = {"x-match": "all", LEASE_HEADER: server_id}
        for queue, exchange, target in (
            (names.lease_queue(server_id), names.leases_exchange, names.expired_leases_exchange),
            (
                names.expired_lease_queue(server_id),
                names.expired_leases_exchange,
                names.requests_exchange,
            ),
        ):
            arguments = quorum_arguments(DEAD_LETTER_DELIVERY_LIMIT, target)
            arguments.update({"x-message-ttl": ttl, "x-expires": server.idle_expiry_ms()})
            await topology.declare_queue(queue, arguments)
            await topology.bind(queue, exchange, arguments=binding)

    def expirations(self, properties: Any) -> int:
        """How often servers that held this request stopped before finishing it."""
        prefix = self.server.names.expired_lease_queue("")
        count = 0
        for death in (properties.headers or {}).get("x-death") or []:
            if death.get("reason") == "expired" and str(death.get("queue", "")).startswith(prefix):
                count += int(death.get("count", 1))
        return count

    def lease_long_held(self, state: ConnectionState) -> None:
        """Move requests held longer than ``lease_after`` on ``state`` to leases."""
        now = time.monotonic()
        for entry in list(self.server.held.values()):
            delivery = entry.delivery
            if (
                delivery is not None
                and not entry.leased
                and not entry.leasing
                and delivery.state is state
                and now - delivery.received > self.server.settings.lease_after
            ):
                logger.info("Task %s is held for long: moving it to a lease", entry.task_id)
                self.publish(entry, None)

    def publish(self, entry: Held, settle: Delivery | None) -> None:
        """Publish a lease for ``entry``; then acknowledge ``settle`` (the message it replaces)."""
        server = self.server
        headers = dict(entry.properties.headers or {})
        headers.update({LEASE_HEADER: server.server_id, TASK_HEADER: entry.task_id})

        def confirmed(returned: bool) -> None:
            entry.leasing = False
            if returned:  # its lease queue is gone: keep holding what we have
                logger.error("The lease of task %s could not be routed", entry.task_id)
                return
            if settle is not None:
                settle.settle(True)
            if server.held.get(entry.task_id) is not entry:
                return  # finished meanwhile: this lease is dropped when it expires
            if not entry.leased:
                entry.leased = True
                self.count += 1
                server.bridge.spawn(server.update_request_consumers())
            server.release(entry)

        entry.leasing = True
        server.bridge.enqueue(
            Outgoing(
                server.names.leases_exchange,
                entry.routing_key,
                entry.body,
                copy_properties(entry.properties, headers),
                mandatory=True,
                on_confirm=confirmed,
            )
        )

    def on_expired(self, delivery: Delivery) -> None:
        """A lease expired: renew it while its task runs, drop it once done."""
        server = self.server
        properties = delivery.properties
        task_id = str((properties.headers or {}).get(TASK_HEADER, ""))
        entry = server.held.get(task_id)
        if entry is not None and entry.leased:  # still running: renew the lease
            self.publish(entry, delivery)
        elif task_id in server.completed:
            delivery.settle(True)
        else:  # we lost track of it: give it back rather than lose it
            self.republish(
                delivery.routing_key, properties, delivery.body, lambda _: delivery.settle(True)
            )

    def republish(
        self, routing_key: str, properties: Any, body: bytes, done: Callable[[bool], None] | None
    ) -> None:
        """Publish a request to its method queue again, without lease headers."""
        server = self.server
        headers = {
            k: v
            for k, v in (properties.headers or {}).items()
            if k not in (LEASE_HEADER, TASK_HEADER)
        }
        server.bridge.enqueue(
            Outgoing(
                server.names.requests_exchange,
                routing_key,
                body,
                copy_properties(properties, headers),
                on_confirm=done,
            )
        )
