"""The campaign monitor and the heartbeat publisher against a real broker.

Heartbeats make a task server live and its ``stopping`` heartbeat (or its silence) ends
that; the monitor sees a copy of every result without taking it from its client, decodes
JSON values and never unpickles anything. Tests wait on conditions with timeouts.
"""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from queue_support import UNPICKLED, Alarm

from colmena_core.models import Result, SerializationMethod
from colmena_core.models.wire import MessageDecodeError, encode_result
from colmena_core.queue.monitor import (
    CampaignMonitor,
    HeartbeatPublisher,
    ResultSummary,
    heartbeat_exchange,
    summarize_result,
)
from colmena_core.queue.rabbitmq import CampaignNames
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing.brokers import ThrowawayCampaign

WAIT = 30.0
"""Timeout, in seconds, of every wait that is expected to succeed."""


def add(a: int, b: int) -> int:
    """Sum of two numbers."""
    return a + b


@pytest.fixture
def monitor(campaign: ThrowawayCampaign) -> Iterator[CampaignMonitor]:
    with CampaignMonitor(campaign.url, campaign.name, default_ttl=WAIT) as monitor:
        assert monitor.wait_connected(WAIT), monitor.last_error
        yield monitor


def status(server_id: str, methods: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "server_id": server_id,
        "hostname": "node-1",
        "methods": methods,
        "capacity": 4,
        "in_flight": 1,
        "started": 1.0,
        **extra,
    }


def collect(monitor: CampaignMonitor) -> tuple[list[ResultSummary], threading.Condition]:
    seen: list[ResultSummary] = []
    changed = threading.Condition()

    def received(summary: ResultSummary) -> None:
        with changed:
            seen.append(summary)
            changed.notify_all()

    monitor.subscribe(received)
    return seen, changed


def test_heartbeats_make_servers_live_until_they_stop(
    campaign: ThrowawayCampaign, monitor: CampaignMonitor
) -> None:
    with HeartbeatPublisher(campaign.url, campaign.name) as publisher:
        publisher.publish(status("gpu-1", ["train", "infer"], engine="parsl"), ttl=WAIT)
        assert monitor.wait_until(lambda m: [s.server_id for s in m.servers()] == ["gpu-1"], WAIT)
        (server,) = monitor.servers()
        assert (server.hostname, server.capacity, server.in_flight) == ("node-1", 4, 1)
        assert server.methods == ["infer", "train"]
        assert server.details == {"engine": "parsl"}
        assert monitor.methods() == {"infer": ["gpu-1"], "train": ["gpu-1"]}

        publisher.publish(status("gpu-1", ["train"], stopping=True), ttl=1)
        assert monitor.wait_until(lambda m: not m.servers(), WAIT)
        assert publisher.wait_sent(2, WAIT)
        # A late heartbeat of a stopping server is not sent: it would bring the server back
        publisher.publish(status("gpu-1", ["train"]), ttl=WAIT)
    assert publisher.sent == 2
    assert monitor.methods() == {}


def test_a_silent_server_is_forgotten_when_its_heartbeat_expires(
    campaign: ThrowawayCampaign, monitor: CampaignMonitor
) -> None:
    with HeartbeatPublisher(campaign.url, campaign.name) as publisher:
        publisher.publish(status("cpu-1", ["simulate"]), ttl=0.5)
        assert monitor.wait_until(lambda m: bool(m.servers()), WAIT)
        started = time.monotonic()
        assert monitor.wait_until(lambda m: not m.servers(), WAIT)
        assert time.monotonic() - started < WAIT


def test_monitor_sees_a_copy_of_every_result_without_taking_it(
    campaign: ThrowawayCampaign, monitor: CampaignMonitor
) -> None:
    seen, changed = collect(monitor)
    client = campaign.queues(
        ["science"], client_id="thinker-1", methods=["add"], serialization_method="json"
    )
    server_queues = campaign.queues(methods=["add"])
    server = LocalTaskServer([add], server_queues, num_workers=1, pool="thread")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        task_id = client.send_inputs(2, 3, method="add", topic="science", task_info={"i": 7})
        result = client.get_result("science", timeout=WAIT)
        assert result is not None and result.value == 5  # the client still gets it
        with changed:
            assert changed.wait_for(lambda: len(seen) == 1, WAIT)
    finally:
        server.request_stop()
        thread.join(WAIT)
    copy = seen[0]
    assert copy.task_id == task_id
    assert copy.client_id == "thinker-1"
    assert (copy.method, copy.topic, copy.success) == ("add", "science", True)
    assert (copy.value, copy.value_format, copy.displayable) == (5, "json", True)
    assert copy.task_info == {"i": 7}
    assert {"time_created", "time_compute_started", "time_result_sent"} <= set(copy.timings)
    assert json.loads(json.dumps(copy.to_dict()))["value"] == 5
    assert monitor.results_seen == 1


def test_pickled_values_are_reported_and_never_unpickled(
    campaign: ThrowawayCampaign, monitor: CampaignMonitor
) -> None:
    seen, changed = collect(monitor)
    result = Result(((), {}), method="evil", serialization_method=SerializationMethod.PICKLE)
    result.set_result(Alarm())
    message = encode_result(result)
    assert pickle.loads(pickle.dumps(Alarm())) == "unpickled"  # the alarm works...
    UNPICKLED.clear()
    names = CampaignNames(campaign.name)
    connection = pika.BlockingConnection(pika.URLParameters(campaign.url))
    try:
        channel = connection.channel()
        channel.basic_publish(names.results_exchange, "someone.default", message)
        channel.basic_publish(names.results_exchange, "someone.default", b"not a message")
    finally:
        connection.close()
    with changed:
        assert changed.wait_for(lambda: len(seen) == 1, WAIT)
    copy = seen[0]
    assert (copy.value_format, copy.displayable, copy.value) == ("pickle", False, None)
    assert copy.client_id == "someone"
    assert not UNPICKLED.is_set()  # ...and was never triggered


def test_summaries_of_failures_inputs_and_bad_bytes() -> None:
    result = Result(((1, 2), {"scale": 3}), method="f", serialization_method="json")
    result.serialize()
    result.set_failure(ValueError("bad input"))
    summary = summarize_result(encode_result(result), "api-bob.default")
    assert summary.success is False and summary.failure == "ValueError('bad input')"
    assert summary.inputs == {"args": [1, 2], "kwargs": {"scale": 3}}
    assert (summary.value_format, summary.client_id) == ("none", "api-bob")
    with pytest.raises(MessageDecodeError):
        summarize_result(b"CLM1 but not really")


def test_queue_depths_and_dead_letters(
    campaign: ThrowawayCampaign, monitor: CampaignMonitor
) -> None:
    client = campaign.queues(client_id="waiting", methods=["simulate"])
    for i in range(3):
        client.send_inputs(i, method="simulate")
    client.disconnect()  # every request confirmed
    names = CampaignNames(campaign.name)
    depths = monitor.queue_depths(["simulate"], {"waiting": ["default"]})
    assert depths[names.request_queue("simulate")] == 3
    assert depths[names.result_queue("waiting", "default")] == 0
    assert monitor.dead_letters() == []

    connection = pika.BlockingConnection(pika.URLParameters(campaign.url))
    try:
        connection.channel().basic_publish(names.dead_exchange, "", b"garbage")
    finally:
        connection.close()
    letters = monitor.dead_letters()
    assert len(letters) == 1 and letters[0].error is not None


def test_heartbeats_go_to_their_own_exchange(campaign: ThrowawayCampaign) -> None:
    assert heartbeat_exchange(campaign.name) == f"colmena.{campaign.name}.heartbeats"
    assert heartbeat_exchange(campaign.name) == CampaignNames(campaign.name).heartbeats_exchange
    assert heartbeat_exchange(campaign.name) != CampaignNames(campaign.name).control_exchange
    with pytest.raises(ValueError, match="campaign"):
        heartbeat_exchange("not a name")


def test_publisher_without_a_broker_keeps_trying_and_closes_in_time() -> None:
    publisher = HeartbeatPublisher("amqp://guest:guest@127.0.0.1:9/", "nowhere", 1.0)
    publisher.publish({"server_id": "x"}, ttl=5)
    assert not publisher.wait_sent(1, timeout=0.5)
    started = time.monotonic()
    publisher.close(timeout=1.0)
    assert time.monotonic() - started < 5
    assert publisher.sent == 0 and publisher.last_error is not None
    with pytest.raises(RuntimeError):
        publisher.publish({"server_id": "x"}, ttl=5)
    with pytest.raises(ValueError):
        HeartbeatPublisher("amqp://localhost/", "c").publish({"server_id": "x"}, ttl=0)
