"""The original Colmena's quickstart application, moved to ``colmena_core``.

``docs/migrating.md`` walks through this file: the application as written for Colmena, with
``colmena`` replaced by ``colmena_core`` in its imports; then the same thinker and methods on
RabbitMQ, and as services. ``test_compat_apps.py`` runs every step.

Run it on pipes with ``python migration_app.py``, on RabbitMQ with
``python migration_app.py amqp://user:password@host:5672/``.
"""

from __future__ import annotations

import logging
import sys
from math import inf
from random import random

from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.thinker import BaseThinker, agent


# 1. The functions to run
def target_function(x: float) -> float:
    """The expensive simulation."""
    return x**2


def task_generator(best_to_date: float) -> float:
    """Propose a new point near the best one."""
    return best_to_date + random() - 0.5


METHODS = [target_function, task_generator]
"""What the task server serves (``colmena taskserver --methods migration_app:METHODS``)."""


def make_config(run_dir: str | None = None) -> Config:
    """Parsl on this machine: two threads (``local_config(workers)`` for worker processes)."""
    return Config(
        executors=[ThreadPoolExecutor(label="threads", max_threads=2)],
        run_dir=run_dir or "runinfo",
        strategy="none",
    )


# 2. The thinker
class Thinker(BaseThinker):
    """A producer proposes points, a consumer keeps the best."""

    def __init__(self, queues: ColmenaQueues, guesses: int = 6) -> None:
        super().__init__(queues)
        self.remaining_guesses = guesses
        self.best_guess = 10.0
        self.best_result = inf

    @agent
    def consumer(self) -> None:
        for _ in range(self.remaining_guesses):
            result = self.queues.get_result(topic="simulate")
            assert result is not None and result.success, result
            if result.value < self.best_result:
                self.best_result = result.value
                self.best_guess = result.args[0]
        self.logger.info("Best guess: %.4f, value %.4f", self.best_guess, self.best_result)

    @agent
    def producer(self) -> None:
        while not self.done.is_set():
            self.queues.send_inputs(self.best_guess, method="task_generator", topic="generate")
            result = self.queues.get_result(topic="generate")
            assert result is not None and result.success, result
            self.logger.info("Created a new guess: %.2f", result.value)
            self.queues.send_inputs(result.value, method="target_function", topic="simulate")


TOPICS = ["generate", "simulate"]


def make_thinker(queues: ColmenaQueues) -> Thinker:
    """What the thinker service runs (``colmena thinker --thinker-factory ...``)."""
    return Thinker(queues)


# 3. The main program
def make_queues(broker_url: str | None = None) -> ColmenaQueues:
    """Pipes on one machine; a RabbitMQ campaign when given a broker."""
    if broker_url is None:
        return PipeQueues(topics=TOPICS)
    from colmena_core.queue.rabbitmq import RabbitMQQueues

    return RabbitMQQueues(topics=TOPICS, url=broker_url, campaign="quickstart")


def main(queues: ColmenaQueues, config: Config) -> Thinker:
    doer = ParslTaskServer(METHODS, queues, config)
    thinker = make_thinker(queues)
    try:
        doer.start()
        thinker.start()
        thinker.join()
    finally:
        queues.send_kill_signal()
    doer.join()
    return thinker


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(make_queues(sys.argv[1] if len(sys.argv) > 1 else None), make_config())
