"""Pieces shared by the examples: a local Parsl configuration and the choice of queues."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from colmena_core.queue import ColmenaQueues, PipeQueues


def local_parsl_config(workers: int = 2, run_dir: str | None = None) -> Config:
    """A HighThroughputExecutor with ``workers`` worker processes on this machine."""
    # Parsl launches its helper scripts by name: make sure this interpreter's bin/ is on PATH,
    # and its workers import the examples' functions by module: put the repository on their path
    _prepend_env("PATH", os.path.dirname(sys.executable))
    _prepend_env("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    return Config(
        executors=[
            HighThroughputExecutor(
                label="htex",
                address="127.0.0.1",
                max_workers_per_node=workers,
                provider=LocalProvider(init_blocks=1, max_blocks=1),
            )
        ],
        strategy="none",
        run_dir=run_dir or tempfile.mkdtemp(prefix="colmena-parsl-"),
        initialize_logging=False,
    )


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
        for noisy in ("parsl", "colmena_core.queue", "colmena_core.task_server"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
