"""Colmena's RabbitMQ queues against raw pika and against Parsl alone, measured in one run.

1. Queue layer alone: round trip of one no-op task at a time between a thinker (this
   process) and a task server process running a plain echo loop on ``get_task`` /
   ``send_result`` (no engine), next to a raw pika request/reply pair between two processes
   with the same guarantees (durable quorum queues, persistent messages, publisher confirms,
   manual acknowledgements), and without publisher confirms.
2. Pipelined throughput with ``IN_FLIGHT`` no-op tasks in flight: the echo loop, a
   :class:`LocalTaskServer` on a thread pool, and the raw pika pair.
3. :class:`ParslTaskServer` on the HighThroughputExecutor (2 workers) through RabbitMQ,
   against Parsl alone on the same executor (see :mod:`benchmarks.engine`).
4. Scale: 100,000 no-op tasks queued by a thinker process while no task server runs (its
   RSS growth), then a task server starts and drains them (time and throughput).

Every configuration runs on its own campaign, deleted from the broker afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import pika
import psutil

from benchmarks import engine, raw_pika
from benchmarks.report import (
    Measurement,
    cpu_ceiling,
    cpu_cell,
    cpu_seconds_between,
    parts_cell,
    percentile,
    run_cpu_seconds,
    table,
    verdict,
)
from colmena_core.exceptions import KillSignalException, TimeoutException
from colmena_core.models import Result
from colmena_core.models.wire import encode_result
from colmena_core.queue.base import QueueRole
from colmena_core.queue.rabbitmq import RabbitMQQueues, queue_depths
from colmena_core.task_server import LocalTaskServer
from colmena_core.testing.brokers import (
    URL_VARIABLE,
    BrokerUnavailableError,
    RabbitMQBroker,
    ThrowawayCampaign,
    ThrowawayRabbitMQ,
    acquire_rabbitmq,
)

__all__ = ["RabbitMQResults", "ScaleFigures", "run", "section"]

logger = logging.getLogger(__name__)

IN_FLIGHT = 128
"""Tasks in flight in the pipelined runs of the queue layer (requests a server may hold)."""
LOCAL_WORKERS = 2
"""Threads of the LocalTaskServer pool."""
WARMUP = 20
RESULT_TIMEOUT = 120.0
"""Seconds any single wait for a result, a process or the broker may last."""
SCALE_MB = 200.0
"""Largest RSS growth of the thinker with the scale run's tasks queued (MiB)."""
THROUGHPUT_BAR = 2000.0
"""Tasks per second the pipelined LocalTaskServer must reach."""

_METHOD = "noop"
_SPAWN = multiprocessing.get_context("spawn")


# ------------------------------------------------------------------ results
@dataclass
class ScaleFigures:
    """The scale run: memory of the thinker while tasks wait, then the drain."""

    tasks: int
    queue_seconds: float = float("nan")
    """Time to send every task and see the broker hold them all"""
    rss_before_mb: float = float("nan")
    rss_queued_mb: float = float("nan")
    """RSS once every task was sent and the broker holds them"""
    rss_peak_mb: float = float("nan")
    """Largest RSS seen, sampled every 50 ms, from the first send to the last result"""
    queued_on_broker: int = 0
    drain_seconds: float = float("nan")
    """From the start of the task server to the last result received"""
    completed: int = 0
    failed: int = 0

    @property
    def growth_queued_mb(self) -> float:
        return self.rss_queued_mb - self.rss_before_mb

    @property
    def growth_peak_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb

    @property
    def drain_rate(self) -> float:
        return self.completed / self.drain_seconds if self.drain_seconds else float("nan")


@dataclass
class RabbitMQResults:
    """Everything the RabbitMQ suite measured, and how."""

    repeats: int
    quick: bool
    broker: str = ""
    measurements: dict[str, Measurement] = field(default_factory=dict)
    cpu_ms: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """CPU milliseconds per task of the thinker and the task server in pipelined runs"""
    scale: ScaleFigures | None = None
    request_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    """What went wrong, if anything"""
    load: tuple[float, float] = (float("nan"), float("nan"))
    """1-minute load average of the machine when the suite started and ended"""

    def cpu(self, name: str) -> tuple[float, float]:
        """Median CPU milliseconds per task of the thinker and the server."""
        runs = self.cpu_ms.get(name)
        if not runs:
            return float("nan"), float("nan")
        return (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )


# --------------------------------------------------------------- helpers
def noop(*args: Any) -> None:
    """A task that does nothing (served as ``noop``)."""
    return None


def _request_size() -> int:
    """Bytes of the message that carries one no-op request, for raw pika to send alike."""
    result = Result(((None,), {}), method=_METHOD)
    result.serialize()
    return len(encode_result(result))


def _join(process: Any, timeout: float = 60.0) -> None:
    """Wait for a process to end; terminate it (then kill it) if it does not."""
    process.join(timeout)
    if process.is_alive():
        logger.warning("%s did not stop within %s s: terminating it", process.name, timeout)
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)


@contextlib.contextmanager
def _campaign(url: str) -> Iterator[ThrowawayCampaign]:
    campaign = ThrowawayCampaign(url, prefix="bench")
    try:
        yield campaign
    finally:
        try:
            campaign.close()
        except Exception:
            logger.warning("Could not delete campaign %s", campaign.name, exc_info=True)


def _round_trips(queues: RabbitMQQueues, count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        queues.send_inputs(None, method=_METHOD)
        outcome = queues.get_result(timeout=RESULT_TIMEOUT)
        samples.append((time.perf_counter() - start) * 1000)
        assert outcome is not None and outcome.success, outcome
    return percentile(samples, 0.5), percentile(samples, 0.99)


def _pipelined(queues: RabbitMQQueues, tasks: int, in_flight: int) -> float:
    """Tasks per second with ``in_flight`` tasks kept in flight."""
    start = time.perf_counter()
    sent = 0
    for _ in range(min(in_flight, tasks)):
        queues.send_inputs(None, method=_METHOD)
        sent += 1
    for _ in range(tasks):
        outcome = queues.get_result(timeout=RESULT_TIMEOUT)
        assert outcome is not None and outcome.success, outcome
        if sent < tasks:
            queues.send_inputs(None, method=_METHOD)
            sent += 1
    return tasks / (time.perf_counter() - start)


def _broker_port(url: str) -> int:
    return pika.URLParameters(url).port


def _cpu_probe(server_pid: int | None, url: str) -> raw_pika.CpuProbe:
    """CPU seconds used from now on by this process, by the server process, and by every
    process of the run (the broker at ``url`` included)."""
    if server_pid is None:
        raise RuntimeError("The server process has not started")
    me = psutil.Process()
    server = psutil.Process(server_pid)
    port = _broker_port(url)
    start = run_cpu_seconds(port)

    def probe() -> tuple[float, float, float]:
        mine, theirs = me.cpu_times(), server.cpu_times()
        run = cpu_seconds_between(start, run_cpu_seconds(port))
        return mine.user + mine.system, theirs.user + theirs.system, run

    return probe


def _measure_queues(
    queues: RabbitMQQueues,
    result: Measurement,
    round_trips: int,
    tasks: int,
    probe: raw_pika.CpuProbe,
) -> tuple[float, float]:
    """Round trips, then the pipelined run; returns CPU ms per task of thinker and server."""
    for _ in range(WARMUP):
        _round_trips(queues, 1)
    if round_trips:
        median, p99 = _round_trips(queues, round_trips)
        result.round_trip_ms.append(median)
        result.round_trip_p99_ms.append(p99)
    before = probe()
    result.throughput.append(_pipelined(queues, tasks, IN_FLIGHT))
    after = probe()
    result.run_cpu_ms.append(1000 * (after[2] - before[2]) / tasks)
    return 1000 * (after[0] - before[0]) / tasks, 1000 * (after[1] - before[1]) / tasks


def _measure_client(
    queues: RabbitMQQueues,
    server_pid: int | None,
    url: str,
    result: Measurement,
    round_trips: int,
    tasks: int,
) -> tuple[float, float]:
    """Connect as the client of a running task server, measure, then stop the server."""
    queues.set_role(QueueRole.CLIENT)
    queues.connect()
    cpu = _measure_queues(queues, result, round_trips, tasks, _cpu_probe(server_pid, url))
    queues.send_kill_signal()
    return cpu


# ------------------------------------------------------- 1. queue layer
def echo_server(queues: RabbitMQQueues, ready: Event, idle_timeout: float) -> None:
    """A task server without an engine: answer every request at once (process target)."""
    queues.set_role(QueueRole.SERVER)
    queues.prepare_server([_METHOD])
    queues.connect()
    ready.set()
    try:
        while True:
            try:
                topic, task = queues.get_task(timeout=idle_timeout)
            except (KillSignalException, TimeoutException):
                return
            task.set_result(None, runtime=0.0)
            queues.send_result(task, topic)
    finally:
        queues.disconnect()


def queue_echo(url: str, result: Measurement, round_trips: int, tasks: int) -> tuple[float, float]:
    """Round trip and throughput between this process and an echo task server process."""
    with _campaign(url) as campaign:
        queues = campaign.queues(methods=[_METHOD], prefetch=IN_FLIGHT)
        ready = _SPAWN.Event()
        server = _SPAWN.Process(
            target=echo_server, args=(queues, ready, RESULT_TIMEOUT), name="echo-server"
        )
        server.start()
        try:
            if not ready.wait(RESULT_TIMEOUT):
                raise TimeoutError("The echo server did not connect")
            cpu = _measure_client(queues, server.pid, url, result, round_trips, tasks)
        finally:
            _join(server)
    return cpu


def local_server(
    url: str, result: Measurement, round_trips: int, tasks: int
) -> tuple[float, float]:
    """The same through a LocalTaskServer process on a thread pool."""
    with _campaign(url) as campaign:
        queues = campaign.queues(methods=[_METHOD], prefetch=IN_FLIGHT)
        server = LocalTaskServer([noop], queues, num_workers=LOCAL_WORKERS, pool="thread")
        server.start()
        try:
            cpu = _measure_client(queues, server.pid, url, result, round_trips, tasks)
        finally:
            _join(server)
    return cpu


def raw(
    url: str, result: Measurement, confirm: bool, body: bytes, round_trips: int, tasks: int
) -> tuple[float, float]:
    """The raw pika pair: an echo server process and a client in this process."""
    setup = raw_pika.RawSetup(url, confirm=confirm, prefetch=IN_FLIGHT, body=body)
    raw_pika.declare(setup)
    try:
        ready = _SPAWN.Event()
        server = _SPAWN.Process(
            target=raw_pika.serve, args=(setup, ready, 4 * RESULT_TIMEOUT), name="raw-server"
        )
        server.start()
        try:
            if not ready.wait(RESULT_TIMEOUT):
                raise TimeoutError("The raw pika server did not start consuming")
            figures = raw_pika.measure(
                setup,
                WARMUP,
                round_trips,
                tasks,
                IN_FLIGHT,
                timeout=4 * RESULT_TIMEOUT,
                cpu_probe=_cpu_probe(server.pid, url),
            )
        finally:
            _join(server)
    finally:
        raw_pika.delete(setup)
    result.round_trip_ms.append(percentile(figures.round_trips_ms, 0.5))
    result.round_trip_p99_ms.append(percentile(figures.round_trips_ms, 0.99))
    result.throughput.append(figures.throughput)
    result.run_cpu_ms.append(figures.run_cpu_ms)
    return figures.cpu_ms


# ------------------------------------------------------ 3. with Parsl
def colmena_parsl(url: str, result: Measurement, round_trips: int, tasks: int) -> None:
    """ParslTaskServer through RabbitMQ, on its own campaign (deleted afterwards)."""
    with _campaign(url) as campaign:

        def factory() -> RabbitMQQueues:
            return campaign.queues(methods=[_METHOD], prefetch=engine.IN_FLIGHT)

        engine.colmena_parsl(result, None, round_trips, tasks, factory, _broker_port(url))


# ------------------------------------------------------------ 4. scale
def _rss_mb(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


def scale_thinker(queues: RabbitMQQueues, tasks: int, report: Connection) -> None:
    """Queue ``tasks`` no-op tasks, report, then collect every result (process target)."""
    me = psutil.Process()
    queues.set_role(QueueRole.CLIENT)
    queues.connect()
    figures = ScaleFigures(tasks)
    figures.rss_before_mb = figures.rss_peak_mb = _rss_mb(me)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            figures.rss_peak_mb = max(figures.rss_peak_mb, _rss_mb(me))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        start = time.perf_counter()
        for _ in range(tasks):
            queues.send_inputs(None, method=_METHOD)
        queue = queues.names.request_queue(_METHOD)
        deadline = time.monotonic() + RESULT_TIMEOUT
        while time.monotonic() < deadline:
            figures.queued_on_broker = queue_depths(queues.url, queues.campaign, [_METHOD]).get(
                queue, 0
            )
            if figures.queued_on_broker >= tasks:
                break
            time.sleep(0.1)
        figures.queue_seconds = time.perf_counter() - start
        figures.rss_queued_mb = _rss_mb(me)
        figures.rss_peak_mb = max(figures.rss_peak_mb, figures.rss_queued_mb)
        report.send(("queued", figures))
        if not report.poll(RESULT_TIMEOUT):
            raise TimeoutError("No task server started")
        started = report.recv()
        for _ in range(tasks):
            outcome = queues.get_result(timeout=RESULT_TIMEOUT)
            assert outcome is not None
            if outcome.success:
                figures.completed += 1
            else:
                figures.failed += 1
        figures.drain_seconds = time.time() - started
        figures.rss_peak_mb = max(figures.rss_peak_mb, _rss_mb(me))
        queues.send_kill_signal()
    finally:
        sampling.set()
        sampler.join(1)
        report.send(("done", figures))
        queues.disconnect()


def scale(url: str, tasks: int) -> ScaleFigures:
    """Queue ``tasks`` while no task server runs, then start one and drain them."""
    with _campaign(url) as campaign:
        queues = campaign.queues(methods=[_METHOD], prefetch=IN_FLIGHT)
        here, there = _SPAWN.Pipe()
        thinker = _SPAWN.Process(
            target=scale_thinker, args=(queues, tasks, there), name="scale-thinker"
        )
        thinker.start()
        server: LocalTaskServer | None = None
        try:
            # Both run at a few thousand tasks per second: allow several times as long
            if not here.poll(max(RESULT_TIMEOUT, tasks / 500)):
                raise TimeoutError(f"The thinker did not queue {tasks} tasks in time")
            kind, figures = here.recv()
            if kind != "queued":
                return figures
            logger.info(
                "%d tasks queued in %.1f s; thinker RSS %.0f → %.0f MiB; starting a task server",
                figures.queued_on_broker,
                figures.queue_seconds,
                figures.rss_before_mb,
                figures.rss_queued_mb,
            )
            server = LocalTaskServer([noop], queues, num_workers=LOCAL_WORKERS, pool="thread")
            here.send(time.time())
            server.start()
            if not here.poll(max(RESULT_TIMEOUT, tasks / 250)):
                raise TimeoutError(f"The task server did not drain {tasks} tasks in time")
            kind, figures = here.recv()
            return figures
        finally:
            _join(thinker)
            if server is not None:
                _join(server)


# ------------------------------------------------------------------ run
def _own_broker() -> RabbitMQBroker:
    """A RabbitMQ node started for the run, unless a broker is named in the environment.

    A broker shared with other work (the machine's own) spends CPU on that work too, which
    the run would count as its own; a node of the run's own serves the run alone. Falls back
    to :func:`acquire_rabbitmq` when no node can start.
    """
    if not os.environ.get(URL_VARIABLE):
        try:
            node = ThrowawayRabbitMQ()
            return RabbitMQBroker(node.url, "throwaway", node.__enter__())
        except BrokerUnavailableError as exc:
            logger.warning("No RabbitMQ node of the run's own (%s): using a shared broker", exc)
    return acquire_rabbitmq()


def run(repeats: int, quick: bool) -> RabbitMQResults:
    """Every configuration, interleaved so that drift affects them alike; then the scale run."""
    round_trips = 100 if quick else 300
    tasks = 1000 if quick else 5000
    parsl_tasks = 500 if quick else 2000
    scale_tasks = 10_000 if quick else 100_000
    names = [
        "raw-confirm",
        "raw-no-confirm",
        "queues-echo",
        "queues-local",
        "parsl",
        "colmena-parsl-rabbitmq",
    ]
    results = RabbitMQResults(repeats, quick)
    results.measurements = {name: Measurement(name) for name in names}
    results.cpu_ms = {name: [] for name in names[:4]}
    cpu = results.cpu_ms
    results.request_bytes = _request_size()
    body = b"x" * results.request_bytes
    m = results.measurements
    broker = _own_broker()
    results.broker = broker.kind
    url = broker.url
    start_load = os.getloadavg()[0]
    try:
        for repeat in range(repeats):
            logger.info("RabbitMQ suite: repeat %d of %d", repeat + 1, repeats)
            cpu["raw-confirm"].append(raw(url, m["raw-confirm"], True, body, round_trips, tasks))
            cpu["raw-no-confirm"].append(
                raw(url, m["raw-no-confirm"], False, body, round_trips, tasks)
            )
            cpu["queues-echo"].append(queue_echo(url, m["queues-echo"], round_trips, tasks))
            cpu["queues-local"].append(local_server(url, m["queues-local"], round_trips, tasks))
            engine.parsl_alone(m["parsl"], None, round_trips, parsl_tasks)
            colmena_parsl(url, m["colmena-parsl-rabbitmq"], round_trips, parsl_tasks)
            for name in names:
                logger.info(
                    "  %-24s round trip %.2f ms, %.0f tasks/s",
                    name,
                    m[name].round_trip_ms[-1],
                    m[name].throughput[-1],
                )
        logger.info("RabbitMQ suite: scale run with %d tasks", scale_tasks)
        try:
            results.scale = scale(url, scale_tasks)
        except Exception as exc:  # keep the figures measured so far
            logger.exception("The scale run failed")
            results.notes.append(f"The scale run with {scale_tasks:,} tasks failed: {exc!r}")
    finally:
        broker.close()
    results.load = (start_load, os.getloadavg()[0])
    return results


# --------------------------------------------------------------- report
_BROKERS: dict[str, str] = {
    "throwaway": "a RabbitMQ node started for the run on this machine (its CPU, counted as "
    "the broker's, is the run's alone)",
    "local": "the machine's RabbitMQ broker (shared: its CPU, counted as the broker's, "
    "includes any other work it serves)",
}
_LABELS: dict[str, str] = {
    "raw-confirm": "raw pika: persistent, publisher confirms, manual acks",
    "raw-no-confirm": "raw pika: persistent, manual acks, no publisher confirms",
    "queues-echo": "Colmena RabbitMQQueues, echo loop (no engine)",
    "queues-local": f"Colmena RabbitMQQueues + LocalTaskServer (thread pool, {LOCAL_WORKERS})",
    "parsl": "Parsl alone, HighThroughputExecutor (2 workers)",
    "colmena-parsl-rabbitmq": "Colmena ParslTaskServer through RabbitMQ, same executor",
}


def _row(m: Measurement) -> list[str]:
    rate = f"{m.rate:,.0f}"
    if len(m.throughput) > 1:
        rate += f" ({min(m.throughput):,.0f}–{max(m.throughput):,.0f})"
    return [_LABELS.get(m.name, m.name), f"{m.round_trip:.2f}", f"{m.round_trip_p99:.2f}", rate]


def section(results: RabbitMQResults) -> str:
    """The Markdown of the suite: what ran, the figures, and the bars."""
    m = results.measurements
    header = ["configuration", "round trip, median (ms)", "p99 (ms)", "tasks/s (range)"]
    queue_rows = []
    for name in ("raw-confirm", "raw-no-confirm", "queues-echo", "queues-local"):
        thinker, server = results.cpu(name)
        queue_rows.append([*_row(m[name]), f"{thinker:.3f} / {server:.3f}", cpu_cell(m[name])])
    parsl_rows = [
        [*_row(m[n]), cpu_cell(m[n]), parts_cell(m[n], "Parsl's interchange and workers")]
        for n in ("parsl", "colmena-parsl-rabbitmq")
    ]

    echo, fair, loose = m["queues-echo"], m["raw-confirm"], m["raw-no-confirm"]
    local = m["queues-local"]
    rt_ratio = echo.round_trip / fair.round_trip
    rt_loose = echo.round_trip / loose.round_trip
    parsl_ratio = m["colmena-parsl-rabbitmq"].rate / m["parsl"].rate
    bars = [
        [
            "queue round trip: ours / raw pika with confirms",
            f"{rt_ratio:.2f}×",
            "≤ 2×",
            verdict(rt_ratio, 2.0, higher_is_better=False),
        ],
        [
            "queue round trip: ours / raw pika without confirms",
            f"{rt_loose:.2f}×",
            "≤ 2× (informative)",
            verdict(rt_loose, 2.0, higher_is_better=False),
        ],
        [
            f"pipelined, LocalTaskServer, {IN_FLIGHT} in flight",
            f"{local.rate:,.0f}/s ({local.rate / fair.rate:.2f}× raw pika with confirms)",
            f"≥ {THROUGHPUT_BAR:,.0f}/s",
            verdict(local.rate, THROUGHPUT_BAR),
        ],
        [
            "throughput, Parsl HTEX: ours through RabbitMQ / Parsl alone",
            f"{parsl_ratio:.2f}× (CPU allows "
            f"{cpu_ceiling(m['colmena-parsl-rabbitmq'], m['parsl']):.2f}×)",
            "≥ 0.8×",
            verdict(parsl_ratio, 0.8),
        ],
    ]
    parts = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} "
        f"cores; 1-minute load average {results.load[0]:.1f} at the start, "
        f"{results.load[1]:.1f} at the end) with Python {platform.python_version()} against "
        f"{_BROKERS.get(results.broker, f'a {results.broker} RabbitMQ broker')}; medians of "
        f"{results.repeats} runs"
        f"{' (quick mode)' if results.quick else ''}. Every queue is a "
        f"durable quorum queue; a no-op request is {results.request_bytes} bytes and raw pika "
        f"sends bodies of the same size. Thinker and task server are separate processes. "
        f"Pipelined runs keep {IN_FLIGHT} tasks in flight (prefetch {IN_FLIGHT}) for the queue "
        f"layer and {engine.IN_FLIGHT} for Parsl.",
        "**Queue layer** (no engine unless named; CPU columns are per task in the pipelined "
        "run: of the thinker and the task server processes, then of every process of the "
        "run, broker included):",
        table(
            queue_rows,
            [*header, "CPU per task, thinker / server (ms)", "CPU per task, all (ms)"],
        ),
        '**Parsl HighThroughputExecutor** (2 workers; "CPU allows" below is Parsl alone\'s '
        "CPU per task in all its processes over ours: the most a machine whose cores are all "
        "busy can "
        "give):",
        table(parsl_rows, [*header, "CPU per task, all (ms)", "CPU per task by process (ms)"]),
    ]
    s = results.scale
    if s is not None:
        complete = s.completed == s.tasks and s.failed == 0
        parts += [
            f"**Scale**: {s.tasks:,} no-op tasks queued by a thinker process while no task "
            f"server runs; then a LocalTaskServer (thread pool, {LOCAL_WORKERS}) starts. Run "
            "once.",
            table(
                [
                    [
                        "tasks held by the broker before a task server started",
                        f"{s.queued_on_broker:,}",
                    ],
                    [
                        "time to queue them (sent and held by the broker)",
                        f"{s.queue_seconds:.1f} s",
                    ],
                    ["thinker RSS before queueing", f"{s.rss_before_mb:.0f} MiB"],
                    ["thinker RSS growth with all tasks queued", f"{s.growth_queued_mb:+.0f} MiB"],
                    [
                        "thinker RSS growth, peak until the last result",
                        f"{s.growth_peak_mb:+.0f} MiB",
                    ],
                    ["results received (failed)", f"{s.completed:,} ({s.failed:,})"],
                    ["time to drain, from the task server start", f"{s.drain_seconds:.1f} s"],
                    ["drain throughput", f"{s.drain_rate:,.0f} tasks/s"],
                ],
                ["scale", "measured"],
            ),
        ]
        bars += [
            [
                f"scale: thinker RSS growth with {s.tasks:,} queued (peak)",
                f"{s.growth_peak_mb:+.0f} MiB",
                f"≤ {SCALE_MB:.0f} MiB",
                verdict(s.growth_peak_mb, SCALE_MB, higher_is_better=False),
            ],
            [
                f"scale: all {s.tasks:,} complete once a task server starts",
                f"{s.completed:,} in {s.drain_seconds:.0f} s",
                "all",
                "meets" if complete else "**misses**",
            ],
        ]
    parts.append(table(bars, ["bar", "measured", "target", "verdict"]))
    parts += [f"**Note**: {note}" for note in results.notes]
    return "\n\n".join(parts)
