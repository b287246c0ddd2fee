"""Campaigns on a RabbitMQ cluster: clients know every node and fail over between them.

A broker URL may list the nodes of a cluster, comma-separated; the queues and services try
them in turn. The cluster here is three throwaway nodes on loopback; the campaign's quorum
queues have a member on each, so that losing the node that leads them loses nothing: every
task still has exactly one result (the delivery contract, ARCHITECTURE.md §3).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError
from queue_support import assert_exactly_once

from colmena_core.queue.amqp import AmqpLink, broker_addresses, redact_url
from colmena_core.testing import free_port
from colmena_core.testing.brokers import ThrowawayCampaign, ThrowawayCluster
from colmena_core.testing.task_servers import (
    LocalServerStarter,
    assert_no_more_results,
    receive_results,
    stop_task_servers,
)
from colmena_services.common import ServiceSettings, redacted

WAIT = 60.0
"""Timeout, in seconds, of every wait that is expected to succeed."""


def work(index: int, seconds: float = 0.02) -> tuple[int, int]:
    """A short task (long enough that some are in flight when a node stops); returns its
    index and the process that ran it."""
    time.sleep(seconds)  # the work itself, not a synchronisation
    return index, os.getpid()


@pytest.fixture
def task_server_options() -> dict[str, object]:
    return {"num_workers": 2, "pool": "thread"}


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


def test_services_take_a_cluster_as_comma_separated_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLMENA_BROKER_URL", "amqp://u:pw-0@node-0:5672/, amqp://u:pw-1@node-1/")
    url = ServiceSettings().broker_url
    assert broker_addresses(url) == ["amqp://u:pw-0@node-0:5672/", "amqp://u:pw-1@node-1/"]
    assert "pw-0" not in redacted(url) and "pw-1" not in redacted(url)
    monkeypatch.setenv("COLMENA_BROKER_URL", "amqp://u:pw-0@node-0:5672/,node-1:5672")
    with pytest.raises(ValidationError, match="amqp://"):
        ServiceSettings()


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


def _campaign_queues(cluster: ThrowawayCluster, campaign: str) -> dict[str, dict[str, object]]:
    return {
        queue["name"]: queue
        for queue in cluster.queues()
        if queue["name"].startswith(f"colmena.{campaign}.") and queue["type"] == "quorum"
    }


def test_campaign_survives_losing_the_node_that_leads_its_queues(
    throwaway_cluster_factory: Callable[..., ThrowawayCluster], start_server: LocalServerStarter
) -> None:
    cluster = throwaway_cluster_factory(3)
    with ThrowawayCampaign(cluster.url, "cluster") as campaign:
        thinker = campaign.queues(methods=["work"])
        server = start_server(campaign.queues(prefetch=8), [work])
        sent = {thinker.send_inputs(i, method="work") for i in range(200)}
        results = receive_results(thinker, 40, timeout=WAIT)

        # Both clients started on the first node, where their quorum queues were declared:
        # it leads them, and every node holds a replica.
        queues = _campaign_queues(cluster, campaign.name)
        requests = queues[f"colmena.{campaign.name}.requests.work"]
        results_queue = next(q for name, q in queues.items() if ".results." in name)
        for queue in queues.values():
            assert sorted(queue["members"]) == sorted(n.node_name for n in cluster.nodes)
        leader = cluster.node_named(str(requests["leader"]))
        assert results_queue["leader"] == leader.node_name

        leader.stop()
        # Sent while the clients move to another node: kept until a broker confirms them
        sent |= {thinker.send_inputs(i, method="work") for i in range(200, 300)}

        results += receive_results(thinker, len(sent) - len(results), timeout=WAIT)
        assert_exactly_once(results, sent)
        assert_no_more_results(thinker)
        queues = _campaign_queues(cluster, campaign.name)
        assert queues[f"colmena.{campaign.name}.requests.work"]["leader"] != leader.node_name
        stop_task_servers(thinker, server)
        # The node comes back with its data and rejoins (deleting a quorum queue waits for
        # every member, so the campaign is deleted once it is back)
        leader.start()
