"""Colmena 0.7's methods: wrappers, ``_resources``/``_result``, and generators streaming
intermediate results to a thinker on every transport."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxystore.connectors.file import FileConnector
from proxystore.proxy import Proxy
from proxystore.store import Store, unregister_store
from task_server_support import WAIT, Ranks, fake_mpi_launch
from test_queue_conformance import BACKENDS, release

from colmena_core.models import ExecutableTask, ResourceRequirements, Result
from colmena_core.models.methods import (
    ExecutableMethod,
    PythonGeneratorMethod,
    PythonMethod,
)
from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import LocalTaskServer
from colmena_core.task_server.base import convert_to_colmena_method
from colmena_core.testing.brokers import ThrowawayCampaign
from colmena_core.testing.task_servers import running_task_server
from colmena_core.thinker import BaseThinker, agent, result_processor


def add(x: int, y: int = 0) -> int:
    return x + y


def allocation(label: str, _resources: ResourceRequirements) -> str:
    return f"{label}: {_resources.node_count} nodes, {_resources.total_ranks} ranks"


def own_record(_result: Result) -> tuple[str, str | None, dict[str, Any]]:
    return _result.task_id, _result.method, _result.task_info


def count_up(n: int) -> Generator[int, None, int]:
    yield from range(n)
    return n * 10


class Echo(ExecutableMethod):
    def __init__(self) -> None:
        super().__init__(["echo"])

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        return [str(a) for a in args], None

    def postprocess(self, run_dir: Path) -> str:
        return (run_dir / "colmena.stdout").read_text().strip()


# ------------------------------------------------------------------ the wrappers
def test_convert_to_colmena_method_picks_the_wrapper() -> None:
    plain = convert_to_colmena_method(add)
    assert isinstance(plain, PythonMethod) and plain.name == plain.__name__ == "add"
    generator = convert_to_colmena_method(count_up)
    assert isinstance(generator, PythonGeneratorMethod) and generator.name == "count_up"
    echo = Echo()
    assert convert_to_colmena_method(echo) is echo
    assert echo.name == "echo" and isinstance(echo, ExecutableTask)
    assert PythonMethod(add, name="plus").__name__ == "plus"
    with pytest.raises(TypeError, match="callable"):
        convert_to_colmena_method(42)  # type: ignore[arg-type]


def test_calling_a_method_with_a_task_record_runs_it(run_dirs: Path) -> None:
    # Colmena 0.7: ``method(result)`` runs the task here and returns the record
    result = PythonMethod(add)(Result.from_args_and_kwargs([2], {"y": 3}, method="add"))
    result.deserialize()
    assert result.success and result.complete and result.value == 5
    assert result.time.running is not None and result.timestamp.compute_ended is not None

    echoed = Echo()(Result.from_args_and_kwargs(["hello", 7]))
    echoed.deserialize()
    assert echoed.success and echoed.value == "hello 7"


def test_generators_without_streaming_return_their_yields() -> None:
    listed = PythonGeneratorMethod(count_up)(Result(((3,), {})))
    listed.deserialize()
    assert listed.value == [0, 1, 2]
    request = Result(((3,), {}), serialization_method="pickle")
    with_return = PythonGeneratorMethod(count_up, store_return_value=True)(request)
    with_return.deserialize()
    assert with_return.value == ([0, 1, 2], 30)


def test_generator_called_here_streams_to_its_queue() -> None:
    queues = PipeQueues()
    method = PythonGeneratorMethod(count_up, store_return_value=True, streaming_queue=queues)
    final = method(Result(((3,), {}), method="count_up", topic="default"))
    final.deserialize()
    assert final.value == 30 and final.complete
    streamed = [queues.get_result(timeout=WAIT) for _ in range(3)]
    assert [(r.value, r.complete, r.task_id) for r in streamed if r] == [
        (i, False, final.task_id) for i in range(3)
    ]


def test_functions_get_resources_and_their_record_when_they_ask(tmp_path: Path) -> None:
    template, launcher_log = fake_mpi_launch(tmp_path, "-n {total_ranks}")
    queues = PipeQueues()
    methods: list[Callable[..., Any]] = [allocation, own_record, PythonMethod(allocation, "alloc")]
    methods.append(Ranks(template))
    with running_task_server(LocalTaskServer(queues, methods), queues, timeout=WAIT):
        for method in ("allocation", "alloc"):
            queues.send_inputs(
                "sim", method=method, resources={"node_count": 2, "cpu_processes": 3}
            )
        task_id = queues.send_inputs(method="own_record", task_info={"batch": 4})
        queues.send_inputs(method="ranks", resources={"node_count": 2, "cpu_processes": 4})
        results = {r.method: r for r in (queues.get_result(timeout=WAIT) for _ in range(4)) if r}
    assert results["allocation"].value == "sim: 2 nodes, 6 ranks"
    assert results["alloc"].value == "sim: 2 nodes, 6 ranks"
    assert results["own_record"].value == (task_id, "own_record", {"batch": 4})
    assert results["ranks"].success and results["ranks"].value == "done"
    assert launcher_log.read_text().splitlines()[:2] == ["-n", "8"]


# ------------------------------------------------- streaming on every transport
SECRET = "the secret of the streaming campaign"

QueuePair = Callable[[Collection[str]], tuple[ColmenaQueues, ColmenaQueues]]
"""``make_pair(topics)``: the queues of a thinker, and those of a task server that serves it."""


@pytest.fixture(params=["pipe", "redis", "redis-signed", "rabbitmq"])
def make_pair(request: pytest.FixtureRequest) -> Iterator[QueuePair]:
    """Queues of one transport (see ``test_queue_conformance``) for a thinker and a server.

    Pipes and Redis: one object (the server gets its copy when its process starts).
    RabbitMQ, and Redis with a campaign secret: a second object of the same campaign, as a
    separate task server would have.
    """
    created: list[ColmenaQueues] = []
    transport = request.param.removesuffix("-signed")
    with BACKENDS[transport](request) as build:

        def make(topics: Collection[str]) -> tuple[ColmenaQueues, ColmenaQueues]:
            if request.param == "redis-signed":
                client = build(topics, secret=SECRET)
                server = build(topics, secret=SECRET, prefix=client.prefix)  # type: ignore[attr-defined]
            else:
                client = build(topics)
                server = build(topics) if transport == "rabbitmq" else client
            created.extend({id(q): q for q in (client, server)}.values())
            return client, server

        try:
            yield make
        finally:
            release(created)


class Collector(BaseThinker):
    """Submits one generator task and records every result of it that arrives."""

    def __init__(self, queues: ColmenaQueues, steps: int) -> None:
        super().__init__(queues)
        self.steps = steps
        self.received: list[tuple[Any, bool | None]] = []
        self.final = threading.Event()

    @agent(startup=True)
    def submit(self) -> None:
        self.queues.send_inputs(self.steps, method="count_up", topic="stream")

    @result_processor(topic="stream")
    def record(self, result: Result) -> None:
        self.received.append((result.value, result.complete))
        if result.complete:
            self.final.set()
            self.done.set()


@pytest.mark.parametrize("threads", [True, False], ids=["threads", "processes"])
def test_generator_streams_each_yield_to_a_result_processor(
    make_pair: QueuePair, threads: bool
) -> None:
    queues, server_queues = make_pair(["stream"])
    method = PythonGeneratorMethod(count_up, store_return_value=True, streaming_queue=queues)
    server = LocalTaskServer(server_queues, [method], threads=threads, num_workers=1)
    with running_task_server(server, queues, timeout=WAIT):
        thinker = Collector(queues, 5)
        thinker.daemon = True  # a failing test must not keep the interpreter alive
        thinker.start()
        thinker.join(WAIT)
        assert not thinker.is_alive() and thinker.final.is_set()
    assert thinker.received == [(i, False) for i in range(5)] + [(50, True)]
    assert queues.active_count == 0


def streams_then_hangs_once(marker: str) -> Generator[int, None, str]:
    """Yields 1 and 2; the first run then hangs (its server is killed), later runs finish."""
    path = Path(marker)
    first_run = not path.exists()
    path.write_text("ran")
    yield 1
    yield 2
    if first_run:
        threading.Event().wait(WAIT)  # until the test kills this task server
        return "first run"
    return "second run"


def test_a_streaming_task_outlives_a_killed_rabbitmq_task_server(
    campaign: ThrowawayCampaign, tmp_path: Path
) -> None:
    # RabbitMQ: the request stays unacknowledged until the final result, so a task server
    # killed after some intermediate results leaves the task to the next one
    queues = campaign.queues(["stream"])
    method = PythonGeneratorMethod(streams_then_hangs_once, streaming_queue=queues)
    method.store_return_value = True
    first = LocalTaskServer(campaign.queues(["stream"]), [method], num_workers=1)
    first.start()
    try:
        task_id = queues.send_inputs(str(tmp_path / "marker"), method=method.name, topic="stream")
        early = [queues.get_result("stream", timeout=WAIT) for _ in range(2)]
        assert [(r.value, r.complete) for r in early if r] == [(1, False), (2, False)]
    finally:
        first.kill()
        first.join(WAIT)
    second = LocalTaskServer(campaign.queues(["stream"]), [method], num_workers=1)
    with running_task_server(second, queues, timeout=WAIT):
        later: list[Result] = []
        while not later or not later[-1].complete:
            result = queues.get_result("stream", timeout=WAIT)
            assert result is not None and result.task_id == task_id
            later.append(result)
    assert [(r.value, r.complete) for r in later] == [(1, False), (2, False), ("second run", True)]
    assert queues.active_count == 0


def test_resources_record_and_times_on_every_transport(make_pair: QueuePair) -> None:
    queues, server_queues = make_pair(["stream"])
    methods: list[Callable[..., Any]] = [allocation, own_record]
    with running_task_server(LocalTaskServer(server_queues, methods), queues, timeout=WAIT):
        queues.send_inputs(
            "sim",
            method="allocation",
            topic="stream",
            resources={"node_count": 4, "cpu_processes": 2},
        )
        allocated = queues.get_result("stream", timeout=WAIT)
        task_id = queues.send_inputs(method="own_record", topic="stream", task_info={"k": 1})
        record = queues.get_result("stream", timeout=WAIT)
    assert allocated is not None and allocated.value == "sim: 4 nodes, 8 ranks"
    assert record is not None and record.value == (task_id, "own_record", {"k": 1})
    # Colmena 0.7's views of the times, filled along the way
    assert allocated.time.running is not None and allocated.time.running >= 0
    stamps = allocated.timestamp
    assert stamps.created <= stamps.compute_started <= stamps.result_sent <= stamps.result_received


def blobs(*sizes: int) -> Generator[bytes, None, str]:
    for size in sizes:
        yield b"x" * size
    return "all sent"


def test_an_intermediate_result_too_large_is_a_failure_and_the_task_goes_on() -> None:
    queues = PipeQueues()
    queues.max_message_size = 20_000
    method = PythonGeneratorMethod(blobs, store_return_value=True, streaming_queue=queues)
    with running_task_server(LocalTaskServer(queues, [method]), queues, timeout=WAIT):
        task_id = queues.send_inputs(10, 50_000, 20, method="blobs")
        received = [queues.get_result(timeout=WAIT) for _ in range(4)]
    assert all(r is not None and r.task_id == task_id for r in received)
    small, large, after, final = (r for r in received if r)
    assert (small.success, small.complete, small.value) == (True, False, b"x" * 10)
    assert (large.success, large.complete, large.value) == (False, False, None)
    assert large.failure_info is not None and "20,000 bytes" in large.failure_info.exception
    assert (after.complete, after.value) == (False, b"x" * 20)
    assert (final.success, final.complete, final.value) == (True, True, "all sent")
    assert queues.active_count == 0


def test_large_intermediate_values_travel_by_proxy(tmp_path: Path) -> None:
    name = f"stream-{uuid.uuid4().hex[:8]}"
    with Store(name, FileConnector(str(tmp_path)), register=True) as store:
        try:
            queues = PipeQueues(proxystore_name=store.name, proxystore_threshold=10_000)
            method = PythonGeneratorMethod(blobs, streaming_queue=queues)
            with running_task_server(LocalTaskServer(queues, [method]), queues, timeout=WAIT):
                queues.send_inputs(100_000, 10, method="blobs")
                large, small, final = (queues.get_result(timeout=WAIT) for _ in range(3))
            assert large is not None and small is not None and final is not None
            assert large.message_sizes["value"] < 10_000  # only the proxy crossed the pipe
            assert isinstance(large.value, Proxy) and large.value == b"x" * 100_000
            assert small.value == b"x" * 10 and not isinstance(small.value, Proxy)
            assert final.complete and final.value is None
        finally:
            unregister_store(name)
