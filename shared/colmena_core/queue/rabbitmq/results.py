"""How a task server's results reach the broker, and what their confirmation settles.

A result is published with confirms to the results exchange, addressed by its reply
address and topic. Once the broker confirmed a final result (``complete`` not false), the
request it answers is acknowledged, its task remembered as completed and its lease, if
any, given up; an intermediate result leaves the request held. A result the broker refuses
(too large, say) is replaced by a failure saying why; one no queue takes is dead-lettered.

This module works for the server role (:mod:`.server`): the message is built on the
sender's thread, the rest runs on the loop thread. It must not encode results (the
:class:`~.sender.ResultSender` thread does) nor wait on the broker.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from colmena_core.models.wire import encode_result
from colmena_core.queue.amqp import PublishRefusedError
from colmena_core.queue.rabbitmq.client import refusal
from colmena_core.queue.rabbitmq.roles import Outgoing
from colmena_core.queue.rabbitmq.topology import (
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    TASK_HEADER,
    copy_properties,
    result_properties,
)

if TYPE_CHECKING:
    from colmena_core.queue.rabbitmq.server import ServerRole

__all__ = ["COMPLETED_KEPT", "ResultPublishing"]

logger = logging.getLogger(__name__)

COMPLETED_KEPT = 100_000
"""How many finished task IDs a task server remembers to recognise redeliveries."""


class ResultPublishing:
    """The results of one server role (loop thread only, but for :meth:`publication`)."""

    def __init__(self, server: ServerRole) -> None:
        self.server = server

    def publication(
        self, task_id: str, topic: str, reply_to: str, message: bytes, final: bool = True
    ) -> Outgoing:
        """The message that carries a result, with what its confirmation settles."""
        names = self.server.names
        routing_key = names.result_routing_key(reply_to, topic)
        publish = Outgoing(
            names.results_exchange,
            routing_key,
            message,
            result_properties(task_id),
            mandatory=True,
        )
        publish.on_confirm = partial(self._confirmed, task_id, publish, final)
        publish.on_failed = partial(self._refused, task_id, topic, reply_to, publish, final)
        return publish

    def _refused(
        self,
        task_id: str,
        topic: str,
        reply_to: str,
        publish: Outgoing,
        final: bool,
        error: BaseException,
    ) -> None:
        """Send a failure saying why in place of a result the broker does not take."""
        if not isinstance(error, PublishRefusedError):
            return  # closing: the request stays unacknowledged and runs again elsewhere
        logger.error("The broker refused the result of task %s: %s", task_id, error)
        if not final:
            return  # an intermediate result: the task still runs and sends its final one
        server = self.server
        failure = refusal(publish.body, error, server.signer)
        if failure is not None:  # small: outside the publish budget, which would block here
            message = encode_result(failure, server.signer)
            server.bridge.enqueue(self.publication(task_id, topic, reply_to, message))

    def _confirmed(self, task_id: str, publish: Outgoing, final: bool, returned: bool) -> None:
        server = self.server
        if returned:
            logger.error(
                "No queue takes the result of task %s (routing key %s): dead-lettering it",
                task_id,
                publish.routing_key,
            )
            headers = {
                REASON_HEADER: "unroutable-result",
                ROUTING_KEY_HEADER: publish.routing_key,
                TASK_HEADER: task_id,
            }
            server.bridge.enqueue(
                Outgoing(
                    server.names.dead_exchange,
                    publish.routing_key,
                    publish.body,
                    copy_properties(publish.properties, headers),
                )
            )
        if not final:
            return  # the request stays held (or leased) until the final result
        entry = server.held.pop(task_id, None)
        server.completed[task_id] = None
        if len(server.completed) > COMPLETED_KEPT:
            server.completed.popitem(last=False)
        if entry is None:
            return
        server.release(entry)
        if entry.leased:
            server.leases.count -= 1
            server.bridge.spawn(server.update_request_consumers())
