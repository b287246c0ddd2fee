"""Resource reallocation: simulations and model training share a fixed pool of workers.

A task submitter keeps the "simulation" slots busy; a result processor records results and
sets an event every few results; an event responder then borrows a slot from simulation for
training a surrogate model, and gives it back when training is done.

    python -m examples.reallocation [--slots 2] [--budget 16] [--retrain-every 4]
"""

from __future__ import annotations

import argparse
import threading

from colmena_core.models import Result
from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.thinker import (
    BaseThinker,
    ResourceCounter,
    event_responder,
    result_processor,
    task_submitter,
)
from examples.common import configure_logging, local_parsl_config, run_campaign
from examples.optimizers import best_of, propose, simulate


def train(database: list[tuple[float, float]]) -> list[float]:
    """Fit a quadratic surrogate to the results so far; return its coefficients."""
    import numpy as np

    xs, ys = zip(*database, strict=True)
    return [float(c) for c in np.polyfit(xs, ys, deg=2)]


class ReallocatingThinker(BaseThinker):
    """Simulation and training agents that trade worker slots."""

    rec: ResourceCounter  # always given below (it is None for thinkers made without one)

    def __init__(self, queues: ColmenaQueues, slots: int, budget: int, retrain_every: int) -> None:
        super().__init__(queues, resource_counter=ResourceCounter(slots, ["simulation", "ml"]))
        self.rec.reallocate(None, "simulation", slots)
        self.budget = budget
        self.retrain_every = retrain_every
        self.ml_slots = 1
        self.database: list[tuple[float, float]] = []
        self.surrogate: list[float] | None = None
        self.trainings = 0
        self.retrain_now = threading.Event()

    def _propose(self) -> float:
        if self.surrogate is not None and self.surrogate[0] > 0:
            a, b, _ = self.surrogate
            return -b / (2 * a) + propose([], 1)[0] / 20  # near the surrogate's minimum
        return propose(self.database, 1)[0]

    @task_submitter(task_type="simulation", n_slots=1)
    def submit_simulation(self) -> None:
        self.queues.send_inputs(self._propose(), method="simulate", topic="simulation")

    @result_processor(topic="simulation")
    def record_simulation(self, result: Result) -> None:
        self.rec.release("simulation", 1)
        if not result.success:
            self.logger.warning("Simulation failed: %s", result.failure_info)
            return
        self.database.append((result.args[0], result.value))
        x, fx = best_of(self.database)
        self.logger.info(
            "%d/%d simulated; best f(%.3f) = %.4f", len(self.database), self.budget, x, fx
        )
        if len(self.database) >= self.budget:
            self.done.set()
        elif len(self.database) % self.retrain_every == 0:
            self.retrain_now.set()

    @event_responder(
        event_name="retrain_now",
        reallocate_resources=True,
        gather_from="simulation",
        gather_to="ml",
        disperse_to="simulation",
        max_slots="ml_slots",
    )
    def retrain(self) -> None:
        if not self.rec.acquire("ml", 1, cancel_if=self.done):
            return
        try:
            self.queues.send_inputs(list(self.database), method="train", topic="ml")
            result = self.queues.get_result(topic="ml")
            assert result is not None
            if result.success:
                self.surrogate = result.value
                self.trainings += 1
                self.logger.info(
                    "Trained surrogate #%d on %d points", self.trainings, len(self.database)
                )
        finally:
            self.rec.release("ml", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Resource reallocation example")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--retrain-every", type=int, default=4)
    args = parser.parse_args()
    configure_logging()
    queues = PipeQueues(topics=["simulation", "ml"])
    doer = ParslTaskServer([simulate, train], queues, local_parsl_config(workers=args.slots))
    thinker = ReallocatingThinker(queues, args.slots, args.budget, args.retrain_every)
    run_campaign(queues, doer, thinker)
    x, fx = best_of(thinker.database)
    print(
        f"Best point found: x = {x:.4f}, f(x) = {fx:.6f} after {len(thinker.database)} "
        f"simulations and {thinker.trainings} trainings"
    )


if __name__ == "__main__":
    main()
