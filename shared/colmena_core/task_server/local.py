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
from colmena_core.task_server.base import FutureBasedTaskServer, as_served, execute_task
from colmena_core.task_server.signals import ignore_interrupts

__all__ = ["LocalTaskServer", "method_name"]

logger = logging.getLogger(__name__)


def method_name(function: Callable[..., Any]) -> str:
    """Name under which a function is served."""
    return str(getattr(function, "__name__", type(function).__name__.lower()))


class LocalTaskServer(FutureBasedTaskServer):
    """Task server that runs methods in a local pool of threads or processes.

    Colmena 0.7's signature, ``LocalTaskServer(queues, methods, threads=True,
    num_workers=None)``, and the earlier ``LocalTaskServer(methods, queues, num_workers,
    pool="process")`` both work: the server tells them apart by which argument holds the
    queues. The pool is of threads by default in the first form, of processes in the second.

    Args:
        queues: Queues for the task server
        methods: Functions or :class:`~colmena_core.models.methods.ColmenaMethod` objects to
            serve (callable objects such as ``ExecutableTask`` work too)
        threads: Run tasks in threads (``True``) or processes (``False``)
        num_workers: Size of the pool (default: number of CPUs)
        pool: ``"thread"`` or ``"process"``, another way to say ``threads``
        timeout: Stop after this many seconds without a new task
        max_retries: Re-run a failed task up to this often
    """

    def __init__(
        self,
        queues: ColmenaQueues | Sequence[Callable[..., Any]],
        methods: Sequence[Callable[..., Any]] | ColmenaQueues,
        threads: bool | None = None,
        num_workers: int | None = None,
        pool: Literal["process", "thread"] | None = None,
        timeout: float | None = None,
        max_retries: int = 0,
    ) -> None:
        default_pool: Literal["process", "thread"] = "thread"
        if not isinstance(queues, ColmenaQueues):
            if not isinstance(methods, ColmenaQueues):
                raise TypeError("LocalTaskServer needs the queues and the methods to serve")
            # The earlier order, (methods, queues, num_workers, ...): processes by default
            queues, methods = methods, queues
            default_pool = "process"
            if isinstance(threads, int) and not isinstance(threads, bool):
                threads, num_workers = None, threads if num_workers is None else num_workers
        if isinstance(methods, ColmenaQueues):
            raise TypeError("LocalTaskServer got two queues and no methods")
        if threads is not None:
            chosen: Literal["process", "thread"] = "thread" if threads else "process"
            if pool is not None and pool != chosen:
                raise ValueError(f"threads={threads} contradicts pool={pool!r}")
            pool = chosen
        pool = pool or default_pool
        if pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', not {pool!r}")
        served = [as_served(f) for f in methods]
        self.methods = {method_name(f): f for f in served}
        if len(self.methods) != len(served):
            raise ValueError("Two methods share a name")
        super().__init__(queues, self.methods.keys(), timeout, max_retries)
        self.num_workers = num_workers or os.cpu_count() or 1
        self.pool = pool
        self._executor: Executor | None = None

    @property
    def threads(self) -> bool:
        """Whether tasks run in threads of the server process."""
        return self.pool == "thread"

    def _setup(self) -> None:
        super()._setup()
        if self.pool == "process":
            self._executor = ProcessPoolExecutor(self.num_workers, initializer=ignore_interrupts)
        else:
            self._executor = ThreadPoolExecutor(self.num_workers)

    def _submit(self, task: Result, topic: str) -> Future[WorkerOutcome] | None:
        assert self._executor is not None, "the task server is not running"
        assert task.method is not None
        function = self.methods[task.method]
        return self._executor.submit(execute_task, function, self.worker_task(task, function))

    def _cleanup(self) -> None:
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        finally:
            super()._cleanup()
