"""The gateway under a hostile or careless API client: real gateway processes on loopback,
a real task server and a real broker.

One client opening stream after stream neither takes the channels others need nor stops
their results; clients that stop reading lose nothing, with either acknowledgement mode;
bodies that are too large, too deep or not text are refused at once with a 4xx, before
the token is even checked for anything but its presence, while ``/healthz`` keeps
answering; a result the gateway cannot encode goes to the dead letters and the stream goes
on; tokens never reach the log; the token cookie works only from the gateway's own pages.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_support import (
    ALICE,
    BOB,
    TOKENS,
    WAIT,
    GatewayProcess,
    TaskServerProcess,
    methods_served,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from colmena_core.testing.brokers import ThrowawayCampaign
from colmena_services.client import GatewayClient, GatewayError

pytestmark = pytest.mark.timeout(180)

CAROL = "carol-token-0123456789"
STREAMS_PER_CLIENT = 3
CHANNELS = 3
CONNECTIONS = 2
"""The gateway holds CONNECTIONS x CHANNELS = 6 result streams, 3 per client: Bob's one,
Alice's three and Carol's two fill it."""

SEND_TIMEOUT = 2.0
BLOB = 64 * 1024
"""Size of the results that fill a client's socket: 300 of them, 19 MiB (loopback's socket
buffers took 5 MiB here), uncompressed."""


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def campaign(rabbitmq_url: str) -> Iterator[ThrowawayCampaign]:
    with ThrowawayCampaign(rabbitmq_url, "gateway-abuse") as campaign:
        campaign.methods.update({"add", "echo", "fail", "noop", "blob", "nested"})
        for client in ("api-alice", "api-bob", "api-carol"):
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
    process = GatewayProcess(
        campaign.url,
        campaign.name,
        gateway_tokens=f"{TOKENS},{CAROL}:carol",
        max_streams_per_client=str(STREAMS_PER_CLIENT),
        max_polls_per_client="2",
        broker_connections=str(CONNECTIONS),
        channels_per_connection=str(CHANNELS),
        send_timeout=str(SEND_TIMEOUT),
        result_prefetch="256",  # with ack=client too, more than the sockets' buffers hold
        log_level="DEBUG",  # uvicorn's access log too: no token may appear in any of it
    ).start()
    wait_until(lambda: "blob" in methods_served(process.base_url), "the task server's methods")
    yield process
    process.close()


def ws_url(gateway: GatewayProcess, token: str, ack: str = "auto") -> str:
    return gateway.base_url.replace("http", "ws") + f"/api/v1/results/ws?token={token}&ack={ack}"


def submit(gateway: GatewayProcess, token: str, method: str, *args: Any) -> str:
    answer = httpx.post(
        f"{gateway.base_url}/api/v1/tasks",
        json={"method": method, "args": list(args)},
        headers=auth(token),
        timeout=WAIT,
    )
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


def submit_many(gateway: GatewayProcess, token: str, method: str, args: list[Any]) -> set[str]:
    answer = httpx.post(
        f"{gateway.base_url}/api/v1/tasks/batch",
        json={"tasks": [{"method": method, "args": [a]} for a in args]},
        headers=auth(token),
        timeout=WAIT,
    )
    assert answer.status_code == 202, answer.text
    return set(answer.json()["task_ids"])


def poll_ids(gateway: GatewayProcess, token: str, wanted: set[str]) -> set[str]:
    """Long-poll (ack=auto) until every task of ``wanted`` came; returns all task IDs seen."""
    seen: set[str] = set()

    def more() -> bool:
        answer = httpx.get(
            f"{gateway.base_url}/api/v1/results",
            params={"timeout": 1, "max": 1000},
            headers=auth(token),
            timeout=WAIT,
        )
        assert answer.status_code == 200, answer.text
        seen.update(r["task_id"] for r in answer.json()["results"])
        return wanted <= seen

    wait_until(more, f"{len(wanted - seen)} more results")
    return seen


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """A sample of the gateway's metrics (read with a token: per client)."""
    text = httpx.get(f"{gateway.base_url}/metrics", headers=auth(ALICE), timeout=WAIT).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def receive_result(socket: ClientConnection) -> dict[str, Any]:
    message = json.loads(socket.recv(timeout=WAIT))
    assert message["type"] == "result"
    result: dict[str, Any] = message["result"]
    return result


def refusal_status(url: str, **kwargs: Any) -> tuple[int, dict[str, str]]:
    """The HTTP status and headers a WebSocket handshake is refused with."""
    with pytest.raises(InvalidStatus) as refused, connect(url, open_timeout=WAIT, **kwargs):
        pass
    response = refused.value.response
    return response.status_code, dict(response.headers)


# ----------------------------------------------------------------- fair sharing
def test_one_client_cannot_take_the_streams_of_others(gateway: GatewayProcess) -> None:
    with contextlib.ExitStack() as bobs:
        bob = bobs.enter_context(connect(ws_url(gateway, BOB), open_timeout=WAIT))
        attack(gateway, bob)
    assert metric(gateway, "colmena_gateway_refused_total", reason="too_many_streams") >= 21
    assert metric(gateway, "colmena_gateway_refused_total", reason="gateway_full") >= 1


def attack(gateway: GatewayProcess, bob: ClientConnection) -> None:
    """Alice and Carol take every stream they can while Bob receives results."""
    with contextlib.ExitStack() as sockets:
        task = submit(gateway, BOB, "add", 1, 2)
        assert receive_result(bob)["task_id"] == task
        # Alice opens stream after stream: beyond her limit, 429 with Retry-After
        for _ in range(STREAMS_PER_CLIENT):
            sockets.enter_context(connect(ws_url(gateway, ALICE), open_timeout=WAIT))
        for _ in range(20):
            status, headers = refusal_status(ws_url(gateway, ALICE))
            assert status == 429 and int(headers["retry-after"]) > 0
        answer = httpx.get(
            f"{gateway.base_url}/api/v1/results/sse", headers=auth(ALICE), timeout=WAIT
        )
        assert answer.status_code == 429 and "retry-after" in answer.headers
        assert "COLMENA_MAX_STREAMS_PER_CLIENT" in answer.json()["detail"]
        # Bob still receives his results meanwhile
        task = submit(gateway, BOB, "add", 2, 3)
        assert receive_result(bob)["task_id"] == task
        # Carol takes the last stream the gateway can hold: it says it is not ready, and
        # refuses further streams with 503 (not the broker's channel limit)
        sockets.enter_context(connect(ws_url(gateway, CAROL), open_timeout=WAIT))
        assert httpx.get(f"{gateway.base_url}/readyz").status_code == 200
        sockets.enter_context(connect(ws_url(gateway, CAROL), open_timeout=WAIT))
        ready = httpx.get(f"{gateway.base_url}/readyz")
        assert ready.status_code == 503 and ready.json()["streams_free"] == 0
        status, headers = refusal_status(ws_url(gateway, CAROL))
        assert status == 503 and "retry-after" in headers
        task = submit(gateway, BOB, "add", 3, 4)
        assert receive_result(bob)["task_id"] == task
    wait_until(
        lambda: httpx.get(f"{gateway.base_url}/readyz").status_code == 200,
        "the gateway to be ready again once the streams closed",
    )
    task = submit(gateway, BOB, "add", 4, 5)
    assert receive_result(bob)["task_id"] == task


def test_the_python_client_waits_for_a_free_stream(gateway: GatewayProcess) -> None:
    extra = ws_url(gateway, CAROL) + "&topic=extra"  # these take none of the results below
    with GatewayClient(gateway.base_url, CAROL) as carol, contextlib.ExitStack() as sockets:
        for _ in range(STREAMS_PER_CLIENT):
            sockets.enter_context(connect(extra, open_timeout=WAIT))
        with pytest.raises(GatewayError) as refused:
            next(carol.stream_results(idle_timeout=WAIT, reconnect=False))
        assert refused.value.status_code == 429
        assert "COLMENA_MAX_STREAMS_PER_CLIENT" in refused.value.detail
        task = carol.submit("add", 20, 22)
        stream = carol.stream_results(idle_timeout=WAIT, topics=["default"])
        threading.Timer(1.0, sockets.close).start()  # while the client waits out its 429s
        result = next(stream)
        assert result["task_id"] == task and result["value"] == 42
        stream.close()


def test_long_polls_are_limited_per_client(gateway: GatewayProcess) -> None:
    def poll(token: str, wait: float = 0) -> httpx.Response:
        return httpx.get(
            f"{gateway.base_url}/api/v1/results",
            params={"timeout": wait, "topic": "extra", "max": 1},
            headers=auth(token),
            timeout=WAIT,
        )

    def streams_free() -> int:
        free: int = httpx.get(f"{gateway.base_url}/readyz").json()["streams_free"]
        return free

    capacity = CONNECTIONS * CHANNELS
    answers: list[int] = []
    waiting = [
        threading.Thread(target=lambda: answers.append(poll(ALICE, WAIT).status_code))
        for _ in range(2)
    ]
    for thread in waiting:
        thread.start()
    wait_until(lambda: streams_free() == capacity - 2, "two long-polls to be waiting")
    refused = poll(ALICE)
    assert refused.status_code == 429 and "retry-after" in refused.headers
    assert "COLMENA_MAX_POLLS_PER_CLIENT" in refused.json()["detail"]
    assert poll(BOB).status_code == 200  # others are not affected
    for value in (1, 2):  # one result for each waiting long-poll (max=1), which returns
        answer = httpx.post(
            f"{gateway.base_url}/api/v1/tasks",
            json={"method": "add", "args": [value, 0], "topic": "extra"},
            headers=auth(ALICE),
            timeout=WAIT,
        )
        assert answer.status_code == 202
    for thread in waiting:
        thread.join(WAIT)
    assert answers == [200, 200]
    assert poll(ALICE).status_code == 200
    assert streams_free() == capacity  # every long-poll gave its channel back


# ------------------------------------------------------------- delivery
def read_until_closed(socket: ClientConnection) -> list[str]:
    """Task IDs of the results left in a socket's buffers, up to its end."""
    ids = []
    try:
        while True:
            ids.append(receive_result(socket)["task_id"])
    except ConnectionClosed:
        return ids


@pytest.mark.parametrize("ack", ["auto", "client"])
def test_a_websocket_client_that_stops_reading_loses_nothing(
    gateway: GatewayProcess, ack: str
) -> None:
    # Enough to fill the socket buffers on both sides of loopback
    wanted = submit_many(gateway, ALICE, "blob", [BLOB] * 300)
    got: set[str] = set()
    with connect(
        ws_url(gateway, ALICE, ack),
        open_timeout=WAIT,
        close_timeout=1,  # its reading is paused: no close handshake
        max_queue=1,
        compression=None,
    ) as stalled:
        stop_reading(gateway, stalled, ack, got)
    got |= poll_ids(gateway, ALICE, wanted - got)
    assert wanted <= got


def stop_reading(
    gateway: GatewayProcess, stalled: ClientConnection, ack: str, got: set[str]
) -> None:
    """Read a few results from ``stalled``, then nothing until the gateway gives up on it."""
    slow_before = metric(gateway, "colmena_gateway_refused_total", reason="slow_client")
    for _ in range(5):
        got.add(receive_result(stalled)["task_id"])
    if ack == "client":
        stalled.send(json.dumps({"type": "ack", "task_ids": sorted(got)}))
    # ... then it stops reading: the gateway closes the stream after its send timeout
    wait_until(
        lambda: (
            metric(gateway, "colmena_gateway_refused_total", reason="slow_client") > slow_before
        ),
        "the gateway to give up on the stalled client",
    )
    if ack == "auto":  # what was written is in the socket: the client can still read it
        got.update(read_until_closed(stalled))
    # with ack=client, what it did not acknowledge comes again, whatever it did with it


def test_an_sse_client_that_stops_reading_loses_nothing(gateway: GatewayProcess) -> None:
    wanted = submit_many(gateway, BOB, "blob", [BLOB] * 300)
    slow_before = metric(gateway, "colmena_gateway_refused_total", reason="slow_client")
    got: set[str] = set()
    with httpx.stream(
        "GET", f"{gateway.base_url}/api/v1/results/sse", headers=auth(BOB), timeout=WAIT
    ) as response:
        lines = response.iter_lines()
        while len(got) < 5:
            line = next(lines)
            if line.startswith("id:"):
                got.add(line.partition(":")[2].strip())
        wait_until(
            lambda: (
                metric(gateway, "colmena_gateway_refused_total", reason="slow_client") > slow_before
            ),
            "the gateway to give up on the stalled client",
        )
        try:
            for line in lines:  # what was written is in the socket
                if line.startswith("id:"):
                    got.add(line.partition(":")[2].strip())
        except httpx.HTTPError:
            pass  # the stream ends without its last chunk: it was cut
    got |= poll_ids(gateway, BOB, wanted - got)
    assert wanted <= got


def test_a_result_that_cannot_be_encoded_is_dead_lettered_and_the_stream_goes_on(
    gateway: GatewayProcess,
) -> None:
    with connect(ws_url(gateway, CAROL), open_timeout=WAIT) as stream:
        deep = submit(gateway, CAROL, "nested", 900)
        after = submit(gateway, CAROL, "add", 1, 1)
        assert receive_result(stream)["task_id"] == after

    def dead_letter() -> dict[str, Any] | None:
        answer = httpx.get(
            f"{gateway.base_url}/api/v1/status/dead-letters", headers=auth(ALICE), timeout=WAIT
        )
        letters = [d for d in answer.json()["dead_letters"] if d["task_id"] == deep]
        return letters[0] if letters else None

    letter = wait_until(dead_letter, "the dead letter of the unencodable result")
    assert "result" in letter["reason"] and "Recursion" in letter["reason"]
    # The same for a long-poll: no subscription is left behind to hold later results
    deep = submit(gateway, CAROL, "nested", 900)
    later = submit(gateway, CAROL, "add", 2, 2)
    assert later in poll_ids(gateway, CAROL, {later})
    wait_until(dead_letter, "the dead letter of the second unencodable result")


# --------------------------------------------------------------- bad input
def raw_request(gateway: GatewayProcess, head: str, body: bytes = b"") -> str:
    """Send a request's head and the start of its body; return the status line of the
    answer (the server must answer without the rest of the body)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT) as raw:
        raw.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = raw.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode()


def test_bad_bodies_get_a_fast_4xx_and_the_event_loop_keeps_serving(
    gateway: GatewayProcess,
) -> None:
    stop = threading.Event()
    health: list[tuple[int, float]] = []

    def watch_health() -> None:
        with httpx.Client(timeout=WAIT) as client:
            while not stop.is_set():
                started = time.perf_counter()
                status = client.get(f"{gateway.base_url}/healthz").status_code
                health.append((status, time.perf_counter() - started))

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    huge = 15 * 1024 * 1024
    head = f"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {huge}"
    # No token: refused from the head alone, however large the body says it is
    assert " 401 " in raw_request(gateway, head, b'{"method": "echo", "args": [')
    assert " 401 " in raw_request(gateway, head + "\r\nAuthorization: Bearer wrong-wrong-wrong")
    # A token, and a body over the limit: refused from its Content-Length
    big = head.replace(str(huge), str(17 * 1024 * 1024))
    assert " 413 " in raw_request(gateway, big + f"\r\nAuthorization: Bearer {ALICE}")

    def post(
        body: bytes,
        token: str | None = ALICE,
        path: str = "/api/v1/tasks",
        content_type: str = "application/json",
    ) -> httpx.Response:
        headers = {"Content-Type": content_type, **(auth(token) if token else {})}
        return httpx.post(f"{gateway.base_url}{path}", content=body, headers=headers, timeout=WAIT)

    deep_values = [b"[" * depth + b"]" * depth for depth in (450, 900, 100_000)]
    for value in deep_values:
        answer = post(b'{"method": "echo", "args": [' + value + b"]}")
        assert answer.status_code == 422 and "nested" in answer.text, answer.text
        assert post(value, token=None).status_code == 401
    unterminated = post(b'{"method": "echo", "args": ' + b"[" * 200_000)
    assert unterminated.status_code == 422
    # Brackets inside strings do not count
    answer = post(json.dumps({"method": "echo", "args": ["[" * 1000 + '\\"[']}).encode())
    assert answer.status_code == 202, answer.text
    # Not text: pickles, as JSON or as anything else
    for content_type in ("application/json", "application/octet-stream"):
        answer = post(
            b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00}\xff\xfe.", content_type=content_type
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["msg"]
    # Numbers Python refuses to convert
    answer = post(b'{"method": "echo", "args": [1' + b"0" * 5000 + b"]}")
    assert answer.status_code == 400 and "digits" in answer.json()["detail"]
    # A batch far over the limit: refused before it is parsed
    many = json.dumps({"tasks": [{"method": "noop"}] * 100_000}).encode()
    answer = post(many, path="/api/v1/tasks/batch")
    assert answer.status_code == 422 and "at most 1000 tasks" in answer.text
    # A WebSocket message that claims to be text and is not: closed, no traceback
    with connect(ws_url(gateway, ALICE) + "&topic=extra", open_timeout=WAIT) as stream:
        stream.send(b"\xff\xfe", text=True)
        with pytest.raises(ConnectionClosed) as closed:
            stream.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    stop.set()
    watcher.join(WAIT)
    # /healthz answered all along (its latencies, not asserted: see the gateway benchmark)
    assert health and all(status == 200 for status, _ in health)
    assert "Traceback" not in gateway.output()
    assert "sent text that is not UTF-8" in gateway.output()  # said, in one line
    assert metric(gateway, "colmena_gateway_refused_total", reason="too_deep") >= 4
    assert metric(gateway, "colmena_gateway_refused_total", reason="unauthorized") >= 5
    assert metric(gateway, "colmena_gateway_request_seconds_count", route="/healthz") >= 1


# ------------------------------------------------------------------ secrets
def test_tokens_never_reach_the_log(gateway: GatewayProcess) -> None:
    for token in (ALICE, "a-token-that-is-wrong-0123"):
        with connect(ws_url(gateway, token), open_timeout=WAIT) as stream:
            if token != ALICE:
                with pytest.raises(ConnectionClosed):
                    stream.recv(timeout=WAIT)
        httpx.get(f"{gateway.base_url}/api/v1/methods", headers=auth(token), timeout=WAIT)
        httpx.get(f"{gateway.base_url}/api/v1/results/sse?token={token}&ack=x", timeout=WAIT)
    log = gateway.output()
    assert "token=[redacted]" in log  # the paths were logged, without their tokens
    for secret in (ALICE, BOB, CAROL, "a-token-that-is-wrong-0123"):
        assert secret not in log


def test_probes_and_metrics_say_nothing_of_clients_without_a_token(
    gateway: GatewayProcess,
) -> None:
    public = httpx.get(f"{gateway.base_url}/metrics").text
    private = httpx.get(f"{gateway.base_url}/metrics", headers=auth(ALICE)).text
    assert 'client="alice"' in private and "client=" not in public
    assert "colmena_gateway_tasks_submitted_total" in public
    assert "campaign" not in httpx.get(f"{gateway.base_url}/readyz").json()


def test_the_token_cookie_is_taken_only_from_the_gateways_own_pages(
    gateway: GatewayProcess,
) -> None:
    cookie = {"Cookie": f"colmena_token={ALICE}"}
    own = gateway.base_url
    ws = gateway.base_url.replace("http", "ws")
    status, _ = refusal_status(
        f"{ws}/api/v1/results/ws",
        additional_headers={**cookie, "Origin": "http://elsewhere.example"},
    )
    assert status == 403
    with connect(
        f"{ws}/api/v1/monitor/ws", additional_headers={**cookie, "Origin": own}
    ) as accepted:
        accepted.ping().wait(WAIT)
    sse = f"{own}/api/v1/monitor/sse"
    answer = httpx.get(sse, headers={**cookie, "Origin": "http://elsewhere.example"})
    assert answer.status_code == 403 and "cookie" in answer.json()["detail"]
    with httpx.stream("GET", sse, headers={**cookie, "Origin": own}, timeout=WAIT) as answer:
        assert answer.status_code == 200
    # A token in the header is no ambient credential: any origin may use it
    with httpx.stream(
        "GET", sse, headers={**auth(ALICE), "Origin": "http://elsewhere.example"}, timeout=WAIT
    ) as answer:
        assert answer.status_code == 200


@pytest.mark.parametrize(
    "path", ["/healthz", "/", "/api/v1/methods", "/api/v1/nothing", "/metrics", "/static/app.js"]
)
def test_every_answer_carries_the_security_headers(gateway: GatewayProcess, path: str) -> None:
    answer = httpx.get(f"{gateway.base_url}{path}", headers=auth(BOB), timeout=WAIT)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
