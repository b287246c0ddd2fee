"""What an AMQP link stands on: broker addresses, its errors, and a socket writer.

The URL helpers read the one or several brokers a URL names (the nodes of a cluster);
the errors are those the link raises or reports; :class:`CoalescingConnection` is pika's
asyncio connection writing the frames of one loop pass with one ``send()``.

This module must not hold a connection's state nor publish: :mod:`.link` and
:mod:`.publishing` do.
"""

from __future__ import annotations

import re
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from colmena_core.exceptions import BrokerConnectionError, TransportError

__all__ = [
    "ChannelClosedError",
    "CoalescingConnection",
    "LinkClosedError",
    "PublishRefusedError",
    "broker_addresses",
    "connection_parameters",
    "redact_url",
]


class ChannelClosedError(TransportError):
    """A channel or connection closed while an operation waited on it.

    Attributes:
        reply_code: The broker's reply code (404: no such queue, 406: other arguments), if any
    """

    def __init__(self, reason: BaseException | None = None) -> None:
        super().__init__(repr(reason))
        self.reply_code: int | None = getattr(reason, "reply_code", None)


class PublishRefusedError(TransportError):
    """The broker refused a message (a negative confirmation, or a size it does not take)."""


class LinkClosedError(BrokerConnectionError):
    """The link was closed before the broker confirmed a message."""


def redact_url(url: str) -> str:
    """The URL (or comma-separated URLs) without passwords, for messages."""
    return re.sub(r"(//[^:/@,]*:)[^@]*@", r"\1***@", url)


def broker_addresses(url: str) -> list[str]:
    """The broker URLs in ``url``: one, or several separated by commas (the nodes of a
    cluster, which clients try in turn). A comma inside a password must be written ``%2C``.

    Raises:
        ValueError: ``url`` names no broker, or one of its URLs is not ``amqp[s]://``
    """
    addresses = [part.strip() for part in url.split(",") if part.strip()]
    if not addresses:
        raise ValueError("No broker URL given")
    for address in addresses:
        if not address.startswith(("amqp://", "amqps://")):
            raise ValueError(f"Not an amqp:// or amqps:// URL: {redact_url(address)!r}")
    return addresses


def connection_parameters(url: str) -> list[pika.URLParameters]:
    """pika's parameters for each broker of ``url`` (see :func:`broker_addresses`), in order:
    ``pika.BlockingConnection`` takes the list and tries them in turn."""
    return [pika.URLParameters(address) for address in broker_addresses(url)]


class CoalescingConnection(AsyncioConnection):
    """A pika asyncio connection that writes the frames of one loop pass with one ``send()``.

    pika gives the socket every frame on its own: three ``send()`` calls per published
    message and one per acknowledgement, which under load is a large part of a client's CPU
    and many small packets for the broker to read. Here small frames wait in a buffer that
    a callback scheduled on the loop writes out at once; a frame of
    :attr:`COALESCE_LIMIT` bytes or more is written as it is (after what is buffered, so
    the order holds) to avoid copying large bodies.
    """

    COALESCE_LIMIT = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._out: list[bytes] = []
        self._out_bytes = 0
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        if len(data) >= self.COALESCE_LIMIT:
            self._flush_out()
            super()._adapter_emit_data(data)
            return
        if not self._out:
            self.ioloop.call_soon(self._flush_out)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= self.COALESCE_LIMIT:
            self._flush_out()

    def _flush_out(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        self._out_bytes = 0
        if self._transport is not None:
            super()._adapter_emit_data(data)

    def _adapter_disconnect_stream(self) -> None:
        self._flush_out()
        super()._adapter_disconnect_stream()
