"""The Globus Compute task server, with a local stand-in for the SDK's executor.

The cloud service is not reachable from tests, so the executor factory makes a thread pool
that records, in a file, which endpoint each task was sent to. The task server runs in its
own process as usual; the file is how the test sees inside it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from task_server_support import WAIT, assert_python_runs

from colmena_core.models.execution import WorkerTask
from colmena_core.queue import PipeQueues
from colmena_core.task_server import FuncXTaskServer, GlobusComputeTaskServer
from colmena_core.task_server.base import execute_packed_task
from colmena_core.testing.task_servers import running_task_server

CPU_ENDPOINT = "6e9a4f1c-0000-4000-8000-00000000c9c0"
GPU_ENDPOINT = "6e9a4f1c-0000-4000-8000-000000006900"


def simulate(x: float) -> float:
    return x + 1


def train(x: float) -> float:
    return x * 10


def fail() -> None:
    raise ValueError("endpoint-side failure")


class RecordingExecutor(ThreadPoolExecutor):
    """Stands in for ``globus_compute_sdk.Executor``: runs tasks locally and logs them."""

    def __init__(self, endpoint_id: str, log: Path) -> None:
        super().__init__(max_workers=2)
        self.endpoint_id = endpoint_id
        self.log = log
        self._write(f"open {endpoint_id}")

    def _write(self, line: str) -> None:
        with self.log.open("a") as stream:
            stream.write(line + "\n")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        function, task = args
        assert fn is execute_packed_task
        assert isinstance(WorkerTask.unpack(task), WorkerTask)  # a compact payload, not a Result
        self._write(f"submit {self.endpoint_id} {function.__name__}")
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        self._write(f"shutdown {self.endpoint_id}")


class RecordingFactory:
    """Picklable executor factory; runs in the task server process."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, endpoint_id: str) -> RecordingExecutor:
        return RecordingExecutor(endpoint_id, self.log)


@contextmanager
def running_server(
    methods: Mapping[Callable[..., Any], str],
    log: Path,
    server_class: type[GlobusComputeTaskServer] = GlobusComputeTaskServer,
) -> Iterator[PipeQueues]:
    """Start a task server; on exit, stop it and check that it exited cleanly."""
    queues = PipeQueues()
    server = server_class(methods, None, queues, executor_factory=RecordingFactory(log))
    with running_task_server(server, queues, timeout=WAIT):
        yield queues


def test_tasks_run_on_the_endpoint_of_their_function(tmp_path: Path) -> None:
    log = tmp_path / "executors.log"
    methods: dict[Callable[..., Any], str] = {
        simulate: CPU_ENDPOINT,
        train: GPU_ENDPOINT,
        fail: CPU_ENDPOINT,
    }
    with running_server(methods, log) as queues:
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

    lines = log.read_text().splitlines()
    opened = sorted(line.split()[1] for line in lines if line.startswith("open"))
    assert opened == sorted([CPU_ENDPOINT, GPU_ENDPOINT])  # one executor per endpoint
    submissions = [line.split()[1:] for line in lines if line.startswith("submit")]
    expected = {"simulate": CPU_ENDPOINT, "train": GPU_ENDPOINT, "fail": CPU_ENDPOINT}
    assert sorted(name for _, name in submissions) == ["fail", "simulate", "simulate", "train"]
    for endpoint, name in submissions:
        assert endpoint == expected[name]
    shut_down = sorted(line.split()[1] for line in lines if line.startswith("shutdown"))
    assert shut_down == opened


def test_funcx_name_keeps_the_original_signature(tmp_path: Path) -> None:
    log = tmp_path / "executors.log"
    with running_server({simulate: CPU_ENDPOINT}, log, FuncXTaskServer) as queues:
        queues.send_inputs(41)
        result = queues.get_result(timeout=WAIT)
    assert result is not None and result.value == 42
    funcx = importlib.import_module("colmena_core.task_server.funcx")
    assert funcx.FuncXTaskServer is FuncXTaskServer
    server = FuncXTaskServer(
        {simulate: CPU_ENDPOINT}, None, PipeQueues(), 5, 16, executor_factory=RecordingFactory(log)
    )
    assert (server.timeout, server.batch_size) == (5, 16)


def test_missing_sdk_gives_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "globus_compute_sdk", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install colmena-core\[globus\]"):
        GlobusComputeTaskServer({simulate: CPU_ENDPOINT}, None, PipeQueues())
    with pytest.raises(ImportError, match=r"pip install colmena-core\[globus\]"):
        FuncXTaskServer({simulate: CPU_ENDPOINT}, None, PipeQueues())
    # An injected executor needs no SDK
    GlobusComputeTaskServer(
        {simulate: CPU_ENDPOINT}, None, PipeQueues(), executor_factory=RecordingFactory(Path("x"))
    )


def test_modules_import_without_the_sdk() -> None:
    code = (
        "import sys; sys.modules['globus_compute_sdk'] = None\n"
        "from colmena_core.task_server import FuncXTaskServer, GlobusComputeTaskServer\n"
        "from colmena_core.task_server.funcx import FuncXTaskServer as Alias\n"
        "assert Alias is FuncXTaskServer and issubclass(Alias, GlobusComputeTaskServer)\n"
    )
    assert_python_runs(code)


def test_duplicate_method_names_are_rejected() -> None:
    other_simulate = type("Sim", (), {"__name__": "simulate", "__call__": lambda self: None})()
    with pytest.raises(ValueError, match="share the name"):
        GlobusComputeTaskServer(
            {simulate: CPU_ENDPOINT, other_simulate: GPU_ENDPOINT},
            None,
            PipeQueues(),
            executor_factory=RecordingFactory(Path("x")),
        )
