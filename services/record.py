"""The campaign record: the results a service handled, one JSON object per line.

Every service takes ``--results-file FILE`` (``COLMENA_RESULTS_FILE``): a task server
appends each result it sends, a thinker each result it reads, the gateway each result for
its API clients (from the copies it watches), the demo each result its thinker reads. A line holds what a result says about its task (method, outcome, worker
host, the timestamps of its life), never its inputs or value, plus who recorded it.
``colmena report FILE`` draws the campaign from such files (:mod:`colmena_services.report`).

The file is appended to, so several runs (or several services given the same file) add up;
lines are flushed one by one, so a crash loses at most the line being written and a
reader may follow the file as it grows.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from colmena_core.models import Result
    from colmena_core.queue.monitor import ResultSummary

__all__ = ["RECORD_TIMES", "ResultsFile", "read_records", "result_record", "summary_record"]

logger = logging.getLogger(__name__)

RECORD_TIMES = (
    "time_created",
    "time_input_received",
    "time_compute_started",
    "time_compute_ended",
    "time_result_sent",
    "time_result_received",
    "time_running",
)
"""The timestamps (Unix times) and the run time (seconds) of a result kept in the file."""


class RecordError(Exception):
    """A results file cannot be written or read; the message says why."""


def result_record(result: Result, **context: Any) -> dict[str, Any]:
    """One line of a results file: what ``result`` says about its task, without payloads."""
    record: dict[str, Any] = {
        "task_id": result.task_id,
        "method": result.method,
        "topic": result.topic,
        "success": result.success,
        "failure": result.failure_info.exception if result.failure_info else None,
        "retries": result.retries,
        "worker_host": result.worker_info.hostname if result.worker_info else None,
    }
    for name in RECORD_TIMES:
        value = getattr(result, name, None)
        record[name] = value if isinstance(value, int | float) and math.isfinite(value) else None
    record.update(context)
    return record


def summary_record(summary: ResultSummary, **context: Any) -> dict[str, Any]:
    """One line of a results file from the summary of a result a monitor saw."""
    record: dict[str, Any] = {
        "task_id": summary.task_id,
        "method": summary.method,
        "topic": summary.topic,
        "success": summary.success,
        "failure": summary.failure,
        "retries": None,
        "worker_host": None,
        "client_id": summary.client_id,
    }
    for name in RECORD_TIMES:
        record[name] = summary.timings.get(name)
    record.update(context)
    return record


class ResultsFile:
    """Appends results to a JSON Lines file as they are handled (thread-safe).

    Args:
        path: The file (and its folders) are created if missing, appended to otherwise
        context: Added to every line, e.g. ``role="thinker", client_id="thinker-1"``
    Raises:
        RecordError: the file cannot be opened for writing
    """

    def __init__(self, path: str | Path, **context: Any) -> None:
        self.path = Path(path)
        self.context = context
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise RecordError(
                f"Cannot write the results file {str(path)!r}: {exc.strerror or exc}"
            ) from None
        self._lock = threading.Lock()
        self.written = 0
        logger.info("Recording the results handled in %s", self.path)

    def record(self, result: Result) -> None:
        """Append one result (ignored once the file is closed)."""
        self._write(result_record(result, **self.context))

    def record_summary(self, summary: ResultSummary) -> None:
        """Append the summary of a result (ignored once the file is closed)."""
        self._write(summary_record(summary, **self.context))

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, default=str)
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()
            self.written += 1

    def close(self) -> None:
        """Close the file (once) and log how many results it holds."""
        with self._lock:
            if self._file.closed:
                return
            self._file.close()
        logger.debug("Wrote %d results to %s", self.written, self.path)

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The results recorded in ``paths``, one per task (in order of their creation).

    A task recorded several times (by its task server and by its thinker, or again after a
    redelivery) is merged into one record: the timestamps known to any of its lines.

    Raises:
        RecordError: a file is missing or holds a line that is not a result record
    """
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise RecordError(f"Cannot read {str(path)!r}: {exc.strerror or exc}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                task_id = str(record["task_id"])
            except (ValueError, KeyError, TypeError):
                if number == len(lines):  # a line being written when the file was read
                    continue
                raise RecordError(f"{path}:{number} is not a result record") from None
            known = merged.setdefault(task_id, {})
            for key, value in record.items():
                if value is not None or key not in known:
                    known[key] = value
    return sorted(merged.values(), key=lambda r: (r.get("time_created") or math.inf, r["task_id"]))
