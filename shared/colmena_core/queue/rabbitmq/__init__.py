"""Queues over a RabbitMQ broker: many thinkers and task servers per campaign, surviving crashes.

:class:`RabbitMQQueues` has the API of every Colmena queue; it adds a broker URL, a campaign
name (campaigns sharing a broker never see each other's messages) and a ``client_id`` that
names the thinker the results go back to. The transport moves opaque messages (see
:mod:`colmena_core.models.wire`) and does not deserialize payloads.

One module per concern:

=================  ==========================================================================
``names``          the campaign's names and the one name rule (:func:`check_name`)
``topology``       exchanges and queues, declared idempotently; message properties
``bridge``         the process's one connection: an I/O thread and the roles attached to it
``roles``          what roles are made of: connection state, deliveries, hand-offs
``client``         the thinker's role: requests out, confirmations, results in
``server``         the task server's role: requests in, kill signal, results out
``sender``         the thread that encodes and publishes results, off the engine's threads
``leases``         long tasks kept without holding a delivery past the consumer timeout
``admin``          queue depths and dead letters (list, requeue, purge), campaign deletion
``heartbeats``     heartbeats of task servers
``summaries``      what can be shown of a result without unpickling it
``monitor``        a monitor of a whole campaign (live servers, copies of results)
``queues``         :class:`RabbitMQQueues`, the picklable object users hold
=================  ==========================================================================

Topology (every name starts with ``colmena.<campaign>``; ``docs/architecture.md`` has a
picture)::

    .requests        direct   requests, routing key = method name; one durable quorum
                              queue per method: .requests.<method>
                              (x-delivery-limit, dead letters to .dead)
    .unrouted        fanout   alternate exchange of .requests: requests for methods
                              that have no queue yet wait in the queue .unrouted
    .results         topic    results, routing key <client_id>.<topic>; one durable quorum
                              queue per client and topic: .results.<client_id>.<topic>
    .control         fanout   the kill signal; each task server binds .control.<server>
    .heartbeats      fanout   task servers' heartbeats, for monitors
    .dead            fanout   dead letters, kept in the quorum queue .dead-letters
    .leases          headers  copies of long-running requests (see :mod:`.leases`)
    .leases.expired  headers  leases that were not renewed in time

Delivery contract (``ARCHITECTURE.md`` §3) and how it is met:

* Requests and results are persistent and published with publisher confirms. Publishing is
  pipelined: ``send_inputs`` hands the message to the I/O thread, which keeps it until the
  broker confirms it and publishes it again after a reconnection, so a broker restart
  loses nothing. ``disconnect()`` (also run when the process exits) waits for every
  pending confirm.
* A task server acknowledges a request only after the broker confirmed its result, so a
  server killed with SIGKILL leaves its tasks unacknowledged and the broker gives them to
  the next server (at-least-once execution). A client acknowledges a result when
  ``get_result`` hands it over; the base class drops duplicates by task ID.
* A request carries its reply address (:attr:`Result.reply_to`); a client declares its
  result queues before it publishes its first request, and results are published with
  ``mandatory``: a result that cannot be routed is dead-lettered.
* A request that cannot be decoded is rejected without requeueing: it goes to the dead
  letters (:func:`list_dead_letters`). A request for a method no task server serves is
  handed to the task server, which returns a failure result. A request returned more than
  ``delivery_limit`` times (a task that kills its servers) is dead-lettered by the broker.
  A request or result above the broker's ``max_message_size`` becomes a failure result
  (checked before sending, and learned from the broker if it refuses one anyway).
* The kill signal goes to every task server of the campaign through ``.control``. A server
  raises :class:`KillSignalException` once the requests queued before the signal are
  drained, like the in-band signal of the other transports.
"""

from __future__ import annotations

from colmena_core.exceptions import BrokerConnectionError
from colmena_core.queue.rabbitmq.admin import (
    DeadLetter,
    delete_campaign,
    list_dead_letters,
    purge_dead_letters,
    queue_depths,
    requeue_dead_letters,
)
from colmena_core.queue.rabbitmq.names import CampaignNames, check_name
from colmena_core.queue.rabbitmq.queues import (
    BROKER_URL_VARIABLE,
    DEFAULT_BROKER_URL,
    RabbitMQQueues,
)
from colmena_core.queue.rabbitmq.topology import DEFAULT_DELIVERY_LIMIT, CampaignTopology

__all__ = [
    "BROKER_URL_VARIABLE",
    "DEFAULT_BROKER_URL",
    "DEFAULT_DELIVERY_LIMIT",
    "BrokerConnectionError",
    "CampaignNames",
    "CampaignTopology",
    "DeadLetter",
    "RabbitMQQueues",
    "check_name",
    "delete_campaign",
    "list_dead_letters",
    "purge_dead_letters",
    "queue_depths",
    "requeue_dead_letters",
]
