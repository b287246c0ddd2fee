"""Queues built on Python's multiprocessing pipes: one thinker and one task server on a host.

Every pipe end is guarded by a process-shared lock, so many agent threads (or many task
server callback threads) can write whole messages concurrently without interleaving bytes,
whatever their size.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Collection
from multiprocessing.connection import Connection
from typing import Any

from colmena_core.exceptions import KillSignalException, TimeoutException
from colmena_core.models import Result, SerializationMethod
from colmena_core.queue.base import ColmenaQueues

__all__ = ["PipeQueues"]

_KILL = b""
"""Zero-length message: the kill signal (a real message is never empty)."""


class _Channel:
    """One pipe with a lock for each end; picklable into a child process at spawn."""

    def __init__(self, context: Any) -> None:
        self.reader, self.writer = context.Pipe(duplex=False)
        self.read_lock = context.Lock()
        self.write_lock = context.Lock()

    def send(self, message: bytes) -> None:
        with self.write_lock:
            self.writer.send_bytes(message)

    def receive(self, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        # A multiprocessing lock treats a negative timeout as zero, so "forever" is None
        if not self.read_lock.acquire(timeout=None if timeout is None else max(timeout, 0.0)):
            raise TimeoutException("Timed out waiting for another reader of the pipe")
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.reader.poll(remaining):
                raise TimeoutException(f"Nothing arrived within {timeout} s")
            return self.reader.recv_bytes()
        finally:
            self.read_lock.release()

    def drain(self) -> int:
        count = 0
        with self.read_lock:
            while self.reader.poll(0):
                self.reader.recv_bytes()
                count += 1
        return count

    @property
    def connections(self) -> tuple[Connection, Connection]:
        return self.reader, self.writer


class PipeQueues(ColmenaQueues):
    """Queues using Python's implementation of multiprocessing Pipes.

    Suited to one thinker and one task server on the same host. Messages have no size
    limit beyond memory.

    Args:
        topics: Names of topics that are known for this queue
        serialization_method: Method used to serialize task inputs and results
        keep_inputs: Whether to return task inputs with the result object
        proxystore_name: Name of a registered ProxyStore store, or a mapping of topic to name
        proxystore_threshold: Size in bytes above which objects travel by proxy, or a
            mapping of topic to threshold
    """

    def __init__(
        self,
        topics: Collection[str] = (),
        serialization_method: str | SerializationMethod = SerializationMethod.PICKLE,
        keep_inputs: bool = True,
        proxystore_name: str | dict[str, str] | None = None,
        proxystore_threshold: int | dict[str, int] | None = None,
    ) -> None:
        super().__init__(
            topics, serialization_method, keep_inputs, proxystore_name, proxystore_threshold
        )
        # Locks made by the "spawn" context may be shared with children of any start method;
        # those of the "fork" context (Linux default before 3.14) cannot go to spawned ones.
        context = mp.get_context("spawn")
        self._requests = _Channel(context)
        self._results = {topic: _Channel(context) for topic in self.topics}

    def _send_request(self, message: bytes, method: str | None, topic: str) -> None:
        self._requests.send(message)

    def _get_request(self, timeout: float | None) -> bytes:
        message = self._requests.receive(timeout)
        if message == _KILL:
            raise KillSignalException()
        return message

    def _send_result(self, message: bytes, result: Result) -> None:
        self._results[result.topic].send(message)

    def _get_result(self, topic: str, timeout: float | None) -> bytes:
        return self._results[topic].receive(timeout)

    def _send_kill_signal(self) -> None:
        self._requests.send(_KILL)

    def flush(self) -> None:
        """Remove all existing requests and results from the queues."""
        self._requests.drain()
        for channel in self._results.values():
            channel.drain()
