"""The task-server and thinker services as users run them: real processes on a real broker."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from colmena_core.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
WAIT = 90.0


class Service:
    """A ``colmena`` subprocess whose stderr is read line by line as it runs."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "colmena_services.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._out: list[str] = []
        # One reader per pipe, for the whole life of the process: nothing else reads them
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._out.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait until a line of stderr matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"No line matched {pattern!r}:\n{''.join(self.log)[-3000:]}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the process to exit; return its exit code."""
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)  # the pipes close when the process exits
        return self.process.returncode

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    @property
    def output(self) -> str:
        return "".join(self.log)


@pytest.fixture
def service_env(rabbitmq_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment of services that share a fresh campaign on the test broker."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "COLMENA_BROKER_URL": rabbitmq_url,
        "COLMENA_CAMPAIGN": f"services-{uuid.uuid4().hex[:8]}",
        "COLMENA_TEST_OUTPUT": str(tmp_path / "output"),
        "COLMENA_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def start() -> Iterator[Callable[..., Service]]:
    """Start ``colmena`` services; whatever is still running at the end is killed."""
    started: list[Service] = []

    def run(args: list[str], env: dict[str, str]) -> Service:
        service = Service(args, env)
        started.append(service)
        return service

    yield run
    for service in started:
        service.kill()


def readiness(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)


def task_server(
    start: Callable[..., Service], env: dict[str, str], *extra: str
) -> tuple[Service, int]:
    port = free_port()
    server = start(
        [
            "taskserver",
            "--methods=service_apps:METHODS",
            "--engine=local",
            "--workers=3",
            f"--health-port={port}",
            *extra,
        ],
        env,
    )
    server.wait_for(r"Task server \S+ serving \['double', 'wait_for_file'\]")
    wait_until(lambda: readiness(port).status_code == 200, "task server ready", WAIT)
    return server, port


# ---------------------------------------------------------------------------------- CLI
def test_help_names_every_service() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "colmena_services.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0
    for command in ("taskserver", "thinker", "gateway", "launch", "COLMENA_"):
        assert command in process.stdout
    detail = subprocess.run(
        [sys.executable, "-m", "colmena_services.cli", "taskserver", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--methods" in detail.stdout and "--parsl-config" in detail.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["taskserver"], {}, "--methods"),
        (["taskserver", "--methods=no_such_module:X", "--engine=local"], {}, "Cannot import"),
        (
            ["taskserver", "--methods=service_apps:NOT_A_LIST", "--engine=local"],
            {},
            "list of functions",
        ),
        (["taskserver", "--methods=service_apps:METHODS"], {}, "--parsl-config"),
        (["thinker", "--thinker-factory=service_apps:make_nothing"], {}, "not a BaseThinker"),
        (
            ["thinker", "--thinker-factory=service_apps:make_doubler", "--broker-url=http://x"],
            {},
            "amqp://",
        ),
        (["gateway"], {"COLMENA_GATEWAY_TOKENS": ""}, "COLMENA_GATEWAY_TOKENS"),
        (["gateway"], {"COLMENA_GATEWAY_TOKENS": "short:me"}, "16 characters"),
    ],
)
def test_bad_settings_end_with_a_message_not_a_traceback(
    args: list[str], env: dict[str, str], message: str, service_env: dict[str, str]
) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "colmena_services.cli", *args],
        env={**service_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2, process.stderr
    assert message in process.stderr
    assert "Traceback" not in process.stderr


def test_unreachable_broker_is_reported(service_env: dict[str, str]) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "colmena_services.cli",
            "taskserver",
            "--methods=service_apps:METHODS",
            "--engine=local",
            f"--health-port={free_port()}",
            f"--broker-url=amqp://guest:guest@127.0.0.1:{free_port()}/",
            "--connect-timeout=3",
        ],
        env=service_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 3, process.stderr[-2000:]
    assert "not reachable" in process.stderr
    assert "Traceback" not in process.stderr


# ----------------------------------------------------------------------------- services
def test_task_server_and_thinker_run_a_campaign(
    start: Callable[..., Service], service_env: dict[str, str], tmp_path: Path
) -> None:
    server, port = task_server(start, service_env)
    ready = readiness(port).json()
    assert ready["methods"] == ["double", "wait_for_file"] and ready["broker_connected"] is True
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

    thinker = start(
        [
            "thinker",
            "--thinker-factory=service_apps:make_doubler",
            "--topics=work",
            "--client-id=doubler",
        ],
        {**service_env, "COLMENA_TEST_COUNT": "6"},
    )
    assert thinker.finish() == 0, thinker.output[-3000:]
    assert (tmp_path / "output").read_text() == "0,2,4,6,8,10"

    assert server.stop() == 0, server.output[-3000:]
    assert "Task server" in server.output and "stopped" in server.output


def test_demo_campaign_on_the_parsl_engine(
    start: Callable[..., Service], service_env: dict[str, str]
) -> None:
    port = free_port()
    server = start(
        [
            "taskserver",
            "--methods=colmena_services.demo:METHODS",
            "--parsl-config=colmena_services.demo:parsl_config",
            f"--health-port={port}",
        ],
        service_env,
    )
    server.wait_for(r"serving \['target_function', 'task_generator'\]")
    thinker = start(
        [
            "thinker",
            "--thinker-factory=colmena_services.demo:make_thinker",
            "--topics=generate,simulate",
            "--kill-on-exit",
        ],
        {**service_env, "COLMENA_DEMO_GUESSES": "4"},
    )
    assert thinker.finish(timeout=180) == 0, thinker.output[-3000:]
    assert re.search(r"Best point found: x = \S+, f\(x\) = \S+", thinker.stdout)
    assert "[4/4]" in thinker.output
    # --kill-on-exit: the task server stops by itself once the thinker is done
    assert server.finish(timeout=120) == 0, server.output[-3000:]


def test_failing_thinker_exits_non_zero(
    start: Callable[..., Service], service_env: dict[str, str]
) -> None:
    thinker = start(
        ["thinker", "--thinker-factory=service_apps:make_failing", f"--health-port={free_port()}"],
        service_env,
    )
    assert thinker.finish() == 1
    assert "explode" in thinker.output and "agent failure" in thinker.output


def test_sigterm_finishes_in_flight_tasks_and_loses_no_result(
    start: Callable[..., Service], service_env: dict[str, str], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    env = {**service_env, "COLMENA_TEST_RELEASE": str(release), "COLMENA_TEST_COUNT": "3"}
    server, port = task_server(start, env)

    sender = start(
        [
            "thinker",
            "--thinker-factory=service_apps:make_sender",
            "--topics=work",
            "--client-id=restarted",
            f"--health-port={free_port()}",
        ],
        env,
    )
    wait_until(lambda: readiness(port).json()["in_flight"] == 3, "three tasks running", WAIT)

    # The thinker goes away while its tasks run: their results must wait for it in the broker
    assert sender.stop() == 0, sender.output[-3000:]
    # The task server is asked to stop while its tasks run: it finishes them first
    server.process.send_signal(signal.SIGTERM)
    server.wait_for(r"finishing in-flight tasks")
    release.write_text("released")
    assert server.finish() == 0, server.output[-3000:]

    collector = start(
        [
            "thinker",
            "--thinker-factory=service_apps:make_collector",
            "--topics=work",
            "--client-id=restarted",
            f"--health-port={free_port()}",
        ],
        env,
    )
    assert collector.finish() == 0, collector.output[-3000:]
    assert (tmp_path / "output").read_text() == "0,1,2"


# ----------------------------------------------------------------------------- launcher
@pytest.mark.parametrize("broker", ["given", "throwaway"])
def test_launcher_runs_the_demo_stack(
    broker: str, start: Callable[..., Service], service_env: dict[str, str]
) -> None:
    """``colmena launch``: broker (given or throwaway), task server, thinker and gateway."""
    port = free_port()
    env = {**service_env, "COLMENA_DEMO_GUESSES": "5"}
    args = ["launch", f"--gateway-port={port}", "--engine=local"]
    if broker == "given":
        args.append(f"--broker-url={service_env['COLMENA_BROKER_URL']}")
    else:
        env.pop("COLMENA_BROKER_URL")
    launcher = start(args, env)
    launcher.wait_for(r"The thinker finished with exit code 0", timeout=180)
    # The campaign is over; the gateway stays up until Ctrl-C
    health = wait_until(
        lambda: _answers(f"http://127.0.0.1:{port}/healthz"), "gateway answering", WAIT
    )
    assert health.status_code == 200
    launcher.process.send_signal(signal.SIGINT)
    assert launcher.finish(timeout=120) == 0, launcher.output[-3000:]
    assert f"Gateway: http://127.0.0.1:{port}/docs" in launcher.stdout
    assert "Best point found" in launcher.stdout
    assert "[5/5]" in launcher.output


def _answers(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def test_every_service_checks_sizes_against_the_brokers_limit(rabbitmq_url: str) -> None:
    # A broker configured with a smaller max_message_size than RabbitMQ's 128 MiB: each
    # service's queues refuse larger messages before the broker closes their channel
    from colmena_services.taskserver.service import TaskServerService
    from colmena_services.taskserver.settings import TaskServerSettings
    from colmena_services.thinker.service import ThinkerService
    from colmena_services.thinker.settings import ThinkerSettings

    common = {"broker_url": rabbitmq_url, "campaign": "sizes", "max_message_size": 4096}
    server = TaskServerService(
        TaskServerSettings(**common, methods="service_apps:METHODS", engine="local")
    )
    thinker = ThinkerService(ThinkerSettings(**common, thinker_factory="service_apps:make_doubler"))
    assert server.queues.max_message_size == thinker.queues.max_message_size == 4096
    default = TaskServerSettings(broker_url=rabbitmq_url, methods="service_apps:METHODS")
    assert default.max_message_size == 128 * 2**20
