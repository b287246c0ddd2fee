"""The gateway's HTTP API in process (``TestClient``, lifespan included) on a real broker.

Every route, every error code (401, 403, 413, 422, 503), the OpenAPI document, the
metrics format and the dashboard's files. Results come from a task server running in a
thread of the test process. Streams over real sockets (SSE, reconnections, restarts) are
in ``test_gateway_e2e.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from gateway_methods import add, countdown, echo, fail
from gateway_support import ALICE, BOB, TOKENS, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.websockets import WebSocketDisconnect

from colmena_core.models.methods import PythonGeneratorMethod
from colmena_core.queue.monitor import ResultSummary
from colmena_core.queue.rabbitmq import RabbitMQQueues
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing.brokers import ThrowawayCampaign
from colmena_services.gateway.app import create_app
from colmena_services.gateway.guard import scan_json
from colmena_services.gateway.models import TaskResult
from colmena_services.gateway.settings import GatewaySettings

WAIT = 30.0
MAX_BODY = 4096
MAX_BATCH = 5
PROTECTED = [
    ("POST", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks/batch"),
    ("GET", "/api/v1/results"),
    ("POST", "/api/v1/results/ack"),
    ("GET", "/api/v1/results/sse"),
    ("GET", "/api/v1/methods"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/status/dead-letters"),
    ("GET", "/api/v1/monitor/sse"),
    ("GET", "/api/v1/monitor/history"),
    ("POST", "/api/v1/monitor/dead-letters/requeue"),
    ("POST", "/api/v1/monitor/dead-letters/purge"),
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def campaign(rabbitmq_url: str) -> Iterator[ThrowawayCampaign]:
    with ThrowawayCampaign(rabbitmq_url, "gateway-api") as campaign:
        campaign.methods.update({"add", "echo", "fail", "countdown"})
        for client in ("api-alice", "api-bob"):
            campaign.clients[client] = {"default", "extra"}
        yield campaign


@pytest.fixture(scope="module")
def task_server(campaign: ThrowawayCampaign) -> Iterator[LocalTaskServer]:
    queues: RabbitMQQueues = campaign.queues(methods=["add", "echo", "fail", "countdown"])
    streams = PythonGeneratorMethod(countdown, store_return_value=True, streaming_queue=queues)
    server = LocalTaskServer([add, echo, fail, streams], queues, num_workers=2, pool="thread")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(WAIT)
    yield server
    server.request_stop()
    thread.join(WAIT)


def settings_for(campaign: ThrowawayCampaign, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "broker_url": campaign.url,
        "campaign": campaign.name,
        "gateway_tokens": TOKENS,
        "gateway_monitors": "alice",
        "topics": "default,extra",
        "max_request_bytes": MAX_BODY,
        "max_batch": MAX_BATCH,
        "long_poll_timeout": 2.0,
        "env": "production",
        **overrides,
    }
    return GatewaySettings(**values)


@pytest.fixture(scope="module")
def client(campaign: ThrowawayCampaign, task_server: LocalTaskServer) -> Iterator[TestClient]:
    app = create_app(settings_for(campaign))
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
        yield client


def poll_until(client: TestClient, token: str, count: int) -> list[dict[str, Any]]:
    """Long-poll until ``count`` results arrived (fails after WAIT seconds)."""
    results: list[dict[str, Any]] = []

    def more() -> bool:
        answer = client.get("/api/v1/results", params={"timeout": 1}, headers=auth(token))
        assert answer.status_code == 200, answer.text
        results.extend(answer.json()["results"])
        return len(results) >= count

    wait_until(more, f"{count} results")
    return results


# ------------------------------------------------------------------- health
def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["broker_connected"] is True
    client.post("/api/v1/tasks", json={"method": "echo", "args": [1]}, headers=auth(BOB))
    answer = client.get("/metrics", headers=auth(ALICE))  # per client with a token
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    for name in (
        "colmena_gateway_tasks_submitted",
        "colmena_gateway_results_delivered",
        "colmena_gateway_errors",
        "colmena_gateway_open_streams",
        "colmena_gateway_connected_clients",
        "colmena_gateway_broker_connected",
        "colmena_gateway_live_task_servers",
    ):
        assert name in families, name
    submitted = {
        s.labels["client"]: s.value
        for s in families["colmena_gateway_tasks_submitted"].samples
        if s.name.endswith("_total")
    }
    assert submitted["bob"] >= 1
    poll_until(client, BOB, 1)


def test_openapi_document_and_docs(client: TestClient) -> None:
    document = client.get("/api/v1/openapi.json").json()
    assert document["info"]["title"] == "Colmena gateway"
    for path in (
        "/api/v1/tasks",
        "/api/v1/tasks/batch",
        "/api/v1/results",
        "/api/v1/results/ack",
        "/api/v1/results/sse",
        "/api/v1/methods",
        "/api/v1/status",
        "/api/v1/status/dead-letters",
        "/api/v1/monitor/sse",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in document["paths"], path
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    assert client.get("/api/v1/docs").status_code == 200


def test_dashboard_is_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Colmena" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/charts.js").status_code == 200


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(("verb", "path"), PROTECTED)
@pytest.mark.parametrize("token", [None, "not-a-valid-token-at-all"])
def test_every_api_route_needs_a_valid_token(
    client: TestClient, verb: str, path: str, token: str | None
) -> None:
    headers = auth(token) if token else {}
    answer = client.request(verb, path, headers=headers, json={"method": "add"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["detail"] in ("Missing bearer token", "Invalid token")


def test_campaign_wide_views_are_for_monitoring_clients_only(client: TestClient) -> None:
    answer = client.get("/api/v1/status/dead-letters", headers=auth(BOB))
    assert answer.status_code == 403 and "COLMENA_GATEWAY_MONITORS" in answer.json()["detail"]
    assert client.get("/api/v1/status/dead-letters", headers=auth(ALICE)).status_code == 200
    assert client.get("/api/v1/monitor/history", headers=auth(BOB)).status_code == 403
    assert client.get("/api/v1/monitor/history", headers=auth(ALICE)).status_code == 200
    for action in ("requeue", "purge"):
        answer = client.post(f"/api/v1/monitor/dead-letters/{action}", headers=auth(BOB), json={})
        assert answer.status_code == 403
    answer = client.get("/api/v1/monitor/sse", params={"scope": "campaign", "token": BOB})
    assert answer.status_code == 403
    with (
        client.websocket_connect(f"/api/v1/monitor/ws?scope=campaign&token={BOB}") as socket,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        socket.receive_text()
    assert closed.value.code == 1008


@pytest.mark.parametrize("path", ["/api/v1/results/ws", "/api/v1/monitor/ws"])
def test_websockets_close_with_1008_without_a_valid_token(client: TestClient, path: str) -> None:
    for suffix in ("", "?token=wrong-token-wrong-token"):
        with (
            client.websocket_connect(path + suffix) as socket,
            pytest.raises(WebSocketDisconnect) as closed,
        ):
            socket.receive_text()
        assert closed.value.code == 1008


def test_bodies_over_the_limit_get_413(client: TestClient) -> None:
    big = {"method": "echo", "args": ["x" * MAX_BODY]}
    answer = client.post("/api/v1/tasks", json=big, headers=auth(ALICE))
    assert answer.status_code == 413
    assert f"{MAX_BODY} bytes" in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is counted as it comes
        yield b'{"method": "echo", "args": ["'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"]}'

    answer = client.post(
        "/api/v1/tasks",
        content=chunks(),
        headers={**auth(ALICE), "Content-Type": "application/json"},
    )
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({}, ["body", "method"]),
        ({"method": "no spaces allowed"}, ["body", "method"]),
        ({"method": "add", "args": "1, 2"}, ["body", "args"]),
        ({"method": "add", "kwargs": [1]}, ["body", "kwargs"]),
        ({"method": "add", "topic": "elsewhere"}, ["body", "topic"]),
        ({"method": "add", "resources": {"node_count": 0}}, ["body", "resources", "node_count"]),
        ({"method": "add", "surprise": True}, ["body", "surprise"]),
        ({"method": "add", "max_retries": -1}, ["body", "max_retries"]),
    ],
)
def test_invalid_tasks_get_422_saying_what_is_wrong(
    client: TestClient, body: dict[str, Any], location: list[str]
) -> None:
    answer = client.post("/api/v1/tasks", json=body, headers=auth(ALICE))
    assert answer.status_code == 422
    errors = answer.json()["detail"]
    assert any(error["loc"] == location for error in errors), errors
    assert all(error["msg"] for error in errors)


def test_invalid_batches_and_queries_get_422(client: TestClient) -> None:
    too_many = {"tasks": [{"method": "add"}] * (MAX_BATCH + 1)}
    answer = client.post("/api/v1/tasks/batch", json=too_many, headers=auth(ALICE))
    assert answer.status_code == 422 and f"at most {MAX_BATCH}" in str(answer.json())
    empty = client.post("/api/v1/tasks/batch", json={"tasks": []}, headers=auth(ALICE))
    assert empty.status_code == 422
    bad_topic = {"tasks": [{"method": "add"}, {"method": "add", "topic": "nope"}]}
    answer = client.post("/api/v1/tasks/batch", json=bad_topic, headers=auth(ALICE))
    assert answer.json()["detail"][0]["loc"] == ["body", "tasks", 1, "topic"]
    not_json = client.post(
        "/api/v1/tasks",
        content=b"{not json",
        headers={**auth(ALICE), "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    for params in ({"timeout": -1}, {"max": 0}, {"topic": "nope"}):
        answer = client.get("/api/v1/results", params=params, headers=auth(ALICE))
        assert answer.status_code == 422, params


def test_unknown_paths_get_404(client: TestClient) -> None:
    assert client.get("/api/v1/nothing-here", headers=auth(ALICE)).status_code == 404
    assert client.get("/api/v2/tasks", headers=auth(ALICE)).status_code == 404


# --------------------------------------------------------- tasks and results
def test_submit_then_long_poll(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/tasks",
        json={"method": "add", "args": [2, 3], "keep_inputs": True, "task_info": {"k": "v"}},
        headers=auth(ALICE),
    )
    assert answer.status_code == 202
    task_id = answer.json()["task_id"]
    (result,) = poll_until(client, ALICE, 1)
    assert result["task_id"] == task_id
    assert (result["success"], result["value"], result["value_format"]) == (True, 5, "json")
    assert result["inputs"] == {"args": [2, 3], "kwargs": {}}
    assert result["task_info"] == {"k": "v"}
    assert result["timings"]["time_compute_started"] is not None
    empty = client.get("/api/v1/results", params={"timeout": 0}, headers=auth(ALICE))
    assert empty.json() == {"results": []}


def test_batch_failures_and_topics(client: TestClient) -> None:
    batch = {
        "tasks": [
            {"method": "echo", "args": [{"nested": [1, 2.5, None]}]},
            {"method": "fail", "args": ["boom"], "topic": "extra"},
            {"method": "missing"},
        ]
    }
    answer = client.post("/api/v1/tasks/batch", json=batch, headers=auth(ALICE))
    assert answer.status_code == 202
    ids = answer.json()["task_ids"]
    assert len(ids) == 3 and len(set(ids)) == 3
    (failed,) = wait_until(
        lambda: client.get(
            "/api/v1/results", params={"timeout": 1, "topic": "extra"}, headers=auth(ALICE)
        ).json()["results"],
        "the result of topic extra",
    )
    assert failed["task_id"] == ids[1]
    assert failed["success"] is False and "boom" in failed["failure"]
    by_id = {r["task_id"]: r for r in poll_until(client, ALICE, 2)}
    assert by_id[ids[0]]["value"] == {"nested": [1, 2.5, None]}
    assert by_id[ids[2]]["success"] is False and "missing" in by_id[ids[2]]["failure"]


def test_clients_see_only_their_own_results(client: TestClient) -> None:
    alice = client.post(
        "/api/v1/tasks", json={"method": "echo", "args": ["a"]}, headers=auth(ALICE)
    )
    bob = client.post("/api/v1/tasks", json={"method": "echo", "args": ["b"]}, headers=auth(BOB))
    (bobs,) = poll_until(client, BOB, 1)
    assert bobs["task_id"] == bob.json()["task_id"] and bobs["value"] == "b"
    (alices,) = poll_until(client, ALICE, 1)
    assert alices["task_id"] == alice.json()["task_id"]


def test_results_over_the_websocket(client: TestClient) -> None:
    ids = client.post(
        "/api/v1/tasks/batch",
        json={"tasks": [{"method": "add", "args": [i, i]} for i in range(4)]},
        headers=auth(BOB),
    ).json()["task_ids"]
    received: dict[str, Any] = {}
    with client.websocket_connect("/api/v1/results/ws?ack=client", headers=auth(BOB)) as socket:
        while len(received) < len(ids):
            message = socket.receive_json()
            assert message["type"] == "result"
            received[message["result"]["task_id"]] = message["result"]["value"]
            socket.send_json({"type": "ack", "task_ids": [message["result"]["task_id"]]})
    assert received == {task_id: 2 * i for i, task_id in enumerate(ids)}


def test_intermediate_results_reach_the_client_before_the_final_one(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/tasks", json={"method": "countdown", "args": [3]}, headers=auth(ALICE)
    )
    assert answer.status_code == 202
    task_id = answer.json()["task_id"]
    results = poll_until(client, ALICE, 4)
    assert [(r["task_id"], r["value"], r["complete"]) for r in results] == [
        (task_id, 3, False),
        (task_id, 2, False),
        (task_id, 1, False),
        (task_id, "liftoff", True),
    ]

    # The campaign's history shows every result but counts the task once
    history: dict[str, Any] = {}

    def final_seen() -> bool:
        history.update(client.get("/api/v1/monitor/history", headers=auth(ALICE)).json())
        return any(r["task_id"] == task_id and r["complete"] for r in history["recent"])

    wait_until(final_seen, "the final countdown result in the history")
    assert sum(r["task_id"] == task_id for r in history["recent"]) == 4
    assert history["methods"]["countdown"] == {"success": 1, "failure": 0}


def test_methods_and_status(client: TestClient) -> None:
    methods = client.get("/api/v1/methods", headers=auth(BOB))
    assert methods.status_code == 200 and "methods" in methods.json()
    status = client.get("/api/v1/status", headers=auth(BOB)).json()
    assert status["campaign"] and status["client"] == "bob"
    assert status["broker_connected"] is True
    assert set(status["results_waiting"]) == {"default", "extra"}
    assert isinstance(status["tasks_in_flight"], int) and isinstance(status["dead_letters"], int)


def test_broker_unreachable_gives_503(campaign: ThrowawayCampaign) -> None:
    settings = settings_for(
        campaign, broker_url="amqp://guest:guest@127.0.0.1:9/", publish_timeout=0.5
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["broker_connected"] is False
        answer = client.post("/api/v1/tasks", json={"method": "add"}, headers=auth(ALICE))
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert "broker" in answer.json()["detail"]


def test_tasks_larger_than_the_broker_takes_get_413_and_nothing_is_sent(
    campaign: ThrowawayCampaign, task_server: LocalTaskServer
) -> None:
    # A smaller limit than the broker's 128 MiB, to test it with small bodies
    settings = settings_for(campaign, max_message_size=2000)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
        answer = client.post(
            "/api/v1/tasks", json={"method": "echo", "args": ["x" * 3000]}, headers=auth(BOB)
        )
        assert answer.status_code == 413
        assert "the broker takes at most 2,000" in answer.json()["detail"]
        batch = {
            "tasks": [
                {"method": "echo", "args": ["batch-mate"]},
                {"method": "echo", "args": ["y" * 3000]},
            ]
        }
        answer = client.post("/api/v1/tasks/batch", json=batch, headers=auth(BOB))
        assert answer.status_code == 413 and "Task 1 " in answer.json()["detail"]

        # Nothing of either request was queued; the gateway still works
        answer = client.post(
            "/api/v1/tasks", json={"method": "echo", "args": ["after"]}, headers=auth(BOB)
        )
        assert answer.status_code == 202
        seen: list[dict[str, Any]] = []

        def arrived() -> bool:
            reply = client.get("/api/v1/results", params={"timeout": 1}, headers=auth(BOB))
            seen.extend(reply.json()["results"])
            return any(r["task_id"] == answer.json()["task_id"] for r in seen)

        wait_until(arrived, "the result of the task sent after the refusals")
        reply = client.get("/api/v1/results", params={"timeout": 0.5}, headers=auth(BOB))
        seen.extend(reply.json()["results"])
        values = [r["value"] for r in seen]
        assert not {"batch-mate", "x" * 3000, "y" * 3000} & {
            v for v in values if isinstance(v, str)
        }


def test_development_mode_without_tokens_is_anonymous(campaign: ThrowawayCampaign) -> None:
    settings = settings_for(campaign, gateway_tokens="", env="development")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/api/v1/status/dead-letters")
        assert answer.status_code in (200, 503)
    with pytest.raises(ValueError, match="COLMENA_GATEWAY_TOKENS"):
        settings_for(campaign, gateway_tokens="", env="production")


def test_text_that_is_not_unicode_is_refused_and_never_breaks_a_stream(
    client: TestClient,
) -> None:
    lone_surrogate = b'{"method": "echo", "args": ["ok"], "task_info": {"k": "\\ud800"}}'
    answer = client.post(
        "/api/v1/tasks",
        content=lone_surrogate,
        headers={**auth(ALICE), "Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "task_info"]
    # Values JSON cannot carry come back as text rather than breaking the response
    not_finite = b'{"method": "echo", "args": [[NaN, Infinity, -Infinity, 1.5]]}'
    answer = client.post(
        "/api/v1/tasks",
        content=not_finite,
        headers={**auth(ALICE), "Content-Type": "application/json"},
    )
    assert answer.status_code == 202, answer.text
    (result,) = poll_until(client, ALICE, 1)
    assert result["value"] == ["NaN", "Infinity", "-Infinity", 1.5]
    summary = ResultSummary(
        task_id="t",
        client_id=None,
        method="echo",
        topic="default",
        success=True,
        value={"\udc80key": ["bad \ud800 text"]},
        value_format="json",
        displayable=True,
        failure=None,
        inputs=None,
        task_info={},
        timings={},
    )
    shown = TaskResult.from_summary(summary).model_dump_json()
    assert "\\ufffdkey" in shown or "\ufffdkey" in shown


def test_long_poll_with_client_acknowledgements(campaign: ThrowawayCampaign) -> None:
    settings = settings_for(campaign, ack_timeout=1.0)
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
        task_id = client.post(
            "/api/v1/tasks", json={"method": "echo", "args": [1]}, headers=auth(BOB)
        ).json()["task_id"]

        def poll() -> list[dict[str, Any]]:
            answer = client.get(
                "/api/v1/results", params={"timeout": 1, "ack": "client"}, headers=auth(BOB)
            )
            return list(answer.json()["results"])

        (result,) = wait_until(poll, "the result")
        assert result["task_id"] == task_id
        # Not acknowledged: held for ack_timeout, then delivered again
        (again,) = wait_until(poll, "the result to come again", timeout=10)
        assert again["task_id"] == task_id
        # Another client cannot acknowledge it; bob can, once
        stranger = client.post(
            "/api/v1/results/ack", json={"task_ids": [task_id]}, headers=auth(ALICE)
        )
        assert stranger.json() == {"acknowledged": [], "unknown": [task_id]}
        mine = client.post("/api/v1/results/ack", json={"task_ids": [task_id]}, headers=auth(BOB))
        assert mine.json() == {"acknowledged": [task_id], "unknown": []}
        twice = client.post("/api/v1/results/ack", json={"task_ids": [task_id]}, headers=auth(BOB))
        assert twice.json()["unknown"] == [task_id]
        assert client.get("/api/v1/results", params={"timeout": 1.5}, headers=auth(BOB)).json() == {
            "results": []
        }
        empty = client.post("/api/v1/results/ack", json={"task_ids": []}, headers=auth(BOB))
        assert empty.status_code == 422


def test_long_poll_without_waiting_returns_what_is_ready(client: TestClient) -> None:
    task_id = client.post(
        "/api/v1/tasks", json={"method": "echo", "args": [0]}, headers=auth(BOB)
    ).json()["task_id"]
    wait_until(
        lambda: client.get("/api/v1/status", headers=auth(BOB)).json()["results_waiting"][
            "default"
        ],
        "the result to wait in the broker",
    )
    answer = client.get("/api/v1/results", params={"timeout": 0}, headers=auth(BOB))
    assert [r["task_id"] for r in answer.json()["results"]] == [task_id]


# ------------------------------------------------------------- body shape
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=40,
)


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((nesting(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((nesting(item) for item in value.values()), default=0)
    return 0


@given(value=JSON_VALUES, ascii_only=st.booleans(), tasks=st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_the_shape_of_json_is_read_from_its_bytes(value: Any, ascii_only: bool, tasks: int) -> None:
    # Strings full of brackets, quotes and backslashes do not count
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert scan_json(body).depth == nesting(value)
    batch = json.dumps({"tasks": [value] * tasks}, ensure_ascii=ascii_only).encode()
    assert scan_json(batch).items == tasks
    assert scan_json(batch).depth == 2 + nesting(value)
