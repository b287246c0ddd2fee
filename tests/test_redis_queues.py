"""Behaviour specific to :class:`RedisQueues`: keys, prefixes, connections and timeouts.

Also tests the helper that finds or starts a Redis server for the test suite.

What every transport shares is tested in ``test_queue_conformance.py``.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from colmena_core.exceptions import KillSignalException, TimeoutException
from colmena_core.queue import RedisQueues
from colmena_core.queue.redis import RedisConnectionError, _server_tick, _server_version
from colmena_core.testing.redis import (
    URL_VARIABLE,
    RedisUnavailableError,
    acquire_redis_server,
    parse_redis_url,
    redis_answers,
    skip_or_fail,
    start_redis_server,
)

WAIT = 30.0
"""Timeout, in seconds, of every wait that is expected to succeed."""

QueuesFactory = Callable[..., RedisQueues]


@pytest.fixture
def client(redis_server: tuple[str, int]) -> Iterator[redis.Redis]:
    """A plain Redis client, to look at the keys the queues use."""
    host, port = redis_server
    connection = redis.Redis(host=host, port=port)
    yield connection
    connection.close()


@pytest.fixture
def make_queues(redis_server: tuple[str, int]) -> Iterator[QueuesFactory]:
    """Factory of RedisQueues on the test server; flushes and disconnects them afterwards."""
    host, port = redis_server
    created: list[RedisQueues] = []

    def make(topics: tuple[str, ...] = (), **options: Any) -> RedisQueues:
        queues = RedisQueues(topics, hostname=host, port=port, **options)
        created.append(queues)
        return queues

    yield make
    for queues in created:
        queues.flush()
        queues.disconnect()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_one(queues: RedisQueues) -> None:
    _, task = queues.get_task(timeout=WAIT)
    task.deserialize()
    task.set_result(sum(task.args))
    queues.send_result(task)


# ------------------------------------------------------------------- prefixes
def test_queues_made_without_prefix_do_not_share_keys(make_queues: QueuesFactory) -> None:
    first, second = make_queues(), make_queues()
    assert first.prefix != second.prefix
    task_id = first.send_inputs(1, 2)
    with pytest.raises(TimeoutException):
        second.get_task(timeout=0)
    _, task = first.get_task(timeout=WAIT)
    assert task.task_id == task_id
    with pytest.raises(TimeoutException):
        first.get_task(timeout=0)


def test_queues_with_the_same_prefix_are_the_same_queues(make_queues: QueuesFactory) -> None:
    prefix = f"test-{uuid.uuid4()}"
    thinker, server = make_queues(("a",), prefix=prefix), make_queues(("a",), prefix=prefix)
    stranger = make_queues(("a",), prefix=f"other-{uuid.uuid4()}")

    task_id = thinker.send_inputs(2, 3, topic="a")
    with pytest.raises(TimeoutException):
        stranger.get_task(timeout=0)
    _serve_one(server)
    with pytest.raises(TimeoutException):
        stranger.get_result("a", timeout=0)
    result = thinker.get_result("a", timeout=WAIT)
    assert result is not None and (result.task_id, result.value) == (task_id, 5)


def test_key_names(make_queues: QueuesFactory, client: redis.Redis) -> None:
    queues = make_queues(("a",), prefix=f"test-{uuid.uuid4()}")
    queues.send_inputs(1, 2, topic="a")
    assert client.llen(f"{queues.prefix}_requests") == 1
    _serve_one(queues)
    assert client.llen(f"{queues.prefix}_requests") == 0
    assert client.llen(f"{queues.prefix}_result_a") == 1
    queues.flush()
    assert client.exists(f"{queues.prefix}_result_a") == 0


def test_messages_are_raw_bytes(make_queues: QueuesFactory, client: redis.Redis) -> None:
    queues = make_queues()
    queues.send_inputs(b"\x00\xff" * 10)
    message = client.lindex(f"{queues.prefix}_requests", 0)
    assert isinstance(message, bytes) and message.startswith(b"CLM1")


def test_prefix_must_be_a_non_empty_string() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisQueues((), prefix="")


# ---------------------------------------------------------------- connections
def test_connect_and_disconnect(make_queues: QueuesFactory) -> None:
    queues = make_queues()
    assert not queues.is_connected  # connects on first use only
    queues.connect()
    assert queues.is_connected
    queues.connect()  # does nothing when connected
    queues.disconnect()
    assert not queues.is_connected
    queues.disconnect()  # does nothing when disconnected

    queues.send_inputs(1, 2)  # connects again when used
    assert queues.is_connected
    _serve_one(queues)
    result = queues.get_result(timeout=WAIT)
    assert result is not None and result.value == 3


def test_pickled_copy_connects_again(make_queues: QueuesFactory) -> None:
    queues = make_queues()
    queues.connect()
    copy = pickle.loads(pickle.dumps(queues))
    assert not copy.is_connected
    assert (copy.prefix, copy.hostname, copy.port, copy.topics) == (
        queues.prefix,
        queues.hostname,
        queues.port,
        queues.topics,
    )
    task_id = queues.send_inputs(1, 2)
    _, task = copy.get_task(timeout=WAIT)
    assert task.task_id == task_id and copy.is_connected
    copy.disconnect()


def test_unreachable_server_gives_a_clear_error() -> None:
    port = _unused_port()
    queues = RedisQueues((), hostname="127.0.0.1", port=port)  # no error: it connects lazily
    address = f"127.0.0.1:{port}"

    with pytest.raises(RedisConnectionError, match=address) as error:
        queues.connect()
    assert isinstance(error.value, ConnectionError)
    assert isinstance(error.value, redis.exceptions.ConnectionError)
    assert not queues.is_connected

    with pytest.raises(ConnectionError, match=address):
        queues.send_inputs(1, 2)
    assert queues.active_count == 0  # the failed task is not counted as in flight
    with pytest.raises(ConnectionError, match=address):
        queues.get_result(timeout=0)
    with pytest.raises(ConnectionError, match=address):
        queues.flush()


def test_old_servers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        redis.Redis, "info", lambda self, *a, **k: {"redis_version": "5.0.14", "hz": 10}
    )
    queues = RedisQueues(())
    with pytest.raises(RedisConnectionError, match=r"6\.0"):
        queues.connect()
    assert not queues.is_connected


def test_server_description_helpers() -> None:
    assert _server_version({"redis_version": "7.2.4"}) == (7, 2)
    assert _server_version({}) is None
    assert _server_tick({"hz": 10}) == pytest.approx(0.1)
    assert _server_tick({"hz": 500}) == pytest.approx(0.002)
    assert _server_tick({}) == pytest.approx(0.1)


# ------------------------------------------------------------------- timeouts
@pytest.mark.parametrize("timeout", [0.05, 0.25])
def test_sub_second_timeouts_are_not_rounded_up(make_queues: QueuesFactory, timeout: float) -> None:
    queues = make_queues()
    for wait in (lambda: queues.get_result(timeout=timeout), lambda: queues.get_task(timeout)):
        start = time.monotonic()
        with pytest.raises(TimeoutException):
            wait()
        elapsed = time.monotonic() - start
        assert timeout * 0.9 <= elapsed < timeout + 0.5  # rounding to 1 s would fail


def test_zero_timeout_takes_what_is_there(make_queues: QueuesFactory) -> None:
    queues = make_queues()
    task_id = queues.send_inputs(1, 2)
    _, task = queues.get_task(timeout=0)
    assert task.task_id == task_id


def test_waits_longer_than_one_blocking_pop(
    make_queues: QueuesFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("colmena_core.queue.redis._MAX_BLOCK", 0.1)
    queues = make_queues()
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        queues.get_task(timeout=0.5)
    assert 0.45 <= time.monotonic() - start < 2.0


# -------------------------------------------------------------------- signals
def test_kill_signal_and_foreign_values(make_queues: QueuesFactory, client: redis.Redis) -> None:
    queues = make_queues()
    client.rpush(f"{queues.prefix}_requests", b"not a colmena message")
    task_id = queues.send_inputs(1, 2)
    queues.send_kill_signal()
    _, task = queues.get_task(timeout=WAIT)  # the foreign value is dropped
    assert task.task_id == task_id
    with pytest.raises(KillSignalException):
        queues.get_task(timeout=WAIT)


def test_too_large_message_is_refused_before_sending(make_queues: QueuesFactory) -> None:
    queues = make_queues()
    queues.max_message_size = 1000
    with pytest.raises(ValueError, match="ProxyStore"):
        queues.send_inputs(b"x" * 2000)
    assert queues.active_count == 0
    with pytest.raises(TimeoutException):
        queues.get_task(timeout=0)


def test_result_for_an_unknown_topic_is_refused(make_queues: QueuesFactory) -> None:
    queues = make_queues()
    queues.send_inputs(1, 2)
    _, task = queues.get_task(timeout=WAIT)
    task.set_result(3)
    with pytest.raises(ValueError, match="nope"):
        queues.send_result(task, topic="nope")


# -------------------------------------------------------------------- threads
def test_threads_wait_on_their_own_topics(make_queues: QueuesFactory) -> None:
    topics = tuple(f"t{i}" for i in range(6))
    queues = make_queues(topics)
    received: dict[str, Any] = {}
    errors: list[BaseException] = []

    def wait_for(topic: str) -> None:
        try:
            result = queues.get_result(topic, timeout=WAIT)
            assert result is not None
            received[topic] = result.value
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait_for, args=(topic,)) for topic in topics]
    for thread in threads:
        thread.start()
    for i, topic in enumerate(topics):
        queues.send_inputs(i, 100, topic=topic)
    for _ in topics:
        _serve_one(queues)
    for thread in threads:
        thread.join(WAIT)
    assert not errors, errors
    assert received == {topic: i + 100 for i, topic in enumerate(topics)}


# ------------------------------------------------------- the test-server helper
def test_parse_redis_url() -> None:
    assert parse_redis_url("redis://example.org:7000") == ("example.org", 7000)
    assert parse_redis_url("redis://example.org/0") == ("example.org", 6379)
    assert parse_redis_url("127.0.0.1:6380") == ("127.0.0.1", 6380)
    for bad in ("http://example.org", "redis://user:secret@example.org", "redis://h/3"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_service_skips_or_fails(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="no server"):
        skip_or_fail("no server")


def test_throwaway_server(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    server = start_redis_server()
    try:
        assert server.process is not None and redis_answers(*server.address)
        monkeypatch.setenv(URL_VARIABLE, f"redis://{server.host}:{server.port}")
        found = acquire_redis_server()  # the URL wins, and a server found is not ours to stop
        assert found.address == server.address and found.process is None

        queues = RedisQueues((), hostname=server.host, port=server.port)
        queues.send_inputs(1, 2)
        _serve_one(queues)
        result = queues.get_result(timeout=WAIT)
        assert result is not None and result.value == 3
        queues.disconnect()
    finally:
        server.stop()
    assert not redis_answers(*server.address)

    monkeypatch.setenv(URL_VARIABLE, f"redis://{server.host}:{server.port}")
    with pytest.raises(RedisUnavailableError, match=URL_VARIABLE):
        acquire_redis_server()
