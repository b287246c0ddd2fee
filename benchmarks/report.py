"""Statistics and the Markdown tables written into docs/performance.md."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


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
