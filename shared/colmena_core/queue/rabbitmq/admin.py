"""Administration of a campaign on the broker: queue depths, dead letters, deletion.

Each call has two forms: a coroutine that runs over an
:class:`~colmena_core.queue.amqp.AmqpLink` a process already has (the gateway's, in its
loop), and a blocking function that takes a broker URL and runs the coroutine over the
process's one broker connection (:class:`~.bridge.BrokerConnection`), made for the call if
the process has none. Dead letters are read without being removed (:func:`list_dead_letters`),
sent back where they came from (:func:`requeue_dead_letters`) or dropped
(:func:`purge_dead_letters`). This module must not deserialize payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from colmena_core.models.wire import MessageDecodeError, peek_header
from colmena_core.queue.amqp import AmqpLink, ChannelClosedError, Publication
from colmena_core.queue.rabbitmq.bridge import BrokerConnection
from colmena_core.queue.rabbitmq.names import CampaignNames
from colmena_core.queue.rabbitmq.roles import Role
from colmena_core.queue.rabbitmq.topology import (
    ERROR_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    copy_properties,
)

__all__ = [
    "DeadLetter",
    "dead_letters_over",
    "delete_campaign",
    "delete_campaign_over",
    "list_dead_letters",
    "purge_dead_letters",
    "purge_dead_letters_over",
    "queue_depths",
    "queue_depths_over",
    "requeue_dead_letters",
    "requeue_dead_letters_over",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DeadLetter:
    """A message the campaign could not deliver, as kept in its dead-letter queue."""

    body: bytes
    reason: str
    """``rejected`` (undecodable), ``unauthenticated`` (unsigned or badly signed),
    ``delivery_limit``, ``expired`` or ``unroutable-result``"""
    queue: str | None
    """Queue the message was taken from, if it was dead-lettered by the broker"""
    routing_keys: list[str]
    time: datetime | None
    task_id: str | None
    method: str | None
    error: str | None
    """Why the message was dead-lettered or cannot be decoded, if known"""
    headers: dict[str, Any]


def _dead_letter(body: bytes, properties: Any) -> DeadLetter:
    headers = dict(properties.headers or {})
    deaths = headers.get("x-death") or []
    first = deaths[-1] if deaths else {}  # x-death lists the most recent death first
    reason = str(headers.get(REASON_HEADER) or headers.get("x-first-death-reason") or "unknown")
    routing_keys = [str(k) for k in first.get("routing-keys", [])]
    if not routing_keys and ROUTING_KEY_HEADER in headers:
        routing_keys = [str(headers[ROUTING_KEY_HEADER])]
    try:
        header = peek_header(body)
        task_id, method, error = header.task_id, header.method, None
    except MessageDecodeError as exc:
        task_id, method, error = None, None, str(exc)
    if headers.get(ERROR_HEADER):
        error = str(headers[ERROR_HEADER])
    return DeadLetter(
        body=body,
        reason=reason,
        queue=first.get("queue"),
        routing_keys=routing_keys,
        time=first.get("time"),
        task_id=task_id,
        method=method,
        error=error,
        headers=headers,
    )


# ---------------------------------------------------------------- over a link
async def _with_channel(link: AmqpLink) -> Any:
    await link.wait_ready()
    return await link.open_channel()


async def queue_depths_over(link: AmqpLink, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each of ``queues`` that exists, over a connected ``link``."""
    depths: dict[str, int] = {}
    channel = await _with_channel(link)
    try:
        for queue in queues:
            try:
                frame = await link.rpc(channel, "queue_declare", queue=queue, passive=True)
            except ChannelClosedError as exc:
                if exc.reply_code != 404:
                    raise
                channel = await link.open_channel()
                continue
            depths[queue] = int(frame.method.message_count)
        return depths
    finally:
        if channel.is_open:
            channel.close()


async def _take_dead_letters(
    link: AmqpLink, channel: Any, names: CampaignNames, limit: int | None
) -> list[tuple[Any, Any, bytes]] | None:
    """Take up to ``limit`` dead letters on ``channel`` (unacknowledged); ``None``: no queue."""
    try:
        await link.rpc(channel, "queue_declare", queue=names.dead_letter_queue, passive=True)
    except ChannelClosedError as exc:
        if exc.reply_code == 404:
            return None
        raise
    taken: list[tuple[Any, Any, bytes]] = []
    while limit is None or len(taken) < limit:
        message = await link.get(channel, names.dead_letter_queue)
        if message is None:
            break
        taken.append(message)
    return taken


async def dead_letters_over(
    link: AmqpLink, names: CampaignNames, limit: int = 100
) -> list[DeadLetter]:
    """Read up to ``limit`` dead letters (oldest first) without removing them."""
    channel = await _with_channel(link)
    try:
        taken = await _take_dead_letters(link, channel, names, limit)
        if not taken:
            return []
        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)  # all back, in order
        return [_dead_letter(body, properties) for _, properties, body in taken]
    finally:
        if channel.is_open:
            channel.close()


def _matches(letter: DeadLetter, task_ids: Collection[str] | None) -> bool:
    return task_ids is None or letter.task_id in task_ids


def _destination(names: CampaignNames, letter: DeadLetter) -> tuple[str, str] | None:
    """Exchange and routing key a dead letter came to, to send it there again."""
    if letter.reason == "unroutable-result":
        key = letter.headers.get(ROUTING_KEY_HEADER)
        return (names.results_exchange, str(key)) if key else None
    if letter.task_id is None or letter.reason == "unauthenticated":
        return None  # not a message of the campaign: nothing would take it
    return names.requests_exchange, letter.method or (letter.routing_keys or [""])[0]


async def requeue_dead_letters_over(
    link: AmqpLink,
    names: CampaignNames,
    task_ids: Collection[str] | None = None,
    limit: int | None = None,
) -> list[DeadLetter]:
    """Send dead letters back where they came from: requests to their method's queue,
    results to their client. Undecodable messages stay.

    Args:
        link: A connected link
        names: Names of the campaign
        task_ids: Only the dead letters of these tasks (default: all)
        limit: Look at the oldest ``limit`` dead letters only (default: all)
    Returns:
        The dead letters sent back (each removed once the broker confirmed its copy)
    """
    channel = await _with_channel(link)
    try:
        taken = await _take_dead_letters(link, channel, names, limit)
        sent: list[DeadLetter] = []
        confirmations: list[asyncio.Future[bool]] = []
        tags: list[int] = []
        loop = asyncio.get_running_loop()
        for method, properties, body in taken or []:
            letter = _dead_letter(body, properties)
            destination = _destination(names, letter) if _matches(letter, task_ids) else None
            if destination is None:
                continue
            headers = {
                k: v for k, v in letter.headers.items() if not k.startswith(("x-", "colmena-"))
            }
            confirmed: asyncio.Future[bool] = loop.create_future()
            link.publish(
                Publication(
                    destination[0],
                    destination[1],
                    body,
                    copy_properties(properties, headers),
                    on_confirm=_resolver(confirmed),
                    on_failed=_failer(confirmed),
                )
            )
            confirmations.append(confirmed)
            tags.append(method.delivery_tag)
            sent.append(letter)
        done: list[DeadLetter] = []
        for letter, tag, confirmed in zip(sent, tags, confirmations, strict=True):
            with contextlib.suppress(Exception):
                await confirmed
                channel.basic_ack(tag)
                done.append(letter)
                continue
            logger.error("Could not send dead letter of task %s back", letter.task_id)
        if channel.is_open:
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)  # the rest stay
        return done
    finally:
        if channel.is_open:
            channel.close()


async def purge_dead_letters_over(
    link: AmqpLink, names: CampaignNames, task_ids: Collection[str] | None = None
) -> int:
    """Remove dead letters for good: those of ``task_ids``, or all of them.

    Returns:
        How many were removed
    """
    channel = await _with_channel(link)
    try:
        if task_ids is None:
            try:
                frame = await link.rpc(channel, "queue_purge", queue=names.dead_letter_queue)
            except ChannelClosedError as exc:
                if exc.reply_code == 404:
                    return 0
                raise
            return int(frame.method.message_count)
        taken = await _take_dead_letters(link, channel, names, None)
        removed = 0
        for method, properties, body in taken or []:
            if _matches(_dead_letter(body, properties), task_ids):
                channel.basic_ack(method.delivery_tag)
                removed += 1
        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        return removed
    finally:
        if channel.is_open:
            channel.close()


async def delete_campaign_over(link: AmqpLink, queues: Iterable[str], names: CampaignNames) -> None:
    """Delete ``queues`` and every exchange of the campaign."""
    channel = await _with_channel(link)
    try:
        for queue in queues:
            await link.rpc(channel, "queue_delete", queue=queue)
        for exchange in names.exchanges:
            await link.rpc(channel, "exchange_delete", exchange=exchange)
    finally:
        if channel.is_open:
            channel.close()


def _resolver(future: asyncio.Future[bool]) -> Any:
    def resolve(returned: bool) -> None:
        if not future.done():
            future.set_result(returned)

    return resolve


def _failer(future: asyncio.Future[bool]) -> Any:
    def fail(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    return fail


# ---------------------------------------------------------- blocking forms
class _AdminCall(Role):
    """Keeps the process's connection open for one administration call."""


def _run(url: str, make: Any, timeout: float) -> Any:
    role = _AdminCall()
    connection = BrokerConnection.join(url, role, connect_timeout=timeout)
    try:
        connection.wait_ready(role, timeout)
        coroutine: Coroutine[Any, Any, Any] = make(connection.link)
        return connection.run(asyncio.wait_for(coroutine, timeout), timeout + 1)
    finally:
        connection.detach(role, timeout)


def list_dead_letters(
    url: str, campaign: str, limit: int = 100, timeout: float = 10.0
) -> list[DeadLetter]:
    """Read the dead letters of a campaign without removing them.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        limit: Largest number of dead letters to return (the oldest first)
        timeout: Seconds to wait for the broker
    """
    names = CampaignNames(campaign)
    letters: list[DeadLetter] = _run(
        url, lambda link: dead_letters_over(link, names, limit), timeout
    )
    return letters


def requeue_dead_letters(
    url: str,
    campaign: str,
    task_ids: Collection[str] | None = None,
    limit: int | None = None,
    timeout: float = 30.0,
) -> list[DeadLetter]:
    """Send a campaign's dead letters back where they came from (see
    :func:`requeue_dead_letters_over`): a request goes to its method's queue again, an
    unroutable result to its client's topic (whose queue must exist by now).

    Args:
        url: Broker URL
        campaign: Name of the campaign
        task_ids: Only the dead letters of these tasks (default: every one)
        limit: Look at the oldest ``limit`` dead letters only (default: all)
        timeout: Seconds to wait for the broker
    Returns:
        The dead letters sent back; undecodable ones stay in place
    """
    names = CampaignNames(campaign)
    done: list[DeadLetter] = _run(
        url, lambda link: requeue_dead_letters_over(link, names, task_ids, limit), timeout
    )
    return done


def purge_dead_letters(
    url: str, campaign: str, task_ids: Collection[str] | None = None, timeout: float = 30.0
) -> int:
    """Remove a campaign's dead letters for good: those of ``task_ids``, or all.

    Returns:
        How many were removed
    """
    names = CampaignNames(campaign)
    removed: int = _run(url, lambda link: purge_dead_letters_over(link, names, task_ids), timeout)
    return removed


def queue_depths(
    url: str,
    campaign: str,
    methods: Iterable[str] = (),
    clients: Mapping[str, Iterable[str]] | None = None,
    timeout: float = 10.0,
) -> dict[str, int]:
    """Messages waiting in the queues of a campaign (those that exist), by queue name.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        methods: Methods whose request queues to count
        clients: Client IDs and their topics whose result queues to count
        timeout: Seconds to wait for the broker
    """
    queues = CampaignNames(campaign).shared_queues(methods, clients)
    depths: dict[str, int] = _run(url, lambda link: queue_depths_over(link, queues), timeout)
    return depths


def delete_campaign(
    url: str,
    campaign: str,
    methods: Iterable[str] = (),
    clients: Mapping[str, Iterable[str]] | None = None,
    timeout: float = 10.0,
) -> None:
    """Delete the exchanges and queues of a finished campaign, with their messages.

    The broker cannot list queues over AMQP, so the request queues (by method) and result
    queues (by client and topic) to delete must be named; the queues of task servers are
    deleted when they disconnect, or expire on their own.

    Args:
        url: Broker URL
        campaign: Name of the campaign
        methods: Methods whose request queues to delete
        clients: Client IDs and their topics whose result queues to delete
        timeout: Seconds to wait for the broker
    """
    names = CampaignNames(campaign)
    queues = names.shared_queues(methods, clients)
    _run(url, lambda link: delete_campaign_over(link, queues, names), timeout)
