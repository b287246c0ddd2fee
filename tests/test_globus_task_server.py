"""The Globus Compute task server, on a local stand-in for the Globus Compute cloud service.

The cloud service is not reachable from tests, so a stand-in for the SDK's module
(``globus_compute_sdk``: ``Client`` and ``Executor``) is installed: the client keeps the
functions registered with it, and each executor runs the tasks submitted to a registered
function in a local thread pool, recording in a file which endpoint each went to. The
task server runs in its own process as usual (forked, so it inherits the stand-in); the
file is how the test sees inside it.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import types
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from task_server_support import WAIT, Ranks, assert_python_runs, fake_mpi_launch

from colmena_core.models import ResourceRequirements
from colmena_core.models.execution import WorkerTask
from colmena_core.models.methods import PythonGeneratorMethod
from colmena_core.queue import PipeQueues
from colmena_core.task_server import FuncXTaskServer, GlobusComputeTaskServer
from colmena_core.task_server.globus import RegisteredMethod
from colmena_core.testing.task_servers import running_task_server

CPU_ENDPOINT = "6e9a4f1c-0000-4000-8000-00000000c9c0"
GPU_ENDPOINT = "6e9a4f1c-0000-4000-8000-000000006900"


def simulate(x: float) -> float:
    return x + 1


def train(x: float) -> float:
    return x * 10


def fail() -> None:
    raise ValueError("endpoint-side failure")


def allocation(_resources: ResourceRequirements) -> tuple[int, int]:
    return _resources.node_count, _resources.total_ranks


def steps(n: int) -> Generator[int, None, int]:
    yield from (i * i for i in range(n))
    return n


# ------------------------------------------------------------ the cloud service stand-in
class FakeClient:
    """Stands in for ``globus_compute_sdk.Client``: keeps registered functions (pickled)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.functions: dict[str, bytes] = {}
        self.lose_manager_once: set[str] = set()
        """Names of functions whose first task the service loses with its manager"""

    def register_function(self, function: Callable[..., Any]) -> str:
        function_id = str(uuid.uuid4())
        self.functions[function_id] = pickle.dumps(function)  # the service stores a copy
        _write(self.log, f"register {function.__name__} {function_id}")
        return function_id


class FakeExecutor:
    """Stands in for ``globus_compute_sdk.Executor``: runs registered functions locally."""

    def __init__(self, endpoint_id: str, client: FakeClient, batch_size: int = 128) -> None:
        self.endpoint_id = endpoint_id
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=2)
        _write(client.log, f"open {endpoint_id} {batch_size}")

    def submit_to_registered_function(
        self,
        function_id: str,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Future[Any]:
        function = pickle.loads(self.client.functions[function_id])  # as an endpoint would
        packed = (kwargs or {})["task"]
        assert isinstance(WorkerTask.unpack(packed), WorkerTask)  # compact, not a Result
        _write(self.client.log, f"submit {self.endpoint_id} {function.__name__}")
        if function.__name__ in self.client.lose_manager_once:
            self.client.lose_manager_once.discard(function.__name__)
            lost: Future[Any] = Future()
            lost.set_exception(RuntimeError("Task failure due to loss of manager 4f2a on ep"))
            return lost
        return self.pool.submit(function, *(args or ()), **(kwargs or {}))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        _write(self.client.log, f"shutdown {self.endpoint_id}")


def _write(log: Path, line: str) -> None:
    with log.open("a") as stream:
        stream.write(line + "\n")


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeClient:
    """A client of the stand-in service, whose SDK module replaces the real one."""
    sdk = types.ModuleType("globus_compute_sdk")
    sdk.Client = FakeClient  # type: ignore[attr-defined]
    sdk.Executor = FakeExecutor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "globus_compute_sdk", sdk)
    return FakeClient(tmp_path / "cloud.log")


@contextmanager
def running_server(
    methods: Mapping[Callable[..., Any], str],
    client: FakeClient,
    server_class: type[GlobusComputeTaskServer] = GlobusComputeTaskServer,
    queues: PipeQueues | None = None,
) -> Iterator[PipeQueues]:
    """Start a task server; on exit, stop it and check that it exited cleanly."""
    queues = queues or PipeQueues()
    server = server_class(methods, client, queues)
    with running_task_server(server, queues, timeout=WAIT):
        yield queues


def log_lines(client: FakeClient, kind: str) -> list[list[str]]:
    return [
        line.split()[1:] for line in client.log.read_text().splitlines() if line.startswith(kind)
    ]


def test_methods_are_registered_and_tasks_run_on_their_endpoint(cloud: FakeClient) -> None:
    methods: dict[Callable[..., Any], str] = {
        simulate: CPU_ENDPOINT,
        train: GPU_ENDPOINT,
        fail: CPU_ENDPOINT,
    }
    server_queues = PipeQueues()
    server = GlobusComputeTaskServer(methods, cloud, server_queues, batch_size=16)
    # Registered when created, in the user's process, as the documentation says
    registered = {name: function_id for name, function_id in log_lines(cloud, "register")}
    assert sorted(registered) == ["fail", "simulate", "train"]
    assert {n: f for n, (f, _) in server.registered_funcs.items()} == registered

    with running_server(methods, cloud, queues=server_queues) as queues:
        sent = {
            queues.send_inputs(1, method="simulate"): "simulate",
            queues.send_inputs(2, method="train"): "train",
            queues.send_inputs(3, method="simulate"): "simulate",
        }
        results = [queues.get_result(timeout=WAIT) for _ in sent]
        queues.send_inputs(method="fail")
        failed = queues.get_result(timeout=WAIT)

    values = {r.task_id: r.value for r in results if r is not None}
    assert sorted(values.values()) == [2, 4, 20]
    assert all(r is not None and r.worker_info is not None for r in results)

    assert failed is not None and failed.success is False and failed.failure_info is not None
    assert "endpoint-side failure" in failed.failure_info.exception

    opened = sorted(endpoint for endpoint, _ in log_lines(cloud, "open"))
    assert opened == sorted([CPU_ENDPOINT, GPU_ENDPOINT])  # one executor per endpoint
    submissions = log_lines(cloud, "submit")
    expected = {"simulate": CPU_ENDPOINT, "train": GPU_ENDPOINT, "fail": CPU_ENDPOINT}
    assert sorted(name for _, name in submissions) == ["fail", "simulate", "simulate", "train"]
    for endpoint, name in submissions:
        assert endpoint == expected[name]
    shut_down = sorted(endpoint for (endpoint,) in log_lines(cloud, "shutdown"))
    assert shut_down == opened


def test_funcx_name_keeps_the_original_signature(cloud: FakeClient) -> None:
    with running_server({simulate: CPU_ENDPOINT}, cloud, FuncXTaskServer) as queues:
        queues.send_inputs(41)
        result = queues.get_result(timeout=WAIT)
    assert result is not None and result.value == 42
    funcx = importlib.import_module("colmena_core.task_server.funcx")
    assert funcx.FuncXTaskServer is FuncXTaskServer
    server = FuncXTaskServer({simulate: CPU_ENDPOINT}, cloud, PipeQueues(), 5, 16)
    assert (server.timeout, server.batch_size) == (5, 16)


def test_functions_get_the_resources_the_task_asks_for(cloud: FakeClient, tmp_path: Path) -> None:
    template, launcher_log = fake_mpi_launch(tmp_path, "-n {total_ranks} -N {node_count}")
    methods: dict[Callable[..., Any], str] = {
        allocation: CPU_ENDPOINT,
        Ranks(template): GPU_ENDPOINT,
    }
    with running_server(methods, cloud) as queues:
        queues.send_inputs(method="allocation", resources={"node_count": 2, "cpu_processes": 4})
        allocated = queues.get_result(timeout=WAIT)
        queues.send_inputs(method="ranks", resources={"node_count": 3, "cpu_processes": 2})
        launched = queues.get_result(timeout=WAIT)
    assert allocated is not None and allocated.value == (2, 8)
    assert launched is not None and launched.success, launched and launched.failure_info
    assert launched.value == "done"
    assert launcher_log.read_text().splitlines()[:4] == ["-n", "6", "-N", "3"]  # 3 nodes x 2


def test_generator_streams_intermediate_results_from_the_endpoint(cloud: FakeClient) -> None:
    queues = PipeQueues()
    method = PythonGeneratorMethod(steps, store_return_value=True, streaming_queue=queues)
    with running_server({method: CPU_ENDPOINT}, cloud, queues=queues):
        task_id = queues.send_inputs(4, method="steps")
        received = [queues.get_result(timeout=WAIT) for _ in range(5)]
    assert all(r is not None and r.task_id == task_id for r in received)
    assert [r.complete for r in received if r] == [False] * 4 + [True]
    assert [r.value for r in received if r] == [0, 1, 4, 9, 4]


def test_a_task_lost_with_its_manager_runs_again(cloud: FakeClient) -> None:
    cloud.lose_manager_once.add("simulate")
    with running_server({simulate: CPU_ENDPOINT}, cloud) as queues:
        queues.send_inputs(1, method="simulate")
        result = queues.get_result(timeout=WAIT)
    assert result is not None and result.success and result.value == 2
    assert result.retries == 0  # not the task's fault: no retry used
    assert [name for _, name in log_lines(cloud, "submit")] == ["simulate", "simulate"]


def test_registered_method_runs_a_packed_task() -> None:
    registered = RegisteredMethod(simulate, "simulate")
    assert registered.__name__ == "simulate"
    copy = pickle.loads(pickle.dumps(registered))
    from colmena_core.models import Result
    from colmena_core.models.execution import WorkerOutcome

    request = Result(((1,), {}), serialization_method="pickle")
    outcome = WorkerOutcome.unpack(copy(task=request.to_worker_task().pack()))
    assert outcome.failure is None and pickle.loads(outcome.value or b"") == 2


def test_missing_sdk_gives_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "globus_compute_sdk", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install colmena-core\[globus\]"):
        GlobusComputeTaskServer({simulate: CPU_ENDPOINT}, None, PipeQueues())
    with pytest.raises(ImportError, match=r"pip install colmena-core\[globus\]"):
        FuncXTaskServer({simulate: CPU_ENDPOINT}, None, PipeQueues())


def test_modules_import_without_the_sdk() -> None:
    code = (
        "import sys; sys.modules['globus_compute_sdk'] = None\n"
        "from colmena_core.task_server import FuncXTaskServer, GlobusComputeTaskServer\n"
        "from colmena_core.task_server.funcx import FuncXTaskServer as Alias\n"
        "assert Alias is FuncXTaskServer and issubclass(Alias, GlobusComputeTaskServer)\n"
    )
    assert_python_runs(code)


def test_duplicate_method_names_are_rejected(cloud: FakeClient) -> None:
    other_simulate = type("Sim", (), {"__name__": "simulate", "__call__": lambda self: None})()
    with pytest.raises(ValueError, match="share the name"):
        GlobusComputeTaskServer(
            {simulate: CPU_ENDPOINT, other_simulate: GPU_ENDPOINT}, cloud, PipeQueues()
        )
