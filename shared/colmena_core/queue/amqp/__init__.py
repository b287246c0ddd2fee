"""One connection to an AMQP broker in an asyncio loop, with confirmed publishing.

:class:`AmqpLink` is the connection layer shared by
:class:`~colmena_core.queue.rabbitmq.RabbitMQQueues` (whose I/O thread runs the loop) and the
gateway (which runs it in the web server's loop). It owns one pika connection and, on it,
one channel in confirm mode for publishing; everything else belongs to its owner, which
plugs in through three hooks and the helpers below.

* **Connection life.** :meth:`AmqpLink.start` connects in the background and reconnects
  after every loss with the project's back-off (:class:`~colmena_core.backoff.Backoff`),
  each attempt bounded by the connect timeout. A URL may name several brokers,
  comma-separated (the nodes of a cluster): each attempt after a failure or a loss goes to
  the next one, in turn. Once the connection and its publishing channel are open, the link
  awaits the owner's ``on_connected`` hook (declare the topology: an error in it drops the
  connection and the link tries again), then starts publishing and calls ``on_ready``
  (consume again). ``on_lost`` runs after each loss, for the owner to forget what belonged
  to the lost channels (:attr:`AmqpLink.generation` numbers the connections). A publishing
  channel closed by the broker makes the link reconnect.
* **Channels.** :meth:`AmqpLink.open_channel` and :meth:`AmqpLink.rpc` turn pika's callbacks
  into awaitables; when the channel or the connection closes meanwhile they raise
  :class:`ChannelClosedError`, with the broker's reply code.
* **Publishing with confirms.** :meth:`AmqpLink.publish` keeps each :class:`Publication`
  until the broker confirms it and publishes it again after a reconnection, so a broker
  restart loses nothing (and a message may arrive twice). The owner learns of the
  confirmation through ``on_confirm``, which tells whether the broker returned a
  ``mandatory`` message no queue took. A message the broker refuses (a nack) is published
  again after a pause, or reported to ``on_failed`` if it asks not to be retried. A
  ``barrier`` message waits until every message published before it is confirmed;
  :meth:`AmqpLink.wait_confirmed` and :meth:`AmqpLink.drain` wait for confirmations, and
  ``max_unconfirmed`` bounds the messages on the wire at once.
* **Fewer system calls.** The connection writes the frames produced in one pass of the loop
  with one ``send()`` (:class:`CoalescingConnection`).

The package has one module per concern: :mod:`.connection` (addresses, errors, the socket
writer), :mod:`.link` (connection life and channels) and :mod:`.publishing` (confirmed
publishing, returns, barriers); this module only gathers their names.

Everything here runs in the loop's thread and nothing is thread-safe: owners in other
threads hand work to the loop.
"""

from __future__ import annotations

from colmena_core.queue.amqp.connection import (
    ChannelClosedError,
    CoalescingConnection,
    LinkClosedError,
    PublishRefusedError,
    broker_addresses,
    connection_parameters,
    redact_url,
)
from colmena_core.queue.amqp.link import MAX_RECONNECT_DELAY, AmqpLink
from colmena_core.queue.amqp.publishing import Publication

__all__ = [
    "MAX_RECONNECT_DELAY",
    "AmqpLink",
    "ChannelClosedError",
    "CoalescingConnection",
    "LinkClosedError",
    "Publication",
    "PublishRefusedError",
    "broker_addresses",
    "connection_parameters",
    "redact_url",
]
