"""Methods, tasks and checks shared by the tests of the task servers and executable tasks.

Methods are module-level so that Parsl workers in other processes can import them by name
(the tests that need it put this folder on the workers' ``PYTHONPATH``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shlex
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from colmena_core.models import ExecutableTask, ResourceRequirements, Result
from colmena_core.queue import PipeQueues
from colmena_core.task_server.base import BaseTaskServer
from colmena_core.testing.task_servers import kill_if_running

WAIT = 60.0
"""Longest wait for any result or for the server to stop, in seconds."""

_started: Any = None
_gate: Any = None
"""Process-shared events for the kill-signal test, inherited by the forked task server."""


# ----------------------------------------------------------------------------- methods
def square(x: float) -> float:
    return x * x


def process_id() -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def unpicklable() -> threading.Lock:
    return threading.Lock()


def fails_first_time(counter: str) -> int:
    path = Path(counter)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls == 1:
        raise RuntimeError("first call fails")
    return calls


def countdown(n: int) -> Generator[int, None, int]:
    """A generator method: yields n, n-1, ..., 1 and returns how many it yielded."""
    yield from range(n, 0, -1)
    return n


def allocation(_resources: ResourceRequirements) -> tuple[int, int]:
    """The nodes and ranks a task asked for (functions that declare ``_resources`` get them)."""
    return _resources.node_count, _resources.total_ranks


def blocks_until_released(value: int) -> int:
    _started.set()
    if not _gate.wait(WAIT):
        raise TimeoutError("the test never released the task")
    return value


class Crasher(ExecutableTask):
    """An executable that writes ``message`` to stderr and exits with ``status``."""

    def __init__(self, message: str = "simulation diverged at step 42", status: int = 3) -> None:
        super().__init__(["/bin/sh", "-c", f"echo {shlex.quote(message)} >&2; exit {status}"])

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        return [], None

    def postprocess(self, run_dir: Path) -> None:
        raise AssertionError("postprocess must not run after a failed execution")


class Ranks(ExecutableTask):
    """An "MPI" task that prints ``done``, started by the launch template given."""

    def __init__(self, template: str) -> None:
        super().__init__(["/bin/sh", "-c", "echo done"], mpi=True, mpi_command_string=template)

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        return [], None

    def postprocess(self, run_dir: Path) -> str:
        return (run_dir / "colmena.stdout").read_text().strip()


def fake_mpi_launch(directory: Path, options: str) -> tuple[str, Path]:
    """An MPI launch template whose launcher is a script that records its arguments.

    The fake ``mpiexec`` writes its arguments, one per line, to a file, drops the launcher
    options and runs the rest.

    Args:
        directory: Where the script and the file of arguments go
        options: Launcher options of the template (e.g. ``-n {total_ranks}``)
    Returns:
        The template, and the file where the launcher records its arguments
    """
    launcher = directory / "fake-mpiexec"
    log = directory / "launcher-arguments"
    launcher.write_text(
        "#!/bin/sh\n"
        'log="$1"; shift\n'
        'printf \'%s\\n\' "$@" > "$log"\n'
        f"shift {len(options.split())}\n"
        'exec "$@"\n'
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return f"{shlex.quote(str(launcher))} {shlex.quote(str(log))} {options}", log


# ----------------------------------------------------------------------------- checks
def run(queues: PipeQueues, *args: Any, method: str, **options: Any) -> Result:
    """Send one task and wait for its result."""
    queues.send_inputs(*args, method=method, **options)
    result = queues.get_result(timeout=WAIT)
    assert result is not None
    return result


def assert_timings_ordered(result: Result) -> None:
    times = [
        result.time_created,
        result.time_input_received,
        result.time_compute_started,
        result.time_compute_ended,
        result.time_result_sent,
        result.time_result_received,
    ]
    assert all(t is not None for t in times), times
    assert times == sorted(times), times  # type: ignore[type-var]


def check_kill_signal_lets_in_flight_tasks_finish(
    make_server: Callable[[PipeQueues], BaseTaskServer],
) -> None:
    """A task running when the kill signal comes still sends its result; then the server stops.

    Args:
        make_server: Makes a task server serving :func:`blocks_until_released` on the queues
    """
    global _started, _gate
    if mp.get_start_method() != "fork":
        pytest.skip("the events reach the task server by fork")
    _started, _gate = mp.Event(), mp.Event()
    queues = PipeQueues()
    server = make_server(queues)
    server.start()
    try:
        queues.send_inputs(7, method="blocks_until_released")
        assert _started.wait(WAIT), "the task never started"
        queues.send_kill_signal()
        _gate.set()
        result = queues.get_result(timeout=WAIT)
        server.join(WAIT)
        assert result is not None and result.success and result.value == 7
        assert server.exitcode == 0
    finally:
        kill_if_running(server, timeout=WAIT)


def assert_python_runs(code: str) -> None:
    """Run ``code`` in a fresh interpreter; it must exit with status 0."""
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert process.returncode == 0, process.stderr
