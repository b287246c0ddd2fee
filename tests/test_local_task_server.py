"""The local task server: process and thread pools, failures, retries and the kill signal."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
from task_server_support import (
    WAIT,
    assert_timings_ordered,
    blocks_until_released,
    check_kill_signal_lets_in_flight_tasks_finish,
    fail,
    fails_first_time,
    process_id,
    run,
    square,
    unpicklable,
)

from colmena_core.models.methods import PythonMethod
from colmena_core.queue import PipeQueues
from colmena_core.task_server import LocalTaskServer
from colmena_core.testing.task_servers import running_task_server


@contextmanager
def running_server(
    methods: Sequence[Callable[..., Any]], pool: Literal["process", "thread"], **options: Any
) -> Iterator[tuple[PipeQueues, LocalTaskServer]]:
    """Start a task server; on exit, stop it and check that it exited cleanly."""
    queues = PipeQueues()
    server = LocalTaskServer(methods, queues, num_workers=2, pool=pool, **options)
    with running_task_server(server, queues, timeout=WAIT):
        yield queues, server


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_results_come_back(pool: Literal["process", "thread"]) -> None:
    with running_server([square, process_id], pool) as (queues, server):
        result = run(queues, 3, method="square")
        pid = run(queues, method="process_id").value
    assert result.success and result.value == 9 and result.args == (3,)
    assert result.worker_info is not None and result.worker_info.hostname
    assert_timings_ordered(result)
    assert (pid != server.pid) if pool == "process" else (pid == server.pid)


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_failures_are_reported(pool: Literal["process", "thread"]) -> None:
    with running_server([fail, unpicklable, square], pool) as (queues, _):
        failed = run(queues, "no convergence", method="fail")
        unsendable = run(queues, method="unpicklable")
        unknown = run(queues, method="no_such_method")
        still_fine = run(queues, 2, method="square")
    assert failed.success is False and failed.failure_info is not None
    assert "no convergence" in failed.failure_info.exception
    assert failed.failure_info.traceback is not None and "in fail" in failed.failure_info.traceback
    assert unsendable.success is False and unsendable.failure_info is not None
    assert "Could not serialize" in unsendable.failure_info.exception
    assert unknown.success is False and unknown.failure_info is not None
    assert "no_such_method" in unknown.failure_info.exception
    assert still_fine.value == 4


def test_method_may_be_omitted_when_only_one_is_served() -> None:
    with running_server([square], "thread") as (queues, _):
        queues.send_inputs(5)
        result = queues.get_result(timeout=WAIT)
    assert result is not None and result.value == 25 and result.method == "square"


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_retries(pool: Literal["process", "thread"], tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    with running_server([fails_first_time], pool) as (queues, _):
        result = run(queues, str(counter), method="fails_first_time", max_retries=1)
    assert result.success and result.value == 2 and result.retries == 1
    assert result.failure_info is None  # nothing left over from the failed attempt


def test_server_wide_retries(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    with running_server([fails_first_time], "thread", max_retries=2) as (queues, _):
        result = run(queues, str(counter), method="fails_first_time")
    assert result.success and result.retries == 1


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="share a name"):
        LocalTaskServer([square, square], PipeQueues())
    with pytest.raises(ValueError, match="pool"):
        LocalTaskServer([square], PipeQueues(), pool="gpu")  # type: ignore[arg-type]


def test_colmena_07_signature() -> None:
    queues = PipeQueues()
    server = LocalTaskServer(queues, [square, PythonMethod(square, name="sq")])
    assert server.threads and server.pool == "thread" and server.queues is queues
    assert sorted(server.method_names) == ["sq", "square"]
    assert LocalTaskServer(queues, [square], False, 3).pool == "process"
    assert LocalTaskServer(queues, [square], threads=False, num_workers=3).num_workers == 3
    # The earlier order still works: methods first, processes by default
    earlier = LocalTaskServer([square], queues, 2)
    assert (earlier.pool, earlier.num_workers) == ("process", 2)
    with pytest.raises(ValueError, match="contradicts"):
        LocalTaskServer(queues, [square], threads=True, pool="process")
    with pytest.raises(TypeError, match="queues"):
        LocalTaskServer([square], [square])  # type: ignore[arg-type]
    with running_task_server(
        LocalTaskServer(queues, [square], num_workers=1), queues, timeout=WAIT
    ):
        assert run(queues, 4, method="square").value == 16


def test_kill_signal_lets_in_flight_tasks_finish() -> None:
    check_kill_signal_lets_in_flight_tasks_finish(
        lambda queues: LocalTaskServer(
            [blocks_until_released], queues, num_workers=1, pool="thread"
        )
    )


def test_timeout_stops_an_idle_server() -> None:
    queues = PipeQueues()
    server = LocalTaskServer([square], queues, pool="thread", timeout=0.2)
    server.start()
    server.join(WAIT)
    assert server.exitcode == 0
