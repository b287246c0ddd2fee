"""Colmena's ParslTaskServer against Parsl alone, on the same HighThroughputExecutor.

Metrics (names from the original Colmena's performance studies): round trip of one no-op
task at a time (median and p99), throughput with 64 tasks in flight, and both again with a
1 MiB numpy argument, with and without ProxyStore.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import parsl
from parsl.app.app import python_app
from parsl.config import Config
from proxystore.connectors.file import FileConnector
from proxystore.store import Store, unregister_store

from benchmarks.report import Measurement, RunCpu, percentile
from colmena_core.queue import ColmenaQueues, PipeQueues
from colmena_core.task_server import ParslTaskServer
from colmena_core.task_server.parsl import local_config

logger = logging.getLogger(__name__)

IN_FLIGHT = 64
MIB = 1024 * 1024


def noop(*args: Any) -> None:
    """A task that does nothing."""
    return None


STORE_PARENT = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""Where the ProxyStore runs keep their files: in memory when the machine offers it, as a
node-local store would; a virtual machine's disk adds milliseconds per 1 MiB write."""


def htex_config(workers: int = 2) -> Config:
    """The executor every configuration is measured on: 2 local workers."""
    # Workers import this module by name: put the repository on their path
    root = str(Path(__file__).resolve().parent.parent)
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if root not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *entries])
    return local_config(workers, tempfile.mkdtemp(prefix="colmena-bench-"))


def _round_trips(call: Callable[[], None], count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return percentile(samples, 0.5), percentile(samples, 0.99)


def parsl_alone(result: Measurement, payload: Any, round_trips: int, tasks: int) -> None:
    """Measure Parsl's own round trip and throughput with ``payload`` as the argument."""
    dfk = parsl.load(htex_config())
    try:
        app = python_app(noop, executors=["htex"])
        for _ in range(20):  # warm up the workers
            app(payload).result()
        median, p99 = _round_trips(lambda: app(payload).result(), round_trips)
        result.round_trip_ms.append(median)
        result.round_trip_p99_ms.append(p99)

        slots = threading.Semaphore(IN_FLIGHT)
        finished = threading.Event()
        remaining = [tasks]
        lock = threading.Lock()

        def done(_: Any) -> None:
            slots.release()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()

        with RunCpu(result, tasks, parts={"client": os.getpid()}):
            start = time.perf_counter()
            for _ in range(tasks):
                slots.acquire()
                app(payload).add_done_callback(done)
            if not finished.wait(timeout=600):
                raise TimeoutError("Parsl did not finish the throughput run")
            result.throughput.append(tasks / (time.perf_counter() - start))
    finally:
        dfk.cleanup()
        parsl.clear()


def colmena_parsl(
    result: Measurement,
    payload: Any,
    round_trips: int,
    tasks: int,
    queues_factory: Callable[[], ColmenaQueues] = PipeQueues,
    broker_port: int | None = None,
) -> None:
    """Measure the same through a thinker, the queues and a ParslTaskServer process.

    ``broker_port`` names the broker whose CPU counts as the run's, if the queues use one.
    """
    queues = queues_factory()
    server = ParslTaskServer([noop], queues, htex_config())
    server.start()
    try:

        def one() -> None:
            queues.send_inputs(payload, method="noop")
            outcome = queues.get_result(timeout=120)
            assert outcome is not None and outcome.success, outcome

        for _ in range(20):
            one()
        median, p99 = _round_trips(one, round_trips)
        result.round_trip_ms.append(median)
        result.round_trip_p99_ms.append(p99)

        parts = {"thinker": os.getpid(), "task server": server.pid}
        with RunCpu(result, tasks, broker_port, parts):
            start = time.perf_counter()
            sent = 0
            for _ in range(min(IN_FLIGHT, tasks)):
                queues.send_inputs(payload, method="noop")
                sent += 1
            for _ in range(tasks):
                outcome = queues.get_result(timeout=120)
                assert outcome is not None and outcome.success, outcome
                if sent < tasks:
                    queues.send_inputs(payload, method="noop")
                    sent += 1
            result.throughput.append(tasks / (time.perf_counter() - start))
    finally:
        queues.send_kill_signal()
        server.join(timeout=60)
        if server.is_alive():
            server.terminate()


def run(repeats: int, quick: bool) -> dict[str, Measurement]:
    """Every configuration, interleaved so that drift affects them alike."""
    round_trips = 100 if quick else 300
    tasks = 500 if quick else 2000
    big_tasks = 100 if quick else 400
    array = np.random.default_rng(0).random(MIB // 8)

    store_dir = tempfile.mkdtemp(prefix="colmena-bench-store-", dir=STORE_PARENT)
    store_name = f"bench-{uuid.uuid4().hex[:6]}"
    store = Store(store_name, FileConnector(store_dir), register=True)

    def proxied_queues() -> ColmenaQueues:
        return PipeQueues(proxystore_name=store_name, proxystore_threshold=100_000)

    results = {
        name: Measurement(name)
        for name in ("parsl", "colmena", "parsl-1mib", "colmena-1mib", "colmena-1mib-proxystore")
    }
    try:
        for repeat in range(repeats):
            logger.info("Repeat %d of %d", repeat + 1, repeats)
            parsl_alone(results["parsl"], None, round_trips, tasks)
            colmena_parsl(results["colmena"], None, round_trips, tasks)
            parsl_alone(results["parsl-1mib"], array, round_trips // 3, big_tasks)
            colmena_parsl(results["colmena-1mib"], array, round_trips // 3, big_tasks)
            colmena_parsl(
                results["colmena-1mib-proxystore"],
                array,
                round_trips // 3,
                big_tasks,
                proxied_queues,
            )
    finally:
        store.close()
        unregister_store(store_name)
    return results
