"""Streaming optimizer: as soon as any evaluation finishes, propose and send a new one.

python -m examples.streaming [--budget 16] [--parallel 4]
"""

from __future__ import annotations

import argparse

from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.thinker import BaseThinker, agent
from examples.common import configure_logging, local_parsl_config, run_campaign
from examples.optimizers import best_of, propose, simulate


class StreamingThinker(BaseThinker):
    """One agent keeps ``parallel`` evaluations running until the budget is spent."""

    def __init__(self, queues: ColmenaQueues, budget: int, parallel: int) -> None:
        super().__init__(queues)
        self.budget = budget
        self.parallel = parallel
        self.database: list[tuple[float, float]] = []

    @agent
    def stream(self) -> None:
        sent = 0
        for x in propose(self.database, min(self.parallel, self.budget)):
            self.queues.send_inputs(x, method="simulate")
            sent += 1
        while len(self.database) < self.budget:
            result = self.queues.get_result()
            assert result is not None
            self.database.append((result.args[0], result.value))
            if sent < self.budget:
                self.queues.send_inputs(propose(self.database, 1)[0], method="simulate")
                sent += 1
            x, fx = best_of(self.database)
            self.logger.info(
                "%d/%d evaluated; best f(%.3f) = %.4f", len(self.database), self.budget, x, fx
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="Streaming optimizer example")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    configure_logging()
    queues = PipeQueues()
    doer = ParslTaskServer([simulate], queues, local_parsl_config())
    thinker = StreamingThinker(queues, args.budget, args.parallel)
    run_campaign(queues, doer, thinker)
    x, fx = best_of(thinker.database)
    print(
        f"Best point found: x = {x:.4f}, f(x) = {fx:.6f} after {len(thinker.database)} evaluations"
    )


if __name__ == "__main__":
    main()
