"""Fuzz the live gateway from its own OpenAPI document (schemathesis): no input gives a 5xx.

A real gateway process on loopback and a real broker; the streaming endpoints (SSE) are
left out, as they never end by design. Each operation is called by a monitoring client,
an ordinary client and an anonymous caller. Bounded: a few dozen examples per operation
(``COLMENA_FUZZ_EXAMPLES`` sets another number).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from gateway_support import ALICE, BOB, GatewayProcess
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error

from colmena_core.testing.brokers import ThrowawayCampaign

EXAMPLES = int(os.environ.get("COLMENA_FUZZ_EXAMPLES", "25"))
"""Examples generated per operation (raise it for a deeper run)."""

pytestmark = pytest.mark.timeout(max(120, 5 * EXAMPLES))

CALLERS = [{"Authorization": f"Bearer {ALICE}"}, {"Authorization": f"Bearer {BOB}"}, {}]
"""A monitoring client, an ordinary one, and an anonymous caller."""


@pytest.fixture(scope="module")
def gateway(rabbitmq_url: str) -> Iterator[GatewayProcess]:
    with ThrowawayCampaign(rabbitmq_url, "gateway-fuzz") as campaign:
        for client in ("api-alice", "api-bob"):
            campaign.clients[client] = {"default", "extra"}
        process = GatewayProcess(
            campaign.url,
            campaign.name,
            long_poll_timeout="0.2",
            max_request_bytes="65536",
            max_batch="20",
        ).start()
        try:
            yield process
        finally:
            process.close()


def counters(gateway: GatewayProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """Labels and value of each sample of the gateway's counter ``name``."""
    text = httpx.get(f"{gateway.base_url}/metrics").text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total"
    ]


def error_counts(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's count of error responses, by status."""
    return {
        labels["status"]: value for labels, value in counters(gateway, "colmena_gateway_errors")
    }


def test_no_input_makes_the_gateway_fail(gateway: GatewayProcess) -> None:
    # Counted before fuzzing: /readyz answers 503 while the gateway connects, and the
    # fixture polls it until it is ready
    before = error_counts(gateway)
    schema = schemathesis.openapi.from_url(f"{gateway.base_url}/api/v1/openapi.json")
    operations = [
        result.ok() for result in schema.exclude(path_regex=r"/sse$").get_all_operations()
    ]
    assert {op.path for op in operations} >= {"/api/v1/tasks", "/api/v1/results"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: schemathesis.Case) -> None:
            for headers in CALLERS:
                case.call_and_validate(
                    base_url=gateway.base_url,
                    headers=headers,
                    checks=[not_a_server_error],
                    timeout=10,
                )

        no_server_error()

    # Both valid and invalid inputs were sent, and refused with 4xx codes only
    errors = {
        status for status, count in error_counts(gateway).items() if count > before.get(status, 0.0)
    }
    assert {"401", "422"} <= errors and all(code < "500" for code in errors), errors
    assert sum(value for _, value in counters(gateway, "colmena_gateway_tasks_submitted")) > 0
