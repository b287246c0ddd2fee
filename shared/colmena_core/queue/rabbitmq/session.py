"""What one :class:`~.queues.RabbitMQQueues` object is made of in one process.

:class:`Settings` is what its roles need (picklable, travels with the object);
:class:`Session` is the object's client role, its server role once it serves tasks and its
result sender, attached to the process's one broker connection (:mod:`.bridge`) and left
when the object disconnects or is collected. A forked child makes sessions of its own.

This module wires roles to the connection; it must not talk to pika nor hold a strong
reference to its queue object (whose finalizer ends the session).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from colmena_core.exceptions import MessageDecodeError
from colmena_core.models import Result
from colmena_core.queue.base import QueueRole
from colmena_core.queue.rabbitmq.bridge import BrokerConnection
from colmena_core.queue.rabbitmq.client import ClientRole, ClientSettings
from colmena_core.queue.rabbitmq.sender import ResultSender
from colmena_core.queue.rabbitmq.server import ServerRole, ServerSettings

if TYPE_CHECKING:
    from colmena_core.queue.rabbitmq.queues import RabbitMQQueues

__all__ = ["SESSION_LOCK", "Session", "Settings"]


@dataclass(frozen=True)
class Settings:
    """What the roles need; picklable and immutable."""

    url: str
    client: ClientSettings
    server: ServerSettings
    heartbeat: int | None
    connect_timeout: float
    max_pending: int
    max_pending_bytes: int


class Session:
    """The roles of one queue object in one process, on the process's connection."""

    def __init__(self, queues: RabbitMQQueues) -> None:
        settings = self.settings = queues._settings
        # Weakly: the session must not keep its queue object alive (its finalizer ends it)
        self._decode_request = weakref.WeakMethod(queues.decode_request)
        self.signer = queues.signer
        self.lock = threading.Lock()
        self.client = ClientRole(settings.client, queues.signer)
        self.client.serves_only = queues.role is QueueRole.SERVER
        self.server: ServerRole | None = None
        self.sender: ResultSender | None = None
        self.served = queues._served
        self.connection = BrokerConnection.join(
            settings.url,
            self.client,
            connect_timeout=settings.connect_timeout,
            heartbeat=settings.heartbeat,
            max_pending=settings.max_pending,
            max_pending_bytes=settings.max_pending_bytes,
        )

    def server_role(self) -> ServerRole:
        with self.lock:
            if self.server is None:
                self.server = ServerRole(
                    self.settings.server, self.served, self._decode, self.signer
                )
                self.connection.attach(self.server)
            return self.server

    def _decode(self, message: bytes) -> Result:
        decode = self._decode_request()
        if decode is None:
            raise MessageDecodeError("The queue object that received this request is gone")
        return decode(message)

    def shutdown(self, timeout: float) -> None:
        """Send what the task server handed over, wait for pending confirms (up to
        ``timeout``), leave the connection (closed with its last user)."""
        if self.sender is not None:
            self.sender.stop(timeout)
        if self.server is not None:
            self.connection.detach(self.server, timeout)
        self.connection.detach(self.client, timeout)


SESSION_LOCK = threading.Lock()
"""Guards the making of each queue object's session; made anew in a forked child (read it
as a module attribute)."""


def _reset_session_lock() -> None:
    global SESSION_LOCK
    SESSION_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_session_lock)
