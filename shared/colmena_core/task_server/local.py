"""A task server on a local pool of processes or threads, for development and tests.

It needs no workflow engine: methods run in a :mod:`concurrent.futures` pool inside the
task server process. Use :class:`~colmena_core.task_server.parsl.ParslTaskServer` for HPC.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal

from colmena_core.models import Result
from colmena_core.models.execution import WorkerOutcome
from colmena_core.queue.base import ColmenaQueues
from colmena_core.task_server.base import FutureBasedTaskServer, execute_task

__all__ = ["LocalTaskServer", "method_name"]

logger = logging.getLogger(__name__)


def method_name(function: Callable[..., Any]) -> str:
    """Name under which a function is served."""
    return str(getattr(function, "__name__", type(function).__name__.lower()))


class LocalTaskServer(FutureBasedTaskServer):
    """Task server that runs methods in a local process or thread pool.

    Args:
        methods: Functions to serve (callable objects such as ``ExecutableTask`` work too)
        queues: Queues for the task server
        num_workers: Size of the pool (default: number of CPUs)
        pool: ``"process"`` (default) or ``"thread"``
        timeout: Stop after this many seconds without a new task
        max_retries: Re-run a failed task up to this often
    """

    def __init__(
        self,
        methods: Sequence[Callable[..., Any]],
        queues: ColmenaQueues,
        num_workers: int | None = None,
        pool: Literal["process", "thread"] = "process",
        timeout: float | None = None,
        max_retries: int = 0,
    ) -> None:
        self.methods = {method_name(f): f for f in methods}
        if len(self.methods) != len(methods):
            raise ValueError("Two methods share a name")
        if pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', not {pool!r}")
        super().__init__(queues, self.methods.keys(), timeout, max_retries)
        self.num_workers = num_workers or os.cpu_count() or 1
        self.pool = pool
        self._executor: Executor | None = None

    def _setup(self) -> None:
        super()._setup()
        if self.pool == "process":
            self._executor = ProcessPoolExecutor(self.num_workers)
        else:
            self._executor = ThreadPoolExecutor(self.num_workers)

    def _submit(self, task: Result, topic: str) -> Future[WorkerOutcome] | None:
        assert self._executor is not None, "the task server is not running"
        assert task.method is not None
        return self._executor.submit(execute_task, self.methods[task.method], task.to_worker_task())

    def _cleanup(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
