"""Draw a campaign from its results files: a utilisation timeline and a task Gantt chart.

``colmena report FILE [FILE ...]`` reads the JSON Lines written with ``--results-file``
(:mod:`colmena_services.record`) and writes one PNG with two panels over the campaign's
time (seconds since its first task was created):

* **Utilisation**: how many tasks were running at each moment, and how many were waiting
  (created, not yet started);
* **Tasks**: one bar per task, from the start to the end of its computation, on the lane of
  the worker slot it ran in (lanes are packed per worker host: a slot takes its next task
  once the previous one ended), coloured by method; failed tasks are hatched.

Needs matplotlib (``pip install "colmena-core[report]"``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .record import RecordError, read_records

__all__ = ["Span", "draw_report", "spans", "utilisation"]


@dataclass(frozen=True)
class Span:
    """The life of one task on the campaign's clock (seconds since its start)."""

    task_id: str
    method: str
    host: str
    created: float
    received: float
    started: float
    ended: float
    sent: float
    success: bool
    lane: int = 0


def spans(records: Sequence[dict[str, Any]]) -> tuple[float, list[Span]]:
    """The campaign's start (Unix time) and the spans of the tasks that ran, with lanes.

    Records without compute timestamps (a task that never ran) are left out.
    """
    timed = [r for r in records if r.get("time_compute_started") and r.get("time_compute_ended")]
    if not timed:
        return 0.0, []
    origin = min(r.get("time_created") or r["time_compute_started"] for r in timed)
    raw: list[Span] = []
    for r in timed:
        started = r["time_compute_started"] - origin
        ended = max(r["time_compute_ended"] - origin, started)
        received = r.get("time_input_received")
        sent = r.get("time_result_sent")
        created = r.get("time_created")
        raw.append(
            Span(
                task_id=str(r["task_id"]),
                method=str(r.get("method") or "?"),
                host=str(r.get("worker_host") or "?"),
                created=(created - origin) if created else started,
                received=min((received - origin) if received else started, started),
                started=started,
                ended=ended,
                sent=max((sent - origin) if sent else ended, ended),
                success=bool(r.get("success")),
            )
        )
    return origin, _pack(raw)


def _pack(raw: list[Span]) -> list[Span]:
    """Give each span the lowest lane of its host that is free when it starts."""
    packed: list[Span] = []
    offset = 0
    for host in sorted({s.host for s in raw}):
        free: list[tuple[float, int]] = []  # (time the lane frees up, lane)
        lanes = 0
        for span in sorted((s for s in raw if s.host == host), key=lambda s: s.started):
            if free and free[0][0] <= span.started:
                _, lane = heapq.heappop(free)
            else:
                lane, lanes = lanes, lanes + 1
            heapq.heappush(free, (span.ended, lane))
            packed.append(_with_lane(span, offset + lane))
        offset += lanes
    return packed


def _with_lane(span: Span, lane: int) -> Span:
    return Span(**{**span.__dict__, "lane": lane})


def utilisation(items: Sequence[Span], start: str, end: str) -> tuple[list[float], list[int]]:
    """A step function: how many spans are between their ``start`` and ``end`` fields."""
    events = sorted(
        [(getattr(s, start), 1) for s in items] + [(getattr(s, end), -1) for s in items],
        key=lambda e: (e[0], e[1]),
    )
    times, counts, count = [0.0], [0], 0
    for moment, change in events:
        count += change
        times.append(moment)
        counts.append(count)
    return times, counts


def draw_report(paths: Sequence[str | Path], output: str | Path, title: str = "") -> Path:
    """Draw the campaign recorded in ``paths`` into the PNG ``output``; return its path.

    Raises:
        RecordError: a file cannot be read, or no task in it ran
        ImportError: matplotlib is not installed
    """
    records = read_records(paths)
    _, items = spans(records)
    if not items:
        raise RecordError(
            f"No task with compute timestamps in {', '.join(str(p) for p in paths)}: "
            "nothing to draw"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    methods = sorted({s.method for s in items})
    palette = plt.get_cmap("tab10")
    colour = {m: palette(i % 10) for i, m in enumerate(methods)}
    lanes = max(s.lane for s in items) + 1
    finish = max(s.sent for s in items)
    # Tasks shorter than a pixel still show: at least 0.2 % of the campaign's length
    least = finish * 0.002

    height = 2.6 + min(0.22 * lanes, 7.0)
    figure, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(11, height),
        gridspec_kw={"height_ratios": [2.2, max(1.2, min(0.22 * lanes, 7.0))]},
        constrained_layout=True,
    )
    running_t, running = utilisation(items, "started", "ended")
    waiting_t, waiting = utilisation(items, "created", "started")
    top.fill_between(running_t, running, step="post", alpha=0.35, color="tab:blue")
    top.step(running_t, running, where="post", color="tab:blue", label="running")
    top.step(waiting_t, waiting, where="post", color="tab:orange", label="waiting to start")
    top.set_ylabel("tasks")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    failed = sum(not s.success for s in items)
    top.set_title(
        (title + "\n" if title else "")
        + f"{len(items)} tasks ({failed} failed) on {lanes} worker slots, "
        + f"{finish:.1f} s from the first task created to the last result sent",
        fontsize=10,
    )

    for span in items:
        bottom.barh(
            span.lane,
            max(span.ended - span.started, least),
            left=span.started,
            height=0.8,
            color=colour[span.method],
            hatch=None if span.success else "xxx",
            edgecolor="black" if not span.success else "white",
            linewidth=0.4,
        )
    bottom.set_ylabel("worker slot")
    bottom.set_xlabel("seconds since the first task was created")
    bottom.set_ylim(lanes - 0.4, -0.6)
    if lanes <= 30:
        bottom.set_yticks(range(lanes))
    bottom.grid(axis="x", alpha=0.3)
    handles = [Patch(color=colour[m], label=m) for m in methods]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="xxx", label="failed"))
    bottom.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8
    )
    bottom.set_xlim(0, finish * 1.01)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
