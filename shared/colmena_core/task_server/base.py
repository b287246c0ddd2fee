"""Base classes for task servers: read requests, run them, send results back.

A task server is a process that takes task requests from its queues, hands them to an
execution engine, and returns exactly one result per request: the value, or a failure with
its reason (unknown method, failing function, unpicklable value, lost worker). It stops on
the kill signal after its in-flight tasks finish. Engines live in the sibling modules.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from inspect import isgeneratorfunction
from multiprocessing import AuthenticationError, Process
from multiprocessing.connection import (
    Client,
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from time import perf_counter
from typing import Any

from colmena_core.exceptions import KillSignalException, TimeoutException
from colmena_core.models import (
    FailureInformation,
    ResourceRequirements,
    Result,
    SerializationMethod,
)
from colmena_core.models.execution import WorkerOutcome, WorkerTask
from colmena_core.models.methods import (
    ColmenaMethod,
    PythonGeneratorMethod,
    PythonMethod,
    accepts_parameter,
    current_sink,
)
from colmena_core.models.results import (
    MAX_RETRIES,
    WorkerInformation,
    resolve_store,
    serialize_value,
)
from colmena_core.models.wire import decode_result, encode_result
from colmena_core.proxy import resolve_proxies_async, store_proxy_stats
from colmena_core.queue.base import ColmenaQueues, QueueRole

__all__ = [
    "BaseTaskServer",
    "FutureBasedTaskServer",
    "convert_to_colmena_method",
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

    relay_host: str = "127.0.0.1"
    """Address on which the task server takes intermediate results from its workers.

    Workers of methods that stream connect to it; set a routable address of this host when
    they run elsewhere.
    """

    def _setup(self) -> None:
        super()._setup()
        self._in_flight: set[Future[Any]] = set()
        self._in_flight_changed = threading.Condition()
        self._method_needs: dict[str, tuple[bool, bool]] = {}
        self._relay: ResultRelay | None = None
        self._relay_lock = threading.Lock()

    def worker_task(self, task: Result, function: Callable[..., Any]) -> WorkerTask:
        """What a worker needs to run ``task`` with ``function``.

        Methods that take the task record get its metadata; methods that stream get the
        address of this server's relay of intermediate results.
        """
        assert task.method is not None
        needs = self._method_needs.get(task.method)
        if needs is None:
            if isinstance(function, ColmenaMethod):
                needs = (function.accepts("_result"), function.streams)
            else:
                needs = (accepts_parameter(function, "_result"), False)
            self._method_needs[task.method] = needs
        request, streams = needs
        return task.to_worker_task(
            request=request, stream_to=self._relay_address() if streams else None
        )

    def _relay_address(self) -> tuple[Any, bytes]:
        with self._relay_lock:
            if self._relay is None:
                self._relay = ResultRelay(self.send_intermediate, self.relay_host)
            return self._relay.address, self._relay.key

    def send_intermediate(self, result: Result) -> None:
        """Send an intermediate result of a running task to its client."""
        self.queues.send_result(result)

    def _cleanup(self) -> None:
        relay, self._relay = getattr(self, "_relay", None), None
        if relay is not None:
            relay.close()
        super()._cleanup()

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


def convert_to_colmena_method(function: Callable[..., Any] | ColmenaMethod) -> ColmenaMethod:
    """Wrap a function in the method class that runs it, as Colmena 0.7 does.

    Methods stay as they are; generator functions become :class:`PythonGeneratorMethod`
    (their value is the list of their yields); other callables :class:`PythonMethod`.
    """
    if isinstance(function, ColmenaMethod):
        return function
    if not callable(function):
        raise TypeError(f"Methods must be callable, not {type(function).__name__}")
    if isgeneratorfunction(function):
        return PythonGeneratorMethod(function)
    return PythonMethod(function)


def as_served(function: Callable[..., Any]) -> Callable[..., Any]:
    """The form in which a task server runs a method.

    Plain functions and :class:`~colmena_core.models.ExecutableTask` objects are run as
    they are (cheapest to ship to workers); generator functions are wrapped as Colmena 0.7
    does (see :func:`convert_to_colmena_method`).
    """
    if not isinstance(function, ColmenaMethod) and isgeneratorfunction(function):
        return convert_to_colmena_method(function)
    return function


class ResultRelay:
    """Takes intermediate results from workers and hands them to the task server.

    A listener on ``host`` (a random port, a random key): a worker connects once per task,
    sends each encoded result and waits for the acknowledgement, which comes after
    ``deliver`` returned. The final result of a task therefore leaves after its
    intermediate ones.
    """

    def __init__(self, deliver: Callable[[Result], None], host: str = "127.0.0.1") -> None:
        self.key = os.urandom(32)
        self._deliver = deliver
        # Authenticated in each connection's thread (below), not in ``accept``: a peer that
        # connects and never answers the challenge must not hold up the other workers
        self._listener = Listener((host, 0))
        self.address: Any = self._listener.address
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="colmena-result-relay", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                logger.warning("A worker could not connect to the result relay", exc_info=True)
                continue
            threading.Thread(
                target=self._serve, args=(connection,), name="colmena-relay-worker", daemon=True
            ).start()

    def _serve(self, connection: Connection) -> None:
        with connection:
            try:
                deliver_challenge(connection, self.key)
                answer_challenge(connection, self.key)
            except (OSError, EOFError, AuthenticationError):
                logger.warning("A worker could not connect to the result relay", exc_info=True)
                return
            while True:
                try:
                    message = connection.recv_bytes()
                except (EOFError, OSError):
                    return
                try:
                    self._deliver(decode_result(message))
                except Exception:
                    logger.exception("Could not send an intermediate result")
                try:
                    connection.send_bytes(b"")
                except OSError:
                    return

    def close(self) -> None:
        """Stop taking connections."""
        self._closed.set()
        self._listener.close()


class _RelaySink:
    """Sends the intermediate results of one task to its task server's relay."""

    def __init__(self, task: WorkerTask, outcome: WorkerOutcome) -> None:
        assert task.stream_to is not None
        self._address, self._key = task.stream_to
        self._inputs = task.inputs
        self._outcome = outcome
        self._connection: Connection | None = None

    def __call__(self, update: Result) -> None:
        update.time_compute_started = self._outcome.time_compute_started
        update.worker_info = WorkerInformation(
            hostname=self._outcome.hostname, **self._outcome.worker_info
        )
        if update.keep_inputs:
            update.inputs = self._inputs
            update.mark_serialized(inputs=True, value=update.value_serialized)
        else:
            update.inputs = ((), {})
            update.mark_serialized(inputs=False, value=update.value_serialized)
        update.time_serialize_results, _ = update.serialize()
        message = encode_result(update)
        if self._connection is None:
            try:
                self._connection = Client(self._address, authkey=self._key)
            except OSError as exc:
                raise RuntimeError(
                    f"Could not reach the task server at {self._address} to send an "
                    f"intermediate result ({exc}): set the task server's relay_host to an "
                    "address of its host that the workers can connect to"
                ) from exc
        self._connection.send_bytes(message)
        self._connection.recv_bytes()  # sent on by the task server

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


@contextmanager
def _streaming(task: WorkerTask, outcome: WorkerOutcome) -> Iterator[None]:
    """Send the intermediate results of the task that runs inside to its task server."""
    if task.stream_to is None:
        yield
        return
    sink = _RelaySink(task, outcome)
    token = current_sink().set(sink)
    try:
        yield
    finally:
        current_sink().reset(token)
        sink.close()


def _extra_arguments(
    func: Callable[..., Any], task: WorkerTask, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The ``_resources`` and ``_result`` arguments ``func`` declares, as Colmena 0.7 gives them."""
    accepts: Callable[[str], bool]
    if isinstance(func, ColmenaMethod):
        accepts = func.accepts
    else:
        accepts = partial(accepts_parameter, func)
    extra: dict[str, Any] = {}
    for name in ("_resources", "_result"):
        if name in kwargs:
            logger.warning("The task passes %s itself: it is given to the function as is", name)
        elif accepts(name):
            if name == "_resources":
                extra[name] = _resources_of(task)
            elif task.request is not None:
                extra[name] = _record_of(task)
    return extra


def _resources_of(task: WorkerTask) -> ResourceRequirements:
    if task.resources is None:
        return ResourceRequirements()
    nodes, processes, threads = task.resources
    return ResourceRequirements(node_count=nodes, cpu_processes=processes, cpu_threads=threads)


def _record_of(task: WorkerTask) -> Result:
    """The task record a worker hands to a method, its inputs still serialized."""
    assert task.request is not None
    record = Result.model_validate_json(task.request)
    record.inputs = task.inputs
    record.mark_serialized(inputs=True, value=False)
    return record


_PARSL_WORKER_VARIABLES = ("PARSL_WORKER_RANK", "PARSL_WORKER_POOL_ID")


def execute_task(func: Callable[..., Any], task: WorkerTask) -> WorkerOutcome:
    """Run a function on a task's inputs, on a worker; never raises for the task's sake.

    Deserializes the inputs, starts resolving their proxies, runs the function and
    serializes its value. A failing function, undecodable inputs or an unserializable value
    come back as a failed outcome with the reason. A :class:`ColmenaMethod` runs its
    ``function``; a function that declares ``_resources`` (or ``_result``) gets the task's
    resource requirements (or record).

    Args:
        func: Function to invoke
        task: The serialized inputs and how to read them
    Returns:
        The serialized value, or the failure, with the timings of each step
    """
    outcome = WorkerOutcome(hostname=platform.node(), time_compute_started=time.time())
    for variable in _PARSL_WORKER_VARIABLES:
        if variable in os.environ:
            outcome.worker_info[variable] = os.environ[variable]
    try:
        start = perf_counter()
        args, kwargs = SerializationMethod.deserialize(task.serialization_method, task.inputs)
        outcome.time_deserialize_inputs = perf_counter() - start
        start = perf_counter()
        proxies = resolve_proxies_async((args, kwargs))
        outcome.time_async_resolve_proxies = perf_counter() - start
        extra = _extra_arguments(func, task, kwargs)
    except Exception as exc:
        outcome.failure = _describe(exc, "Could not deserialize the task inputs")
        outcome.time_compute_ended = time.time()
        return outcome

    target = func.function if isinstance(func, ColmenaMethod) else func
    start = perf_counter()
    try:
        with _streaming(task, outcome):
            value = target(*args, **kwargs, **extra)
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
        created: list[Any] = []
        outcome.value = serialize_value(value, task.serialization_method, store, created)
        outcome.time_serialize_results = perf_counter() - start
        for proxy in created:
            store_proxy_stats(proxy, outcome.proxy_timing)
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
