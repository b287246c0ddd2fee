"""Methods and thinker factories that the service tests load by import path."""

from __future__ import annotations

import os
from pathlib import Path

from colmena_core.models import Result
from colmena_core.queue import ColmenaQueues
from colmena_core.thinker import BaseThinker, agent, result_processor


def double(x: float) -> float:
    """Twice the argument."""
    return 2 * x


def wait_for_file(path: str) -> str:
    """Block until ``path`` exists (the test creates it), then return its content."""
    import time

    target = Path(path)
    deadline = time.monotonic() + 120
    while not target.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)  # a stand-in for a long computation, released by the test
    return target.read_text()


METHODS = [double, wait_for_file]
NOT_A_LIST = 42


class Doubler(BaseThinker):
    """Sends N tasks and records their results, in a file named by COLMENA_TEST_OUTPUT."""

    def __init__(self, queues: ColmenaQueues, count: int) -> None:
        super().__init__(queues)
        self.count = count
        self.values: list[float] = []

    @agent(startup=True)
    def send(self) -> None:
        for i in range(self.count):
            self.queues.send_inputs(i, method="double", topic="work")

    @result_processor(topic="work")
    def collect(self, result: Result) -> None:
        assert result.success, result.failure_info
        self.values.append(result.value)
        if len(self.values) == self.count:
            Path(os.environ["COLMENA_TEST_OUTPUT"]).write_text(
                ",".join(map(str, sorted(self.values)))
            )
            self.done.set()


def make_doubler(queues: ColmenaQueues) -> Doubler:
    return Doubler(queues, int(os.environ.get("COLMENA_TEST_COUNT", "5")))


class Sender(BaseThinker):
    """Sends tasks that wait for a file, then waits until stopped (for SIGTERM tests)."""

    @agent
    def send(self) -> None:
        for i in range(int(os.environ.get("COLMENA_TEST_COUNT", "3"))):
            self.queues.send_inputs(
                os.environ["COLMENA_TEST_RELEASE"],
                method="wait_for_file",
                topic="work",
                task_info={"i": i},
            )
        Path(os.environ["COLMENA_TEST_OUTPUT"]).write_text("sent")
        self.done.wait()


def make_sender(queues: ColmenaQueues) -> Sender:
    return Sender(queues)


class Collector(BaseThinker):
    """Reads the results of earlier tasks (sent by a previous run with the same client ID)."""

    @agent
    def collect(self) -> None:
        count = int(os.environ.get("COLMENA_TEST_COUNT", "3"))
        seen = []
        for _ in range(count):
            result = self.queues.get_result(topic="work", timeout=120)
            assert result is not None and result.success
            seen.append(result.task_info["i"])
        Path(os.environ["COLMENA_TEST_OUTPUT"]).write_text(",".join(map(str, sorted(seen))))


def make_collector(queues: ColmenaQueues) -> Collector:
    return Collector(queues)


def make_nothing(queues: ColmenaQueues) -> str:
    return "not a thinker"


class Failing(BaseThinker):
    @agent
    def explode(self) -> None:
        raise RuntimeError("agent failure")


def make_failing(queues: ColmenaQueues) -> Failing:
    return Failing(queues)


class Mixed(BaseThinker):
    """Sends COLMENA_TEST_COUNT tasks to the gateway tests' methods (every fourth fails, the
    others take COLMENA_TEST_NAP seconds), one every COLMENA_TEST_PACE seconds, and finishes
    once every result came back."""

    def __init__(self, queues: ColmenaQueues) -> None:
        super().__init__(queues)
        self.count = int(os.environ.get("COLMENA_TEST_COUNT", "12"))
        self.pace = float(os.environ.get("COLMENA_TEST_PACE", "0"))
        self.nap = float(os.environ.get("COLMENA_TEST_NAP", "0"))
        self.received = 0

    @agent(startup=True)
    def send(self) -> None:
        for i in range(self.count):
            if i % 4 == 3:
                self.queues.send_inputs(f"bad input {i}", method="fail", topic="work")
            else:
                self.queues.send_inputs(self.nap, i, method="nap", topic="work")
            if self.pace and self.done.wait(self.pace):
                return

    @result_processor(topic="work")
    def collect(self, result: Result) -> None:
        self.received += 1
        if self.received == self.count:
            self.done.set()


def make_mixed(queues: ColmenaQueues) -> Mixed:
    return Mixed(queues)
