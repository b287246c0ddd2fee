"""What the roles on a broker connection are made of (see :mod:`.bridge`).

:class:`Role` is the interface of everything attached to the process's connection;
:class:`ConnectionState` is one connection's life, :class:`Delivery` a message received on
it, :class:`Outgoing` a message to publish with confirms. :class:`Inbox` and
:class:`PublishBudget` are the thread-safe hand-offs between the I/O thread and callers.
This module must not touch pika.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from colmena_core.exceptions import TimeoutException
from colmena_core.queue.amqp import AmqpLink, Publication

if TYPE_CHECKING:
    from colmena_core.queue.rabbitmq.bridge import BrokerConnection

__all__ = ["ConnectionState", "Delivery", "Inbox", "Outgoing", "PublishBudget", "Role"]

T = TypeVar("T")


# ------------------------------------------------------------ hand-offs
class Inbox(Generic[T]):
    """Items waiting for caller threads, with timeouts and a way to wake the waiters."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._changed = threading.Condition()
        self._signals = 0

    def put(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify()

    def signal(self) -> None:
        """Make one waiter (now or later) stop waiting and report the signal."""
        with self._changed:
            self._signals += 1
            self._changed.notify_all()

    def take(self, timeout: float | None) -> T | None:
        """Next item, or ``None`` for a signal.

        Raises:
            TimeoutException: nothing arrived within ``timeout`` seconds
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._changed:
            while True:
                if self._items:
                    return self._items.popleft()
                if self._signals:
                    self._signals -= 1
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutException(f"Nothing arrived within {timeout} s")
                self._changed.wait(remaining)

    def remove_if(self, predicate: Callable[[T], bool]) -> list[T]:
        with self._changed:
            kept: deque[T] = deque()
            removed: list[T] = []
            for item in self._items:
                (removed if predicate(item) else kept).append(item)
            self._items = kept
            return removed

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)


class PublishBudget:
    """Bounds the messages (and bytes) waiting for a broker confirm: back-pressure on senders."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._messages = 0
        self._bytes = 0
        self._changed = threading.Condition()

    def acquire(self, size: int, timeout: float | None) -> bool:
        def fits() -> bool:
            if self._messages >= self._max_messages:
                return False
            return self._bytes == 0 or self._bytes + size <= self._max_bytes

        with self._changed:
            if not self._changed.wait_for(fits, timeout):
                return False
            self._messages += 1
            self._bytes += size
            return True

    def release(self, size: int) -> None:
        with self._changed:
            self._messages -= 1
            self._bytes -= size
            self._changed.notify_all()


# ------------------------------------------------------------ connection state
class ConnectionState:
    """One connection's life: built once it is set up, dropped when it is lost.

    Roles compare a delivery's state with the current one (``is``) to know whether its
    channel still exists; :attr:`alive` turns false on loss.
    """

    def __init__(self, link: AmqpLink) -> None:
        self.link = link
        self.alive = True

    async def open_channel(self, on_closed: Callable[[Any, BaseException], None]) -> Any:
        """A channel of this connection for a role's consumers."""
        channel = await self.link.open_channel()
        channel.add_on_close_callback(on_closed)
        return channel


@dataclass(eq=False)
class Delivery:
    """A message received on a channel of one connection, not yet acknowledged."""

    tag: int
    state: ConnectionState
    channel: Any
    routing_key: str
    properties: Any
    body: bytes
    received: float = field(default_factory=time.monotonic)

    def settle(self, ack: bool, requeue: bool = False) -> None:
        """Acknowledge (or reject) the message, if its channel still exists (loop thread)."""
        if not self.state.alive or not self.channel.is_open:
            return  # the broker gave it back when that channel closed
        if ack:
            self.channel.basic_ack(self.tag)
        else:
            self.channel.basic_nack(self.tag, requeue=requeue)


@dataclass(eq=False)
class Outgoing(Publication):
    """A message to publish until the broker confirms it, and who waits for it."""

    waiter: concurrent.futures.Future[bool] | None = None
    """Set (in the I/O thread) to whether the broker returned the message, once confirmed."""
    budget: int | None = None
    """Bytes held in the publish budget, released on confirmation."""


# ------------------------------------------------------------------ roles
class Role:
    """Something attached to a :class:`BrokerConnection`; its hooks run in the loop thread."""

    bridge: BrokerConnection

    def __init__(self) -> None:
        self.ready = threading.Event()
        """Set once the role declared what it needs on a connection (first time included)."""
        self.state: ConnectionState | None = None
        """The connection the role started on (``None`` between connections)."""

    async def declare(self, state: ConnectionState) -> None:
        """Declare what the role needs; runs before anything is published on ``state``."""

    async def start(self, state: ConnectionState) -> None:
        """Start consuming on a connection set up for it."""

    def lost(self, state: ConnectionState) -> None:
        """Forget what belonged to a lost connection."""

    async def close(self, deadline: float) -> None:
        """Stop the role (loop time ``deadline``); the connection stays for the others."""
