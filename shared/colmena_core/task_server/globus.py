"""A task server that runs methods on remote Globus Compute endpoints.

Globus Compute (formerly FuncX, whose cloud service is retired) runs Python functions on
"endpoints" reached through a cloud service, so the task server needs no direct network
path to the compute resources. Each method is mapped to the endpoint that runs it; the
task server opens one :class:`globus_compute_sdk.Executor` per endpoint inside its own
process.

The SDK is an optional dependency (``pip install colmena-core[globus]``). This module
imports it only when the task server starts without an ``executor_factory``, so it can be
imported, and tested with a stand-in executor, without the SDK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any

from colmena_core.models import Result
from colmena_core.queue.base import ColmenaQueues
from colmena_core.task_server.base import FutureBasedTaskServer, execute_packed_task
from colmena_core.task_server.local import method_name

__all__ = ["ExecutorFactory", "FuncXTaskServer", "GlobusComputeTaskServer"]

logger = logging.getLogger(__name__)

ExecutorFactory = Callable[[str], Executor]
"""Makes the executor that submits tasks to one endpoint, given the endpoint's ID."""

_INSTALL_HINT = (
    "The Globus Compute task server needs the Globus Compute SDK: "
    "install it with `pip install colmena-core[globus]`, or pass an executor_factory"
)


def _sdk_executor_class() -> type[Executor]:
    """The SDK's executor class, or an ImportError that says how to install it."""
    try:
        from globus_compute_sdk import Executor as GlobusComputeExecutor
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    executor_class: type[Executor] = GlobusComputeExecutor
    return executor_class


class GlobusComputeTaskServer(FutureBasedTaskServer):
    """Task server that runs tasks on remote systems through Globus Compute.

    Give it a mapping of each function to the ID of the endpoint that runs it, and an
    authenticated Globus Compute client. When the server process starts, it opens one
    executor per endpoint; each task runs on its function's endpoint, wrapped in
    :func:`~colmena_core.task_server.base.execute_packed_task`, and a callback on its
    future sends the result back. The executors are shut down when the server stops.

    The SDK sends ``execute_packed_task`` and the methods by reference where it can, so
    ``colmena-core`` and the modules of the methods must be importable on the endpoints.
    Globus Compute limits the size of task inputs and results; send large objects by
    ProxyStore proxies (see :mod:`colmena_core.proxy`).

    Args:
        methods: Map of each function to the endpoint on which it runs
        funcx_client: Authenticated ``globus_compute_sdk.Client`` (``None`` lets the SDK
            make one, which may start a login flow)
        queues: Queues used to communicate with the thinker
        timeout: Stop after this many seconds without a new task (``None``: never)
        batch_size: Maximum number of task requests the executor groups into one submission
        max_retries: Re-run a failed task up to this often unless the task says otherwise
        executor_factory: Makes the executor for an endpoint ID; by default a
            ``globus_compute_sdk.Executor`` using ``funcx_client`` and ``batch_size``.
            It runs in the server process, so it must be picklable if processes are spawned
    Raises:
        ImportError: no ``executor_factory`` was given and the SDK is not installed
    """

    shutdown_timeout: float = 60.0
    """Seconds to wait for the executors to shut down when the server stops"""

    def __init__(
        self,
        methods: Mapping[Callable[..., Any], str],
        funcx_client: Any,
        queues: ColmenaQueues,
        timeout: float | None = None,
        batch_size: int = 128,
        max_retries: int = 0,
        executor_factory: ExecutorFactory | None = None,
    ) -> None:
        self.methods: dict[str, Callable[..., Any]] = {}
        self.endpoints: dict[str, str] = {}
        for function, endpoint in methods.items():
            name = method_name(function)
            if name in self.methods:
                raise ValueError(f"Two methods share the name {name!r}")
            self.methods[name] = function
            self.endpoints[name] = str(endpoint)
        if executor_factory is None:
            _sdk_executor_class()  # fail now, in the user's process, not in the server
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        super().__init__(queues, self.methods.keys(), timeout, max_retries)
        self.funcx_client = funcx_client
        self.batch_size = batch_size
        self.executor_factory = executor_factory
        self._executors: dict[str, Executor] = {}

    def _make_executor(self, endpoint_id: str) -> Executor:
        if self.executor_factory is not None:
            return self.executor_factory(endpoint_id)
        executor_class = _sdk_executor_class()
        executor: Executor = executor_class(  # type: ignore[call-arg]
            endpoint_id=endpoint_id, client=self.funcx_client, batch_size=self.batch_size
        )
        return executor

    def _setup(self) -> None:
        super()._setup()
        for endpoint in sorted(set(self.endpoints.values())):
            self._executors[endpoint] = self._make_executor(endpoint)
        logger.info("Opened executors for %d Globus Compute endpoints", len(self._executors))

    def _submit(self, task: Result, topic: str) -> Future[bytes] | None:
        assert task.method is not None
        executor = self._executors.get(self.endpoints[task.method])
        if executor is None:
            raise RuntimeError("the task server is not running")
        return executor.submit(
            execute_packed_task, self.methods[task.method], task.to_worker_task().pack()
        )

    def _cleanup(self) -> None:
        executors, self._executors = list(self._executors.items()), {}

        def shutdown_all() -> None:
            for endpoint, executor in executors:
                try:
                    executor.shutdown(wait=True, cancel_futures=True)
                except Exception:
                    logger.exception("Could not shut down the executor of endpoint %s", endpoint)

        # A lost connection to the cloud service must not keep the server from exiting
        stopper = threading.Thread(target=shutdown_all, name="globus-compute-shutdown", daemon=True)
        stopper.start()
        stopper.join(self.shutdown_timeout)
        if stopper.is_alive():
            logger.error(
                "Globus Compute executors did not shut down within %s s", self.shutdown_timeout
            )
        super()._cleanup()


class FuncXTaskServer(GlobusComputeTaskServer):
    """Task server that uses Globus Compute (formerly FuncX) to run tasks on remote systems.

    The name and signature of the original Colmena task server; it runs on the Globus
    Compute SDK's executor. See :class:`GlobusComputeTaskServer`.

    Args:
        methods: Map of functions to the endpoint on which each runs
        funcx_client: Authenticated Globus Compute client
        queues: Queues used to communicate with the thinker
        timeout: Timeout for requests from the task queue
        batch_size: Maximum number of task requests to group before submitting
        max_retries: Re-run a failed task up to this often
        executor_factory: Makes the executor for an endpoint ID (default: the SDK's)
    """

    def __init__(
        self,
        methods: Mapping[Callable[..., Any], str],
        funcx_client: Any,
        queues: ColmenaQueues,
        timeout: float | None = None,
        batch_size: int = 128,
        *,
        max_retries: int = 0,
        executor_factory: ExecutorFactory | None = None,
    ) -> None:
        super().__init__(
            methods,
            funcx_client,
            queues,
            timeout=timeout,
            batch_size=batch_size,
            max_retries=max_retries,
            executor_factory=executor_factory,
        )
