"""The RabbitMQ transport against hostile and malformed messages, on a real broker.

With a campaign secret, forged requests, results and kill signals are dead-lettered or
dropped with the reason before anything in them is parsed; junk on every queue of a
campaign never stops a process, which then completes ordinary work.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from queue_support import UNPICKLED, Alarm

from colmena_core.models import Result
from colmena_core.models.wire import encode_kill, encode_result
from colmena_core.queue.rabbitmq import RabbitMQQueues, list_dead_letters
from colmena_core.queue.rabbitmq.monitor import CampaignMonitor, HeartbeatPublisher
from colmena_core.security import MessageSigner, new_secret
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing.brokers import ThrowawayCampaign

WAIT = 30.0
"""Timeout, in seconds, of every wait that is expected to succeed."""


def add(a: int, b: int) -> int:
    """Sum of two numbers."""
    return a + b


def publish_raw(url: str, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange, routing_key, body, pika.BasicProperties(delivery_mode=2, **properties)
        )
    finally:
        connection.close()


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def served(
    campaign: ThrowawayCampaign, secret: str
) -> Iterator[tuple[RabbitMQQueues, threading.Thread]]:
    """A thinker's queues and a task server (in a thread of this process) serving ``add``."""
    thinker = campaign.queues(client_id="thinker-1", methods=["add"], secret=secret)
    thinker.connect()
    server = LocalTaskServer(
        [add], campaign.queues(methods=["add"], secret=secret), num_workers=1, pool="thread"
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield thinker, thread
    finally:
        server.request_stop()
        thread.join(WAIT)


def test_forged_messages_are_dead_lettered_and_work_goes_on(
    campaign: ThrowawayCampaign, served: tuple[RabbitMQQueues, threading.Thread]
) -> None:
    thinker, server = served
    names = thinker.names
    forger = MessageSigner(new_secret())  # the wrong secret
    UNPICKLED.clear()

    request = Result(
        ((Alarm(),), {}), method="add", reply_to="thinker-1", serialization_method="pickle"
    )
    request.serialize()
    unsigned_request, forged_request = encode_result(request), encode_result(request, forger)
    for body in (unsigned_request, forged_request, b"junk"):
        publish_raw(campaign.url, names.requests_exchange, "add", body, reply_to="thinker-1")
    forged = Result(((), {}), method="add", reply_to="thinker-1", serialization_method="pickle")
    forged.serialize()
    forged.set_result(Alarm())
    forged.serialize()
    for body in (encode_result(forged), encode_result(forged, forger), b"junk"):
        publish_raw(campaign.url, names.results_exchange, "thinker-1.default", body)
    for body in (b"kill", encode_kill(None), encode_kill(forger)):  # none is a kill signal
        publish_raw(campaign.url, names.control_exchange, "", body)

    # Ordinary work still completes through the same processes
    task_id = thinker.send_inputs(2, 3, method="add")
    result = thinker.get_result(timeout=WAIT)
    assert result is not None and (result.task_id, result.value) == (task_id, 5)
    assert server.is_alive()
    assert not UNPICKLED.is_set()

    # The forged results were taken by get_result before the real one (they came first)
    assert thinker.wait_until_confirmed(WAIT)  # their dead-lettering included
    reasons: dict[str, int] = {}
    for letter in list_dead_letters(campaign.url, campaign.name):
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        assert letter.error  # each says why
    # With a secret, anything unsigned or signed with another secret (junk included) is
    # refused before it is parsed: three requests and three results
    assert reasons == {"unauthenticated": 6}, reasons
    assert not UNPICKLED.is_set()


def test_spoofed_heartbeats_are_ignored(campaign: ThrowawayCampaign, secret: str) -> None:
    names = campaign.queues().names
    with CampaignMonitor(campaign.url, campaign.name, secret=secret) as monitor:
        assert monitor.wait_connected(WAIT)
        for body in (
            b'{"server_id": "spoof", "ttl": 1e308, "methods": ["add"]}',
            b'{"server_id": "spoof", "ttl": Infinity, "capacity": Infinity}',
            b"\xff junk",
        ):
            publish_raw(campaign.url, names.heartbeats_exchange, "", body)
        with HeartbeatPublisher(campaign.url, campaign.name, secret=secret) as publisher:
            publisher.publish({"server_id": "real", "methods": ["add"]}, ttl=WAIT)
            assert monitor.wait_until(lambda m: bool(m.servers()), WAIT)
        assert [s.server_id for s in monitor.servers()] == ["real"]
        with pytest.raises(ValueError):
            HeartbeatPublisher(campaign.url, campaign.name, secret=secret).publish(
                {"server_id": "x"}, ttl=1e308
            )
    assert pickle.loads(pickle.dumps(Alarm())) == "unpickled"  # the alarm itself works
