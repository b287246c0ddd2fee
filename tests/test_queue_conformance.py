"""Behaviour that every queue transport must share, run against each of them.

Each test takes the ``make_queues`` fixture, a factory called as
``make_queues(topics, **queue_options)`` that returns a fresh queue isolated from every
other one. The fixture is parametrised over :data:`BACKENDS`; to test a new transport,
add a context manager that yields its factory there.

Tests never sleep to synchronise: they wait on results, events or joins, each with a
timeout.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from proxystore.connectors.file import FileConnector
from proxystore.proxy import Proxy, extract
from proxystore.store import Store
from proxystore.store.utils import get_key

from colmena_core.exceptions import KillSignalException, MessageTooLargeError, TimeoutException
from colmena_core.models import ResourceRequirements, Result
from colmena_core.queue import ColmenaQueues, PipeQueues

WAIT = 30.0
"""Timeout, in seconds, of every wait that is expected to succeed."""

QueueFactory = Callable[..., ColmenaQueues]
"""``make_queues(topics, **options)``: a fresh queue of the transport under test."""


# ---------------------------------------------------------------- transports
@contextmanager
def _pipe_backend(request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
    def make(topics: Collection[str] = (), **options: Any) -> ColmenaQueues:
        return PipeQueues(topics, **options)

    yield make


@contextmanager
def _redis_backend(request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
    host, port = request.getfixturevalue("redis_server")
    from colmena_core.queue.redis import RedisQueues  # the redis extra is optional

    def make(topics: Collection[str] = (), **options: Any) -> ColmenaQueues:
        return RedisQueues(topics, hostname=host, port=port, **options)

    yield make


@contextmanager
def _rabbitmq_backend(request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
    url = request.getfixturevalue("rabbitmq_url")
    from colmena_core.testing.brokers import ThrowawayCampaign  # the pika extra is optional

    with ThrowawayCampaign(url, "conformance") as campaign:  # deleted from the broker after
        yield campaign.queues


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AbstractContextManager[QueueFactory]]] = {
    "pipe": _pipe_backend,
    "redis": _redis_backend,
    "rabbitmq": _rabbitmq_backend,
}
"""Every transport under test: name -> context manager yielding its queue factory."""


def release(created: Iterable[ColmenaQueues]) -> None:
    """Flush the queues a test made and disconnect those that hold a connection."""
    for queues in created:
        queues.flush()
        disconnect = getattr(queues, "disconnect", None)
        if callable(disconnect):
            disconnect()


@pytest.fixture(params=list(BACKENDS))
def make_queues(request: pytest.FixtureRequest) -> Iterator[QueueFactory]:
    """Factory of fresh queues of one transport; flushes and disconnects them afterwards."""
    created: list[ColmenaQueues] = []
    with BACKENDS[request.param](request) as build:

        def make(topics: Collection[str] = (), **options: Any) -> ColmenaQueues:
            queues = build(topics, **options)
            created.append(queues)
            return queues

        try:
            yield make
        finally:
            release(created)


# ------------------------------------------------------- methods and servers
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return the arguments (JSON-compatible)."""
    return {"args": list(args), "kwargs": kwargs}


def add(a: Any, b: Any) -> Any:
    """Add two numbers."""
    return a + b


def reverse(data: Any) -> Any:
    """Reverse bytes or a 1-D array."""
    if isinstance(data, np.ndarray):
        return data[::-1].copy()
    return data[::-1]


def describe(data: Any) -> dict[str, Any]:
    """Whether ``data`` arrived as a proxy, its size and its digest."""
    was_proxy = isinstance(data, Proxy)
    value = extract(data) if was_proxy else data
    return {"proxy": was_proxy, "size": len(value), "digest": hashlib.sha256(value).hexdigest()}


def blob(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


METHODS: dict[str, Callable[..., Any]] = {
    "echo": echo,
    "add": add,
    "reverse": reverse,
    "describe": describe,
    "blob": blob,
}


def compute(task: Result) -> None:
    """Run a task the way a task server does, in the calling thread."""
    task.deserialize()
    task.mark_compute_started()
    try:
        value = METHODS[task.method or "echo"](*task.args, **task.kwargs)
    except Exception as exc:
        task.set_failure(exc)
    else:
        task.set_result(value)


def serve_one(queues: ColmenaQueues, timeout: float = WAIT) -> Result:
    """Receive one task, run it and send its result back."""
    _, task = queues.get_task(timeout=timeout)
    compute(task)
    queues.send_result(task)
    return task


def serve_until_killed(queues: ColmenaQueues) -> None:
    """A minimal task server: serve tasks until the kill signal (also used in children)."""
    while True:
        try:
            serve_one(queues)
        except KillSignalException:
            return


@contextmanager
def serving(queues: ColmenaQueues) -> Iterator[None]:
    """Run a task server in a thread for the duration of the block."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_until_killed(queues)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-task-server", daemon=True)
    thread.start()
    try:
        yield
    finally:
        queues.send_kill_signal()
        thread.join(WAIT)
    assert not thread.is_alive(), "the task server thread did not stop"
    assert not errors, errors


@contextmanager
def serving_in_child(queues: ColmenaQueues) -> Iterator[None]:
    """Run a task server in a spawned child process, which gets a pickled copy of the queue."""
    child = mp.get_context("spawn").Process(target=serve_until_killed, args=(queues,), daemon=True)
    child.start()
    try:
        yield
        queues.send_kill_signal()
        child.join(WAIT)
    finally:
        if child.is_alive():
            child.terminate()
            child.join(WAIT)
    assert child.exitcode == 0, f"the task server process exited with {child.exitcode}"


def get_results(queues: ColmenaQueues, count: int, topic: str = "default") -> dict[str, Result]:
    """Receive ``count`` results of a topic, by task ID."""
    results = [queues.get_result(topic, timeout=WAIT) for _ in range(count)]
    return {result.task_id: result for result in results if result is not None}


# -------------------------------------------------------------------- basics
def test_round_trip_with_args_and_kwargs(make_queues: QueueFactory) -> None:
    queues = make_queues(["a"])
    task_id = queues.send_inputs(1, [2, 3], method="echo", input_kwargs={"x": {"y": 4}})

    topic, task = queues.get_task(timeout=WAIT)
    assert (topic, task.task_id, task.method) == ("default", task_id, "echo")
    assert task.time_input_received is not None
    task.deserialize()
    assert task.args == (1, [2, 3])
    assert task.kwargs == {"x": {"y": 4}}
    compute(task)
    queues.send_result(task)

    result = queues.get_result(timeout=WAIT)
    assert result is not None
    assert result.task_id == task_id
    assert result.success, result.failure_info
    assert result.value == {"args": [1, [2, 3]], "kwargs": {"x": {"y": 4}}}
    assert result.args == (1, [2, 3])
    assert result.kwargs == {"x": {"y": 4}}
    assert result.time_result_sent is not None
    assert result.time_result_received is not None


def test_topics_keep_results_apart(make_queues: QueueFactory) -> None:
    queues = make_queues(["a", "b"])
    assert queues.topics == {"a", "b", "default"}
    sent = {topic: queues.send_inputs(topic, method="echo", topic=topic) for topic in queues.topics}
    for _ in sent:
        serve_one(queues)

    for topic in sorted(sent):
        result = queues.get_result(topic, timeout=WAIT)
        assert result is not None
        assert (result.task_id, result.topic, result.value["args"]) == (sent[topic], topic, [topic])
    for topic in sent:
        with pytest.raises(TimeoutException):
            queues.get_result(topic, timeout=0)


def test_result_of_one_topic_does_not_come_out_of_another(make_queues: QueueFactory) -> None:
    queues = make_queues(["a", "b"])
    queues.send_inputs(1, 2, method="add", topic="a")
    serve_one(queues)
    with pytest.raises(TimeoutException):
        queues.get_result("b", timeout=0)
    with pytest.raises(TimeoutException):
        queues.get_result(timeout=0)
    result = queues.get_result("a", timeout=WAIT)
    assert result is not None and result.value == 3


def test_unknown_topic_is_an_error(make_queues: QueueFactory) -> None:
    queues = make_queues(["a"])
    with pytest.raises(ValueError, match="nope"):
        queues.send_inputs(1, method="echo", topic="nope")
    with pytest.raises(ValueError, match="nope"):
        queues.get_result("nope", timeout=0)
    assert queues.active_count == 0


def test_default_topic(make_queues: QueueFactory) -> None:
    queues = make_queues()
    assert queues.topics == {"default"}
    task_id = queues.send_inputs(2, 3, method="add")
    topic, task = queues.get_task(timeout=WAIT)
    assert topic == "default" == task.topic
    compute(task)
    queues.send_result(task)
    result = queues.get_result(timeout=WAIT)
    assert result is not None and (result.task_id, result.value) == (task_id, 5)


@pytest.mark.parametrize("default", [True, False])
def test_keep_inputs_default_and_override(make_queues: QueueFactory, default: bool) -> None:
    queues = make_queues(keep_inputs=default)
    kept_by_default = queues.send_inputs(1, 2, method="add")
    overridden = queues.send_inputs(3, 4, method="add", keep_inputs=not default)
    for _ in range(2):
        serve_one(queues)
    results = get_results(queues, 2)

    assert results[kept_by_default].inputs == (((1, 2), {}) if default else ((), {}))
    assert results[overridden].inputs == (((3, 4), {}) if not default else ((), {}))
    assert (results[kept_by_default].value, results[overridden].value) == (3, 7)


def test_task_info_and_resources_round_trip(make_queues: QueueFactory) -> None:
    queues = make_queues()
    info = {"batch": 3, "tags": ["x", "y"], "nested": {"score": 1.5}}
    queues.send_inputs(
        1, 2, method="add", task_info=info, resources={"node_count": 2, "cpu_processes": 4}
    )
    _, task = queues.get_task(timeout=WAIT)
    assert task.task_info == info
    assert task.resources == ResourceRequirements(node_count=2, cpu_processes=4)
    compute(task)
    queues.send_result(task)

    result = queues.get_result(timeout=WAIT)
    assert result is not None
    assert result.task_info == info
    assert result.resources.node_count == 2
    assert result.resources.total_ranks == 8


@pytest.mark.parametrize("method", ["json", "pickle"])
def test_serialization_methods(make_queues: QueueFactory, method: str) -> None:
    queues = make_queues(serialization_method=method)
    task_id = queues.send_inputs("a", [1, 2.5, None], method="echo", input_kwargs={"k": {"n": 1}})
    _, task = queues.get_task(timeout=WAIT)
    assert task.serialization_method == method
    if method == "json":
        assert isinstance(task.inputs, str | bytes)
        assert json.loads(task.inputs) == [["a", [1, 2.5, None]], {"k": {"n": 1}}]
    compute(task)
    queues.send_result(task)
    result = queues.get_result(timeout=WAIT)
    assert result is not None and result.task_id == task_id
    assert result.value == {"args": ["a", [1, 2.5, None]], "kwargs": {"k": {"n": 1}}}

    if method == "pickle":  # pickle keeps Python types that JSON cannot carry
        queues.send_inputs({1, 2}, (3, 4), method="echo")
        serve_one(queues)
        result = queues.get_result(timeout=WAIT)
        assert result is not None and result.value["args"] == [{1, 2}, (3, 4)]
    else:  # an input JSON cannot encode fails before anything is sent
        with pytest.raises(TypeError):
            queues.send_inputs({1, 2}, method="echo")
        assert queues.active_count == 0


def test_flush_removes_requests_and_results(make_queues: QueueFactory) -> None:
    queues = make_queues(["a"])
    queues.send_inputs(1, 2, method="add")
    queues.send_inputs(1, 2, method="add", topic="a")
    queues.flush()
    with pytest.raises(TimeoutException):
        queues.get_task(timeout=0)

    queues.send_inputs(1, 2, method="add", topic="a")
    serve_one(queues)
    queues.flush()
    with pytest.raises(TimeoutException):
        queues.get_result("a", timeout=0)

    task_id = queues.send_inputs(2, 2, method="add", topic="a")  # still usable afterwards
    serve_one(queues)
    result = queues.get_result("a", timeout=WAIT)
    assert result is not None and (result.task_id, result.value) == (task_id, 4)


def test_kill_signal(make_queues: QueueFactory) -> None:
    queues = make_queues()
    task_id = queues.send_inputs(1, 2, method="add")
    queues.send_kill_signal()
    _, task = queues.get_task(timeout=WAIT)  # tasks sent before the signal come first
    assert task.task_id == task_id
    with pytest.raises(KillSignalException):
        queues.get_task(timeout=WAIT)
    with pytest.raises(TimeoutException):  # the signal is delivered once
        queues.get_task(timeout=0)


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_timeouts_honour_fractions_of_a_second(make_queues: QueueFactory, timeout: float) -> None:
    queues = make_queues(["a"])
    waits: list[Callable[[], object]] = [
        lambda: queues.get_result(timeout=timeout),
        lambda: queues.get_result("a", timeout=timeout),
        lambda: queues.get_task(timeout=timeout),
    ]
    for wait in waits:
        start = time.monotonic()
        with pytest.raises(TimeoutException):
            wait()
        elapsed = time.monotonic() - start
        assert elapsed >= 0.9 * timeout
        assert elapsed < (1.0 if timeout == 0 else 2.0)


def test_waiting_readers_in_threads_all_get_a_task(make_queues: QueueFactory) -> None:
    queues = make_queues()
    received: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:  # wait without a timeout: a reader must queue behind the others, not give up
            received.append(queues.get_task(timeout=None)[1].task_id)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
    for reader in readers:
        reader.start()
    sent = {queues.send_inputs(i, method="echo") for i in range(3)}
    for reader in readers:
        reader.join(WAIT)
    assert not errors, errors
    assert not any(reader.is_alive() for reader in readers)
    assert set(received) == sent


def test_active_count_and_wait_until_done(make_queues: QueueFactory) -> None:
    queues = make_queues(["a"])
    assert queues.active_count == 0 and queues.wait_until_done(timeout=0)
    for topic in ("default", "default", "a"):
        queues.send_inputs(1, 1, method="add", topic=topic)
    assert queues.active_count == 3 and queues.active_count_for("a") == 1
    assert not queues.wait_until_done(timeout=0)

    done = threading.Event()

    def wait() -> None:
        if queues.wait_until_done(timeout=WAIT):
            done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    for _ in range(3):
        serve_one(queues)
    queues.get_result("a", timeout=WAIT)
    assert queues.active_count == 2 and queues.active_count_for("a") == 0
    assert not done.is_set()
    get_results(queues, 2)
    waiter.join(WAIT)
    assert done.is_set()
    assert queues.active_count == 0 and queues.wait_until_done(timeout=0)


# ------------------------------------------------------------------ processes
def test_task_server_in_spawned_child_process(make_queues: QueueFactory) -> None:
    queues = make_queues(["a"])
    queues.flush()  # connects transports that connect lazily: the pickled copy must not
    expected = {}
    with serving_in_child(queues):
        for i in range(6):
            topic = "a" if i % 2 else "default"
            expected[queues.send_inputs(i, i, method="add", topic=topic)] = (topic, 2 * i)
        received = {**get_results(queues, 3), **get_results(queues, 3, topic="a")}
    assert {key: (r.topic, r.value) for key, r in received.items()} == expected
    assert queues.wait_until_done(timeout=0)


# ----------------------------------------------------------------- big values
@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_large_values_round_trip_exactly(make_queues: QueueFactory, kind: str) -> None:
    queues = make_queues(keep_inputs=False)
    array = np.random.default_rng(0).integers(0, 256, size=50 * 2**20, dtype=np.uint8)
    data: Any = array.tobytes() if kind == "bytes" else array
    with serving(queues):
        queues.send_inputs(data, method="reverse")
        result = queues.get_result(timeout=WAIT)
    assert result is not None and result.success, result and result.failure_info
    assert result.message_sizes["value"] > 50 * 2**20
    if kind == "bytes":
        assert result.value == data[::-1]
    else:
        np.testing.assert_array_equal(result.value, array[::-1])


def test_messages_larger_than_the_transport_carries(make_queues: QueueFactory) -> None:
    queues = make_queues()
    queues.max_message_size = 100_000  # travels with the object into a server process too

    # A request that is too large is refused before it is sent, and nothing waits for it
    with pytest.raises(MessageTooLargeError, match="ProxyStore"):
        queues.send_inputs(b"x" * 200_000, method="echo")
    assert queues.active_count == 0
    assert queues.wait_until_done(timeout=0)

    # A result that is too large comes back as a failure saying so; the queues carry on
    with serving(queues):
        big = queues.send_inputs(200_000, 1, method="blob")
        small = queues.send_inputs(1, 2, method="add")
        results = {}
        for _ in range(2):
            result = queues.get_result(timeout=WAIT)
            assert result is not None
            results[result.task_id] = result
    assert not results[big].success and results[big].value is None
    assert "MessageTooLargeError" in results[big].failure_info.exception
    assert results[big].args == (200_000, 1)  # the inputs it kept still come back
    assert results[small].success and results[small].value == 3


def test_concurrent_senders_do_not_corrupt_messages(make_queues: QueueFactory) -> None:
    queues = make_queues()
    count, size = 8, 2 * 2**20
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def in_threads(action: Callable[[int], object]) -> list[threading.Thread]:
        def run(i: int) -> None:
            try:
                barrier.wait(WAIT)
                action(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        return threads

    # Requests of ~2 MiB from 8 threads at once
    senders = in_threads(
        lambda i: queues.send_inputs(blob(size, i), method="reverse", task_info={"seed": i})
    )
    tasks = [queues.get_task(timeout=WAIT)[1] for _ in range(count)]
    for thread in senders:
        thread.join(WAIT)
    assert not errors, errors

    # Results of ~4 MiB (input and value) from 8 threads at once
    for task in tasks:
        compute(task)
    senders = in_threads(lambda i: queues.send_result(tasks[i]))
    results = get_results(queues, count)
    for thread in senders:
        thread.join(WAIT)
    assert not errors, errors

    assert sorted(result.task_info["seed"] for result in results.values()) == list(range(count))
    for result in results.values():
        expected = blob(size, result.task_info["seed"])
        assert result.args == (expected,)
        assert result.value == expected[::-1]


# ------------------------------------------------------------------ ProxyStore
@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[Store[Any]]:
    """A registered ProxyStore store that keeps objects in files."""
    connector = FileConnector(str(tmp_path / "proxystore"))
    with Store(f"conformance-{uuid.uuid4().hex[:8]}", connector, register=True) as store:
        yield store


def test_proxystore_threshold(make_queues: QueueFactory, file_store: Store[Any]) -> None:
    queues = make_queues(proxystore_name=file_store.name, proxystore_threshold=10_000)
    big, small = blob(1_000_000, 1), b"small"
    with serving(queues):
        big_id = queues.send_inputs(big, method="describe")
        small_id = queues.send_inputs(small, method="describe")
        value_id = queues.send_inputs(1_000_000, 2, method="blob", keep_inputs=False)
        results = get_results(queues, 3)

    by_proxy = results[big_id]
    assert by_proxy.message_sizes["inputs"] < 10_000
    assert by_proxy.value == {
        "proxy": True,
        "size": len(big),
        "digest": hashlib.sha256(big).hexdigest(),
    }
    direct = results[small_id]
    assert direct.value["proxy"] is False and direct.value["size"] == len(small)

    big_value = results[value_id]  # a large result travels back as a proxy too
    assert big_value.message_sizes["value"] < 10_000
    assert isinstance(big_value.value, Proxy)
    assert extract(big_value.value) == blob(1_000_000, 2)


def test_proxystore_settings_per_topic(make_queues: QueueFactory, file_store: Store[Any]) -> None:
    queues = make_queues(
        ["proxied", "no-store", "high-threshold"],
        proxystore_name={"proxied": file_store.name, "high-threshold": file_store.name},
        proxystore_threshold={"proxied": 10_000, "high-threshold": 10_000_000},
    )
    big = blob(1_000_000, 3)
    results: dict[str, Result | None] = {}
    with serving(queues):
        for topic in sorted(queues.topics):  # one at a time: a pipe's writer waits for its reader
            queues.send_inputs(big, method="describe", topic=topic)
            results[topic] = queues.get_result(topic, timeout=WAIT)

    for topic, result in results.items():
        assert result is not None and result.value["size"] == len(big)
        proxied = topic == "proxied"
        assert result.value["proxy"] is proxied, topic
        assert (result.message_sizes["inputs"] < 10_000) is proxied, topic


def test_proxystore_redis_store_across_processes(
    make_queues: QueueFactory, redis_server: tuple[str, int]
) -> None:
    from proxystore.connectors.redis import RedisConnector

    host, port = redis_server
    name = f"conformance-redis-{uuid.uuid4().hex[:8]}"
    with Store(name, RedisConnector(host, port), register=True) as store:
        queues = make_queues(proxystore_name=name, proxystore_threshold=10_000)
        queues.flush()
        big = blob(1_000_000, 4)
        with serving_in_child(queues):
            input_id = queues.send_inputs(big, method="describe")
            value_id = queues.send_inputs(1_000_000, 5, method="blob")
            results = get_results(queues, 2)

        # The child resolved a proxy that this process made...
        assert results[input_id].value["proxy"] is True
        assert results[input_id].value["digest"] == hashlib.sha256(big).hexdigest()
        assert results[input_id].message_sizes["inputs"] < 10_000
        # ...and this process resolves one that the child made.
        value = results[value_id].value
        assert isinstance(value, Proxy) and results[value_id].message_sizes["value"] < 10_000
        assert extract(value) == blob(1_000_000, 5)

        # Inputs are proxied with evict=False: remove them from the shared server
        for result in results.values():
            for arg in result.args:
                if isinstance(arg, Proxy):
                    store.evict(get_key(arg))
