"""Fixtures shared by the test suite: the services that the transports are tested against,
campaigns on them, task server processes and the run directories of executable tasks.

The fixtures of services, campaigns and task servers only wrap helpers of
:mod:`colmena_core.testing`, where the logic lives; the methods and checks that several test
modules share are in ``task_server_support.py``. Outside CI, tests needing a service that
cannot be found or started are skipped; in CI (``CI=true``) they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from colmena_core.testing.brokers import (
    ThrowawayCampaign,
    ThrowawayCluster,
    ThrowawayRabbitMQ,
    rabbitmq_url_for_pytest,
    throwaway_cluster_for_pytest,
    throwaway_rabbitmq_for_pytest,
)
from colmena_core.testing.redis import redis_server_for_pytest
from colmena_core.testing.task_servers import (
    LocalServerStarter,
    local_task_servers_for_pytest,
)

# Before the test modules import it, so that the asserts of the helper module explain failures
pytest.register_assert_rewrite("task_server_support")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a Redis server for the whole session."""
    yield from redis_server_for_pytest()


# ------------------------------------------------------------------ RabbitMQ
@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """URL of a RabbitMQ broker for the whole session.

    ``COLMENA_TEST_AMQP_URL`` if set, else a broker on ``localhost:5672``, else a throwaway
    node, else a testcontainers broker (see :mod:`colmena_core.testing.brokers`).
    """
    yield from rabbitmq_url_for_pytest()


@pytest.fixture(scope="module")
def throwaway_rabbitmq_factory() -> Iterator[Callable[..., ThrowawayRabbitMQ]]:
    """Starts private RabbitMQ nodes that tests may stop and restart.

    Takes the arguments of :class:`ThrowawayRabbitMQ` (e.g. ``consumer_timeout=3.0``);
    the nodes are closed at the end of the test module.
    """
    yield from throwaway_rabbitmq_for_pytest()


@pytest.fixture
def throwaway_rabbitmq(
    throwaway_rabbitmq_factory: Callable[..., ThrowawayRabbitMQ],
) -> Iterator[ThrowawayRabbitMQ]:
    """A private RabbitMQ node with the default configuration, for one test."""
    node = throwaway_rabbitmq_factory()
    yield node
    node.close()


@pytest.fixture(scope="module")
def throwaway_cluster_factory() -> Iterator[Callable[..., ThrowawayCluster]]:
    """Starts RabbitMQ clusters of throwaway nodes on loopback: ``factory(size, **options)``.

    The options are those of :class:`ThrowawayRabbitMQ`, for every node (with
    ``COLMENA_TEST_RABBITMQ_ROOT`` set, the nodes run from that root, like every throwaway
    node); the clusters are closed at the end of the test module.
    """
    yield from throwaway_cluster_for_pytest()


@pytest.fixture
def campaign(rabbitmq_url: str, request: pytest.FixtureRequest) -> Iterator[ThrowawayCampaign]:
    """A campaign of this test only on the session's broker, deleted afterwards.

    Its name starts with that of the test module (``test_monitor.py``: ``monitor-…``).
    """
    prefix = request.module.__name__.rpartition(".")[2].removeprefix("test_").replace("_", "-")
    with ThrowawayCampaign(rabbitmq_url, prefix) as campaign:
        yield campaign


# -------------------------------------------------------------- task servers
@pytest.fixture
def task_server_options() -> dict[str, Any]:
    """Options of the servers of ``start_server`` (a test module may override this fixture)."""
    return {"num_workers": 2, "pool": "thread"}


@pytest.fixture
def start_server(task_server_options: dict[str, Any]) -> Iterator[LocalServerStarter]:
    """Starts ``LocalTaskServer`` processes: ``start_server(queues, methods, **options)``.

    The options, over ``task_server_options``, are those of ``LocalTaskServer``. Any server
    still running at the end of the test is killed.
    """
    yield from local_task_servers_for_pytest(**task_server_options)


@pytest.fixture
def run_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Executable tasks make their run directories here (inherited by task servers)."""
    path = tmp_path / "runs"
    path.mkdir()
    monkeypatch.setenv("COLMENA_RUN_DIR", str(path))
    return path
