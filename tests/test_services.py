"""The services and the ``colmena`` command as users run them: real processes on a real broker.

Stopping is checked as a terminal does it: Ctrl-C is SIGINT to the whole process group
(the service, and the Parsl interchange and workers it started), and afterwards no process
that inherited the test's marker variable may be left running.
"""

from __future__ import annotations

import contextlib
import json
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
import psutil
import pytest

from colmena_core.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
WAIT = 90.0


class Service:
    """A ``colmena`` subprocess whose stderr is read line by line as it runs."""

    def __init__(
        self, args: list[str], env: dict[str, str], command: list[str] | None = None
    ) -> None:
        self.env = env
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "colmena_services.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a process group of its own, as in a terminal
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

    def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to the whole process group. Returns how
        many lines of stderr were read before it."""
        seen = len(self.log)
        os.killpg(self.process.pid, signal.SIGINT)
        return seen

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
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
        MARK: uuid.uuid4().hex,
    }


MARK = "COLMENA_TEST_PROCESS_MARK"
"""Every process a test starts inherits this variable: those still running are left behind."""


def marked_processes(mark: str) -> list[psutil.Process]:
    """The processes (other than zombies) whose environment holds the marker ``mark``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE or process.pid == os.getpid():
                continue
            if process.environ().get(MARK) == mark:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def left_behind(env: dict[str, str]) -> list[str]:
    """The processes still running that were started with ``env`` (its marker)."""
    listed = []
    for process in marked_processes(env[MARK]):
        with contextlib.suppress(psutil.Error):
            listed.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
    return listed


def nothing_left_behind(env: dict[str, str]) -> None:
    """Wait until every process started with ``env`` has exited (they may be exiting)."""
    try:
        wait_until(lambda: not left_behind(env), "every process to exit", 60)
    except TimeoutError:
        raise AssertionError(f"Processes left behind: {left_behind(env)}") from None


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
    # What a killed service left running (a launcher's services run in sessions of their own)
    for mark in {service.env.get(MARK) for service in started} - {None}:
        for process in marked_processes(mark):
            with contextlib.suppress(psutil.Error):
                process.kill()


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
    last = server.output.rstrip().splitlines()[-1]
    assert "Received SIGTERM: finishing in-flight tasks (0 now), then stopping" in last


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
def readme_client_snippet() -> str:
    """The README's example of the gateway client, as written there."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (snippet,) = [block for block in blocks if "GatewayClient(" in block]
    return snippet


@pytest.mark.parametrize("broker", ["given", "throwaway"])
def test_launcher_runs_the_demo_stack(
    broker: str, start: Callable[..., Service], service_env: dict[str, str], tmp_path: Path
) -> None:
    """``colmena launch``: the addresses it prints answer, the README's client snippet works
    against it as written, and Ctrl-C stops everything it started."""
    port = free_port()
    env = {**service_env, "COLMENA_DEMO_GUESSES": "5"}
    run_dir = tmp_path / "run"
    args = ["launch", f"--gateway-port={port}", "--engine=local", f"--run-dir={run_dir}"]
    if broker == "given":
        args.append(f"--broker-url={service_env['COLMENA_BROKER_URL']}")
    else:
        env.pop("COLMENA_BROKER_URL")
    launcher = start(args, env)
    wait_until(lambda: "Press Ctrl-C" in launcher.stdout, "the launcher's addresses", 180)
    printed = launcher.stdout
    docs = re.search(r"API docs: +(http://\S+) \(API token of client 'demo': (\S+)\)", printed)
    dashboard = re.search(r"Dashboard: (http://\S+)/#token=(\S+)", printed)
    assert docs and dashboard, printed
    assert docs.group(1) == f"http://127.0.0.1:{port}/api/v1/docs"
    token = docs.group(2)
    assert dashboard.group(2) == token

    # The documentation works offline: every asset it loads is served by the gateway
    page = httpx.get(docs.group(1), timeout=10)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert httpx.get(f"http://127.0.0.1:{port}{asset}", timeout=10).status_code == 200
    assert httpx.get(dashboard.group(1) + "/", timeout=10).status_code == 200

    if broker == "given":
        # The README's snippet, as written, with the address and token printed above
        snippet = readme_client_snippet().replace(
            "http://127.0.0.1:8000", f"http://127.0.0.1:{port}"
        )
        namespace: dict[str, object] = {"token": token}
        printed_values: list[str] = []
        namespace["print"] = lambda *values: printed_values.append(" ".join(map(str, values)))
        exec(compile(snippet.replace('token = "..."', "pass"), "README.md", "exec"), namespace)
        values = sorted(float(line.split()[1]) for line in printed_values)
        assert values == [2.25, 6.25], printed_values
        # The gateway records the results of its clients (--results-file, set by launch)
        from colmena_services.record import read_records

        task_ids = {line.split()[0] for line in printed_values}
        recorded = run_dir / "gateway-results.jsonl"
        wait_until(
            lambda: (
                recorded.exists() and task_ids <= {r["task_id"] for r in read_records([recorded])}
            ),
            "the gateway's record",
            WAIT,
        )
        assert {r["client_id"] for r in read_records([recorded])} == {"api-demo"}

        # A method nobody serves is accepted, and the answer says so
        from colmena_services.client import GatewayClient, UnservedMethodWarning

        with (
            GatewayClient(f"http://127.0.0.1:{port}", token) as client,
            pytest.warns(UnservedMethodWarning, match="No live task server serves 'simulate'"),
        ):
            client.submit("simulate", 1.0)

    wait_until(lambda: "The thinker finished" in launcher.stdout, "the demo campaign", 180)
    assert "The thinker finished with exit code 0" in launcher.stdout
    thinker_log = (run_dir / "thinker.log").read_text()
    assert "Best point found" in thinker_log and "[5/5]" in thinker_log
    assert len((run_dir / "results.jsonl").read_text().splitlines()) >= 10

    # Ctrl-C in a terminal, or SIGTERM from a process manager
    if broker == "given":
        name, seen = "SIGINT", launcher.interrupt()
    else:
        name, seen = "SIGTERM", len(launcher.log)
        launcher.process.send_signal(signal.SIGTERM)
    assert launcher.finish(timeout=120) == 0, launcher.output[-3000:]
    after = launcher.stdout.splitlines()[-1]
    assert after.startswith(f"Stopped ({name})"), launcher.stdout
    assert launcher.log[seen:] == [] and "Traceback" not in launcher.output, launcher.output
    nothing_left_behind(env)


def test_a_killed_launcher_leaves_no_service_behind(
    start: Callable[..., Service], service_env: dict[str, str], tmp_path: Path
) -> None:
    args = ["launch", f"--gateway-port={free_port()}", "--engine=local", f"--run-dir={tmp_path}"]
    launcher = start(args, {**service_env, "COLMENA_DEMO_GUESSES": "100000"})
    wait_until(lambda: "Press Ctrl-C" in launcher.stdout, "the launcher's addresses", 180)
    launcher.process.kill()  # SIGKILL: no chance to stop its services itself
    launcher.finish()
    nothing_left_behind(service_env)


def _answers(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


# ------------------------------------------------------------- operating a campaign
def colmena(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "colmena_services.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version_and_one_line_descriptions() -> None:
    from colmena_services.cli import Colmena

    version = colmena("--version", env=dict(os.environ))
    assert version.returncode == 0 and re.fullmatch(r"colmena \S+\n", version.stdout)
    helped = colmena("--help", env=dict(os.environ)).stdout
    for name in Colmena.model_fields:
        command = name.replace("_", "-")
        assert re.search(rf"^    {command} +[A-Z]", helped, flags=re.M), (command, helped)


def test_refused_login_and_unreachable_broker_are_told_apart(rabbitmq_url: str) -> None:
    env = dict(os.environ)
    scheme, _, rest = rabbitmq_url.partition("://")
    host = rest.rpartition("@")[2]
    wrong = colmena("status", f"--broker-url={scheme}://nobody:wrong@{host}", "--wait=0", env=env)
    assert wrong.returncode == 2, wrong.stderr
    assert "refused the login of user 'nobody'" in wrong.stderr
    assert wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr
    away = colmena(
        "dead-letters",
        f"--broker-url=amqp://guest:guest@127.0.0.1:{free_port()}/",
        "--connect-timeout=1",
        env=env,
    )
    assert away.returncode == 3, away.stderr
    assert "is not reachable (Connection refused" in away.stderr
    assert away.stderr.count("\n") == 1


def test_busy_ports_fail_with_one_line(service_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args in (
            [
                "taskserver",
                "--methods=service_apps:METHODS",
                "--engine=local",
                f"--health-port={port}",
                "--health-host=127.0.0.1",
            ],
            ["gateway", f"--port={port}", "--host=127.0.0.1"],
        ):
            env = {**service_env, "COLMENA_GATEWAY_TOKENS": "a-token-of-24-characters:me"}
            process = colmena(*args, env=env)
            assert process.returncode == 2, process.stderr
            assert f"Port {port} on 127.0.0.1 is in use" in process.stderr
            last = process.stderr.strip().splitlines()[-1]
            assert last.startswith("colmena: Port"), process.stderr
            assert "Traceback" not in process.stderr


def test_gateway_says_where_it_listens_and_stops_in_one_line(
    start: Callable[..., Service], service_env: dict[str, str]
) -> None:
    env = {**service_env, "COLMENA_GATEWAY_TOKENS": "a-token-of-24-characters:me"}
    gateway = start(["gateway", f"--port={free_port()}", "--host=127.0.0.1"], env)
    docs = gateway.wait_for(r"Gateway listening on \S+ \(API documentation: (\S+)\)").group(1)
    assert httpx.get(docs, timeout=10).status_code == 200
    seen = gateway.interrupt()
    gateway.finish()
    after = gateway.log[seen:]
    assert len(after) == 1 and "Received SIGINT" in after[0], after
    assert "Traceback" not in gateway.output
    nothing_left_behind(env)


def test_operating_the_demo_services(
    start: Callable[..., Service], service_env: dict[str, str], tmp_path: Path
) -> None:
    """Two task servers on one host (default health ports), a thinker, each recording its
    results; status and results while they run; Ctrl-C; then the report of the campaign."""
    env = {**service_env, "COLMENA_DEMO_GUESSES": "100000"}  # runs until stopped
    servers = [
        start(
            [
                "taskserver",
                "--methods=colmena_services.demo:METHODS",
                "--parsl-config=colmena_services.demo:parsl_config" if i == 0 else "--engine=local",
                f"--results-file={tmp_path / f'server{i}.jsonl'}",
            ],
            env,
        )
        for i in range(2)
    ]
    for server in servers:
        health = server.wait_for(r"Health endpoints on (http://\S+/healthz)").group(1)
        assert httpx.get(health, timeout=5).status_code == 200
    thinker = start(
        [
            "thinker",
            "--thinker-factory=colmena_services.demo:make_thinker",
            "--topics=generate,simulate",
            f"--results-file={tmp_path / 'thinker.jsonl'}",
        ],
        env,
    )
    follow = colmena("results", "--count=3", "--client-id=thinker", env=env, timeout=180)
    assert follow.returncode == 0, follow.stderr
    lines = follow.stdout.splitlines()
    assert len(lines) == 3 and all(re.search(r"thinker/\w+ \w+: ok ", line) for line in lines), (
        lines
    )

    status = colmena("status", "--json", "--wait=6", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert len(report["servers"]) == 2
    assert sorted(report["methods"]) == ["target_function", "task_generator"]
    assert report["dead_letters"] == 0
    assert any(q.endswith(".requests.target_function") for q in report["queues"])
    text = colmena("status", "--wait=0", env=env).stdout
    assert "Dead letters: 0" in text and "In flight:" in text

    wait_until(
        lambda: len((tmp_path / "thinker.jsonl").read_text().splitlines()) >= 6,
        "results recorded",
        WAIT,
    )
    # The thinker as compose or Kubernetes stop it (SIGTERM to the process), the task
    # servers with Ctrl-C (SIGINT to their process groups: Parsl's processes too)
    seen = len(thinker.log)
    assert thinker.stop() == 0, thinker.output[-3000:]
    after = thinker.log[seen:]
    assert len(after) == 1 and "Received SIGTERM" in after[0], after
    for server in servers:
        seen = server.interrupt()
        assert server.finish() == 0, server.output[-3000:]
        after = server.log[seen:]
        assert len(after) == 1 and "Received SIGINT" in after[0], after
    for service in (thinker, *servers):
        assert "Traceback" not in service.output, service.output[-3000:]
    nothing_left_behind(env)

    files = [tmp_path / "thinker.jsonl", tmp_path / "server0.jsonl", tmp_path / "server1.jsonl"]
    drawn = colmena("report", *map(str, files), f"--output={tmp_path / 'campaign.png'}", env=env)
    assert drawn.returncode == 0, drawn.stderr
    png = (tmp_path / "campaign.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

    from colmena_services.record import read_records
    from colmena_services.report import spans

    records = read_records(files)
    _, drawn_spans = spans(records)
    assert len(drawn_spans) == len({r["task_id"] for r in records if r["time_compute_ended"]})
    assert {s.method for s in drawn_spans} == {"target_function", "task_generator"}


def test_dead_letters_are_listed(
    start: Callable[..., Service], rabbitmq_url: str, service_env: dict[str, str]
) -> None:
    import pika

    from colmena_core.queue.rabbitmq import CampaignNames

    task_server(start, service_env)  # it rejects what it cannot decode: a dead letter
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    requests = CampaignNames(service_env["COLMENA_CAMPAIGN"]).requests_exchange
    channel.basic_publish(requests, "double", b"not a task")
    connection.close()

    def listed() -> subprocess.CompletedProcess[str] | None:
        answer = colmena("dead-letters", env=service_env)
        return answer if "1 dead letters" in answer.stdout else None

    assert "undecodable: rejected" in wait_until(listed, "the dead letter", WAIT).stdout
    rows = json.loads(colmena("dead-letters", "--json", env=service_env).stdout)
    assert rows[0]["reason"] == "rejected" and rows[0]["size"] == len(b"not a task")
    both = colmena("dead-letters", "--requeue", "--purge", env=service_env)
    assert both.returncode == 2 and "not both" in both.stderr
    # Undecodable: requeueing would only bring it back here, so it stays; purging removes it
    requeued = colmena("dead-letters", "--requeue", env=service_env)
    assert requeued.returncode == 0, requeued.stderr
    assert "Requeued 0 dead letters" in requeued.stdout and "cannot be decoded" in requeued.stdout
    purged = colmena("dead-letters", "--purge", env=service_env)
    assert purged.returncode == 0 and "Purged 1 dead letters" in purged.stdout, purged.stderr
    assert "No dead letters" in colmena("dead-letters", env=service_env).stdout


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
