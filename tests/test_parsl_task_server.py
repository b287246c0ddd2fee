"""The Parsl task server: functions, executable tasks and their failures, through real queues.

Most tests use Parsl's ThreadPoolExecutor, which starts in milliseconds. One test runs a
HighThroughputExecutor with two worker processes, as on an HPC system. Methods are
module-level (here and in ``task_server_support``) so that Parsl workers in other processes
can import them.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider
from task_server_support import (
    WAIT,
    Crasher,
    Ranks,
    allocation,
    assert_python_runs,
    assert_timings_ordered,
    blocks_until_released,
    check_kill_signal_lets_in_flight_tasks_finish,
    countdown,
    fail,
    fails_first_time,
    fake_mpi_launch,
    process_id,
    run,
    square,
    unpicklable,
)

from colmena_core.models import ExecutableTask, Result
from colmena_core.models.methods import ExecutableMethod, PythonGeneratorMethod, PythonMethod
from colmena_core.queue import PipeQueues
from colmena_core.task_server.parsl import MethodSpec, ParslTaskServer
from colmena_core.testing.task_servers import running_task_server


# ----------------------------------------------------------------------------- methods
def thread_name() -> str:
    return threading.current_thread().name


class Doubler(ExecutableTask):
    """Runs a Python one-liner that doubles its argument and reads a JSON option file."""

    def __init__(self) -> None:
        code = (
            "import json, sys; "
            "scale = json.load(open('options.json'))['scale']; "
            "extra = int(sys.stdin.read() or 0); "
            "print(int(sys.argv[1]) * 2 * scale + extra)"
        )
        super().__init__([sys.executable, "-c", code])

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        (run_dir / "options.json").write_text(json.dumps({"scale": kwargs.get("scale", 1)}))
        return [str(args[0])], str(kwargs.get("extra", 0))

    def postprocess(self, run_dir: Path) -> int:
        return int((run_dir / "colmena.stdout").read_text())


class BadInputs(ExecutableTask):
    """Preprocessing rejects its inputs."""

    def __init__(self) -> None:
        super().__init__(["/bin/true"])

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        raise ValueError(f"cannot simulate {args[0]!r}")

    def postprocess(self, run_dir: Path) -> None:
        raise AssertionError("postprocess must not run")


# ----------------------------------------------------------------------------- helpers
def thread_config(run_dir: Path, labels: Sequence[str] = ("threads",)) -> Config:
    executors = [
        ThreadPoolExecutor(label=label, max_threads=2, thread_name_prefix=f"pool-{label}")
        for label in labels
    ]
    return Config(executors=executors, run_dir=str(run_dir), strategy="none")


@contextmanager
def running_server(
    methods: Sequence[MethodSpec], config: Config, queues: PipeQueues | None = None, **options: Any
) -> Iterator[tuple[PipeQueues, ParslTaskServer]]:
    """Start a task server; on exit, stop it and check that it exited cleanly."""
    queues = queues or PipeQueues()
    server = ParslTaskServer(methods, queues, config, **options)
    with running_task_server(server, queues, timeout=WAIT):
        yield queues, server


# ----------------------------------------------------------------------------- functions
def test_function_result_worker_info_and_timings(tmp_path: Path) -> None:
    with running_server([square], thread_config(tmp_path)) as (queues, _):
        result = run(queues, 4, method="square")
    assert result.success, result.failure_info
    assert result.value == 16
    assert result.args == (4,)
    assert result.worker_info is not None and result.worker_info.hostname
    assert result.time_running is not None and result.time_running >= 0
    assert result.time_serialize_results is not None
    assert result.time_start_task_submission is not None and result.time_task_received is not None
    assert_timings_ordered(result)


def test_keep_inputs_false_drops_inputs(tmp_path: Path) -> None:
    with running_server([square], thread_config(tmp_path)) as (queues, _):
        result = run(queues, 5, method="square", keep_inputs=False)
    assert result.success and result.value == 25
    assert result.args == () and result.kwargs == {}


def test_options_and_default_executors(tmp_path: Path) -> None:
    config = thread_config(tmp_path, labels=("a", "b"))
    methods: list[MethodSpec] = [thread_name, (process_id, {"executors": ["b"]})]
    with running_server(methods, config, default_executors="a") as (queues, server):
        assert server.app_options["thread_name"]["executors"] == ["a"]
        assert server.app_options["process_id"]["executors"] == ["b"]
        names = {run(queues, method="thread_name").value for _ in range(3)}
        pid = run(queues, method="process_id").value
    assert names and all(name.startswith("pool-a") for name in names), names
    assert pid == server.pid  # a thread pool runs inside the task server process


def test_executor_shorthand_and_unknown_labels(tmp_path: Path) -> None:
    config = thread_config(tmp_path, labels=("a", "b"))
    server = ParslTaskServer([(square, {"executor": "b"})], PipeQueues(), config)
    assert server.app_options["square"]["executors"] == ["b"]
    with pytest.raises(ValueError, match="missing"):
        ParslTaskServer([(square, {"executors": ["gpu"]})], PipeQueues(), config)
    with pytest.raises(ValueError, match="missing"):
        ParslTaskServer([square], PipeQueues(), config, default_executors="gpu")
    with pytest.raises(ValueError, match="share the name"):
        ParslTaskServer([square, (square, {})], PipeQueues(), config)


def test_unknown_method_fails_with_its_name(tmp_path: Path) -> None:
    with running_server([square], thread_config(tmp_path)) as (queues, _):
        result = run(queues, 1, method="no_such_method")
    assert result.success is False
    assert result.failure_info is not None
    assert "no_such_method" in result.failure_info.exception
    assert "square" in result.failure_info.exception  # lists what is available


def test_failing_function_reports_exception_and_traceback(tmp_path: Path) -> None:
    with running_server([fail, square], thread_config(tmp_path)) as (queues, _):
        result = run(queues, "the reactor melted", method="fail")
        after = run(queues, 3, method="square")
    assert result.success is False and result.failure_info is not None
    assert "ValueError" in result.failure_info.exception
    assert "the reactor melted" in result.failure_info.exception
    assert result.failure_info.traceback is not None and "in fail" in result.failure_info.traceback
    assert after.success and after.value == 9  # the server keeps going


def test_unpicklable_value_fails_with_reason(tmp_path: Path) -> None:
    with running_server([unpicklable], thread_config(tmp_path)) as (queues, _):
        result = run(queues, method="unpicklable")
    assert result.success is False and result.failure_info is not None
    assert "Could not serialize the value" in result.failure_info.exception
    assert "lock" in result.failure_info.exception
    assert result.value is None


def test_retries_rerun_a_failed_task(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    with running_server([fails_first_time], thread_config(tmp_path), max_retries=1) as (queues, _):
        result = run(queues, str(counter), method="fails_first_time")
    assert result.success, result.failure_info
    assert result.value == 2 and result.retries == 1
    assert result.failure_info is None  # nothing left over from the failed attempt
    assert counter.read_text() == "2"


def test_no_retries_by_default(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    with running_server([fails_first_time], thread_config(tmp_path)) as (queues, _):
        result = run(queues, str(counter), method="fails_first_time")
    assert result.success is False and result.retries == 0
    assert counter.read_text() == "1"


def test_kill_signal_lets_in_flight_tasks_finish(tmp_path: Path) -> None:
    check_kill_signal_lets_in_flight_tasks_finish(
        lambda queues: ParslTaskServer([blocks_until_released], queues, thread_config(tmp_path))
    )


def hang_forever(self: DataFlowKernel) -> None:
    threading.Event().wait(10 * WAIT)


def test_hung_parsl_shutdown_does_not_keep_the_server_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DataFlowKernel, "cleanup", hang_forever)  # inherited by the fork
    with running_server([square], thread_config(tmp_path), cleanup_timeout=0.5) as (queues, _):
        assert run(queues, 2, method="square").value == 4


# ----------------------------------------------------------------------------- executables
def test_executable_task_runs_the_three_steps(tmp_path: Path, run_dirs: Path) -> None:
    with running_server([Doubler()], thread_config(tmp_path)) as (queues, _):
        result = run(queues, 21, method="doubler", input_kwargs={"scale": 10, "extra": 3})
    assert result.success, result.failure_info
    assert result.value == 21 * 2 * 10 + 3
    assert result.args == (21,) and result.kwargs == {"scale": 10, "extra": 3}
    timing = result.additional_timing
    assert {"exec_preprocess", "exec_execution", "exec_postprocess"} <= set(timing)
    assert all(timing[k] >= 0 for k in ("exec_preprocess", "exec_execution", "exec_postprocess"))
    assert result.time_running == pytest.approx(sum(timing.values()))
    assert result.worker_info is not None and result.worker_info.hostname
    assert_timings_ordered(result)
    assert list(run_dirs.iterdir()) == []  # run directory removed


def test_executable_task_without_inputs_returned(tmp_path: Path, run_dirs: Path) -> None:
    with running_server([Doubler()], thread_config(tmp_path)) as (queues, _):
        result = run(queues, 2, method="doubler", keep_inputs=False)
    assert result.success and result.value == 4
    assert result.args == () and result.kwargs == {}


def test_failing_executable_reports_its_stderr(tmp_path: Path, run_dirs: Path) -> None:
    with running_server([Crasher()], thread_config(tmp_path)) as (queues, _):
        result = run(queues, method="crasher", max_retries=1)
    assert result.success is False and result.failure_info is not None
    assert result.retries == 1  # the whole chain ran again, and one result came back
    assert "ExecutableFailed" in result.failure_info.exception
    assert "status 3" in result.failure_info.exception
    assert "simulation diverged at step 42" in result.failure_info.exception
    assert "exec_execution" in result.additional_timing
    assert_timings_ordered(result)
    assert list(run_dirs.iterdir()) == []


def test_failing_preprocess_ends_the_chain(tmp_path: Path, run_dirs: Path) -> None:
    with running_server([BadInputs()], thread_config(tmp_path)) as (queues, _):
        result = run(queues, "granite", method="badinputs")
    assert result.success is False and result.failure_info is not None
    assert "cannot simulate 'granite'" in result.failure_info.exception
    assert "exec_preprocess" in result.additional_timing
    assert "exec_execution" not in result.additional_timing
    assert result.args == ("granite",)  # inputs returned as requested
    assert list(run_dirs.iterdir()) == []


def test_mpi_launch_rendered_from_resources(tmp_path: Path, run_dirs: Path) -> None:
    template, log = fake_mpi_launch(tmp_path, "-n {total_ranks} --nodes {node_count}")
    with running_server([Ranks(template)], thread_config(tmp_path)) as (queues, _):
        result = run(queues, method="ranks", resources={"node_count": 2, "cpu_processes": 3})
    assert result.success, result.failure_info
    assert result.value == "done"
    assert log.read_text().splitlines() == ["-n", "6", "--nodes", "2", "/bin/sh", "-c", "echo done"]


class Greeter(ExecutableMethod):
    """Colmena 0.7's spelling of an executable task, named after its executable."""

    def __init__(self) -> None:
        super().__init__(["echo", "hello"])

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        return [str(args[0])], None

    def postprocess(self, run_dir: Path) -> str:
        return (run_dir / "colmena.stdout").read_text().strip()


def test_colmena_07_methods(tmp_path: Path, run_dirs: Path) -> None:
    methods: list[MethodSpec] = [
        Greeter(),
        (PythonMethod(square, name="sq"), {"executors": ["threads"]}),
        countdown,  # a plain generator function: its value is the list of its yields
    ]
    with running_server(methods, thread_config(tmp_path)) as (queues, _):
        greeted = run(queues, "world", method="echo")
        squared = run(queues, 7, method="sq")
        listed = run(queues, 3, method="countdown")
    assert greeted.success and greeted.value == "hello world"
    assert {"exec_preprocess", "exec_execution", "exec_postprocess"} <= set(greeted.time.additional)
    assert squared.value == 49 and listed.value == [3, 2, 1]


def test_executable_task_pickles(tmp_path: Path) -> None:
    # Tasks travel to HTEX workers by pickle: an ExecutableTask must survive it
    task = pickle.loads(pickle.dumps(Doubler()))
    assert task.__name__ == "doubler"


def test_package_imports_without_parsl() -> None:
    code = (
        "import sys; sys.modules['parsl'] = None\n"
        "import colmena_core.task_server as servers\n"
        "assert servers.LocalTaskServer.__name__ == 'LocalTaskServer'\n"
        "try:\n"
        "    servers.ParslTaskServer\n"
        "except ImportError as error:\n"
        "    assert 'colmena-core[parsl]' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('ParslTaskServer imported without Parsl')\n"
    )
    assert_python_runs(code)


# ----------------------------------------------------------------------------- HTEX
def htex_config(run_dir: Path) -> Config:
    executor = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        max_workers_per_node=2,
        provider=LocalProvider(init_blocks=1, max_blocks=1, min_blocks=0),
    )
    # Blocks start at the first strategy poll: poll often so the workers come up quickly
    return Config(executors=[executor], run_dir=str(run_dir), strategy="none", strategy_period=0.5)


def test_high_throughput_executor_end_to_end(
    tmp_path: Path, run_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The executor starts its interchange and workers from the environment's bin/, and the
    # workers import the methods of this folder's modules by name
    monkeypatch.setenv(
        "PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    )
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))

    counter = tmp_path / "calls"
    queues = PipeQueues()
    methods: list[Callable[..., Any] | ExecutableTask] = [
        square,
        process_id,
        fail,
        unpicklable,
        fails_first_time,
        Doubler(),
        Crasher(),
        allocation,
        PythonGeneratorMethod(countdown, store_return_value=True, streaming_queue=queues),
    ]
    with running_server(methods, htex_config(tmp_path), queues) as (queues, server):
        # A generator streams its yields from the worker before its task ends
        stream_id = queues.send_inputs(3, method="countdown")
        streamed = [queues.get_result(timeout=WAIT) for _ in range(4)]
        queues.send_inputs(method="allocation", resources={"node_count": 2, "cpu_processes": 8})
        queues.send_inputs(6, method="square")
        queues.send_inputs(method="process_id")
        queues.send_inputs("bad", method="fail")
        queues.send_inputs(method="unpicklable")
        queues.send_inputs(str(counter), method="fails_first_time", max_retries=2)
        queues.send_inputs(5, method="doubler", input_kwargs={"scale": 3})
        queues.send_inputs(method="crasher")
        results: dict[str, Result] = {}
        for _ in range(8):
            result = queues.get_result(timeout=WAIT)
            assert result is not None
            results[str(result.method)] = result

    assert [(r.value, r.complete, r.task_id) for r in streamed if r] == [
        (3, False, stream_id),
        (2, False, stream_id),
        (1, False, stream_id),
        (3, True, stream_id),
    ]
    assert results["allocation"].value == (2, 16)
    assert results["square"].value == 36
    assert_timings_ordered(results["square"])
    worker_info = results["square"].worker_info
    assert worker_info is not None and worker_info.model_dump().keys() >= {
        "hostname",
        "PARSL_WORKER_RANK",
        "PARSL_WORKER_POOL_ID",
    }
    worker_pid = results["process_id"].value
    assert isinstance(worker_pid, int) and worker_pid not in (os.getpid(), server.pid)
    assert (
        results["fail"].failure_info is not None and "bad" in results["fail"].failure_info.exception
    )
    assert results["unpicklable"].failure_info is not None
    assert "Could not serialize" in results["unpicklable"].failure_info.exception
    assert results["fails_first_time"].success and results["fails_first_time"].retries == 1
    doubled = results["doubler"]
    assert doubled.success, doubled.failure_info
    assert doubled.value == 30 and doubled.args == (5,)
    assert {"exec_preprocess", "exec_execution", "exec_postprocess"} <= set(
        doubled.additional_timing
    )
    assert_timings_ordered(doubled)
    crashed = results["crasher"]
    assert crashed.success is False and crashed.failure_info is not None
    assert "simulation diverged at step 42" in crashed.failure_info.exception
    assert list(run_dirs.iterdir()) == []
