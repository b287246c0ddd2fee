"""The I/O bridge: one broker connection per process, owned by one thread, shared by roles.

pika is not thread-safe. Each process therefore has one :class:`BrokerConnection` per
broker URL: a daemon thread runs an asyncio loop where an
:class:`~colmena_core.queue.amqp.AmqpLink` owns the connection and publishes with
confirms. Everything of the process that talks to that broker is a :class:`Role` attached
to it: the client and server sides of every
:class:`~colmena_core.queue.rabbitmq.RabbitMQQueues`, the heartbeat publisher, the campaign
monitor and the administration calls. Roles live in the loop; caller threads hand them
work with :meth:`BrokerConnection.call` and wait on futures or :class:`Inbox` objects.

On each new connection the bridge builds a :class:`ConnectionState` (the connection's
identity, and whatever roles keep per connection), asks every role to declare what it
needs, then to start consuming; on loss it drops the state and tells the roles, whose
unacknowledged deliveries the broker gives back anyway. Nothing compares counters: a
delivery remembers the state it arrived in, and it is settled only while that state is
the current one.

The connection starts with the first role and closes with the last (or at exit). A forked
child does not inherit it: it makes its own on first use. This module must not know about
requests, results or campaigns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from colmena_core.exceptions import BrokerConnectionError
from colmena_core.queue.amqp import AmqpLink, ChannelClosedError, redact_url
from colmena_core.queue.rabbitmq.roles import ConnectionState, Outgoing, PublishBudget, Role

__all__ = ["BrokerConnection"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ------------------------------------------------------------------ connection
_REGISTRY_LOCK = threading.Lock()
_CONNECTIONS: dict[str, BrokerConnection] = {}
_REGISTRY_PID = os.getpid()


def _reset_registry() -> None:
    global _REGISTRY_LOCK, _REGISTRY_PID
    _REGISTRY_LOCK = threading.Lock()
    _CONNECTIONS.clear()
    _REGISTRY_PID = os.getpid()


os.register_at_fork(after_in_child=_reset_registry)


class BrokerConnection:
    """The one connection of this process to one broker (see the module documentation).

    Get it with :meth:`shared`; attach roles with :meth:`attach` and take them off with
    :meth:`detach`. The settings of the first user (time-outs, heartbeat, publish budget)
    apply to the connection.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 30.0,
        heartbeat: int | None = 60,
        max_pending: int = 1000,
        max_pending_bytes: int = 256 * 2**20,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.budget = PublishBudget(max_pending, max_pending_bytes)
        self.max_pending = max_pending
        self.link = AmqpLink(
            url,
            connect_timeout=connect_timeout,
            heartbeat=heartbeat,
            max_unconfirmed=max_pending,
            label="Colmena",
            on_connected=self._on_connected,
            on_ready=self._on_ready,
            on_lost=self._on_lost,
        )
        self.state: ConnectionState | None = None
        """The current connection (``None`` between connections); loop thread only."""
        self.disconnected_since: float | None = time.monotonic()
        """Since when (monotonic clock) the connection has been down; ``None`` while up."""
        self._roles: list[Role] = []
        self._roles_lock = threading.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self.closed = False
        # Hand-offs from caller threads, run by one loop wake-up per burst (see call)
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._calls_lock = threading.Lock()
        self._calls_scheduled = False
        self._thread = threading.Thread(target=self._run_loop, name="colmena-broker", daemon=True)
        self._thread.start()
        self.call(self.link.start, self.loop)

    @classmethod
    def join(cls, url: str, role: Role, **settings: Any) -> BrokerConnection:
        """Attach ``role`` to the connection of this process to ``url`` (made if needed).

        Args:
            url: Broker URL
            role: What to attach
            settings: Settings of the connection, if this call makes it
        """
        with _REGISTRY_LOCK:
            connection = _CONNECTIONS.get(url)
            if connection is None or connection.closed or connection.pid != os.getpid():
                connection = cls(url, **settings)
                _CONNECTIONS[url] = connection
            connection.attach(role)  # under the lock: the connection cannot close meanwhile
            return connection

    @property
    def last_error(self) -> str | None:
        """Why the connection failed or was lost last (``None`` while connected)."""
        return self.link.last_error

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def in_loop(self) -> bool:
        """Whether the caller runs in the connection's thread."""
        return threading.current_thread() is self._thread

    # ------------------------------------------------------- caller threads
    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Run ``function(*args)`` in the I/O thread, in the order of the calls.

        Waking the loop costs a write to its self-pipe and a pass of the loop: calls made
        while a wake-up is pending join it instead of asking for another.
        """
        with self._calls_lock:
            self._calls.append((function, args))
            if self._calls_scheduled:
                return
            self._calls_scheduled = True
        with contextlib.suppress(RuntimeError):  # closed loop: the process is ending
            self.loop.call_soon_threadsafe(self._run_calls)

    def _run_calls(self) -> None:
        while True:
            with self._calls_lock:
                calls, self._calls = self._calls, []
                if not calls:
                    self._calls_scheduled = False
                    return
            for function, args in calls:
                try:
                    function(*args)
                except Exception:
                    logger.exception("Work handed to the broker connection failed")

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coroutine`` in the loop and wait for its outcome.

        Raises:
            BrokerConnectionError: no outcome within ``timeout`` seconds
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerConnectionError(
                f"The broker did not answer within {timeout} s" + self._why()
            ) from None

    def stalled_reason(self, bound: float) -> str | None:
        """Why the connection has not done its work for more than ``bound`` seconds, if so."""
        down = self.disconnected_since
        if down is not None and time.monotonic() - down > bound:
            return f"No connection to the broker for {time.monotonic() - down:.0f} s" + self._why()
        waited = self.link.stalled_for()
        if waited > bound:
            return (
                f"{self.link.pending} messages have waited {waited:.0f} s for the broker to "
                "confirm them"
            )
        return None

    def _why(self) -> str:
        return f" (last error: {self.last_error})" if self.last_error else ""

    def attach(self, role: Role) -> None:
        """Attach ``role``: it declares and starts on this connection and every next one."""
        role.bridge = self
        with self._roles_lock:
            self._roles.append(role)
        self.call(self._attached, role)

    def detach(self, role: Role, timeout: float) -> None:
        """Stop ``role`` (waiting up to ``timeout`` for what it must finish); close the
        connection if it was the last role."""
        if self.pid != os.getpid() or not self._thread.is_alive():
            return
        with self._roles_lock:
            if role not in self._roles:
                return
        if self.in_loop:  # garbage-collected in the I/O thread
            self.spawn(self._detach(role, timeout, stop_loop=True))
            return
        with contextlib.suppress(BrokerConnectionError, concurrent.futures.CancelledError):
            self.run(self._detach(role, timeout), timeout + 10)
        if self.closed:
            self.call(self.loop.stop)
            self._thread.join(timeout + 10)

    def wait_ready(self, role: Role, timeout: float | None = None) -> None:
        """Wait until ``role`` is set up on a connection.

        Raises:
            BrokerConnectionError: not within ``timeout`` (default: the connect timeout)
        """
        timeout = self.connect_timeout if timeout is None else timeout
        if not role.ready.wait(timeout):
            raise BrokerConnectionError(
                f"Could not connect to the RabbitMQ broker at {redact_url(self.url)} within "
                f"{timeout} s: {self.last_error or 'no answer'}"
            )

    def publish(self, message: Outgoing, timeout: float, wait: bool = False) -> bool:
        """Hand a message to the I/O thread; optionally wait for its confirmation.

        Returns:
            Whether the broker returned the message as unroutable (only known when waiting)
        Raises:
            BrokerConnectionError: no room to queue the message, or no confirmation, in time
        """
        if message.budget is not None and not self.budget.acquire(message.budget, timeout):
            raise BrokerConnectionError(
                f"{self.max_pending} messages are waiting for the broker to confirm "
                f"them and none was confirmed within {timeout} s" + self._why()
            )
        if wait:
            message.waiter = concurrent.futures.Future()
        self.call(self.enqueue, message)
        if message.waiter is None:
            return False
        try:
            return message.waiter.result(timeout)
        except concurrent.futures.TimeoutError:
            self.call(self._abandon, message)
            raise BrokerConnectionError(
                f"The broker did not confirm a message within {timeout} s" + self._why()
            ) from None

    # ---------------------------------------------------------- loop thread
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` in the background of the loop; failures are logged."""
        task = self.loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if task.cancelled() or self.link.closing:
            return
        error = task.exception()
        if error is not None and not isinstance(error, ChannelClosedError):
            logger.error("Background work on the broker connection failed", exc_info=error)

    def roles(self) -> list[Role]:
        with self._roles_lock:
            return list(self._roles)

    async def _on_connected(self) -> None:
        """Declare every role's topology on a new connection, before anything is published."""
        state = ConnectionState(self.link)
        for role in self.roles():
            await role.declare(state)
        self.state = state

    def _on_ready(self) -> None:
        self.disconnected_since = None
        state = self.state
        if state is None:
            return
        for role in self.roles():
            self.spawn(self._start(role, state))

    async def _start(self, role: Role, state: ConnectionState) -> None:
        if role.state is state or not state.alive:
            return
        role.state = state
        await role.start(state)
        role.ready.set()

    def _attached(self, role: Role) -> None:
        state = self.state
        if state is None or not self.link.connected:
            return  # declared and started on the next connection

        async def set_up() -> None:
            await role.declare(state)
            await self._start(role, state)

        self.spawn(set_up())

    def _on_lost(self) -> None:
        if self.disconnected_since is None:
            self.disconnected_since = time.monotonic()
        state, self.state = self.state, None
        if state is None:
            return
        state.alive = False
        for role in self.roles():
            if role.state is state:
                role.state = None
            role.lost(state)

    async def _detach(self, role: Role, timeout: float, stop_loop: bool = False) -> None:
        deadline = self.loop.time() + timeout
        try:
            await role.close(deadline)
        finally:
            with _REGISTRY_LOCK, self._roles_lock:
                if role in self._roles:
                    self._roles.remove(role)
                last = not self._roles
                if last:
                    self.closed = True
                    if _CONNECTIONS.get(self.url) is self:
                        del _CONNECTIONS[self.url]
            if last:
                await self._close(deadline)
                if stop_loop:
                    self.loop.call_soon(self.loop.stop)

    async def _close(self, deadline: float) -> None:
        if not await self.link.drain(max(deadline - self.loop.time(), 0.0)):
            logger.error("Closing with %d messages the broker has not confirmed", self.link.pending)
        await self.link.close()

    # ------------------------------------------------------------ publishing
    def enqueue(self, message: Outgoing) -> None:
        """Publish through the link (loop thread); budget and waiter settle on confirmation."""
        message.on_confirm = _chain(self._confirmed, message, message.on_confirm)
        message.on_failed = _chain(self._failed, message, message.on_failed)
        self.link.publish(message)

    def _failed(
        self, message: Outgoing, then: Callable[[Any], None] | None, error: BaseException
    ) -> None:
        self._release_budget(message)
        try:
            if then is not None:
                then(error)
        finally:
            if message.waiter is not None and not message.waiter.done():
                message.waiter.set_exception(
                    error if isinstance(error, Exception) else BrokerConnectionError(str(error))
                )

    def _confirmed(
        self, message: Outgoing, then: Callable[[Any], None] | None, returned: bool
    ) -> None:
        self._release_budget(message)
        try:
            if then is not None:
                then(returned)
        finally:
            if message.waiter is not None and not message.waiter.done():
                message.waiter.set_result(returned)

    def _release_budget(self, message: Outgoing) -> None:
        if message.budget is not None:
            self.budget.release(message.budget)
            message.budget = None

    def _abandon(self, message: Outgoing) -> None:
        """Forget a message whose sender stopped waiting, unless it is already on the wire."""
        if self.link.abandon(message):
            self._release_budget(message)


def _chain(
    first: Callable[[Outgoing, Callable[[Any], None] | None, Any], None],
    message: Outgoing,
    then: Callable[[Any], None] | None,
) -> Callable[[Any], None]:
    def callback(value: Any) -> None:
        first(message, then, value)

    return callback
