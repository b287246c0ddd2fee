"""The campaign's exchanges and queues on the broker, and the properties of its messages.

:class:`CampaignTopology` declares what a process needs, idempotently, on each new
connection; the property helpers are the one place that says how a request, a result and
a kill signal look on the wire beyond their body. Used by the roles of this package and by
the gateway. This module must not consume or keep messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import pika

from colmena_core.queue.amqp import AmqpLink, ChannelClosedError
from colmena_core.queue.rabbitmq.bridge import BrokerConnection
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.roles import Delivery, Outgoing

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_DELIVERY_LIMIT",
    "ERROR_HEADER",
    "LEASE_HEADER",
    "REASON_HEADER",
    "RESULT_DELIVERY_LIMIT",
    "ROUTING_KEY_HEADER",
    "TASK_HEADER",
    "CampaignTopology",
    "copy_properties",
    "dead_letter",
    "quorum_arguments",
    "request_properties",
    "result_properties",
]

logger = logging.getLogger(__name__)

DEFAULT_DELIVERY_LIMIT = 20
"""Deliveries of a request before the broker dead-letters it, unless configured otherwise."""

RESULT_DELIVERY_LIMIT = 1000
"""Limit on result redeliveries: explicit, as RabbitMQ 4 defaults to 20."""

DEAD_LETTER_DELIVERY_LIMIT = 1_000_000
"""Limit on redeliveries of a message that is read and put back rather than consumed (a dead
letter, whose every listing returns it to its queue; a ledger record, returned by every
``in_flight``) or that only waits to expire (a lease): explicit and high, as RabbitMQ 4
defaults to 20 and dead-letters or drops a message beyond it."""

CONTENT_TYPE = "application/vnd.colmena"
"""Content type of requests and results (the wire format of :mod:`colmena_core.models.wire`)."""

# Headers set by the transport
LEASE_HEADER = "colmena-lease"
TASK_HEADER = "colmena-task-id"
REASON_HEADER = "colmena-reason"
ERROR_HEADER = "colmena-error"
ROUTING_KEY_HEADER = "colmena-routing-key"


def quorum_arguments(delivery_limit: int | None, dead_letter_exchange: str) -> dict[str, Any]:
    """Arguments of a durable quorum queue that dead-letters to ``dead_letter_exchange``."""
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
    }
    if delivery_limit is not None:
        arguments["x-delivery-limit"] = delivery_limit
    return arguments


def request_properties(reply_to: str, method: str | None) -> Any:
    """Properties of a request sent by ``reply_to`` (persistent)."""
    return pika.BasicProperties(
        delivery_mode=2,
        content_type=CONTENT_TYPE,
        reply_to=reply_to,
        type=method or "",
        timestamp=int(time.time()),
    )


def result_properties(task_id: str) -> Any:
    """Properties of the result of ``task_id`` (persistent)."""
    return pika.BasicProperties(
        delivery_mode=2,
        content_type=CONTENT_TYPE,
        correlation_id=task_id,
        timestamp=int(time.time()),
    )


def copy_properties(properties: Any, headers: dict[str, Any] | None) -> Any:
    """Properties of a message with other headers (x-death and friends are kept as given)."""
    if properties is None:
        return pika.BasicProperties(delivery_mode=2, headers=headers)
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


def dead_letter(
    bridge: BrokerConnection, names: CampaignNames, delivery: Delivery, reason: str, error: str
) -> None:
    """Move a delivery to the campaign's dead letters, saying why (loop thread).

    A copy goes to the dead-letter exchange with ``reason`` and ``error`` in its headers;
    the original is acknowledged once the broker confirmed the copy (or, if the copy
    fails, rejected, which dead-letters it without the reason).
    """
    logger.warning("Dead-lettering a message from %s (%s): %s", delivery.routing_key, reason, error)
    properties = delivery.properties
    headers = {
        k: v for k, v in (properties.headers or {}).items() if isinstance(k, str) and len(k) < 128
    }
    headers.update(
        {
            REASON_HEADER: reason,
            ERROR_HEADER: error[:1000],
            ROUTING_KEY_HEADER: delivery.routing_key,
        }
    )
    bridge.enqueue(
        Outgoing(
            names.dead_exchange,
            delivery.routing_key,
            delivery.body,
            copy_properties(properties, headers),
            retry_refused=False,
            on_confirm=lambda _: delivery.settle(True),
            on_failed=lambda _: delivery.settle(False),
        )
    )


class CampaignTopology:
    """Declares the exchanges and queues of a campaign through an :class:`AmqpLink`.

    Every declaration is idempotent, so each process declares what it needs on each new
    connection, whoever came first. A queue that exists with other arguments (another
    ``delivery_limit``, say) is used as it is, with a warning. Used by
    :class:`~colmena_core.queue.rabbitmq.RabbitMQQueues` and by the gateway, in the loop of
    their link.

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
        self, name: str, arguments: dict[str, Any], durable: bool = True, **options: Any
    ) -> Any:
        """Declare a queue; if it exists with other arguments, use it as it is.

        Returns:
            The broker's answer (``method.queue``, ``method.message_count``)
        """
        channel = await self.link.open_channel()
        try:
            return await self.link.rpc(
                channel,
                "queue_declare",
                queue=name,
                durable=durable,
                arguments=arguments,
                **options,
            )
        except ChannelClosedError as exc:
            if exc.reply_code != 406:
                raise
            logger.warning(
                "Queue %s exists with other settings than %s; using it as it is", name, arguments
            )
            channel = await self.link.open_channel()
            return await self.link.rpc(channel, "queue_declare", queue=name, passive=True)
        finally:
            if channel.is_open:
                channel.close()

    async def bind(self, queue: str, exchange: str, routing_key: str = "", **options: Any) -> None:
        """Bind ``queue`` to ``exchange``."""
        await self.link.rpc(
            self.link.channel,
            "queue_bind",
            queue=queue,
            exchange=exchange,
            routing_key=routing_key or None,
            **options,
        )

    async def declare_common(self) -> None:
        """The exchanges, the dead letters and the queue of unrouted requests."""
        names, channel = self.names, self.link.channel
        exchanges = [
            (names.unrouted_exchange, "fanout", None),
            (names.requests_exchange, "direct", {"alternate-exchange": names.unrouted_exchange}),
            (names.results_exchange, "topic", None),
            (names.control_exchange, "fanout", None),
            (names.heartbeats_exchange, "fanout", None),
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
        # Every durable queue is a quorum queue, replicated in a cluster: a classic queue lives
        # on the node that declared it, and while that node is down no client can declare it
        # again, which would stop the campaign.
        await self.declare_queue(
            names.dead_letter_queue,
            {"x-queue-type": "quorum", "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT},
        )
        await self.bind(names.dead_letter_queue, names.dead_exchange)
        arguments = quorum_arguments(self.delivery_limit, names.dead_exchange)
        await self.declare_queue(names.unrouted_queue, arguments)
        await self.bind(names.unrouted_queue, names.unrouted_exchange)

    async def declare_request_queues(self, methods: Iterable[str]) -> None:
        """The request queue of each method, bound to the requests exchange."""
        arguments = quorum_arguments(self.delivery_limit, self.names.dead_exchange)
        for method in methods:
            queue = self.names.request_queue(method)
            await self.declare_queue(queue, arguments)
            await self.bind(queue, self.names.requests_exchange, method)

    async def declare_client(
        self, client_id: str, topics: Iterable[str], methods: Iterable[str] = ()
    ) -> None:
        """The result queues of a client, and the request queues of the methods it uses."""
        arguments = quorum_arguments(RESULT_DELIVERY_LIMIT, self.names.dead_exchange)
        for topic in topics:
            queue = self.names.result_queue(client_id, topic)
            await self.declare_queue(queue, arguments)
            await self.bind(
                queue,
                self.names.results_exchange,
                self.names.result_routing_key(client_id, topic),
            )
        await self.declare_request_queues(methods)
