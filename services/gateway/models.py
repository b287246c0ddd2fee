"""The JSON bodies of the gateway's API: what API clients send and what they receive.

API clients send and receive JSON only. Task inputs travel to the task servers serialized
as JSON (never pickle: unpickling bytes from an API client would run its code on the task
server), and results come back decoded from JSON.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from colmena_core.models import ResourceRequirements
from colmena_core.models.results import MAX_RETRIES
from colmena_core.names import METHOD_PATTERN, NAME_PATTERN
from colmena_core.queue.monitor import ResultSummary


class TaskRequest(BaseModel):
    """One task to run: a method of the campaign and its JSON arguments."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"method": "simulate", "args": [1.5], "kwargs": {}, "topic": "default"}]
        },
    )

    method: str = Field(pattern=METHOD_PATTERN, description="Name of the method to run")
    args: list[Any] = Field(default_factory=list, description="Positional arguments (JSON)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (JSON)")
    topic: str = Field(
        default="default",
        pattern=NAME_PATTERN,
        description="Topic of the task, one the gateway allows; results can be filtered by it",
    )
    keep_inputs: bool = Field(default=False, description="Send the inputs back with the result")
    task_info: dict[str, Any] = Field(
        default_factory=dict, description="Any data for tracking the task, returned with its result"
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Resources the task asks for"
    )
    max_retries: int = Field(
        default=0, ge=0, le=MAX_RETRIES, description="Re-run a failed task this often"
    )

    @field_validator("args", "kwargs", "task_info")
    @classmethod
    def _valid_text(cls, value: Any) -> Any:
        if not is_valid_text(value):
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)")
        return value


class TaskBatch(BaseModel):
    """Several tasks submitted at once (at most the gateway's ``max_batch``)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskRequest] = Field(min_length=1, description="The tasks, in order")


class Submitted(BaseModel):
    """A task the broker has accepted."""

    task_id: str = Field(description="ID of the task; its result carries it")
    method: str
    topic: str
    warning: str | None = Field(
        default=None,
        description="Set when no live task server serves the method: the task waits in the "
        "broker until one does",
    )


class BatchSubmitted(BaseModel):
    """Tasks the broker has accepted, in the order they were given."""

    task_ids: list[str]
    warning: str | None = Field(
        default=None,
        description="Set when no live task server serves some of the methods: those tasks "
        "wait in the broker until one does",
    )


class Timings(BaseModel):
    """When a task went through the stages of its life (Unix times) and how long it ran (s)."""

    time_created: float | None = None
    time_input_received: float | None = None
    time_compute_started: float | None = None
    time_compute_ended: float | None = None
    time_result_sent: float | None = None
    time_running: float | None = None


class TaskResult(BaseModel):
    """The result of a task. Delivered at least once: de-duplicate final results by ``task_id``."""

    task_id: str
    method: str | None
    topic: str
    success: bool | None = Field(description="Whether the task completed")
    value: Any = Field(
        default=None,
        description="The value returned by the method (JSON); non-finite numbers become the "
        "strings 'NaN', 'Infinity' and '-Infinity'",
    )
    value_format: Literal["json", "pickle", "none"] = Field(
        description="How the value was serialized; pickled values are never shown"
    )
    failure: str | None = Field(default=None, description="The exception of a failed task")
    inputs: dict[str, Any] | None = Field(
        default=None, description="The inputs, when the task asked to keep them"
    )
    task_info: dict[str, Any] = Field(default_factory=dict)
    timings: Timings = Field(default_factory=Timings)
    complete: bool | None = Field(
        default=None,
        description="False for an intermediate result of a task that still runs (several may "
        "share its task_id; its final result follows)",
    )

    @classmethod
    def from_summary(cls, summary: ResultSummary) -> Self:
        """The API form of a result summary."""
        return cls(
            task_id=summary.task_id,
            method=summary.method,
            topic=summary.topic,
            success=summary.success,
            value=finite_json(summary.value),
            value_format=summary.value_format,
            failure=finite_json(summary.failure),
            inputs=finite_json(summary.inputs),
            task_info=finite_json(summary.task_info),
            timings=Timings(**summary.timings),
            complete=summary.complete,
        )


class MonitoredResult(TaskResult):
    """A copy of a result seen on the campaign's monitoring stream."""

    client: str | None = Field(default=None, description="Client the result is addressed to")


class ResultList(BaseModel):
    """Results returned by one long-poll (possibly none)."""

    results: list[TaskResult]


class ServerInfo(BaseModel):
    """A task server that sent a heartbeat recently."""

    server_id: str
    hostname: str | None
    methods: list[str]
    capacity: int | None
    in_flight: int | None
    started: float | None
    last_seen: float


class MethodInfo(BaseModel):
    """A method served now, and by whom."""

    name: str
    servers: list[str]
    capacity: int = Field(description="Tasks the servers of this method run at once, together")


class MethodList(BaseModel):
    """The methods served right now (from the task servers' heartbeats)."""

    methods: list[MethodInfo]


class CampaignStatus(BaseModel):
    """State of the campaign, as the broker and the task servers' heartbeats tell it."""

    campaign: str
    client: str = Field(description="The API client asking")
    broker_connected: bool
    servers: list[ServerInfo]
    methods: list[MethodInfo]
    tasks_queued: dict[str, int] = Field(description="Requests waiting, by method")
    tasks_in_flight: int = Field(description="Tasks the live task servers are running")
    results_waiting: dict[str, int] = Field(description="Results waiting for this client, by topic")
    dead_letters: int = Field(description="Messages in the campaign's dead-letter queue")


class DeadLetterInfo(BaseModel):
    """A message the campaign could not deliver."""

    reason: str
    queue: str | None
    routing_keys: list[str]
    time: float | None
    task_id: str | None
    method: str | None
    error: str | None


class DeadLetterList(BaseModel):
    """The oldest dead letters of the campaign (left in place)."""

    dead_letters: list[DeadLetterInfo]


class ErrorMessage(BaseModel):
    """What went wrong."""

    detail: str


def _valid_string(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_valid_text(value: Any) -> bool:
    """Whether every string in ``value`` (a JSON-like structure) encodes as UTF-8."""
    if isinstance(value, str):
        return _valid_string(value)
    if isinstance(value, dict):
        return all(is_valid_text(k) and is_valid_text(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(is_valid_text(item) for item in value)
    return True


def finite_json(value: Any) -> Any:
    """``value`` made valid JSON in UTF-8: non-finite floats become strings, and lone
    surrogates in strings become U+FFFD."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        if _valid_string(value):
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {finite_json(key): finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value
