"""The quickstart campaign: two agents search for the minimum of f(x) = x**2.

A producer agent asks the task server for a new guess near the best point so far and sends
it to be evaluated; a consumer agent reads the evaluations and keeps the best one. By
default it runs on Python pipes with a local Parsl executor (nothing to install); give
``--broker-url amqp://...`` (or set COLMENA_BROKER_URL) to run the same thinker through
RabbitMQ.

    python -m examples.quickstart [--guesses 10] [--broker-url URL]
"""

from __future__ import annotations

import argparse
import logging
import os
from math import inf
from random import random

from colmena_core.queue import ColmenaQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.thinker import BaseThinker, agent
from examples.common import configure_logging, local_parsl_config, make_queues


def target_function(x: float) -> float:
    """The function to minimize."""
    return x**2


def task_generator(best_to_date: float) -> float:
    """A new point within ±0.5 of the best so far."""
    from random import random

    return best_to_date + random() - 0.5


class Thinker(BaseThinker):
    """The two agents of the quickstart."""

    def __init__(self, queues: ColmenaQueues, guesses: int = 10) -> None:
        super().__init__(queues)
        self.remaining_guesses = guesses
        self.best_guess = 10.0 * (0.5 + random())
        self.best_result = inf

    @agent
    def consumer(self) -> None:
        for i in range(self.remaining_guesses):
            result = self.queues.get_result(topic="simulate")
            assert result is not None
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
            result = self.queues.get_result(topic="generate")
            assert result is not None
            self.logger.info("Created a new guess: %.2f", result.value)
            self.queues.send_inputs(result.value, method="target_function", topic="simulate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guesses", type=int, default=10, help="evaluations to run")
    parser.add_argument("--broker-url", default=os.environ.get("COLMENA_BROKER_URL"))
    parser.add_argument("--verbose", action="store_true", help="show engine and queue logs")
    args = parser.parse_args()
    configure_logging(args.verbose)

    queues = make_queues(["generate", "simulate"], args.broker_url, keep_inputs=True)
    doer = ParslTaskServer([target_function, task_generator], queues, local_parsl_config())
    thinker = Thinker(queues, guesses=args.guesses)
    where = "RabbitMQ" if args.broker_url else "Python pipes"
    logging.info(
        "Searching for the minimum of x**2 with %d evaluations over %s", args.guesses, where
    )
    try:
        doer.start()
        thinker.start()
        thinker.join()
    finally:
        queues.send_kill_signal()
    doer.join()
    print(f"Best point found: x = {thinker.best_guess:.4f}, f(x) = {thinker.best_result:.6f}")


if __name__ == "__main__":
    main()
