"""Tests for the thinker base class and its agent decorators."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from math import inf
from typing import Any

import pytest

from colmena_core.exceptions import KillSignalException
from colmena_core.models import Result
from colmena_core.queue import ColmenaQueues, PipeQueues, QueueRole
from colmena_core.thinker import (
    AgentSpec,
    BaseThinker,
    EventResponderSpec,
    ResourceCounter,
    ResultProcessorSpec,
    TaskSubmitterSpec,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)

WAIT = 10.0
"""Upper bound, in seconds, on any wait that is expected to succeed."""


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def queues() -> PipeQueues:
    return PipeQueues(topics=["simulate", "generate"])


@contextmanager
def task_server(queues: ColmenaQueues, functions: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """Serve tasks from ``queues`` in a background thread while the block runs."""
    server_queues = copy.copy(queues)  # Shares the pipes, has its own role
    server_queues.set_role(QueueRole.SERVER)

    def serve() -> None:
        while True:
            try:
                _, task = server_queues.get_task()
            except KillSignalException:
                return
            task.deserialize()
            assert task.method is not None
            task.set_result(functions[task.method](*task.args, **task.kwargs))
            server_queues.send_result(task)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        queues.send_kill_signal()
        thread.join(timeout=WAIT)
        assert not thread.is_alive(), "task server did not stop"


def run_thinker(thinker: BaseThinker, timeout: float = WAIT) -> None:
    """Run a thinker in its own thread and fail if it does not finish in time."""
    thinker.start()
    thinker.join(timeout=timeout)
    assert not thinker.is_alive(), "thinker did not finish in time"


class FastThinker(BaseThinker):
    """Thinker that notices ``done`` quickly, to keep tests short."""

    reaction_time = 0.05


class ObservedEvent(threading.Event):
    """Event that reports when it is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.cleared = threading.Event()

    def clear(self) -> None:
        super().clear()
        self.cleared.set()


# -------------------------------------------------------------------------- decorators
def test_decorators_bare_and_called() -> None:
    class Thinker(FastThinker):
        @agent
        def bare(self) -> str:
            return f"bare:{self.agent_name}"

        @agent()
        def called(self) -> None:
            pass

        @agent(startup=True)
        def startup(self) -> None:
            pass

        @result_processor
        def process_default(self, result: Result) -> Any:
            return result

        @result_processor(topic="simulate")
        def process_simulate(self, result: Result) -> None:
            pass

        @task_submitter
        def submit_bare(self) -> None:
            pass

        @task_submitter(task_type="sim", n_slots="batch")
        def submit(self) -> None:
            pass

        @event_responder(
            event_name="flag",
            reallocate_resources=True,
            gather_from="a",
            gather_to="b",
            max_slots=2,
        )
        def respond(self) -> None:
            pass

    specs = {spec.name: spec for spec in Thinker.list_agents()}
    assert set(specs) == {
        "bare",
        "called",
        "startup",
        "process_default",
        "process_simulate",
        "submit_bare",
        "submit",
        "respond",
    }
    assert type(specs["bare"]) is AgentSpec and not specs["bare"].startup
    assert not specs["called"].startup and specs["startup"].startup
    assert isinstance(specs["process_default"], ResultProcessorSpec)
    assert specs["process_default"].topic == "default"
    assert isinstance(specs["process_simulate"], ResultProcessorSpec)
    assert specs["process_simulate"].topic == "simulate"
    assert isinstance(specs["submit_bare"], TaskSubmitterSpec)
    assert specs["submit_bare"].task_type is None and specs["submit_bare"].n_slots == 1
    assert isinstance(specs["submit"], TaskSubmitterSpec)
    assert specs["submit"].task_type == "sim" and specs["submit"].n_slots == "batch"
    respond = specs["respond"]
    assert isinstance(respond, EventResponderSpec)
    assert (respond.event_name, respond.gather_from, respond.gather_to, respond.max_slots) == (
        "flag",
        "a",
        "b",
        2,
    )
    assert respond.disperse_to is None and respond.slot_step == 1

    # The specs keep the name and docs of the function, and still work as methods
    assert Thinker.bare.__name__ == "bare"
    assert Thinker.process_default is specs["process_default"]
    thinker = Thinker(PipeQueues())
    assert thinker.bare() == "bare:None"
    assert Thinker.bare(thinker) == "bare:None"
    assert thinker.process_default("a result") == "a result"


def test_decorator_errors() -> None:
    with pytest.raises(ValueError, match="event_name"):
        event_responder(lambda self: None)
    with pytest.raises(ValueError, match="different pools"):
        event_responder(event_name="e", reallocate_resources=True, gather_from="a", gather_to="a")
    with pytest.raises(ValueError, match="slot_step"):
        event_responder(event_name="e", slot_step=0)(lambda self: None)
    with pytest.raises(ValueError, match="n_slots"):
        task_submitter(n_slots=-1)(lambda self: None)
    with pytest.raises(ValueError, match="max_slots"):
        event_responder(event_name="e", max_slots=1.5)(lambda self: None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="by keyword"):
        result_processor("simulate")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="already decorated"):
        agent(agent(lambda self: None))


def test_list_agents_inheritance() -> None:
    class Base(FastThinker):
        @agent
        def first(self) -> None:
            pass

        @agent
        def second(self) -> None:
            pass

        @result_processor
        def third(self, result: Result) -> None:
            pass

        def helper(self) -> None:
            pass

    class Child(Base):
        @agent(startup=True)
        def first(self) -> None:  # Overridden by another agent
            pass

        def second(self) -> None:  # Overridden by a plain method: no longer an agent
            pass

        @agent
        def fourth(self) -> None:
            pass

    assert [spec.name for spec in Base.list_agents()] == ["first", "second", "third"]
    child_agents = Child.list_agents()
    assert [spec.name for spec in child_agents] == ["first", "third", "fourth"]
    assert child_agents[0] is Child.__dict__["first"] and child_agents[0].startup
    assert child_agents[1] is Base.__dict__["third"]
    assert BaseThinker.list_agents() == []


# ---------------------------------------------------------------------------- life-cycle
def test_agents_run_concurrently(queues: PipeQueues) -> None:
    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.barrier = threading.Barrier(3, timeout=WAIT)
            self.seen: dict[str, tuple[str | None, str, int]] = {}

        def _record(self) -> None:
            self.barrier.wait()  # All three agents run at the same time
            assert self.agent_name is not None
            self.seen[self.agent_name] = (self.agent_name, self.logger.name, threading.get_ident())

        @agent
        def one(self) -> None:
            self._record()

        @agent()
        def two(self) -> None:
            self._record()

        @agent(startup=True)
        def three(self) -> None:
            self._record()

    thinker = Thinker(queues)
    assert queues.role is QueueRole.CLIENT
    assert thinker.daemon
    assert thinker.agent_name is None  # Outside of agent threads
    run_thinker(thinker)
    assert thinker.done.is_set()
    assert {name: seen[:2] for name, seen in thinker.seen.items()} == {
        "one": ("one", f"{__name__}.Thinker.one"),
        "two": ("two", f"{__name__}.Thinker.two"),
        "three": ("three", f"{__name__}.Thinker.three"),
    }
    idents = {seen[2] for seen in thinker.seen.values()}
    assert len(idents) == 3 and thinker.ident not in idents


def test_thinker_without_agents(queues: PipeQueues, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    run_thinker(FastThinker(queues))
    assert "no agents" in caplog.text


def test_startup_agent_does_not_set_done(queues: PipeQueues) -> None:
    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.startup_exited = threading.Event()
            self.done_after_startup: bool | None = None

        def tear_down_agent(self) -> None:
            # Runs after the agent has reported its exit
            if self.agent_name == "startup":
                self.startup_exited.set()

        @agent(startup=True)
        def startup(self) -> None:
            pass

        @agent
        def main(self) -> None:
            assert self.startup_exited.wait(WAIT)
            self.done_after_startup = self.done.is_set()

    thinker = Thinker(queues)
    run_thinker(thinker)
    assert thinker.done_after_startup is False
    assert thinker.done.is_set()  # Set once the main agent exits


@pytest.mark.parametrize("startup", [False, True])
def test_agent_exception_is_logged_and_stops_others(
    queues: PipeQueues, caplog: pytest.LogCaptureFixture, startup: bool
) -> None:
    caplog.set_level(logging.INFO)

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues, **kwargs: Any) -> None:
            super().__init__(queues, **kwargs)
            self.waiter_saw_done = False

        @agent(startup=startup)
        def broken(self) -> None:
            raise RuntimeError("agent exploded")

        @agent
        def waiter(self) -> None:
            self.waiter_saw_done = self.done.wait(WAIT)

    thinker = Thinker(queues, logger_name="campaign")
    run_thinker(thinker)  # run() itself does not raise
    assert thinker.waiter_saw_done
    failures = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "campaign.broken"
    ]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is RuntimeError
    assert "agent exploded" in caplog.text and "Traceback" in caplog.text
    assert any(
        "agents that failed: broken" in r.getMessage()
        for r in caplog.records
        if r.name == "campaign"
    )


def test_logger_names(queues: PipeQueues, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    class Named(FastThinker):
        @agent
        def worker(self) -> None:
            self.logger.info("hello from the worker")

    # As in the original Colmena: <module>.<Thinker>.<agent>
    default = Named(queues)
    assert default.logger.name == f"{__name__}.Named"
    assert default.make_logger().name == f"{__name__}.Named"
    assert default.make_logger("extra").name == f"{__name__}.Named.extra"
    run_thinker(default)
    agent_records = [r for r in caplog.records if r.name == f"{__name__}.Named.worker"]
    assert "hello from the worker" in [r.getMessage() for r in agent_records]
    # Each agent reports how long it ran when it ends
    assert any(r.getMessage().startswith("worker completed. Runtime:") for r in agent_records)

    custom = Named(PipeQueues(), logger_name="campaign")
    assert custom.logger.name == "campaign"
    caplog.clear()
    run_thinker(custom)
    assert any(
        r.name == "campaign.worker" and r.getMessage() == "hello from the worker"
        for r in caplog.records
    )


def test_local_details_and_setup_teardown(queues: PipeQueues) -> None:
    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.barrier = threading.Barrier(2, timeout=WAIT)
            self.lock = threading.Lock()
            self.prepared: list[str | None] = []
            self.torn_down: list[tuple[str | None, str]] = []
            self.read_back: dict[str, str] = {}

        def prepare_agent(self) -> None:
            with self.lock:
                self.prepared.append(self.agent_name)
            self.local_details.resource = f"connection-{self.agent_name}"

        def tear_down_agent(self) -> None:
            with self.lock:
                self.torn_down.append((self.agent_name, self.local_details.resource))

        def _use(self) -> None:
            self.barrier.wait()  # Both agents have prepared their own resource
            assert self.agent_name is not None
            self.read_back[self.agent_name] = self.local_details.resource

        @agent
        def alpha(self) -> None:
            self._use()

        @agent
        def beta(self) -> None:
            self._use()

    thinker = Thinker(queues)
    run_thinker(thinker)
    assert sorted(thinker.prepared, key=str) == ["alpha", "beta"]
    assert thinker.read_back == {"alpha": "connection-alpha", "beta": "connection-beta"}
    assert sorted(thinker.torn_down) == [("alpha", "connection-alpha"), ("beta", "connection-beta")]
    assert not hasattr(thinker.local_details, "resource")  # Not set in this thread


def test_failed_preparation_skips_tear_down(
    queues: PipeQueues, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.ran: list[str | None] = []
            self.torn_down: list[str | None] = []

        def prepare_agent(self) -> None:
            if self.agent_name == "fragile":
                raise OSError("cannot connect")

        def tear_down_agent(self) -> None:
            self.torn_down.append(self.agent_name)

        @agent(startup=True)
        def fragile(self) -> None:
            self.ran.append(self.agent_name)

        @agent
        def sturdy(self) -> None:
            self.done.wait(WAIT)
            self.ran.append(self.agent_name)

    thinker = Thinker(queues)
    run_thinker(thinker)
    assert thinker.ran == ["sturdy"]
    assert thinker.torn_down == ["sturdy"]
    assert "fragile failed while preparing" in caplog.text and "cannot connect" in caplog.text


def test_resource_counter_attribute(queues: PipeQueues) -> None:
    without = FastThinker(queues)
    assert not without.has_resource_counter
    assert without.rec is None  # as in the original Colmena
    counter = ResourceCounter(2, ["sim"])
    without.rec = counter
    assert without.has_resource_counter and without.rec is counter
    assert FastThinker(PipeQueues(), resource_counter=counter).rec is counter


# --------------------------------------------------------------------- special-purpose agents
def test_quickstart_thinker(queues: PipeQueues) -> None:
    """The two-agent thinker of the quickstart runs unchanged."""

    def target_function(x: float) -> float:
        return x**2

    def task_generator(best_to_date: float) -> float:
        return best_to_date - 0.5

    class Thinker(FastThinker):
        def __init__(self, queue: ColmenaQueues) -> None:
            super().__init__(queue)
            self.remaining_guesses = 10
            self.best_guess = 10.0
            self.best_result = inf

        @agent
        def consumer(self) -> None:
            for _ in range(self.remaining_guesses):
                result = self.queues.get_result(topic="simulate", timeout=WAIT)
                assert result is not None
                if result.value < self.best_result:
                    self.best_result = result.value
                    self.best_guess = result.args[0]

        @agent
        def producer(self) -> None:
            while not self.done.is_set():
                self.queues.send_inputs(self.best_guess, method="task_generator", topic="generate")
                result = self.queues.get_result(topic="generate", timeout=WAIT)
                assert result is not None
                self.logger.info(f"Created a new guess: {result.value:.2f}")
                self.queues.send_inputs(result.value, method="target_function", topic="simulate")

    thinker = Thinker(queues)
    with task_server(
        queues, {"target_function": target_function, "task_generator": task_generator}
    ):
        run_thinker(thinker)
    assert thinker.best_result < 100


def test_submitter_and_processor(queues: PipeQueues) -> None:
    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues, resource_counter=ResourceCounter(2, ["sim"]))
            self.rec.reallocate(None, "sim", 2)
            self.to_run = list(range(8))
            self.results: list[tuple[int, int]] = []
            self.max_in_flight = 0

        @task_submitter(task_type="sim", n_slots=1)
        def submit(self) -> None:
            self.max_in_flight = max(self.max_in_flight, self.queues.active_count + 1)
            if self.to_run:
                self.queues.send_inputs(self.to_run.pop(0), method="double", topic="simulate")
            else:
                self.rec.release("sim", 1)
                self.done.set()

        @result_processor(topic="simulate")
        def process(self, result: Result) -> None:
            self.results.append((result.args[0], result.value))
            self.rec.release("sim", 1)

    thinker = Thinker(queues)
    with task_server(queues, {"double": lambda x: 2 * x}):
        run_thinker(thinker)
    assert sorted(thinker.results) == [(i, 2 * i) for i in range(8)]
    assert thinker.max_in_flight <= 2  # Never more tasks in flight than slots
    assert queues.active_count == 0


def test_submitter_n_slots_from_attribute(queues: PipeQueues) -> None:
    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues, resource_counter=ResourceCounter(5, ["sim"]))
            self.rec.reallocate(None, "sim", 5)
            self.batch_size = 2
            self.available_after: list[int] = []

        @task_submitter(task_type="sim", n_slots="batch_size")
        def submit(self) -> None:
            self.available_after.append(self.rec.available_slots("sim"))
            if len(self.available_after) == 2:
                self.batch_size = 1  # Read again before the next request

        @agent
        def stopper(self) -> None:
            # Finish once the submitter has drawn every slot
            with self.rec._cond:
                assert self.rec._cond.wait_for(
                    lambda: self.rec._available["sim"] == 0, timeout=WAIT
                )

    thinker = Thinker(queues)
    run_thinker(thinker)
    assert thinker.available_after == [3, 1, 0]


@pytest.mark.parametrize(
    ("n_slots", "rec", "message"),
    [
        ("missing", True, "not an attribute"),
        ("label", True, "non-negative integer"),
        (1, False, "resource counter"),
    ],
)
def test_submitter_misconfigured(
    queues: PipeQueues,
    caplog: pytest.LogCaptureFixture,
    n_slots: int | str,
    rec: bool,
    message: str,
) -> None:
    caplog.set_level(logging.WARNING)

    class Thinker(FastThinker):
        label = "two"

        @task_submitter(task_type="sim", n_slots=n_slots)
        def submit(self) -> None:
            pass

    thinker = Thinker(queues, resource_counter=ResourceCounter(1, ["sim"]) if rec else None)
    run_thinker(thinker)
    assert message in caplog.text


def test_processor_drains_results_after_done(queues: PipeQueues) -> None:
    """Results of tasks sent before (or while) the thinker stops are all processed."""

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.results: list[int] = []

        @agent
        def sender(self) -> None:
            for i in range(5):
                self.queues.send_inputs(i, method="after_done", topic="simulate")
            # Returning sets done while every task is still running

        @agent
        def late_sender(self) -> None:
            # Sends only after the thinker is done; its tasks must be processed too
            assert self.done.wait(WAIT)
            for i in range(5, 8):
                self.queues.send_inputs(i, method="after_done", topic="simulate")

        @result_processor(topic="simulate")
        def process(self, result: Result) -> None:
            assert self.done.is_set()
            self.results.append(result.value)

    thinker = Thinker(queues)

    def after_done(x: int) -> int:
        assert thinker.done.wait(WAIT)
        return x

    with task_server(queues, {"after_done": after_done}):
        run_thinker(thinker)
    assert sorted(thinker.results) == list(range(8))
    assert queues.active_count == 0


def test_processor_drain_timeout(queues: PipeQueues, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    release = threading.Event()

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues, drain_timeout=0.2)
            self.results: list[Result] = []

        @agent
        def sender(self) -> None:
            self.queues.send_inputs(1, method="stuck", topic="simulate")

        @result_processor(topic="simulate")
        def process(self, result: Result) -> None:
            self.results.append(result)

    thinker = Thinker(queues)
    assert thinker.drain_timeout == 0.2
    with task_server(queues, {"stuck": lambda x: release.wait(WAIT) and x}):
        try:
            run_thinker(thinker)
        finally:
            release.set()
    assert thinker.results == []
    assert "waiting for 1 results with topic simulate" in caplog.text
    assert "Gave up waiting for 1 results" in caplog.text


def test_event_responders_share_event(queues: PipeQueues, caplog: pytest.LogCaptureFixture) -> None:
    """The event is cleared once every responder finished, and each responds once per set."""
    caplog.set_level(logging.INFO)

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.flag = ObservedEvent()
            self.slow_gate = threading.Event()
            self.fast_finished = threading.Event()
            self.calls: dict[str, int] = {"fast": 0, "slow": 0}
            self.flag_set_after_fast: bool | None = None

        @event_responder(event_name="flag")
        def fast(self) -> None:
            self.calls["fast"] += 1
            self.fast_finished.set()

        @event_responder(event_name="flag")
        def slow(self) -> None:
            assert self.slow_gate.wait(WAIT)
            self.calls["slow"] += 1

        @agent
        def trigger(self) -> None:
            for _ in range(2):
                self.flag.cleared.clear()
                self.flag.set()
                assert self.fast_finished.wait(WAIT)
                self.fast_finished.clear()
                # The fast responder is done, but the slow one still runs: the event stays set
                self.flag_set_after_fast = self.flag.is_set()
                self.slow_gate.set()
                assert self.flag.cleared.wait(WAIT)
                self.slow_gate.clear()
                assert not self.flag.is_set()

    thinker = Thinker(queues)
    run_thinker(thinker)
    assert thinker.flag_set_after_fast is True
    assert thinker.calls == {"fast": 2, "slow": 2}
    # The responders met at the thinker's barrier for that event, as in the original
    assert set(thinker.barriers) == {"flag"} and thinker.barriers["flag"].parties == 2
    complete = [r for r in caplog.records if "All responses to event flag complete" in r.message]
    assert len(complete) == 2  # once per setting of the event, by one of the responders


@pytest.mark.parametrize("max_slots", [2, "ml_cap", None])
def test_event_responder_reallocates(queues: PipeQueues, max_slots: int | str | None) -> None:
    expected_gathered = 4 if max_slots is None else 2

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues, resource_counter=ResourceCounter(4, ["sim", "ml"]))
            self.rec.reallocate(None, "sim", 4)
            self.ml_cap = 2
            self.retrain = ObservedEvent()
            self.gathered: int | None = None

        @event_responder(
            event_name="retrain",
            reallocate_resources=True,
            gather_from="sim",
            gather_to="ml",
            disperse_to="sim",
            max_slots=max_slots,
        )
        def train(self) -> None:
            # Slots arrive in the background while the function runs
            with self.rec._cond:
                assert self.rec._cond.wait_for(
                    lambda: self.rec._allocated["ml"] == expected_gathered, timeout=WAIT
                )
            self.gathered = self.rec.allocated_slots("ml")
            assert self.rec.acquire("ml", 1, timeout=WAIT)
            self.rec.release("ml", 1)

        @agent
        def trigger(self) -> None:
            self.retrain.set()
            assert self.retrain.cleared.wait(WAIT)

    thinker = Thinker(queues)
    run_thinker(thinker)
    assert thinker.gathered == expected_gathered
    rec = thinker.rec
    assert rec is not None
    # Once the function finished, every slot went back to the simulation pool
    assert rec.allocated_slots("ml") == 0
    assert rec.allocated_slots("sim") == 4 and rec.available_slots("sim") == 4


@pytest.mark.parametrize(
    ("attributes", "message"),
    [({}, "must be a threading.Event"), ({"flag": "not an event"}, "must be a threading.Event")],
)
def test_event_responder_misconfigured(
    queues: PipeQueues, caplog: pytest.LogCaptureFixture, attributes: dict[str, Any], message: str
) -> None:
    caplog.set_level(logging.WARNING)

    class Thinker(FastThinker):
        @event_responder(event_name="flag")
        def respond(self) -> None:
            pass

    thinker = Thinker(queues)
    for name, value in attributes.items():
        setattr(thinker, name, value)
    run_thinker(thinker)
    assert message in caplog.text


def test_event_responder_reallocation_needs_counter(
    queues: PipeQueues, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    class Thinker(FastThinker):
        def __init__(self, queues: ColmenaQueues) -> None:
            super().__init__(queues)
            self.flag = threading.Event()

        @event_responder(
            event_name="flag", reallocate_resources=True, gather_from="a", gather_to="b"
        )
        def respond(self) -> None:
            pass

    run_thinker(Thinker(queues))
    assert "needs a resource counter" in caplog.text
