"""Publishing with confirms on an AMQP link: what :class:`~.link.AmqpLink` inherits.

:meth:`ConfirmedPublishing.publish` keeps each :class:`Publication` until the broker
confirms it; after a lost connection the unconfirmed ones are published again, in order.
Confirmations (with whether a ``mandatory`` message came back unroutable) and refusals go
to the message's own callbacks; a refused message is retried after a pause unless it asks
not to be. ``barrier`` messages, :meth:`~ConfirmedPublishing.wait_confirmed` and
:meth:`~ConfirmedPublishing.drain` wait for the confirmations of what came before;
``max_unconfirmed`` bounds the messages on the wire; a size the broker refused once fails
larger messages before they are sent.

This module must not open, close or reconnect anything (:mod:`.link` does); it runs in
the loop's thread and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pika.spec

from colmena_core.queue.amqp.connection import PublishRefusedError

__all__ = ["ConfirmedPublishing", "Publication"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PUBLISH_ID_HEADER = "colmena-publish-id"
_SIZE_LIMIT = re.compile(r"message size \d+ is larger than configured max size (\d+)")
"""What RabbitMQ says when it closes a channel for a message above its max_message_size."""
_REFUSED_PAUSE = 0.5
"""Seconds publishing pauses after the broker refused messages that are retried."""


@dataclass(eq=False)
class Publication:
    """A message to publish until the broker confirms it (see :meth:`AmqpLink.publish`)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Any
    mandatory: bool = False
    """Have the broker return the message if no queue takes it (``on_confirm`` says so)."""
    on_confirm: Callable[[bool], None] | None = None
    """Called once confirmed, with whether the broker returned the message (unroutable)."""
    on_failed: Callable[[BaseException], None] | None = None
    """Called if the message will never be confirmed: refused (:class:`PublishRefusedError`,
    when ``retry_refused`` is false) or the link closed first (:class:`LinkClosedError`)."""
    retry_refused: bool = True
    """Publish the message again (after a pause) if the broker refuses it."""
    barrier: bool = False
    """Publish only after every message published earlier on the link is confirmed."""
    number: int = 0
    """Order of the message on its link, set by :meth:`AmqpLink.publish`."""
    abandoned: bool = field(default=False, init=False, repr=False)
    """Its sender gave up: not published again after a reconnection."""

    @property
    def publish_id(self) -> str:
        """Identifies a mandatory message the broker may return (unique on its link)."""
        return str(self.number)


class ConfirmedPublishing:
    """The publishing half of :class:`~.link.AmqpLink` (see the module documentation)."""

    # Set by the link, which owns the connection
    label: str
    max_unconfirmed: int | None
    _ready: asyncio.Event
    _channel: Any
    _connection: Any

    if TYPE_CHECKING:

        @property
        def loop(self) -> asyncio.AbstractEventLoop: ...

        @property
        def connected(self) -> bool: ...

    def _init_publishing(self) -> None:
        self._outbox: deque[Publication] = deque()
        self._deferred: list[Publication] = []
        self._unconfirmed: dict[int, Publication] = {}
        self._returned: set[str] = set()
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []
        self._sequence = 0
        self._numbers = itertools.count(1)
        self._paused_until = 0.0
        self._last_progress = 0.0
        self.max_body: int | None = None
        """Largest message body the broker takes, once it refused a larger one (it says its
        ``max_message_size`` when it closes the channel): larger messages then fail."""

    @property
    def pending(self) -> int:
        """Messages published and not confirmed yet."""
        return len(self._outbox) + len(self._unconfirmed) + len(self._deferred)

    def stalled_for(self) -> float:
        """Seconds messages have waited for a confirmation without any arriving (0: none
        waits, or confirmations keep coming)."""
        if not self.pending:
            return 0.0
        return max(time.monotonic() - self._last_progress, 0.0)

    # -------------------------------------------------------------- publishing
    def publish(self, *publications: Publication) -> None:
        """Publish messages, in their order, and keep each until the broker confirms it."""
        if not self.pending:
            self._last_progress = time.monotonic()  # the wait for confirmations starts now
        for publication in publications:
            publication.number = next(self._numbers)
            if self._too_large(publication):
                continue
            if publication.barrier:
                self._deferred.append(publication)
                self._release_deferred()
            else:
                self._outbox.append(publication)
        self._pump()

    def abandon(self, publication: Publication, *, republish: bool = True) -> bool:
        """Stop publishing a message whose sender stopped waiting for it.

        A message not sent yet is forgotten. One already sent is still confirmed (or not)
        as usual; if its connection is lost first, it is published again only if
        ``republish``.

        Returns:
            Whether the message was forgotten before it was sent
        """
        forgotten = False
        for pending in (self._outbox, self._deferred):
            if publication in pending:
                pending.remove(publication)
                forgotten = True
        if not republish:
            publication.abandoned = True
        self._release_deferred()
        self._pump()
        return forgotten

    async def wait_confirmed(self, timeout: float) -> bool:
        """Wait until every message published so far is confirmed (or forgotten).

        Returns:
            Whether they were within ``timeout`` seconds
        """
        return await self._wait_barrier(next(self._numbers), timeout)

    async def drain(self, timeout: float, *, while_connected: bool = False) -> bool:
        """Wait until no message waits for a confirmation, those published meanwhile included.

        Args:
            timeout: Seconds to wait at most
            while_connected: Give up as soon as the link is not connected
        Returns:
            Whether every message was confirmed
        """
        deadline = self.loop.time() + timeout
        while self.pending:
            remaining = deadline - self.loop.time()
            if remaining <= 0 or (while_connected and not self.connected):
                return False
            await self._wait_barrier(
                next(self._numbers), min(remaining, 0.05) if while_connected else remaining
            )
        return True

    def _oldest_pending(self, deferred: bool) -> float:
        pending = itertools.chain(
            self._outbox, self._unconfirmed.values(), self._deferred if deferred else ()
        )
        return min((p.number for p in pending), default=float("inf"))

    def _release_deferred(self) -> None:
        if self._deferred:
            oldest = self._oldest_pending(deferred=False)
            for publication in [p for p in self._deferred if p.number < oldest]:
                self._deferred.remove(publication)
                self._outbox.append(publication)
        if self._barriers:
            oldest = self._oldest_pending(deferred=True)
            for barrier in [b for b in self._barriers if b[0] <= oldest]:
                self._barriers.remove(barrier)
                if not barrier[1].done():
                    barrier[1].set_result(None)

    async def _wait_barrier(self, number: int, timeout: float) -> bool:
        """Wait until every message numbered below ``number`` is confirmed."""
        barrier: tuple[int, asyncio.Future[None]] = (number, self.loop.create_future())
        self._barriers.append(barrier)
        self._release_deferred()
        try:
            await asyncio.wait_for(barrier[1], max(timeout, 0.01))
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._barriers.remove(barrier)
        return True

    def _pump(self) -> None:
        channel = self._channel
        if not self._ready.is_set() or channel is None or not channel.is_open:
            return
        if self.loop.time() < self._paused_until:
            return
        limit = self.max_unconfirmed
        dropped = False
        while self._outbox and (limit is None or len(self._unconfirmed) < limit):
            publication = self._outbox.popleft()
            if self._too_large(publication):
                dropped = True
                continue
            properties = publication.properties
            if publication.mandatory:
                properties = copy.copy(properties)
                properties.headers = {
                    **(properties.headers or {}),
                    _PUBLISH_ID_HEADER: publication.publish_id,
                }
            try:
                channel.basic_publish(
                    publication.exchange,
                    publication.routing_key,
                    publication.body,
                    properties,
                    mandatory=publication.mandatory,
                )
            except Exception as exc:
                if channel.is_open and self._connection is not None and self._connection.is_open:
                    # The client library refused this message (a routing key or header over
                    # AMQP's limits, say) before sending anything: it fails alone
                    self._fail(
                        publication,
                        PublishRefusedError(f"The AMQP client refused the message: {exc!r}"),
                    )
                    dropped = True
                    continue
                logger.debug("Could not publish (%r); will retry", exc)  # channel closing
                self._outbox.appendleft(publication)
                return
            self._sequence += 1
            self._unconfirmed[self._sequence] = publication
        if dropped:  # messages that waited behind the dropped ones may go now
            self._release_deferred()
            if self._outbox:
                self._pump()

    def _on_returned(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        publish_id = (properties.headers or {}).get(_PUBLISH_ID_HEADER)
        if publish_id:
            self._returned.add(str(publish_id))

    def _on_confirmation(self, frame: Any) -> None:
        self._last_progress = time.monotonic()
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:  # keys are in publishing order: stop at the first one above
            numbers = list(itertools.takewhile(lambda n: n <= tag, self._unconfirmed))
        else:
            numbers = [tag]
        refused = isinstance(method, pika.spec.Basic.Nack)
        retried: list[Publication] = []
        for number in numbers:
            publication = self._unconfirmed.pop(number, None)
            if publication is None:
                continue
            returned = publication.publish_id in self._returned
            self._returned.discard(publication.publish_id)
            if not refused:
                self._finish(publication, returned)
            elif publication.retry_refused and not publication.abandoned:
                retried.append(publication)
            else:
                self._fail(publication, PublishRefusedError("The broker refused the message"))
        if retried:  # still pending, so barriers keep waiting; published again shortly
            logger.warning(
                "%s: the broker refused %d messages; publishing them again",
                self.label,
                len(retried),
            )
            self._outbox.extendleft(reversed(retried))
            self._paused_until = self.loop.time() + _REFUSED_PAUSE
            self.loop.call_later(_REFUSED_PAUSE, self._pump)
        self._release_deferred()
        self._pump()

    def _finish(self, publication: Publication, returned: bool) -> None:
        _notify(publication.on_confirm, returned, "the confirmation of a message")

    def _fail(self, publication: Publication, error: BaseException) -> None:
        _notify(publication.on_failed, error, "a message that cannot be confirmed")

    def _requeue_unconfirmed(self) -> None:
        """After a lost connection: publish the unconfirmed messages again, first."""
        for number in sorted(self._unconfirmed, reverse=True):
            publication = self._unconfirmed.pop(number)
            if not publication.abandoned:
                self._outbox.appendleft(publication)
        self._returned.clear()
        self._release_deferred()  # abandoned messages, now forgotten, held them back

    def _fail_pending(self, error: BaseException) -> None:
        """On closing: report every message not confirmed to its ``on_failed``."""
        pending = [*self._deferred, *self._outbox, *self._unconfirmed.values()]
        self._deferred.clear()
        self._outbox.clear()
        self._unconfirmed.clear()
        for publication in pending:
            if not publication.abandoned:
                self._fail(publication, error)
        self._release_deferred()

    def _learn_size_limit(self, reason: BaseException) -> None:
        """Note the broker's size limit if a message above it closed the channel.

        Without this, the message would be published again on the next connection, close
        that channel too, and hold up every message behind it for ever.
        """
        found = _SIZE_LIMIT.search(str(getattr(reason, "reply_text", "")))
        if found is None:
            return
        self.max_body = int(found.group(1))
        logger.error(
            "%s: the broker takes messages of at most %d bytes (its max_message_size); larger "
            "ones fail from now on",
            self.label,
            self.max_body,
        )

    def _too_large(self, publication: Publication) -> bool:
        """Fail ``publication`` if the broker is known not to take it."""
        if self.max_body is None or len(publication.body) <= self.max_body:
            return False
        self._fail(
            publication,
            PublishRefusedError(
                f"The broker takes messages of at most {self.max_body} bytes (its "
                f"max_message_size), not {len(publication.body)}"
            ),
        )
        return True


def _notify(callback: Callable[[T], None] | None, argument: T, what: str) -> None:
    """Tell a message's owner what became of it; an error there is logged, not raised."""
    if callback is None:
        return
    try:
        callback(argument)
    except Exception:
        logger.exception("Failed to act on %s", what)
