"""Base classes for task servers: read requests, run them, send results back.

A task server is a process that takes task requests from its queues, hands them to an
execution engine, and returns exactly one result per request: the value, or a failure with
its reason (unknown method, failing function, unpicklable value, lost worker). It stops on
the kill signal after its in-flight tasks finish. Engines live in the sibling modules.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from concurrent.futures import Future
from functools import partial
from multiprocessing import Process
from time import perf_counter
from typing import Any

from colmena_core.exceptions import KillSignalException, TimeoutException
from colmena_core.models import FailureInformation, Result, SerializationMethod
from colmena_core.models.execution import WorkerOutcome, WorkerTask
from colmena_core.models.results import MAX_RETRIES, resolve_store, serialize_value
from colmena_core.proxy import resolve_proxies_async, store_proxy_stats
from colmena_core.queue.base import ColmenaQueues, QueueRole

__all__ = [
    "BaseTaskServer",
    "FutureBasedTaskServer",
    "execute_packed_task",
    "execute_task",
    "run_and_record_timing",
]

logger = logging.getLogger(__name__)


class UnknownMethodError(LookupError):
    """A task asked for a method this task server does not serve."""


class BaseTaskServer(Process, ABC):
    """Abstract task server: a process that executes tasks from its queues.

    Implementations provide :meth:`process_queue`, which starts one task and arranges for
    its result to be sent with ``self.queues.send_result``; tasks must be wrapped in
    :func:`run_and_record_timing` to capture their timings. They may override
    :meth:`_setup` (runs in the server process before the first task), :meth:`_wait_for_tasks`
    (blocks until in-flight tasks are done) and :meth:`_cleanup` (releases resources).

    Args:
        queues: Queues for the task server
        method_names: Names of the methods this server runs
        timeout: Stop after this many seconds without a new task (``None``: never)
        max_retries: Re-run a failed task up to this often unless the task says otherwise
    """

    def __init__(
        self,
        queues: ColmenaQueues,
        method_names: Collection[str],
        timeout: float | None = None,
        max_retries: int = 0,
    ) -> None:
        if not 0 <= max_retries <= MAX_RETRIES:
            raise ValueError(f"max_retries must be between 0 and {MAX_RETRIES}, not {max_retries}")
        super().__init__(daemon=False, name=type(self).__name__)
        self.queues = queues
        self.method_names = set(method_names)
        self.timeout = timeout
        self.max_retries = max_retries

    # ------------------------------------------------------------ extension
    @abstractmethod
    def process_queue(self, topic: str, task: Result) -> None:
        """Execute a single task from the task queue.

        Args:
            topic: Which task queue this result came from
            task: Task description
        """

    def _setup(self) -> None:
        """Prepare the execution engine; runs inside the server process."""

    def _wait_for_tasks(self) -> None:
        """Block until every task already started has sent its result."""

    def _cleanup(self) -> None:
        """Release the resources reserved by the task server."""

    # ------------------------------------------------------------ main loop
    def resolve_method(self, task: Result) -> str:
        """Name of the method that will run ``task``.

        Raises:
            UnknownMethodError: the task names no method this server serves
        """
        if task.method is None:
            if len(self.method_names) == 1:
                return next(iter(self.method_names))
            raise UnknownMethodError(
                f"The task names no method and this server serves several: {sorted(self.method_names)}"
            )
        if task.method not in self.method_names:
            raise UnknownMethodError(
                f"Method {task.method!r} is not served here; available methods: {sorted(self.method_names)}"
            )
        return task.method

    def send_failure(self, task: Result, exc: BaseException) -> None:
        """Return ``task`` to its client as a failure caused by ``exc``."""
        task.set_failure(exc)
        self.queues.send_result(task)

    _STOP_POLL = 0.25
    """Seconds between checks of a stop request while no task arrives."""

    def request_stop(self) -> None:
        """Stop taking new tasks; in-flight tasks finish and their results are sent.

        Safe to call from a signal handler or another thread of the server process.
        """
        self._stop_requested.set()

    def _local_event(self, name: str) -> threading.Event:
        # Made on first use, in the process that runs the server: events do not pickle
        event: threading.Event | None = self.__dict__.get(name)
        if event is None:
            event = self.__dict__.setdefault(name, threading.Event())
        return event

    @property
    def _stop_requested(self) -> threading.Event:
        return self._local_event("_stop_event")

    @property
    def ready(self) -> threading.Event:
        """Set once the engine is prepared and the server takes tasks (in its own process)."""
        return self._local_event("_ready_event")

    def listen_and_launch(self) -> None:
        """Take tasks from the queue and launch them until the kill signal, a stop request,
        or ``timeout`` seconds without a task."""
        logger.info("Task server listening for tasks (methods: %s)", sorted(self.method_names))
        idle_since = time.monotonic()
        while not self._stop_requested.is_set():
            wait = self._STOP_POLL
            if self.timeout is not None:
                wait = min(wait, max(0.0, self.timeout - (time.monotonic() - idle_since)))
            try:
                topic, task = self.queues.get_task(wait)
            except KillSignalException:
                logger.info("Kill signal received; finishing in-flight tasks")
                return
            except TimeoutException:
                if self.timeout is not None and time.monotonic() - idle_since >= self.timeout:
                    logger.info("No task arrived within %s s; stopping", self.timeout)
                    return
                continue
            idle_since = time.monotonic()
            try:
                task.method = self.resolve_method(task)
            except UnknownMethodError as exc:
                logger.warning("%s", exc)
                self.send_failure(task, exc)
                continue
            if task.max_retries == 0 and self.max_retries:
                task.max_retries = self.max_retries
            try:
                self.process_queue(topic, task)
            except Exception as exc:
                logger.exception("Could not launch task %s", task.task_id)
                self.send_failure(task, exc)
        logger.info("Stop requested; finishing in-flight tasks")

    def run(self) -> None:
        """Serve tasks until the kill signal, then finish in-flight tasks and clean up."""
        self.queues.set_role(QueueRole.SERVER)
        self.queues.prepare_server(self.method_names)
        self._setup()
        self.ready.set()
        try:
            self.listen_and_launch()
            self._wait_for_tasks()
        finally:
            self._cleanup()
        logger.info("Task server stopped")


class FutureBasedTaskServer(BaseTaskServer, ABC):
    """Base class for engines that return :class:`concurrent.futures.Future` objects.

    Implementations provide :meth:`_submit`; this class attaches a callback that sends the
    result (or the failure) back, re-runs failed tasks that allow retries, and waits for
    in-flight futures before stopping.
    """

    def __init__(
        self,
        queues: ColmenaQueues,
        method_names: Collection[str],
        timeout: float | None = None,
        max_retries: int = 0,
    ) -> None:
        super().__init__(queues, method_names, timeout, max_retries)

    @abstractmethod
    def _submit(self, task: Result, topic: str) -> Future[Any] | None:
        """Start a task; return its future, or ``None`` if the task reports by itself.

        The future's value is a :class:`Result`, a :class:`WorkerOutcome`, or a packed
        outcome (bytes).
        """

    def _setup(self) -> None:
        super()._setup()
        self._in_flight: set[Future[Any]] = set()
        self._in_flight_changed = threading.Condition()

    @property
    def in_flight(self) -> int:
        """Number of tasks submitted to the engine whose result was not sent yet."""
        with self._in_flight_changed:
            return len(self._in_flight)

    def process_queue(self, topic: str, task: Result) -> None:
        """Submit a task and send its result back when its future completes."""
        task.mark_start_task_submission()
        future = self._submit(task, topic)
        if future is None:
            return
        with self._in_flight_changed:
            self._in_flight.add(future)
        future.add_done_callback(partial(self._finish, result=task, topic=topic))

    def _finish(self, future: Future[Any], result: Result, topic: str) -> None:
        try:
            self.perform_callback(future, result, topic)
        except Exception:
            logger.exception("Failed to return the result of task %s", result.task_id)
        finally:
            with self._in_flight_changed:
                self._in_flight.discard(future)
                self._in_flight_changed.notify_all()

    def perform_callback(self, future: Future[Any], result: Result, topic: str) -> None:
        """Send a completed result back to the queue; used as the callback of each future.

        Args:
            future: Future created by the engine
            result: The task as it was submitted; used to report an engine failure
            topic: Topic used to send back to the user
        """
        exc = future.exception()
        reported = None if exc is not None else future.result()
        if isinstance(reported, bytes):
            reported = WorkerOutcome.unpack(reported)
        if isinstance(reported, Result):
            output = reported
        else:
            # The request stays here while a worker runs it: the outcome completes it
            output = result
            if reported is None:
                output.set_failure(exc or RuntimeError("The engine returned no outcome"))
            else:
                output.apply_outcome(reported)
        output.mark_task_received()
        if not output.success and result.retries < result.max_retries:
            result.retries += 1
            logger.info(
                "Task %s failed; re-running it (retry %d of %d)",
                result.task_id,
                result.retries,
                result.max_retries,
            )
            self.process_queue(topic, result)
            return
        output.retries = result.retries
        self.queues.send_result(output, topic)

    def _wait_for_tasks(self) -> None:
        with self._in_flight_changed:
            if self._in_flight:
                logger.info("Waiting for %d in-flight tasks", len(self._in_flight))
            self._in_flight_changed.wait_for(lambda: not self._in_flight)


def execute_task(func: Callable[..., Any], task: WorkerTask) -> WorkerOutcome:
    """Run a function on a task's inputs, on a worker; never raises for the task's sake.

    Deserializes the inputs, starts resolving their proxies, runs the function and
    serializes its value. A failing function, undecodable inputs or an unserializable value
    come back as a failed outcome with the reason.

    Args:
        func: Function to invoke
        task: The serialized inputs and how to read them
    Returns:
        The serialized value, or the failure, with the timings of each step
    """
    outcome = WorkerOutcome(hostname=platform.node(), time_compute_started=time.time())
    try:
        start = perf_counter()
        args, kwargs = SerializationMethod.deserialize(task.serialization_method, task.inputs)
        outcome.time_deserialize_inputs = perf_counter() - start
        start = perf_counter()
        proxies = resolve_proxies_async((args, kwargs))
        outcome.time_async_resolve_proxies = perf_counter() - start
    except Exception as exc:
        outcome.failure = _describe(exc, "Could not deserialize the task inputs")
        outcome.time_compute_ended = time.time()
        return outcome

    start = perf_counter()
    try:
        value = func(*args, **kwargs)
    except Exception as exc:
        outcome.time_running = perf_counter() - start
        outcome.time_compute_ended = time.time()
        outcome.failure = _describe(exc)
        return outcome
    outcome.time_running = perf_counter() - start
    outcome.time_compute_ended = time.time()

    for proxy in proxies:
        store_proxy_stats(proxy, outcome.proxy_timing)
    if value is None:
        return outcome
    try:
        start = perf_counter()
        store = None
        if task.value_store is not None:
            store = resolve_store(*task.value_store, task.serialization_method)
        outcome.value = serialize_value(value, task.serialization_method, store, [])
        outcome.time_serialize_results = perf_counter() - start
    except Exception as exc:
        outcome.failure = _describe(exc, "Could not serialize the value returned by the method")
    return outcome


def execute_packed_task(func: Callable[..., Any], packed: bytes) -> bytes:
    """:func:`execute_task` on a packed :class:`WorkerTask`, returning a packed outcome.

    For engines that serialize structured objects slowly (see
    :mod:`colmena_core.models.execution`).
    """
    return execute_task(func, WorkerTask.unpack(packed)).pack()


def run_and_record_timing(func: Callable[..., Any], result: Result) -> Result:
    """Run a function on a task and record its timings; never raises for the task's sake.

    The documented form of :func:`execute_task` for engines that ship whole results.

    Args:
        func: Function to invoke
        result: Result object describing the task request
    Returns:
        The result object, with its value serialized
    """
    result.apply_outcome(execute_task(func, result.to_worker_task()))
    return result


def _describe(exc: BaseException, context: str | None = None) -> tuple[str, str | None]:
    info = FailureInformation.from_exception(exc)
    if context is None:
        return info.exception, info.traceback
    return f"RuntimeError('{context}: {info.exception}')", info.traceback
