"""Helpers of the gateway tests: real gateway and task-server processes on loopback.

Processes are started with the ``colmena`` command line (``python -m colmena_services.cli``)
and ``COLMENA_*`` environment variables, exactly as a deployment runs them, so that tests
can kill them with SIGKILL and start them again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from colmena_core.testing import free_port
from colmena_core.testing import wait_until as _wait_until

WAIT = 30.0
"""Timeout, in seconds, of every wait that is expected to succeed."""

METHODS = str(Path(__file__).resolve().parent / "gateway_methods.py")
"""File of the methods the test task servers serve."""

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
TOKENS = f"{ALICE}:alice,{BOB}:bob"
"""Two API clients; alice is also a monitoring client."""


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """:func:`colmena_core.testing.wait_until` with this module's default timeout."""
    return _wait_until(predicate, what, timeout)


class ServiceProcess:
    """One ``colmena`` service in a child process, its output in a temporary file."""

    def __init__(self, arguments: list[str], env: Mapping[str, str]) -> None:
        self.arguments = arguments
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start the process (again, if it ran before)."""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open while the process runs
        self.process = subprocess.Popen(
            [sys.executable, "-m", "colmena_services.cli", *self.arguments],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def output(self) -> str:
        """What the process printed so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def signal(self, number: int) -> None:
        """Send a signal to the process."""
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        """SIGKILL, then wait for the process to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)

    def stop(self, timeout: float = WAIT) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); return the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        return self.process.returncode

    def close(self) -> None:
        """Stop the process and drop its output."""
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


class GatewayProcess(ServiceProcess):
    """The gateway as a child process on a loopback port."""

    def __init__(self, url: str, campaign: str, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        settings = {
            "COLMENA_BROKER_URL": url,
            "COLMENA_CAMPAIGN": campaign,
            "COLMENA_GATEWAY_TOKENS": TOKENS,
            "COLMENA_GATEWAY_MONITORS": "alice",
            "COLMENA_TOPICS": "default,extra",
            "COLMENA_ENV": "production",
            **{f"COLMENA_{k.upper()}": v for k, v in env.items()},
        }
        super().__init__(["gateway", "--host", "127.0.0.1", "--port", str(self.port)], settings)

    def start(self) -> GatewayProcess:
        super().start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = WAIT) -> None:
        """Wait until ``/readyz`` answers 200."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"The gateway exited:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
            return False

        wait_until(ready, "the gateway to be ready", timeout)


class TaskServerProcess(ServiceProcess):
    """A task server on the local engine (a pool of 2 processes) serving ``methods``."""

    def __init__(
        self, url: str, campaign: str, methods: str = "METHODS", heartbeat: float = 0.5
    ) -> None:
        super().__init__(
            [
                "taskserver",
                "--methods",
                f"{METHODS}:{methods}",
                "--engine",
                "local",
                "--workers",
                "2",
                "--health-host",
                "127.0.0.1",
                "--health-port",
                "0",
                "--heartbeat-interval",
                str(heartbeat),
            ],
            {"COLMENA_BROKER_URL": url, "COLMENA_CAMPAIGN": campaign},
        )


def methods_served(base_url: str, token: str = ALICE) -> set[str]:
    """Names of the methods the gateway lists now."""
    answer = httpx.get(
        f"{base_url}/api/v1/methods", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    answer.raise_for_status()
    return {m["name"] for m in answer.json()["methods"]}
