"""Run task servers in tests: start them, stop them cleanly, and never leave one behind.

A task server is a process of its own. A test that fails half-way must not leave it running
(it would take the tasks of the next test, or keep the test run from ending), and a test that
passes should show that the server stopped cleanly when told to. Every wait has a timeout.

Example::

    queues = PipeQueues()
    with running_task_server(LocalTaskServer([simulate], queues), queues):
        queues.send_inputs(1.5, method="simulate")
        [result] = receive_results(queues, 1)
        assert_no_more_results(queues)

Failed checks raise :class:`AssertionError`, as ``assert`` statements would (they do not go
away under ``python -O``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from colmena_core.exceptions import TimeoutException

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from colmena_core.models import Result
    from colmena_core.queue.base import ColmenaQueues
    from colmena_core.task_server.local import LocalTaskServer

__all__ = [
    "DEFAULT_TIMEOUT",
    "LocalServerStarter",
    "assert_no_more_results",
    "kill_if_running",
    "local_task_servers_for_pytest",
    "receive_results",
    "running_task_server",
    "stop_task_servers",
]

DEFAULT_TIMEOUT = 60.0
"""Longest wait, in seconds, for a result or for a task server to stop."""

ProcessT = TypeVar("ProcessT", bound="BaseProcess")

LocalServerStarter = Callable[..., "LocalTaskServer"]
"""Type of the function of :func:`local_task_servers_for_pytest`:
``start(queues, methods, **options)`` starts a :class:`LocalTaskServer` and returns it."""


def stop_task_servers(
    queues: ColmenaQueues, *servers: BaseProcess, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Send the kill signal and check that every server stops cleanly.

    Args:
        queues: Client side of the queues, through which the kill signal goes
        servers: Task servers (or other processes that stop on the kill signal)
        timeout: Seconds to wait for each server
    Raises:
        AssertionError: a server did not exit with status 0 in time
    """
    queues.send_kill_signal()
    for server in servers:
        server.join(timeout)
        if server.exitcode != 0:
            raise AssertionError(f"task server {server.name} exited with {server.exitcode}")


def kill_if_running(*processes: BaseProcess, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Kill (SIGKILL) those of the processes that still run and wait for them to end."""
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout)


@contextmanager
def running_task_server(
    server: ProcessT, queues: ColmenaQueues, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[ProcessT]:
    """Start a task server for the ``with`` block, then check that it stops cleanly.

    At the end of the block the server gets the kill signal and must exit with status 0
    (see :func:`stop_task_servers`). If the block raises, or the server does not stop in
    time, it is killed.

    Args:
        server: Task server (or other process that stops on the kill signal), not started yet
        queues: Client side of the server's queues
        timeout: Seconds to wait for the server to stop
    """
    server.start()
    try:
        yield server
        stop_task_servers(queues, server, timeout=timeout)
    finally:
        kill_if_running(server, timeout=timeout)


def receive_results(
    queues: ColmenaQueues, count: int, topic: str = "default", timeout: float = DEFAULT_TIMEOUT
) -> list[Result]:
    """Receive ``count`` results of one topic, each within ``timeout`` seconds.

    Raises:
        TimeoutException: a result did not arrive in time
    """
    results = []
    for _ in range(count):
        result = queues.get_result(topic, timeout=timeout)
        if result is None:
            raise AssertionError(f"no result on topic {topic!r}")
        results.append(result)
    return results


def assert_no_more_results(
    queues: ColmenaQueues, topic: str = "default", wait: float = 0.5
) -> None:
    """Check that no result of ``topic`` arrives within ``wait`` seconds.

    Raises:
        AssertionError: a result arrived
    """
    try:
        result = queues.get_result(topic, timeout=wait)
    except TimeoutException:
        return
    task_id = None if result is None else result.task_id
    raise AssertionError(f"unexpected result on topic {topic!r}: task {task_id}")


def local_task_servers_for_pytest(
    timeout: float = DEFAULT_TIMEOUT, **defaults: Any
) -> Iterator[LocalServerStarter]:
    """Body of a pytest fixture that yields a function starting :class:`LocalTaskServer` processes.

    The function is ``start(queues, methods, **options)``: the options, over ``defaults``, are
    those of :class:`LocalTaskServer`. Every server it started that still runs at the end is
    killed.
    """
    from colmena_core.task_server.local import LocalTaskServer

    started: list[LocalTaskServer] = []

    def start(
        queues: ColmenaQueues, methods: Sequence[Callable[..., Any]], **options: Any
    ) -> LocalTaskServer:
        server = LocalTaskServer(methods, queues, **{**defaults, **options})
        server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        kill_if_running(*started, timeout=timeout)
