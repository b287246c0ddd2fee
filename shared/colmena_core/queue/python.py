"""Queues built on operating-system pipes: one thinker and one task server on a host.

Each channel (the requests, and the results of each topic) is a named pipe (FIFO) in a
private temporary directory. Because a channel is known by its path, a :class:`PipeQueues`
pickles into any process on the host: a child made by ``fork``, ``spawn`` or
``forkserver``, a :class:`multiprocessing.Pool` worker (``pool.apply(fn, (queues,))``,
``pool.apply(queues.get_task)``), or bytes from :func:`pickle.dumps` loaded elsewhere. Each
process opens the pipes itself the first time it uses them.

Messages are framed by their length. Writers take a lock for the whole message, so many
threads of many processes may send large messages at once without interleaving bytes: a
lock per process for its threads, and an ``flock`` on a file next to the pipe between
processes. Readers do the same with a second lock, so that one reader takes a whole message.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Collection
from typing import Any

from colmena_core.exceptions import KillSignalException, TimeoutException
from colmena_core.models import Result, SerializationMethod
from colmena_core.queue.base import ColmenaQueues

__all__ = ["PipeQueues"]

_KILL = b""
"""Zero-length message: the kill signal (a real message is never empty)."""

_HEADER = struct.Struct("!Q")
"""Length of the message that follows, as an unsigned 64-bit integer."""

_reopen_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _reopen_lock
    _reopen_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_reset_after_fork)


class _Handles:
    """The descriptors and thread locks one process uses for one channel."""

    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        # Read-write: opening never blocks and a write never fails for want of a reader
        self.pipe = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.write_file = os.open(f"{path}.write-lock", os.O_RDWR | os.O_CLOEXEC)
        self.read_file = os.open(f"{path}.read-lock", os.O_RDWR | os.O_CLOEXEC)
        self.write_lock = threading.Lock()
        self.read_lock = threading.Lock()
        # Used under read_lock only (a poll object refuses concurrent polls)
        self.poller = select.poll()
        self.poller.register(self.pipe, select.POLLIN)

    def close(self) -> None:
        for fd in (self.pipe, self.write_file, self.read_file):
            try:
                os.close(fd)
            except OSError:
                pass


class _Flocked:
    """Holds an exclusive ``flock`` on ``fd`` (it excludes other open files, not threads).

    A class rather than a generator-based context manager: it is taken twice per message.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def _readable(handles: _Handles, timeout: float | None) -> bool:
    return bool(handles.poller.poll(None if timeout is None else timeout * 1000))


def _read_exactly(fd: int, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        chunk = os.read(fd, min(size - done, 1 << 20))
        if not chunk:
            raise EOFError("The pipe closed in the middle of a message")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    return bytes(buffer)


class _Channel:
    """One named pipe and its two lock files, opened lazily in each process that uses it.

    Only the path is pickled; a process that unpickles the channel, or inherits it through
    ``fork``, opens its own descriptors and makes its own thread locks.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.mkfifo(path, 0o600)
        for suffix in (".write-lock", ".read-lock"):
            os.close(os.open(f"{path}{suffix}", os.O_CREAT | os.O_WRONLY, 0o600))
        self._handles: _Handles | None = None
        self._finalizer: Any = None
        # The creator keeps the pipe open, so what is in it outlives the processes that wrote
        self._open()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._handles = None
        self._finalizer = None

    def _open(self) -> _Handles:
        handles = self._handles
        if handles is not None and handles.pid == os.getpid():
            return handles
        with _reopen_lock:
            handles = self._handles
            if handles is not None and handles.pid == os.getpid():
                return handles
            if handles is not None:  # inherited through fork: its locks are not ours
                handles.close()
            try:
                handles = _Handles(self.path)
            except FileNotFoundError as exc:
                raise RuntimeError(
                    f"The pipe {self.path} is gone: the process that created the PipeQueues "
                    "has exited or closed them"
                ) from exc
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, handles.close)
            self._handles = handles
            return handles

    def send(self, message: bytes) -> None:
        handles = self._open()
        with handles.write_lock, _Flocked(handles.write_file):
            for part in (_HEADER.pack(len(message)), message):
                data = memoryview(part)
                while data:
                    data = data[os.write(handles.pipe, data) :]

    def receive(self, timeout: float | None) -> bytes:
        handles = self._open()
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        # A thread lock treats a negative timeout as "forever", so "forever" is -1 only for None
        wait = remaining()
        if not handles.read_lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutException("Timed out waiting for another reader of the pipe")
        try:
            while True:
                if not _readable(handles, remaining()):
                    raise TimeoutException(f"Nothing arrived within {timeout} s")
                with _Flocked(handles.read_file):
                    # Another process may have taken the message while we waited for the lock
                    if not _readable(handles, 0):
                        continue
                    (size,) = _HEADER.unpack(_read_exactly(handles.pipe, _HEADER.size))
                    return _read_exactly(handles.pipe, size) if size else _KILL
        finally:
            handles.read_lock.release()

    def drain(self) -> int:
        handles = self._open()
        count = 0
        with handles.read_lock, _Flocked(handles.read_file):
            while _readable(handles, 0):
                (size,) = _HEADER.unpack(_read_exactly(handles.pipe, _HEADER.size))
                _read_exactly(handles.pipe, size)
                count += 1
        return count


def _remove_directory(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked child that inherited the object
        shutil.rmtree(path, ignore_errors=True)


class PipeQueues(ColmenaQueues):
    """Queues using operating-system pipes.

    Suited to one thinker and one task server on the same host. Messages have no size
    limit beyond memory. The queues may be pickled and used from other processes of the
    host (see the module's description) as long as the process that created them runs:
    it removes the pipes when it exits or the queues are garbage-collected there.

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
        directory = tempfile.mkdtemp(prefix="colmena-pipes-")
        self._directory_finalizer = weakref.finalize(
            self, _remove_directory, directory, os.getpid()
        )
        self._requests = _Channel(os.path.join(directory, "requests"))
        # Topic names are arbitrary text: number the pipes rather than name them after topics
        self._results = {
            topic: _Channel(os.path.join(directory, f"results-{i}"))
            for i, topic in enumerate(sorted(self.topics))
        }

    _LOCAL_STATE = (*ColmenaQueues._LOCAL_STATE, "_directory_finalizer")

    def _send_request(
        self, message: bytes, method: str | None, topic: str, task_id: str = ""
    ) -> None:
        self._requests.send(message)

    def _get_request(self, timeout: float | None) -> Result:
        message = self._requests.receive(timeout)
        if message == _KILL:
            raise KillSignalException()
        return self.decode_request(message)

    def _send_result(self, message: bytes, result: Result) -> None:
        self._results[result.topic].send(message)

    def _get_result(self, topic: str, timeout: float | None) -> Result:
        return self.decode_result(self._results[topic].receive(timeout))

    def _send_kill_signal(self) -> None:
        self._requests.send(_KILL)

    def flush(self) -> None:
        """Remove all existing requests and results from the queues."""
        self._requests.drain()
        for channel in self._results.values():
            channel.drain()
