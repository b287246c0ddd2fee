"""The one back-off rule of the project: every loop that retries a connection uses it.

A :class:`Backoff` hands out waits that start short and double up to a ceiling; it is
reset after a success. It sleeps in threads (:meth:`Backoff.sleep`, which a stop event
cuts short) and in asyncio loops (:meth:`Backoff.wait`). This module must not know what is
being retried.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

__all__ = ["DEFAULT_FIRST_DELAY", "DEFAULT_MAX_DELAY", "Backoff"]

DEFAULT_FIRST_DELAY = 0.1
"""Seconds of the first wait after a failure."""

DEFAULT_MAX_DELAY = 5.0
"""Longest wait, in seconds, between two attempts."""


@dataclass
class Backoff:
    """Waits between the attempts of one retry loop (not thread-safe: one per loop).

    Args:
        first: Seconds of the first wait
        limit: Longest wait, in seconds
        factor: How much each wait grows over the previous one
    """

    first: float = DEFAULT_FIRST_DELAY
    limit: float = DEFAULT_MAX_DELAY
    factor: float = 2.0
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.limit or self.factor < 1:
            raise ValueError("A back-off needs 0 < first <= limit and factor >= 1")
        self._next = self.first

    def reset(self) -> None:
        """Start again from the first wait (after a success)."""
        self._next = self.first

    def next_delay(self) -> float:
        """The wait before the next attempt; the one after it is longer."""
        delay = self._next
        self._next = min(delay * self.factor, self.limit)
        return delay

    def sleep(self, stop: threading.Event | None = None, at_most: float | None = None) -> bool:
        """Wait before the next attempt, in a thread.

        Args:
            stop: An event that ends the wait early when set
            at_most: Seconds to wait at most (e.g. what remains of a deadline)
        Returns:
            Whether ``stop`` was set (``False`` without one)
        """
        delay = self.next_delay()
        if at_most is not None:
            delay = max(min(delay, at_most), 0.0)
        if stop is not None:
            return stop.wait(delay)
        time.sleep(delay)
        return False

    async def wait(self) -> None:
        """Wait before the next attempt, in an asyncio loop."""
        await asyncio.sleep(self.next_delay())
