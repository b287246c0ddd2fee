"""Interleaved optimizer: one agent keeps simulations running from a task list while another
re-prioritizes that list with the newest results.

    python -m examples.interleaved [--budget 24] [--parallel 2]
"""

from __future__ import annotations

import argparse
import threading

from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.thinker import BaseThinker, agent
from examples.common import configure_logging, local_parsl_config, run_campaign
from examples.optimizers import best_of, propose, reprioritize_queue, simulate


class InterleavedThinker(BaseThinker):
    """A simulation dispatcher (topic 'doer') and a task prioritizer (topic 'thinker')."""

    def __init__(self, queues: ColmenaQueues, budget: int, parallel: int) -> None:
        super().__init__(queues)
        self.budget = budget
        self.parallel = parallel
        self.database: list[tuple[float, float]] = []
        self.task_queue: list[float] = propose([], 4 * parallel)
        self.queue_lock = threading.Lock()

    def _next_task(self) -> float:
        with self.queue_lock:
            if not self.task_queue:
                self.task_queue.extend(propose(self.database, 2 * self.parallel))
            return self.task_queue.pop(0)

    @agent
    def dispatcher(self) -> None:
        sent = 0
        for _ in range(self.parallel):
            self.queues.send_inputs(self._next_task(), method="simulate", topic="doer")
            sent += 1
        while len(self.database) < self.budget:
            result = self.queues.get_result(topic="doer")
            assert result is not None
            if sent < self.budget:
                self.queues.send_inputs(self._next_task(), method="simulate", topic="doer")
                sent += 1
            with self.queue_lock:
                self.database.append((result.args[0], result.value))
            x, fx = best_of(self.database)
            self.logger.info(
                "%d/%d evaluated; best f(%.3f) = %.4f", len(self.database), self.budget, x, fx
            )

    @agent(startup=True)
    def prioritizer(self) -> None:
        while not self.done.is_set():
            with self.queue_lock:
                candidates = self.task_queue + propose(self.database, self.parallel)
                snapshot = list(self.database)
            self.queues.send_inputs(
                snapshot, candidates, method="reprioritize_queue", topic="thinker"
            )
            result = self.queues.get_result(topic="thinker")
            assert result is not None
            with self.queue_lock:
                # Tasks popped meanwhile are gone; keep the best-ranked of those still waiting
                waiting = set(self.task_queue) | set(candidates[len(self.task_queue) :])
                self.task_queue = [candidates[i] for i in result.value if candidates[i] in waiting]
            self.logger.info("Re-ordered %d waiting tasks", len(self.task_queue))


def main() -> None:
    parser = argparse.ArgumentParser(description="Interleaved optimizer example")
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    configure_logging()
    queues = PipeQueues(topics=["doer", "thinker"])
    doer = ParslTaskServer([simulate, reprioritize_queue], queues, local_parsl_config())
    thinker = InterleavedThinker(queues, args.budget, args.parallel)
    run_campaign(queues, doer, thinker)
    x, fx = best_of(thinker.database)
    print(
        f"Best point found: x = {x:.4f}, f(x) = {fx:.6f} after {len(thinker.database)} evaluations"
    )


if __name__ == "__main__":
    main()
