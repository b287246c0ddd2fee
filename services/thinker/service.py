"""Run the thinker service: a user's thinker, built by a factory loaded by import path.

The thinker gets queues on the broker under a stable client ID, so a thinker restarted with
the same ID receives the results that arrived while it was away. SIGTERM and SIGINT set the
thinker's ``done`` flag: agents wind down, and results not yet read stay in the broker.
Agents that are still busy after ``--stop-grace`` seconds are left behind: the process
exits, and whatever they had not read waits in the broker for the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from colmena_core.models import Result
from colmena_core.queue.rabbitmq import RabbitMQQueues
from colmena_core.thinker import BaseThinker

from ..common import ServiceConfigError, load_object, redacted, supervised
from ..record import ResultsFile
from .settings import ThinkerSettings

logger = logging.getLogger(__name__)


class _RecordingQueues(RabbitMQQueues):
    """The thinker's queues, which also append each result it reads to the results file."""

    results_file: ResultsFile | None = None

    def get_result(
        self, topic: str = "default", timeout: float | None = None, acknowledge: bool = True
    ) -> Result | None:
        result = super().get_result(topic, timeout, acknowledge)
        if result is not None and self.results_file is not None:
            self.results_file.record(result)
        return result


class ThinkerService:
    """One thinker and its health endpoints, in one process."""

    def __init__(self, settings: ThinkerSettings) -> None:
        self.settings = settings
        factory = load_object(settings.thinker_factory, "thinker factory")
        if not callable(factory):
            raise ServiceConfigError(
                f"The thinker factory {settings.thinker_factory!r} is not callable"
            )
        self.queues = _RecordingQueues(
            topics=settings.topic_list,
            url=settings.broker_url,
            campaign=settings.campaign,
            client_id=settings.client_id,
            max_message_size=settings.max_message_size,
            stall_timeout=settings.stall_timeout,
        )
        thinker = factory(self.queues)
        if not isinstance(thinker, BaseThinker):
            raise ServiceConfigError(
                f"The thinker factory {settings.thinker_factory!r} returned "
                f"{type(thinker).__name__}, not a BaseThinker"
            )
        self.thinker = thinker
        self.finished = threading.Event()
        self.stop_requested = threading.Event()
        if settings.results_file is not None:
            self.queues.results_file = ResultsFile(
                settings.results_file, role="thinker", client_id=settings.client_id
            )

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return True, {"client_id": self.settings.client_id}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        stalled = self.queues.stalled_reason
        ready = self.queues.is_connected and self.thinker.is_alive() and stalled is None
        return ready, {
            "client_id": self.settings.client_id,
            "broker_connected": self.queues.is_connected,
            "stalled": stalled,
            "tasks_in_flight": self.queues.active_count,
            "finished": self.finished.is_set(),
        }

    def run(self) -> int:
        """Run the thinker to completion; 0 when every agent succeeded, 1 otherwise."""
        settings = self.settings

        def stop(name: str) -> None:
            logger.info("Received %s: asking the agents to stop", name)
            self.stop_requested.set()
            self.thinker.done.set()

        with supervised(
            settings.health_host, settings.health_port, self.liveness, self.readiness, stop
        ):
            return self._think()

    def _think(self) -> int:
        settings = self.settings
        try:
            self.queues.connect(timeout=settings.connect_timeout)
            logger.info(
                "Thinker %s (%s) joined campaign %r on %s",
                settings.client_id,
                type(self.thinker).__name__,
                settings.campaign,
                redacted(settings.broker_url),
            )
            self.thinker.start()
            deadline = None
            while self.thinker.is_alive():
                self.thinker.join(timeout=0.2)
                if self.stop_requested.is_set():
                    deadline = deadline or time.monotonic() + settings.stop_grace
                    if time.monotonic() >= deadline:
                        logger.debug("Agents still busy after %s s: leaving", settings.stop_grace)
                        return 0
            self.finished.set()
            if self.stop_requested.is_set():
                return 0
            if settings.kill_on_exit:
                self.queues.send_kill_signal()
            errors = self.thinker.agent_errors
            if errors:
                logger.error("The thinker ended with failed agents: %s", sorted(errors))
                return 1
            summary = getattr(self.thinker, "summary", None)
            if callable(summary):
                print(summary(), flush=True)
            logger.info("Thinker %s finished", settings.client_id)
            return 0
        finally:
            self.queues.disconnect()
            if self.queues.results_file is not None:
                self.queues.results_file.close()
