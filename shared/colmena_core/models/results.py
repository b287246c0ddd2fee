"""The record of one task: its request, its result, and the timings of its life cycle.

A :class:`Result` is created by a client with the inputs of a task, travels to a task
server and a worker, gets its value, and travels back. Its payloads (inputs and value)
are serialized separately from its metadata so that the transport never re-encodes them;
see :mod:`colmena_core.models.wire` for the bytes on the wire.
"""

from __future__ import annotations

import json
import math
import pickle
import platform
import time
import traceback as tb
from collections.abc import Mapping, Sequence
from enum import StrEnum
from time import perf_counter
from typing import Any, ClassVar
from uuid import uuid4

from proxystore.proxy import Proxy
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from colmena_core.models.execution import WorkerOutcome, WorkerTask
from colmena_core.models.resources import ResourceRequirements
from colmena_core.names import MethodName, Name
from colmena_core.proxy import (
    get_store,
    merge_proxy_timing,
    proxy_json_encoder,
    proxy_serialized,
    store_proxy_stats,
)

__all__ = [
    "MAX_RETRIES",
    "FailureInformation",
    "Result",
    "SerializationMethod",
    "TimeSpans",
    "Timestamps",
    "WorkerInformation",
]

Inputs = tuple[tuple[Any, ...], dict[str, Any]]

MAX_RETRIES = 100
"""Ceiling of ``max_retries``: a task that fails more often than this is not going to
succeed, and an unbounded count would keep a failing task (and the task server's slot)
busy for ever."""


class SerializationMethod(StrEnum):
    """How task inputs and results are turned into bytes."""

    JSON = "json"
    PICKLE = "pickle"

    @staticmethod
    def serialize(method: SerializationMethod | str, data: Any) -> str | bytes:
        """Serialize an object.

        Pickle produces raw bytes (never hex or base64 text); JSON produces text.
        """
        method = SerializationMethod(method)
        if method is SerializationMethod.PICKLE:
            return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        return json.dumps(data, default=proxy_json_encoder)

    @staticmethod
    def deserialize(
        method: SerializationMethod | str, message: str | bytes | bytearray | memoryview
    ) -> Any:
        """Deserialize an object made by :meth:`serialize` with the same method."""
        method = SerializationMethod(method)
        if method is SerializationMethod.PICKLE:
            if isinstance(message, str):
                raise TypeError("Pickled payloads are bytes, not text")
            return pickle.loads(message)
        if isinstance(message, memoryview):
            message = bytes(message)
        return json.loads(message)


class FailureInformation(BaseModel):
    """Why a task failed."""

    exception: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> FailureInformation:
        """Describe an exception, with its traceback when it has one."""
        return cls(
            exception=repr(exc),
            traceback="".join(tb.format_exception(type(exc), exc, exc.__traceback__)),
        )


class WorkerInformation(BaseModel):
    """Information about the worker that executed a task."""

    model_config = ConfigDict(extra="allow")

    hostname: str | None = None

    @classmethod
    def here(cls) -> WorkerInformation:
        """Describe the current worker process."""
        return cls(hostname=platform.node())


StoreSettings = tuple[Any, int]
"""A ProxyStore store and the size in bytes above which objects go through it."""


def resolve_store(
    name: str | None,
    threshold: int | None,
    config: dict[str, Any] | None,
    method: SerializationMethod | str,
) -> StoreSettings | None:
    """The store and threshold to use, or ``None`` when objects travel inline.

    ProxyStore is used only with pickle serialization (proxies are not JSON).

    Raises:
        ValueError: the store is neither registered nor described by ``config``
    """
    if (
        name is None
        or threshold is None
        or SerializationMethod(method) is not SerializationMethod.PICKLE
    ):
        return None
    store = get_store(name, config)
    if store is None:
        raise ValueError(f"No ProxyStore store named {name!r} is registered")
    return store, threshold


def _proxy_if_large(
    obj: Any, settings: StoreSettings, proxies: list[Proxy[Any]], evict: bool
) -> tuple[Any, bytes | None]:
    """Return the object, or its proxy when its pickle is above the threshold.

    The second item is the pickle of the object when it was computed and the object kept.
    """
    if isinstance(obj, Proxy) or obj is None or isinstance(obj, bool | int | float):
        return obj, None
    store, threshold = settings
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) < threshold:
        return obj, payload
    proxy = proxy_serialized(store, obj, payload, evict=evict)
    proxies.append(proxy)
    return proxy, None


def serialize_value(
    value: Any,
    method: SerializationMethod | str,
    settings: StoreSettings | None,
    proxies: list[Proxy[Any]],
) -> str | bytes:
    """Serialize a task's value, through ProxyStore when it is large (evicted once read)."""
    if settings is None:
        return SerializationMethod.serialize(method, value)
    value, payload = _proxy_if_large(value, settings, proxies, evict=True)
    if payload is not None:
        return payload  # already the pickle of the value: do not pickle twice
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class _FieldView:
    """Attribute access to some fields of a :class:`Result` under other names.

    The result keeps one copy of each value (its flat ``time_*`` fields, which the wire
    carries); a view reads and writes them, so both spellings always agree. As in Colmena
    0.7, a time not recorded reads as NaN through a view (``None`` in the flat field), and
    NaN written through a view leaves it unrecorded.
    """

    __slots__ = ("_result",)

    _names: ClassVar[dict[str, str]]
    """Name in the view -> name of the field of the Result"""

    def __init__(self, result: Result) -> None:
        object.__setattr__(self, "_result", result)

    def _field(self, name: str) -> str:
        field = self._names.get(name)
        if field is None:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}; it has {sorted(self._names)}"
            )
        return field

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        field = self._field(name)
        return _shown(field, getattr(self._result, field))

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, float) and math.isnan(value):
            value = None
        setattr(self._result, self._field(name), value)

    def __dir__(self) -> list[str]:
        return sorted(self._names)

    def model_dump(self) -> dict[str, Any]:
        """The values as a dictionary, under the names of the view."""
        return {
            name: _shown(field, getattr(self._result, field)) for name, field in self._names.items()
        }

    def _raw(self) -> dict[str, Any]:
        return {name: getattr(self._result, field) for name, field in self._names.items()}

    def update(self, values: Mapping[str, Any] | _FieldView | BaseModel) -> None:
        """Set several values at once (from a mapping, another view, or a model)."""
        if isinstance(values, _FieldView | BaseModel):
            values = values.model_dump()
        for name, value in values.items():
            setattr(self, name, value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _FieldView):
            return type(other) is type(self) and other._raw() == self._raw()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.model_dump().items())
        return f"{type(self).__name__}({fields})"

    dict = model_dump  # the name of pydantic 1, which Colmena 0.7 used


def _shown(field: str, value: Any) -> Any:
    """A flat field's value as a view shows it: an unrecorded time is NaN."""
    if value is None and field.startswith("time_"):
        return math.nan
    return value


class Timestamps(_FieldView):
    """When the key events of a task happened (Unix times), as Colmena 0.7 groups them.

    ``result.timestamp.created`` is ``result.time_created``, and so on for
    ``input_received``, ``compute_started``, ``compute_ended``, ``result_sent``,
    ``result_received``, ``start_task_submission`` and ``task_received``. Unset times read
    as NaN.
    """

    __slots__ = ()
    _names: ClassVar[dict[str, str]] = {
        name: f"time_{name}"
        for name in (
            "created",
            "input_received",
            "compute_started",
            "compute_ended",
            "result_sent",
            "result_received",
            "start_task_submission",
            "task_received",
        )
    }


class TimeSpans(_FieldView):
    """How long the steps of a task took (seconds), as Colmena 0.7 groups them.

    ``result.time.running`` is ``result.time_running``, and so on for
    ``serialize_inputs``, ``deserialize_inputs``, ``serialize_results``,
    ``deserialize_results`` and ``async_resolve_proxies``; ``proxy`` is
    ``result.proxy_timing`` and ``additional`` is ``result.additional_timing``.
    """

    __slots__ = ()
    _names: ClassVar[dict[str, str]] = {
        **{
            name: f"time_{name}"
            for name in (
                "running",
                "serialize_inputs",
                "deserialize_inputs",
                "serialize_results",
                "deserialize_results",
                "async_resolve_proxies",
            )
        },
        "proxy": "proxy_timing",
        "additional": "additional_timing",
    }


_VIEWS: dict[str, type[_FieldView]] = {"timestamp": Timestamps, "time": TimeSpans}


def _new_task_id() -> str:
    return str(uuid4())


def _no_inputs() -> Inputs:
    return ((), {})


class Result(BaseModel):
    """The inputs, result and performance record of one task.

    All times are Unix timestamps; durations are in seconds.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inputs: Inputs | str | bytes = Field(
        # A factory, not a default: pydantic deep-copies a mutable default on every decode
        default_factory=_no_inputs,
        description="Positional and keyword arguments, or their serialized form",
    )
    task_id: Name = Field(default_factory=_new_task_id, description="Unique identifier of the task")
    value: Any = Field(default=None, description="Output of the task")
    method: MethodName | None = Field(default=None, description="Name of the method to run")
    topic: Name = Field(default="default", description="Topic of the task, which routes its result")
    reply_to: Name | None = Field(
        default=None,
        description="Client the result goes back to, on transports that route results by client",
    )
    success: bool | None = Field(default=None, description="Whether the task completed")
    complete: bool | None = Field(
        default=None,
        description="Whether this is the last result of its task (false: an intermediate result)",
    )
    task_info: dict[str, Any] = Field(default_factory=dict, description="User data for tracking")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    failure_info: FailureInformation | None = None
    worker_info: WorkerInformation | None = None
    max_retries: int = Field(
        default=0,
        ge=0,
        le=MAX_RETRIES,
        description=f"Re-run a failed task up to this often (at most {MAX_RETRIES})",
    )
    retries: int = Field(default=0, ge=0, description="How often this task was re-run")
    reply_tag: str | None = Field(
        default=None,
        max_length=64,
        description="Proof, made with the campaign secret, that the client this result goes "
        "back to sent the task (see colmena_core.security.MessageSigner.reply_tag)",
    )

    # Life cycle
    time_created: float | None = Field(default_factory=time.time)
    time_input_received: float | None = None
    time_compute_started: float | None = None
    time_compute_ended: float | None = None
    time_result_sent: float | None = None
    time_result_received: float | None = None
    time_start_task_submission: float | None = None
    time_task_received: float | None = None

    # Durations
    time_running: float | None = None
    time_serialize_inputs: float | None = None
    time_deserialize_inputs: float | None = None
    time_serialize_results: float | None = None
    time_deserialize_results: float | None = None
    time_async_resolve_proxies: float | None = None
    additional_timing: dict[str, Any] = Field(default_factory=dict)
    proxy_timing: dict[str, dict[str, Any]] = Field(default_factory=dict)
    message_sizes: dict[str, int] = Field(default_factory=dict)

    # Serialization settings
    serialization_method: SerializationMethod = SerializationMethod.JSON
    keep_inputs: bool = True
    proxystore_name: str | None = None
    proxystore_config: dict[str, Any] | None = None
    proxystore_threshold: int | None = None

    _inputs_serialized: bool = PrivateAttr(default=False)
    _value_serialized: bool = PrivateAttr(default=False)

    def __init__(self, inputs: Inputs | str | bytes = ((), {}), **data: Any) -> None:
        # Colmena 0.7 spells the times as two groups: ``timestamp`` and ``time``
        views = {name: data.pop(name) for name in _VIEWS if name in data}
        super().__init__(inputs=inputs, **data)
        for name, values in views.items():
            if values is not None:
                getattr(self, name).update(values)

    # Only adds the positional argument: pydantic need not call it (and validate a second
    # time) when it builds a Result from JSON or a dict
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def from_args_and_kwargs(
        cls, fn_args: Sequence[Any], fn_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Result:
        """Make a task record from the arguments of the function it runs.

        Args:
            fn_args: Positional arguments of the function
            fn_kwargs: Keyword arguments of the function
            kwargs: Other fields of the result
        """
        return cls((tuple(fn_args), dict(fn_kwargs or {})), **kwargs)

    # ------------------------------------------------------------------ times
    @property
    def timestamp(self) -> Timestamps:
        """The ``time_*`` event times, grouped as in Colmena 0.7 (``timestamp.created``...)."""
        return Timestamps(self)

    @timestamp.setter
    def timestamp(self, values: Mapping[str, Any] | _FieldView | BaseModel) -> None:
        Timestamps(self).update(values)

    @property
    def time(self) -> TimeSpans:
        """The ``time_*`` durations, grouped as in Colmena 0.7 (``time.running``...)."""
        return TimeSpans(self)

    @time.setter
    def time(self, values: Mapping[str, Any] | _FieldView | BaseModel) -> None:
        TimeSpans(self).update(values)

    # ------------------------------------------------------------------ inputs
    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments of the task."""
        return tuple(self._plain_inputs()[0])

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the task."""
        return self._plain_inputs()[1]

    def _plain_inputs(self) -> Inputs:
        if self.inputs_serialized or isinstance(self.inputs, str | bytes):
            raise ValueError("The inputs are still serialized: call deserialize() first")
        return self.inputs

    @property
    def inputs_serialized(self) -> bool:
        """Whether :attr:`inputs` holds serialized bytes or text."""
        # Read from pydantic's store of private attributes: ``self._inputs_serialized`` goes
        # through BaseModel.__getattr__, which costs ~40x more (hot path: every message)
        return bool(self.__pydantic_private__["_inputs_serialized"])  # type: ignore[index]

    @property
    def value_serialized(self) -> bool:
        """Whether :attr:`value` holds serialized bytes or text."""
        return bool(self.__pydantic_private__["_value_serialized"])  # type: ignore[index]

    def mark_serialized(self, inputs: bool, value: bool) -> None:
        """Declare which payloads hold serialized data (used when decoding messages)."""
        self._inputs_serialized = inputs
        self._value_serialized = value

    # ------------------------------------------------------------- life cycle
    def mark_result_received(self) -> None:
        """Mark that a completed computation was received by a client."""
        self.time_result_received = time.time()

    def mark_input_received(self) -> None:
        """Mark that a task server has received a value."""
        self.time_input_received = time.time()

    def mark_compute_started(self) -> None:
        """Mark that the compute for a method has started."""
        self.time_compute_started = time.time()

    def mark_compute_ended(self) -> None:
        """Mark when the task finished executing."""
        self.time_compute_ended = time.time()

    def mark_result_sent(self) -> None:
        """Mark when a result is sent from the task server."""
        self.time_result_sent = time.time()

    def mark_start_task_submission(self) -> None:
        """Mark when the task server submits a task to the engine."""
        self.time_start_task_submission = time.time()

    def mark_task_received(self) -> None:
        """Mark when the task server receives the task from the engine."""
        self.time_task_received = time.time()

    def set_result(
        self, result: Any, runtime: float | None = None, intermediate: bool = False
    ) -> None:
        """Set the value of this computation.

        Marks the end of the computation, records the runtime if known, and drops the inputs
        when ``keep_inputs`` is false (they are not needed by the client and cost transfer).

        Args:
            result: Value of the task
            runtime: Time the function took to run
            intermediate: The task continues after this value (inputs are kept)
        """
        self.mark_compute_ended()
        self.value = result
        self._value_serialized = False
        self.time_running = runtime
        self.success = True
        self.complete = not intermediate
        if not self.keep_inputs and not intermediate:
            self.inputs = ((), {})
            self._inputs_serialized = False

    def drop_payloads(self, inputs: bool) -> None:
        """Forget the value, and the inputs too if ``inputs`` (e.g. too large to carry)."""
        self.value = None
        self._value_serialized = False
        if inputs:
            self.inputs = ((), {})
            self._inputs_serialized = False

    def set_failure(self, exc: BaseException) -> None:
        """Record that the computation failed with ``exc``."""
        self.success = False
        self.complete = True
        self.failure_info = FailureInformation.from_exception(exc)

    # ---------------------------------------------------------- serialization
    def _store_settings(self) -> StoreSettings | None:
        return resolve_store(
            self.proxystore_name,
            self.proxystore_threshold,
            self.proxystore_config,
            self.serialization_method,
        )

    def serialize(self) -> tuple[float, list[Proxy[Any]]]:
        """Serialize the inputs and the value, proxying objects above the ProxyStore threshold.

        Returns:
            - Time spent serializing, in seconds
            - Proxies created for large objects
        """
        start = perf_counter()
        proxies: list[Proxy[Any]] = []
        settings = self._store_settings()

        if not self.inputs_serialized:
            args, kwargs = self._plain_inputs()
            if settings is not None:
                args = tuple(_proxy_if_large(a, settings, proxies, evict=False)[0] for a in args)
                kwargs = {
                    k: _proxy_if_large(v, settings, proxies, evict=False)[0]
                    for k, v in kwargs.items()
                }
            self.inputs = SerializationMethod.serialize(self.serialization_method, (args, kwargs))
            self._inputs_serialized = True
            # The client's figure stands: a server re-encodes only the inputs it dropped
            self.message_sizes.setdefault("inputs", len(self.inputs))

        if not self.value_serialized and self.value is not None:
            self.value = serialize_value(self.value, self.serialization_method, settings, proxies)
            self._value_serialized = True
            self.message_sizes["value"] = len(self.value)

        for proxy in proxies:  # one entry per proxy made for this task, as the original
            store_proxy_stats(proxy, self.proxy_timing)
        return perf_counter() - start, proxies

    # -------------------------------------------------------------- execution
    def to_worker_task(
        self, request: bool = False, stream_to: tuple[Any, bytes] | None = None
    ) -> WorkerTask:
        """What a worker needs to run this task (inputs serialized first if needed).

        Args:
            request: Include the task's metadata, for methods that take the task record
            stream_to: Where the worker sends intermediate results (a task server's relay)
        """
        if not self.inputs_serialized:
            self.time_serialize_inputs, _ = self.serialize()
        assert isinstance(self.inputs, str | bytes)
        store = None
        if (
            self.proxystore_name is not None
            and self.proxystore_threshold is not None
            and self.serialization_method is SerializationMethod.PICKLE
        ):
            store = (self.proxystore_name, self.proxystore_threshold, self.proxystore_config)
        resources = self.resources
        return WorkerTask(
            self.inputs,
            self.serialization_method.value,
            store,
            (resources.node_count, resources.cpu_processes, resources.cpu_threads),
            self.model_dump_json(exclude={"inputs", "value"}, exclude_none=True).encode()
            if request
            else None,
            stream_to,
        )

    def apply_outcome(self, outcome: WorkerOutcome) -> None:
        """Record what a worker reported: value or failure, timings, worker information."""
        self.time_compute_started = outcome.time_compute_started
        self.time_compute_ended = outcome.time_compute_ended
        self.time_running = outcome.time_running
        self.time_deserialize_inputs = outcome.time_deserialize_inputs
        self.time_serialize_results = outcome.time_serialize_results
        self.time_async_resolve_proxies = outcome.time_async_resolve_proxies
        merge_proxy_timing(self.proxy_timing, outcome.proxy_timing)
        self.worker_info = WorkerInformation(hostname=outcome.hostname, **outcome.worker_info)
        self.value = outcome.value
        self._value_serialized = outcome.value is not None
        if outcome.value is not None:
            self.message_sizes["value"] = len(outcome.value)
        self.complete = True
        if outcome.failure is None:
            self.success = True
            self.failure_info = None
        else:
            self.success = False
            self.failure_info = FailureInformation(
                exception=outcome.failure[0], traceback=outcome.failure[1]
            )
        if not self.keep_inputs:
            self.inputs = ((), {})
            self._inputs_serialized = False

    def deserialize(self) -> float:
        """De-serialize the inputs and value fields.

        Returns:
            The time required to deserialize, in seconds
        """
        start = perf_counter()
        if self.inputs_serialized:
            assert isinstance(self.inputs, str | bytes)
            args, kwargs = SerializationMethod.deserialize(self.serialization_method, self.inputs)
            self.inputs = (tuple(args), dict(kwargs))
            self._inputs_serialized = False
        if self.value_serialized:
            self.value = SerializationMethod.deserialize(self.serialization_method, self.value)
            self._value_serialized = False
        return perf_counter() - start

    def json(self, **kwargs: Any) -> str:
        """Encode as JSON; resolved proxies become their value, unresolved ones a placeholder."""
        if self.inputs_serialized or self.value_serialized:
            raise ValueError("Payloads are serialized: use colmena_core.models.wire.encode_result")
        return json.dumps(self.model_dump(**kwargs), default=proxy_json_encoder)
