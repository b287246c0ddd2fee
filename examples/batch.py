"""Batch optimizer: propose a batch, evaluate all of it, repeat.

Simple, but workers idle while the slowest task of each batch finishes.

    python -m examples.batch [--batches 4] [--batch-size 4]
"""

from __future__ import annotations

import argparse

from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.thinker import BaseThinker, agent
from examples.common import configure_logging, local_parsl_config, run_campaign
from examples.optimizers import best_of, propose, simulate


class BatchThinker(BaseThinker):
    """One agent: a loop of whole batches."""

    def __init__(self, queues: ColmenaQueues, batches: int, batch_size: int) -> None:
        super().__init__(queues)
        self.batches = batches
        self.batch_size = batch_size
        self.database: list[tuple[float, float]] = []

    @agent
    def run_batches(self) -> None:
        for batch in range(self.batches):
            for x in propose(self.database, self.batch_size):
                self.queues.send_inputs(x, method="simulate")
            for _ in range(self.batch_size):
                result = self.queues.get_result()
                assert result is not None
                self.database.append((result.args[0], result.value))
            x, fx = best_of(self.database)
            self.logger.info("Batch %d done; best f(%.3f) = %.4f", batch + 1, x, fx)


def main() -> None:
    parser = argparse.ArgumentParser(description="Batch optimizer example")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    configure_logging()
    queues = PipeQueues()
    doer = ParslTaskServer([simulate], queues, local_parsl_config())
    thinker = BatchThinker(queues, args.batches, args.batch_size)
    run_campaign(queues, doer, thinker)
    x, fx = best_of(thinker.database)
    print(
        f"Best point found: x = {x:.4f}, f(x) = {fx:.6f} after {len(thinker.database)} evaluations"
    )


if __name__ == "__main__":
    main()
