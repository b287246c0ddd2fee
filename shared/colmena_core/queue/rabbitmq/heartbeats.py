"""Heartbeats of task servers: who a server is, what it serves, how busy it is.

:class:`HeartbeatPublisher` publishes them on the campaign's heartbeat exchange from the
process's one broker connection; they are validated and signed like every message
(:mod:`colmena_core.models.heartbeat`), non-persistent, and expire after their lifetime.
:class:`~.monitor.CampaignMonitor` reads them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import pika

from colmena_core.models.heartbeat import Heartbeat, encode_heartbeat
from colmena_core.queue.rabbitmq.bridge import BrokerConnection
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.roles import ConnectionState, Outgoing, Role
from colmena_core.security import MessageSigner, load_secret

__all__ = ["HeartbeatPublisher", "heartbeat_exchange"]

logger = logging.getLogger(__name__)


def heartbeat_exchange(campaign: str) -> str:
    """Name of the fanout exchange of the heartbeats of a campaign's task servers.

    Shorthand for ``CampaignNames(campaign).heartbeats_exchange``, where the other names of
    a campaign are.

    Raises:
        ValueError: ``campaign`` is not a valid campaign name
    """
    return CampaignNames(campaign).heartbeats_exchange


# ---------------------------------------------------------------- heartbeats
class _HeartbeatRole(Role):
    """Publishes one server's heartbeats on the shared connection (loop thread)."""

    def __init__(self, publisher: HeartbeatPublisher) -> None:
        super().__init__()
        self.publisher = publisher
        self.in_flight = False

    async def declare(self, state: ConnectionState) -> None:
        await state.link.rpc(
            state.link.channel,
            "exchange_declare",
            exchange=self.publisher.exchange,
            exchange_type="fanout",
            durable=True,
        )

    async def start(self, state: ConnectionState) -> None:
        self.send_next()

    def send_next(self) -> None:
        """Publish the latest status, unless one is on its way."""
        if self.in_flight or self.state is None:
            return
        pending = self.publisher.take_pending()
        if pending is None:
            return
        body, ttl = pending
        self.in_flight = True
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=1,
            expiration=str(max(int(ttl * 1000), 1)),
            timestamp=int(time.time()),
        )
        self.bridge.enqueue(
            Outgoing(
                self.publisher.exchange,
                "",
                body,
                properties,
                on_confirm=self._sent,
                on_failed=self._failed,
            )
        )

    def _sent(self, returned: bool) -> None:
        self.in_flight = False
        self.publisher.count_sent()
        self.send_next()

    def _failed(self, error: BaseException) -> None:
        self.in_flight = False

    async def close(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while (self.in_flight or self.publisher.has_pending()) and loop.time() < deadline:
            self.send_next()
            await asyncio.sleep(0.01)


class HeartbeatPublisher:
    """Publishes the heartbeats of one task server, on the process's broker connection.

    :meth:`publish` never blocks: it hands the status to the connection's thread, which
    connects (and reconnects) on its own; when heartbeats come faster than they can be
    sent, only the latest is sent.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        connect_timeout: Seconds to wait for the broker on each connection attempt
        secret: Campaign secret that signs the heartbeats (default: from the environment,
            see :func:`colmena_core.security.load_secret`)
    """

    def __init__(
        self,
        url: str,
        campaign: str,
        connect_timeout: float = 10.0,
        secret: str | bytes | None = None,
    ) -> None:
        self.url = url
        self.campaign = campaign
        loaded = load_secret(secret)
        self.signer = None if loaded is None else MessageSigner(loaded)
        self.exchange = CampaignNames(campaign).heartbeats_exchange
        self.connect_timeout = connect_timeout
        self._changed = threading.Condition()
        self._pending: tuple[bytes, float] | None = None
        self._closing = False
        self._stopping = False
        self._sent = 0
        self._role: _HeartbeatRole | None = None
        self._connection: BrokerConnection | None = None

    @property
    def sent(self) -> int:
        """How many heartbeats reached the broker."""
        with self._changed:
            return self._sent

    @property
    def last_error(self) -> str | None:
        """Why the broker connection failed last, if it did."""
        return None if self._connection is None else self._connection.last_error

    def publish(self, status: Mapping[str, Any], ttl: float) -> None:
        """Advertise ``status`` (a JSON-compatible mapping) for ``ttl`` seconds.

        A status with ``"stopping": true`` announces that the server stops: heartbeats
        published after it (by a heartbeat thread that has not noticed yet) are ignored.

        Raises:
            ValueError: ``ttl`` or the status break the limits of a
                :class:`~colmena_core.models.heartbeat.Heartbeat`
            RuntimeError: the publisher is closed
        """
        if not ttl > 0:
            raise ValueError(f"The time to live of a heartbeat must be positive, not {ttl}")
        body = encode_heartbeat(Heartbeat.model_validate({**status, "ttl": ttl}), self.signer)
        with self._changed:
            if self._closing:
                raise RuntimeError("The heartbeat publisher is closed")
            if self._stopping and not status.get("stopping"):
                return
            self._stopping = self._stopping or bool(status.get("stopping"))
            self._pending = (body, ttl)
            role = self._role
            if role is None:
                role = self._role = _HeartbeatRole(self)
                self._connection = BrokerConnection.join(
                    self.url, role, connect_timeout=self.connect_timeout
                )
        assert self._connection is not None
        self._connection.call(role.send_next)

    def take_pending(self) -> tuple[bytes, float] | None:
        with self._changed:
            pending, self._pending = self._pending, None
            return pending

    def has_pending(self) -> bool:
        with self._changed:
            return self._pending is not None

    def count_sent(self) -> None:
        with self._changed:
            self._sent += 1
            self._changed.notify_all()

    def wait_sent(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``count`` heartbeats in all reached the broker."""
        with self._changed:
            return self._changed.wait_for(lambda: self._sent >= count, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send the pending heartbeat (within ``timeout``), then leave the connection."""
        with self._changed:
            self._closing = True
            role, connection = self._role, self._connection
        if role is not None and connection is not None:
            connection.detach(role, timeout)

    def __enter__(self) -> HeartbeatPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
