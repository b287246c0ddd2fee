"""The operator's commands: look at a running campaign and tidy it, from a terminal.

    colmena status                     task servers, methods, queues, tasks in flight, dead letters
    colmena results [--client-id ID]   follow the results of a client, or of the whole campaign
    colmena dead-letters [--requeue | --purge]
    colmena report FILE.jsonl          draw a campaign recorded with --results-file

They read the broker as a monitor does (copies of results, heartbeats, queue sizes) and take
nothing from the queues of thinkers or task servers, except ``dead-letters --requeue`` and
``--purge``, which empty the dead-letter queue.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, CliPositionalArg, SettingsConfigDict

from .common import ServiceConfigError, ServiceSettings, redacted


# ---------------------------------------------------------------------------- status
class StatusSettings(ServiceSettings):
    """Show the campaign: live task servers, methods, queue sizes, tasks in flight, dead letters."""

    wait: float = Field(
        default=6.0,
        ge=0,
        description="Seconds to listen for the heartbeats of task servers (they send one "
        "every 5 s by default)",
    )
    methods: str = Field(
        default="",
        description="More methods whose request queues to count, comma-separated (those served "
        "now are always counted)",
    )
    client_id: str = Field(default="", description="Also count the result queues of this client")
    topics: str = Field(default="default", description="Topics of --client-id, comma-separated")
    json_output: bool = Field(default=False, alias="json", description="Print JSON instead of text")

    def run(self) -> int:
        from colmena_core.queue.monitor import CampaignMonitor

        with CampaignMonitor(self.broker_url, self.campaign) as monitor:
            if not monitor.wait_connected(self.connect_timeout):
                raise ConnectionError(f"Could not watch the campaign: {monitor.last_error}")
            time.sleep(self.wait)  # heartbeats are not kept by the broker: listen for them
            servers = monitor.servers()
            methods = monitor.methods()
            wanted = sorted(set(methods) | {m.strip() for m in self.methods.split(",") if m})
            clients = None
            if self.client_id:
                clients = {self.client_id: [t.strip() for t in self.topics.split(",") if t]}
            depths = monitor.queue_depths(wanted, clients, timeout=self.connect_timeout)
        names = _names(self.campaign)
        dead = depths.get(names.dead_letter_queue, 0)
        status = {
            "campaign": self.campaign,
            "broker": redacted(self.broker_url),
            "servers": [server.to_dict() for server in servers],
            "methods": methods,
            "queues": depths,
            "in_flight": sum(server.in_flight or 0 for server in servers),
            "capacity": sum(server.capacity or 0 for server in servers),
            "dead_letters": dead,
        }
        if self.json_output:
            print(json.dumps(status, indent=2, default=str))
            return 0
        print(f"Campaign {self.campaign!r} on {status['broker']}")
        print(f"Task servers: {len(servers)}" + ("" if servers else " (none alive)"))
        for server in servers:
            print(
                f"  {server.server_id} on {server.hostname or '?'}: "
                f"{server.in_flight or 0} tasks in flight on {server.capacity or '?'} workers; "
                f"serves {', '.join(server.methods) or 'nothing'}"
            )
        print("Methods served: " + (", ".join(methods) or "none"))
        print("Queues (messages waiting):")
        for queue, depth in sorted(depths.items()):
            print(f"  {queue:<60} {depth:>8}")
        print(f"In flight: {status['in_flight']} tasks on {status['capacity']} workers")
        print(f"Dead letters: {dead}" + (" (see: colmena dead-letters)" if dead else ""))
        return 0


def _names(campaign: str) -> Any:
    from colmena_core.queue.rabbitmq import CampaignNames

    return CampaignNames(campaign)


# ---------------------------------------------------------------------------- results
class ResultsSettings(ServiceSettings):
    """Follow the results of the campaign as they arrive (copies: nothing is taken from anyone)."""

    client_id: str = Field(
        default="", description="Only the results for this client (default: every client)"
    )
    count: int = Field(default=0, ge=0, description="Stop after this many results (0: never)")
    idle_timeout: float = Field(
        default=0, ge=0, description="Stop after this many seconds without a result (0: never)"
    )
    json_output: bool = Field(
        default=False, alias="json", description="Print each result as a JSON line"
    )

    def run(self) -> int:
        from colmena_core.queue.monitor import CampaignMonitor, ResultSummary

        done = threading.Event()
        lock = threading.Lock()
        shown = 0
        last = time.monotonic()

        def show(summary: ResultSummary) -> None:
            nonlocal shown, last
            if self.client_id and summary.client_id != self.client_id:
                return
            with lock:
                if done.is_set():
                    return
                line = (
                    json.dumps(summary.to_dict(), default=str)
                    if self.json_output
                    else describe(summary)
                )
                print(line, flush=True)
                shown += 1
                last = time.monotonic()
                if self.count and shown >= self.count:
                    done.set()

        with CampaignMonitor(self.broker_url, self.campaign) as monitor:
            if not monitor.wait_connected(self.connect_timeout):
                raise ConnectionError(f"Could not watch the campaign: {monitor.last_error}")
            whose = f"client {self.client_id!r}" if self.client_id else "every client"
            print(
                f"Following the results of {whose} in campaign {self.campaign!r} (Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )
            unsubscribe = monitor.subscribe(show)
            try:
                while not done.wait(0.2):
                    if self.idle_timeout and time.monotonic() - last > self.idle_timeout:
                        break
            except KeyboardInterrupt:
                pass
            finally:
                unsubscribe()
                done.set()
        return 0


def describe(summary: Any) -> str:
    """One line for a result: when, for whom, what, how it went."""
    timings = summary.timings
    moment = timings.get("time_result_sent") or timings.get("time_compute_ended") or time.time()
    clock = datetime.fromtimestamp(moment).strftime("%H:%M:%S")
    if summary.success:
        if summary.displayable:
            value = json.dumps(summary.value, default=str)
            outcome = "ok " + (value if len(value) <= 60 else value[:57] + "...")
        else:
            outcome = f"ok ({summary.value_format} value)"
    elif summary.success is None:
        outcome = "no outcome"
    else:
        outcome = f"FAILED {summary.failure or ''}".strip()
    running = timings.get("time_running")
    took = f", ran {running:.3g} s" if isinstance(running, float) else ""
    return (
        f"{clock} {summary.client_id or '?'}/{summary.topic} {summary.method}: {outcome} "
        f"(task {summary.task_id[:8]}{took})"
    )


# ----------------------------------------------------------------------- dead letters
class DeadLettersSettings(ServiceSettings):
    """List the campaign's dead letters (messages it could not deliver); requeue or purge them."""

    requeue: bool = Field(
        default=False, description="Send every dead letter back to where it was going"
    )
    purge: bool = Field(default=False, description="Delete every dead letter")
    task_ids: str = Field(
        default="",
        description="Requeue or purge only the dead letters of these tasks, comma-separated",
    )
    limit: int = Field(default=100, ge=1, description="Most dead letters to list")
    json_output: bool = Field(default=False, alias="json", description="Print JSON instead of text")

    @model_validator(mode="after")
    def _one_action(self) -> DeadLettersSettings:
        if self.requeue and self.purge:
            raise ValueError("give --requeue or --purge, not both")
        return self

    def run(self) -> int:
        from colmena_core.queue import rabbitmq

        if self.requeue or self.purge:
            name = "requeue_dead_letters" if self.requeue else "purge_dead_letters"
            action = getattr(rabbitmq, name, None)
            if action is None:
                raise ServiceConfigError(
                    f"This version of colmena_core cannot {name.split('_')[0]} dead letters"
                )
            chosen = [t.strip() for t in self.task_ids.split(",") if t.strip()] or None
            count = action(
                self.broker_url, self.campaign, task_ids=chosen, timeout=self.connect_timeout
            )
            verb = "Requeued" if self.requeue else "Purged"
            print(f"{verb} {_count_of(count)} dead letters of campaign {self.campaign!r}")
            if self.requeue:
                left = rabbitmq.list_dead_letters(
                    self.broker_url, self.campaign, limit=1, timeout=self.connect_timeout
                )
                if left:
                    print("Those that remain cannot be decoded: inspect them, or --purge them.")
            return 0
        letters = rabbitmq.list_dead_letters(
            self.broker_url, self.campaign, limit=self.limit, timeout=self.connect_timeout
        )
        if self.json_output:
            rows = [
                {
                    "task_id": letter.task_id,
                    "method": letter.method,
                    "reason": letter.reason,
                    "queue": letter.queue,
                    "routing_keys": letter.routing_keys,
                    "time": letter.time.isoformat() if letter.time else None,
                    "error": letter.error,
                    "size": len(letter.body),
                }
                for letter in letters
            ]
            print(json.dumps(rows, indent=2))
            return 0
        if not letters:
            print(f"No dead letters in campaign {self.campaign!r}")
            return 0
        print(f"{len(letters)} dead letters in campaign {self.campaign!r} (oldest first):")
        for letter in letters:
            when = letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else "?"
            what = f"task {letter.task_id} ({letter.method})" if letter.task_id else "undecodable"
            where = letter.queue or ",".join(letter.routing_keys) or "?"
            print(f"  {when} {what}: {letter.reason} from {where}")
            if letter.error:
                print(f"      {letter.error}")
        print("Requeue them with 'colmena dead-letters --requeue', delete with '--purge'.")
        return 0


def _count_of(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return str(len(value))
    return "the"


# ---------------------------------------------------------------------------- report
class ReportSettings(BaseSettings):
    """Draw a campaign's utilisation timeline and task Gantt chart (PNG) from its results files."""

    model_config = SettingsConfigDict(cli_kebab_case=True, cli_implicit_flags=True)

    files: CliPositionalArg[list[Path]] = Field(
        description="Results files written with --results-file (JSON Lines)"
    )
    output: Path | None = Field(
        default=None, description="PNG to write (default: the first file with .png)"
    )
    title: str = Field(default="", description="Title of the chart")

    def run(self) -> int:
        from .record import RecordError

        output = self.output or self.files[0].with_suffix(".png")
        try:
            from .report import draw_report

            written = draw_report(self.files, output, self.title)
        except ImportError:
            raise ServiceConfigError(
                "colmena report needs matplotlib: pip install 'colmena-core[report]'"
            ) from None
        except RecordError as exc:
            raise ServiceConfigError(str(exc)) from None
        print(f"Wrote {written}")
        return 0
