"""Statistics and the Markdown tables written into docs/performance.md."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Measurement:
    """Repeated measurements of one configuration."""

    name: str
    round_trip_ms: list[float] = field(default_factory=list)
    round_trip_p99_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    machine_cpu_ms: list[float] = field(default_factory=list)
    """CPU time of the whole machine (every process, broker included) per task, pipelined"""
    notes: str = ""

    @property
    def round_trip(self) -> float:
        return statistics.median(self.round_trip_ms) if self.round_trip_ms else float("nan")

    @property
    def round_trip_p99(self) -> float:
        return statistics.median(self.round_trip_p99_ms) if self.round_trip_p99_ms else float("nan")

    @property
    def rate(self) -> float:
        return statistics.median(self.throughput) if self.throughput else float("nan")

    @property
    def machine_cpu(self) -> float:
        return statistics.median(self.machine_cpu_ms) if self.machine_cpu_ms else float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (not idle or waiting).

    The difference over a run, divided by its tasks, is the CPU each task cost across all
    processes, the broker and Parsl's interchange and workers included: on a machine whose
    cores are saturated, throughput is the cores divided by that cost.
    """
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class MachineCpu:
    """Measures :func:`machine_busy_seconds` per task over a block."""

    def __init__(self, result: Measurement, tasks: int) -> None:
        self.result = result
        self.tasks = tasks

    def __enter__(self) -> MachineCpu:
        self.start = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            busy = machine_busy_seconds() - self.start
            self.result.machine_cpu_ms.append(1000 * busy / self.tasks)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, bar: float, higher_is_better: bool = True) -> str:
    """'meets' or 'misses' a bar."""
    ok = value >= bar if higher_is_better else value <= bar
    return "meets" if ok else "**misses**"


def write_section(path: Path, section: str, content: str) -> None:
    """Replace the text between the markers of ``section`` in ``path`` (append if absent)."""
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    block = f"{start}\n{content.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def cpu_ceiling(ours: Measurement, baseline: Measurement) -> float:
    """The throughput ratio ours / baseline that the machine's cores allow at most.

    With every core busy, throughput is the cores divided by the CPU one task costs across
    the machine, so the ratio cannot exceed baseline CPU / our CPU per task.
    """
    return baseline.machine_cpu / ours.machine_cpu


def cpu_cell(m: Measurement) -> str:
    """The machine CPU per task of a measurement, for a table."""
    return "—" if not m.machine_cpu_ms else f"{m.machine_cpu:.2f}"
