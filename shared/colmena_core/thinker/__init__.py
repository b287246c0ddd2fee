"""Thinkers: the multi-threaded programs that steer a campaign by sending tasks and reading results.

A thinker is a :class:`BaseThinker` subclass whose methods, marked with decorators, run as
*agents*: one thread each, sharing the thinker's attributes. The decorators are

- :func:`agent`: run the method once, in its own thread;
- :func:`result_processor`: call the method with every result of a topic;
- :func:`task_submitter`: call the method every time slots of a pool are acquired;
- :func:`event_responder`: call the method every time an :class:`~threading.Event` is set,
  optionally moving slots between pools while it runs.

Each decorator returns a spec object (an :class:`AgentSpec`) that describes the agent and
still behaves as the method when read from an instance, so ``self.method()`` works.
:meth:`BaseThinker.list_agents` finds the specs through the class hierarchy.

Life-cycle: :meth:`BaseThinker.run` starts every agent. When an agent exits (other than a
``startup`` agent exiting normally) or any agent raises, the ``done`` event is set and the
other agents wind down. Result processors keep going after ``done`` until every task sent
on their topic has come back and been processed, so a thinker exits only after the results
of the tasks it submitted have been handled.
"""

from __future__ import annotations

import functools
import logging
import os
import queue as queue_module
import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Self, overload

from colmena_core.exceptions import TimeoutException
from colmena_core.queue.base import ColmenaQueues, QueueRole
from colmena_core.thinker.resources import ReallocatorThread, ResourceCounter

__all__ = [
    "AgentSpec",
    "BaseThinker",
    "EventResponderSpec",
    "ReallocatorThread",
    "ResourceCounter",
    "ResultProcessorSpec",
    "TaskSubmitterSpec",
    "agent",
    "event_responder",
    "result_processor",
    "task_submitter",
]

logger = logging.getLogger(__name__)

_DRAIN_REPORT_INTERVAL = 10.0
"""Seconds between progress messages while a result processor waits for the last results."""

AgentFunction = Callable[..., Any]
"""A method of a thinker: takes the thinker (and, for result processors, a result)."""


# ---------------------------------------------------------------------------- agent specs
class AgentSpec:
    """Description of an agent: a thinker method that runs in its own thread.

    Created by the :func:`agent` decorator (and, through subclasses, by the other
    decorators). Reading the attribute from a thinker instance gives the bound method, so
    agents may still be called directly; reading it from the class gives the spec.

    Args:
        func: The decorated method
        startup: Whether the agent exiting normally leaves the other agents running
    """

    kind: ClassVar[str] = "agent"
    """Short name of the agent type, used in log messages."""

    # Copied from the decorated function by functools.update_wrapper
    __name__: str
    __qualname__: str
    __wrapped__: AgentFunction

    def __init__(self, func: AgentFunction, startup: bool = False) -> None:
        if isinstance(func, AgentSpec):
            raise TypeError(f"{func.name} is already decorated as a {func.kind}")
        if not callable(func):
            raise TypeError(
                f"Expected a function to decorate, got {func!r}; pass options by keyword, e.g. @agent(startup=True)"
            )
        functools.update_wrapper(self, func)
        self.func = func
        self.startup = startup
        self.name: str = getattr(func, "__name__", type(self).__name__)
        self._named = False

    def __set_name__(self, owner: type, name: str) -> None:
        # Keep the first name: an alias in a subclass must not rename the agent of the base
        if not self._named:
            self.name = name
            self._named = True

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., Any]: ...

    def __get__(
        self, instance: object | None, owner: type | None = None
    ) -> Self | Callable[..., Any]:
        if instance is None:
            return self
        return types.MethodType(self.func, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the decorated function directly (e.g., ``Thinker.method(thinker)``)."""
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def run(self, thinker: BaseThinker) -> None:
        """Body of the agent thread.

        Args:
            thinker: Thinker whose agent this is
        """
        self.func(thinker)


class ResultProcessorSpec(AgentSpec):
    """Agent that calls its method with each result of a topic (see :func:`result_processor`).

    Args:
        func: The decorated method, which takes a :class:`~colmena_core.models.Result`
        topic: Topic of the results to process
    """

    kind = "result_processor"

    def __init__(self, func: AgentFunction, topic: str = "default") -> None:
        super().__init__(func)
        self.topic = topic

    def run(self, thinker: BaseThinker) -> None:
        """Process results until ``done`` is set and the topic has no task in flight.

        Args:
            thinker: Thinker whose agent this is
        """
        queues = thinker.queues
        drain_start: float | None = None
        last_report = 0.0
        thinker.logger.info("Waiting for results with topic %s", self.topic)
        while True:
            if thinker.done.is_set() and thinker._senders_finished.is_set():
                outstanding = queues.active_count_for(self.topic)
                if outstanding == 0:
                    break
                now = time.monotonic()
                if drain_start is None:
                    drain_start = last_report = now
                    thinker.logger.info(
                        "Thinker is done: waiting for %d results with topic %s",
                        outstanding,
                        self.topic,
                    )
                elif now - last_report >= _DRAIN_REPORT_INTERVAL:
                    last_report = now
                    thinker.logger.info(
                        "Still waiting for %d results with topic %s", outstanding, self.topic
                    )
                if thinker.drain_timeout is not None and now - drain_start >= thinker.drain_timeout:
                    thinker.logger.warning(
                        "Gave up waiting for %d results with topic %s after %.1f s",
                        outstanding,
                        self.topic,
                        now - drain_start,
                    )
                    break
            try:
                result = queues.get_result(
                    self.topic, timeout=thinker.reaction_time, acknowledge=False
                )
            except TimeoutException:
                continue
            if result is None:
                continue
            start = time.perf_counter()
            self.func(thinker, result)
            # Only now: a thinker stopped while processing gets the result again on restart
            queues.acknowledge_result(result)
            thinker.logger.debug(
                "Processed a result with topic %s in %.3e s",
                self.topic,
                time.perf_counter() - start,
            )


class TaskSubmitterSpec(AgentSpec):
    """Agent that calls its method whenever slots are acquired (see :func:`task_submitter`).

    Args:
        func: The decorated method
        task_type: Pool from which to acquire slots (``None`` for unallocated slots)
        n_slots: Slots per call: an integer or the name of an integer thinker attribute
    """

    kind = "task_submitter"

    def __init__(
        self, func: AgentFunction, task_type: str | None = None, n_slots: int | str = 1
    ) -> None:
        super().__init__(func)
        _check_int_or_name(n_slots, "n_slots")
        self.task_type = task_type
        self.n_slots = n_slots

    def run(self, thinker: BaseThinker) -> None:
        """Acquire slots and call the method, until ``done`` is set.

        Args:
            thinker: Thinker whose agent this is
        Raises:
            ValueError: If the thinker has no resource counter or ``n_slots`` is invalid
        """
        rec = thinker.rec
        if rec is None:
            raise ValueError(
                f"Task submitter {self.name} needs the thinker to have a resource counter"
            )
        while not thinker.done.is_set():
            n_slots = _resolve_count(thinker, self.n_slots, "n_slots")
            assert n_slots is not None
            if rec.acquire(self.task_type, n_slots, cancel_if=thinker.done):
                thinker.logger.debug("Acquired %d slots of %s", n_slots, self.task_type)
                self.func(thinker)


class EventResponderSpec(AgentSpec):
    """Agent that calls its method when an event is set (see :func:`event_responder`).

    Args:
        func: The decorated method
        event_name: Name of the thinker attribute holding the :class:`~threading.Event`
        reallocate_resources: Whether to move slots while the method runs
        gather_from: Pool from which to gather slots
        gather_to: Pool into which to gather slots
        disperse_to: Pool to which all slots of ``gather_to`` go once the method ends
        max_slots: Cap on the slots of ``gather_to``: an integer, the name of a thinker
            attribute, or ``None`` for no cap
        slot_step: Number of slots to gather per request
    """

    kind = "event_responder"

    def __init__(
        self,
        func: AgentFunction,
        event_name: str,
        reallocate_resources: bool = False,
        gather_from: str | None = None,
        gather_to: str | None = None,
        disperse_to: str | None = None,
        max_slots: int | str | None = None,
        slot_step: int = 1,
    ) -> None:
        super().__init__(func)
        self.check_options(
            event_name, reallocate_resources, gather_from, gather_to, max_slots, slot_step
        )
        self.event_name = event_name
        self.reallocate_resources = reallocate_resources
        self.gather_from = gather_from
        self.gather_to = gather_to
        self.disperse_to = disperse_to
        self.max_slots = max_slots
        self.slot_step = slot_step

    @staticmethod
    def check_options(
        event_name: str | None,
        reallocate_resources: bool,
        gather_from: str | None,
        gather_to: str | None,
        max_slots: int | str | None,
        slot_step: int,
    ) -> None:
        """Check the options of an event responder.

        Raises:
            ValueError: If an option is missing or invalid
        """
        if not isinstance(event_name, str) or not event_name:
            raise ValueError(
                "event_responder needs event_name: the name of a threading.Event attribute"
            )
        if reallocate_resources and gather_from == gather_to:
            raise ValueError("Resources must be gathered from and into different pools")
        if max_slots is not None:
            _check_int_or_name(max_slots, "max_slots")
        if isinstance(slot_step, bool) or not isinstance(slot_step, int) or slot_step < 1:
            raise ValueError(f"slot_step must be a positive integer, not {slot_step!r}")

    def run(self, thinker: BaseThinker) -> None:
        """Respond to the event every time it is set, until ``done`` is set.

        Args:
            thinker: Thinker whose agent this is
        Raises:
            ValueError: If the thinker lacks the event, or lacks a resource counter needed
                for reallocation
        """
        event = getattr(thinker, self.event_name, None)
        if not isinstance(event, threading.Event):
            raise ValueError(
                f"Thinker attribute {self.event_name!r} must be a threading.Event, not {event!r}"
            )
        if self.reallocate_resources and not thinker.has_resource_counter:
            raise ValueError(
                f"Event responder {self.name} reallocates resources: the thinker needs a resource counter"
            )
        barrier = thinker.barriers[self.event_name]
        thinker.logger.info("Waiting for event %s", self.event_name)

        while not thinker.done.is_set():
            if not event.wait(thinker.reaction_time):
                continue
            thinker.logger.info("Event %s has been set", self.event_name)
            start = time.perf_counter()
            self._respond(thinker)
            thinker.logger.info(
                "Finished responding to event %s. Runtime: %.3f s",
                self.event_name,
                time.perf_counter() - start,
            )
            # Every responder to the event waits for the others: the last one to arrive
            # clears the event, so none responds twice to one setting
            try:
                arrival = barrier.wait()
            except threading.BrokenBarrierError:
                break  # the thinker is winding down: another responder will not arrive
            # The last to arrive ran the barrier's action and is never held after it: a
            # barrier aborted as the thinker winds down cannot keep it from reporting
            if arrival == barrier.parties - 1:
                thinker.logger.info(
                    "All responses to event %s complete. Time elapsed: %.3f s",
                    self.event_name,
                    time.perf_counter() - start,
                )

    def _respond(self, thinker: BaseThinker) -> None:
        """Call the method, with a reallocation thread running alongside if configured."""
        if not self.reallocate_resources:
            self.func(thinker)
            return
        max_slots = _resolve_count(thinker, self.max_slots, "max_slots")
        assert thinker.rec is not None  # checked when the agent started
        reallocator = ReallocatorThread(
            thinker.rec,
            gather_from=self.gather_from,
            gather_to=self.gather_to,
            disperse_to=self.disperse_to,
            max_slots=max_slots,
            slot_step=self.slot_step,
            logger_name=f"{thinker.logger.name}.allocate",
        )
        reallocator.start()
        try:
            self.func(thinker)
        finally:
            reallocator.stop_event.set()
            thinker.logger.info(
                "Waiting for the slots of %s to return to %s", self.gather_to, self.disperse_to
            )
            reallocator.join()


def _check_int_or_name(value: object, name: str) -> None:
    """Check a decorator option that is an integer count or an attribute name."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(
            f"{name} must be an integer or the name of a thinker attribute, not {value!r}"
        )
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _resolve_count(thinker: BaseThinker, value: int | str | None, name: str) -> int | None:
    """Turn an integer option, or the name of a thinker attribute holding one, into an int."""
    if value is None or isinstance(value, int):
        return value
    if not hasattr(thinker, value):
        if value.lower() == "none":
            return None
        raise ValueError(f"{name} refers to {value!r}, which is not an attribute of the thinker")
    resolved = getattr(thinker, value)
    if resolved is not None and (
        isinstance(resolved, bool) or not isinstance(resolved, int) or resolved < 0
    ):
        raise ValueError(
            f"{name} attribute {value!r} must hold a non-negative integer, not {resolved!r}"
        )
    return resolved


# ------------------------------------------------------------------------------ decorators
@overload
def agent(func: AgentFunction, startup: bool = False) -> AgentSpec: ...


@overload
def agent(func: None = None, startup: bool = False) -> Callable[[AgentFunction], AgentSpec]: ...


def agent(
    func: AgentFunction | None = None, startup: bool = False
) -> AgentSpec | Callable[[AgentFunction], AgentSpec]:
    """Mark a thinker method as an agent, which runs in its own thread once the thinker starts.

    Works bare (``@agent``) or called (``@agent()``, ``@agent(startup=True)``).

    Args:
        func: The method, when the decorator is used without parentheses; leave unset
        startup: Mark a start-up agent: its normal return does not stop the thinker (a
            raised exception still does)
    Returns:
        The agent spec, or a decorator that makes one
    """

    def decorator(f: AgentFunction) -> AgentSpec:
        return AgentSpec(f, startup=startup)

    return decorator if func is None else decorator(func)


@overload
def result_processor(func: AgentFunction, topic: str = "default") -> ResultProcessorSpec: ...


@overload
def result_processor(
    func: None = None, topic: str = "default"
) -> Callable[[AgentFunction], ResultProcessorSpec]: ...


def result_processor(
    func: AgentFunction | None = None, topic: str = "default"
) -> ResultProcessorSpec | Callable[[AgentFunction], ResultProcessorSpec]:
    """Mark a thinker method that is called with every result of one topic.

    The method receives one argument besides ``self``: the
    :class:`~colmena_core.models.Result`. After the thinker is done, the agent goes on until
    no task of its topic is still out (bounded by :attr:`BaseThinker.drain_timeout`).

    Args:
        func: The method, when the decorator is used without parentheses; leave unset
        topic: Topic whose results the agent handles
    Returns:
        The agent spec, or a decorator that makes one
    """

    def decorator(f: AgentFunction) -> ResultProcessorSpec:
        return ResultProcessorSpec(f, topic=topic)

    return decorator if func is None else decorator(func)


@overload
def task_submitter(
    func: AgentFunction, task_type: str | None = None, n_slots: int | str = 1
) -> TaskSubmitterSpec: ...


@overload
def task_submitter(
    func: None = None, task_type: str | None = None, n_slots: int | str = 1
) -> Callable[[AgentFunction], TaskSubmitterSpec]: ...


def task_submitter(
    func: AgentFunction | None = None, task_type: str | None = None, n_slots: int | str = 1
) -> TaskSubmitterSpec | Callable[[AgentFunction], TaskSubmitterSpec]:
    """Mark a thinker method that is called every time slots of a pool are acquired for it.

    The method runs holding the slots: it should put them to use (typically by sending a
    task) and make sure they are released later, e.g. by a result processor. The thinker
    needs a resource counter.

    Args:
        func: The method, when the decorator is used without parentheses; leave unset
        task_type: Pool to take slots from (``None`` for the unallocated slots)
        n_slots: Slots to take per call: an integer, or the name of a thinker attribute
            holding one (looked up before every request)
    Returns:
        The agent spec, or a decorator that makes one
    """

    _check_int_or_name(n_slots, "n_slots")

    def decorator(f: AgentFunction) -> TaskSubmitterSpec:
        return TaskSubmitterSpec(f, task_type=task_type, n_slots=n_slots)

    return decorator if func is None else decorator(func)


@overload
def event_responder(
    func: AgentFunction,
    event_name: str | None = None,
    reallocate_resources: bool = False,
    gather_from: str | None = None,
    gather_to: str | None = None,
    disperse_to: str | None = None,
    max_slots: int | str | None = None,
    slot_step: int = 1,
) -> EventResponderSpec: ...


@overload
def event_responder(
    func: None = None,
    event_name: str | None = None,
    reallocate_resources: bool = False,
    gather_from: str | None = None,
    gather_to: str | None = None,
    disperse_to: str | None = None,
    max_slots: int | str | None = None,
    slot_step: int = 1,
) -> Callable[[AgentFunction], EventResponderSpec]: ...


def event_responder(
    func: AgentFunction | None = None,
    event_name: str | None = None,
    reallocate_resources: bool = False,
    gather_from: str | None = None,
    gather_to: str | None = None,
    disperse_to: str | None = None,
    max_slots: int | str | None = None,
    slot_step: int = 1,
) -> EventResponderSpec | Callable[[AgentFunction], EventResponderSpec]:
    """Mark a thinker method that runs each time a :class:`threading.Event` is set.

    ``event_name`` names a thinker attribute holding the event. After the method returns,
    the event is cleared; when several agents respond to the same event, it is cleared once
    the last of them has returned, and none of them runs twice for one setting.

    With ``reallocate_resources=True`` a :class:`ReallocatorThread` runs while the method
    does: it moves slots from ``gather_from`` into ``gather_to`` (at most up to
    ``max_slots`` in that pool), and when the method returns hands every slot of
    ``gather_to`` over to ``disperse_to``.

    Args:
        func: The method, when the decorator is used without parentheses; leave unset
        event_name: Name of the thinker attribute holding the event
        reallocate_resources: Whether to move slots between pools while the method runs
        gather_from: Pool the slots are taken from
        gather_to: Pool the slots are moved into while the method runs
        disperse_to: Pool that receives all slots of ``gather_to`` afterwards
        max_slots: Most slots ``gather_to`` should hold: an integer, the name of a thinker
            attribute holding one, or ``None`` for no limit
        slot_step: Slots moved per transfer
    Returns:
        The agent spec, or a decorator that makes one
    Raises:
        ValueError: If ``event_name`` is missing or the reallocation options are invalid
    """
    EventResponderSpec.check_options(
        event_name, reallocate_resources, gather_from, gather_to, max_slots, slot_step
    )
    assert event_name is not None

    def decorator(f: AgentFunction) -> EventResponderSpec:
        return EventResponderSpec(
            f,
            event_name=event_name,
            reallocate_resources=reallocate_resources,
            gather_from=gather_from,
            gather_to=gather_to,
            disperse_to=disperse_to,
            max_slots=max_slots,
            slot_step=slot_step,
        )

    return decorator if func is None else decorator(func)


# -------------------------------------------------------------------------------- thinker
class _AgentDetails(threading.local):
    """Details local to one agent thread.

    Attributes:
        logger: Logger of the agent (the thinker's logger outside agent threads)
        name: Name of the agent (``None`` outside agent threads)
    """

    def __init__(self, default_logger: logging.Logger) -> None:
        self.logger = default_logger
        self.name: str | None = None


class BaseThinker(threading.Thread):
    """Base class of the steering program of a Colmena application.

    Write each operation of the program as a method that takes no inputs and produces no
    output, and mark it with the :func:`agent` decorator (or one of the special-purpose
    decorators). Each will run as a separate thread when the thinker starts:

    .. code-block:: python

        class ExampleThinker(BaseThinker):

            @agent
            def function(self):
                self.queues.send_inputs(1, method="simulate")

    Agents communicate with each other through attributes of the thinker (queues, events,
    locks) and with the task server through :attr:`queues`. The ``done`` event signals
    that the program should terminate. Each agent gets its own logger, available as
    :attr:`logger`.

    Start the thinker by calling ``.start()`` (or call :meth:`run` to run it in the
    current thread).

    Args:
        queue: Queues connecting the thinker to the task server
        resource_counter: Counter of compute slots shared by the agents
        daemon: Whether the thinker and its agent threads are daemon threads
        logger_name: Name of the thinker's logger (default: the class name); each agent
            logs to a child logger named after the agent
        drain_timeout: Seconds result processors keep waiting for outstanding results once
            the thinker is done; ``None`` waits for every result
        **kwargs: Other arguments for :class:`~threading.Thread`

    Attributes:
        queues: Queues to the task server (set to the client role)
        rec: Resource counter shared by the agents (``None`` when none was given)
        done: Event set when the agents should stop
        barriers: One :class:`threading.Barrier` per event that event responders watch,
            shared by the responders to that event (made when the thinker runs)
        local_details: Thread-local storage for each agent (holds ``name`` and ``logger``)
    """

    reaction_time: float = 0.5
    """Seconds agents wait on queues or events before checking ``done`` again."""

    def __init__(
        self,
        queue: ColmenaQueues,
        resource_counter: ResourceCounter | None = None,
        daemon: bool = True,
        logger_name: str | None = None,
        *,
        drain_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(daemon=daemon, **kwargs)
        self.logger_name = logger_name
        self.drain_timeout = drain_timeout

        self.queues = queue
        self.queues.set_role(QueueRole.CLIENT)
        self.rec: ResourceCounter | None = resource_counter

        self.done = threading.Event()
        self.local_details = _AgentDetails(self.make_logger())

        # Coordination between agents, built when the thinker runs
        self.barriers: dict[str, threading.Barrier] = {}
        self._senders_finished = threading.Event()  # All agents but result processors exited
        self._senders_left = 0
        self._senders_lock = threading.Lock()
        self.agent_errors: dict[str, BaseException] = {}
        """Exceptions raised by agents, by agent name (empty when every agent succeeded)"""

    # ---------------------------------------------------------------- resources
    @property
    def has_resource_counter(self) -> bool:
        """Whether the thinker has a resource counter (see :attr:`rec`)."""
        return self.rec is not None

    # ----------------------------------------------------------------- logging
    @property
    def logger(self) -> logging.Logger:
        """Logger of the agent running in the calling thread (the thinker's logger elsewhere)."""
        return self.local_details.logger

    @property
    def agent_name(self) -> str | None:
        """Name of the agent running in the active thread (``None`` outside agents)."""
        return self.local_details.name

    def make_logger(self, name: str | None = None) -> logging.Logger:
        """Get the thinker's logger, or one of its children.

        Args:
            name: Suffix of the child logger; ``None`` for the thinker's own logger
        Returns:
            Logger named ``<logger_name>[.<name>]``, where the thinker's name defaults to
            ``<module>.<class name>`` of the thinker
        """
        base = self.logger_name
        if base is None:
            base = f"{type(self).__module__}.{type(self).__name__}"
        return logging.getLogger(base if name is None else f"{base}.{name}")

    # ------------------------------------------------------------------ agents
    @classmethod
    def list_agents(cls) -> list[AgentSpec]:
        """Find the agents of this thinker class.

        Agents are inherited; a subclass attribute of the same name overrides an agent
        (with a plain method, it stops being an agent).

        Returns:
            Specs of the agents, in order of definition (base classes first)
        """
        resolved: dict[str, object] = {}
        for klass in reversed(cls.__mro__):
            resolved.update(vars(klass))
        return [value for value in resolved.values() if isinstance(value, AgentSpec)]

    def prepare_agent(self) -> None:
        """Hook run in each agent's thread before the agent starts.

        Override it to set up per-agent state; keep such state in :attr:`local_details`,
        which each agent thread sees separately.
        """

    def tear_down_agent(self) -> None:
        """Hook run in each agent's thread after the agent returned or failed.

        Override it to release per-agent state. Not called if :meth:`prepare_agent` raised.
        """

    def _launch_agent(
        self, spec: AgentSpec, finished: queue_module.Queue[tuple[AgentSpec, bool]]
    ) -> None:
        """Run one agent in the current thread: set up, run, record the outcome, tear down."""
        self.local_details.name = spec.name
        self.local_details.logger = self.make_logger(spec.name)
        prepared = success = False
        start = time.perf_counter()
        try:
            self.prepare_agent()
            prepared = True
            self.logger.info("%s %s started", spec.kind, spec.name)
            spec.run(self)
            success = True
            self.logger.info(
                "%s completed. Runtime: %.3f s", spec.name, time.perf_counter() - start
            )
        except BaseException as exc:
            stage = "" if prepared else " while preparing"
            self.logger.warning("%s failed%s: %r", spec.name, stage, exc, exc_info=exc)
            with self._senders_lock:
                self.agent_errors[spec.name] = exc
        finally:
            self._agent_exited(spec, success)
            if prepared:
                try:
                    self.tear_down_agent()
                except BaseException as exc:
                    self.logger.warning("Tear-down of %s failed: %r", spec.name, exc, exc_info=exc)
            finished.put((spec, success))

    def _agent_exited(self, spec: AgentSpec, success: bool) -> None:
        """Signal the other agents that ``spec`` exited."""
        if not (success and spec.startup):
            self.done.set()
        if self.done.is_set():
            # Responders waiting for this one at a barrier must not wait forever
            for barrier in self.barriers.values():
                barrier.abort()
        if not isinstance(spec, ResultProcessorSpec):
            with self._senders_lock:
                self._senders_left -= 1
                if self._senders_left == 0:
                    self._senders_finished.set()

    def run(self) -> None:
        """Start one thread per agent and return once every agent has finished.

        The first agent to return (start-up agents aside) sets ``done``, which tells the
        others to wind down. An agent that raises does not make this method raise: the
        error and its traceback are logged at ``WARNING`` and ``done`` is set.
        """
        specs = self.list_agents()
        self.logger.info(
            "%s started with %d agents. Process id: %d",
            type(self).__name__,
            len(specs),
            os.getpid(),
        )
        if not specs:
            self.logger.warning("%s has no agents: nothing to run", type(self).__name__)
            return

        self.barriers.clear()
        for event_name, members in Counter(
            s.event_name for s in specs if isinstance(s, EventResponderSpec)
        ).items():
            self.barriers[event_name] = threading.Barrier(
                members, action=functools.partial(self._clear_event, event_name)
            )
        self._senders_left = sum(1 for s in specs if not isinstance(s, ResultProcessorSpec))
        if self._senders_left == 0:
            self._senders_finished.set()

        finished: queue_module.Queue[tuple[AgentSpec, bool]] = queue_module.Queue()
        threads = [
            threading.Thread(
                target=self._launch_agent,
                args=(spec, finished),
                name=f"{self.name}-{spec.name}",
                daemon=self.daemon,
            )
            for spec in specs
        ]
        for thread in threads:
            thread.start()
        self.logger.info("Launched all %d agents", len(threads))

        failures = []
        for remaining in range(len(threads) - 1, -1, -1):
            spec, success = finished.get()
            if not success:
                failures.append(spec.name)
            self.logger.info(
                "%s %s. %d/%d agents remain active",
                spec.name,
                "completed" if success else "failed",
                remaining,
                len(threads),
            )
        for thread in threads:
            thread.join()

        if failures:
            self.logger.warning(
                "%s completed; agents that failed: %s", type(self).__name__, ", ".join(failures)
            )
        else:
            self.logger.info("%s completed", type(self).__name__)

    def _clear_event(self, event_name: str) -> None:
        """Clear the event once all its responders finished (the action of its barrier)."""
        event = getattr(self, event_name, None)
        if isinstance(event, threading.Event):
            event.clear()
