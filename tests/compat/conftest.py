"""Fixtures of the compatibility applications: each runs on pipes and on RabbitMQ."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from colmena_core.queue import ColmenaQueues, PipeQueues

QueueMaker = Callable[..., ColmenaQueues]
"""``make_queues(topics, methods, **options)``: queues of the transport under test, shared by
the application's thinker and its task server (``options`` of every queue, e.g. ProxyStore's)."""

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["pipes", "rabbitmq"])
def make_queues(request: pytest.FixtureRequest) -> Iterator[QueueMaker]:
    """The queues an application would make, on pipes or on a campaign of the test broker."""
    if request.param == "pipes":

        def pipes(
            topics: Collection[str] = (), methods: Collection[str] = (), **options: Any
        ) -> ColmenaQueues:
            return PipeQueues(topics, **options)

        yield pipes
        return
    campaign = request.getfixturevalue("campaign")

    def rabbitmq(
        topics: Collection[str] = (), methods: Collection[str] = (), **options: Any
    ) -> ColmenaQueues:
        return campaign.queues(topics, methods=methods, **options)  # type: ignore[no-any-return]

    yield rabbitmq


@pytest.fixture(scope="module", autouse=True)
def workers_find_the_applications() -> Iterator[None]:
    """Parsl's worker processes import the applications' functions by module name."""
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PATH")}
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    needed = [str(HERE), str(HERE.parent)]  # the applications, and the helpers they import
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*needed, *(entry for entry in entries if entry not in needed)]
    )
    bin_dir = os.path.dirname(sys.executable)  # Parsl starts its processes by script name
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
