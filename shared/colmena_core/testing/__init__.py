"""Helpers for testing Colmena applications and transports.

Finding or starting services (:mod:`.brokers`, :mod:`.redis`) and running task servers in
tests (:mod:`.task_servers`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["free_port", "wait_until"]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T],
    what: str = "condition",
    timeout: float = 60.0,
    interval: float = 0.05,
) -> T:
    """Check an observable condition until it holds; fail after ``timeout`` seconds.

    For state that offers no event to wait on (a health endpoint, a queue depth).

    Returns:
        The first true value of ``predicate``
    Raises:
        TimeoutError: the condition did not hold in time
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        pause.wait(interval)
