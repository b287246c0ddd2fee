"""Fixtures shared by the test suite: the services that the transports are tested against.

Each fixture only wraps a helper of :mod:`colmena_core.testing`, where the logic lives.
Outside CI, tests needing a service that cannot be found or started are skipped; in CI
(``CI=true``) they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from colmena_core.testing.brokers import (
    ThrowawayRabbitMQ,
    rabbitmq_url_for_pytest,
    throwaway_rabbitmq_for_pytest,
)
from colmena_core.testing.redis import redis_server_for_pytest


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
