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
    run_cpu_ms: list[float] = field(default_factory=list)
    """CPU time per task of every process of the run (broker and Parsl included), pipelined"""
    part_cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    """The share of named processes (the thinker, the task server, the broker) in it"""
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
    def run_cpu(self) -> float:
        return statistics.median(self.run_cpu_ms) if self.run_cpu_ms else float("nan")

    def part_cpu(self, part: str) -> float:
        """Median CPU time per task of one named process (see :class:`RunCpu`)."""
        values = self.part_cpu_ms.get(part)
        return statistics.median(values) if values else float("nan")


RUN_MARKER = "colmena-bench-"
"""Start of the names of the benchmarks' run directories: processes whose command line names
one (Parsl's worker pools, which leave the process tree) belong to the run."""


def _broker_pid(port: int) -> int | None:
    """The process listening on ``port`` on this machine, if it can be seen."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return None
    for connection in connections:
        address = connection.laddr
        if connection.status == psutil.CONN_LISTEN and address and address.port == port:
            return connection.pid
    return None


def _run_processes(broker_port: int | None) -> list[psutil.Process]:
    me = psutil.Process()
    processes = {me.pid: me}
    processes.update((p.pid, p) for p in me.children(recursive=True))
    for process in psutil.process_iter(["cmdline"]):
        if any(RUN_MARKER in part for part in process.info["cmdline"] or ()):
            processes[process.pid] = process
            processes.update((p.pid, p) for p in process.children(recursive=True))
    if broker_port is not None:
        pid = _broker_pid(broker_port)
        if pid is not None:
            processes[pid] = psutil.Process(pid)
    return list(processes.values())


def run_cpu_seconds(broker_port: int | None = None) -> dict[tuple[int, float], float]:
    """CPU seconds used so far by each process taking part in a benchmark run.

    Those are this process and its descendants, the processes whose command line names a
    run directory (:data:`RUN_MARKER`) with their descendants, and the broker listening on
    ``broker_port`` if given. Other work on a shared machine is not counted. Keys are
    (pid, start time), so a reused pid is not mistaken for the same process.
    """
    seconds = {}
    for process in _run_processes(broker_port):
        try:
            with process.oneshot():
                times = process.cpu_times()
                seconds[(process.pid, process.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return seconds


def cpu_seconds_between(
    before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]
) -> float:
    """CPU seconds the run's processes used between two :func:`run_cpu_seconds` readings."""
    return sum(total - before.get(key, 0.0) for key, total in after.items())


class RunCpu:
    """Records the CPU per task of every process of the run over a block (see
    :func:`run_cpu_seconds`): on a machine whose cores are all busy, throughput is the cores
    divided by that cost."""

    def __init__(
        self,
        result: Measurement,
        tasks: int,
        broker_port: int | None = None,
        parts: dict[str, int | None] | None = None,
    ) -> None:
        self.result = result
        self.tasks = tasks
        self.broker_port = broker_port
        self.parts = dict(parts or {})
        """Processes whose own share to record, by name (pid); the broker's is added"""
        if broker_port is not None:
            self.parts.setdefault("broker", _broker_pid(broker_port))

    def __enter__(self) -> RunCpu:
        self.start = run_cpu_seconds(self.broker_port)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            end = run_cpu_seconds(self.broker_port)
            used = cpu_seconds_between(self.start, end)
            self.result.run_cpu_ms.append(1000 * used / self.tasks)
            for name, pid in self.parts.items():
                if pid is None:
                    continue
                share = sum(
                    total - self.start.get(key, 0.0) for key, total in end.items() if key[0] == pid
                )
                self.result.part_cpu_ms.setdefault(name, []).append(1000 * share / self.tasks)


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

    With every core busy, throughput is the cores divided by the CPU one task costs in all
    the processes of the run, so the ratio cannot exceed baseline CPU / our CPU per task.
    """
    return baseline.run_cpu / ours.run_cpu


def cpu_cell(m: Measurement) -> str:
    """The CPU per task of every process of a run, for a table."""
    return "—" if not m.run_cpu_ms else f"{m.run_cpu:.2f}"


def parts_cell(m: Measurement, rest: str = "the rest") -> str:
    """The CPU per task of the named processes of a run and of the others, for a table."""
    if not m.part_cpu_ms or not m.run_cpu_ms:
        return "—"
    parts = {name: m.part_cpu(name) for name in m.part_cpu_ms}
    cells = [f"{name} {value:.2f}" for name, value in parts.items()]
    cells.append(f"{rest} {m.run_cpu - sum(parts.values()):.2f}")
    return " / ".join(cells)
