"""Colmena applications written as the original's documentation teaches them.

Each is what a user of Colmena 0.5 (the seed's documentation) or 0.7 would write, with
``colmena`` replaced by ``colmena_core`` in the imports and nothing else changed. Each runs end
to end with Parsl, on pipes and on RabbitMQ (the ``make_queues`` fixture).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import migration_app
import pytest
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor
from proxystore.connectors.file import FileConnector
from proxystore.store import Store, unregister_store
from test_globus_task_server import (  # the stand-in for the Globus Compute cloud service
    CPU_ENDPOINT,
    GPU_ENDPOINT,
    FakeClient,
    cloud,  # noqa: F401 - a fixture, requested by name
)

from colmena_core.models import ExecutableTask, ResourceRequirements, Result
from colmena_core.models.methods import PythonGeneratorMethod
from colmena_core.queue import ColmenaQueues
from colmena_core.task_server import GlobusComputeTaskServer, LocalTaskServer, ParslTaskServer
from colmena_core.task_server.base import BaseTaskServer
from colmena_core.task_server.parsl import local_config
from colmena_core.testing import free_port
from colmena_core.thinker import (
    BaseThinker,
    ResourceCounter,
    agent,
    result_processor,
    task_submitter,
)

QueueMaker = Callable[..., ColmenaQueues]
"""The ``make_queues`` fixture: ``make_queues(topics, methods)``."""

WAIT = 120.0
"""Longest wait, in seconds, for an application or its task server to finish."""


def thread_config(run_dir: Path) -> Config:
    """A Parsl configuration with local threads, as the documentation's quick examples use."""
    return Config(
        executors=[ThreadPoolExecutor(label="threads", max_threads=2)],
        run_dir=str(run_dir),
        strategy="none",
    )


def run_application(queues: ColmenaQueues, doer: BaseTaskServer, thinker: BaseThinker) -> None:
    """The documentation's main program: start the task server, run the thinker, stop both."""
    doer.start()
    try:
        thinker.start()
        thinker.join(WAIT)
        assert not thinker.is_alive(), "the thinker did not finish"
    finally:
        queues.send_kill_signal()
        doer.join(WAIT)
    assert doer.exitcode == 0
    assert not thinker.agent_errors, thinker.agent_errors


# ------------------------------------------------- a steering loop in the seed's style
def simulate(x: float) -> float:
    """The "expensive" simulation: a parabola with its minimum at x = 0."""
    return x**2 - 3


class Optimizer(BaseThinker):
    """Keeps two simulations running, each near the best point so far, until the budget."""

    def __init__(self, queues: ColmenaQueues, budget: int) -> None:
        super().__init__(queues, ResourceCounter(2, ["simulation"]))
        self.rec.reallocate(None, "simulation", 2)  # type: ignore[union-attr]
        self.budget = budget
        self.database: list[tuple[float, float]] = []
        self.workers: set[tuple[str, str]] = set()
        self.next_step = 2.0

    @task_submitter(task_type="simulation", n_slots=1)
    def submit(self) -> None:
        # Look on either side of the best point so far, closer each time
        best = min(self.database, key=lambda pair: pair[1])[0] if self.database else 4.0
        self.next_step = -self.next_step * 0.75
        self.queues.send_inputs(best + self.next_step, method="simulate", topic="simulation")

    @result_processor(topic="simulation")
    def record(self, result: Result) -> None:
        assert result.success, result.failure_info
        self.database.append((result.args[0], result.value))
        self.workers.add(
            (result.worker_info.PARSL_WORKER_POOL_ID, result.worker_info.PARSL_WORKER_RANK)
        )
        self.rec.release("simulation", 1)  # type: ignore[union-attr]
        self.logger.info("f(%.3f) = %.3f", result.args[0], result.value)
        if len(self.database) >= self.budget:
            self.done.set()


def test_seed_style_optimizer(make_queues: QueueMaker, tmp_path: Path) -> None:
    queues = make_queues(["simulation"], methods=["simulate"])
    # Worker processes of a HighThroughputExecutor, as the seed's documentation uses
    doer = ParslTaskServer([simulate], queues, local_config(2, str(tmp_path / "parsl")))
    thinker = Optimizer(queues, budget=6)
    run_application(queues, doer, thinker)

    # The budget is met; tasks still running when it was are processed too
    assert 6 <= len(thinker.database) <= 8
    assert all(fx == x**2 - 3 for x, fx in thinker.database)
    assert min(fx for _, fx in thinker.database) < simulate(4.0)  # it moved downhill
    assert thinker.rec is not None and thinker.rec.available_slots("simulation") == 2
    # Each result names the Parsl worker that ran it: its pool and its rank in the pool
    assert thinker.workers and all(pool and rank in {"0", "1"} for pool, rank in thinker.workers)


# ------------------------------------- a thinker handing its queues to a process pool
def mean_of_results(queues: ColmenaQueues, count: int, topic: str) -> float:
    """Runs in a pool worker: collect results with the thinker's own queues."""
    values = []
    for _ in range(count):
        result = queues.get_result(topic, timeout=WAIT)
        assert result is not None and result.success, result
        values.append(result.value)
    return sum(values) / len(values)


class Delegator(BaseThinker):
    """Sends a batch, then lets a worker process of a pool gather the results."""

    mean: float | None = None

    @agent
    def batch(self) -> None:
        for x in range(4):
            self.queues.send_inputs(float(x), method="simulate", topic="simulation")
        with mp.get_context("spawn").Pool(1) as pool:
            pending = pool.apply_async(mean_of_results, (self.queues, 4, "simulation"))
            self.mean = pending.get(timeout=WAIT)


def test_thinker_hands_its_queues_to_a_pool(make_queues: QueueMaker, tmp_path: Path) -> None:
    queues = make_queues(["simulation"], methods=["simulate"])
    doer = ParslTaskServer([simulate], queues, thread_config(tmp_path))
    thinker = Delegator(queues)
    run_application(queues, doer, thinker)
    assert thinker.mean == sum(x**2 - 3 for x in range(4)) / 4


# ---------------------------------- an MPI executable sized by the task's resources
def fake_mpirun(directory: Path) -> Path:
    """A stand-in for ``mpirun -np N command...``: runs the command, telling it N."""
    launcher = directory / "mpirun"
    launcher.write_text(
        '#!/bin/sh\n[ "$1" = "-np" ] || exit 2\nCOMPAT_MPI_RANKS="$2"; export COMPAT_MPI_RANKS\n'
        'shift 2\nexec "$@"\n'
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return launcher


class RankCount(ExecutableTask):
    """An MPI program that reports how many ranks it was launched with."""

    def __init__(self, launcher: Path) -> None:
        super().__init__(
            [sys.executable, "-c", "import os; print(os.environ['COMPAT_MPI_RANKS'])"],
            mpi=True,
            mpi_command_string=f"{launcher} -np {{total_ranks}}",
        )

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        return [], None

    def postprocess(self, run_dir: Path) -> int:
        return int((run_dir / "colmena.stdout").read_text())


def threads_granted(_resources: ResourceRequirements) -> int:
    """A Python method that reads the resources of its task."""
    return _resources.cpu_threads


class Launcher(BaseThinker):
    """Asks for a different size of run each time."""

    def __init__(self, queues: ColmenaQueues) -> None:
        super().__init__(queues)
        self.ranks: dict[int, int] = {}
        self.threads: int | None = None

    @agent
    def launch(self) -> None:
        for nodes, per_node in [(1, 1), (2, 3), (2, 2)]:
            resources = ResourceRequirements(node_count=nodes, cpu_processes=per_node)
            self.queues.send_inputs(method="rankcount", resources=resources)
            result = self.queues.get_result(timeout=WAIT)
            assert result is not None and result.success, result
            self.ranks[nodes * per_node] = result.value
        self.queues.send_inputs(method="threads_granted", resources={"cpu_threads": 4})
        result = self.queues.get_result(timeout=WAIT)
        assert result is not None and result.success, result
        self.threads = result.value


def launch_on(
    server: str, queues: ColmenaQueues, directory: Path, client: FakeClient | None
) -> BaseTaskServer:
    """Each task server that runs executables, serving the two methods of ``Launcher``."""
    methods = [RankCount(fake_mpirun(directory)), threads_granted]
    if server == "parsl":
        return ParslTaskServer(methods, queues, thread_config(directory))
    if server == "local":
        return LocalTaskServer(queues, methods, threads=False, num_workers=2)  # 0.7's signature
    endpoints = dict(zip(methods, [GPU_ENDPOINT, CPU_ENDPOINT], strict=True))
    return GlobusComputeTaskServer(endpoints, client, queues)


@pytest.mark.usefixtures("run_dirs")
@pytest.mark.parametrize("server", ["parsl", "local", "globus"])
def test_mpi_executable_sized_by_resources(
    make_queues: QueueMaker, tmp_path: Path, server: str, request: pytest.FixtureRequest
) -> None:
    # The Globus Compute cloud service, stood in for locally (the only part not real)
    client = request.getfixturevalue("cloud") if server == "globus" else None
    queues = make_queues(methods=["rankcount", "threads_granted"])
    doer = launch_on(server, queues, tmp_path, client)
    thinker = Launcher(queues)
    run_application(queues, doer, thinker)
    assert thinker.ranks == {1: 1, 6: 6, 4: 4}
    assert thinker.threads == 4


# ---------------------------------------- a generator streaming to a result processor
def simulate_steps(steps: int) -> Generator[dict[str, int], None, int]:
    """A simulation that reports its state after each step and returns the number of steps."""
    for step in range(steps):
        yield {"step": step, "energy": -(step**2)}
    return steps


class Monitor(BaseThinker):
    """Starts one long simulation and watches its progress as it runs."""

    def __init__(self, queues: ColmenaQueues) -> None:
        super().__init__(queues)
        self.progress: list[dict[str, int]] = []
        self.final: Result | None = None

    @agent(startup=True)
    def start_simulation(self) -> None:
        self.queues.send_inputs(5, method="simulate_steps", topic="progress")

    @result_processor(topic="progress")
    def watch(self, result: Result) -> None:
        assert result.success, result.failure_info
        if result.complete:
            self.final = result
            self.done.set()
        else:
            self.progress.append(result.value)


def test_generator_streams_intermediate_results(make_queues: QueueMaker, tmp_path: Path) -> None:
    queues = make_queues(["progress"], methods=["simulate_steps"])
    method = PythonGeneratorMethod(simulate_steps, store_return_value=True, streaming_queue=queues)
    doer = ParslTaskServer([method], queues, thread_config(tmp_path))
    thinker = Monitor(queues)
    run_application(queues, doer, thinker)
    assert thinker.progress == [{"step": i, "energy": -(i**2)} for i in range(5)]
    assert thinker.final is not None and thinker.final.value == 5


# --------------------------------------------- the example of docs/migrating.md, every step
def test_migration_example(make_queues: QueueMaker, tmp_path: Path) -> None:
    """Steps 1 and 2: the quickstart on pipes, then on RabbitMQ, with Parsl's workers."""
    queues = make_queues(migration_app.TOPICS, methods=[f.__name__ for f in migration_app.METHODS])
    thinker = migration_app.main(queues, migration_app.make_config(str(tmp_path / "parsl")))
    assert not thinker.agent_errors, thinker.agent_errors
    assert thinker.best_result == thinker.best_guess**2  # the consumer kept the best it saw


def test_migration_example_as_services(rabbitmq_url: str, tmp_path: Path) -> None:
    """Step 3: the same methods and thinker run as the task-server and thinker services."""
    env = {
        **os.environ,
        "COLMENA_BROKER_URL": rabbitmq_url,
        "COLMENA_CAMPAIGN": f"migration-{uuid.uuid4().hex[:8]}",
        "COLMENA_LOG_LEVEL": "INFO",
    }
    command = [sys.executable, "-m", "colmena_services.cli"]
    server = subprocess.Popen(
        [
            *command,
            "taskserver",
            "--methods=migration_app:METHODS",
            "--parsl-config=migration_app:make_config",
            f"--health-port={free_port()}",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        thinker = subprocess.run(
            [
                *command,
                "thinker",
                "--thinker-factory=migration_app:make_thinker",
                "--topics=generate,simulate",
                f"--health-port={free_port()}",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert thinker.returncode == 0, thinker.stderr[-3000:]
        assert re.search(r"Best guess: \S+, value \S+", thinker.stderr), thinker.stderr[-3000:]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, errors = server.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            server.kill()
            _, errors = server.communicate(timeout=30)
    assert server.returncode == 0, errors[-3000:]


# ------------------------------------------ large objects through ProxyStore, 0.7's way
def normalize(vector: list[float]) -> list[float]:
    """Scale a (large) vector to unit length; the result is as large as the input."""
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector]


class Normalizer(BaseThinker):
    """Sends one large vector and reads back what ProxyStore measured."""

    result: Result | None = None
    head: list[float] | None = None

    @agent
    def run(self) -> None:
        self.queues.send_inputs([3.0, 4.0] * 20_000, method="normalize")
        self.result = self.queues.get_result(timeout=WAIT)
        assert self.result is not None and self.result.success, self.result
        self.head = self.result.value[:2]  # resolves the proxy of the value


def test_large_objects_travel_by_proxy(make_queues: QueueMaker, tmp_path: Path) -> None:
    name = f"compat-{uuid.uuid4().hex[:8]}"
    store = Store(name, FileConnector(str(tmp_path / "store")), register=True, metrics=True)
    try:
        queues = make_queues(
            methods=["normalize"], proxystore_name=name, proxystore_threshold=10_000
        )
        doer = ParslTaskServer([normalize], queues, thread_config(tmp_path))
        thinker = Normalizer(queues)
        run_application(queues, doer, thinker)
    finally:
        store.close()
        unregister_store(name)

    result = thinker.result
    assert result is not None and result.success, result
    norm = (25 * 20_000) ** 0.5
    assert thinker.head == pytest.approx([3 / norm, 4 / norm])

    # One entry per proxy, as ProxyStore measured it: the input the worker resolved and the
    # value it created, each with the times of its events in milliseconds
    timing = result.proxy_timing
    assert len(timing) == 2, timing
    for entry in timing.values():
        assert set(entry) == {"attributes", "counters", "times"}
    events = sorted((set(entry["times"]) for entry in timing.values()), key=len)
    value_events, input_events = events
    assert "store.put" in value_events  # created by the worker
    assert {"store.put", "factory.resolve"} <= input_events  # made by the thinker, read there
    worker_time_ms = (result.time_compute_ended - result.time_compute_started) * 1000
    for entry in timing.values():
        for stats in entry["times"].values():
            assert 0 <= stats["avg_time_ms"] <= worker_time_ms + 1000, stats
