"""Methods: the functions a task server runs, with what Colmena 0.6-0.7 wraps around them.

Task servers take plain functions (and :class:`~colmena_core.models.ExecutableTask`
objects) as well as the wrappers of this module:

- :class:`PythonMethod`: a function, served under a name of your choice;
- :class:`PythonGeneratorMethod`: a generator function. Its yields come back as one list,
  or, with ``streaming_queue``, each yield goes to the thinker as an intermediate result
  (``Result.complete`` is false) as soon as it is produced;
- :class:`ExecutableMethod`: an executable with pre- and post-processing in Python, named
  after the executable unless told otherwise.

A function (or the ``function`` of a method) that declares a ``_resources`` parameter gets
the task's :class:`~colmena_core.models.ResourceRequirements`; one that declares
``_result`` gets the task's record (a :class:`~colmena_core.models.Result`, inputs still
serialized). Calling a method with a task record, ``method(result)``, runs the task in this
process and returns the record with its value, as in Colmena 0.7.

Intermediate results reach the thinker through the task server that runs the method, on
whatever queues it serves: the worker sends each one to a relay of its task server, which
sends it like any result. ``streaming_queue`` says that the method streams, and is used
directly only when the method is called in the process that holds the queues.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable, Generator, Iterable
from functools import lru_cache
from time import perf_counter
from types import FunctionType
from typing import TYPE_CHECKING, Any

from colmena_core.models.resources import ResourceRequirements
from colmena_core.models.results import Result
from colmena_core.models.tasks import ExecutableTask

if TYPE_CHECKING:
    from colmena_core.queue.base import ColmenaQueues

__all__ = [
    "ColmenaMethod",
    "ExecutableMethod",
    "PythonGeneratorMethod",
    "PythonMethod",
    "accepts_parameter",
]

logger = logging.getLogger(__name__)

ResultSink = Callable[[Result], None]
"""Sends an intermediate result towards the thinker."""

_sink: contextvars.ContextVar[ResultSink | None] = contextvars.ContextVar(
    "colmena_result_sink", default=None
)
"""Where intermediate results of the task running in this thread go (set by the worker)."""


def accepts_parameter(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` declares a parameter called ``name`` (``**kwargs`` does not count)."""
    if isinstance(function, FunctionType):  # the common case, asked for every task: cached
        return _function_accepts(function, name)
    return _accepts(function, name)


@lru_cache(maxsize=1024)
def _function_accepts(function: FunctionType, name: str) -> bool:
    return _accepts(function, name)


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


class ColmenaMethod:
    """A function run as a Colmena task, with the name it is served under.

    Subclasses provide :meth:`function`. Task servers call ``function`` with the task's
    arguments (plus ``_resources`` and ``_result`` when it declares them) and handle the
    rest: deserializing, timing, ProxyStore, serializing.
    """

    name: str
    """Name under which the method is served"""

    @property
    def __name__(self) -> str:
        return self.name

    def function(self, *args: Any, **kwargs: Any) -> Any:
        """The work of the method."""
        raise NotImplementedError()

    def accepts(self, name: str) -> bool:
        """Whether :meth:`function` takes the keyword ``name`` (``_resources``, ``_result``)."""
        return accepts_parameter(self.function, name)

    @property
    def streams(self) -> bool:
        """Whether the method sends intermediate results."""
        return False

    def __call__(self, result: Result) -> Result:
        """Run the task described by ``result`` here; return it with its value serialized.

        Intermediate results go to this method's ``streaming_queue`` if it has one.
        """
        from colmena_core.task_server.base import execute_task

        outcome = execute_task(self, result.to_worker_task(request=self.accepts("_result")))
        result.apply_outcome(outcome)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PythonMethod(ColmenaMethod):
    """A Python function run on one worker.

    Args:
        function: The function
        name: Name under which it is served (default: the function's ``__name__``)
    """

    def __init__(self, function: Callable[..., Any], name: str | None = None) -> None:
        if not callable(function):
            raise TypeError(f"Methods must be callable, not {type(function).__name__}")
        self.name = name or _name_of(function)
        self._function = function

    def function(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function."""
        return self._function(*args, **kwargs)

    def accepts(self, name: str) -> bool:
        return accepts_parameter(self._function, name)


class PythonGeneratorMethod(ColmenaMethod):
    """A generator function run on one worker, which may report each yield as it comes.

    Without ``streaming_queue`` the value of the task is the list of the yields (and, with
    ``store_return_value``, the pair of that list and the generator's return value). With
    it, each yield goes to the thinker as an intermediate result of the task
    (``complete`` false, ``value`` the yield) and the final result's value is the
    generator's return value if ``store_return_value``, else ``None``.

    Args:
        function: Generator function
        name: Name under which it is served (default: the function's ``__name__``)
        store_return_value: Keep the generator's ``return`` value
        streaming_queue: Queues of the campaign; giving them turns streaming on
    """

    def __init__(
        self,
        function: Callable[..., Generator[Any, Any, Any] | Iterable[Any]],
        name: str | None = None,
        store_return_value: bool = False,
        streaming_queue: ColmenaQueues | None = None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"Methods must be callable, not {type(function).__name__}")
        self._function = function
        self.name = name or _name_of(function)
        self.store_return_value = store_return_value
        self.streaming_queue = streaming_queue
        self._streams = streaming_queue is not None

    @property
    def streams(self) -> bool:
        return self._streams

    def accepts(self, name: str) -> bool:
        if name == "_result":
            return self._streams
        return accepts_parameter(self._function, name)

    def __getstate__(self) -> dict[str, Any]:
        # Workers send through their task server: the queues themselves stay here
        state = self.__dict__.copy()
        state["streaming_queue"] = None
        return state

    def stream_result(self, y: Any, result: Result, start_time: float) -> None:
        """Send ``y`` to the thinker as an intermediate result of the task ``result``.

        Args:
            y: A value yielded by the generator
            result: The task record
            start_time: ``perf_counter()`` when the generator started
        """
        sink = _sink.get()
        if sink is None:
            queues = self.streaming_queue
            if queues is None:
                raise RuntimeError(
                    f"{self.name} has no way to send intermediate results: give it a "
                    "streaming_queue, or run it through a task server"
                )
            sink = queues.send_result
        update = result.model_copy(deep=True)
        update.set_result(y, perf_counter() - start_time, intermediate=True)
        sink(update)

    def function(self, *args: Any, _result: Result | None = None, **kwargs: Any) -> Any:
        """Run the generator; stream or collect its yields."""
        generator = iter(self._function(*args, **kwargs))
        collected: list[Any] = []
        stream = self._streams and _result is not None
        start = perf_counter()
        while True:
            try:
                y = next(generator)
            except StopIteration as end:
                returned = end.value
                break
            if stream:
                assert _result is not None
                self.stream_result(y, _result, start)
            else:
                collected.append(y)
        if stream:
            return returned if self.store_return_value else None
        if self.store_return_value:
            return collected, returned
        return collected


class ExecutableMethod(ColmenaMethod, ExecutableTask):  # type: ignore[misc]  # 0.7 call: method(result)
    """An executable launched by a system call, with Python pre- and post-processing.

    The Colmena 0.7 spelling of :class:`~colmena_core.models.ExecutableTask`: implement
    :meth:`preprocess` and :meth:`postprocess`; MPI executables set ``mpi=True`` and a
    ``mpi_command_string`` template. Task servers that split executables into steps (Parsl)
    do so for these too, and every task server renders the MPI launch with the task's
    :class:`~colmena_core.models.ResourceRequirements`.

    Args:
        executable: Command that launches the executable
        name: Name under which it is served (default: ``executable[0]``)
        mpi: Whether the executable is launched with MPI
        mpi_command_string: Template of the MPI launch, e.g. ``mpiexec -n {total_ranks}``
    """

    def __init__(
        self,
        executable: list[str],
        name: str | None = None,
        mpi: bool = False,
        mpi_command_string: str | None = None,
    ) -> None:
        if not executable:
            raise ValueError("executable must name a command")
        ExecutableTask.__init__(self, executable, mpi=mpi, mpi_command_string=mpi_command_string)
        self.name = name or executable[0]

    def function(
        self, *args: Any, _resources: ResourceRequirements | None = None, **kwargs: Any
    ) -> Any:
        """Preprocess, execute and postprocess in a fresh temporary directory."""
        return ExecutableTask.__call__(self, *args, _resources=_resources, **kwargs)


def _name_of(function: Callable[..., Any]) -> str:
    return str(getattr(function, "__name__", type(function).__name__.lower()))


def current_sink() -> contextvars.ContextVar[ResultSink | None]:
    """The context variable that holds where intermediate results go (for task servers)."""
    return _sink
