"""Pieces shared by the examples: a local Parsl configuration, the choice of queues, and
running a thinker with its task server."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

from parsl.config import Config

from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server.base import BaseTaskServer
from colmena_core.task_server.parsl import local_config
from colmena_core.thinker import BaseThinker


def local_parsl_config(workers: int = 2, run_dir: str | None = None) -> Config:
    """A local HighThroughputExecutor whose workers can import the examples' functions."""
    # Workers import functions defined in these modules by name: put the repository on
    # their path (they inherit this process's environment)
    _prepend_env("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    return local_config(workers, run_dir)


def run_campaign(queues: ColmenaQueues, doer: BaseTaskServer, thinker: BaseThinker) -> None:
    """Start the task server and the thinker, wait for the thinker, then stop the server."""
    try:
        doer.start()
        thinker.start()
        thinker.join()
    finally:
        queues.send_kill_signal()
    doer.join()


def _prepend_env(name: str, entry: str) -> None:
    entries = [e for e in os.environ.get(name, "").split(os.pathsep) if e]
    if entry not in entries:
        os.environ[name] = os.pathsep.join([entry, *entries])


def make_queues(
    topics: Collection[str],
    broker_url: str | None = None,
    campaign: str = "demo",
    **options: object,
) -> ColmenaQueues:
    """Pipes by default; a RabbitMQ campaign when a broker URL is given."""
    if broker_url:
        from colmena_core.queue.rabbitmq import RabbitMQQueues

        return RabbitMQQueues(topics=topics, url=broker_url, campaign=campaign, **options)  # type: ignore[arg-type]
    return PipeQueues(topics=topics, **options)  # type: ignore[arg-type]


def configure_logging(verbose: bool = False) -> None:
    """Progress at INFO for the thinker, quieter engine and queue logs unless verbose."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for noisy in ("parsl", "pika", "colmena_core.queue", "colmena_core.task_server"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
