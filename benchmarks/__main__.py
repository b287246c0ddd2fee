"""Run the benchmarks and write their tables into docs/performance.md.

python -m benchmarks [--suite all|engine|rabbitmq|gateway|signing] [--quick] [--repeats 3]
                     [--output docs/performance.md]

A suite is a module of this package with ``run(repeats, quick)``, which measures and returns
its results, and ``section(results)`` (or ``section(results, repeats)``), which turns them
into Markdown, written between the markers ``<!-- bench:<suite>:start -->`` and
``<!-- bench:<suite>:end -->`` of the output. Suites are imported only when they run; one
whose module is absent is skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.report import (
    Measurement,
    cpu_ceiling,
    cpu_cell,
    parts_cell,
    table,
    verdict,
    write_section,
)

SUITES: dict[str, str] = {
    "engine": "benchmarks.engine",
    "rabbitmq": "benchmarks.rabbitmq",
    "gateway": "benchmarks.gateway",
    "signing": "benchmarks.signing",
}
"""Suite name (also the name of its markers in the output) -> module, in the order they run."""


def engine_section(results: dict[str, Measurement], repeats: int) -> str:
    """The Markdown of the engine suite (:mod:`benchmarks.engine`)."""
    from benchmarks.engine import IN_FLIGHT, STORE_PARENT

    parsl, ours = results["parsl"], results["colmena"]
    parsl_big, ours_big = results["parsl-1mib"], results["colmena-1mib"]
    proxied = results["colmena-1mib-proxystore"]
    rows = [
        [
            m.name,
            f"{m.round_trip:.2f}",
            f"{m.round_trip_p99:.2f}",
            f"{m.rate:,.0f}",
            cpu_cell(m),
            parts_cell(m, "Parsl's interchange and workers"),
        ]
        for m in (parsl, ours, parsl_big, ours_big, proxied)
    ]
    ratio = ours.rate / parsl.rate
    extra = ours.round_trip - parsl.round_trip
    big_ratio = ours_big.rate / parsl_big.rate
    proxy_ratio = proxied.rate / ours.rate
    bars = [
        [
            "throughput, no-op: ours / Parsl alone",
            f"{ratio:.2f}× (CPU allows {cpu_ceiling(ours, parsl):.2f}×)",
            "≥ 0.9×",
            verdict(ratio, 0.9),
        ],
        [
            "median round trip: ours − Parsl alone",
            f"{extra:+.2f} ms",
            "≤ +1 ms",
            verdict(extra, 1.0, higher_is_better=False),
        ],
        [
            "throughput, 1 MiB: ours / Parsl alone",
            f"{big_ratio:.2f}×",
            "≥ 1.0×",
            verdict(big_ratio, 1.0),
        ],
        [
            "throughput, 1 MiB with ProxyStore / ours no-op",
            f"{proxy_ratio:.2f}×",
            "≥ 0.5×",
            verdict(proxy_ratio, 0.5),
        ],
    ]
    return "\n\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with Python "
            f"{platform.python_version()}; medians of {repeats} runs; HighThroughputExecutor "
            f"with 2 workers; throughput with {IN_FLIGHT} tasks in flight. The last column "
            "is the CPU time per task of every process of the run (Parsl's interchange and "
            "workers included) in the throughput run, then its split by process (the client "
            "that submits to Parsl, or the thinker and the task server that runs Parsl's "
            'DataFlowKernel); "CPU allows" is the ratio of those '
            "costs, the most a machine whose cores are all busy can give. ProxyStore uses a "
            f"FileConnector in {STORE_PARENT or 'the temporary directory'}.",
            table(
                rows,
                [
                    "configuration",
                    "round trip, median (ms)",
                    "p99 (ms)",
                    "tasks/s",
                    "CPU per task, all (ms)",
                    "CPU per task by process (ms)",
                ],
            ),
            table(bars, ["bar", "measured", "target", "verdict"]),
        ]
    )


def _suite(name: str) -> tuple[Callable[[int, bool], Any], Callable[..., str]] | None:
    """The ``run`` and ``section`` functions of a suite, or ``None`` if its module is absent."""
    module_name = SUITES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the suite is there but something it needs is not
        return None
    section = engine_section if name == "engine" else module.section
    return module.run, section


def _render(section: Callable[..., str], results: Any, repeats: int) -> str:
    """Call ``section(results)``, passing ``repeats`` too if it takes it."""
    if "repeats" in inspect.signature(section).parameters:
        return section(results, repeats=repeats)
    return section(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        choices=["all", *SUITES],
        default="all",
        help="which suite to run (default: all of them)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer tasks, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("parsl", "colmena_core", "pika", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    names = list(SUITES) if args.suite == "all" else [args.suite]
    for name in names:
        suite = _suite(name)
        if suite is None:
            print(f"Skipping the {name} benchmarks: module {SUITES[name]} is not there")
            continue
        run, section_of = suite
        section = _render(section_of, run(args.repeats, args.quick), args.repeats)
        write_section(args.output, name, section)
        print(section)


if __name__ == "__main__":
    main()
