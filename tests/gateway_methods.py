"""JSON-friendly methods served by the task servers of the gateway tests and benchmark."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


def add(a: float, b: float) -> float:
    """Sum of two numbers."""
    return a + b


def echo(value: Any) -> Any:
    """The argument, unchanged."""
    return value


def fail(message: str) -> None:
    """Raise an error with ``message``."""
    raise ValueError(message)


def countdown(n: int) -> Generator[int, None, str]:
    """Yields n, ..., 1 (intermediate results when streamed), then returns ``liftoff``."""
    yield from range(n, 0, -1)
    return "liftoff"


def noop() -> None:
    """Nothing (for measuring overheads)."""


def blob(size: int) -> str:
    """A string of ``size`` characters (results that fill a client's socket)."""
    return "x" * size


def nested(depth: int) -> Any:
    """Lists nested ``depth`` deep: valid JSON that the gateway refuses to unfold."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


METHODS = [add, echo, fail, noop, blob, nested]


def square(x: float) -> float:
    """The square of a number."""
    return x * x


EXTRA = [square]
"""Methods of a second task server, whose arrival and departure the tests watch."""


def nap(seconds: float, value: Any = None) -> Any:
    """``value``, after ``seconds`` (keeps a worker busy, for the dashboard's utilisation)."""
    import time

    time.sleep(seconds)
    return value


CAMPAIGN = [*METHODS, nap]
"""Methods of the task server of the dashboard's campaign."""
