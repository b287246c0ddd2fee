"""Keep the terminal's Ctrl-C away from the processes an engine starts.

A terminal sends Ctrl-C (SIGINT) to every process of its foreground process group: the task
server, and also the worker processes, Parsl interchange and worker pools it started. Those
would die at once, with a traceback each, while the task server is still trying to finish
its in-flight tasks and to shut them down in order. The engines therefore start their
processes with SIGINT ignored (the disposition a child inherits, across ``exec`` too); the
task server stops them itself when it stops.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ignore_interrupts", "ignoring_interrupts"]


def ignore_interrupts() -> None:
    """Ignore SIGINT in this process (an initializer for worker processes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def ignoring_interrupts() -> Iterator[None]:
    """Ignore SIGINT while the block starts child processes, then restore the handler.

    Only the main thread may change signal handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
