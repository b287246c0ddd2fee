"""Watch a campaign on a RabbitMQ broker (kept for imports: the code is in
:mod:`colmena_core.queue.rabbitmq.monitor`)."""

from colmena_core.queue.rabbitmq.monitor import (
    TIMING_FIELDS,
    CampaignMonitor,
    HeartbeatPublisher,
    LiveServer,
    ResultSummary,
    client_of_routing_key,
    heartbeat_exchange,
    summarize_result,
)

__all__ = [
    "TIMING_FIELDS",
    "CampaignMonitor",
    "HeartbeatPublisher",
    "LiveServer",
    "ResultSummary",
    "client_of_routing_key",
    "heartbeat_exchange",
    "summarize_result",
]
