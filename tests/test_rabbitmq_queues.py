"""The RabbitMQ queues against a real broker: API, routing, isolation, processes and threads.

The behaviour every transport shares is in ``test_queue_conformance.py`` and the delivery
contract (crashes, restarts, bad input, long tasks) in ``test_delivery_contract.py``. Task
servers run as real processes; tests synchronise on results, events and joins, never on
sleeps, and every wait has a timeout.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import socket
import threading
import time
import urllib.parse

import pika
import psutil
import pytest

from colmena_core.backoff import Backoff
from colmena_core.exceptions import (
    KillSignalException,
    MessageDecodeError,
    MessageTooLargeError,
    TimeoutException,
    TransportError,
)
from colmena_core.models import Result
from colmena_core.models.wire import encode_result
from colmena_core.queue import RabbitMQQueues
from colmena_core.queue.base import ColmenaQueues
from colmena_core.queue.rabbitmq import (
    BROKER_URL_VARIABLE,
    BrokerConnectionError,
    CampaignNames,
    list_dead_letters,
    purge_dead_letters,
    queue_depths,
    requeue_dead_letters,
)
from colmena_core.queue.rabbitmq.monitor import CampaignMonitor, HeartbeatPublisher
from colmena_core.security import SECRET_VARIABLE, new_secret
from colmena_core.testing.brokers import ThrowawayCampaign
from colmena_core.testing.task_servers import (
    LocalServerStarter,
    assert_no_more_results,
    receive_results,
    running_task_server,
    stop_task_servers,
)

WAIT = 30.0
"""Timeout, in seconds, of every wait that is expected to succeed."""


# ----------------------------------------------------------------- methods
def add(a: int, b: int) -> tuple[int, int]:
    """Sum, and the process that computed it."""
    return a + b, os.getpid()


def mul(a: int, b: int) -> tuple[int, int]:
    """Product, and the process that computed it."""
    return a * b, os.getpid()


class Gated:
    """A method whose task 0 waits for the test to open a gate; the others run at once."""

    def __init__(self) -> None:
        self.__name__ = "gated"
        self.gate = mp.Event()

    def __call__(self, index: int) -> tuple[int, int]:
        if index == 0 and not self.gate.wait(WAIT):
            raise TimeoutError("the gate was never opened")
        return index, os.getpid()


def serve_until_killed(queues: ColmenaQueues) -> None:
    """A bare task server loop running ``add`` (used in a spawned child process)."""
    while True:
        try:
            _, task = queues.get_task(timeout=WAIT)
        except KillSignalException:
            return
        task.deserialize()
        task.set_result(add(*task.args))
        queues.send_result(task)


# --------------------------------------------------------------- settings
def test_url_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BROKER_URL_VARIABLE, "amqp://user:pw@broker.invalid:5672/%2F")
    assert RabbitMQQueues().url == "amqp://user:pw@broker.invalid:5672/%2F"
    assert RabbitMQQueues(url="amqp://other:5672").url == "amqp://other:5672"
    monkeypatch.delenv(BROKER_URL_VARIABLE)
    assert RabbitMQQueues().url.startswith("amqp://guest:guest@localhost:5672")


def test_a_broker_given_to_the_tests_that_does_not_answer_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from colmena_core.testing.brokers import URL_VARIABLE, BrokerUnavailableError, acquire_rabbitmq

    with socket.socket() as unused:  # a port nothing listens on once closed
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv(URL_VARIABLE, f"amqp://ci:hunter2-secret@127.0.0.1:{port}/%2F")
    with pytest.raises(BrokerUnavailableError) as refused:
        acquire_rabbitmq()
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert "hunter2-secret" not in str(refused.value)


def test_names_are_checked_and_escaped() -> None:
    for campaign in ("a.b", "", "x" * 101, "with space", "-starts-with-dash"):
        with pytest.raises(ValueError, match="campaign"):
            RabbitMQQueues(campaign=campaign)
    with pytest.raises(ValueError, match="client_id"):
        RabbitMQQueues(client_id="thinker.1")
    with pytest.raises(ValueError, match="single string"):
        RabbitMQQueues(methods="simulate")

    for topic in ("v1.2", "#all", "x" * 65):  # a dot or a wildcard would change the routing
        with pytest.raises(ValueError, match="topic must be 1-64"):
            RabbitMQQueues([topic])
    queues = RabbitMQQueues(["v1-2", "all_"], campaign="demo", client_id="thinker-1")
    assert queues.client_id == "thinker-1" and queues.campaign == "demo"
    names = CampaignNames("demo")
    assert names.result_routing_key("thinker-1", "v1-2") == "thinker-1.v1-2"
    assert names.request_queue("simulate") == "colmena.demo.requests.simulate"
    assert RabbitMQQueues().client_id != RabbitMQQueues().client_id  # random by default


def test_connects_lazily_and_pickles_before_and_after_connecting(
    campaign: ThrowawayCampaign,
) -> None:
    queues = campaign.queues(["a"])
    assert not queues.is_connected
    copy = pickle.loads(pickle.dumps(queues))
    assert (copy.client_id, copy.campaign, copy.topics) == (
        queues.client_id,
        queues.campaign,
        queues.topics,
    )

    queues.connect()
    assert queues.is_connected
    copy = pickle.loads(pickle.dumps(queues))
    assert not copy.is_connected  # a copy connects on its own, in its own process
    copy.disconnect()


def test_unreachable_broker_is_reported(campaign: ThrowawayCampaign) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queues = RabbitMQQueues(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=1.0)
    start = time.monotonic()
    with pytest.raises(BrokerConnectionError, match="Could not connect"):
        queues.send_inputs(1, 2, method="add")
    assert time.monotonic() - start < 10
    assert queues.active_count == 0
    queues.disconnect(timeout=1)


@pytest.mark.parametrize("timeout", [0.0, 0.25])
def test_sub_second_timeouts_are_honoured(campaign: ThrowawayCampaign, timeout: float) -> None:
    queues = campaign.queues(["a"])
    queues.connect()
    for wait in (
        lambda: queues.get_result(timeout=timeout),
        lambda: queues.get_result("a", timeout=timeout),
        lambda: queues.get_task(timeout=timeout),
    ):
        start = time.monotonic()
        with pytest.raises(TimeoutException):
            wait()
        assert timeout * 0.9 <= time.monotonic() - start < timeout + 0.5


# ----------------------------------------------------------------- routing
def test_campaigns_on_one_broker_are_isolated(rabbitmq_url: str) -> None:
    with ThrowawayCampaign(rabbitmq_url) as first, ThrowawayCampaign(rabbitmq_url) as second:
        thinker = first.queues(client_id="thinker", methods=["add"])
        other = second.queues(client_id="thinker", methods=["add"])
        task_id = thinker.send_inputs(1, 2, method="add")
        other.send_inputs(5, 5, method="add")

        _, task = other.get_task(timeout=WAIT)  # the other campaign sees only its own task
        assert task.task_id != task_id
        with pytest.raises(TimeoutException):
            other.get_task(timeout=0.5)
        task.set_result(10)
        other.send_result(task)

        _, task = thinker.get_task(timeout=WAIT)
        assert task.task_id == task_id
        task.set_result(3)
        thinker.send_result(task)
        result = thinker.get_result(timeout=WAIT)
        assert result is not None and (result.task_id, result.value) == (task_id, 3)
        assert_no_more_results(thinker)
        result = other.get_result(timeout=WAIT)
        assert result is not None and result.value == 10


def test_requests_are_routed_by_method(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    thinker = campaign.queues(methods=["add", "mul"])
    adder = start_server(campaign.queues(), [add])
    multiplier = start_server(campaign.queues(), [mul])

    sent = {
        thinker.send_inputs(i, 3, method=method): method
        for i in range(10)
        for method in ("add", "mul")
    }
    results = receive_results(thinker, len(sent), timeout=WAIT)
    assert {r.task_id for r in results} == set(sent)
    for result in results:
        assert result.success, result.failure_info
        value, pid = result.value
        expected_server = adder if result.method == "add" else multiplier
        assert pid == expected_server.pid, f"{result.method} ran on the wrong task server"
        assert value == (result.args[0] + 3 if result.method == "add" else result.args[0] * 3)
    stop_task_servers(thinker, adder, multiplier, timeout=WAIT)


def test_task_servers_of_one_method_share_its_work(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    gated = Gated()
    thinker = campaign.queues(methods=["gated"])
    servers = [start_server(campaign.queues(prefetch=1), [gated], num_workers=1) for _ in range(2)]

    first = thinker.send_inputs(0, method="gated")  # holds its server until the gate opens
    second = thinker.send_inputs(1, method="gated")  # so only the other server can take it
    result = thinker.get_result(timeout=WAIT)
    assert result is not None and result.task_id == second, result
    gated.gate.set()
    other = thinker.get_result(timeout=WAIT)
    assert other is not None and other.task_id == first, other
    assert {result.value[1], other.value[1]} == {server.pid for server in servers}
    stop_task_servers(thinker, *servers, timeout=WAIT)


def test_kill_signal_reaches_every_task_server(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    thinker = campaign.queues(methods=["add", "mul"])
    servers = [start_server(campaign.queues(), [add]) for _ in range(2)]
    servers.append(start_server(campaign.queues(), [mul]))
    # One result from each method proves the servers listen; enough tasks reach both adders
    for i in range(40):
        thinker.send_inputs(i, 1, method="add")
    thinker.send_inputs(2, 2, method="mul")
    receive_results(thinker, 41, timeout=WAIT)

    stop_task_servers(thinker, *servers, timeout=WAIT)


def test_request_sent_before_its_server_started_reaches_it(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    # The thinker does not declare methods: a request for a method with no queue yet
    # waits among the unrouted requests...
    thinker = campaign.queues()
    task_id = thinker.send_inputs(3, 4, method="mul")
    # ...the queue of its method appears (as when a server of it starts)...
    campaign.queues(methods=["mul"]).connect()
    # ...and a server of another method, finding it unrouted, sends it on to that queue
    adder = start_server(campaign.queues(), [add])
    multiplier = start_server(campaign.queues(), [mul])
    result = thinker.get_result(timeout=WAIT)
    assert result is not None and result.task_id == task_id
    assert result.success, result.failure_info
    assert result.value == (12, multiplier.pid)
    stop_task_servers(thinker, adder, multiplier, timeout=WAIT)


# ------------------------------------------------------ processes, threads
def test_pickled_into_a_spawned_child_process(campaign: ThrowawayCampaign) -> None:
    queues = campaign.queues(["a"])
    queues.connect()  # the copy must make its own connection
    child = mp.get_context("spawn").Process(target=serve_until_killed, args=(queues,))
    with running_task_server(child, queues, timeout=WAIT):
        sent = {queues.send_inputs(i, i, method="add", topic="a"): 2 * i for i in range(5)}
        results = receive_results(queues, 5, topic="a", timeout=WAIT)
        assert {r.task_id: r.value[0] for r in results} == sent
        assert all(r.value[1] == child.pid for r in results)


def test_many_agent_threads_share_one_queue_object(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    agents, per_agent = 16, 20
    topics = [f"agent{i}" for i in range(agents)]
    thinker = campaign.queues(topics, methods=["add"])
    server = start_server(campaign.queues(), [add], num_workers=4)
    errors: list[BaseException] = []
    barrier = threading.Barrier(agents)

    def agent(topic: str, offset: int) -> None:
        try:
            barrier.wait(WAIT)
            sent = {
                thinker.send_inputs(offset, i, method="add", topic=topic): offset + i
                for i in range(per_agent)
            }
            results = receive_results(thinker, per_agent, topic, timeout=WAIT)
            assert {r.task_id: r.value[0] for r in results} == sent
            assert all(r.topic == topic for r in results)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(t, 1000 * i)) for i, t in enumerate(topics)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert thinker.wait_until_done(timeout=0)
    stop_task_servers(thinker, server, timeout=WAIT)


def test_disconnect_waits_for_every_confirmation_then_reconnects_on_use(
    campaign: ThrowawayCampaign,
) -> None:
    thinker = campaign.queues(methods=["add"])
    for i in range(300):
        thinker.send_inputs(i, 1, method="add")
    thinker.disconnect()  # returns once the broker has confirmed all of them
    assert not thinker.is_connected
    depths = queue_depths(campaign.url, campaign.name, methods=["add"])
    assert depths[campaign.queues().names.request_queue("add")] == 300

    thinker.send_inputs(0, 0, method="add")  # usable again: connects on use
    assert thinker.is_connected
    thinker.flush()
    assert (
        queue_depths(campaign.url, campaign.name, methods=["add"])[
            thinker.names.request_queue("add")
        ]
        == 0
    )


# ------------------------------------------------------------- dead letters
def test_unroutable_result_is_dead_lettered(campaign: ThrowawayCampaign) -> None:
    server = campaign.queues(methods=["add"])
    server.connect()  # declares the campaign's exchanges and the queue of "add"
    request = Result(((1, 2), {}), method="add")
    request.serialize()
    connection = pika.BlockingConnection(pika.URLParameters(campaign.url))
    try:  # a request whose reply address has no result queue
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            server.names.requests_exchange, "add", encode_result(request),
            pika.BasicProperties(delivery_mode=2, reply_to="nobody-home"),
        )  # fmt: skip
    finally:
        connection.close()

    _, task = server.get_task(timeout=WAIT)
    task.set_result(3)
    server.send_result(task)
    server.disconnect()  # waits for the confirmation, hence for the dead-lettering

    letters = list_dead_letters(campaign.url, campaign.name)
    assert [(d.reason, d.task_id, d.routing_keys) for d in letters] == [
        ("unroutable-result", task.task_id, ["nobody-home.default"])
    ]
    # Listing leaves them in place
    assert [d.body for d in server.dead_letters()] == [letters[0].body]


def test_the_ledger_survives_being_read_often(campaign: ThrowawayCampaign) -> None:
    # Reading the ledger returns its records to the queue: that must never count toward a
    # delivery limit (RabbitMQ 4 defaults to 20 and would dead-letter the records)
    thinker = campaign.queues(client_id="reader", methods=["add"], ledger=True)
    thinker.set_role("client")
    try:
        task_id = thinker.send_inputs(1, 2, method="add", wait_confirmed=WAIT)
        for _ in range(25):
            assert thinker.in_flight(timeout=WAIT) == {task_id}
        assert list_dead_letters(campaign.url, campaign.name) == []
    finally:
        thinker.disconnect()


def test_a_task_over_the_brokers_size_limit_is_refused_and_poisons_nothing(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    # The broker closes the channel of a publisher that exceeds its max_message_size
    # (128 MiB by default); the queues refuse such a task before it reaches the broker
    thinker = campaign.queues(methods=["add"])
    with pytest.raises(MessageTooLargeError):
        thinker.send_inputs(b"x" * (129 * 2**20), method="add")
    server = start_server(campaign.queues(methods=["add"]), [add])
    thinker.send_inputs(1, 2, method="add")
    [result] = receive_results(thinker, 1, timeout=WAIT)
    assert result.success and result.value[0] == 3, result.failure_info
    stop_task_servers(thinker, server, timeout=WAIT)


# ------------------------------------------------------------------ cleanup
def _queue_exists(url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    finally:
        if connection.is_open:
            connection.close()


def test_stopped_task_server_deletes_its_private_queues_quietly(
    campaign: ThrowawayCampaign, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_VARIABLE, new_secret())  # no warning about unsigned messages
    thinker, server = campaign.queues(methods=["add"]), campaign.queues(methods=["add"])
    server.set_role("server")
    server.prepare_server(["add"])
    thinker.send_inputs(1, 2, method="add")
    _, task = server.get_task(timeout=WAIT)  # the server now consumes its private queues
    task.set_result(3)
    server.send_result(task)
    assert thinker.get_result(timeout=WAIT) is not None
    server_id = server.server_id
    assert server_id is not None
    names = server.names
    private = [
        names.control_queue(server_id),
        names.lease_queue(server_id),
        names.expired_lease_queue(server_id),
    ]
    assert all(_queue_exists(campaign.url, q) for q in private)

    with caplog.at_level("WARNING", logger="colmena_core.queue.rabbitmq"):
        server.disconnect()
    assert not [q for q in private if _queue_exists(campaign.url, q)]
    ours = [r for r in caplog.records if r.name.startswith("colmena_core")]
    assert not [r.getMessage() for r in ours if r.levelno >= logging.WARNING]


def test_deleting_a_campaign_removes_its_heartbeat_exchange(rabbitmq_url: str) -> None:
    campaign = ThrowawayCampaign(rabbitmq_url, prefix="heartbeat-cleanup")
    names = campaign.queues().names
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        connection.channel().exchange_declare(
            names.heartbeats_exchange, exchange_type="fanout", durable=True
        )
    finally:
        connection.close()
    campaign.close()

    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as gone:
            connection.channel().exchange_declare(names.heartbeats_exchange, passive=True)
        assert gone.value.reply_code == 404
    finally:
        if connection.is_open:
            connection.close()


# ------------------------------------------------------- one connection, admin
def _broker_connections(url: str) -> set[tuple[str, int]]:
    """Local addresses of this process's TCP connections to the broker of ``url``."""
    port = urllib.parse.urlsplit(url).port or 5672
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def test_one_broker_connection_carries_everything_a_process_does(
    campaign: ThrowawayCampaign,
) -> None:
    before = _broker_connections(campaign.url)
    thinker = campaign.queues(["science"], methods=["add"])
    server = campaign.queues(methods=["add"])
    server.prepare_server(["add"])
    with (
        CampaignMonitor(campaign.url, campaign.name) as monitor,
        HeartbeatPublisher(campaign.url, campaign.name) as heartbeats,
    ):
        task_id = thinker.send_inputs(1, 2, method="add", topic="science")
        _, task = server.get_task(timeout=WAIT)
        task.set_result(3)
        server.send_result(task)
        result = thinker.get_result("science", timeout=WAIT)
        assert result is not None and result.task_id == task_id
        heartbeats.publish({"server_id": "s-1", "methods": ["add"]}, ttl=WAIT)
        assert heartbeats.wait_sent(1, WAIT)
        assert monitor.wait_connected(WAIT)
        assert monitor.wait_until(lambda m: bool(m.servers()), WAIT)
        assert queue_depths(campaign.url, campaign.name, ["add"])  # over the same connection
        assert monitor.dead_letters() == []
        # One at most: an earlier test's queue object may still hold the process's connection
        opened = _broker_connections(campaign.url) - before
        assert len(opened) <= 1, opened
    thinker.disconnect()
    server.disconnect()
    assert not _broker_connections(campaign.url) - before  # closed with its last user


def test_dead_letters_are_requeued_or_purged(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    thinker = campaign.queues(methods=["add"])
    task_id = thinker.send_inputs(2, 5, method="add")
    thinker.disconnect()  # confirmed, waiting in the queue of "add"
    names = thinker.names
    connection = pika.BlockingConnection(pika.URLParameters(campaign.url))
    try:  # an operator rejects it, then junk arrives: both become dead letters
        channel = connection.channel()
        method, _, _ = channel.basic_get(names.request_queue("add"))
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=False)
        channel.basic_publish(names.dead_exchange, "", b"junk")
    finally:
        connection.close()
    letters = list_dead_letters(campaign.url, campaign.name)
    assert sorted(str(d.task_id) for d in letters) == sorted([task_id, "None"])

    requeued = requeue_dead_letters(campaign.url, campaign.name)
    assert [d.task_id for d in requeued] == [task_id]  # junk cannot be sent anywhere
    [left] = list_dead_letters(campaign.url, campaign.name)
    assert left.body == b"junk"
    server = start_server(campaign.queues(methods=["add"]), [add])
    [result] = receive_results(thinker, 1, timeout=WAIT)
    assert (result.task_id, result.value[0]) == (task_id, 7)

    assert purge_dead_letters(campaign.url, campaign.name, task_ids=["someone-else"]) == 0
    assert purge_dead_letters(campaign.url, campaign.name) == 1
    assert list_dead_letters(campaign.url, campaign.name) == []
    stop_task_servers(thinker, server, timeout=WAIT)


def test_send_result_returns_at_once_while_the_broker_is_away() -> None:
    # Results are encoded and published by a sender thread of the queues, so the engine's
    # thread that hands one over never waits for the broker
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = RabbitMQQueues(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=1.0)
    server.set_role("server")
    task = Result(((1, 2), {}), method="add", reply_to="thinker-1")
    task.serialize()
    task.set_result(3)
    handed_over = threading.Event()
    sender = threading.Thread(target=lambda: (server.send_result(task), handed_over.set()))
    sender.start()
    assert handed_over.wait(WAIT)
    sender.join(WAIT)
    server.disconnect(timeout=1)


def test_transport_errors_share_one_base_class() -> None:
    for error in (BrokerConnectionError, MessageTooLargeError, MessageDecodeError):
        assert issubclass(error, TransportError)
    assert issubclass(BrokerConnectionError, ConnectionError)


def test_backoff_doubles_up_to_its_limit_and_restarts() -> None:
    backoff = Backoff(first=0.1, limit=0.5)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next_delay() == 0.1
    stop = threading.Event()
    stop.set()
    assert backoff.sleep(stop)  # a stop request cuts the wait short
    with pytest.raises(ValueError):
        Backoff(first=1.0, limit=0.5)


def test_a_stall_is_reported_with_its_reason() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queues = RabbitMQQueues(
        url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=1.0, stall_timeout=0.2
    )
    assert queues.stalled_reason is None  # not in use yet
    with pytest.raises(BrokerConnectionError):
        queues.connect(timeout=0.5)
    reported = threading.Event()
    deadline = time.monotonic() + WAIT
    while not reported.is_set() and time.monotonic() < deadline:
        if queues.stalled_reason is not None:
            reported.set()
        else:
            reported.wait(0.05)
    assert reported.is_set()
    assert "No connection to the broker" in str(queues.stalled_reason)
    assert queues.health()["broker_connected"] is False
    queues.disconnect(timeout=1)
