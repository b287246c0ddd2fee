"""The gateway end to end: real gateway and task-server processes, real sockets, a real broker.

A REST client submits tasks and receives exactly one result per task over WebSocket, SSE
and long-poll; two API clients never see each other's results; a gateway killed with
SIGKILL mid-stream and started again loses nothing; the methods listed come from the
heartbeats of running task servers and leave with them. Waits are on results and
conditions, each with a timeout.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_support import (
    ALICE,
    BOB,
    WAIT,
    GatewayProcess,
    TaskServerProcess,
    methods_served,
    wait_until,
)
from websockets.sync.client import connect

from colmena_core.testing.brokers import ThrowawayCampaign, ThrowawayRabbitMQ
from colmena_services.client import GatewayClient, GatewayError, SubmissionError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def campaign(rabbitmq_url: str) -> Iterator[ThrowawayCampaign]:
    with ThrowawayCampaign(rabbitmq_url, "gateway-e2e") as campaign:
        campaign.methods.update({"add", "echo", "fail", "noop", "square"})
        for client in ("api-alice", "api-bob"):
            campaign.clients[client] = {"default", "extra"}
        yield campaign


@pytest.fixture(scope="module")
def task_server(campaign: ThrowawayCampaign) -> Iterator[TaskServerProcess]:
    server = TaskServerProcess(campaign.url, campaign.name).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(
    campaign: ThrowawayCampaign, task_server: TaskServerProcess
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(campaign.url, campaign.name).start()
    wait_until(lambda: "echo" in methods_served(process.base_url), "the task server's methods")
    yield process
    process.close()


@pytest.fixture
def alice(gateway: GatewayProcess) -> Iterator[GatewayClient]:
    with GatewayClient(gateway.base_url, ALICE) as client:
        yield client
    assert_nothing_left(gateway, ALICE)


@pytest.fixture
def bob(gateway: GatewayProcess) -> Iterator[GatewayClient]:
    with GatewayClient(gateway.base_url, BOB) as client:
        yield client
    assert_nothing_left(gateway, BOB)


def assert_nothing_left(gateway: GatewayProcess, token: str) -> None:
    """Every result of the client was delivered: none waits in the broker any more."""
    answer = httpx.get(
        f"{gateway.base_url}/api/v1/results",
        params={"timeout": 0.2},
        headers={"Authorization": f"Bearer {token}"},
        timeout=WAIT,
    )
    assert answer.json() == {"results": []}


def raw_websocket_results(
    gateway: GatewayProcess, token: str, count: int, ack: str = "auto"
) -> list[dict[str, Any]]:
    """``count`` results read from the WebSocket as they come (no de-duplication)."""
    url = gateway.base_url.replace("http", "ws") + f"/api/v1/results/ws?token={token}&ack={ack}"
    received = []
    with connect(url, open_timeout=WAIT) as socket:
        while len(received) < count:
            message = json.loads(socket.recv(timeout=WAIT))
            assert message["type"] == "result"
            received.append(message["result"])
    return received


def raw_sse_results(
    gateway: GatewayProcess, token: str, count: int, ack: str = "auto"
) -> list[dict[str, Any]]:
    """``count`` results read from the event stream as they come (no de-duplication)."""
    received: list[dict[str, Any]] = []
    with httpx.stream(
        "GET",
        f"{gateway.base_url}/api/v1/results/sse?ack={ack}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=WAIT,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in response.iter_lines():
            if line:
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")
                continue
            if event.get("event") == "result":
                result = json.loads(event["data"])
                assert event["id"] == result["task_id"]
                received.append(result)
                if len(received) == count:
                    break
            event = {}
    return received


# ------------------------------------------------------------------ delivery
def test_websocket_delivers_exactly_one_result_per_task(
    gateway: GatewayProcess, alice: GatewayClient
) -> None:
    ids = alice.submit_batch([alice.task("add", i, 100) for i in range(30)])
    received = raw_websocket_results(gateway, ALICE, len(ids))
    assert sorted(r["task_id"] for r in received) == sorted(ids)  # each exactly once
    values = {r["task_id"]: r["value"] for r in received}
    assert [values[task_id] for task_id in ids] == [i + 100 for i in range(30)]


def test_sse_delivers_exactly_one_result_per_task(
    gateway: GatewayProcess, alice: GatewayClient
) -> None:
    ids = [alice.submit("echo", {"i": i}, task_info={"n": i}) for i in range(20)]
    received = raw_sse_results(gateway, ALICE, len(ids))
    assert sorted(r["task_id"] for r in received) == sorted(ids)
    assert all(r["value"] == {"i": r["task_info"]["n"]} for r in received)


@pytest.mark.parametrize("channel", ["websocket", "sse"])
def test_a_stream_that_ends_gives_back_what_was_not_acknowledged(
    gateway: GatewayProcess, alice: GatewayClient, channel: str
) -> None:
    ids = alice.submit_batch([alice.task("echo", i) for i in range(8)])
    read = raw_websocket_results if channel == "websocket" else raw_sse_results
    (first,) = read(gateway, ALICE, 1, ack="client")  # then it goes away, acknowledging none
    assert first["task_id"] in ids
    again: dict[str, Any] = {}
    wait_until(
        lambda: (
            again.update({r["task_id"]: r for r in alice.results(timeout=1)})
            or set(again) == set(ids)
        ),
        "every result, the one read included, to come again",
        timeout=10,
    )


def test_long_poll_and_the_python_client(alice: GatewayClient) -> None:
    ids = set(alice.submit_batch([alice.task("add", i, 1) for i in range(5)]))
    ids.add(alice.submit("fail", "on purpose", topic="extra"))
    got: dict[str, dict[str, Any]] = {}
    wait_until(
        lambda: (
            got.update({r["task_id"]: r for r in alice.results(timeout=2)}) or got.keys() == ids
        ),
        "six results by long-poll",
    )
    failures = [r for r in got.values() if not r["success"]]
    assert len(failures) == 1 and "on purpose" in failures[0]["failure"]
    ids = {alice.submit("noop") for _ in range(3)}
    streamed = set()
    for result in alice.sse_results(idle_timeout=WAIT):
        streamed.add(result["task_id"])
        if streamed == ids:
            break
    ids = {alice.submit("echo", "ws") for _ in range(3)}
    streamed = set()
    for result in alice.stream_results(idle_timeout=WAIT):
        streamed.add(result["task_id"])
        if streamed == ids:
            break


def test_submit_many_sends_any_number_of_tasks_in_order(alice: GatewayClient) -> None:
    tasks = [alice.task("add", i, 1000) for i in range(250)]  # more than one batch can hold
    ids = alice.submit_many(tasks, batch_size=60, in_flight=3)
    assert len(ids) == len(set(ids)) == 250
    values: dict[str, int] = {}
    for result in alice.stream_results(idle_timeout=WAIT):
        values[result["task_id"]] = result["value"]
        if len(values) == len(ids):
            break
    assert [values[task_id] for task_id in ids] == [i + 1000 for i in range(250)]

    # A refused batch: the others are accepted, run, and the error says which ones
    tasks = [alice.task("echo", i) for i in range(30)]
    tasks[15] = alice.task("echo", 15, topic="no-such-topic")
    with pytest.raises(SubmissionError) as refused:
        alice.submit_many(tasks, batch_size=10, in_flight=2)
    assert refused.value.status_code == 422
    accepted = refused.value.task_ids
    assert [task_id is None for task_id in accepted] == [10 <= i < 20 for i in range(30)]
    echoed = {}
    for result in alice.stream_results(idle_timeout=WAIT):
        echoed[result["task_id"]] = result["value"]
        if len(echoed) == 20:
            break
    assert {echoed[t] for t in accepted if t is not None} == set(range(10)) | set(range(20, 30))


def test_two_clients_never_see_each_others_results(
    gateway: GatewayProcess, alice: GatewayClient, bob: GatewayClient
) -> None:
    alice_ids = set(alice.submit_batch([alice.task("echo", "alice") for _ in range(10)]))
    bob_ids = set(bob.submit_batch([bob.task("echo", "bob") for _ in range(10)]))
    seen: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}
    errors: list[BaseException] = []

    def receive(name: str, client: GatewayClient, expected: set[str], sse: bool) -> None:
        try:
            stream = client.sse_results(WAIT) if sse else client.stream_results(WAIT)
            for result in stream:
                seen[name].append(result)
                if {r["task_id"] for r in seen[name]} >= expected:
                    break
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=receive, args=("alice", alice, alice_ids, False)),
        threading.Thread(target=receive, args=("bob", bob, bob_ids, True)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert {r["task_id"] for r in seen["alice"]} == alice_ids
    assert {r["task_id"] for r in seen["bob"]} == bob_ids
    assert {r["value"] for r in seen["alice"]} == {"alice"}
    assert {r["value"] for r in seen["bob"]} == {"bob"}


def test_monitoring_streams_show_copies_by_scope(
    gateway: GatewayProcess, alice: GatewayClient, bob: GatewayClient
) -> None:
    base = gateway.base_url.replace("http", "ws") + "/api/v1/monitor/ws"
    with (
        connect(f"{base}?scope=campaign&token={ALICE}", open_timeout=WAIT) as everything,
        connect(f"{base}?token={BOB}", open_timeout=WAIT) as bobs,
    ):
        wait_until(
            lambda: httpx.get(f"{gateway.base_url}/metrics").text.count(
                'colmena_gateway_open_streams{channel="monitor-ws"} 2.0'
            ),
            "both watchers to be subscribed",
        )
        alice_id = alice.submit("echo", 1)
        bob_id = bob.submit("echo", 2)
        copies = [json.loads(everything.recv(timeout=WAIT))["result"] for _ in range(2)]
        assert {(c["task_id"], c["client"]) for c in copies} == {
            (alice_id, "alice"),
            (bob_id, "bob"),
        }
        (bob_copy,) = [json.loads(bobs.recv(timeout=WAIT))["result"]]
        assert bob_copy["task_id"] == bob_id
    # The copies took nothing: both results still wait for their clients
    wait_until(lambda: [r["task_id"] for r in alice.results(timeout=1)] == [alice_id], "alice")
    wait_until(lambda: [r["task_id"] for r in bob.results(timeout=1)] == [bob_id], "bob")


@pytest.mark.parametrize("channel", ["websocket", "sse"])
def test_gateway_killed_mid_stream_loses_nothing(
    gateway: GatewayProcess, alice: GatewayClient, channel: str
) -> None:
    ids = alice.submit_batch([alice.task("echo", i) for i in range(60)])
    stream = (
        alice.stream_results(idle_timeout=WAIT)
        if channel == "websocket"
        else alice.sse_results(idle_timeout=WAIT)
    )
    received: dict[str, Any] = {}
    for result in stream:
        received[result["task_id"]] = result["value"]
        if len(received) == 10:
            gateway.kill()  # SIGKILL: no chance to clean up
            gateway.start()  # same port: the client reconnects by itself
        if len(received) == len(ids):
            break
    assert received == {task_id: i for i, task_id in enumerate(ids)}
    # Results on the wire at the kill come again (at least once): only duplicates are left
    leftovers = alice.results(timeout=0.5) + raw_leftovers(gateway, ALICE)
    assert not leftovers, "the client drops duplicates, and nothing else may be left"


def raw_leftovers(gateway: GatewayProcess, token: str) -> list[dict[str, Any]]:
    """Results still waiting, read without de-duplication."""
    answer = httpx.get(
        f"{gateway.base_url}/api/v1/results",
        params={"timeout": 0.5},
        headers={"Authorization": f"Bearer {token}"},
        timeout=WAIT,
    )
    return list(answer.json()["results"])


def test_methods_come_from_heartbeats_and_leave_with_their_server(
    campaign: ThrowawayCampaign, gateway: GatewayProcess, alice: GatewayClient
) -> None:
    assert "square" not in methods_served(gateway.base_url)
    extra = TaskServerProcess(campaign.url, campaign.name, methods="EXTRA").start()
    try:
        wait_until(lambda: "square" in methods_served(gateway.base_url), "square to be served")
        status = alice.status()
        assert len(status["servers"]) == 2
        assert any(s["methods"] == ["square"] and s["capacity"] == 2 for s in status["servers"])
        alice.submit("square", 7)
        (result,) = wait_until(lambda: alice.results(timeout=2), "the result of square(7)")
        assert result["value"] == 49
    finally:
        extra.signal(signal.SIGTERM)
        assert extra.stop() == 0, extra.output()
        extra.close()
    wait_until(lambda: "square" not in methods_served(gateway.base_url), "square to leave")
    assert "echo" in methods_served(gateway.base_url)


# -------------------------------------------------------------------- errors
def test_error_codes_over_real_http(gateway: GatewayProcess, bob: GatewayClient) -> None:
    with pytest.raises(GatewayError) as refused:
        GatewayClient(gateway.base_url, "wrong-token-wrong-token").submit("echo", 1)
    assert refused.value.status_code == 401
    with pytest.raises(GatewayError) as refused:
        next(GatewayClient(gateway.base_url, "wrong-token-x").stream_results(idle_timeout=5))
    assert refused.value.status_code == 401
    with pytest.raises(GatewayError) as refused:
        bob.submit("echo", "x" * (17 * 1024 * 1024))
    assert refused.value.status_code == 413
    with pytest.raises(GatewayError) as refused:
        bob.submit("not a method")
    assert refused.value.status_code == 422
    with pytest.raises(GatewayError) as refused:
        bob.submit("echo", topic="undeclared")
    assert refused.value.status_code == 422 and "undeclared" in str(refused.value.detail)
    answer = httpx.get(
        f"{gateway.base_url}/api/v1/status/dead-letters",
        headers={"Authorization": f"Bearer {BOB}"},
    )
    assert answer.status_code == 403


def test_gateway_and_task_server_ride_out_a_broker_restart(
    throwaway_rabbitmq: ThrowawayRabbitMQ,
) -> None:
    broker = throwaway_rabbitmq
    server = TaskServerProcess(broker.url, "restart").start()
    gateway = GatewayProcess(broker.url, "restart").start()
    try:
        wait_until(lambda: "echo" in methods_served(gateway.base_url), "the methods")
        with GatewayClient(gateway.base_url, ALICE) as alice:
            before = set(alice.submit_batch([alice.task("echo", i) for i in range(5)]))
            broker.restart()  # results and tasks in flight are on disk: durable queues
            gateway.wait_ready()  # reconnected to the broker, watching the campaign again
            wait_until(lambda: "echo" in methods_served(gateway.base_url), "heartbeats again")
            after = set(alice.submit_batch([alice.task("echo", i) for i in range(5)]))
            received: set[str] = set()
            for result in alice.stream_results(idle_timeout=WAIT):
                received.add(result["task_id"])
                if received == before | after:
                    break
    finally:
        gateway.close()
        server.close()
