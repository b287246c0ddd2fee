"""Settings of the task-server service (flags or ``COLMENA_*`` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from colmena_core.models.results import MAX_RETRIES
from colmena_core.names import check_name

from ..common import HealthHost, HealthPort, RecordingSettings


class TaskServerSettings(RecordingSettings):
    """Serve the methods of a campaign: run the tasks the thinkers send, return their results."""

    methods: str = Field(
        description="Import path of the methods to serve, 'package.module:NAME' or 'file.py:NAME': "
        "a list of functions or (function, options) pairs"
    )
    parsl_config: str | None = Field(
        default=None,
        description="Import path of the Parsl configuration: a Config or a function returning one "
        "(required with --engine parsl)",
    )
    engine: Literal["parsl", "local"] = Field(
        default="parsl",
        description="Run tasks through Parsl, or in a local process pool (development)",
    )
    workers: int = Field(default=2, ge=1, description="Pool size of the local engine")
    server_id: str | None = Field(
        default=None,
        description="Name of this task server in heartbeats (default: host name and pid)",
    )

    @field_validator("server_id")
    @classmethod
    def _server_id(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value, "the task server ID")

    max_retries: int = Field(
        default=0,
        ge=0,
        le=MAX_RETRIES,
        description=f"Re-run failed tasks up to this often (at most {MAX_RETRIES})",
    )
    prefetch: int = Field(
        default=0,
        ge=0,
        description="Requests taken from the broker ahead of execution (0: twice the worker count)",
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, description="Seconds between advertisements of the served methods"
    )
    health_host: HealthHost = "0.0.0.0"
    health_port: HealthPort = 0
