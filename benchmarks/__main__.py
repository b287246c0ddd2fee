"""Run the benchmarks and write their tables into docs/performance.md.

python -m benchmarks [--quick] [--repeats 3] [--output docs/performance.md]
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

from benchmarks import engine
from benchmarks.report import table, verdict, write_section


def engine_section(results: dict[str, engine.Measurement], repeats: int) -> str:
    parsl, ours = results["parsl"], results["colmena"]
    parsl_big, ours_big = results["parsl-1mib"], results["colmena-1mib"]
    proxied = results["colmena-1mib-proxystore"]
    rows = [
        [m.name, f"{m.round_trip:.2f}", f"{m.round_trip_p99:.2f}", f"{m.rate:,.0f}"]
        for m in (parsl, ours, parsl_big, ours_big, proxied)
    ]
    ratio = ours.rate / parsl.rate
    extra = ours.round_trip - parsl.round_trip
    big_ratio = ours_big.rate / parsl_big.rate
    proxy_ratio = proxied.rate / ours.rate
    bars = [
        ["throughput, no-op: ours / Parsl alone", f"{ratio:.2f}×", "≥ 0.9×", verdict(ratio, 0.9)],
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
            f"with 2 workers; throughput with {engine.IN_FLIGHT} tasks in flight.",
            table(rows, ["configuration", "round trip, median (ms)", "p99 (ms)", "tasks/s"]),
            table(bars, ["bar", "measured", "target", "verdict"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("docs/performance.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("parsl", "colmena_core"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    results = engine.run(args.repeats, args.quick)
    section = engine_section(results, args.repeats)
    write_section(args.output, "engine", section)
    print(section)


if __name__ == "__main__":
    main()
