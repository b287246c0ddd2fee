"""AmqpLink, the connection layer of RabbitMQQueues and the gateway, against a real broker."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import pika
import pytest

from colmena_core.queue.amqp import AmqpLink, LinkClosedError, Publication, PublishRefusedError

WAIT = 30.0


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 4 * WAIT))


class LogEvent(logging.Handler):
    """Sets an asyncio event when the link logs a message containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.fixture
def link_log() -> Iterator[logging.Logger]:
    logger = logging.getLogger("colmena_core.queue.amqp")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if isinstance(handler, LogEvent):
            logger.removeHandler(handler)


def properties() -> Any:
    return pika.BasicProperties(delivery_mode=2)


def test_topology_before_publishing_returns_and_reconnection(rabbitmq_url: str) -> None:
    """Messages wait for ``on_connected``; mandatory ones report a return; hooks run again."""
    name = f"colmena.test-link-{uuid.uuid4().hex[:10]}"
    events: list[str] = []

    async def scenario() -> None:
        ready = asyncio.Event()

        async def on_connected() -> None:
            events.append(f"connected {link.generation}")
            channel = link.channel
            await link.rpc(channel, "exchange_declare", exchange=name, exchange_type="direct")
            await link.rpc(channel, "queue_declare", queue=name, durable=True)
            await link.rpc(channel, "queue_bind", queue=name, exchange=name, routing_key="taken")

        def on_ready() -> None:
            events.append("ready")
            ready.set()

        link = AmqpLink(
            rabbitmq_url,
            label="test",
            on_connected=on_connected,
            on_ready=on_ready,
            on_lost=lambda: events.append("lost"),
        )
        loop = asyncio.get_running_loop()
        outcomes: list[asyncio.Future[bool]] = [loop.create_future() for _ in range(2)]
        # Published before the link is even started: they wait for the topology
        link.publish(
            *(
                Publication(name, key, b"x", properties(), mandatory=True, on_confirm=f.set_result)
                for key, f in zip(["taken", "nowhere"], outcomes, strict=True)
            )
        )
        assert link.pending == 2
        link.start()
        try:
            returned = await asyncio.wait_for(asyncio.gather(*outcomes), WAIT)
            assert returned == [False, True]
            assert link.pending == 0 and await link.wait_confirmed(WAIT)

            ready.clear()
            link.reconnect("asked by the test")
            await asyncio.wait_for(ready.wait(), WAIT)
            assert events == ["connected 1", "ready", "lost", "connected 2", "ready"]
            frame = await link.rpc(link.channel, "queue_declare", queue=name, passive=True)
            assert frame.method.message_count == 1
        finally:
            if link.connected:
                await link.rpc(link.channel, "queue_delete", queue=name)
                await link.rpc(link.channel, "exchange_delete", exchange=name)
            await link.close()
        assert not link.connected and link.closing

    run(scenario())


def test_refused_messages_are_retried_or_reported(
    rabbitmq_url: str, link_log: logging.Logger
) -> None:
    """A nack fails a message that asks not to be retried; others are published again."""
    name = f"colmena.test-link-{uuid.uuid4().hex[:10]}"
    refused = LogEvent("refused")
    link_log.addHandler(refused)

    async def scenario() -> None:
        async def on_connected() -> None:
            await link.rpc(
                link.channel,
                "queue_declare",
                queue=name,
                arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
            )

        link = AmqpLink(rabbitmq_url, label="test", on_connected=on_connected)
        link.start()
        loop = asyncio.get_running_loop()
        try:
            first: asyncio.Future[bool] = loop.create_future()
            failed: asyncio.Future[BaseException] = loop.create_future()
            link.publish(
                Publication("", name, b"1", properties(), on_confirm=first.set_result),
                Publication(
                    "", name, b"2", properties(), on_failed=failed.set_result, retry_refused=False
                ),
            )
            assert await asyncio.wait_for(first, WAIT) is False
            assert isinstance(await asyncio.wait_for(failed, WAIT), PublishRefusedError)

            retried: asyncio.Future[bool] = loop.create_future()
            link.publish(Publication("", name, b"3", properties(), on_confirm=retried.set_result))
            await asyncio.wait_for(refused.event.wait(), WAIT)  # refused once at least
            assert not retried.done()
            await link.rpc(link.channel, "queue_purge", queue=name)
            assert await asyncio.wait_for(retried, WAIT) is False
        finally:
            if link.connected:
                await link.rpc(link.channel, "queue_delete", queue=name)
            await link.close()

    run(scenario())


def test_unreachable_broker_abandon_and_close(link_log: logging.Logger) -> None:
    """Without a broker messages wait; abandoned ones are forgotten, the others fail on close."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    no_broker = LogEvent("could not connect")
    link_log.addHandler(no_broker)

    async def scenario() -> None:
        link = AmqpLink(f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=2.0)
        link.start()
        await asyncio.wait_for(no_broker.event.wait(), WAIT)
        assert not link.connected and link.last_error

        loop = asyncio.get_running_loop()
        failures: list[asyncio.Future[BaseException]] = [loop.create_future() for _ in range(2)]
        publications = [
            Publication("", "anywhere", b"x", properties(), on_failed=f.set_result)
            for f in failures
        ]
        link.publish(*publications)
        assert link.abandon(publications[0]) is True
        assert link.pending == 1
        assert await link.drain(WAIT, while_connected=True) is False  # gives up at once

        await link.close()
        assert isinstance(failures[1].result(), LinkClosedError)
        assert not failures[0].done() and link.pending == 0

    run(scenario())


def test_a_message_the_client_library_refuses_fails_alone(rabbitmq_url: str) -> None:
    """A routing key over AMQP's 255 bytes fails its message; the ones behind it go on."""

    async def scenario() -> None:
        link = AmqpLink(rabbitmq_url, label="test")
        link.start()
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[BaseException] = loop.create_future()
        confirmed: asyncio.Future[bool] = loop.create_future()
        link.publish(
            Publication(
                "", "x" * 300, b"too long a key", properties(), on_failed=failed.set_result
            ),
            Publication("amq.fanout", "", b"fine", properties(), on_confirm=confirmed.set_result),
        )
        error = await asyncio.wait_for(failed, WAIT)
        assert isinstance(error, PublishRefusedError) and "refused" in str(error)
        assert await asyncio.wait_for(confirmed, WAIT) is False
        assert link.pending == 0 and link.stalled_for() == 0.0
        await link.close()

    run(scenario())
