"""The local launcher: a whole campaign stack as plain processes, for people without Docker.

``colmena launch`` starts a throwaway RabbitMQ node (or uses ``--broker-url``), a task
server, a thinker and the gateway, prints where the gateway listens and the API token to
use, and stops everything on Ctrl-C. By default it runs the demo campaign.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack
from types import FrameType

from pydantic import Field, field_validator

from colmena_core.security import SECRET_FILE_VARIABLE, SECRET_VARIABLE, new_secret

from .common import DEFAULT_BROKER_URL, ServiceSettings, redacted

logger = logging.getLogger(__name__)


class LaunchSettings(ServiceSettings):
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
    gateway_port: int = Field(default=8000, ge=0, le=65535, description="Port of the gateway")
    gateway_tokens: str = Field(
        default="", description="API tokens 'token:client,...' (empty: one is generated)"
    )
    exit_when_done: bool = Field(
        default=False, description="Stop everything once the thinker finishes (for scripts)"
    )

    @field_validator("broker_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        if value and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps:// (or be empty to start a broker)")
        return value


def _service(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "colmena_services.cli", name, *args]
    logger.info("Starting the %s", name)
    return subprocess.Popen(command, env=env, start_new_session=True)


def _stop(process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("The %s did not stop within %s s; killing it", name, timeout)
            process.kill()
            process.wait(10)
    return process.returncode


def launch(settings: LaunchSettings) -> int:
    """Run the stack until Ctrl-C (or until the thinker ends with ``--exit-when-done``)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    with ExitStack() as stack:
        url = settings.broker_url
        if not url:
            from colmena_core.testing.brokers import ThrowawayRabbitMQ

            logger.info("Starting a throwaway RabbitMQ node")
            broker = stack.enter_context(ThrowawayRabbitMQ())
            url = broker.url
        tokens = settings.gateway_tokens or f"{secrets.token_urlsafe(24)}:demo"
        env = {
            **os.environ,
            "COLMENA_BROKER_URL": url or DEFAULT_BROKER_URL,
            "COLMENA_CAMPAIGN": settings.campaign,
            "COLMENA_LOG_LEVEL": settings.log_level,
        }
        if not env.get(SECRET_VARIABLE) and not env.get(SECRET_FILE_VARIABLE):
            env[SECRET_VARIABLE] = new_secret()  # the services of this campaign sign with it
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            processes["task server"] = _service(
                "taskserver",
                [
                    f"--methods={settings.methods}",
                    f"--parsl-config={settings.parsl_config}",
                    f"--engine={settings.engine}",
                    "--health-port=0",
                ],
                env,
            )
            processes["gateway"] = _service(
                "gateway",
                [f"--port={settings.gateway_port}", f"--topics={settings.topics},default"],
                {**env, "COLMENA_GATEWAY_TOKENS": tokens},
            )
            processes["thinker"] = _service(
                "thinker",
                [
                    f"--thinker-factory={settings.thinker_factory}",
                    f"--topics={settings.topics}",
                    f"--client-id={settings.client_id}",
                    "--health-port=0",
                ],
                env,
            )
            token, _, client = tokens.split(",")[0].partition(":")
            print(
                f"Campaign {settings.campaign!r} on {redacted(url)}\n"
                f"Gateway: http://127.0.0.1:{settings.gateway_port}/docs "
                f"(token for client {client!r}: {token})\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            thinker_code: int | None = None
            while not stop.is_set():
                for name, process in processes.items():
                    code = process.poll()
                    if code is None:
                        continue
                    if name == "thinker":
                        if thinker_code is None:
                            thinker_code = code
                            logger.info("The thinker finished with exit code %d", code)
                        if settings.exit_when_done:
                            stop.set()
                    else:
                        logger.error("The %s exited with code %d; stopping", name, code)
                        stop.set()
                        thinker_code = thinker_code or 1
                stop.wait(0.5)
        finally:
            # The thinker first (it may still be reading results), the gateway, then the server
            for name in ("thinker", "gateway", "task server"):
                if name in processes:
                    _stop(processes[name], name)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return thinker_code or 0
