"""The delivery contract of the RabbitMQ queues (ARCHITECTURE.md §3), against real brokers.

Each item of the contract is one test with real processes: task servers are
``LocalTaskServer`` processes, killed with SIGKILL where the contract says so; thinkers are
queue objects (a restarted thinker is a new object with the same ``client_id``). Tests that
stop the broker or need a short consumer timeout use throwaway nodes. Tests synchronise on
results, events, joins and messages, never on sleeps, and every wait has a timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pika
import pytest
from queue_support import assert_exactly_once

from colmena_core.exceptions import TimeoutException
from colmena_core.models.wire import MAGIC
from colmena_core.queue.rabbitmq import RabbitMQQueues, list_dead_letters
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing.brokers import ThrowawayCampaign, ThrowawayRabbitMQ
from colmena_core.testing.task_servers import (
    LocalServerStarter,
    assert_no_more_results,
    receive_results,
    stop_task_servers,
)

WAIT = 60.0
"""Timeout, in seconds, of every wait that is expected to succeed."""

CONSUMER_TIMEOUT = 3.0
"""Consumer timeout, in seconds, of the broker that tests long tasks."""


# ----------------------------------------------------------------- methods
def work(index: int, seconds: float = 0.0) -> tuple[int, int]:
    """A task taking ``seconds``; returns its index and the process that ran it."""
    if seconds:
        time.sleep(seconds)  # the work itself, not a synchronisation
    return index, os.getpid()


def sized(size: int) -> bytes:
    """A value of ``size`` bytes."""
    return b"v" * size


def fails(message: str) -> None:
    """A method that always raises."""
    raise ValueError(message)


class Recorded:
    """A method that leaves a file per execution (``<index>-<pid>``) in a directory.

    Args:
        directory: Where the files go
        seconds: How long each call works, unless the call says otherwise
        block_first: The first call (in the first process) blocks until that process dies;
            the calls that start at the same instant in other workers do not
    """

    def __init__(self, directory: Path, seconds: float = 0.0, block_first: bool = False) -> None:
        self.__name__ = "work"
        self.directory = directory
        self.seconds = seconds
        self.block_first = block_first
        self.first_started = mp.Event()

    def __call__(self, index: int, seconds: float | None = None) -> tuple[int, int]:
        (self.directory / f"{index}-{os.getpid()}").touch()
        if self.block_first and self._first_to_block():
            (self.directory / f"blocked-{index}").touch()
            self.first_started.set()
            threading.Event().wait(10 * WAIT)  # until SIGKILL ends this process
        return work(index, self.seconds if seconds is None else seconds)

    def _first_to_block(self) -> bool:
        """Whether this call is the first to ask (one answer across threads and processes)."""
        try:
            os.close(os.open(self.directory / "first.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def executions(self) -> dict[int, list[int]]:
        """Process IDs that ran each index."""
        runs: dict[int, list[int]] = {}
        for path in self.directory.glob("*-*"):
            index, pid = path.name.split("-")
            if index != "blocked":
                runs.setdefault(int(index), []).append(int(pid))
        return runs

    def blocked(self) -> list[int]:
        """Indices of the calls that blocked."""
        return [int(path.name.split("-")[1]) for path in self.directory.glob("blocked-*")]


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def task_server_options() -> dict[str, Any]:
    """Four workers a task server, so that some keep going while one is stuck."""
    return {"num_workers": 4, "pool": "thread"}


@pytest.fixture(scope="module")
def short_timeout_broker(
    throwaway_rabbitmq_factory: Callable[..., ThrowawayRabbitMQ],
) -> ThrowawayRabbitMQ:
    """A private node whose consumer timeout is a few seconds, checked every second."""
    return throwaway_rabbitmq_factory(consumer_timeout=CONSUMER_TIMEOUT)


@pytest.fixture
def long_campaign(short_timeout_broker: ThrowawayRabbitMQ) -> Iterator[ThrowawayCampaign]:
    """A campaign of this test only on the short-timeout broker, deleted afterwards."""
    with ThrowawayCampaign(short_timeout_broker.url, "long") as campaign:
        yield campaign


def publish_raw(url: str, exchange: str, routing_key: str, body: bytes, reply_to: str) -> None:
    """Publish a message with a bare pika client, waiting for the broker to confirm it."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2, reply_to=reply_to)
        channel.basic_publish(exchange, routing_key, body, properties)
    finally:
        connection.close()


class Monitor:
    """A private queue bound to an exchange, to watch what passes through it."""

    def __init__(self, url: str, exchange: str, arguments: dict[str, Any] | None = None) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(self.queue, exchange, arguments=arguments)

    def wait_for(self, count: int) -> list[bytes]:
        """Wait for ``count`` messages (each within the timeout) and return their bodies."""
        bodies: list[bytes] = []
        for method, _, body in self.channel.consume(
            self.queue, auto_ack=True, inactivity_timeout=WAIT
        ):
            assert method is not None, f"only {len(bodies)} of {count} messages arrived"
            bodies.append(body)
            if len(bodies) == count:
                break
        self.channel.cancel()
        return bodies

    def close(self) -> None:
        self.connection.close()


# ---------------------------------------------------------------- contract
def test_two_thinkers_and_two_servers_each_thinker_gets_its_own_results_once(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    thinkers = [campaign.queues(client_id=f"thinker-{i}", methods=["work"]) for i in range(2)]
    servers = [start_server(campaign.queues(), [work]) for _ in range(2)]
    sent: dict[str, set[str]] = {}
    for thinker in thinkers:
        sent[thinker.client_id] = {
            thinker.send_inputs(i, method="work", task_info={"thinker": thinker.client_id})
            for i in range(500)
        }

    for thinker in thinkers:
        results = receive_results(thinker, 500)
        assert_exactly_once(results, sent[thinker.client_id])
        assert {r.task_info["thinker"] for r in results} == {thinker.client_id}
        assert_no_more_results(thinker)
        assert thinker.wait_until_done(timeout=0)
    stop_task_servers(thinkers[0], *servers)


def test_task_server_killed_mid_task_and_restarted_every_task_has_one_result(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter, tmp_path: Path
) -> None:
    method = Recorded(tmp_path, seconds=0.002, block_first=True)
    thinker = campaign.queues(methods=["work"])
    first = start_server(campaign.queues(prefetch=16), [method])
    sent = {thinker.send_inputs(i, method="work") for i in range(200)}

    assert method.first_started.wait(WAIT)  # one task is stuck in the first server...
    results = receive_results(thinker, 20)  # ...while its other workers keep going
    os.kill(first.pid, signal.SIGKILL)
    first.join(WAIT)
    assert first.exitcode == -signal.SIGKILL

    second = start_server(campaign.queues(prefetch=16), [method])
    results += receive_results(thinker, 180)
    assert_exactly_once(results, sent)
    assert_no_more_results(thinker)

    # The tasks that were running when the server died ran again on the new server
    stuck = method.blocked()
    assert len(stuck) == 1
    ran_on = {r.args[0]: r.value[1] for r in results}
    for index in stuck:
        assert sorted(method.executions()[index]) == sorted([first.pid, second.pid])
        assert ran_on[index] == second.pid
    stop_task_servers(thinker, second)


def test_broker_restarted_mid_campaign_clients_reconnect_and_nothing_is_lost(
    throwaway_rabbitmq: ThrowawayRabbitMQ, start_server: LocalServerStarter
) -> None:
    broker = throwaway_rabbitmq
    with ThrowawayCampaign(broker.url, "restart") as campaign:
        thinker = campaign.queues(methods=["work"])
        server = start_server(campaign.queues(prefetch=8), [work], num_workers=2)
        sent = {thinker.send_inputs(i, 0.01, method="work") for i in range(150)}
        results = receive_results(thinker, 30)

        broker.stop()
        # Sent while the broker is down: kept by the client until it is back
        sent |= {thinker.send_inputs(i, 0.01, method="work") for i in range(150, 250)}
        broker.start()

        results += receive_results(thinker, 220)
        assert_exactly_once(results, sent)
        assert_no_more_results(thinker)
        assert thinker.is_connected
        stop_task_servers(thinker, server)


def test_thinker_restarted_with_same_client_id_gets_results_that_arrived_meanwhile(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    thinker = campaign.queues(client_id="restartable", methods=["work"])
    server = start_server(campaign.queues(), [work])
    sent = {thinker.send_inputs(i, method="work") for i in range(100)}
    early = receive_results(thinker, 30)
    thinker.send_kill_signal()  # the server finishes the queued tasks, then stops
    thinker.disconnect()  # the thinker goes away
    server.join(WAIT)
    assert server.exitcode == 0  # so every result now waits for the thinker

    restarted = campaign.queues(client_id="restartable")
    late = receive_results(restarted, 70)
    assert_exactly_once(early + late, sent)
    assert_no_more_results(restarted)


def crashing_thinker(url: str, campaign: str, report: Connection) -> None:
    """A thinker that sends tasks, takes some results, reports them, and waits to be killed."""
    queues = RabbitMQQueues(url=url, campaign=campaign, client_id="crashy", methods=["work"])
    report.send([queues.send_inputs(i, method="work") for i in range(100)])
    report.send([result.task_id for result in receive_results(queues, 30)])
    threading.Event().wait(10 * WAIT)


def test_thinker_killed_and_restarted_gets_every_result(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    campaign.clients["crashy"] = {"default"}
    server = start_server(campaign.queues(), [work])
    ours, theirs = mp.Pipe()
    child = mp.Process(target=crashing_thinker, args=(campaign.url, campaign.name, theirs))
    child.start()
    try:
        assert ours.poll(WAIT)
        sent = set(ours.recv())
        assert ours.poll(WAIT)
        early = set(ours.recv())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(WAIT)

    # Results taken just before the crash may come again; none may be missing
    restarted = campaign.queues(client_id="crashy")
    late: list[str] = []
    while not sent <= early | set(late):
        result = restarted.get_result(timeout=WAIT)
        assert result is not None and result.success
        late.append(result.task_id)
    with pytest.raises(TimeoutException):
        while True:
            extra = restarted.get_result(timeout=0.5)
            assert extra is not None and extra.task_id in early
    assert len(late) == len(set(late)) and set(late) <= sent
    stop_task_servers(restarted, server)


def test_bad_messages_never_crash_a_service(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter
) -> None:
    thinker = campaign.queues(methods=["work", "fails"])
    thinker.connect()
    server = start_server(campaign.queues(), [work, fails])
    dead = Monitor(campaign.url, thinker.names.dead_exchange)
    try:
        garbage = [
            b"not a colmena message",
            MAGIC + struct.pack("!IQQ", 6, 0, 2**64 - 1) + b"{oops}",  # right frame, bad header
        ]
        for body in garbage:
            publish_raw(
                campaign.url, thinker.names.requests_exchange, "work", body, thinker.client_id
            )
        unknown = thinker.send_inputs(1, method="no_such_method")
        failing = thinker.send_inputs("boom", method="fails")
        fine = thinker.send_inputs(2, method="work")

        results = {r.task_id: r for r in receive_results(thinker, 3)}
        assert set(results) == {unknown, failing, fine}
        assert not results[unknown].success
        assert "no_such_method" in results[unknown].failure_info.exception
        assert not results[failing].success and "boom" in results[failing].failure_info.exception
        assert results[fine].success and results[fine].value == (2, server.pid)

        # The undecodable messages wait among the dead letters, with the reason
        assert sorted(dead.wait_for(2)) == sorted(garbage)
    finally:
        dead.close()
    letters = list_dead_letters(campaign.url, campaign.name)
    assert sorted(letter.body for letter in letters) == sorted(garbage)
    assert {letter.reason for letter in letters} == {"rejected"}
    assert all(letter.error and letter.task_id is None for letter in letters)
    assert len(list_dead_letters(campaign.url, campaign.name)) == 2  # listing kept them
    assert server.is_alive()
    stop_task_servers(thinker, server)


# --------------------------------------------------------------- long tasks
LEASES: dict[str, Any] = {"lease_after": 1.0, "lease_ttl": 2.0}
"""Queue options of the long-task tests: a task is leased after 1 s, for 2 s at a time."""


def start_leased_task(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter, method: Recorded, index: int
) -> tuple[RabbitMQQueues, LocalTaskServer, str]:
    """Start a server of ``method``, send it task ``index`` and wait until its lease is renewed.

    Returns:
        The thinker's queues, the task server and the ID of the task
    """
    thinker = campaign.queues(methods=["work"], **LEASES)
    thinker.connect()
    leases = Monitor(campaign.url, thinker.names.leases_exchange, {"x-match": "all"})
    try:
        server = start_server(campaign.queues(**LEASES), [method])
        task_id = thinker.send_inputs(index, method="work")
        # Leased, then renewed while running (the request itself is acknowledged)
        assert len(leases.wait_for(2)) == 2
    finally:
        leases.close()
    return thinker, server, task_id


def test_messages_over_the_brokers_size_limit_become_failures_and_stall_nothing(
    throwaway_rabbitmq_factory: Callable[..., ThrowawayRabbitMQ],
    start_server: LocalServerStarter,
) -> None:
    # A broker whose max_message_size was lowered without telling the queues: it closes the
    # channel that publishes a larger message. The link learns the limit from that, and
    # the task still gets exactly one result, a failure saying why.
    node = throwaway_rabbitmq_factory(config_lines=[f"max_message_size = {2**20}"])
    with ThrowawayCampaign(node.url, "sizes") as campaign:
        thinker = campaign.queues(methods=["work", "sized"], max_message_size=None)
        server = start_server(campaign.queues(max_message_size=None), [work, sized])
        too_big = thinker.send_inputs(b"x" * (2 * 2**20), method="work")
        fine = thinker.send_inputs(1, method="work")
        big_value = thinker.send_inputs(2 * 2**20, method="sized")
        small_value = thinker.send_inputs(10, method="sized")

        results = {r.task_id: r for r in receive_results(thinker, 4)}
        assert set(results) == {too_big, fine, big_value, small_value}
        for refused in (too_big, big_value):
            assert not results[refused].success
            assert "MessageTooLargeError" in results[refused].failure_info.exception
            assert str(2**20) in results[refused].failure_info.exception
        assert results[fine].success and results[small_value].value == b"v" * 10
        assert_no_more_results(thinker)

        # Later messages above the limit fail at once, without closing a channel again
        again = thinker.send_inputs(b"y" * (2 * 2**20), method="work")
        [result] = receive_results(thinker, 1)
        assert result.task_id == again and not result.success
        stop_task_servers(thinker, server, timeout=WAIT)


def test_the_test_broker_enforces_its_consumer_timeout(
    short_timeout_broker: ThrowawayRabbitMQ,
) -> None:
    """Without leases, a delivery held past the timeout loses its channel (checks the setup)."""
    connection = pika.BlockingConnection(pika.URLParameters(short_timeout_broker.url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"held")
        channel.basic_consume(queue, lambda *_: None)  # never acknowledged
        start = time.monotonic()
        while channel.is_open and time.monotonic() - start < WAIT:
            connection.process_data_events(time_limit=0.5)
        assert not channel.is_open
        assert time.monotonic() - start < 4 * CONSUMER_TIMEOUT
    finally:
        connection.close()


def test_task_longer_than_the_consumer_timeout_runs_once_and_returns_once(
    long_campaign: ThrowawayCampaign, start_server: LocalServerStarter, tmp_path: Path
) -> None:
    method = Recorded(tmp_path, seconds=3 * CONSUMER_TIMEOUT)
    thinker, server, task_id = start_leased_task(long_campaign, start_server, method, 7)

    result = thinker.get_result(timeout=WAIT)
    assert result is not None and result.task_id == task_id and result.success
    assert result.time_running >= 3 * CONSUMER_TIMEOUT
    assert method.executions() == {7: [server.pid]}  # it ran once
    assert_no_more_results(thinker)
    assert list_dead_letters(long_campaign.url, long_campaign.name) == []

    quick = thinker.send_inputs(8, 0.0, method="work")  # the server is still serving
    result = thinker.get_result(timeout=WAIT)
    assert result is not None and result.task_id == quick
    stop_task_servers(thinker, server)


def test_long_task_of_a_killed_server_returns_to_the_queue_when_its_lease_expires(
    long_campaign: ThrowawayCampaign, start_server: LocalServerStarter, tmp_path: Path
) -> None:
    method = Recorded(tmp_path, seconds=2 * CONSUMER_TIMEOUT)
    thinker, first, task_id = start_leased_task(long_campaign, start_server, method, 3)
    os.kill(first.pid, signal.SIGKILL)
    first.join(WAIT)

    second = start_server(long_campaign.queues(**LEASES), [method])
    result = thinker.get_result(timeout=WAIT)
    assert result is not None and result.task_id == task_id and result.success
    assert result.value == (3, second.pid)
    assert sorted(method.executions()[3]) == sorted([first.pid, second.pid])
    assert_no_more_results(thinker)
    stop_task_servers(thinker, second)
