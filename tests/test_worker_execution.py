"""What a worker does with a task: run it, time it, and report values and failures."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxystore.connectors.file import FileConnector
from proxystore.proxy import Proxy
from proxystore.store import Store, unregister_store

from colmena_core.models import ResourceRequirements, Result
from colmena_core.models.execution import WorkerTask
from colmena_core.task_server.base import execute_task, run_and_record_timing


def add(x: int, y: int = 0) -> int:
    return x + y


def explode(x: int) -> int:
    raise ArithmeticError(f"cannot handle {x}")


def make_closure(x: int) -> Any:
    return lambda: x  # not picklable


def request(*args: Any, method: str = "pickle", **kwargs: Any) -> Result:
    result = Result((args, kwargs), serialization_method=method)
    result.serialize()
    return result


@pytest.mark.parametrize("method", ["pickle", "json"])
def test_value_and_timings(method: str) -> None:
    result = run_and_record_timing(add, request(2, method=method, y=3))
    assert result.success is True and result.failure_info is None
    assert result.value_serialized
    result.deserialize()
    assert result.value == 5
    assert result.args == (2,) and result.kwargs == {"y": 3}
    assert result.worker_info is not None and result.worker_info.hostname
    assert result.time_compute_started is not None and result.time_compute_ended is not None
    assert result.time_compute_started <= result.time_compute_ended
    for duration in (
        result.time_running,
        result.time_deserialize_inputs,
        result.time_serialize_results,
    ):
        assert duration is not None and duration >= 0
    assert result.message_sizes["value"] > 0


def test_failing_function_reports_exception_and_traceback() -> None:
    result = run_and_record_timing(explode, request(7))
    assert result.success is False
    assert result.failure_info is not None
    assert (
        "ArithmeticError" in result.failure_info.exception and "7" in result.failure_info.exception
    )
    assert result.failure_info.traceback and "explode" in result.failure_info.traceback
    assert result.value is None


def test_unpicklable_value_is_a_failure_with_a_clear_reason() -> None:
    result = run_and_record_timing(make_closure, request(1))
    assert result.success is False and result.failure_info is not None
    assert "Could not serialize the value" in result.failure_info.exception


def test_undecodable_inputs_are_a_failure() -> None:
    outcome = execute_task(add, WorkerTask(b"not a pickle", "pickle"))
    assert outcome.failure is not None and "Could not deserialize" in outcome.failure[0]


def test_inputs_dropped_when_not_kept() -> None:
    task = Result(((1,), {}), keep_inputs=False, serialization_method="pickle")
    task.serialize()
    result = run_and_record_timing(add, task)
    assert result.args == () and not result.inputs_serialized
    result.deserialize()
    assert result.value == 1


def test_worker_task_is_small_and_does_not_carry_the_result() -> None:
    task = request(1)
    payload = pickle.dumps(task.to_worker_task())
    assert len(payload) < len(pickle.dumps(task)) / 3


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store[Any]]:
    name = f"worker-{uuid.uuid4().hex[:8]}"
    with Store(name, FileConnector(str(tmp_path / "store")), register=True) as s:
        yield s
    unregister_store(name)


def test_large_value_travels_by_proxy(store: Store[Any]) -> None:
    task = Result(
        ((100_000,), {}),
        serialization_method="pickle",
        proxystore_name=store.name,
        proxystore_threshold=10_000,
        proxystore_config=store.config().model_dump(),
    )
    task.serialize()
    result = run_and_record_timing(lambda n: b"v" * n, task)
    assert result.success, result.failure_info
    assert result.message_sizes["value"] < 10_000
    result.deserialize()
    assert isinstance(result.value, Proxy)
    assert result.value == b"v" * 100_000


def test_small_value_with_a_store_is_pickled_once(store: Store[Any]) -> None:
    task = Result(
        ((10,), {}),
        serialization_method="pickle",
        proxystore_name=store.name,
        proxystore_threshold=10_000,
    )
    task.serialize()
    result = run_and_record_timing(lambda n: b"v" * n, task)
    result.deserialize()
    assert result.value == b"v" * 10 and not isinstance(result.value, Proxy)


def test_message_size_of_inputs_is_the_clients_even_when_inputs_are_dropped() -> None:
    from colmena_core.models.wire import decode_result, encode_result

    task = Result(((b"x" * 5000,), {}), keep_inputs=False, serialization_method="pickle")
    task.serialize()
    sent_size = task.message_sizes["inputs"]
    result = run_and_record_timing(len, decode_result(encode_result(task)))
    returned = decode_result(encode_result(result))
    assert returned.message_sizes["inputs"] == sent_size > 5000


def ranks(_resources: ResourceRequirements) -> int:
    return _resources.total_ranks


def describe(x: int, *, _result: Result, **kwargs: Any) -> str:
    return f"{_result.method} {_result.task_info['tag']} {x} {kwargs}"


def test_functions_that_declare_resources_get_those_of_the_task() -> None:
    task = request()
    task.resources = ResourceRequirements(node_count=3, cpu_processes=4)
    result = run_and_record_timing(ranks, task)
    result.deserialize()
    assert result.success and result.value == 12
    # Functions that do not declare it never see it, even with **kwargs
    kwargs_only = run_and_record_timing(lambda **k: sorted(k), request(a=1))
    kwargs_only.deserialize()
    assert kwargs_only.value == ["a"]


def test_functions_that_declare_result_get_the_task_record() -> None:
    task = Result(((5,), {"z": 1}), method="describe", task_info={"tag": "t1"})
    task.serialize()
    outcome = execute_task(describe, task.to_worker_task(request=True))
    assert outcome.failure is None
    assert json.loads(outcome.value or "") == "describe t1 5 {'z': 1}"


def test_parsl_worker_rank_and_pool_reach_worker_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARSL_WORKER_RANK", "3")
    monkeypatch.setenv("PARSL_WORKER_POOL_ID", "pool-7")
    result = run_and_record_timing(add, request(1))
    assert result.worker_info is not None
    assert result.worker_info.model_dump() == {
        "hostname": result.worker_info.hostname,
        "PARSL_WORKER_RANK": "3",
        "PARSL_WORKER_POOL_ID": "pool-7",
    }


def one_yield() -> Iterator[int]:
    yield 1


def test_a_worker_that_cannot_reach_the_relay_fails_saying_why() -> None:
    from multiprocessing.connection import Listener

    from colmena_core.models.methods import PythonGeneratorMethod
    from colmena_core.queue import PipeQueues

    # As a worker gets it: pickled, the queues left with the task server
    method = PythonGeneratorMethod(one_yield, streaming_queue=PipeQueues())
    method = pickle.loads(pickle.dumps(method))
    assert method.streams and method.streaming_queue is None
    task = Result(((), {}), method="one_yield", serialization_method="pickle")
    task.serialize()
    with Listener(("127.0.0.1", 0)) as listener:  # a port nothing listens on once closed
        address = listener.address
    outcome = execute_task(method, task.to_worker_task(request=True, stream_to=(address, b"k")))
    assert outcome.failure is not None and "relay_host" in outcome.failure[0]


@pytest.mark.parametrize("intruder", ["closes at once", "has the wrong key", "stays silent"])
def test_the_result_relay_outlives_a_connection_that_fails_to_authenticate(intruder: str) -> None:
    import socket
    import threading
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    from colmena_core.models.wire import encode_result
    from colmena_core.task_server.base import ResultRelay

    delivered: list[Result] = []
    arrived = threading.Event()

    def deliver(result: Result) -> None:
        delivered.append(result)
        arrived.set()

    relay = ResultRelay(deliver)
    try:
        silent = None
        if intruder == "closes at once":  # a port scan, a health probe
            socket.create_connection(relay.address, timeout=10).close()
        elif intruder == "stays silent":  # connected, never answering the challenge
            silent = socket.create_connection(relay.address, timeout=10)
        else:
            with pytest.raises(AuthenticationError):
                Client(relay.address, authkey=b"not the key")
        update = Result(((), {}), method="m", value=3, serialization_method="pickle")
        update.serialize()
        answered = threading.Event()

        def worker() -> None:  # a hung relay would leave it waiting: give it a thread
            with Client(relay.address, authkey=relay.key) as connection:
                connection.send_bytes(encode_result(update))
                connection.recv_bytes()
            answered.set()

        threading.Thread(target=worker, daemon=True).start()
        assert answered.wait(30), "the relay stopped taking workers"
        assert arrived.is_set() and delivered[0].task_id == update.task_id
        if silent is not None:
            silent.close()
    finally:
        relay.close()
