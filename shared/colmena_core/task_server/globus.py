"""A task server that runs methods on remote Globus Compute endpoints.

Globus Compute (formerly FuncX, whose cloud service is retired) runs Python functions on
"endpoints" reached through a cloud service, so the task server needs no direct network
path to the compute resources. Each method is mapped to the endpoint that runs it; the
task server opens one :class:`globus_compute_sdk.Executor` per endpoint inside its own
process.

The SDK is an optional dependency (``pip install colmena-core[globus]``). This module
imports it only when a task server is created, so it can be imported without the SDK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from colmena_core.models import Result
from colmena_core.queue.base import ColmenaQueues
from colmena_core.task_server.base import (
    FutureBasedTaskServer,
    as_served,
    execute_packed_task,
)
from colmena_core.task_server.local import method_name

__all__ = ["ExecutorFactory", "FuncXTaskServer", "GlobusComputeTaskServer", "RegisteredMethod"]

logger = logging.getLogger(__name__)

ExecutorFactory = Callable[[str], Any]
"""Makes the executor that submits tasks to one endpoint, given the endpoint's ID."""

_INSTALL_HINT = (
    "The Globus Compute task server needs the Globus Compute SDK: "
    "install it with `pip install colmena-core[globus]`"
)


_LOST_MANAGER = "Task failure due to loss of manager"
"""How Globus Compute describes a task lost with the manager that ran it."""


def _sdk() -> Any:
    """The Globus Compute SDK, or an ImportError that says how to install it."""
    try:
        import globus_compute_sdk
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return globus_compute_sdk


class RegisteredMethod:
    """What the task server registers with Globus Compute for one method.

    Called on the endpoint with a packed :class:`~colmena_core.models.execution.WorkerTask`
    (keyword ``task``), it runs the method with
    :func:`~colmena_core.task_server.base.execute_packed_task` and returns the packed
    outcome.
    """

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.__name__ = name
        self.__doc__ = function.__doc__

    def __call__(self, task: bytes) -> bytes:
        return execute_packed_task(self.function, task)


class GlobusComputeTaskServer(FutureBasedTaskServer):
    """Task server that runs tasks on remote systems through Globus Compute.

    Give it a mapping of each function to the ID of the endpoint that runs it, and an
    authenticated Globus Compute client. The server registers each method with the client
    (``register_function``) when it is created. When the server process starts, it opens
    one ``globus_compute_sdk.Executor`` per endpoint, built from that client; each task is
    submitted to its method's registered function
    (``submit_to_registered_function(function_id, kwargs=...)``) on its endpoint's
    executor, and a callback on the future sends the result back. The executors are shut
    down when the server stops.

    Each method runs wrapped in
    :func:`~colmena_core.task_server.base.execute_packed_task`, so ``colmena-core`` and
    the modules of the methods must be importable on the endpoints. Functions that declare
    ``_resources`` get the task's resource requirements there (an MPI
    :class:`~colmena_core.models.ExecutableTask` launches with the requested ranks).
    Globus Compute limits the size of task inputs and results; send large objects by
    ProxyStore proxies (see :mod:`colmena_core.proxy`). Methods that stream intermediate
    results reach this server at :attr:`relay_host`, which the endpoints must be able to
    connect to.

    Args:
        methods: Map of each function to the endpoint on which it runs
        funcx_client: Authenticated ``globus_compute_sdk.Client`` (``None`` lets the SDK
            make one, which may start a login flow)
        queues: Queues used to communicate with the thinker
        timeout: Stop after this many seconds without a new task (``None``: never)
        batch_size: Maximum number of task requests the executor groups into one submission
        max_retries: Re-run a failed task up to this often unless the task says otherwise
        executor_factory: Makes the executor for an endpoint ID, in place of the SDK's
            ``Executor(endpoint_id=..., client=funcx_client, batch_size=...)``; it must offer
            ``submit_to_registered_function`` and ``shutdown``. It runs in the server
            process, so it must be picklable if processes are spawned
    Raises:
        ImportError: the SDK is not installed and no client and factory were given
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
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if executor_factory is None or funcx_client is None:
            sdk = _sdk()  # fail now, in the user's process, not in the server
            if funcx_client is None:
                funcx_client = sdk.Client()
        self.methods: dict[str, Callable[..., Any]] = {}
        self.endpoints: dict[str, str] = {}
        self.registered_funcs: dict[str, tuple[str, str]] = {}
        """Name of each method -> its function ID at Globus Compute, and its endpoint"""
        for function, endpoint in methods.items():
            function = as_served(function)
            name = method_name(function)
            if name in self.methods:
                raise ValueError(f"Two methods share the name {name!r}")
            function_id = str(funcx_client.register_function(RegisteredMethod(function, name)))
            logger.info("Registered method %s with Globus Compute as %s", name, function_id)
            self.methods[name] = function
            self.endpoints[name] = str(endpoint)
            self.registered_funcs[name] = (function_id, str(endpoint))
        super().__init__(queues, self.methods.keys(), timeout, max_retries)
        self.funcx_client = funcx_client
        self.batch_size = batch_size
        self.executor_factory = executor_factory
        self._executors: dict[str, Any] = {}

    def _make_executor(self, endpoint_id: str) -> Any:
        if self.executor_factory is not None:
            return self.executor_factory(endpoint_id)
        return _sdk().Executor(
            endpoint_id=endpoint_id, client=self.funcx_client, batch_size=self.batch_size
        )

    def _setup(self) -> None:
        super()._setup()
        for endpoint in sorted(set(self.endpoints.values())):
            self._executors[endpoint] = self._make_executor(endpoint)
        logger.info("Opened executors for %d Globus Compute endpoints", len(self._executors))

    def _submit(self, task: Result, topic: str) -> Future[bytes] | None:
        assert task.method is not None
        function_id, endpoint = self.registered_funcs[task.method]
        executor = self._executors.get(endpoint)
        if executor is None:
            raise RuntimeError("the task server is not running")
        packed = self.worker_task(task, self.methods[task.method]).pack()
        future: Future[bytes] = executor.submit_to_registered_function(
            function_id, kwargs={"task": packed}
        )
        return future

    def perform_callback(self, future: Future[Any], result: Result, topic: str) -> None:
        """Send the result back; a task lost with its endpoint's manager is submitted again.

        Globus Compute reports a task whose manager (the endpoint's node agent) was lost as
        failed, through no fault of the task: it runs again without counting as a retry.
        """
        error = future.exception()
        if error is not None and _LOST_MANAGER in str(error):
            logger.info("Task %s was lost with its manager: submitting it again", result.task_id)
            self.process_queue(topic, result)
            return
        super().perform_callback(future, result, topic)

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
