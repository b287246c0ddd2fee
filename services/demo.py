"""The demo campaign: the quickstart's search for the minimum of f(x) = x**2.

It is what ``make demo`` and ``examples/quickstart.py`` run on pipes, and what the services
run through RabbitMQ (``docker compose up``, the local launcher)::

    colmena taskserver --methods colmena_services.demo:METHODS \\
                       --parsl-config colmena_services.demo:parsl_config
    colmena thinker --thinker-factory colmena_services.demo:make_thinker --topics generate,simulate

A producer agent asks the task server for a new guess near the best point so far and sends
it to be evaluated; a consumer agent reads the evaluations and keeps the best one.
"""

from __future__ import annotations

import os
from math import inf
from random import random
from typing import Any

from colmena_core.exceptions import TimeoutException
from colmena_core.models import Result
from colmena_core.queue import ColmenaQueues
from colmena_core.thinker import BaseThinker, agent

from .record import ResultsFile

TOPICS = ("generate", "simulate")

POLL = 0.5
"""Seconds an agent waits for a result before it checks whether it should stop."""


def target_function(x: float) -> float:
    """The function to minimize, as costly as a small simulation (a few tenths of a second)."""
    import time
    from random import random

    time.sleep(0.1 + 0.3 * random())
    return x**2


def task_generator(best_to_date: float) -> float:
    """A new point within ±0.5 of the best so far."""
    from random import random

    return best_to_date + random() - 0.5


METHODS = [target_function, task_generator]


class Thinker(BaseThinker):
    """The two agents of the quickstart."""

    def __init__(
        self, queues: ColmenaQueues, guesses: int = 40, results_file: ResultsFile | None = None
    ) -> None:
        super().__init__(queues)
        self.results_file = results_file
        self.remaining_guesses = guesses
        self.best_guess = 1.0 + 2.0 * random()  # start a few steps away from the minimum
        self.best_result = inf

    def _next_result(self, topic: str) -> Result | None:
        """The next result of ``topic``, or ``None`` once the thinker is told to stop."""
        while not self.done.is_set():
            try:
                result = self.queues.get_result(topic=topic, timeout=POLL)
            except TimeoutException:
                continue
            if result is not None:
                if self.results_file is not None:
                    self.results_file.record(result)
                return result
        return None

    @agent
    def consumer(self) -> None:
        for i in range(self.remaining_guesses):
            result = self._next_result("simulate")
            if result is None:
                return
            if not result.success:
                self.logger.warning("Evaluation failed: %s", result.failure_info)
                continue
            if result.value < self.best_result:
                self.best_result = result.value
                self.best_guess = result.args[0]
            self.logger.info(
                "[%d/%d] f(%.3f) = %.4f; best so far f(%.3f) = %.4f",
                i + 1,
                self.remaining_guesses,
                result.args[0],
                result.value,
                self.best_guess,
                self.best_result,
            )

    @agent
    def producer(self) -> None:
        while not self.done.is_set():
            self.queues.send_inputs(self.best_guess, method="task_generator", topic="generate")
            result = self._next_result("generate")
            if result is None:
                return
            if not result.success:
                self.logger.warning("Generating a guess failed: %s", result.failure_info)
                continue
            self.logger.info("Created a new guess: %.2f", result.value)
            self.queues.send_inputs(result.value, method="target_function", topic="simulate")

    def summary(self) -> str:
        """What the campaign found."""
        return f"Best point found: x = {self.best_guess:.4f}, f(x) = {self.best_result:.6f}"


def make_thinker(queues: ColmenaQueues) -> Thinker:
    """Thinker factory for the thinker service (``COLMENA_DEMO_GUESSES`` sets the budget)."""
    return Thinker(queues, guesses=int(os.environ.get("COLMENA_DEMO_GUESSES", "40")))


def parsl_config(workers: int = 2, run_dir: str | None = None) -> Any:
    """A HighThroughputExecutor with ``workers`` (or ``COLMENA_DEMO_WORKERS``) local workers."""
    from colmena_core.task_server.parsl import local_config

    return local_config(int(os.environ.get("COLMENA_DEMO_WORKERS", workers)), run_dir)
