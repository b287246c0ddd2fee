"""Data models: task records, resource requirements and executable tasks."""

from colmena_core.models.resources import ResourceRequirements
from colmena_core.models.results import (
    FailureInformation,
    Result,
    SerializationMethod,
    TimeSpans,
    Timestamps,
    WorkerInformation,
)
from colmena_core.models.tasks import ExecutableFailed, ExecutableTask

__all__ = [
    "ExecutableFailed",
    "ExecutableTask",
    "FailureInformation",
    "ResourceRequirements",
    "Result",
    "SerializationMethod",
    "TimeSpans",
    "Timestamps",
    "WorkerInformation",
]
