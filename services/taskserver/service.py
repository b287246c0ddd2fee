"""Run the task-server service: methods and a Parsl configuration loaded by import path.

The server runs in this process (not a child): SIGTERM or SIGINT stop it from taking new
tasks, in-flight tasks finish and send their results, and the process exits. Requests it
had taken from the broker but not started go back to the broker for other servers.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from colmena_core.models import Result
from colmena_core.queue.base import QueueRole
from colmena_core.queue.monitor import HeartbeatPublisher
from colmena_core.queue.rabbitmq import RabbitMQQueues
from colmena_core.task_server.base import FutureBasedTaskServer

from ..common import ServiceConfigError, load_object, redacted, supervised
from ..record import ResultsFile
from .settings import TaskServerSettings

logger = logging.getLogger(__name__)


def load_methods(path: str) -> list[Any]:
    """Load the list of methods (functions or ``(function, options)`` pairs) to serve."""
    methods = load_object(path, "methods")
    if callable(methods) and not isinstance(methods, Sequence):
        methods = [methods]
    if not isinstance(methods, Sequence) or isinstance(methods, str) or not methods:
        raise ServiceConfigError(f"The methods {path!r} must be a non-empty list of functions")
    for method in methods:
        function = method[0] if isinstance(method, tuple | list) else method
        if not callable(function):
            raise ServiceConfigError(
                f"The methods {path!r} hold {function!r}, which is not callable"
            )
    return list(methods)


def load_parsl_config(path: str) -> Any:
    """Load a Parsl ``Config``, or call a function that returns one."""
    from parsl.config import Config

    config = load_object(path, "Parsl configuration")
    if callable(config) and not isinstance(config, Config):
        config = config()
    if not isinstance(config, Config):
        raise ServiceConfigError(f"The Parsl configuration {path!r} is not a parsl.config.Config")
    return config


def engine_capacity(settings: TaskServerSettings, config: Any) -> int:
    """How many tasks the engine runs at once, as far as its configuration tells."""
    if config is None:
        return settings.workers
    total = 0
    for executor in config.executors:
        workers = getattr(executor, "max_workers_per_node", None) or getattr(
            executor, "max_threads", None
        )
        total += int(workers) if isinstance(workers, int | float) and workers > 0 else 1
    return max(total, 1)


class _RecordingQueues(RabbitMQQueues):
    """The server's queues, which also append each result sent to the results file."""

    results_file: ResultsFile | None = None

    def send_result(self, result: Result, topic: str | None = None) -> None:
        super().send_result(result, topic)
        if self.results_file is not None:
            self.results_file.record(result)


class TaskServerService:
    """The task server, its heartbeats and its health endpoints, in one process."""

    def __init__(self, settings: TaskServerSettings) -> None:
        self.settings = settings
        host = re.sub(r"[^A-Za-z0-9_-]", "-", platform.node().split(".")[0])[:48].strip("-_")
        self.server_id = settings.server_id or f"{host or 'server'}-{os.getpid()}"
        methods = load_methods(settings.methods)
        config = None
        if settings.engine == "parsl":
            if settings.parsl_config is None:
                raise ServiceConfigError(
                    "--parsl-config (COLMENA_PARSL_CONFIG) is required with the Parsl engine"
                )
            config = load_parsl_config(settings.parsl_config)
        self.capacity = engine_capacity(settings, config)
        self.queues = _RecordingQueues(
            url=settings.broker_url,
            campaign=settings.campaign,
            client_id=self.server_id,
            prefetch=settings.prefetch or 2 * self.capacity,
            max_message_size=settings.max_message_size,
            stall_timeout=settings.stall_timeout,
        )
        # Before it connects: a server declares no result queues of its own (and its broker
        # user may not)
        self.queues.set_role(QueueRole.SERVER)
        self.server: FutureBasedTaskServer
        if config is None:
            from colmena_core.task_server.local import LocalTaskServer

            self.server = LocalTaskServer(
                methods, self.queues, num_workers=settings.workers, max_retries=settings.max_retries
            )
        else:
            from colmena_core.task_server.parsl import ParslTaskServer

            self.server = ParslTaskServer(
                methods, self.queues, config, max_retries=settings.max_retries
            )
        if settings.results_file is not None:
            self.queues.results_file = ResultsFile(
                settings.results_file, role="task server", server_id=self.server_id
            )
        self.heartbeats = HeartbeatPublisher(settings.broker_url, settings.campaign)
        self.started = time.time()
        self.stopped = threading.Event()

    # ----------------------------------------------------------------- health
    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return not self.stopped.is_set(), {"server_id": self.server_id}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        stalled = self.queues.stalled_reason
        ready = (
            self.server.ready.is_set()
            and not self.stopped.is_set()
            and self.queues.is_connected
            and stalled is None
        )
        return ready, {
            "server_id": self.server_id,
            "broker_connected": self.queues.is_connected,
            "stalled": stalled,
            "methods": sorted(self.server.method_names),
            "in_flight": self.server.in_flight if self.server.ready.is_set() else 0,
        }

    # ------------------------------------------------------------- heartbeats
    def status(self) -> dict[str, Any]:
        """What the server advertises: who it is, what it serves, how busy it is."""
        in_flight = self.server.in_flight if self.server.ready.is_set() else 0
        return {
            "server_id": self.server_id,
            "hostname": platform.node(),
            "methods": sorted(self.server.method_names),
            "capacity": self.capacity,
            "in_flight": in_flight,
            "engine": self.settings.engine,
            "started": self.started,
        }

    def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_interval
        while not self.stopped.is_set():
            if self.server.ready.is_set():
                try:
                    self.heartbeats.publish(self.status(), ttl=3 * interval)
                except Exception:
                    logger.warning("Could not publish a heartbeat", exc_info=True)
                self.stopped.wait(interval)
            else:
                self.server.ready.wait(min(interval, 0.5))

    # -------------------------------------------------------------------- run
    def run(self) -> int:
        """Serve until SIGTERM, SIGINT or the campaign's kill signal; return the exit code."""
        settings = self.settings

        def stop(name: str) -> None:
            in_flight = self.server.in_flight if self.server.ready.is_set() else 0
            logger.info(
                "Received %s: finishing in-flight tasks (%d now), then stopping", name, in_flight
            )
            self.server.request_stop()

        with supervised(
            settings.health_host, settings.health_port, self.liveness, self.readiness, stop
        ):
            return self._serve()

    def _serve(self) -> int:
        settings = self.settings
        beat = threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True)
        beat.start()
        try:
            self.queues.connect(timeout=settings.connect_timeout)
            logger.info(
                "Task server %s serving %s for campaign %r on %s (capacity %d)",
                self.server_id,
                sorted(self.server.method_names),
                settings.campaign,
                redacted(settings.broker_url),
                self.capacity,
            )
            self.server.run()
            return 0
        finally:
            self.stopped.set()
            try:
                self.heartbeats.publish({**self.status(), "stopping": True}, ttl=1)
            except Exception:
                logger.debug("Could not announce the stop", exc_info=True)
            self.heartbeats.close()
            self.queues.disconnect()
            beat.join(timeout=5)
            if self.queues.results_file is not None:
                self.queues.results_file.close()
            logger.debug("Task server %s stopped", self.server_id)
