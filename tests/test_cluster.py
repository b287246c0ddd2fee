"""Campaigns on a RabbitMQ cluster: clients know every node and fail over between them.

A broker URL may list the nodes of a cluster, comma-separated; the queues and services try
them in turn. The cluster here is three throwaway nodes on loopback; the campaign's quorum
queues have a member on each, so that losing the node that leads them loses nothing: every
task still has exactly one result (the delivery contract, ARCHITECTURE.md §3).
"""

from __future__ import annotations

import asyncio

import pytest

from colmena_core.queue.amqp import AmqpLink, broker_addresses, redact_url
from colmena_core.testing import free_port

WAIT = 60.0
"""Timeout, in seconds, of every wait that is expected to succeed."""


def test_broker_urls_list_the_nodes_of_a_cluster() -> None:
    url = "amqp://u:secret@node-0:5672/v, amqps://u:other@node-1:5671/v"
    assert broker_addresses(url) == [
        "amqp://u:secret@node-0:5672/v",
        "amqps://u:other@node-1:5671/v",
    ]
    assert "secret" not in redact_url(url) and "other" not in redact_url(url)
    with pytest.raises(ValueError, match="amqp"):
        broker_addresses("amqp://node-0/,http://node-1/")
    with pytest.raises(ValueError, match="No broker"):
        broker_addresses(" , ")


def test_link_passes_over_a_broker_that_does_not_answer(rabbitmq_url: str) -> None:
    silent = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"

    async def connect() -> str:
        link = AmqpLink(f"{silent},{rabbitmq_url}", connect_timeout=5.0)
        link.start()
        try:
            await asyncio.wait_for(link.wait_ready(), WAIT)
            return link.address
        finally:
            await link.close()

    assert asyncio.run(connect()) == rabbitmq_url
