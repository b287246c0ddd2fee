"""What travels between a task server and its workers: small, immutable, cheap to pickle.

Engines (Parsl, process pools, Globus Compute) pickle the arguments and the return value of
every call; a whole :class:`~colmena_core.models.Result` costs about a millisecond per task
there. Workers get a :class:`WorkerTask` (the serialized inputs and how to read them) and
return a :class:`WorkerOutcome`; the task server keeps the ``Result`` and merges the
outcome into it.

Engines whose serializer is slow for structured objects (Parsl and Globus Compute use dill,
a pure-Python pickler) get both as one ``bytes`` object: :meth:`WorkerTask.pack` and
:meth:`WorkerOutcome.pack` use the C pickler.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerOutcome", "WorkerTask"]


@dataclass(frozen=True, slots=True)
class WorkerTask:
    """The inputs of a task as a worker needs them."""

    inputs: bytes | str
    """Serialized ``(args, kwargs)``"""
    serialization_method: str
    """How ``inputs`` were serialized, and how to serialize the value"""
    value_store: tuple[str, int, dict[str, Any] | None] | None = None
    """ProxyStore name, threshold and configuration for a large value, if any"""
    resources: tuple[int, int, int] | None = None
    """Node count, processes per node and threads per process the task asked for"""
    request: bytes | None = None
    """The JSON header of the request, for methods that take the task record (``_result``)"""
    stream_to: tuple[Any, bytes] | None = None
    """Address and key of the task server's relay of intermediate results, if it has one"""

    def pack(self) -> bytes:
        """The task as one bytes object."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def unpack(packed: bytes) -> WorkerTask:
        """Inverse of :meth:`pack`."""
        task = pickle.loads(packed)
        if not isinstance(task, WorkerTask):
            raise TypeError(f"Expected a packed WorkerTask, got {type(task).__name__}")
        return task


@dataclass(slots=True)
class WorkerOutcome:
    """What a worker reports about one run of a task."""

    hostname: str | None
    time_compute_started: float
    time_compute_ended: float | None = None
    value: bytes | str | None = None
    """Serialized value (``None`` when the function returned ``None`` or failed)"""
    failure: tuple[str, str | None] | None = None
    """Exception and traceback when the task failed"""
    time_running: float | None = None
    time_deserialize_inputs: float | None = None
    time_serialize_results: float | None = None
    time_async_resolve_proxies: float | None = None
    worker_info: dict[str, Any] = field(default_factory=dict)
    """More about the worker than its host name (e.g. Parsl's worker rank and pool)"""
    proxy_timing: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pack(self) -> bytes:
        """The outcome as one bytes object."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def unpack(packed: bytes) -> WorkerOutcome:
        """Inverse of :meth:`pack`."""
        outcome = pickle.loads(packed)
        if not isinstance(outcome, WorkerOutcome):
            raise TypeError(f"Expected a packed WorkerOutcome, got {type(outcome).__name__}")
        return outcome
