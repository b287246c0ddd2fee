"""The local launcher: a whole campaign stack as plain processes, for people without Docker.

``colmena launch`` starts a throwaway RabbitMQ node (or uses ``--broker-url``), a task
server, a thinker and the gateway. Once the gateway answers it prints the dashboard's and
the API documentation's addresses with an API token, and where the services write their
logs and the thinker its results (``--run-dir``). Ctrl-C or SIGTERM stops everything in a
few seconds: the task server finishes its in-flight tasks and stops Parsl, the thinker
leaves its unread results in the broker, the throwaway broker goes with its data. By default
it runs the demo campaign.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import IO

import httpx
from pydantic import Field, field_validator

from colmena_core.security import SECRET_FILE_VARIABLE, SECRET_VARIABLE, new_secret

from .common import RecordingSettings, ServiceConfigError, check_port, redacted

logger = logging.getLogger(__name__)


class LaunchSettings(RecordingSettings):
    """Start a broker (unless one is given), a task server, a thinker and the gateway."""

    broker_url: str = Field(
        default="",
        description="AMQP URL of a broker to use; empty starts a throwaway RabbitMQ node",
    )
    methods: str = Field(default="colmena_services.demo:METHODS", description="Methods to serve")
    parsl_config: str = Field(
        default="colmena_services.demo:parsl_config", description="Parsl configuration"
    )
    engine: str = Field(default="parsl", description="Task server engine: parsl or local")
    thinker_factory: str = Field(
        default="colmena_services.demo:make_thinker", description="Thinker factory"
    )
    topics: str = Field(default="generate,simulate", description="Topics of the thinker")
    client_id: str = Field(default="thinker", description="Client ID of the thinker")
    gateway_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the gateway (default: 8000 if it is free, else a free port)",
    )
    gateway_tokens: str = Field(
        default="", description="API tokens 'token:client,...' (empty: one is generated)"
    )
    exit_when_done: bool = Field(
        default=False, description="Stop everything once the thinker finishes (for scripts)"
    )
    drain_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds the task server gets to finish its in-flight tasks when stopping",
    )
    run_dir: Path | None = Field(
        default=None,
        description="Folder for the services' logs and the thinker's results file "
        "(default: a new folder under .colmena-runs/)",
    )

    @field_validator("broker_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if value and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps:// (or be empty to start a broker)")
        return value


DEFAULT_GATEWAY_PORT = 8000
STOP_WAIT = 4.0
"""Seconds the thinker and the gateway get to stop after SIGTERM before they are killed."""


def _gateway_port(settings: LaunchSettings) -> int:
    if settings.gateway_port is not None:
        check_port("0.0.0.0", settings.gateway_port, "the gateway", "--gateway-port")
        return settings.gateway_port
    try:
        check_port("0.0.0.0", DEFAULT_GATEWAY_PORT, "the gateway", "--gateway-port")
        return DEFAULT_GATEWAY_PORT
    except ServiceConfigError:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", 0))
            return int(sock.getsockname()[1])


def _run_dir(settings: LaunchSettings) -> Path:
    if settings.run_dir is not None:
        folder = settings.run_dir
    else:
        folder = Path(".colmena-runs") / time.strftime(f"launch-{settings.campaign}-%Y%m%d-%H%M%S")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceConfigError(f"Cannot create {str(folder)!r}: {exc.strerror or exc}") from None
    return folder


def _stop_with_parent() -> None:
    """In a service's process before it starts: SIGTERM it if the launcher dies (on Linux),
    so that a launcher killed outright leaves no service behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _Service:
    """One service of the stack: a ``colmena`` subprocess in its own session, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._file: IO[bytes] = log.open("ab")
        logger.debug("Starting the %s", name)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "colmena_services.cli", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is for the launcher; it stops us
                preexec_fn=_stop_with_parent,
            )
        except BaseException:
            self._file.close()
            raise

    def poll(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> int | None:
        try:
            return self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("The %s did not stop in time; killing it (see %s)", self.name, self.log)
            self.process.kill()
            self.process.wait(10)
            return self.process.returncode
        finally:
            self._file.close()


def _wait_for_gateway(
    url: str, token: str, services: list[_Service], stop: threading.Event
) -> bool:
    """Wait until the gateway answers and sees a task server serving methods (from its
    heartbeats), so that the addresses printed then work; ``False`` if a service ended first.
    """
    deadline = time.monotonic() + 120
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set() and time.monotonic() < deadline:
        if any(service.poll() is not None for service in services):
            return False
        try:
            answer = httpx.get(url + "/api/v1/methods", headers=headers, timeout=2)
            if answer.status_code == 200 and answer.json().get("methods"):
                return True
        except (httpx.HTTPError, ValueError):
            pass
        stop.wait(0.2)
    return False


def launch(settings: LaunchSettings) -> int:
    """Run the stack until Ctrl-C (or until the thinker ends with ``--exit-when-done``)."""
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        reason.append(signal.Signals(signum).name)
        stop.set()

    port = _gateway_port(settings)
    run_dir = _run_dir(settings)
    results = settings.results_file or run_dir / "results.jsonl"
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    services: dict[str, _Service] = {}
    thinker_code: int | None = None
    broker = None
    try:
        with ExitStack():
            url = settings.broker_url
            if not url:
                from colmena_core.testing.brokers import ThrowawayRabbitMQ

                logger.info("Starting a throwaway RabbitMQ node")
                broker = ThrowawayRabbitMQ()
                broker.start()
                url = broker.url
            else:
                from .common import check_broker

                check_broker(url, settings.connect_timeout)
            tokens = settings.gateway_tokens or f"{secrets.token_urlsafe(24)}:demo"
            token, _, client = tokens.split(",")[0].partition(":")
            env = {
                **os.environ,
                "COLMENA_BROKER_URL": url,
                "COLMENA_CAMPAIGN": settings.campaign,
                "COLMENA_LOG_LEVEL": settings.log_level,
            }
            secret_file: Path | None = None
            if not env.get(SECRET_VARIABLE) and not env.get(SECRET_FILE_VARIABLE):
                # The services of this campaign sign their messages with it; a thinker or
                # task server of the user's joins with COLMENA_CAMPAIGN_SECRET_FILE
                secret_file = run_dir / "campaign-secret"
                secret_file.touch(mode=0o600)
                secret_file.write_text(new_secret())
                env[SECRET_FILE_VARIABLE] = str(secret_file)
            gateway_env = {**env, "COLMENA_GATEWAY_TOKENS": tokens}
            gateway_env.setdefault("COLMENA_GATEWAY_MONITORS", client)
            services["task server"] = _Service(
                "task server",
                [
                    "taskserver",
                    f"--methods={settings.methods}",
                    f"--parsl-config={settings.parsl_config}",
                    f"--engine={settings.engine}",
                    "--health-port=0",
                ],
                env,
                run_dir / "taskserver.log",
            )
            services["gateway"] = _Service(
                "gateway",
                [
                    "gateway",
                    "--host=127.0.0.1",
                    f"--port={port}",
                    f"--topics={settings.topics},default",
                    f"--results-file={run_dir / 'gateway-results.jsonl'}",
                ],
                gateway_env,
                run_dir / "gateway.log",
            )
            services["thinker"] = _Service(
                "thinker",
                [
                    "thinker",
                    f"--thinker-factory={settings.thinker_factory}",
                    f"--topics={settings.topics}",
                    f"--client-id={settings.client_id}",
                    f"--results-file={results}",
                    "--health-port=0",
                ],
                env,
                run_dir / "thinker.log",
            )
            base = f"http://127.0.0.1:{port}"
            needed = [services["task server"], services["gateway"]]
            if _wait_for_gateway(base, token, needed, stop):
                print(
                    f"Campaign {settings.campaign!r} on {redacted(url)}"
                    + (" (a throwaway RabbitMQ node)" if broker else "")
                    + f"\nDashboard: {base}/#token={token}"
                    f"\nAPI docs:  {base}/api/v1/docs (API token of client {client!r}: {token})"
                    f"\nLogs:      {run_dir}/ (taskserver.log, thinker.log, gateway.log)"
                    + (
                        f"\nSecret:    {SECRET_FILE_VARIABLE}={secret_file} to join the campaign"
                        if secret_file is not None
                        else ""
                    )
                    + f"\nResults:   {results} (draw them: colmena report {results})"
                    "\nPress Ctrl-C to stop.",
                    flush=True,
                )
            while not stop.is_set():
                for name, service in services.items():
                    code = service.poll()
                    if code is None:
                        continue
                    if name == "thinker":
                        if thinker_code is None:
                            thinker_code = code
                            print(
                                f"The thinker finished with exit code {code} "
                                f"(its log: {service.log})",
                                flush=True,
                            )
                        if settings.exit_when_done:
                            stop.set()
                    else:
                        print(
                            f"The {name} exited with code {code}; stopping (its log: "
                            f"{service.log})",
                            file=sys.stderr,
                            flush=True,
                        )
                        stop.set()
                        thinker_code = thinker_code or 1
                stop.wait(0.2)
    finally:
        # Every service at once: each finishes what the contract says (the task server its
        # in-flight tasks) and they are independent of each other
        for service in services.values():
            service.terminate()
        deadline = time.monotonic() + STOP_WAIT
        for name, service in services.items():
            if name != "task server":
                service.wait(deadline)
        if "task server" in services:
            server = services["task server"]
            try:
                server.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(
                    "Waiting for the task server to finish its in-flight tasks…",
                    file=sys.stderr,
                    flush=True,
                )
            server.wait(time.monotonic() + settings.drain_timeout)
        if broker is not None:
            broker.kill()  # a throwaway node: nothing in it is kept
            broker.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if reason:
            print(
                f"Stopped ({reason[0]}): the task server, thinker and gateway"
                + (" and the throwaway broker" if broker else "")
                + f"; logs in {run_dir}/",
                flush=True,
            )
    return thinker_code or 0
