"""A task server that runs methods as Parsl apps: the reference engine for HPC campaigns.

Each method becomes a Parsl :class:`~parsl.app.python.PythonApp` whose options (for
example the ``executors`` it may use) come from the method list. An
:class:`~colmena_core.models.ExecutableTask` becomes a chain of three apps: preprocess,
execute, postprocess. The steps may run on different executors, so the campaign's Python
steps need not hold the nodes of an MPI launch.

Parsl is an optional dependency (``pip install colmena-core[parsl]``); this module imports
it, so it must not be imported by code that should work without Parsl. Parsl is started
inside the task server process, never in the process that creates the server.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

try:
    from parsl.app.python import PythonApp
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "The Parsl task server needs Parsl: install it with `pip install colmena-core[parsl]`"
    ) from exc

from colmena_core.models import (
    ExecutableTask,
    FailureInformation,
    ResourceRequirements,
    Result,
    WorkerInformation,
)
from colmena_core.proxy import resolve_proxies_async, store_proxy_stats
from colmena_core.queue.base import ColmenaQueues
from colmena_core.task_server.base import FutureBasedTaskServer, as_served, execute_packed_task
from colmena_core.task_server.local import method_name
from colmena_core.task_server.signals import ignoring_interrupts

__all__ = ["ParslTaskServer"]

logger = logging.getLogger(__name__)

MethodSpec = Callable[..., Any] | tuple[Callable[..., Any], Mapping[str, Any]]
"""A method to serve: a function, or a function and the options of its Parsl app."""

ExecutionOutcome = tuple[float, FailureInformation | None]
"""What the execute step reports: its duration and, if the executable failed, why."""


# --------------------------------------------------------------------------- worker side
# The functions below run on Parsl workers. They are module-level so that workers import
# them by reference, and they report failures inside the Result rather than raising, so
# that one task always yields exactly one result.


def _preprocess_step(
    task: ExecutableTask, result: Result
) -> tuple[Result, str | None, list[str], str | None]:
    """Deserialize the inputs and run ``task.preprocess`` in a fresh run directory.

    Args:
        task: The executable task
        result: The task request, inputs serialized
    Returns:
        - The result without its inputs (the server still holds them); a failure if the
          preprocessing failed
        - The run directory, or ``None`` after a failure
        - Command-line arguments for the executable
        - Text for the standard input of the executable
    """
    result.mark_compute_started()
    result.worker_info = WorkerInformation.here()
    start = perf_counter()
    run_dir: Path | None = None
    arguments: list[str] = []
    stdin: str | None = None
    try:
        result.time_deserialize_inputs = result.deserialize()
        resolve_start = perf_counter()
        proxies = resolve_proxies_async(result.inputs)
        result.time_async_resolve_proxies = perf_counter() - resolve_start
        run_dir = Path(tempfile.mkdtemp(prefix="colmena-", dir=os.environ.get("COLMENA_RUN_DIR")))
        raw_arguments, stdin = task.preprocess(run_dir, result.args, result.kwargs)
        arguments = [str(a) for a in raw_arguments]
        for proxy in proxies:
            store_proxy_stats(proxy, result.proxy_timing)
    except Exception as exc:
        result.set_failure(exc)
        result.mark_compute_ended()
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = None
    result.additional_timing["exec_preprocess"] = perf_counter() - start
    # The server keeps the serialized inputs; sending them back would double the traffic
    result.inputs = ((), {})
    result.mark_serialized(inputs=False, value=False)
    return result, None if run_dir is None else str(run_dir), arguments, stdin


def _execute_step(
    task: ExecutableTask,
    run_dir: str,
    arguments: list[str],
    stdin: str | None,
    resources: ResourceRequirements,
) -> ExecutionOutcome:
    """Run the executable of ``task`` in ``run_dir`` with the task's resources.

    Returns:
        Duration of the step, and the reason for the failure if the executable failed
    """
    start = perf_counter()
    try:
        task.execute(Path(run_dir), arguments, stdin, resources)
    except Exception as exc:
        return perf_counter() - start, FailureInformation.from_exception(exc)
    return perf_counter() - start, None


def _postprocess_step(
    task: ExecutableTask,
    result: Result,
    run_dir: str,
    execution: ExecutionOutcome,
    serialized_inputs: str | bytes | None,
) -> Result:
    """Read the outputs of the executable, store them in the result and serialize it.

    Args:
        task: The executable task
        result: The result produced by the preprocess step
        run_dir: Run directory of the task; removed at the end
        execution: Outcome of the execute step
        serialized_inputs: Inputs to put back in the result (``None`` to leave them out)
    Returns:
        The result, serialized, with its value or the failure of any step
    """
    execution_time, failure = execution
    result.additional_timing["exec_execution"] = execution_time
    start = perf_counter()
    value: Any = None
    if failure is not None:
        result.success = False
        result.failure_info = failure
    else:
        try:
            value = task.postprocess(Path(run_dir))
        except Exception as exc:
            result.set_failure(exc)
    result.additional_timing["exec_postprocess"] = perf_counter() - start
    runtime = sum(
        result.additional_timing.get(step, 0.0)
        for step in ("exec_preprocess", "exec_execution", "exec_postprocess")
    )
    if result.success is False:
        result.mark_compute_ended()
        result.time_running = runtime
    else:
        result.set_result(value, runtime)
    shutil.rmtree(run_dir, ignore_errors=True)

    _serialize_or_fail(result)
    if serialized_inputs is not None:
        _restore_inputs(result, serialized_inputs)
    return result


def _serialize_or_fail(result: Result) -> None:
    """Serialize a result; a value that cannot be serialized becomes a failure."""
    try:
        result.time_serialize_results, _ = result.serialize()
    except Exception as exc:
        result.value = None
        result.mark_serialized(inputs=result.inputs_serialized, value=False)
        reason = RuntimeError(f"Could not serialize the value returned by the method: {exc!r}")
        reason.__cause__ = exc
        result.set_failure(reason)
        result.time_serialize_results, _ = result.serialize()


def _restore_inputs(result: Result, serialized_inputs: str | bytes) -> None:
    """Put the serialized inputs of the request back into a result."""
    result.inputs = serialized_inputs
    result.mark_serialized(inputs=True, value=result.value_serialized)
    result.message_sizes["inputs"] = len(serialized_inputs)


# --------------------------------------------------------------------------- server side


def _named(function: Callable[..., Any], name: str, *bound: Any) -> Callable[..., Any]:
    """Bind arguments to a module-level function and give the result a method's name.

    The partial object pickles by reference to ``function``, so Parsl workers can load it,
    and Parsl labels the app (logs, monitoring) with ``name``. ``__wrapped__`` is not set on
    purpose: Parsl inspects the signature of an app, and that of a user's function could
    have parameters (``inputs``, ``stdout``) that Parsl treats specially.
    """
    wrapped = partial(function, *bound)
    wrapped.__name__ = name  # type: ignore[attr-defined]
    wrapped.__qualname__ = name  # type: ignore[attr-defined]
    wrapped.__doc__ = function.__doc__
    return wrapped


@dataclass(frozen=True)
class _ExecutableApps:
    """The three Parsl apps that run one :class:`ExecutableTask`."""

    preprocess: PythonApp
    execute: PythonApp
    postprocess: PythonApp


class ParslTaskServer(FutureBasedTaskServer):
    """Task server based on Parsl.

    Create a Parsl configuration following the Parsl documentation, then give the task
    server the functions to serve and on which Parsl executors each may run, either per
    method::

        ParslTaskServer([(f, {'executors': ['a']})], queues, config)

    or for every method that names no executors::

        ParslTaskServer([f], queues, config, default_executors=['a'])

    The options of a method are the keyword arguments of Parsl's ``python_app`` (for
    example ``executors`` or ``cache``); ``{'executor': 'a'}`` is accepted as a shorthand
    for ``{'executors': ['a']}``.

    **Technical details.** Each function becomes a ``PythonApp`` that runs the function
    inside :func:`~colmena_core.task_server.base.execute_packed_task` on a worker; a
    callback on the app's future sends the result back. An
    :class:`~colmena_core.models.ExecutableTask` runs as three apps, all with the
    options of the method:

    1. *preprocess*: makes a run directory, writes the inputs with ``preprocess`` and returns
       the directory, the arguments, the standard input and the result without its inputs
       (the server keeps them, so they do not travel back). A failure ends the chain.
    2. *execute*: runs the executable with ``ExecutableTask.execute`` and the task's
       :class:`~colmena_core.models.ResourceRequirements`, so MPI launch templates are
       rendered with the node and rank counts of the request.
    3. *postprocess*: reads the outputs with ``postprocess``, stores the value, puts the
       inputs back if the task keeps them, serializes the result and removes the run
       directory. It also runs after a failed execution, to report it and clean up.

    Callbacks link the steps; the server tracks one future per task that completes when
    the chain does. The duration of each step is recorded in ``Result.additional_timing``
    under ``exec_preprocess``, ``exec_execution`` and ``exec_postprocess``;
    ``time_running`` is their sum (time waiting between steps is not counted). The run
    directory is made under ``$COLMENA_RUN_DIR`` (default: the system's temporary
    directory) of the worker, which must be visible to the workers of all three steps.

    Args:
        methods: Methods to serve. Each is a function (or ``ExecutableTask``), or a pair of
            a function and a dictionary of options for its Parsl app
        queues: Queues for the task server
        config: Parsl configuration, loaded when the server process starts
        timeout: Stop after this many seconds without a new task (``None``: never)
        default_executors: Executor label or list of labels for methods that name no
            executors; ``'all'`` lets Parsl choose among every executor
        max_retries: Re-run a failed task up to this often unless the task says otherwise
        cleanup_timeout: Seconds to wait for Parsl to shut down when the server stops. After
            that the server exits anyway, and may leave Parsl's interchange and workers to
            notice the lost connection by themselves
    """

    def __init__(
        self,
        methods: Sequence[MethodSpec],
        queues: ColmenaQueues,
        config: Config,
        timeout: float | None = None,
        default_executors: str | Sequence[str] = "all",
        max_retries: int = 0,
        *,
        cleanup_timeout: float = 30.0,
    ) -> None:
        labels = [executor.label for executor in config.executors]
        if isinstance(default_executors, str) and default_executors != "all":
            default_executors = [default_executors]
        if default_executors != "all":
            default_executors = list(default_executors)
            _check_labels(default_executors, labels, "default_executors")

        self.methods: dict[str, Callable[..., Any]] = {}
        self.app_options: dict[str, dict[str, Any]] = {}
        for spec in methods:
            function, options = _split_spec(spec)
            function = as_served(function)
            name = method_name(function)
            if name in self.methods:
                raise ValueError(f"Two methods share the name {name!r}")
            if "executors" not in options:
                options["executors"] = default_executors
            if options["executors"] != "all":
                _check_labels(options["executors"], labels, f"the options of {name!r}")
            self.methods[name] = function
            self.app_options[name] = options
            logger.debug("Method %s runs with Parsl options %s", name, options)

        super().__init__(queues, self.methods.keys(), timeout, max_retries)
        self.config = config
        self.cleanup_timeout = cleanup_timeout
        self._dfk: DataFlowKernel | None = None
        self._apps: dict[str, PythonApp] = {}
        self._executable_apps: dict[str, _ExecutableApps] = {}

    # ------------------------------------------------------------------ life cycle
    def _setup(self) -> None:
        super()._setup()
        # The interchange and the worker pools are stopped by dfk.cleanup(), not by the Ctrl-C
        # a terminal sends to the whole process group
        with ignoring_interrupts():
            self._dfk = DataFlowKernel(self.config)
        for name, function in self.methods.items():
            options = {"data_flow_kernel": self._dfk, **self.app_options[name]}
            if isinstance(function, ExecutableTask):
                self._executable_apps[name] = _ExecutableApps(
                    preprocess=PythonApp(
                        _named(_preprocess_step, f"{name}_preprocess", function), **options
                    ),
                    execute=PythonApp(
                        _named(_execute_step, f"{name}_execute", function), **options
                    ),
                    postprocess=PythonApp(
                        _named(_postprocess_step, f"{name}_postprocess", function), **options
                    ),
                )
            else:
                self._apps[name] = PythonApp(_named(execute_packed_task, name, function), **options)
        logger.info("Parsl started with executors %s", sorted(self._dfk.executors))

    def _cleanup(self) -> None:
        try:
            dfk, self._dfk = self._dfk, None
            if dfk is None:
                return
            # Parsl's shutdown can hang (e.g. on a lost interchange): never wait forever
            stopper = threading.Thread(target=dfk.cleanup, name="parsl-cleanup", daemon=True)
            stopper.start()
            stopper.join(self.cleanup_timeout)
            if stopper.is_alive():
                logger.error(
                    "Parsl did not shut down within %s s; leaving it behind", self.cleanup_timeout
                )
            else:
                logger.info("Parsl shut down")
        finally:
            super()._cleanup()

    # ----------------------------------------------------------------- submission
    def _submit(self, task: Result, topic: str) -> Future[Any] | None:
        assert self._dfk is not None, "the task server is not running"
        assert task.method is not None
        if task.method in self._executable_apps:
            # Thread-based executors share objects with this process: the chain gets a copy
            # so that the request kept for retries and failure reports stays untouched
            request = task.model_copy(deep=True)
            return self._submit_executable(self._executable_apps[task.method], request)
        # One bytes object: Parsl's serializer (dill) is slow for anything structured
        worker_task = self.worker_task(task, self.methods[task.method])
        future: Future[bytes] = self._apps[task.method](worker_task.pack())
        return future

    def _submit_executable(self, apps: _ExecutableApps, request: Result) -> Future[Result]:
        """Start the preprocess-execute-postprocess chain; return a future for its end."""
        done: Future[Result] = Future()
        done.set_running_or_notify_cancel()
        assert request.inputs_serialized, "requests arrive with serialized inputs"
        assert isinstance(request.inputs, str | bytes)
        serialized_inputs: str | bytes = request.inputs
        keep_inputs = request.keep_inputs

        def after_preprocess(
            future: Future[tuple[Result, str | None, list[str], str | None]],
        ) -> None:
            try:
                result, run_dir, arguments, stdin = future.result()
                if run_dir is None:
                    logger.info("Preprocessing failed for task %s", result.task_id)
                    _serialize_or_fail(result)
                    if keep_inputs:
                        _restore_inputs(result, serialized_inputs)
                    done.set_result(result)
                    return
                execution = apps.execute(run_dir, arguments, stdin, result.resources)
                execution.add_done_callback(partial(after_execute, result, run_dir))
            except BaseException as exc:
                done.set_exception(exc)

        def after_execute(result: Result, run_dir: str, future: Future[ExecutionOutcome]) -> None:
            try:
                error = future.exception()
                outcome: ExecutionOutcome = (
                    future.result()
                    if error is None
                    else (0.0, FailureInformation.from_exception(error))
                )
                final = apps.postprocess(
                    result, run_dir, outcome, serialized_inputs if keep_inputs else None
                )
                final.add_done_callback(after_postprocess)
            except BaseException as exc:
                done.set_exception(exc)

        def after_postprocess(future: Future[Result]) -> None:
            error = future.exception()
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(future.result())

        apps.preprocess(request).add_done_callback(after_preprocess)
        return done


def _split_spec(spec: MethodSpec) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Separate a method from the options of its Parsl app."""
    if isinstance(spec, tuple | list):
        if len(spec) != 2:
            raise ValueError("A method with options must be a (function, options) pair")
        function, raw_options = spec
        options = dict(raw_options)
    else:
        function, options = spec, {}
    if not callable(function):
        raise TypeError(f"Methods must be callable, not {type(function).__name__}")
    if "executor" in options:
        if "executors" in options:
            raise ValueError("Give either 'executor' or 'executors', not both")
        executor = options.pop("executor")
        options["executors"] = [executor] if isinstance(executor, str) else list(executor)
    if isinstance(options.get("executors"), str) and options["executors"] != "all":
        options["executors"] = [options["executors"]]
    return function, options


def _check_labels(requested: Sequence[str], labels: Sequence[str], where: str) -> None:
    unknown = sorted(set(requested) - set(labels))
    if unknown:
        raise ValueError(
            f"{where} name executors missing from the Parsl config: {unknown}; it has {sorted(labels)}"
        )


def local_config(
    workers: int = 2, run_dir: str | None = None, label: str = "htex", **executor_options: Any
) -> Config:
    """A HighThroughputExecutor with ``workers`` worker processes on this machine.

    The quickest way to run a campaign on a laptop or a login node: workers listen on the
    loopback address, and this interpreter's ``bin/`` is put on ``PATH`` because Parsl
    starts its interchange and workers by script name (an interpreter run without its
    environment activated would not find them).

    Args:
        workers: Worker processes
        run_dir: Where Parsl writes its logs (default: a new temporary directory)
        label: Label of the executor
        executor_options: More options for the HighThroughputExecutor
    """
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH")]))
    return Config(
        executors=[
            HighThroughputExecutor(
                label=label,
                address="127.0.0.1",
                max_workers_per_node=workers,
                provider=LocalProvider(init_blocks=1, max_blocks=1),
                **executor_options,
            )
        ],
        strategy="none",
        run_dir=run_dir or tempfile.mkdtemp(prefix="colmena-parsl-"),
        initialize_logging=False,
    )
