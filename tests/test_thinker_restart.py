"""A thinker SIGKILLed mid-campaign and restarted with the same client ID loses nothing.

The thinker sends its tasks and waits until the broker confirmed them
(``wait_until_confirmed``) before it records them as sent; its ``@result_processor``
acknowledges a result only once the handler returned. Killed while handling a result, the
thinker gets that result again when it restarts, with every other one not yet processed,
and can ask the broker which of its tasks are still in flight (``in_flight``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path
from typing import Any

from colmena_core.models import Result
from colmena_core.queue.rabbitmq import RabbitMQQueues
from colmena_core.testing.brokers import ThrowawayCampaign
from colmena_core.testing.task_servers import (
    LocalServerStarter,
    kill_if_running,
    stop_task_servers,
)
from colmena_core.thinker import BaseThinker, agent, result_processor

WAIT = 60.0
"""Timeout, in seconds, of every wait that is expected to succeed."""

TASKS = 40


def add(a: int, b: int) -> int:
    """Sum of two numbers."""
    return a + b


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _append(path: Path, line: str) -> None:
    with path.open("a") as stream:
        stream.write(line + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def run_thinker(
    url: str,
    campaign: str,
    directory: str,
    send: int,
    block_at: int | None,
    blocked: Any,
) -> None:
    """A thinker that sends ``send`` tasks and records the results it processed.

    It blocks (until killed) while handling its ``block_at``-th result of this run.
    """
    folder = Path(directory)
    queues = RabbitMQQueues(
        url=url, campaign=campaign, client_id="steady", methods=["add"], ledger=True
    )

    class Steer(BaseThinker):
        handled = 0

        @agent(startup=True)
        def submit(self) -> None:
            if not send:
                return
            sent = [self.queues.send_inputs(i, 1, method="add") for i in range(send)]
            assert self.queues.wait_until_confirmed(WAIT)
            _append(folder / "sent", "\n".join(sent))  # only now: the broker holds them

        @result_processor
        def receive(self, result: Result) -> None:
            if block_at is not None and self.handled == block_at:
                _append(folder / "interrupted", result.task_id)
                blocked.set()
                threading.Event().wait()  # killed here, before the handler returns
            self.handled += 1
            _append(folder / "processed", result.task_id)
            sent = set(_lines(folder / "sent"))
            if sent and sent <= set(_lines(folder / "processed")):
                self.done.set()

    if not send:  # restarted: ask the broker what is still in flight, before taking results
        _append(folder / "in_flight", "\n".join(queues.in_flight(WAIT)) or "-")
    Steer(queues).run()


def test_thinker_killed_mid_campaign_loses_no_request_and_no_result(
    campaign: ThrowawayCampaign, start_server: LocalServerStarter, tmp_path: Path
) -> None:
    server = start_server(campaign.queues(methods=["add"]), [add])
    context = mp.get_context("spawn")
    blocked = context.Event()
    first = context.Process(
        target=run_thinker,
        args=(campaign.url, campaign.name, str(tmp_path), TASKS, TASKS // 2, blocked),
    )
    first.start()
    try:
        assert blocked.wait(WAIT), "the thinker never reached the result it is killed in"
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
    finally:  # killed above, or left blocked by a failure: never left running
        kill_if_running(first, timeout=WAIT)
    sent = _lines(tmp_path / "sent")
    [interrupted] = _lines(tmp_path / "interrupted")
    assert len(sent) == TASKS
    assert interrupted not in _lines(tmp_path / "processed")

    processed_before = set(_lines(tmp_path / "processed"))
    second = context.Process(
        target=run_thinker, args=(campaign.url, campaign.name, str(tmp_path), 0, None, blocked)
    )
    second.start()
    try:
        second.join(WAIT * 2)
        assert second.exitcode == 0, "the restarted thinker did not get every result"
    finally:
        kill_if_running(second, timeout=WAIT)
    processed = _lines(tmp_path / "processed")
    assert set(processed) == set(sent)  # no request lost, no result lost
    assert interrupted in processed
    # The restarted thinker knew what it still waited for: every task not processed before
    # (a result processed just before the kill may be listed too: its record was in flight)
    in_flight = set(_lines(tmp_path / "in_flight")) - {"-"}
    assert set(sent) - processed_before <= in_flight <= set(sent)
    assert interrupted in in_flight
    stop_task_servers(campaign.queues(methods=["add"]), server, timeout=WAIT)
