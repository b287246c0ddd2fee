"""The gateway against the thinker-side queues, on the same broker and task server, in one run.

Metrics:

- thinker round trip: ``RabbitMQQueues.send_inputs`` → ``get_result`` of one no-op task at
  a time (median and p99), and throughput with :data:`IN_FLIGHT` tasks in flight;
- gateway round trip: ``POST /api/v1/tasks`` → its result on the WebSocket (median, p99),
  and end-to-end throughput with a batch of :data:`IN_FLIGHT` tasks in flight;
- REST submission rate: ``POST /api/v1/tasks`` from :data:`CONCURRENT` clients at once (one
  task per request, each answered once the broker confirmed it), and
  ``POST /api/v1/tasks/batch`` of :data:`BATCH` tasks from :data:`BATCH_CLIENTS` clients.

The task server is a :class:`LocalTaskServer` with a thread pool serving a no-op, in this
process; the gateway runs as its own process (``colmena gateway``) on a loopback port,
as deployed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from benchmarks.report import Measurement, percentile, table, verdict
from colmena_core.queue.rabbitmq import RabbitMQQueues
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing import free_port
from colmena_core.testing.brokers import ThrowawayCampaign, acquire_rabbitmq

logger = logging.getLogger(__name__)

IN_FLIGHT = 64
"""Tasks in flight when measuring throughput."""

BATCH = 100
"""Tasks per request when measuring batch submission."""

CONCURRENT = 8
"""API clients submitting at once when measuring the REST submission rate."""

BATCH_CLIENTS = 4
"""API clients submitting batches at once when measuring the batch submission rate."""

WAIT = 60.0


def noop() -> None:
    """A task that does nothing."""
    return None


@contextlib.contextmanager
def _gateway(url: str, campaign: str, token: str) -> Iterator[str]:
    """A gateway process for the campaign; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "COLMENA_BROKER_URL": url,
        "COLMENA_CAMPAIGN": campaign,
        "COLMENA_GATEWAY_TOKENS": f"{token}:bench",
        "COLMENA_ENV": "production",
        "COLMENA_LOG_LEVEL": "WARNING",
        "COLMENA_RESULT_PREFETCH": str(2 * IN_FLIGHT),
    }
    command = [sys.executable, "-m", "colmena_services.cli", "gateway"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The gateway exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("The gateway did not become ready")
            time.sleep(0.05)  # polling a process we get no events from
        yield base
    finally:
        process.terminate()
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)


def _thinker(queues: RabbitMQQueues, result: Measurement, round_trips: int, tasks: int) -> None:
    samples = []
    for _ in range(round_trips):
        start = time.perf_counter()
        queues.send_inputs(method="noop")
        answer = queues.get_result(timeout=WAIT)
        assert answer is not None and answer.success, answer
        samples.append((time.perf_counter() - start) * 1000)
    result.round_trip_ms.append(percentile(samples, 0.5))
    result.round_trip_p99_ms.append(percentile(samples, 0.99))

    start = time.perf_counter()
    sent = received = 0
    while received < tasks:
        while sent < tasks and sent - received < IN_FLIGHT:
            queues.send_inputs(method="noop")
            sent += 1
        assert queues.get_result(timeout=WAIT) is not None
        received += 1
    result.throughput.append(tasks / (time.perf_counter() - start))


def _receive(socket: ClientConnection) -> dict[str, Any]:
    message = json.loads(socket.recv(timeout=WAIT))
    assert message["type"] == "result", message
    result: dict[str, Any] = message["result"]
    assert result["success"], result
    return result


def _gateway_round_trips(
    http: httpx.Client,
    socket: ClientConnection,
    result: Measurement,
    round_trips: int,
    tasks: int,
) -> None:
    samples = []
    for _ in range(round_trips):
        start = time.perf_counter()
        task_id = http.post("/api/v1/tasks", json={"method": "noop"}).json()["task_id"]
        assert _receive(socket)["task_id"] == task_id
        samples.append((time.perf_counter() - start) * 1000)
    result.round_trip_ms.append(percentile(samples, 0.5))
    result.round_trip_p99_ms.append(percentile(samples, 0.99))

    start = time.perf_counter()
    received = 0
    while received < tasks:
        count = min(IN_FLIGHT, tasks - received)
        answer = http.post("/api/v1/tasks/batch", json={"tasks": [{"method": "noop"}] * count})
        assert answer.status_code == 202, answer.text
        for _ in range(count):
            _receive(socket)
        received += count
    result.throughput.append(tasks / (time.perf_counter() - start))


def _submissions(
    base: str,
    headers: dict[str, str],
    socket: ClientConnection,
    single: Measurement,
    batch: Measurement,
    n: int,
) -> None:
    def post_many(count: int) -> list[float]:
        with httpx.Client(base_url=base, headers=headers, timeout=WAIT) as http:
            latencies = []
            for _ in range(count):
                began = time.perf_counter()
                assert http.post("/api/v1/tasks", json={"method": "noop"}).status_code == 202
                latencies.append((time.perf_counter() - began) * 1000)
            return latencies

    per_client = max(n // CONCURRENT, 1)
    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        samples = [x for part in pool.map(post_many, [per_client] * CONCURRENT) for x in part]
    single.throughput.append(len(samples) / (time.perf_counter() - start))
    single.round_trip_ms.append(percentile(samples, 0.5))
    single.round_trip_p99_ms.append(percentile(samples, 0.99))

    def post_batches(count: int) -> list[float]:
        body = {"tasks": [{"method": "noop"}] * BATCH}
        with httpx.Client(base_url=base, headers=headers, timeout=WAIT) as http:
            latencies = []
            for _ in range(count):
                began = time.perf_counter()
                assert http.post("/api/v1/tasks/batch", json=body).status_code == 202
                latencies.append((time.perf_counter() - began) * 1000)
            return latencies

    # Each batch is answered once the broker confirmed all its tasks: several clients keep
    # the broker busy while one waits, as they would for the thinker's tasks in flight
    batches_per_client = max(2 * n // (BATCH * BATCH_CLIENTS), 1)
    start = time.perf_counter()
    with ThreadPoolExecutor(BATCH_CLIENTS) as pool:
        batch_samples = [
            x for part in pool.map(post_batches, [batches_per_client] * BATCH_CLIENTS) for x in part
        ]
    batch.throughput.append(len(batch_samples) * BATCH / (time.perf_counter() - start))
    batch.round_trip_ms.append(percentile(batch_samples, 0.5))
    batch.round_trip_p99_ms.append(percentile(batch_samples, 0.99))
    for _ in range(len(batch_samples) * BATCH + len(samples)):  # drain for the next repeat
        _receive(socket)


def run(repeats: int = 3, quick: bool = False) -> dict[str, Measurement]:
    """Measure every configuration ``repeats`` times; returns measurements by name.

    Names: ``thinker`` (queues round trip and throughput), ``gateway-ws`` (REST submit →
    WebSocket result), ``rest-submit`` (one task per POST) and ``rest-batch``
    (``BATCH`` tasks per POST).
    """
    round_trips, tasks = (50, 300) if quick else (300, 3000)
    results = {
        "thinker": Measurement("thinker: send_inputs → get_result"),
        "gateway-ws": Measurement("gateway: POST /tasks → WebSocket result"),
        "rest-submit": Measurement(f"gateway: POST /tasks (1 task), {CONCURRENT} clients"),
        "rest-batch": Measurement(
            f"gateway: POST /tasks/batch ({BATCH} tasks), {BATCH_CLIENTS} clients"
        ),
    }
    broker = acquire_rabbitmq()
    token = secrets.token_urlsafe(24)
    try:
        with ThrowawayCampaign(broker.url, "bench-gateway") as campaign:
            campaign.methods.add("noop")
            campaign.clients["api-bench"] = {"default"}
            server_queues = campaign.queues(methods=["noop"], prefetch=2 * IN_FLIGHT)
            server = LocalTaskServer([noop], server_queues, num_workers=4, pool="thread")
            serving = threading.Thread(target=server.run, daemon=True)
            serving.start()
            thinker = campaign.queues(client_id="bench-thinker", methods=["noop"])
            try:
                with (
                    _gateway(broker.url, campaign.name, token) as base,
                    httpx.Client(
                        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT
                    ) as http,
                ):
                    ws_url = base.replace("http", "ws", 1) + "/api/v1/results/ws"
                    with connect(
                        ws_url, additional_headers={"Authorization": f"Bearer {token}"}
                    ) as socket:
                        # Warm up both paths (connections, queue declarations)
                        _thinker(thinker, Measurement("warm-up"), 10, 50)
                        _gateway_round_trips(http, socket, Measurement("warm-up"), 10, 50)
                        for repeat in range(repeats):
                            logger.info("Gateway benchmark, repeat %d of %d", repeat + 1, repeats)
                            _thinker(thinker, results["thinker"], round_trips, tasks)
                            _gateway_round_trips(
                                http, socket, results["gateway-ws"], round_trips, tasks
                            )
                            _submissions(
                                base,
                                {"Authorization": f"Bearer {token}"},
                                socket,
                                results["rest-submit"],
                                results["rest-batch"],
                                tasks // 3,
                            )
            finally:
                server.request_stop()
                serving.join(WAIT)
    finally:
        broker.close()
    return results


def section(results: dict[str, Measurement], repeats: int = 3) -> str:
    """The Markdown section of docs/performance.md for these measurements."""
    thinker, gateway = results["thinker"], results["gateway-ws"]
    single, batch = results["rest-submit"], results["rest-batch"]
    rows = [
        [m.name, f"{m.round_trip:.2f}", f"{m.round_trip_p99:.2f}", f"{m.rate:,.0f}"]
        for m in (thinker, gateway, single, batch)
    ]
    extra = gateway.round_trip - thinker.round_trip
    ratio = gateway.rate / thinker.rate
    bars = [
        [
            "median round trip: gateway − thinker",
            f"{extra:+.2f} ms",
            "≤ +5 ms",
            verdict(extra, 5.0, higher_is_better=False),
        ],
        [
            f"throughput, {IN_FLIGHT} in flight: gateway / thinker",
            f"{ratio:.2f}×",
            "≥ 0.5×",
            verdict(ratio, 0.5),
        ],
        [
            "REST batch submission rate / thinker throughput",
            f"{batch.rate / thinker.rate:.2f}×",
            "≥ 1.0×",
            verdict(batch.rate / thinker.rate, 1.0),
        ],
    ]
    return "\n\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} "
            f"({os.cpu_count()} cores) with Python "
            f"{platform.python_version()}; medians of {repeats} runs; one RabbitMQ broker on "
            "loopback, a no-op task server (thread pool of 4), the gateway in its own process. "
            "Round trips are one task at a time; throughput keeps "
            f"{IN_FLIGHT} tasks in flight; submissions are answered once the broker confirmed "
            "them. The 'round trip' of the REST rows is the latency of one request.",
            table(rows, ["configuration", "round trip, median (ms)", "p99 (ms)", "tasks/s"]),
            table(bars, ["bar", "measured", "target", "verdict"]),
        ]
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("colmena_core", "pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    measured = run(1, quick=True)
    print(section(measured, 1))
