"""The problem shared by the batch, streaming and interleaved examples.

We minimize a bumpy one-dimensional function on [-5, 5]. Evaluations take a little time, as
simulations would; new points are proposed from the best ones seen so far.
"""

from __future__ import annotations

import math
import random


def simulate(x: float) -> float:
    """The expensive function: a parabola with ripples, minimum near x = 0.3."""
    import math
    import time

    time.sleep(0.05)  # stands for the cost of a simulation
    return (x - 0.3) ** 2 + 0.1 * math.sin(8 * x) ** 2


def propose(database: list[tuple[float, float]], count: int, spread: float = 0.5) -> list[float]:
    """Propose ``count`` new points near the best ones in ``database``."""
    if not database:
        return [random.uniform(-5, 5) for _ in range(count)]
    best = sorted(database, key=lambda item: item[1])[:3]
    return [
        min(5.0, max(-5.0, random.choice(best)[0] + random.gauss(0, spread))) for _ in range(count)
    ]


def reprioritize_queue(database: list[tuple[float, float]], candidates: list[float]) -> list[int]:
    """Order candidate points by a nearest-neighbour estimate of their value (best first)."""

    def estimate(x: float) -> float:
        if not database:
            return 0.0
        nearest = min(database, key=lambda item: abs(item[0] - x))
        return nearest[1] + 0.5 * abs(nearest[0] - x)

    return sorted(range(len(candidates)), key=lambda i: estimate(candidates[i]))


def best_of(database: list[tuple[float, float]]) -> tuple[float, float]:
    """The best (x, f(x)) pair so far."""
    return min(database, key=lambda item: item[1]) if database else (math.nan, math.inf)
